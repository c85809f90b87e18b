"""Exceptions raised by batchata-df.

The tree is designed so that a caller can tell *who* has to act::

    BatchataError                      base of everything we raise
    ├── ConfigError (ValueError)       caller mistake, raised before any money is spent
    │   ├── ColumnError                a named column is missing or collides
    │   ├── SchemaError                the answer model cannot be expressed for a provider
    │   ├── ModelError                 unknown model / provider prefix
    │   ├── ParamError                 a parameter the model refuses (names model and fix)
    │   ├── CredentialsError           no API key for the provider
    │   ├── PriceError                 a cost cap or dry run needs a price we do not have,
    │   │                              or prices= names a model the call never prices
    │   └── FileInputError             a file input is missing, unsupported or too large
    ├── StateError                     the checkpoint folder cannot be used for this run
    │   ├── StateMismatchError         written for another model / prompt / schema / params
    │   └── StateLockedError           another call is writing to the folder right now
    ├── SinkLockedError                another call or run is writing the same sink= file
    ├── ProviderError                  the provider refused or failed a whole batch call
    │   ├── OrphanedBatchError         we cannot prove a crashed submit did not go through
    │   └── ResultFileError            a results download came whole but cannot be used
    └── EmulatorError                  the bundled emulator could not start or answer

Warnings: :class:`ProviderUnavailableWarning` (a ``UserWarning``) when rows of a call could
not be sent or collected because the provider was unreachable (or their results could not
be used); :class:`SummaryWarning` when
a streaming run could not write the folder's summary for ``sql`` (the run's results are
complete; ``sql`` groups the events instead); :class:`ModelShutdownWarning` before
anything is sent when a model's announced shutdown is near; :class:`ThinkingRoomWarning`
before anything is sent when a Gemini model's thinking, which no budget bounds, may take
all of ``max_tokens``; :class:`UnpricedAnswerWarning` when rows were answered by another
model than the one asked (a routed Gemini model's successor) whose price is not known;
:class:`KeptStateWarning` when a call without ``state=`` returns rows left pending in
batches a provider accepted (its temporary folder is kept to collect them), or when
``compat.Batch`` finds a group folder an earlier ``run()`` left that no group uses now.

Failures of single rows are never exceptions: they become ``_status="failed"`` and an
``_error`` message in the result frame.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from batchata_df.redact import scrub

if TYPE_CHECKING:
    from batchata_df.state import LockHolder

__all__ = [
    "WARNINGS",
    "AmbiguousJobKeyWarning",
    "BatchataError",
    "ColumnError",
    "ConfigError",
    "CredentialsError",
    "EmulatorError",
    "FileInputError",
    "KeptStateWarning",
    "LostUnpricedWarning",
    "ModelError",
    "ModelShutdownWarning",
    "OrphanedBatchError",
    "ParamError",
    "PriceError",
    "ProviderError",
    "ProviderUnavailableWarning",
    "ResultFileError",
    "CapSerialisedWarning",
    "SchemaError",
    "SinkLockedError",
    "StateError",
    "StateLockedError",
    "StateMismatchError",
    "SummaryWarning",
    "ThinkingRoomWarning",
    "UnpricedAnswerWarning",
]


class BatchataError(Exception):
    """Base class of every exception raised by batchata-df.

    Messages are scrubbed of secrets (:func:`batchata_df.redact.scrub`) when the exception
    is created, so that no API key echoed by a provider can be raised.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(scrub(a) if isinstance(a, str) else a for a in args))


class ConfigError(BatchataError, ValueError):
    """A caller mistake, detected before anything is sent to a provider."""


class ColumnError(ConfigError):
    """A column named by the caller is missing, or an output column would collide."""


class SchemaError(ConfigError):
    """The answer schema cannot be expressed as strict structured output."""


class ModelError(ConfigError):
    """The model name does not identify a supported provider."""


class ParamError(ConfigError):
    """A model parameter that this model refuses (or a value it does not take).

    Raised before anything is sent; the message names the model, the parameter and the
    fix. ``model`` and ``param`` hold them for programs.
    """

    def __init__(self, message: str, *, model: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.model = model
        self.param = param


class CredentialsError(ConfigError):
    """No API key is configured for a provider that the run needs."""


class PriceError(ConfigError):
    """A cost estimate or cost cap needs the price of a model that has none.

    Also raised for a ``prices=`` key that names no model the call prices (a typo:
    :func:`batchata_df.validate.check_prices_used`); ``model`` is then ``None``.
    ``model``, ``provider`` and ``needed_by`` (the argument that needs the price,
    ``"max_cost_usd"`` or ``"dry_run"``) name it when known, so that a caller with other
    words for the fix (the command line's ``--price``) can say it in them. ``stored`` is
    the number of the state folder's answers of ``model`` stored without a cost that a
    cap needs priced (0: the price is needed for this call's own requests).
    """

    def __init__(
        self,
        message: str,
        *,
        model: str | None = None,
        provider: str | None = None,
        needed_by: str | None = None,
        stored: int = 0,
    ) -> None:
        super().__init__(message)
        self.model = model
        self.provider = provider
        self.needed_by = needed_by
        self.stored = stored


class FileInputError(ConfigError):
    """A file input is missing, of an unsupported type, or over the provider's limit."""


class StateError(BatchataError):
    """The checkpoint folder cannot be used."""


class StateMismatchError(StateError):
    """The checkpoint folder was written by a run with another fingerprint."""


class StateLockedError(StateError):
    """Another call holds the checkpoint folder's writer lock.

    ``holder`` describes it (:class:`~batchata_df.state.LockHolder`: ``pid``, ``host``,
    ``since``), or is ``None`` when the holder had not yet written its name.
    """

    def __init__(self, message: str, *, holder: LockHolder | None = None) -> None:
        super().__init__(message)
        self.holder = holder


class SinkLockedError(BatchataError):
    """Another live call (``batch_llm(sink=...)``) or ``batchata-df run`` writes the same file.

    Two calls writing one sink with different state folders would each send every row and
    pay for it (and the last rename would win), so a ``sink=`` call refuses before anything
    is sent. ``writer`` describes the other (what it is, ``pid``, ``host``, start time,
    state folder, its hidden folder beside the sink); ``holder`` is its
    :class:`~batchata_df.state.LockHolder`, or ``None`` when it had not yet written its
    name.
    """

    def __init__(
        self, message: str, *, writer: str, holder: LockHolder | None = None
    ) -> None:
        super().__init__(message)
        self.writer = writer
        self.holder = holder


class ProviderError(BatchataError):
    """A provider call failed for a whole batch (not for a single row).

    ``status_code`` is the provider's HTTP status when it answered (``None`` for a
    connection failure). :attr:`permanent` tells whether trying again can help.
    """

    def __init__(
        self, message: str, *, status_code: int | None = None, permanent: bool | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self._permanent = permanent

    @property
    def permanent(self) -> bool:
        """A 4xx answer other than timeout (408), conflict (409) or rate limit (429).

        Or as the raiser decided (``permanent=``), e.g. an SDK that cannot parse an answer
        will not parse it on the next try either.
        """
        if self._permanent is not None:
            return self._permanent
        code = self.status_code
        return code is not None and 400 <= code < 500 and code not in (408, 409, 429)


class ResultFileError(ProviderError):
    """A batch's results were downloaded but cannot be used as they came; transient.

    The download ended early without an error (it cannot be decoded, or holds fewer lines
    than the provider counts) or is not UTF-8. The provider was reached: the engine
    downloads the file again at its next poll (nothing is sent or paid again), and past
    the provider patience leaves the batch's rows ``pending`` with the reason.

    ``damaged`` is ``(what was downloaded, digest)`` when the download was not UTF-8: the
    engine records it in the state folder, so that a later process that gets the same
    bytes again knows they are the provider's (only the damaged lines' rows fail).
    """

    damaged: tuple[str, bytes] | None = None


class OrphanedBatchError(ProviderError):
    """A submit may have reached the provider but its batch cannot be identified."""


class EmulatorError(BatchataError):
    """The bundled emulator failed to start or to answer a control request."""


class CapSerialisedWarning(UserWarning):
    """The cost cap's worst-case reservation made requests wait for earlier batches.

    The message says how many requests could go at once, how often the rest waited, and
    which ``max_tokens`` the observed answers (reasoning included) fit with a margin.
    """


class AmbiguousJobKeyWarning(UserWarning):
    r"""Different rows of this call share a job id in an older checkpoint folder.

    Folders written before job keys were injective (job id scheme ``"blake2b"`` or
    ``"hmac-sha256"``, :func:`batchata_df.jobs.job_keys`) join a row's texts with NUL:
    rows whose system prompt or prompt hold NUL or ``\x01`` can get one id, so one of them
    is sent and each gets its answer. The folder keeps its ids (changing them would pay for
    every row again); run such rows with a new ``state`` folder, whose ids cannot collide.
    """


class LostUnpricedWarning(UserWarning):
    """A dry run without a cap left lost realtime requests out of "already spent".

    They were sent by a call without a cap (no worst case recorded) for rows this call
    does not have, so their worst case cannot be computed. A capped call refuses such a
    folder (:class:`StateError`); include the rows they were sent for to count them.
    """


class ProviderUnavailableWarning(UserWarning):
    """Rows of this call could not be sent or collected: the provider was unreachable.

    Those rows carry ``provider_unavailable: <last error>`` in ``_error``; calling again
    with the same ``state`` folder sends or collects them (nothing is paid twice). Rows
    whose batch's results were downloaded but could not be used (a
    :class:`ResultFileError`: cut short, not UTF-8) carry ``provider_unavailable:
    results_unusable: <error>``, and the warning says that instead: the provider answered.
    """


class KeptStateWarning(UserWarning):
    """A call without ``state=`` returned rows still pending in batches a provider accepted.

    A stop (Ctrl+C, ``time_limit``) whose cancels did not end within the grace period, or
    a provider left unreachable, leaves batches in flight: their rows come back
    ``_status="pending"``, and the provider may bill what they run. The call's temporary
    folder is kept instead of removed, and the message names it: calling again with
    ``state=`` that folder collects those rows without paying for them again (calling
    without it sends and pays for them again). ``folder`` holds its path.

    :class:`batchata_df.compat.Batch` warns it too for a group folder under its state
    root that an earlier ``run()`` left and no group of this run uses (a job's parameters,
    model or response model changed since): jobs still in flight there (paid for, their
    answers not read into the results) or, with a cost limit, money spent there (both
    counted under the limit); ``folder`` names it.
    """

    def __init__(self, message: str, folder: str | None = None) -> None:
        super().__init__(message)
        self.folder = folder


class SummaryWarning(UserWarning):
    """A streaming run could not write its folder's summary (``summary/jobs.parquet``).

    The summary only makes :func:`batchata_df.sql` faster: the sink and the state folder
    are complete, and ``sql`` groups the job events instead. The message names the error
    (e.g. a full disk).
    """


class ModelShutdownWarning(UserWarning):
    """A model of the run is due to be shut down by its provider soon.

    Emitted once per call, before anything is sent, when the provider's announced shutdown
    date (:data:`batchata_df.models.SCHEDULED`) is at most
    :data:`~batchata_df.models.SHUTDOWN_HORIZON_DAYS` days away. The message names the
    model, the date and the provider's recommended replacement, and says plainly when the
    date falls before the batch could end (submission plus the provider's completion
    window): rows the provider has not finished by then fail. From that date on the model
    is refused like a retired one (:class:`ModelError`). The clock can be pinned with
    ``BATCHATA_DF_TODAY`` (:data:`batchata_df.models.TODAY_VAR`).
    """


class UnpricedAnswerWarning(UserWarning):
    """Rows were answered by another model than the one asked, whose price is not known.

    A provider may answer a model's requests with another one: Google routes a shut-down
    Gemini model to its successor (:data:`batchata_df.models.SCHEDULED`, ``"routed"``),
    billed at the successor's rates, and each row is priced at the model its response
    names (the job events' ``answered_by``). When no price is known for that model, the
    rows are priced at the model asked for (a null cost would count as free under
    ``max_cost_usd``), and this warning names the model and the fix: ``prices={model:
    (input_usd_per_mtok, output_usd_per_mtok)}``.
    """


class ThinkingRoomWarning(UserWarning):
    """A Gemini model may spend all of ``max_tokens`` thinking, with no budget to stop it.

    Emitted once per call and model, before anything is sent
    (:func:`batchata_df.models.thinking_room_warning`): Gemini 2.5 without
    ``reasoning_effort`` thinks dynamically (up to 8,192 tokens), and Gemini 3.x / 4
    levels name no token count; thinking counts inside ``max_tokens``, so a row whose
    thinking takes all of it is billed and answers nothing (it fails ``truncated:
    thinking used N of max_tokens=N ...``). The message says how much the model may think
    and names the fix: a ``reasoning_effort`` (a fixed budget on 2.5, a lower level on
    3.x) or a ``max_tokens`` that holds the thinking plus room for the answer, each
    enough alone. A fixed budget ``max_tokens`` cannot hold is a :class:`ParamError`
    instead: there every row would be billed for nothing.

    ``cli`` is the same message with the fixes in ``batchata-df run`` flags
    (``--param reasoning_effort=...``, ``--max-tokens N``), which the CLI prints instead.
    """

    def __init__(self, message: str, cli: str | None = None) -> None:
        super().__init__(message)
        self.cli = message if cli is None else cli


WARNINGS: tuple[type[UserWarning], ...] = (
    CapSerialisedWarning,
    AmbiguousJobKeyWarning,
    LostUnpricedWarning,
    ProviderUnavailableWarning,
    KeptStateWarning,
    SummaryWarning,
    ModelShutdownWarning,
    ThinkingRoomWarning,
    UnpricedAnswerWarning,
)
"""Every warning batchata-df emits (the CLI prints each as one ``batchata-df: warning:`` line)."""


def _our_code() -> tuple[str, ...]:
    import polars as pl

    return (
        str(Path(__file__).resolve().parent) + os.sep,
        # DataFrame.pipe(batch_llm, ...) calls through polars: the user's line is above it.
        str(Path(pl.__file__).resolve().parent) + os.sep,
    )


def warn_user(message: str | Warning, category: type[Warning] | None = None) -> None:
    """``warnings.warn`` pointed at the caller's line: the first frame not ours nor polars'.

    A fixed ``stacklevel`` pointed at ``redact.py`` (the wrapper that scrubs what
    ``batch_llm`` raises), at polars' ``pipe`` or at one of our functions, depending on
    the path that warned; polars finds its own level the same way
    (``polars._utils.various.find_stacklevel``).

    Examples
    --------
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_user("look here", SummaryWarning)
    >>> caught[0].category.__name__, caught[0].filename.startswith("<doctest")
    ('SummaryWarning', True)
    """
    ours = _our_code()
    frame = sys._getframe(1)  # the function that called this one: stacklevel 2
    level = 2
    while frame.f_back is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(
        ours
    ):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
