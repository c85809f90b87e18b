"""``batch_llm``: a frame in, jobs through provider batches, the frame out with typed answers."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

import polars as pl
from pydantic import BaseModel

from batchata_df.citations import citation_columns, decode_citations, instruction
from batchata_df.cost import PriceOverride, PriceTable, estimate_expr
from batchata_df.engine import Engine, ProgressSnapshot, RunOptions
from batchata_df.engine.auto import AutoEngine
from batchata_df.engine.collection import RESULTS_UNUSABLE
from batchata_df.engine.planning import DatedEstimate, only_model
from batchata_df.engine.realtime import DEFAULT_CONCURRENCY, RealtimeEngine
from batchata_df.engine.run import BatchPhase
from batchata_df.errors import (
    ColumnError,
    ConfigError,
    KeptStateWarning,
    ModelError,
    ModelShutdownWarning,
    ParamError,
    ProviderUnavailableWarning,
    SchemaError,
    StateError,
    StateMismatchError,
    ThinkingRoomWarning,
    warn_user,
)
from batchata_df.estimates import Observed, observed_output
from batchata_df.jobs import ID_SCHEMES, IdScheme, build_jobs, check_param_values, check_params
from batchata_df.models import DEFAULT_MAX_TOKENS as _DEFAULT_MAX_TOKENS
from batchata_df.models import (
    check_endpoint,
    check_model_params,
    check_provider,
    check_retired,
    effective_params,
    family_of,
    routed_resume_warning,
    routed_successor,
    shutdown_warning,
    thinking_room_warning,
    today,
)
from batchata_df.providers import SUPPORTED_PARAMS, make_provider
from batchata_df.providers.base import Provider, RequestSpec
from batchata_df.redact import scrub, scrubbed
from batchata_df.schema import AnswerSchema
from batchata_df.schema_limits import check_schema_limits
from batchata_df.state import (
    BATCH_EVENTS,
    DECODED,
    JOB_EVENTS,
    StateStore,
    WriterLock,
    adopt_schema,
    check_lock_timeout,
    join_by_job,
    read_unlocked,
)
from batchata_df.validate import (
    call_models,
    check_mode,
    check_prices_used,
    check_run_arguments,
    check_spend_is_priced,
    price_lost_requests,
)

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "META_COLUMNS",
    "RAW_COLUMN",
    "RESPONSE_COLUMN",
    "batch_llm",
    "reparse",
]

META_COLUMNS = (
    "_status",
    "_error",
    "_cost_usd",
    "_input_tokens",
    "_output_tokens",
    "_reasoning_tokens",
    "_job_id",
    "_batch_id",
    "_mode",
)
"""Metadata columns appended after the answer columns, in this order."""

Mode = Literal["batch", "realtime", "auto"]

RAW_COLUMN = "_raw"
"""With ``keep_raw=True``, the provider's text for the row, appended after the metadata."""

RESPONSE_COLUMN = "_response"
"""With ``keep_responses=True``, the provider's own result for the row (its JSON line)."""

REPARSED_ERRORS = ("schema_validation",)
"""Failures of an answer that a new schema may accept: :func:`reparse` re-validates these
(and completed answers); truncated answers (incomplete whatever the schema), refusals and
provider errors stay as they are."""

DEFAULT_MAX_TOKENS = _DEFAULT_MAX_TOKENS
"""``max_tokens`` sent when ``params`` does not set it to a model that does not think, so
worst-case costs are bounded. Models that think get more room by default
(:func:`batchata_df.models.default_max_tokens`)."""

ProgressArg = bool | Callable[[ProgressSnapshot], None]

CITATION_PROVIDERS = frozenset({"anthropic"})
"""Providers whose answers cite the given documents (``citations=True``)."""


def _load_dotenv() -> None:
    try:
        from dotenv import load_dotenv
    except ImportError:
        return
    if Path(".env").is_file():
        load_dotenv(".env", override=False)


def _fingerprint_part(value: object) -> str:
    if isinstance(value, pl.Expr):
        text = "expr:" + str(value)
    else:
        text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _reads_again_before_the_lock(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """A call reads the state folder again if a writer compacted it before the call's lock.

    A call reads its folder before it takes the folder's writer lock (the arguments, the
    rows done, what was spent; a dry run never takes it), while another process's run may
    end by compacting the folder's parts (a streamed run does): parts the call listed are
    then deleted before it reads them. The call is then made again
    (:func:`batchata_df.state.read_unlocked`), instead of failing with "No such file";
    never once it has taken the lock, before which nothing is sent.
    """

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        state = kwargs.get("state")
        if not isinstance(state, str | os.PathLike):
            return fn(*args, **kwargs)
        taken = WriterLock.taken

        def call() -> _R:
            nonlocal taken
            taken = WriterLock.taken
            return fn(*args, **kwargs)

        return read_unlocked([state], call, again=lambda: WriterLock.taken == taken)

    return wrapper


@scrubbed
@_reads_again_before_the_lock
def batch_llm(
    df: pl.DataFrame | pl.LazyFrame,
    *,
    schema: type[BaseModel] | None = None,
    model: str | pl.Expr,
    prompt: str | pl.Expr,
    state: str | os.PathLike[str] | None = None,
    system: str | pl.Expr | None = None,
    files: str | None = None,
    citations: bool = False,
    params: Mapping[str, Any] | None = None,
    max_cost_usd: float | None = None,
    time_limit: float | dt.timedelta | None = None,
    dry_run: bool = False,
    items_per_batch: int | None = None,
    max_parallel_batches: int = 8,
    progress: ProgressArg = False,
    wait: bool = True,
    prices: Mapping[str, PriceOverride] | None = None,
    retry_failed: bool = False,
    provider_patience: float | dt.timedelta = 600.0,
    keep_raw: bool = False,
    lock_timeout: float | None = 0.0,
    history: str | None = None,
    mode: Mode = "batch",
    concurrency: int | None = None,
    deadline: float | dt.timedelta | dt.datetime | None = None,
    keep_responses: bool = False,
    prompt_caching: bool = True,
    sink: str | os.PathLike[str] | None = None,
    chunk_rows: int | None = None,
) -> Any:
    """Run one LLM job per row through the provider's batch API; return the typed answers.

    Parameters
    ----------
    df
        The input frame (a LazyFrame is collected).
    schema
        A Pydantic model describing the answer: each field becomes a typed column. ``None``
        gives one text column ``response``.
    model
        ``"gpt-6-luna"`` (provider inferred from the name; rules per model family:
        :mod:`batchata_df.models`), ``"openai:<model>"``, or a
        ``pl.Expr`` giving a model per row.
    prompt
        A template over columns (``"Classify: {text}"``; ``{{``/``}}`` are literal braces)
        or a ``pl.Expr`` giving the prompt text.
    state
        The checkpoint folder. Calling again with the same folder resumes: rows already
        answered are not sent again, batches in flight are re-attached. ``None`` uses a
        temporary folder deleted at the end (no resume).
    system
        A system prompt (string or ``pl.Expr``).
    files
        The name of a column holding per row a file path (``str`` or ``Path``), a list of
        paths, or ``bytes``: PDF, text/Markdown, DOCX or PNG/JPEG/GIF/WebP images, sent
        before the prompt (see :mod:`batchata_df.files` for the provider limits). Every
        file is read and checked before anything is sent.
    citations
        Anthropic only, with ``files=``: enable citations on every document and add, after
        the schema's columns, a ``<field>_citations`` column per top-level field: a list of
        ``{cited_text, document_index, document_title, start_page, end_page, start_char,
        end_char, start_block, end_block}`` (Anthropic's conventions: document index and
        char/block indices 0-based, pages 1-based, every end exclusive; kinds that do not
        apply are null). Null for rows that did not complete. How citations are given to
        fields is described in :mod:`batchata_df.citations`.
    params
        Model parameters: ``max_tokens`` (default 4096 for a model that does not think,
        more for one that does: :func:`batchata_df.models.default_max_tokens`; thinking
        counts against it), ``temperature``, ``top_p``, ``top_k``, ``seed``, ``stop``,
        ``frequency_penalty``, ``presence_penalty``, and ``reasoning_effort`` (``"none"``,
        ``"minimal"``, ``"low"``, ``"medium"``, ``"high"``, ``"xhigh"``, ``"max"``: one knob
        mapped to each provider's thinking settings). Unknown names are an error, and so is
        a parameter the model refuses (:class:`~batchata_df.errors.ParamError`, e.g.
        ``temperature`` on a model that reasons), before anything is sent.
    max_cost_usd, dry_run
        Cost cap and cost plan (see the cost documentation).
    time_limit
        Seconds (or a timedelta). At the deadline nothing more is submitted, batches in
        flight are cancelled, finished rows are kept and the rest end ``cancelled``.
    items_per_batch
        Most jobs per provider batch (the provider's own limits always apply).
    max_parallel_batches
        Most provider batches in flight at once.
    progress
        ``True`` for a live display (terminal or Jupyter; plain lines in logs), or a
        callable receiving progress snapshots. With ``dry_run=True``, ``True`` shows the
        plan's summary (counts, cost by model, batches, what the cap allows); otherwise a
        dry run prints nothing and the plan is the returned frame.
    wait
        ``False`` submits and returns at once, unfinished rows ``_status="pending"``;
        call again with the same ``state`` to collect.
    prices
        ``{model: (input_usd_per_mtok, output_usd_per_mtok)}`` batch prices that override
        the built-in price database.
    retry_failed
        Send rows that ended ``failed`` in an earlier call again.
    provider_patience
        Seconds (or a timedelta, default 10 minutes) a provider may stay unreachable --
        creates, lookups, polls or downloads failing after the SDKs' own retries -- before
        the call stops waiting and returns. Rows never sent end ``cancelled`` with
        ``_error="cancelled: provider_unavailable: <last error>"``; rows whose batch may
        exist at the provider stay ``pending`` with ``"provider_unavailable: <last
        error>"`` (call again with the same ``state`` to collect them; nothing is paid
        twice). The call then warns with
        :class:`~batchata_df.errors.ProviderUnavailableWarning`. With ``wait=False`` there
        is no waiting: the reasons are on the rows at once.
    keep_raw
        Add a ``_raw`` column after the metadata: the text the provider returned for the
        row, also when it failed (an answer that did not validate, a truncated answer, a
        refusal). The checkpoint keeps it either way (``jobs.raw`` in
        :func:`~batchata_df.sql`); :func:`~batchata_df.reparse` re-validates it against a
        fixed schema without sending anything.
    keep_responses
        Keep each request's result exactly as the provider sent it -- the OpenAI batch
        output (or error) file line, the Anthropic results line, the Gemini result-file
        line or inlined response object, JSON text, secrets scrubbed -- in the checkpoint
        (``job_events.response``) and in a ``_response`` column after the metadata (null
        for rows the provider never answered, and for rows collected by an earlier call
        without it). Off by default: it roughly doubles what a checkpoint stores.
    lock_timeout
        A call holds the ``state`` folder's writer lock for its whole life, so that two
        calls on one folder (a cell run twice, two cron jobs, a ``wait=False`` poller beside
        a run) never send the same rows twice. When another call holds it, ``0`` (the
        default) raises :class:`~batchata_df.errors.StateLockedError` at once, naming the
        holder (pid, host, since when); a number of seconds waits at most that long;
        ``None`` waits as long as it takes. A lock left by a killed process is taken over
        at once. Dry runs and :func:`~batchata_df.sql` never need the lock.
    history
        The name of a column holding per row the earlier turns of a conversation, a list
        of ``{"role": "user" | "assistant", "content": str}`` in order; they are sent
        before the prompt (which is the last user turn), after the system prompt, on every
        provider. A null or empty list sends the prompt alone. Part of each job's id.
    prompt_caching
        ``True`` (the default): rows that share a leading part (the system prompt, the
        same files, a common start of the prompt) are sent next to each other and marked
        for the provider's prompt cache (Anthropic ``cache_control`` breakpoints, OpenAI
        ``prompt_cache_key``, Gemini's implicit cache by order), so repeated prefixes are
        billed at the cache-read rate (:mod:`batchata_df.caching`). The frame keeps its
        input order and the answers do not change; ``False`` sends plain requests.
    mode
        ``"batch"`` (the default): provider batches at half the standard price, answered
        in minutes to hours. ``"realtime"``: the same requests one at a time through the
        providers' standard endpoints (OpenAI chat completions, Anthropic messages, Gemini
        generateContent), answered in seconds at the standard price, with the same
        columns, checkpoints, cap and statuses (see :mod:`batchata_df.engine.realtime`).
        ``"auto"``: batches, except that a job of at most 50 rows to send goes realtime,
        and with ``deadline=`` (or ``time_limit=``) what a batch would not finish in time
        goes realtime (:mod:`batchata_df.engine.auto`). Each row's ``_mode`` says how it
        was answered. A state folder may be used in any mode, in any order: a row answered
        in one mode is never sent in the other.
    concurrency
        ``mode="realtime"`` or ``"auto"`` only: realtime requests in flight at once
        (default 8); with ``mode="batch"`` it is refused (``max_parallel_batches`` bounds
        the batches). Rate-limit answers (HTTP 429, 503, 529) are retried after the
        provider's ``Retry-After``.
    deadline
        ``mode="auto"`` only: seconds (or a timedelta) from now, or an aware datetime, by
        which every row should be answered.
    sink
        A ``.parquet`` path: stream. The input (a LazyFrame, e.g.
        ``pl.scan_parquet("in/*.parquet")``, is never collected whole) is read, keyed and
        sent ``chunk_rows`` rows at a time, the result is written to ``sink`` chunk by
        chunk in input order, and a ``LazyFrame`` scanning it is returned. Memory follows
        the chunk, not the input; the state folder holds the answers (give ``state=`` to
        resume a killed run: nothing is sent twice). A sink that is a file the input
        reads, or input files Polars cannot read as one (a column's type differing
        between them), is a :class:`~batchata_df.errors.ConfigError` before anything is
        sent; an existing sink is replaced when the call completes. A sink that is a
        symbolic link is written through: the file it names gets the result, the link
        stays (:func:`batchata_df.stream.sink_target`). See :mod:`batchata_df.stream`.
        With ``dry_run=True`` the sink is never written (nor its folder or the state folder
        created): the same call re-run dry leaves a finished result as it is. The plan is
        streamed to a file of its own, ``plan.parquet`` in a new folder in the system's
        temporary folder (``TMPDIR``; about the input's size), and a ``LazyFrame``
        reading it is returned; the folder is removed when no LazyFrame reads it any more
        (that one and those derived from it gone), or when the process exits
        (:class:`batchata_df.stream.PlanFile`).
    chunk_rows
        Rows per chunk of a streaming run (default
        :data:`batchata_df.stream.DEFAULT_CHUNK_ROWS`).

    Returns
    -------
    pl.DataFrame
        (A ``pl.LazyFrame`` over ``sink`` with ``sink=``: the same columns; with ``sink=``
        and ``dry_run=True``, over the plan's own file.)
        The input rows in input order with all input columns, one column per schema field,
        with ``citations=True`` one ``<field>_citations`` column per field, then
        ``_status``, ``_error``, ``_cost_usd``, ``_input_tokens``, ``_output_tokens``
        (thinking included), ``_reasoning_tokens`` (the thinking part of
        ``_output_tokens``), ``_job_id``, ``_batch_id``. Identical requests are sent once;
        their cost and tokens are on the first such row (0 on the others), so
        ``_cost_usd.sum()`` is what was paid.

    Examples
    --------
    >>> import polars as pl
    >>> from pydantic import BaseModel
    >>> from batchata_df import batch_llm
    >>> from batchata_df.emulator import Emulator
    >>> class Sentiment(BaseModel):
    ...     label: str
    ...     score: float
    >>> with Emulator() as emu, emu.environ():
    ...     out = pl.DataFrame({"text": ["great", "awful"]}).pipe(
    ...         batch_llm, schema=Sentiment, model="gpt-6-luna", prompt="Rate: {text}"
    ...     )
    >>> out.columns[:4], out["_status"].to_list()
    (['text', 'label', 'score', '_status'], ['completed', 'completed'])
    """
    if sink is not None or chunk_rows is not None:
        if not isinstance(df, pl.DataFrame | pl.LazyFrame):
            msg = f"batch_llm takes a polars DataFrame or LazyFrame, got {type(df).__name__}"
            raise ConfigError(msg)
        if sink is None:
            msg = "chunk_rows= is for streaming runs: pass sink='out.parquet' as well"
            raise ConfigError(msg)
        check_mode(mode, concurrency=concurrency, deadline=deadline, wait=wait)
        if mode != "batch":
            msg = (
                f"mode={mode!r} does not stream: a streaming run (sink=) sends batches. Drop "
                "sink= to run realtime or auto on a frame, or use mode='batch'"
            )
            raise ConfigError(msg)
        from batchata_df.stream import stream_llm

        return stream_llm(
            df.lazy(), sink=sink, chunk_rows=chunk_rows, schema=schema, model=model,
            prompt=prompt, state=state, system=system, files=files, citations=citations,
            params=params, max_cost_usd=max_cost_usd, time_limit=time_limit, dry_run=dry_run,
            items_per_batch=items_per_batch, max_parallel_batches=max_parallel_batches,
            progress=progress, wait=wait, prices=prices, retry_failed=retry_failed,
            provider_patience=provider_patience, keep_raw=keep_raw, lock_timeout=lock_timeout,
            history=history, keep_responses=keep_responses, prompt_caching=prompt_caching,
        )
    frame = df.collect() if isinstance(df, pl.LazyFrame) else df
    if not isinstance(frame, pl.DataFrame):
        msg = f"batch_llm takes a polars DataFrame or LazyFrame, got {type(df).__name__}"
        raise ConfigError(msg)
    time_limit_s, patience_s, stored_unpriced = check_run_arguments(
        max_cost_usd=max_cost_usd,
        time_limit=time_limit,
        items_per_batch=items_per_batch,
        max_parallel_batches=max_parallel_batches,
        flags={"wait": wait, "dry_run": dry_run, "retry_failed": retry_failed,
               "citations": citations, "keep_raw": keep_raw,
               "keep_responses": keep_responses, "prompt_caching": prompt_caching},
        state=state,
        prices=prices,
        params=params,
        provider_patience=provider_patience,
    )
    run_mode, concurrency, deadline_s = check_mode(
        mode, concurrency=concurrency, deadline=deadline, wait=wait
    )
    if run_mode == "auto" and deadline_s is None:
        deadline_s = time_limit_s  # "a deadline (or time limit)"
    answer = AnswerSchema(schema)
    _check_outputs(
        frame.columns, answer, dry_run=dry_run, citations=citations, files=files,
        keep_raw=keep_raw, keep_responses=keep_responses,
    )  # fmt: skip
    lock_wait = check_lock_timeout(lock_timeout)
    price_table = PriceTable(prices)
    if run_mode == "realtime":
        price_table = price_table.realtime()

    fingerprint = _fingerprint(
        model, prompt, system, answer, params, citations=citations, history=history
    )
    fingerprint, salt, scheme = _job_salt(state, fingerprint)
    jobs = build_jobs(
        frame, model=model, prompt=prompt, system=system, salt=salt, scheme=scheme,
        history=history,
    )
    # The distinct providers, not one Python string per row (0.08 s at 1M rows).
    needed = sorted(set(jobs.get_column("provider").drop_nulls().unique().to_list()))
    supported = frozenset.intersection(
        *[SUPPORTED_PARAMS.get(p, frozenset()) for p in needed]
    ) if needed else SUPPORTED_PARAMS["openai"]
    if citations and any(p not in CITATION_PROVIDERS for p in needed):
        other = [p for p in needed if p not in CITATION_PROVIDERS]
        msg = (
            f"citations=True is supported for {sorted(CITATION_PROVIDERS)!r} models only, but "
            f"this run uses {other!r}; use a Claude model (e.g. model='claude-haiku-4-5') or "
            "remove citations=True"
        )
        raise ConfigError(msg)
    run_params = check_params(params, supported)
    check_param_values(run_params, needed)
    recorded = _recorded_lookup(state, fingerprint, retry_failed=retry_failed)
    no_claude_format = _check_models(
        jobs, run_params, structured=answer.json_schema is not None, citations=citations,
        resuming=_existing_folder(state), realtime=run_mode == "realtime",
    )
    check_schema_limits(
        answer.json_schema, needed, name=answer.name, citations=no_claude_format
    )
    check_prices_used(prices, call_models(model, jobs, _model_pairs), state)
    spec = RequestSpec(
        schema=answer,
        params=run_params,
        citations=citations,
        keep_responses=keep_responses,
        prompt_caching=prompt_caching,
    )
    if files is not None:
        from batchata_df.files import attach_files, content_preparer

        jobs = attach_files(jobs, frame, files, salt=salt, scheme=scheme)
        spec = dataclasses.replace(spec, prepare=content_preparer(citations=citations))

    if _existing_folder(state):  # the job ids are final here (files= rehashes them)
        # Whether the folder holds a routed model's rows counts its failed ones too
        # (retry_failed sends those again, but they are the folder's: its run whose every
        # row failed is finished in its folder, not refused as a fresh one).
        held = _recorded_lookup(state, fingerprint, retry_failed=False)
        jobs = _check_retired_rows(jobs, recorded, held=held, dry_run=dry_run)
    jobs = _over_window(jobs, spec, recorded)
    sendable = _sendable(jobs)
    unestimated = sendable  # a lost request's worst case is priced from it (realtime)
    realtime_jobs = None
    # The day the job table is priced: the engine may start later (the state folder's
    # lock, an auto call's later phase), and prices it again from there (Repricer).
    priced_on = today()
    if dry_run or max_cost_usd is not None:
        why = "max_cost_usd" if max_cost_usd is not None else "dry_run"
        observed = _observed(state, fingerprint)
        if run_mode == "auto":  # a realtime phase holds realtime worst cases
            realtime_jobs = with_estimates(
                sendable, spec, price_table.realtime(), why=why, observed=observed
            )
        sendable = with_estimates(sendable, spec, price_table, why=why, observed=observed)
    options = RunOptions(
        items_per_batch=items_per_batch,
        max_parallel_batches=max_parallel_batches,
        wait=wait,
        time_limit_s=time_limit_s,
        retry_failed=retry_failed,
        max_cost_usd=None if max_cost_usd is None else float(max_cost_usd),
        provider_patience_s=patience_s,
        # The answers' text is read again only for _raw, or where nothing decodes them.
        answer_text=keep_raw or answer.json_schema is None or run_mode != "batch",
    )
    if dry_run:  # reads the folder without its lock: as checked above
        # "Already spent" counts lost realtime requests at their worst case, as the run's
        # cap would (it refuses what it cannot price; a dry run without a cap warns).
        if state is not None and Path(state).is_dir():
            stored_unpriced += price_lost_requests(
                state, _lost_worst(unestimated, spec, prices), recorded=True,
                refuse=max_cost_usd is not None,
            )  # fmt: skip
        options = dataclasses.replace(options, stored_unpriced_usd=stored_unpriced)
        from batchata_df.plan import dry_run_plan

        show = None
        if progress is True:
            from batchata_df.progress import make_display

            show = make_display(max_cost_usd=max_cost_usd).show_plan
        return dry_run_plan(
            frame, jobs, sendable, spec, options, state, fingerprint, show,
            mode=run_mode, realtime_jobs=realtime_jobs, concurrency=concurrency,
            deadline_s=deadline_s,
        )  # fmt: skip

    _load_dotenv()
    providers: dict[str, Provider] = {}
    display = _progress_callback(progress, max_cost_usd)
    try:
        for name in needed:
            providers[name] = make_provider(name)
        # The folder outlives the lock until the output is assembled: a failure there
        # keeps a temporary folder's paid answers too (_state_folder).
        scope = _state_folder(state)
        with scope as folder:
            with WriterLock(folder, lock_wait):
                # Under the lock, as the engine reads the rest of the folder's spend.
                options = _count_stored_spend(
                    options, folder, prices, _lost_worst(unestimated, spec, prices)
                )
                store = StateStore(folder, fingerprint)
                stop = threading.Event()
                engine = _engine(
                    run_mode,
                    store,
                    providers,
                    spec,
                    price_table,
                    options,
                    progress=display,
                    stop_event=stop,
                    concurrency=concurrency,
                    deadline_s=deadline_s,
                    reprice=(
                        None if max_cost_usd is None
                        else DatedEstimate(
                            functools.partial(
                                with_estimates, spec=spec, prices=price_table, why=why,
                                observed=observed,
                            ),
                            price_table, jobs, priced_on,
                        )
                    ),
                    reprice_realtime=(
                        None if max_cost_usd is None or run_mode != "auto"
                        else DatedEstimate(
                            functools.partial(
                                with_estimates, spec=spec, prices=price_table.realtime(),
                                why=why, observed=observed,
                            ),
                            price_table.realtime(), jobs, priced_on,
                        )
                    ),
                )  # fmt: skip
                with _interrupt_sets(stop):
                    if isinstance(engine, AutoEngine):
                        results = engine.run(sendable, realtime_jobs)
                    else:
                        results = engine.run(sendable)
                _warn_unavailable(results)
                _warn_serialised(engine, lambda: observed_output(results), options.max_cost_usd)
            # Only the keys are needed from here on: let the prompts (and file payloads) go.
            keys = jobs.select("job_id", "input_error")
            # ``unestimated`` is ``sendable`` (or the table it was priced from): all of
            # them hold the prompts, ~0.2 GB at 1M rows, through the assembly otherwise.
            del jobs, sendable, unestimated, realtime_jobs, engine
            # The states' columns the output does not read go before it is built.
            results = _output_states(results, keep_raw=keep_raw, keep_responses=keep_responses)
            out = _assemble(
                frame,
                keys,
                results,
                answer,
                citations=citations,
                keep_raw=keep_raw,
                keep_responses=keep_responses,
            )
            # Rows left in flight keep a temporary folder (_state_folder).
            scope.pending = int((out.get_column("_status") == "pending").sum())
            return out
    except KeyboardInterrupt:
        # A second Ctrl+C (or one outside the engine): the panel's last frame says so and
        # what to do, instead of staying on a running frame.
        abort = getattr(display, "abort", None)
        if callable(abort):
            abort()
        raise
    finally:
        close = getattr(display, "close", None)
        if callable(close):
            close()
        for provider in providers.values():
            provider.close()


def _engine(
    mode: str,
    store: StateStore,
    providers: dict[str, Provider],
    spec: RequestSpec,
    prices: PriceTable,
    options: RunOptions,
    *,
    progress: Callable[[ProgressSnapshot], None] | None,
    stop_event: threading.Event,
    concurrency: int | None,
    deadline_s: float | None,
    reprice: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
    reprice_realtime: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
) -> Engine | RealtimeEngine | AutoEngine:
    """The driver of ``mode``: batches, realtime requests, or both (``"auto"``).

    ``reprice``: the cap's worst case of jobs as of today, for a call that runs into a
    later date (:attr:`batchata_df.engine.run.RunContext.reprice`); ``reprice_realtime``:
    the same at realtime prices, for ``"auto"``'s realtime phase.
    """
    common: dict[str, Any] = {
        "progress": progress,
        "stop_event": stop_event,
        "make_provider": make_provider,
    }
    if mode == "batch":
        return Engine(store, providers, spec, prices, options, reprice=reprice, **common)
    concurrency = concurrency or DEFAULT_CONCURRENCY
    if mode == "realtime":
        return RealtimeEngine(
            store, providers, spec, prices, options, concurrency=concurrency,
            reprice=reprice, **common,
        )  # fmt: skip
    return AutoEngine(
        store, providers, spec, prices, options, deadline_s=deadline_s,
        concurrency=concurrency, reprice=reprice, reprice_realtime=reprice_realtime, **common,
    )  # fmt: skip


def _fingerprint(
    model: str | pl.Expr,
    prompt: str | pl.Expr,
    system: str | pl.Expr | None,
    answer: AnswerSchema,
    params: Mapping[str, Any] | None,
    *,
    citations: bool,
    history: str | None = None,
) -> dict[str, str]:
    fingerprint = {
        "model": _fingerprint_part(model),
        "prompt": _fingerprint_part(prompt),
        "system": _fingerprint_part(system),
        "schema": answer.fingerprint,
        "params": _fingerprint_part(dict(params or {})),
    }
    if citations:  # only when on, so that the ids of runs without citations do not change
        fingerprint["citations"] = "on"
    if history is not None:  # likewise
        fingerprint["history"] = _fingerprint_part(history)
    return fingerprint


def _salt_of(fingerprint: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(dict(fingerprint), sort_keys=True).encode()).hexdigest()


def _read_manifest(state: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    if state is None:
        return None
    path = Path(state) / "manifest.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # missing: a new folder; unreadable: StateStore says so
    return data if isinstance(data, dict) else None


JOB_SALT_KEY = "job_salt"
"""Fingerprint entry a :func:`reparse` adds: the key the folder's job ids were made with."""

ID_SCHEME_KEY = "job_ids"
"""Fingerprint entry naming the scheme of the folder's job ids (:data:`~batchata_df.jobs.IdScheme`).

Folders record it since the ``"hmac-sha256"`` scheme (``"hmac-sha256-v2"`` since job keys
are injective); a folder without it holds ``"blake2b"`` ids (it was written before), and
keeps them. A folder keeps its scheme.
"""

ID_SCHEME: IdScheme = "hmac-sha256-v2"
"""The scheme of new folders and of calls without one."""


def _job_salt(
    state: str | os.PathLike[str] | None, fingerprint: Mapping[str, str]
) -> tuple[dict[str, str], str, IdScheme]:
    """The run's fingerprint, the key of its job ids and their scheme.

    Normally the key is a hash of the settings. A :func:`reparse` changes the folder's
    schema but must not change its job ids (they name the answers already paid for), so it
    records the key in the folder's fingerprint (``job_salt``), which every part also
    carries (a manifest rebuilt by ``repair`` keeps it); a call whose settings match the
    rest of that fingerprint uses it.

    The scheme is the folder's too (:data:`ID_SCHEME_KEY`): a new folder, or a call
    without one, takes :data:`ID_SCHEME` and its fingerprint names it (so does the key,
    a hash of that fingerprint). A folder whose manifest names none was written with
    ``"blake2b"`` ids: the fingerprint stays without the entry, as the folder's is (it
    must not look like other settings), and the ids stay what they were.
    """
    manifest = _read_manifest(state)
    if manifest is None:  # no folder, or a new one (StateStore refuses unreadable ones)
        fingerprint = {**fingerprint, ID_SCHEME_KEY: ID_SCHEME}
        return fingerprint, _salt_of(fingerprint), ID_SCHEME
    recorded = manifest.get("fingerprint")
    recorded = recorded if isinstance(recorded, dict) else {}
    scheme = _id_scheme(recorded, state)
    fingerprint = dict(fingerprint)
    if ID_SCHEME_KEY in recorded:
        fingerprint[ID_SCHEME_KEY] = scheme
    kept = recorded.get(JOB_SALT_KEY)
    rest = {k: v for k, v in recorded.items() if k != JOB_SALT_KEY}
    if isinstance(kept, str) and kept and rest == fingerprint:
        return {**fingerprint, JOB_SALT_KEY: kept}, kept, scheme
    return fingerprint, _salt_of(fingerprint), scheme


def _id_scheme(
    recorded: Mapping[str, object], state: str | os.PathLike[str] | None
) -> IdScheme:
    """The job id scheme a folder's fingerprint names; ``"blake2b"`` when it names none.

    Only a folder that names no scheme holds ``"blake2b"`` ids: their key was made from a
    fingerprint without the entry, so a folder naming ``"blake2b"`` (an edited manifest)
    would get other ids and pay for every row again. It is refused, like a scheme this
    version does not know.
    """
    if ID_SCHEME_KEY not in recorded:
        return "blake2b"
    scheme = recorded[ID_SCHEME_KEY]
    if scheme == ID_SCHEME:
        return ID_SCHEME
    if scheme == "hmac-sha256":  # written before keys were injective (jobs.job_keys)
        return "hmac-sha256"
    if scheme == "blake2b":
        msg = (
            f"checkpoint folder {str(state)!r} names job id scheme 'blake2b', which no "
            f"batchata-df writes (a folder of BLAKE2b ids names none); remove the "
            f"{ID_SCHEME_KEY!r} entry from the fingerprint in its manifest.json"
        )
    else:
        msg = (
            f"checkpoint folder {str(state)!r} holds job ids of scheme {scheme!r}, which "
            f"this batchata-df does not know (it knows {', '.join(ID_SCHEMES)}); use the "
            "batchata-df version that wrote it (or a newer one), or a new state folder"
        )
    raise StateError(msg)


def job_ids_of(
    df: pl.DataFrame,
    *,
    schema: type[BaseModel] | None = None,
    model: str | pl.Expr,
    prompt: str | pl.Expr,
    state: str | os.PathLike[str] | None = None,
    system: str | pl.Expr | None = None,
    files: str | None = None,
    citations: bool = False,
    params: Mapping[str, Any] | None = None,
    history: str | None = None,
) -> pl.Series:
    """The ``job_id`` :func:`batch_llm` records each row of ``df`` under in folder ``state``.

    The same arguments as that call's (those that make the ids): the ids it would give,
    keyed as the folder's are (:func:`_job_salt`: its scheme, a :func:`reparse`'s key), a
    row it cannot send null. Nothing is sent or priced; ``files=`` are read (their bytes
    are part of the id). :meth:`batchata_df.compat.Batch.run` takes a Batch's own jobs out
    of a group folder other jobs share with them.
    """
    fingerprint = _fingerprint(
        model, prompt, system, AnswerSchema(schema), params, citations=citations,
        history=history,
    )  # fmt: skip
    _, salt, scheme = _job_salt(state, fingerprint)
    jobs = build_jobs(
        df, model=model, prompt=prompt, system=system, salt=salt, scheme=scheme,
        history=history,
    )  # fmt: skip
    if files is not None:
        from batchata_df.files import attach_files

        jobs = attach_files(jobs, df, files, salt=salt, scheme=scheme)
    return jobs.get_column("job_id")


def reparse(
    df: pl.DataFrame | pl.LazyFrame,
    *,
    schema: type[BaseModel] | None,
    state: str | os.PathLike[str],
    model: str | pl.Expr,
    prompt: str | pl.Expr,
    system: str | pl.Expr | None = None,
    files: str | None = None,
    citations: bool = False,
    params: Mapping[str, Any] | None = None,
    keep_raw: bool = False,
    history: str | None = None,
    keep_responses: bool = False,
    lock_timeout: float | None = 0.0,
    max_cost_usd: float | None = None,
    time_limit: float | dt.timedelta | None = None,
    dry_run: bool = False,
    items_per_batch: int | None = None,
    max_parallel_batches: int = 8,
    progress: ProgressArg = False,
    wait: bool = True,
    prices: Mapping[str, PriceOverride] | None = None,
    retry_failed: bool = False,
    provider_patience: float | dt.timedelta = 600.0,
    mode: Mode = "batch",
    concurrency: int | None = None,
    deadline: float | dt.timedelta | dt.datetime | None = None,
    prompt_caching: bool = True,
    sink: str | os.PathLike[str] | None = None,
    chunk_rows: int | None = None,
) -> pl.DataFrame:
    """Validate the answers stored in ``state`` against a new ``schema``; send nothing.

    After a run whose rows failed ``schema_validation`` (the answers are kept in the
    checkpoint, see ``keep_raw``), fix the schema and call ``reparse`` with the arguments
    of the original call and the new schema: every stored answer (completed rows, and rows
    that failed ``schema_validation``) is validated again, the results are recorded in
    the folder, and the frame comes back as :func:`batch_llm` would give it. No request is
    sent and nothing is billed again. Truncated answers stay failed (incomplete whatever
    the schema), so do refusals and provider errors (there is no answer to re-read); rows
    never answered stay as they were.

    The folder adopts the new schema: later ``batch_llm`` calls with it resume the folder
    (its job ids are kept), calls with the old schema are refused as a mismatch. With
    ``citations=True`` the stored citations are kept as they were.

    Parameters
    ----------
    df, model, prompt, system, files, citations, params
        As given to the :func:`batch_llm` call that filled ``state`` (a difference is a
        :class:`~batchata_df.errors.StateMismatchError`).
    schema
        The new answer schema.
    state
        The checkpoint folder of that call.
    keep_raw
        Add the ``_raw`` column (see :func:`batch_llm`).
    history
        As given to the original call (see :func:`batch_llm`).
    keep_responses
        Add the ``_response`` column (the provider's result kept in the folder; see
        :func:`batch_llm`).
    lock_timeout
        How long to wait for another call writing the folder (see :func:`batch_llm`).
    max_cost_usd, time_limit, dry_run, items_per_batch, max_parallel_batches
        Accepted and ignored, as the next three groups: the original call's arguments
        that only shape sending and collecting, so that its keyword arguments can be
        passed as they were (nothing is sent).
    progress, wait, prices, retry_failed, provider_patience
        Accepted and ignored (above).
    mode, concurrency, deadline, prompt_caching
        Accepted and ignored (above).
    sink, chunk_rows
        Refused when set (``reparse`` returns the frame: write it with
        ``write_parquet``).

    Returns
    -------
    pl.DataFrame
        The rows with the new schema's columns and the metadata columns.

    Examples
    --------
    >>> import tempfile
    >>> import polars as pl
    >>> from pydantic import BaseModel
    >>> from batchata_df import batch_llm, reparse
    >>> from batchata_df.emulator import Emulator
    >>> class Strict(BaseModel):
    ...     label: str
    ...     score: int
    >>> class Fixed(BaseModel):
    ...     label: str | None = None    # the model sometimes leaves it out
    ...     score: int
    >>> df = pl.DataFrame({"text": ["great", "awful [[emulator:invalid]]"]})
    >>> folder = tempfile.mkdtemp()
    >>> with Emulator() as emu, emu.environ():
    ...     first = df.pipe(batch_llm, schema=Strict, model="gpt-6-luna",
    ...                     prompt="Rate: {text}", state=folder)
    ...     fixed = df.pipe(reparse, schema=Fixed, model="gpt-6-luna",
    ...                     prompt="Rate: {text}", state=folder)
    ...     creates = [e for e in emu.log() if e["method"] == "POST"
    ...                and e["path"].endswith("/batches")]
    >>> first["_status"].to_list(), fixed["_status"].to_list(), len(creates)
    (['completed', 'failed'], ['completed', 'completed'], 1)
    """
    del max_cost_usd, time_limit, dry_run, items_per_batch, max_parallel_batches, progress
    del wait, prices, retry_failed, provider_patience, mode, concurrency, deadline
    del prompt_caching  # sending only: nothing is sent
    if sink is not None or chunk_rows is not None:
        msg = (
            "reparse returns the frame and writes no sink: drop sink= and chunk_rows=, then "
            "write the result with .write_parquet(...)"
        )
        raise ConfigError(msg)
    lock_timeout = check_lock_timeout(lock_timeout)
    frame = df.collect() if isinstance(df, pl.LazyFrame) else df
    if not isinstance(frame, pl.DataFrame):
        msg = f"reparse takes a polars DataFrame or LazyFrame, got {type(df).__name__}"
        raise ConfigError(msg)
    answer = AnswerSchema(schema)
    cite_columns = citation_columns(answer.columns) if citations else []
    _check_collisions(
        frame.columns,
        [*answer.columns, *cite_columns, *([RAW_COLUMN] if keep_raw else []),
         *([RESPONSE_COLUMN] if keep_responses else [])],
    )  # fmt: skip
    manifest = _read_manifest(state)
    if manifest is None:
        msg = (
            f"reparse needs the checkpoint folder of an earlier batch_llm call; "
            f"{str(state)!r} has no readable manifest.json"
        )
        raise StateError(msg)
    new = _fingerprint(
        model, prompt, system, answer, params, citations=citations, history=history
    )
    old = dict(manifest.get("fingerprint", {}))
    ignored = ("schema", JOB_SALT_KEY, ID_SCHEME_KEY)
    diff = sorted(k for k in set(old) | set(new) if k not in ignored and old.get(k) != new.get(k))
    if diff:
        msg = (
            f"checkpoint folder {str(state)!r} was written for a run with a different "
            f"{', '.join(diff)}; reparse needs the same arguments as that batch_llm call "
            "(only the schema may change)"
        )
        raise StateMismatchError(msg)
    kept = old.get(JOB_SALT_KEY)
    salt = kept if kept else _salt_of(old)
    new[JOB_SALT_KEY] = salt
    scheme = _id_scheme(old, state)
    if ID_SCHEME_KEY in old:  # kept, or the folder would look like a "blake2b" one
        new[ID_SCHEME_KEY] = scheme
    jobs = build_jobs(
        frame, model=model, prompt=prompt, system=system, salt=salt, scheme=scheme,
        history=history,
    )
    if files is not None:
        from batchata_df.files import attach_files

        jobs = attach_files(jobs, frame, files, salt=salt, scheme=scheme)
    # A writer: it must not interleave with a batch_llm call on the same folder.
    with WriterLock(state, lock_timeout):
        adopt_schema(state, new)
        store = StateStore(state, new)
        _revalidate(store, jobs.get_column("job_id"), answer)
    latest, billed = store.snapshot()
    results = latest.drop("cost_usd", "input_tokens", "output_tokens").join(
        billed, on="job_id", how="left"
    )
    keys = jobs.select("job_id", "input_error")
    return _assemble(
        frame, keys, results, answer, citations=citations, keep_raw=keep_raw,
        keep_responses=keep_responses,
    )


def _revalidate(store: StateStore, job_ids: pl.Series, answer: AnswerSchema) -> None:
    """Validate the stored answers of ``job_ids`` with ``answer``; record the outcomes."""
    latest, _ = store.snapshot()
    ours = latest.filter(pl.col("job_id").is_in(job_ids.implode()))
    again = ours.filter(
        pl.col("raw").is_not_null()
        & (
            (pl.col("status") == "completed")
            | (
                (pl.col("status") == "failed")
                & pl.col("error").str.extract(r"^([a-z_]+):", 1).is_in(list(REPARSED_ERRORS))
            )
        )
    )
    if again.height:
        canonical, errors = answer.validate(again.get_column("raw").to_list())
        ok = pl.Series("_err", errors, dtype=pl.String).is_null()
        events = again.with_columns(
            pl.Series("answer", canonical, dtype=pl.String),
            pl.when(ok).then(pl.lit("completed")).otherwise(pl.lit("failed")).alias("status"),
            pl.when(ok)
            .then(pl.lit(None, dtype=pl.String))
            .otherwise(pl.Series("_err", errors, dtype=pl.String))
            .alias("error"),
            pl.when(ok).then(pl.col("citations")).alias("citations"),
        ).drop("seq", "ts")
        # Same batch_key and usage as the attempt they re-read: billed once, not twice.
        store.append_jobs(events)


_INTERRUPTS = [0]
"""How many graceful stops Ctrl+C has asked for in this process (see :func:`interrupts`)."""


def interrupts() -> int:
    """How many times a first Ctrl+C has stopped a call gracefully in this process.

    ``compat.Batch.run`` compares it before and after each group's call: a Ctrl+C that came
    after the group's last row ended (its results being read, its last progress call)
    cancels no row, yet the user asked to stop and no later group may be sent.
    """
    return _INTERRUPTS[0]


@contextlib.contextmanager
def _interrupt_sets(stop: threading.Event) -> Iterator[None]:
    """Turn the first Ctrl+C into a graceful stop; a second one aborts at once.

    On the graceful stop nothing more is submitted, batches in flight are cancelled and
    their finished rows collected; the rest end ``cancelled: interrupted``. Signal handlers
    exist only in the main thread; elsewhere use ``time_limit`` (which works in any thread).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        _INTERRUPTS[0] += 1
        print(
            "\nbatchata-df: stopping - cancelling batches in flight and keeping finished rows "
            "(press Ctrl+C again to abort without waiting)",
            file=sys.stderr,
            flush=True,
        )

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _state_folder:
    """The caller's folder, or a temporary one removed afterwards.

    A call that fails after it wrote a part (it sent, or was about to send, a batch) keeps
    its temporary folder: the answers it paid for are there, and the error gets a note
    naming the folder to pass as ``state=`` to collect them without paying again. So does
    a call that returns rows still ``pending`` (:attr:`pending`, set by the caller before
    the end: a stop whose cancels did not end in time, a provider left unreachable) when a
    provider accepted a batch: it warns (:class:`~batchata_df.errors.KeptStateWarning`)
    with the folder instead, as there is no error to note it on.
    """

    def __init__(self, state: str | os.PathLike[str] | None) -> None:
        self._state = state
        self._tmp: str | None = None
        self.pending = 0

    @property
    def temporary(self) -> bool:
        """Whether the folder is a temporary one (no ``state=``): :attr:`pending` matters."""
        return self._tmp is not None

    def __enter__(self) -> Path:
        if self._state is not None:
            return Path(self._state)
        self._tmp = tempfile.mkdtemp(prefix="batchata-df-")
        return Path(self._tmp)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: object
    ) -> None:
        if self._tmp is None:
            return
        folder = Path(self._tmp)
        if error is not None and _paid_for(folder):
            error.add_note(
                f"batchata-df: this call had batches accepted or answers billed; they are "
                f"kept in {self._tmp!r}: call again with state={self._tmp!r} to collect "
                "them without paying again (or pass state= from the start to choose the "
                "folder)"
            )
            return
        if error is None and self.pending and _paid_for(folder, open_creates=True):
            # Before the warning: a filter that turns it into an error keeps the folder too.
            msg = (
                f"{self.pending} rows are still pending in batches the provider accepted or may "
                f"have accepted (and may bill); they are kept in {self._tmp!r}: call again with "
                f"state={self._tmp!r} to collect them without paying again (calling without "
                "it sends and pays for them again; or pass state= from the start to choose "
                "the folder)"
            )
            warn_user(KeptStateWarning(msg, self._tmp))
            return
        shutil.rmtree(folder, ignore_errors=True)


def _paid_for(folder: Path, *, open_creates: bool = False) -> bool:
    """Whether a state folder records a batch a provider accepted, or billed usage.

    With ``open_creates``, a create whose answer never came (the batch's latest event is
    still its ``intent``: rows returned ``pending``) counts as accepted: the provider may
    have made the batch. (A call that raised may have been refused its create outright, a
    rejected key, leaving the intent too.) A batch that failed to be created, or a request
    refused (a rejected key), leaves events too, but nothing to collect. When the parts
    cannot be read, ``True``: keeping a folder costs disk, losing one costs what was paid.
    """
    def scan(parts: list[Path], schema: pl.Schema) -> pl.LazyFrame:
        # Parts of different versions have different columns (a plain scan of them is a
        # SchemaError, which would keep a folder nothing was paid for): the table's schema.
        return pl.scan_parquet(
            parts, schema=schema, missing_columns="insert", extra_columns="ignore", glob=False
        )

    try:
        batches = list((folder / "batches").glob("part-*.parquet"))
        # An accepted batch, or a create whose answer never came (its batch's latest event
        # is still the intent: the provider may have made it, which a call with this
        # folder finds by listing; removed, the same call again pays for it again).
        accepted = pl.col("provider_batch_id").is_not_null().any()
        open_create = (
            pl.col("status").sort_by("seq").last().over("batch_key") == BatchPhase.INTENT.value
        ).any()
        if (
            batches
            and scan(batches, BATCH_EVENTS)
            .select(accepted | (open_create & open_creates))
            .collect()
            .item()
        ):
            return True
        jobs = list((folder / "jobs").glob("part-*.parquet"))
        usage = pl.any_horizontal(
            pl.col("input_tokens") > 0, pl.col("output_tokens") > 0, pl.col("cost_usd") > 0
        )
        return bool(jobs) and bool(scan(jobs, JOB_EVENTS).select(usage.any()).collect().item())
    except Exception:  # see the docstring
        return True


def _progress_callback(
    progress: ProgressArg, max_cost_usd: float | None
) -> Callable[[ProgressSnapshot], None] | None:
    if progress is False or progress is None:
        return None
    if progress is True:
        from batchata_df.progress import make_display

        return make_display(max_cost_usd=max_cost_usd)
    if callable(progress):
        return progress
    msg = f"progress must be a bool or a callable, got {progress!r}"
    raise ConfigError(msg)


def with_estimates(
    jobs: pl.DataFrame,
    spec: RequestSpec,
    prices: PriceTable,
    *,
    why: str,
    observed: Mapping[tuple[str, str], Any] | None = None,
) -> pl.DataFrame:
    """Add the worst-case and the expected estimates to jobs.

    Columns: ``est_input_tokens``, ``est_output_tokens_max``, ``worst_usd``,
    ``est_input_usd``, ``est_output_tokens_expected``, ``expected_usd``,
    ``expected_cache_saved_usd`` and ``expected_source``.

    Input tokens are counted offline (exact for OpenAI, a conservative approximation for the
    others) including the message framing and the JSON schema sent with every request;
    output is taken at its worst, ``max_tokens``. The expected output is the mean of the
    answers already observed for the model (``observed``, :mod:`batchata_df.estimates`) or
    the schema's answer size; expected input accounts for prompt caching. Raises
    :class:`PriceError` naming the fix when a model has no known price.
    """
    from batchata_df.estimates import (
        MIN_OBSERVED,
        THINKING_SHARE,
        answer_tokens,
        expected_cache_tokens,
        input_ratio,
    )
    from batchata_df.models import thinks, today

    parts = []
    indexed = jobs.with_row_index("_order")
    answer = answer_tokens(spec.schema.json_schema)
    for (provider, model), group in indexed.group_by(["provider", "model"]):
        price = prices.require(str(provider), str(model), why)
        if spec.prompt_caching:
            from batchata_df.caching import cache_plan

            group = cache_plan(group, str(provider), str(model))  # send order, cache columns
        # The worst case is max_tokens of output, thinking included (it counts against it).
        max_tokens = int(effective_params(str(provider), str(model), spec.params)["max_tokens"])
        # Counted by each model that may answer the requests: a routed model's successor
        # counts some inputs higher (an image, a PDF page), so the larger count is taken
        # (PriceTable.answering; sent after the routing date's day, the successor's
        # alone); for any other model, its own. The asked model's count is kept apart:
        # the folder's answers by it are scaled against it (input_ratio, below).
        counting = prices.answering(str(provider), str(model))
        own = _input_tokens(group, spec, str(provider), str(model))
        counts = {str(model): own}
        for name in counting:
            if name not in counts:
                counts[name] = _input_tokens(group, spec, str(provider), name)
        est_in = counts[counting[0]]
        for name in counting[1:]:
            theirs = counts[name]
            est_in = pl.select(pl.max_horizontal(est_in, theirs)).to_series()
        # Each row priced at the tier its own estimated input falls in (cost.estimate_expr).
        with_est = group.with_columns(est_in.alias("est_input_tokens"))
        marked = (
            pl.col("cache_key").is_not_null()
            if provider == "anthropic" and "cache_key" in group.columns
            else None
        )
        # The worst case (what max_cost_usd reserves) at the highest price the requests may
        # be billed at while they run: a dated price change or a routing to a successor
        # inside the batch window (PriceTable.worst); the expected cost at today's.
        highest = prices.worst(str(provider), str(model)) or price
        worst, input_usd = estimate_expr(
            highest, pl.col("est_input_tokens"), pl.lit(max_tokens), provider=str(provider),
            marked=marked,
        )  # fmt: skip
        # The expected cost is the answering model's: a routed model's successor answers
        # the requests run from its routing date on (PriceTable.answering up to today), at
        # its own price and thinking (priced at the asked model's when unknown, as the
        # Ledger prices such rows).
        answers_today = prices.answering(str(provider), str(model), on=today())[-1]
        if answers_today != model:
            price = prices.get(str(provider), answers_today) or price
        seen = (observed or {}).get((str(provider), str(model)))
        if seen is not None and seen.n >= MIN_OBSERVED:
            expected_out, source = round(seen.mean), f"observed ({seen.n:,} answers)"
        else:
            # The schema's answer size, or without a schema a free-text guess of its own
            # (estimates.answer_tokens(None)): said as such, not as the schema's.
            source = "schema" if spec.schema.json_schema is not None else "free-text guess"
            expected_out = answer
            if thinks(family_of(str(provider), answers_today), spec.params):
                expected_out += round(THINKING_SHARE * max(max_tokens - answer, 0))
                source += " + thinking guess"
        expected_out = min(expected_out, max_tokens)
        read, written = expected_cache_tokens(group, str(provider))
        # Expected input: the offline estimate scaled by what the same jobs were billed.
        # After a routing date, the successor's count (it answers them all), scaled by the
        # folder's answers each against the count of the model that answered it.
        estimated, count = with_est.select("job_id", "est_input_tokens"), "est_input_tokens"
        routed = answers_today if answers_today != model and answers_today in counts else None
        if routed is not None:
            count = "est_input_tokens_successor"
            estimated = with_est.select(
                "job_id", own.alias("est_input_tokens"), counts[routed].alias(count)
            )
        ratio = input_ratio(seen, estimated, routed)
        est = pl.lit(estimated.get_column(count) * ratio).round().cast(pl.Int64)
        read = pl.min_horizontal((read * ratio).round().cast(pl.Int64), est)
        written = pl.min_horizontal((written * ratio).round().cast(pl.Int64), est - read)
        rate = price.rate_expr
        expected = (
            (est - read - written) * rate("input", est)
            + read * rate("cached_input", est)
            + written * rate("cache_write", est)
            + expected_out * rate("output", est)
        ) / 1e6
        saved = (
            read * (rate("input", est) - rate("cached_input", est))
            - written * (rate("cache_write", est) - rate("input", est))
        ) / 1e6
        parts.append(
            with_est.with_columns(
                pl.lit(max_tokens, dtype=pl.Int64).alias("est_output_tokens_max"),
                worst.alias("worst_usd"),
                input_usd.alias("est_input_usd"),
                pl.lit(expected_out, dtype=pl.Int64).alias("est_output_tokens_expected"),
                expected.alias("expected_usd"),
                saved.alias("expected_cache_saved_usd"),
                pl.lit(source).alias("expected_source"),
            )
        )
    if not parts:
        return jobs.with_columns(  # no jobs: the same columns, so plans can select them
            pl.lit(None, dtype=pl.Int64).alias("est_input_tokens"),
            pl.lit(None, dtype=pl.Int64).alias("est_output_tokens_max"),
            pl.lit(None, dtype=pl.Float64).alias("worst_usd"),
            pl.lit(None, dtype=pl.Float64).alias("est_input_usd"),
            pl.lit(None, dtype=pl.Int64).alias("est_output_tokens_expected"),
            pl.lit(None, dtype=pl.Float64).alias("expected_usd"),
            pl.lit(None, dtype=pl.Float64).alias("expected_cache_saved_usd"),
            pl.lit(None, dtype=pl.String).alias("expected_source"),
        )
    return pl.concat(parts, how="diagonal_relaxed").sort("_order").drop("_order")


def _input_tokens(group: pl.DataFrame, spec: RequestSpec, provider: str, model: str) -> pl.Series:
    """Each job's input tokens counted offline by ``model``'s rules (``with_estimates``).

    The prompt and system with the message framing, the schema sent with every request,
    the history and the files, when the jobs have them.
    """
    from batchata_df.tokens import estimate_request_tokens, estimate_tokens, history_tokens

    schema_text = _schema_text(spec, provider, model)
    extra = 0
    if schema_text:
        extra = int(estimate_tokens(pl.Series([schema_text]), provider, model)[0])
    est_in = estimate_request_tokens(
        group.get_column("prompt"),
        provider,
        model,
        system=group.get_column("system"),
        extra_tokens=extra,
    )
    if "history" in group.columns:
        est_in = est_in + history_tokens(group.get_column("history"), provider, model)
    if "files" in group.columns:
        from batchata_df.files import file_tokens

        est_in = est_in + file_tokens(group.get_column("files"), provider, model)
    return est_in


def _observed(
    state: str | os.PathLike[str] | None, fingerprint: dict[str, str]
) -> dict[tuple[str, str], Any]:
    """Output tokens of the answers already in the state folder, per model (estimates)."""
    from batchata_df.errors import BatchataError
    from batchata_df.estimates import observed_output

    if state is None or not Path(state).is_dir() or not (Path(state) / "manifest.json").exists():
        return {}
    try:
        current, _ = StateStore(state, fingerprint, readonly=True).snapshot()
    except BatchataError:
        return {}  # the run itself reports what is wrong with the folder
    return observed_output(current)


def _count_stored_spend(
    options: RunOptions,
    state: str | os.PathLike[str] | None,
    prices: Mapping[str, PriceOverride] | None,
    worst_of: Callable[[pl.Series], pl.DataFrame] | None = None,
    *,
    streamed: bool = False,
) -> RunOptions:
    """``options`` with the cap counting what the folder spent that it holds no cost for.

    Answers stored without a cost, priced at ``prices``
    (:func:`~batchata_df.validate.check_spend_is_priced`), and realtime requests lost in
    flight without a recorded worst case, at the worst case ``worst_of`` computes from
    this call's rows (:func:`~batchata_df.validate.price_lost_requests`; ``streamed``: the
    recorded ones too, which only the in-memory engines count). Each refuses what it cannot
    price; nothing is sent then. A run calls this with the folder's writer lock held:
    what another process stored while this one waited for the lock is counted too.
    Without a cap (or a folder) ``options`` is returned as is.
    """
    if options.max_cost_usd is None or state is None:
        return options
    usd = check_spend_is_priced(state, prices)
    usd += price_lost_requests(state, worst_of, recorded=streamed)
    return dataclasses.replace(options, stored_unpriced_usd=usd)


def _lost_worst(
    sendable: pl.DataFrame,
    spec: RequestSpec,
    prices: Mapping[str, PriceOverride] | None,
) -> Callable[[pl.Series], pl.DataFrame]:
    """The worst case of a lost realtime request from this call's rows (``job_id``).

    As a cap holds it for a new realtime request: the input estimate plus ``max_tokens``
    of output at the realtime price (:func:`with_estimates`). Ids not among ``sendable``
    are absent from the result.
    """

    def worst_of(ids: pl.Series) -> pl.DataFrame:
        rows = sendable.filter(pl.col("job_id").is_in(ids.implode()))
        if not rows.height:
            return pl.DataFrame(schema={"job_id": pl.String, "worst_usd": pl.Float64})
        table = PriceTable(dict(prices) if prices else None).realtime()
        priced = with_estimates(rows, spec, table, why="max_cost_usd")
        return priced.select("job_id", pl.col("worst_usd").cast(pl.Float64))

    return worst_of


def _warn_serialised(
    engine: object,
    observed: Callable[[], Mapping[tuple[str, str], Observed]],
    cap: float | None,
) -> None:
    """Warn when the cap's worst case serialised the run, with a ``max_tokens`` that fits.

    Batch runs only (the engine's admission counts the rounds it made jobs wait). The jobs
    are the ones the engine set out to send, added up per model as it read them
    (``RunState.todo_totals``: in memory the job table, streamed each chunk); ``observed``
    gives the answers' output tokens per model (called only when the run was serialised:
    a streamed run's reads its folder).
    """
    from batchata_df.engine.run import RunState
    from batchata_df.errors import CapSerialisedWarning
    from batchata_df.estimates import suggest_max_tokens

    if not isinstance(engine, Engine):  # realtime and auto runs are not warned (yet)
        return
    state = engine.state
    if not isinstance(state, RunState):
        return
    if cap is None or state.cap_rounds == 0 or not state.todo_totals:
        return
    seen_per_model = observed()
    requests = sum(t.requests for t in state.todo_totals.values())
    room = cap - state.spent_at_start
    lines = [
        f"max_cost_usd={cap:g} serialised this run: the cap holds the worst case of every "
        "batch in flight (each request's input plus max_tokens of output), so only "
        f"{state.cap_first_fit or 0:,} of {requests:,} requests could be sent at once "
        f"and the rest went in {state.cap_rounds:,} more round(s), each waiting for earlier "
        "batches to be collected."
    ]
    models, suggestions = [], []
    for (provider, model), group in state.todo_totals.items():
        seen = seen_per_model.get((provider, model))
        if seen is None:
            continue
        current = group.max_tokens
        suggested = suggest_max_tokens(seen)
        if suggested >= current:
            continue
        worst_then = group.worst_at(suggested)
        fits = (
            f"all {group.requests:,} requests of this call fit under the cap at once"
            if worst_then <= room
            else f"its {group.requests:,} requests would need ${worst_then:,.4f} of room under "
            f"the cap at once (${max(room, 0.0):,.4f} was left)"
        )
        thinking = f", {seen.reasoning_max:,} of it thinking" if seen.reasoning_max else ""
        models.append(
            f"{model} used at most {seen.max:,} output tokens (99th percentile "
            f"{seen.p99:,}{thinking}) of max_tokens={current:,}, and at "
            f"max_tokens={suggested} {fits}"
        )
        suggestions.append(suggested)
    if models:
        best = max(suggestions)
        lines.append(
            "The answers, reasoning included: " + "; ".join(models) + ". "
            f"params={{'max_tokens': {best}}} fits them with a 25% margin: pass it with a "
            "new state= folder (this one holds the answers to the current parameters and "
            "refuses others)."
        )
    warn_user(" ".join(lines), CapSerialisedWarning)


def _warn_unavailable(results: pl.DataFrame) -> None:
    """Warn when rows of this call could not be sent or collected (provider unreachable).

    Or because their batch's results were downloaded but could not be used (cut short,
    not UTF-8: ``provider_unavailable: results_unusable: ...``): the warning then says so,
    not that the provider (which answered) was unreachable.
    """
    error = results.get_column("error")
    hit = error.str.contains("provider_unavailable: ", literal=True).fill_null(False)
    n = int(hit.sum())
    if n == 0:
        return
    unusable = f"provider_unavailable: {RESULTS_UNUSABLE}: "
    n_unusable = int(error.filter(hit).str.contains(unusable, literal=True).sum())
    unreachable = "the provider was unreachable"
    downloaded = (
        "their batch's results were downloaded but could not be used (cut short or not "
        "UTF-8; the provider answered)"
    )
    if n_unusable == 0:
        why = unreachable
    elif n_unusable == n:
        why = downloaded
    else:
        why = f"{unreachable} ({n - n_unusable} rows) or {downloaded} ({n_unusable} rows)"
    statuses = results.filter(hit).get_column("status").fill_null("pending")
    pending = int((statuses != "cancelled").sum())
    last = str(error.filter(hit)[-1])
    msg = (
        f"{n} rows could not be sent or collected because {why} ({pending} pending: call "
        f"again with the same state to collect them; {n - pending} cancelled: a later call "
        f"sends them). Last error: {last}"
    )
    warn_user(scrub(msg), ProviderUnavailableWarning)


def _sendable(jobs: pl.DataFrame) -> pl.DataFrame:
    """The jobs to run: rows without an input error, each ``job_id`` once (its first row).

    ``jobs.filter(input_error is null).unique("job_id", keep="first", maintain_order=True)``
    without its ``input_error`` column. When the ids are distinct already (rows with
    different prompts), the ``unique`` is skipped: counting them is a quarter of its CPU,
    which also gathers every column of the table into a copy (0.2 s at 1M rows;
    ``benchmarks/PROFILE.md``, tenth pass).

    Examples
    --------
    >>> jobs = pl.DataFrame({"job_id": ["a", "b", "a", "c"], "prompt": ["x", "y", "x", "z"],
    ...                      "input_error": [None, None, None, "input: bad"]})
    >>> _sendable(jobs).rows()
    [('a', 'x'), ('b', 'y')]
    """
    ok = jobs.filter(pl.col("input_error").is_null())
    if ok.get_column("job_id").n_unique() < ok.height:
        ok = ok.unique("job_id", keep="first", maintain_order=True)
    return ok.drop("input_error")


def _model_pairs(jobs: pl.DataFrame) -> list[tuple[object, object]]:
    """The distinct non-null ``(provider, model)`` pairs of ``jobs``, first seen first.

    ``jobs.select("provider", "model").drop_nulls().unique(maintain_order=True)``'s rows;
    a table of one model is told by comparisons, without hashing every row's pair (0.04 s
    at 1M rows).

    Examples
    --------
    >>> jobs = pl.DataFrame({"provider": ["openai", None, "openai"], "model": ["m", "m", "n"]})
    >>> _model_pairs(jobs)
    [('openai', 'm'), ('openai', 'n')]
    """
    only = only_model(jobs)
    if only is not None:
        return [only]
    return jobs.select("provider", "model").drop_nulls().unique(maintain_order=True).rows()


def _schema_text(spec: RequestSpec, provider: str, model: str) -> str:
    """What a request of ``model`` carries of the schema.

    The instruction that puts it in the system prompt (``RequestSpec.schema_in_prompt``),
    its JSON, or nothing.
    """
    schema = spec.schema.json_schema
    if schema is None:
        return ""
    if spec.schema_in_prompt(provider, model):
        return instruction(schema, cite=spec.citations)
    return json.dumps(schema)


def _check_models(
    jobs: pl.DataFrame,
    params: Mapping[str, Any],
    *,
    structured: bool,
    citations: bool,
    resuming: bool = False,
    realtime: bool = False,
) -> bool:
    """Every model of the run takes ``params`` and the features asked for, before spend.

    A model whose announced shutdown is near (``models.shutdown_warning``) gets a
    :class:`~batchata_df.errors.ModelShutdownWarning` here, once per call (a realtime
    run's without the batch window's sentence); a Gemini model whose unbounded thinking
    may take all of ``max_tokens`` (``models.thinking_room_warning``) a
    :class:`~batchata_df.errors.ThinkingRoomWarning`.

    A retired model (``models.check_retired``) is refused here only on a fresh run: a
    state folder that exists may hold answers or a batch in flight of a model retired
    since, which the call must still collect; there :func:`_check_retired_rows` refuses
    it only for rows the folder never recorded, once their job ids are final.

    A schema on a Claude model without structured output goes in its system prompt
    (``RequestSpec.schema_in_prompt``, as the seed library asked every Claude model); on an
    OpenAI or Gemini model without it, it is refused. Returns whether no Claude model of the
    run gets the schema as structured output (so Anthropic's structured-output limits do
    not apply to it).
    """
    claude_structured = False
    for provider, model in _model_pairs(jobs):
        check_provider(str(provider), str(model))
        if not resuming:
            check_retired(str(provider), str(model))
        notice = shutdown_warning(str(provider), str(model), batch=not realtime)
        if notice is not None:  # once per call and model, before anything is sent
            warn_user(ModelShutdownWarning(notice))
        check_endpoint(str(provider), str(model))
        check_model_params(str(provider), str(model), params)
        risk = thinking_room_warning(str(provider), str(model), params)
        if risk is not None:  # likely, not certain: said before sending, not refused
            cli = thinking_room_warning(str(provider), str(model), params, cli=True)
            warn_user(ThinkingRoomWarning(risk, cli=cli))
        family = family_of(str(provider), str(model))
        if not family.system_prompt and _has_system(jobs, model):
            raise _no_system_prompt(str(provider), str(model))
        if provider == "anthropic" and family.structured_output:
            claude_structured = True
        if structured and not family.structured_output and not citations:
            if provider == "anthropic":
                continue
            msg = (
                f"model {model!r} ({family.name}) does not take structured output (a JSON "
                "schema); use a newer model of the family, or schema=None for text answers"
            )
            raise SchemaError(msg)
    return citations or not claude_structured



def _check_retired_rows(
    jobs: pl.DataFrame,
    recorded: Callable[[pl.Series], pl.Series] | None,
    *,
    refuse: bool = True,
    held: Callable[[pl.Series], pl.Series] | None = None,
    dry_run: bool = False,
) -> pl.DataFrame:
    """On an existing state folder: a retired model's rows the folder never recorded.

    ``recorded`` is :func:`_recorded_lookup` (as for :func:`_over_window`): rows of a
    retired model whose job the folder holds (answered, failed, or in a batch that may be
    in flight, paid for) are collected as usual. Any other row of it would be sent and
    refused by the provider. When the folder holds none of that model's rows, the call
    raises the :class:`~batchata_df.errors.ModelError` of a fresh folder (naming the
    replacement) before anything is sent; when it holds some, raising would leave their
    paid batch uncollected, so the other rows fail as data instead (``input_error``: the
    same message, never sent; ``retry_failed`` does not send them either). The folder is
    read only when the run has a retired model. ``refuse=False`` (a streamed chunk, whose
    call decides on all its chunks): the rows are marked, never raised for. ``held``
    (default ``recorded``): for a routed model, which job ids the folder holds at all,
    failed ones included whatever ``retry_failed`` (:func:`_recorded_lookup` without it),
    for that decision: its run whose every row failed is finished with ``retry_failed``,
    its failed rows sent again (a model whose requests fail is refused, as streamed).

    A model the provider routes to a successor once retired (``models.routed_successor``:
    Gemini 2.5 Pro/Flash) is still answered: on a folder holding some of its rows, the
    others are sent (answered and priced by the successor) with a
    :class:`~batchata_df.errors.ModelShutdownWarning` saying so, not failed; the same model
    asked for on a fresh folder is refused as above (choose the successor there).
    """
    for provider, model in _model_pairs(jobs):
        try:
            check_retired(str(provider), str(model))
        except ModelError as error:
            of_model = (pl.col("provider") == provider) & (pl.col("model") == model)
            ids = jobs.filter(of_model).get_column("job_id").drop_nulls().unique()
            known = recorded(ids) if recorded is not None else ids.clear()
            successor = routed_successor(str(provider), str(model))
            holds = held(ids) if held is not None and successor is not None else known
            if refuse and not ids.is_in(holds.implode()).any():
                raise
            if successor is not None:
                # Routed (Gemini 2.5 from 2026-12-01): the provider still answers its
                # requests, with the successor, so the run the folder holds can be
                # finished, as its batches in flight were (a streamed call says so once,
                # stream._check_retired_everywhere), only when some row is left to send.
                if refuse and not ids.is_in(known.implode()).all():
                    notice = routed_resume_warning(
                        str(provider), str(model), successor, dry_run=dry_run
                    )
                    warn_user(ModelShutdownWarning(notice))
                continue
            new = of_model & pl.col("job_id").is_not_null()
            new = new & ~pl.col("job_id").is_in(known.implode())
            jobs = jobs.with_columns(
                pl.when(new).then(pl.lit(str(error))).otherwise(pl.col("input_error"))
                .alias("input_error"),
                pl.when(new).then(None).otherwise(pl.col("job_id")).alias("job_id"),
            )  # fmt: skip
    return jobs


def _no_system_prompt(provider: str, model: str) -> ParamError:
    """The error for a system prompt on a row of a model that takes none (o1-mini)."""
    family = family_of(provider, model)
    msg = (
        f"model {model!r} ({family.name}) takes no system prompt: OpenAI refuses a "
        "system or developer message for it (\"'messages[0].role' does not support "
        "'system' with this model\"); put the instructions in prompt=, or use a "
        "model that takes one such as 'gpt-5.4-mini'"
    )
    return ParamError(msg, model=model, param="system")


def _has_system(jobs: pl.DataFrame, model: object) -> bool:
    """Whether any job of ``model`` carries a system prompt."""
    if "system" not in jobs.columns:
        return False
    return jobs.filter((pl.col("model") == model) & pl.col("system").is_not_null()).height > 0


WINDOW_TOKENS_PER_O200K: dict[str, float] = {"openai": 1.0, "anthropic": 1.0, "gemini": 0.8}
"""The fewest tokens of the provider's own tokenizer per ``o200k_base`` token (lower bounds).

The context-window check (:func:`_over_window`) refuses a row only where even the most
favourable count of its request is over the window: OpenAI's is exact (the model's own BPE,
:mod:`batchata_df.tokens`); Anthropic and Gemini publish no offline tokenizer, so their
count is bounded below by the ``o200k_base`` count times this factor, never by the
planner's estimate (which leans high on purpose: ~1.8x ``o200k_base`` on Python, 1.43x on
JSON, where Claude counts ~1.3x).

* Anthropic, 1.0: Claude's tokenizers spend more tokens than GPT-4o's ``o200k_base`` on
  every kind of text measured -- 16 % more on English, 21 % on math, 30 % on Python
  (Vantage's comparison of Claude 3.5 Sonnet with GPT-4o, reported by VentureBeat, "Hidden
  costs in AI deployment: Why Claude models may be 20-30 % more expensive than GPT in
  enterprise settings", 2025), and the Claude Opus 4.7 tokenizer up to 35 % more than the
  earlier Claude ones (Anthropic's Opus 4.7 notes). So the ``o200k_base`` count is a lower
  bound.
* Gemini, 0.8: no published comparison; Gemini's 256k-entry vocabulary can be more
  frugal than ``o200k_base`` outside English, so a row is refused only above 1.25x the
  window in ``o200k_base`` tokens (an assumption; Gemini's windows are 1M tokens, which few
  rows approach).
"""


def _window_tokens(rows: pl.DataFrame, provider: str, model: str, schema_text: str) -> pl.Series:
    """The fewest input tokens each row's request can count as (see WINDOW_TOKENS_PER_O200K).

    OpenAI's text count is exact (with its chat framing); files count at their least
    (:func:`batchata_df.files.file_tokens` ``at_least``).
    """
    from batchata_df.tokens import estimate_request_tokens, estimate_tokens, history_tokens

    # Counted with the model's own encoding on OpenAI, o200k_base for the others.
    counted = model if provider == "openai" else "gpt-4o"
    extra = 0
    if schema_text:
        extra = int(estimate_tokens(pl.Series([schema_text]), "openai", counted)[0])
    tokens = estimate_request_tokens(
        rows.get_column("prompt"), "openai", counted,
        system=rows.get_column("system"), extra_tokens=extra,
    )  # fmt: skip
    if "history" in rows.columns:
        tokens = tokens + history_tokens(rows.get_column("history"), "openai", counted)
    factor = WINDOW_TOKENS_PER_O200K[provider]
    if factor != 1.0:
        tokens = (tokens.cast(pl.Float64) * factor).floor().cast(pl.Int64)
    if "files" in rows.columns:
        from batchata_df.files import file_tokens

        tokens = tokens + file_tokens(rows.get_column("files"), provider, model, at_least=True)
    return tokens


def _over_window(
    jobs: pl.DataFrame,
    spec: RequestSpec,
    recorded: Callable[[pl.Series], pl.Series] | None = None,
) -> pl.DataFrame:
    """Fail rows whose request cannot fit the model's context window, without sending them.

    Each such row gets an ``input_error`` (and no ``job_id``), like a row with a null
    prompt: a run of a million rows with a few over-long ones answers the rest and shows
    which rows were too long and why, instead of refusing the whole run (or sending the
    rows and having each one refused by the provider after the batch ran, as
    ``context_length_exceeded`` / ``prompt is too long`` / ``The input token count ...
    exceeds the maximum``). The window is :func:`batchata_df.models.context_window`.

    A row is refused only where the fewest tokens its request can count as
    (:func:`_window_tokens`: exact on OpenAI text, a lower bound elsewhere,
    :data:`WINDOW_TOKENS_PER_O200K`) exceed the window; a row whose count is only an
    estimate near the edge is sent, and the provider's refusal, if any, comes back as that
    row's error (unbilled). Counted only for rows whose bytes could reach the window (a
    token covers at least one byte of text), so a run of short rows pays one string-length
    pass per model.

    ``recorded`` (given the job ids of the rows about to be refused) returns those that the
    state folder already holds an answer or a batch in flight for: they keep their job id,
    so a resumed run shows what was paid for (a folder written before this check, or before
    a window changed), and only rows that would be sent are refused.

    Examples
    --------
    >>> from batchata_df.schema import AnswerSchema
    >>> jobs = pl.DataFrame({"job_id": ["a", "b"], "provider": ["openai"] * 2,
    ...     "model": ["gpt-4o-mini"] * 2, "prompt": ["hi", "word " * 140_000],
    ...     "system": [None, None], "input_error": [None, None]},
    ...     schema_overrides={"system": pl.String, "input_error": pl.String})
    >>> out = _over_window(jobs, RequestSpec(AnswerSchema(None), {}))
    >>> out["job_id"].to_list(), out["input_error"][1]  # doctest: +NORMALIZE_WHITESPACE
    (['a', None], "input: the request is 140,008 tokens, over the context window of
    'gpt-4o-mini' (128,000 tokens); shorten the prompt or use a model with a larger window")
    """
    from batchata_df.models import context_window

    refused: list[pl.DataFrame] = []
    for provider, model in _model_pairs(jobs):
        window = context_window(str(provider), str(model))
        if window is None:
            continue
        schema_text = _schema_text(spec, str(provider), str(model))
        name = {"google": "gemini"}.get(str(provider), str(provider))
        # In o200k_base tokens (or the OpenAI model's own), the most a row can hold and fit.
        limit = int(window / WINDOW_TOKENS_PER_O200K[name])
        sized = pl.col("prompt").str.len_bytes().fill_null(0) + pl.col(
            "system"
        ).str.len_bytes().fill_null(0)
        if "history" in jobs.columns:  # its turns' bytes, and framing per turn
            sized = sized + pl.col("history").list.eval(
                pl.element().struct.field("content").str.len_bytes().fill_null(0) + 16
            ).list.sum().fill_null(0)
        maybe = sized + len(schema_text.encode()) + 64 > limit
        if "files" in jobs.columns:  # pages and documents are not bytes of text: count them
            maybe = maybe | pl.col("files").is_not_null()
        ours = (pl.col("provider") == provider) & (pl.col("model") == model)
        rows = jobs.with_row_index("_row").filter(
            ours & pl.col("input_error").is_null() & maybe
        )
        if not rows.height or not _can_count(str(provider), str(model)):
            continue
        tokens = _window_tokens(rows, name, str(model), schema_text)
        over = rows.select("_row", "job_id").with_columns(tokens.alias("_tokens")).filter(
            pl.col("_tokens") > window
        )
        if over.height and recorded is not None:
            keep = recorded(over.get_column("job_id"))
            over = over.filter(~pl.col("job_id").is_in(keep.implode()))
        if over.height:
            exact = name == "openai" and "files" not in rows.columns
            about = "" if exact else "at least "
            refused.append(over.select(
                "_row",
                pl.format(
                    "input: the request is {} tokens, over the context window of {} ({} "
                    "tokens); shorten the prompt or use a model with a larger window",
                    pl.lit(about) + pl.col("_tokens").map_elements(
                        lambda n: f"{n:,}", return_dtype=pl.String
                    ),
                    pl.lit(repr(str(model))),
                    pl.lit(f"{window:,}"),
                ).alias("_why"),
            ))  # fmt: skip
    if not refused:
        return jobs
    why = pl.concat(refused)
    joined = (
        jobs.with_row_index("_row")
        .join(why, on="_row", how="left", maintain_order="left")
        .drop("_row")
    )
    return joined.with_columns(
        pl.coalesce("input_error", "_why").alias("input_error"),
        pl.when(pl.col("_why").is_null()).then(pl.col("job_id")).alias("job_id"),
    ).drop("_why")


def _existing_folder(state: str | os.PathLike[str] | None) -> bool:
    """Whether ``state`` names a state folder already written (a resumed run)."""
    return state is not None and (Path(state) / "manifest.json").exists()


def _can_count(provider: str, model: str) -> bool:
    """Whether the BPE the window check counts with is installed (else the provider decides)."""
    from batchata_df.tokens import _counter, openai_encoding_name

    encoding = openai_encoding_name(model) if provider == "openai" else "o200k_base"
    return _counter(encoding) is not None


def _recorded_lookup(
    state: str | os.PathLike[str] | None, fingerprint: dict[str, str], *, retry_failed: bool
) -> Callable[[pl.Series], pl.Series] | None:
    """For :func:`_over_window`: which of some job ids the state folder will not send again.

    Those whose latest event is ``completed``, ``failed`` (unless ``retry_failed``) or
    ``assigned`` (a batch that may be in flight, or a realtime request an earlier call lost:
    the engine resolves it). Read only when a row is about to be refused (rare), from a
    read-only store: no lock, nothing written.
    """
    if state is None:
        return None
    folder = Path(state)

    def recorded(job_ids: pl.Series) -> pl.Series:
        if not (folder / "manifest.json").exists():
            return job_ids.clear()
        store = StateStore(folder, fingerprint, readonly=True)
        latest = store.latest_status(job_ids)
        keep = ["completed", "assigned"] if retry_failed else ["completed", "assigned", "failed"]
        return latest.filter(pl.col("status").is_in(keep)).get_column("job_id")

    return recorded


def _check_outputs(
    columns: list[str],
    answer: AnswerSchema,
    *,
    dry_run: bool,
    citations: bool,
    files: object,
    keep_raw: bool,
    keep_responses: bool,
) -> None:
    """Check the columns a call would add and its ``files``/``citations`` pairing.

    Shared by the in-memory and the streaming call.
    """
    cite_columns = citation_columns(answer.columns) if citations else []
    if dry_run:
        from batchata_df.plan import PLAN_COLUMNS

        _check_collisions(columns, [], produced=PLAN_COLUMNS, what="dry-run plan")
    else:
        _check_collisions(
            columns,
            [
                *answer.columns,
                *cite_columns,
                *([RAW_COLUMN] if keep_raw else []),
                *([RESPONSE_COLUMN] if keep_responses else []),
            ],
        )
    if citations and files is None:
        msg = (
            "citations=True needs documents to cite: pass files='<column of file paths>' "
            "(PDF or text), or remove citations=True"
        )
        raise ConfigError(msg)
    if files is not None and not isinstance(files, str):
        msg = f"files= takes the name of a column of paths or bytes, got {files!r}"
        raise ConfigError(msg)

def _check_collisions(
    input_columns: list[str],
    answer_columns: list[str],
    *,
    produced: Sequence[str] = META_COLUMNS,
    what: str = "output",
) -> None:
    names = [*answer_columns, *produced]
    clash = [c for c in names if c in input_columns]
    if clash:
        example = ", ".join(f"{c!r}: {c.lstrip('_') + '_in'!r}" for c in clash)
        msg = (
            f"the {what} would have columns {clash!r} twice: the input frame already has "
            f"them. Rename those input columns (df.rename({{{example}}})) or the schema fields"
        )
        raise ColumnError(msg)


_FIRST = "\x00first"
""":func:`_assemble`'s working column: the row is the first of its job (never an output)."""


def _output_states(
    results: pl.DataFrame, *, keep_raw: bool = False, keep_responses: bool = False
) -> pl.DataFrame:
    """The columns of the job states :func:`_assemble` reads, the missing ones as nulls.

    A run's final states hold every event column (its checkpoint's); the output needs
    about half of them. :func:`batch_llm` narrows its states with this before assembling,
    so that the others (the answers' text where they were decoded already, the raw text
    unless ``keep_raw``, sequence numbers, batch keys, estimates: ~0.2 GB at 1M rows) are
    let go before the output is built beside them. Narrowing twice changes nothing.
    """
    if "citations" not in results.columns:
        results = results.with_columns(pl.lit(None, dtype=pl.String).alias("citations"))
    if "attempts" not in results.columns:
        results = results.with_columns(pl.lit(None, dtype=pl.Int64).alias("attempts"))
    if "reasoning_tokens" not in results.columns:
        results = results.with_columns(pl.lit(None, dtype=pl.Int64).alias("reasoning_tokens"))
    for text in ("raw", "response", "mode", "batch_key"):
        if text not in results.columns:
            results = results.with_columns(pl.lit(None, dtype=pl.String).alias(text))
    return results.select(
        "job_id",
        "status",
        "error",
        # The answers' text only where they were not decoded already (or as raw, below).
        *([] if DECODED in results.columns else ["answer"]),
        "citations",
        # The raw texts only when asked for (a join moves every selected string).
        *(["raw"] if keep_raw else []),
        *(["response"] if keep_responses else []),
        "input_tokens",
        "output_tokens",
        "reasoning_tokens",
        "cost_usd",
        "attempts",
        "provider_batch_id",
        # How the row was last sent: realtime events say so; batch events have a batch key.
        pl.when(pl.col("mode").is_not_null())
        .then(pl.col("mode"))
        .when(pl.col("batch_key").is_not_null())
        .then(pl.lit("batch"))
        .alias("mode"),
        # The answers the run's validation decoded already (StateStore.written_states).
        *([DECODED] if DECODED in results.columns else []),
    )


def _assemble(
    frame: pl.DataFrame,
    jobs: pl.DataFrame,
    results: pl.DataFrame,
    answer: AnswerSchema,
    *,
    citations: bool = False,
    keep_raw: bool = False,
    keep_responses: bool = False,
) -> pl.DataFrame:
    """Join job states back onto the rows, in input order, and decode the answers."""
    state = _output_states(results, keep_raw=keep_raw, keep_responses=keep_responses)
    # A streaming run marks rows whose request an earlier chunk already had (``later``).
    later = ["later"] if "later" in jobs.columns else []
    joined = join_by_job(jobs.select("job_id", "input_error", *later), state)
    sendable = pl.col("input_error").is_null()
    terminal = sendable & pl.col("status").is_in(["completed", "failed", "cancelled"])
    status = (
        pl.when(~sendable)
        .then(pl.lit("failed"))
        .when(terminal)
        .then(pl.col("status"))
        .otherwise(pl.lit("pending"))
    )
    # Identical requests are one job: its bill goes on its first row, 0 on the others.
    # Computed once (each billed column would hash the ids again); when the states lined
    # up with the rows (``join_by_job``: no null id, the same ids in the same order, and
    # the states hold each job once), every row is its job's first.
    ids = joined.get_column("job_id")
    aligned = (
        ids.null_count() == 0
        and ids.len() == state.height
        and ids.equals(state.get_column("job_id"), check_names=False)
    )
    first = pl.lit(True) if aligned else pl.col("job_id").is_first_distinct()
    if later:
        first = first & ~pl.col("later")
    joined = joined.with_columns(first.alias(_FIRST))
    first = pl.col(_FIRST)
    charged = sendable & first & pl.col("attempts").is_not_null()

    def billed(col: str, dtype: pl.DataType) -> pl.Expr:
        return (
            pl.when(charged)
            .then(pl.col(col))
            .when(terminal | ~sendable | (sendable & ~first))
            .then(pl.lit(0, dtype=dtype))
            .otherwise(pl.lit(None, dtype=dtype))
            .cast(dtype)
        )

    meta = [
        status.alias("_status"),
        # Pending rows carry a reason only when the provider was unreachable.
        pl.when(~sendable).then(pl.col("input_error")).otherwise(pl.col("error")).alias("_error"),
        billed("cost_usd", pl.Float64()).alias("_cost_usd"),
        billed("input_tokens", pl.Int64()).alias("_input_tokens"),
        billed("output_tokens", pl.Int64()).alias("_output_tokens"),
        billed("reasoning_tokens", pl.Int64()).alias("_reasoning_tokens"),
        pl.col("job_id").alias("_job_id"),
        pl.when(sendable).then(pl.col("provider_batch_id")).alias("_batch_id"),
        pl.when(sendable).then(pl.col("mode")).alias("_mode"),
    ]
    if keep_raw:
        meta.append(pl.when(terminal).then(pl.col("raw")).alias(RAW_COLUMN))
    if keep_responses:
        meta.append(pl.when(terminal).then(pl.col("response")).alias(RESPONSE_COLUMN))
    completed = terminal & (pl.col("status") == "completed")
    if DECODED in state.columns:  # decoded once, by the validation: the same struct
        typed = answer.typed(pl.when(completed).then(pl.col(DECODED)))
    else:
        typed = answer.decoded(pl.when(completed).then(pl.col("answer")))
    cited = (
        decode_citations(pl.when(completed).then(pl.col("citations")), answer.columns)
        if citations
        else []
    )
    out = answer.expand(joined.select(typed, *cited, *meta))
    return pl.concat([frame, out], how="horizontal")


