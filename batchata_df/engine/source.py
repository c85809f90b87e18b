"""Job sources: jobs arriving in chunks, for runs whose job table never fits in memory.

A streaming run (``batch_llm(lf, ..., sink=...)``) does not hand the engine a job table; it
hands it a :class:`JobSource`, and the engine pulls the next chunk only when everything
before it is in a provider batch (:class:`Feeder`). Each chunk is checked against the
state folder by its own job ids (completed, failed unless ``retry_failed``, or in a batch
still open are not sent), so what the engine holds is one chunk plus the job ids of the
batches in flight (with their input estimates, as columns beside the ids), whatever the
size of the input (and the ids of re-attached batches' rows collected ``cancelled`` before
their chunk was read, to send them from it: :meth:`Feeder.resend`).
"""

from __future__ import annotations

from typing import Protocol

import polars as pl

from batchata_df.engine.planning import Planner
from batchata_df.engine.recovery import resolve_lost, settled
from batchata_df.engine.run import RunContext, RunState
from batchata_df.estimates import count_todo

__all__ = ["Feeder", "JobSource"]


class JobSource(Protocol):
    """Where a streaming run's jobs come from, one chunk at a time."""

    expected_rows: int
    """Input rows expected in all (for the progress total before every chunk is seen)."""
    rows_seen: int
    """Input rows read so far."""

    def next_chunk(self) -> pl.DataFrame | None:
        """The next chunk's jobs (``None``: no more).

        One row per job id not already given in an earlier chunk (identical requests are
        one job across the whole input), with the job table's columns (``job_id``,
        ``provider``, ``model``, ``prompt``, ``system``, and estimates with a cap).
        """
        ...

    def lookup(self, job_ids: pl.Series) -> pl.DataFrame:
        """The job table's rows of ``job_ids`` (requeued jobs are planned again from them)."""
        ...


class Feeder:
    """Gives the planner the next chunk of a :class:`JobSource` when it runs dry.

    Jobs already settled in the state folder or in a batch in flight are not queued; they
    count as done at start (progress), like the rows of an in-memory run that resumes.
    """

    def __init__(
        self,
        ctx: RunContext,
        state: RunState,
        source: JobSource,
        planner: Planner,
    ) -> None:
        self.ctx, self.state, self.source = ctx, state, source
        # The folder's job events as this call found them, indexed once (one scan of the
        # job ids, not one per chunk): a chunk's jobs cannot have events this call wrote,
        # since a job is given to the engine in its first chunk only, except the members
        # of the batches re-attached at start (collected during the call): those are
        # never sent from a chunk, and collection counts them (see _unsettled).
        self.index = ctx.store.job_index()
        # Their jobs are told by the batch of their latest event (as the index has it), so
        # the feeder holds the re-attached batches' keys, not a list of their ids to hash
        # into a set for every chunk (a killed 10M-row run leaves 1.6M of them in flight).
        self.reattached = pl.Series(
            "batch_key", [b.batch_key for b in state.in_flight], dtype=pl.String
        )
        self.planner = planner
        self.wanted = pl.Series("job_id", [], dtype=pl.String)
        """Rows of re-attached batches collected ``cancelled`` before their chunk was read:
        sent from that chunk (:meth:`resend`). At most the re-attached batches' members."""
        self.exhausted = False
        self.jobs_seen = 0
        self.max_worst = 0.0
        """The largest worst case seen (holds re-attached batches of unknown worst case)."""
        state.lookup = source.lookup
        self._total()

    def _total(self) -> None:
        left = max(0, self.source.expected_rows - self.source.rows_seen)
        self.state.total = self.jobs_seen + left

    def feed(self) -> bool:
        """Queue the next chunk that has anything to send; ``False`` once there is none."""
        while not self.exhausted:
            chunk = self.source.next_chunk()
            if chunk is None:
                self.exhausted = True
                break
            todo = self._unsettled(chunk)
            self.jobs_seen += chunk.height
            self._total()
            if todo.height:
                count_todo(self.state.todo_totals, todo)  # the cap's advice (no job table)
                if "worst_usd" in todo.columns:
                    top = todo.get_column("worst_usd").max()
                    self.max_worst = max(self.max_worst, float(top or 0.0))  # type: ignore[arg-type]
                self.planner.add(todo)
                return True
        self._total()
        return False

    def resend(self, job_ids: pl.Series) -> None:
        """Send ``job_ids`` from their chunk when it is read.

        They are rows of re-attached batches collected ``cancelled`` (and counted so) whose
        chunk is not read yet; ids in no chunk to come stay cancelled.
        """
        if job_ids.len():
            self.wanted = pl.concat([self.wanted, job_ids.cast(pl.String)])

    def _unsettled(self, chunk: pl.DataFrame) -> pl.DataFrame:
        """The chunk's jobs to send; counts the others as done (progress)."""
        ids = chunk.get_column("job_id")
        # Never the answers: memory is the chunk.
        latest = self.ctx.store.latest_status(ids, self.index)
        # Members of batches re-attached at start are never sent from a chunk, nor counted
        # here: collection counts them when their batch ends, perhaps before this chunk is
        # read (the index, taken at start, still has them "assigned" to that batch, so not
        # settled). Their latest event is of their batch: it is how they are told apart.
        reattached = latest.filter(
            pl.col("batch_key").is_in(self.reattached.implode())
        ).get_column("job_id")
        if self.wanted.len() and reattached.len():
            # Their batch was collected (before this chunk was read) and ended them
            # cancelled: they go again now, pending again.
            back = reattached.is_in(self.wanted.implode())
            if back.any():
                again = reattached.filter(back)
                reattached = reattached.filter(~back)
                self.wanted = self.wanted.filter(~self.wanted.is_in(again.implode()))
                self.state.done["cancelled"] -= again.len()
        # Realtime requests a crash left in flight end lost, never sent again blindly.
        latest = resolve_lost(self.ctx.store, latest)
        # Settled jobs are done (cancelled ones, and failed ones with retry_failed, go again).
        terminal = settled(latest, retry_failed=self.ctx.options.retry_failed)
        # A re-attached batch's rows that have an outcome already (a batch reopened by
        # ``repair`` with some outcomes left) are counted when the batch is collected.
        done = terminal.filter(~pl.col("batch_key").is_in(self.reattached.implode()))
        for status in self.state.done:
            self.state.done[status] += int((done.get_column("status") == status).sum())
        earlier = float(done.get_column("cost_usd").fill_null(0.0).sum())
        self.state.cost += earlier
        self.state.cost_at_start += earlier
        self.state.done_at_start += done.height
        # (Jobs of batches this call sent came in earlier chunks: never in this one.)
        skip = pl.concat([terminal.get_column("job_id"), reattached])
        return chunk.filter(~pl.col("job_id").is_in(skip.implode()))
