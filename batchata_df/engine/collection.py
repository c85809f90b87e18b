"""Collection: poll batches in flight, turn finished ones into terminal job events with cost.

:func:`outcomes_to_events` is the pure part (provider results -> job outcomes, schema
validation, no row lost). :class:`Collector` polls the batches that are due, downloads
results, writes the events, settles the batch's reservation against its actual cost, and
hands batches refused for a queue limit to the :class:`~batchata_df.engine.planning.Requeue`.
"""

from __future__ import annotations

import re

import polars as pl

from batchata_df.engine.admission import Admission
from batchata_df.engine.ledger import Ledger
from batchata_df.engine.planning import Requeue, over_named_limit, queue_limit_refusal
from batchata_df.engine.run import (
    BatchPhase,
    InFlightBatch,
    RunContext,
    RunState,
    batch_word,
    failpoint,
    report,
)
from batchata_df.errors import ProviderError, ResultFileError
from batchata_df.providers.base import BatchPoll, ProviderState, RequestSpec, empty_results
from batchata_df.state import DECODED, damaged_detail, lined_up

__all__ = [
    "RESULTS_UNUSABLE",
    "THINKING_ADVICE",
    "TRUNCATED_ADVICE",
    "Collector",
    "UNMATCHED_PREFIX",
    "answered_by_expr",
    "holds_any",
    "outcomes_and_unmatched",
    "outcomes_to_events",
    "unmatched_events",
    "unmatched_note",
    "shut_down_note",
]

RESULTS_UNUSABLE = "results_unusable"
"""Marks, after ``provider_unavailable:``, rows pending because their batch's results were
downloaded but could not be used (:class:`~batchata_df.errors.ResultFileError`): the
provider answered; it was not unreachable."""

# What to do about a truncated answer, said so that it can be followed: the same state
# folder refuses other params (StateMismatchError, even with retry_failed), and a new
# folder for the whole frame would pay again for every completed row. So only the failed
# rows go again, with the higher limit, into a new folder (tests/test_truncation.py
# follows it verbatim).
TRUNCATED_ADVICE = (
    "re-run only the failed rows, df.filter(out['_status'] == 'failed'), with a higher "
    "params={'max_tokens': ...} and a new state folder (this one refuses other params)"
)
THINKING_ADVICE = (
    "re-run only the failed rows, df.filter(out['_status'] == 'failed'), with a higher "
    "params={'max_tokens': ...} or a lower params['reasoning_effort'] and a new state folder "
    "(this one refuses other params)"
)


def outcomes_to_events(
    members: pl.DataFrame,
    results: pl.DataFrame,
    poll: BatchPoll,
    spec: RequestSpec,
    *,
    cancel_reason: str | None = None,
    provider: str | None = None,
    model: str | None = None,
    keep_decoded: bool = False,
) -> pl.DataFrame:
    """Turn a finished batch's provider results into terminal job events.

    :func:`outcomes_and_unmatched` without the result lines that matched no member.
    """
    events, _ = outcomes_and_unmatched(
        members, results, poll, spec, cancel_reason=cancel_reason, provider=provider,
        model=model, keep_decoded=keep_decoded,
    )  # fmt: skip
    return events


def outcomes_and_unmatched(
    members: pl.DataFrame,
    results: pl.DataFrame,
    poll: BatchPoll,
    spec: RequestSpec,
    *,
    cancel_reason: str | None = None,
    provider: str | None = None,
    model: str | None = None,
    keep_decoded: bool = False,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Turn a finished batch's provider results into terminal job events.

    Also returns the result lines whose id is none of ``members`` (or null) and that carry
    usage: billed lines no row can be given (an id damaged on its way: a byte not UTF-8
    inside it reads as U+FFFD). Seen only when not every line met a member: results
    lined up with the members, or as many matched as there are lines, cost nothing more.

    With ``keep_decoded``, a :data:`~batchata_df.state.DECODED` column is added when the
    validation decoded the answers anyway (:meth:`AnswerSchema.validate_decoded`): each
    completed answer decoded, so that the output need not decode it again.

    ``provider`` and ``model`` (the batch's) give the ``max_tokens`` the requests were
    sent with (:func:`batchata_df.models.effective_params`), named in truncation errors;
    an answer cut off after thinking used most of it says so.

    ``members`` lists the batch's ``job_id`` s; a member with no result line ends according
    to the batch's final state, so no row is ever lost. Answers are validated against the
    schema: a succeeded request whose answer does not validate ends ``failed``.
    """
    ids = members.select("job_id")
    # Results usually come in the order the requests went: then they are put beside the
    # members as they are (the same rows a join gives, without hashing the ids twice).
    aligned = lined_up(ids, results)
    if aligned:
        # The decoded columns come in one chunk per block of the download (pyarrow's
        # reader: ARROW_BLOCK_BYTES) beside one-chunk ids and literals: put in one chunk
        # here (~15 MB a 100,000-row batch, its pages reused batch after batch), or the
        # first Polars operations over the run's terminal events (the bill, the final
        # states' join) put every column of the whole run in one chunk at once: ~0.2 s of
        # CPU, ~50,000 fresh pages and ~175 MB of peak RSS at 1M Gemini rows. Here, not
        # where the store keeps the parts: the validation's decoded answers are then laid
        # out as the rest (a join, the other branch, gives one chunk already;
        # benchmarks/PROFILE.md, fifteenth pass).
        joined = pl.concat([ids, results.drop("job_id").rechunk()], how="horizontal")
    else:
        joined = ids.join(results, on="job_id", how="left")
    unmatched = results.clear()
    # Each line has an outcome: as many outcomes joined as lines means every line met one.
    if not aligned and joined.get_column("outcome").count() != results.height:
        unmatched = results.join(ids, on="job_id", how="anti").filter(
            pl.col("input_tokens").is_not_null() | pl.col("output_tokens").is_not_null()
        )
    for optional in ("citations", "response", "model"):  # results without optional columns
        if optional not in joined.columns:
            joined = joined.with_columns(pl.lit(None, dtype=pl.String).alias(optional))
    succeeded = joined.filter(pl.col("outcome") == "succeeded")
    texts = succeeded.get_column("text")
    decoded: pl.Series | None = None
    if keep_decoded:
        canonical, errors, decoded = spec.schema.validate_decoded(texts)
    else:
        canonical, errors = spec.schema.validate_series(texts)
    checked = [canonical, errors.alias("verr"), *([] if decoded is None else [decoded])]
    max_tokens = spec.params.get("max_tokens")
    if provider is not None and model is not None:
        from batchata_df.models import effective_params

        max_tokens = effective_params(provider, model, spec.params)["max_tokens"]
    if "reasoning_tokens" not in joined.columns:
        joined = joined.with_columns(pl.lit(None, dtype=pl.Int64).alias("reasoning_tokens"))
    if succeeded.height == joined.height and (aligned or _one_row_each(ids, joined)):
        # Every row succeeded, each job on one row: the validated columns go beside them
        # as they are. (Results in another order than the members, as Anthropic's come,
        # were joined onto them again by job id: 0.13 s at 1M rows; PROFILE.md, tenth pass.)
        joined = joined.with_columns(checked)
    else:
        validated = succeeded.select("job_id").with_columns(checked)
        joined = joined.join(validated, on="job_id", how="left")
    if poll.state is ProviderState.FAILED:
        missing_error = f"batch_failed: the provider rejected the batch: {poll.detail}"
        missing_status = "failed"
    elif poll.state is ProviderState.CANCELLED:
        missing_error = f"cancelled: {cancel_reason or 'provider_cancelled'}"
        missing_status = "cancelled"
    elif poll.state is ProviderState.EXPIRED:
        missing_error = "expired: the provider did not finish this request in its window"
        missing_status = "failed"
    else:
        missing_error = "missing_result: the provider returned no result for this request"
        missing_status = "failed"
    truncated = pl.col("truncated").fill_null(False)
    status = (
        pl.when(pl.col("outcome").is_null())
        .then(pl.lit(missing_status))
        .when(pl.col("outcome") == "canceled")
        .then(pl.lit("cancelled"))
        # An answer cut off by the output limit is incomplete even when it validates (any
        # text does without a schema; OpenAI's reasoning models return "" when reasoning
        # used the limit): it fails, its text kept as the raw answer.
        .when((pl.col("outcome") == "succeeded") & pl.col("verr").is_null() & ~truncated)
        .then(pl.lit("completed"))
        .otherwise(pl.lit("failed"))
    )
    truncated_msg = pl.lit(
        f"truncated: the answer hit max_tokens={max_tokens} before it was complete; "
        + TRUNCATED_ADVICE
    )
    reasoning = pl.col("reasoning_tokens").fill_null(0)
    # Thinking counts against max_tokens: when it took most of it, say so and what to change.
    thinking_msg = pl.concat_str(
        [
            pl.lit("truncated: thinking used "),
            reasoning.cast(pl.String),
            pl.lit(
                f" of max_tokens={max_tokens} tokens before the answer was complete; "
                + THINKING_ADVICE
            ),
        ]
    )
    # "Most of it": thinking took at least half of the limit.
    truncated_msg = (
        pl.when((reasoning > 0) & (reasoning * 2 >= (max_tokens or 0)))
        .then(thinking_msg)
        .otherwise(truncated_msg)
    )
    # Provider errors that say why the answer stopped, whatever the finish reason; and a
    # line served not UTF-8 (providers.base.decoded_results): its text is damaged.
    stopped = pl.col("error").fill_null("").str.contains(
        r"^(?:refusal|content_filter|not_utf8):"
    )
    error = (
        pl.when(pl.col("outcome").is_null())
        .then(pl.lit(missing_error))
        .when(pl.col("outcome") == "canceled")
        .then(pl.lit(f"cancelled: {cancel_reason or 'provider_cancelled'}"))
        # Gemini: no text. A refusal or a filter that also hit the limit stays a refusal or
        # a filter: more max_tokens would only pay for it again.
        .when(pl.col("outcome").is_in(["succeeded", "errored"]) & truncated & ~stopped)
        .then(truncated_msg)
        .when(pl.col("outcome") == "succeeded")
        .then(pl.col("verr"))
        .otherwise(pl.col("error"))
    )
    events = joined.select(
        "job_id",
        status.alias("status"),
        error.alias("error"),
        pl.when(status == "completed").then(pl.col("answer")).alias("answer"),
        "input_tokens",
        "output_tokens",
        "cached_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        pl.when(status == "completed").then(pl.col("citations")).alias("citations"),
        # What the provider returned, kept whatever the outcome (a refusal, a truncated or
        # invalid answer was paid for): batch_llm(keep_raw=True), jobs.raw, reparse.
        pl.col("text").alias("raw"),
        # The provider's own result line (RequestSpec.keep_responses; else null).
        "response",
        answered_by_expr(provider, model).alias("answered_by"),
        *(
            []
            if decoded is None
            else [pl.when(status == "completed").then(pl.col(DECODED)).alias(DECODED)]
        ),
    )
    return events, unmatched


def answered_by_expr(provider: str | None, model: str | None) -> pl.Expr:
    """The model that answered a row when it is not ``model`` (the one asked), else null.

    Read from the results' ``model`` (Gemini's ``modelVersion``): Google answers the
    requests of a routed model with its successor from the routing date on, billed at the
    successor's rates (:data:`batchata_df.models.SCHEDULED`), including the requests of a
    batch sent before the date that run after it. ``models/`` is not part of the name,
    and neither is a stable version suffix (``-001``, ``-002``): the model answering as
    itself may name its version (google-genai responses have carried both
    ``"modelVersion": "gemini-2.5-pro"`` for ``gemini-2.5-pro``, googleapis/js-genai issue
    907, and ``"gemini-1.5-flash-002"``, mlflow/mlflow pull 14272's fixtures), which is the
    same model at the same price, not a routed one.

    Examples
    --------
    >>> df = pl.DataFrame({"model": ["gemini-2.5-pro", "models/gemini-3.8-flash", None,
    ...                              "gemini-2.5-pro-002"]})
    >>> df.select(answered_by_expr("gemini", "gemini-2.5-pro")).to_series().to_list()
    [None, 'gemini-3.8-flash', None, None]
    """
    said = pl.col("model").str.strip_prefix("models/")
    if model is None:
        return pl.lit(None, dtype=pl.String)
    asked = model.removeprefix("models/") if provider == "gemini" else model
    same = said.str.replace(_VERSION_SUFFIX, "") == re.sub(_VERSION_SUFFIX, "", asked)
    return pl.when(~same).then(said)


_VERSION_SUFFIX = r"-\d{3}$"
"""A stable model version's suffix (``gemini-1.5-flash-002``): the same model."""


UNMATCHED_PREFIX = "unmatched:"
"""Job ids of billed result lines no row could be given: ``unmatched:<batch_key>:<n>``
(never a row's id: those are hex digests). Their usage and cost count as spent."""


def unmatched_events(
    unmatched: pl.DataFrame,
    *,
    batch_key: str,
    provider_batch_id: str,
    provider: str | None = None,
    model: str | None = None,
) -> pl.DataFrame:
    """Terminal events keeping the usage of billed result lines that matched no row.

    One ``failed`` event per line (:data:`UNMATCHED_PREFIX` ids, ``mode`` batch), its
    tokens and text kept: the provider billed it, so the cost computed from them counts
    under ``max_cost_usd`` and in ``batchata-df status`` / ``sql`` like any other answer's.
    With the batch's ``provider`` and ``model``, a line answered by another model says so
    (``answered_by``, :func:`answered_by_expr`), and is priced at it.

    Examples
    --------
    >>> line = pl.DataFrame({"job_id": ["a\ufffd1"], "error": [None], "text": ["hi"],
    ...     "input_tokens": [12], "output_tokens": [3], "cached_tokens": [0],
    ...     "cache_write_tokens": [0], "reasoning_tokens": [0]})
    >>> ev = unmatched_events(line, batch_key="k", provider_batch_id="batch_1")
    >>> ev.select("job_id", "status", "input_tokens", "raw").row(0)
    ('unmatched:k:0', 'failed', 12, 'hi')
    >>> ev["error"][0][:60]
    'unmatched_result: a result line of batch batch_1 carried the'
    >>> said = line.with_columns(model=pl.lit("gemini-3.8-flash"))
    >>> unmatched_events(said, batch_key="k", provider_batch_id="b", provider="gemini",
    ...                  model="gemini-3.5-flash")["answered_by"].to_list()
    ['gemini-3.8-flash']
    """
    ids = [f"{UNMATCHED_PREFIX}{batch_key}:{i}" for i in range(unmatched.height)]
    seen = pl.col("job_id").fill_null("(none)")
    line_error = pl.col("error")
    message = pl.concat_str(
        [
            pl.lit(f"unmatched_result: a result line of batch {provider_batch_id} carried the id "),
            pl.lit("'"), seen, pl.lit("'"),
            pl.lit(
                ", which is none of the batch's requests (damaged on its way?); the provider "
                "billed it, so its usage is kept here and counted as spent (max_cost_usd, "
                "batchata-df status, sql). The request it answered ended missing_result"
            ),
            pl.when(line_error.is_not_null())
            .then(pl.concat_str([pl.lit(" (the line's own error: "), line_error, pl.lit(")")]))
            .otherwise(pl.lit("")),
        ]
    )  # fmt: skip
    usage = ["input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens",
             "reasoning_tokens"]  # fmt: skip
    return unmatched.select(
        pl.Series("job_id", ids, dtype=pl.String),
        pl.lit("failed").alias("status"),
        message.alias("error"),
        *usage,
        pl.col("text").alias("raw"),
        *([pl.col("response")] if "response" in unmatched.columns else []),
        pl.lit("batch").alias("mode"),
        *(
            [answered_by_expr(provider, model).alias("answered_by")]
            if "model" in unmatched.columns
            else []
        ),
    )


def unmatched_note(events: pl.DataFrame, n_unmatched: int, batch_key: str) -> pl.DataFrame:
    """``events`` with each ``missing_result`` saying which billed lines matched no row."""
    if not n_unmatched:
        return events
    lines = "1 result line" if n_unmatched == 1 else f"{n_unmatched} result lines"
    note = (
        "missing_result: the provider returned no result under this request's id, and "
        f"{lines} of its batch carried an id that is no request's (damaged on its way?): "
        f"their usage is kept under job id {UNMATCHED_PREFIX}{batch_key}:<n> and counted as "
        "spent, since one may be this request's answer. retry_failed=True sends it again "
        "(max_cost_usd counts both)"
    )
    missing = pl.col("error").str.starts_with("missing_result:").fill_null(False)
    return events.with_columns(
        pl.when(missing).then(pl.lit(note)).otherwise(pl.col("error")).alias("error")
    )


def shut_down_note(events: pl.DataFrame, provider: str, model: str) -> pl.DataFrame:
    """``events`` with each request the model's shutdown came before saying so.

    A batch the provider accepted while it served ``model`` answers the requests it had not
    run when the model was shut down with its model-not-found error
    (:data:`batchata_df.models.SHUT_DOWN_ERRORS`): those rows fail (unbilled: no usage)
    with :func:`batchata_df.models.shut_down_message`, naming the date and the replacement
    to send them with, instead of a bare 404 (when the library knows the batch went before
    the shutdown; else the provider's words stay).

    Examples
    --------
    >>> ev = pl.DataFrame({"job_id": ["a", "b"], "status": ["failed", "completed"],
    ...     "error": ["not_found_error: model: claude-x-9", None]})
    >>> shut_down_note(ev, "anthropic", "claude-x-9")["error"][0]  # never served: as said
    'not_found_error: model: claude-x-9'
    """
    from batchata_df.models import SHUT_DOWN_ERRORS, shut_down_message

    pattern = SHUT_DOWN_ERRORS.get(provider)
    if pattern is None or "error" not in events.columns:
        return events
    hit = (pl.col("status") == "failed") & pl.col("error").str.contains(pattern).fill_null(False)
    if not events.select(hit.any()).item():
        return events
    message = shut_down_message(provider, model, "\x00")
    if message is None:
        return events
    prefix = message.split("\x00")[0]
    return events.with_columns(
        pl.when(hit).then(pl.lit(prefix) + pl.col("error")).otherwise(pl.col("error"))
        .alias("error")
    )  # fmt: skip


def _one_row_each(ids: pl.DataFrame, joined: pl.DataFrame) -> bool:
    """Whether ``joined`` (``ids`` left-joined with results) holds each of ``ids`` once.

    ``ids``' job ids distinct and no more rows joined than ids: no job met two results.
    A join of ``joined`` with columns computed from its own rows, by job id, then gives
    them back in place.
    """
    return joined.height == ids.height and ids.get_column("job_id").n_unique() == ids.height


def holds_any(ids: pl.Series, members: pl.Series) -> bool:
    """``ids.is_in(members).any()``: whether any of ``ids`` is one of ``members``.

    The first id is looked for first, with one comparison per member: a batch's results
    hold its members, so that settles it without hashing both columns (0.1 s of CPU at
    1M rows); else every id is looked up.

    Examples
    --------
    >>> members = pl.Series(["a", "b"])
    >>> holds_any(pl.Series(["b", "x"]), members), holds_any(pl.Series(["x", "a"]), members)
    (True, True)
    >>> holds_any(pl.Series(["x", None]), members)
    False
    """
    if ids.len() and ids[0] is not None and (members == ids[0]).any():
        return True
    return bool(ids.is_in(members.implode()).any())


class Collector:
    """Polls batches in flight and stores the outcomes of finished ones."""

    def __init__(
        self,
        ctx: RunContext,
        state: RunState,
        admission: Admission,
        ledger: Ledger,
        requeue: Requeue,
    ) -> None:
        self.ctx, self.state, self.admission = ctx, state, admission
        self.ledger, self.requeue = ledger, requeue

    def poll_due(self) -> None:
        """Poll the batches that are due; collect finished ones and drop them from in_flight.

        With ``wait=False`` every batch is due.
        """
        in_flight = self.state.in_flight
        clock, wait = self.ctx.clock, self.ctx.options.wait
        now = clock.monotonic()
        for batch in [b for b in in_flight if b.next_poll <= now or not wait]:
            poll = self.poll(batch)
            if poll is None:
                if batch.status == BatchPhase.COLLECTED or (
                    wait and batch.batch_key in self.state.unavailable
                ):
                    # Collected, or unreachable past the patience: its rows stay pending
                    # (with the reason) and a later call with the same state collects it.
                    in_flight.remove(batch)
                continue
            if poll.state is ProviderState.RUNNING:
                batch.next_poll = clock.monotonic() + batch.backoff.next()
                continue
            if self.collect(batch, poll):
                in_flight.remove(batch)

    def poll(self, batch: InFlightBatch) -> BatchPoll | None:
        """Observe a batch; ``None`` when the provider could not tell this time."""
        try:
            poll = self.ctx.providers[batch.provider].poll(batch.provider_batch_id)
        except ProviderError as e:
            if e.permanent:
                # E.g. 404: the provider no longer knows the batch. Its rows cannot end
                # otherwise; they fail with the reason (retry_failed sends them again).
                self.ledger.end_batch(batch, f"provider_error: {e}")
                return None
            # Transient, after the SDK's own retries: try again later; the batch is safe
            # at the provider and its id is checkpointed.
            self._later(batch, e)
            return None
        if poll.state is ProviderState.RUNNING:
            # An ended batch is reachable only once its results download too.
            self._reachable(batch)
        self.state.batch_status[batch.batch_key] = batch_word(poll, batch)
        # Kept after the batch ends, until its rows count completed/failed/cancelled
        # (Ledger.terminal drops it then): dropped at the end instead, the display's done
        # count went back while the results downloaded. Never lower than a count seen.
        finished = self.state.in_flight_finished
        finished[batch.batch_key] = max(finished.get(batch.batch_key, 0), poll.finished)
        return poll

    def _later(self, batch: InFlightBatch, error: ProviderError) -> None:
        """A poll or download failed transiently: try again later, within the patience."""
        now = self.ctx.clock.monotonic()
        batch.failures += 1
        batch.next_poll = now + batch.backoff.next()
        if batch.unreachable_since is None:
            batch.unreachable_since = now
        waited = now - batch.unreachable_since
        unusable = isinstance(error, ResultFileError)
        if isinstance(error, ResultFileError):
            # The provider answered: its results came whole but unusable (cut short, not
            # UTF-8), and the next poll downloads them again. "Unreachable" sent people
            # looking for a network fault.
            self.state.activity = (
                f"the results of {batch.provider_batch_id} could not be used, downloading "
                f"them again (for {waited:.0f}s): {error}"
            )
            if error.damaged is not None:
                # Recorded, so that a later process served the same bytes again knows
                # them for the provider's (wait=False: one process per poll).
                self.ledger.batch(batch, status=batch.status, detail=damaged_detail(*error.damaged))
        else:
            self.state.activity = (
                f"{batch.provider} unreachable for {waited:.0f}s (provider_unavailable: {error})"
            )
        if not self.ctx.options.wait or waited >= self.ctx.options.provider_patience_s:
            why = f"{RESULTS_UNUSABLE}: {error}" if unusable else str(error)
            self.state.unavailable[batch.batch_key] = (
                f"provider_unavailable: {why}; batch {batch.provider_batch_id} is at the "
                "provider: call again with the same state to collect it"
            )

    def _reachable(self, batch: InFlightBatch) -> None:
        batch.failures = 0
        batch.unreachable_since = None
        self.state.unavailable.pop(batch.batch_key, None)

    def collect(self, batch: InFlightBatch, poll: BatchPoll) -> bool:
        """Store a finished batch's outcomes; ``False`` if its results must be fetched later."""
        if poll.state is ProviderState.FAILED and queue_limit_refusal(poll):
            self._refused(batch, poll)
            return True
        if poll.state is ProviderState.FAILED:
            results = empty_results()
            job_ids = batch.job_ids  # decoded once, here (InFlightBatch.ids)
        else:
            self.state.activity = f"downloading results of {batch.provider_batch_id}"
            report(self.ctx, self.state, "running")
            try:
                results = self.ctx.providers[batch.provider].results(
                    batch.provider_batch_id, self.ctx.spec
                )
            except ProviderError as e:
                if e.permanent:
                    self.ledger.end_batch(batch, f"results_unavailable: {e}")
                    return True
                self._later(batch, e)
                # Given up for this call (past the patience): its rows stay pending.
                return self.ctx.options.wait and batch.batch_key in self.state.unavailable
            self._reachable(batch)
            job_ids = batch.job_ids  # decoded once, downloaded (InFlightBatch.ids)
            got = results.get_column("job_id")
            # Only an adopted batch (found by a lookup by size and time: Anthropic's, after
            # a crash, a lost create's answer or by repair) may be someone else's. One
            # answered by its create, or found by our own tag, is ours: lines matching none
            # of its requests (an id null, rewritten or damaged on its way) are billed spend kept
            # as unmatched below, never a reason to send its rows and pay again. An id with
            # a damaged byte (U+FFFD as read) is no one's: not another batch's.
            if (
                batch.adopted
                and results.height
                and not holds_any(got, job_ids)
                and not got.str.contains("\ufffd", literal=True).any()
            ):
                # Not ours: forget it; its jobs go back to the queue of the next call.
                self.ledger.batch(
                    batch,
                    status=BatchPhase.ABANDONED.value,
                    detail="the batch found by a lookup holds none of our requests",
                )
                self.state.release(batch.reserved)
                self.state.in_flight_finished.pop(batch.batch_key, None)  # not ours
                return True
        events, unmatched = outcomes_and_unmatched(
            pl.DataFrame({"job_id": job_ids}),
            results,
            poll,
            self.ctx.spec,
            cancel_reason=batch.cancel_reason,
            provider=batch.provider,
            model=batch.model,
            # The answers decoded by the validation go with the events the store keeps for
            # the final states (StateStore.record_jobs), if it keeps them.
            keep_decoded=self.ctx.store.recording,
        )
        events = unmatched_note(events, unmatched.height, batch.batch_key)
        events = shut_down_note(events, batch.provider, batch.model)
        actual = self.ledger.terminal(
            events,
            batch_key=batch.batch_key,
            provider=batch.provider,
            model=batch.model,
            provider_batch_id=batch.provider_batch_id,
            sent_on=batch.sent_on,
        )
        if unmatched.height:
            # Billed lines no row can be given: their cost counts as spent all the same
            # (kept under their own ids; not rows of this call, so not counted as done).
            actual += self.ledger.terminal(
                unmatched_events(
                    unmatched, batch_key=batch.batch_key,
                    provider_batch_id=batch.provider_batch_id,
                    provider=batch.provider, model=batch.model,
                ),
                batch_key=batch.batch_key,
                provider=batch.provider,
                model=batch.model,
                provider_batch_id=batch.provider_batch_id,
                rows=False,
                sent_on=batch.sent_on,
            )  # fmt: skip
        failpoint("after_results")  # stored, not yet recorded collected (crash tests)
        self.admission.settle(batch, actual, events, job_ids)
        if batch.recovered and self.ctx.resend_cancelled:
            # An earlier call's stop cancelled these (a second Ctrl+C left before the cancel
            # was seen): no answer, no bill. This call sends them (README: "Cancelled rows
            # are sent again by the next call"), not the one after it; the driver does not
            # when this call is stopping itself.
            cancelled = events.filter(pl.col("status") == "cancelled").get_column("job_id")
            if cancelled.len():
                self.state.resend.append(cancelled)
        self.requeue.accepted(batch.provider, batch.model)
        self.state.activity = ""
        self.ledger.batch(
            batch,
            status=BatchPhase.COLLECTED.value,
            provider_status=poll.provider_status,
            n_jobs=batch.n_jobs,
            detail=poll.detail,
        )
        self.state.batch_status[batch.batch_key] = BatchPhase.COLLECTED.value
        return True

    def _refused(self, batch: InFlightBatch, poll: BatchPoll) -> None:
        """A batch refused for the provider's queue limit: its jobs wait or fail now."""
        others = [
            b
            for b in self.state.in_flight
            if b is not batch and (b.provider, b.model) == (batch.provider, batch.model)
        ]
        too_big = batch.n_jobs == 1 and over_named_limit(
            self.state.job_rows(batch.job_ids),
            batch.provider,
            batch.model,
            poll.detail,
        )
        self.state.in_flight_finished.pop(batch.batch_key, None)  # its rows wait again
        if not self.requeue.refused(batch, others=len(others), too_big=too_big):
            self.ledger.end_batch(batch, f"rate_limited: {poll.detail}")
            return
        self.ledger.batch(
            batch, status=BatchPhase.COLLECTED.value, detail=f"requeued: {poll.detail}"
        )
        self.state.release(batch.reserved)
