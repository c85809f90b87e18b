"""Admission under the cost cap: spent + held worst case + this batch must fit.

The arithmetic is pure (:func:`fitting`, :class:`Calibration`); :class:`Admission` applies
it to a run's money (``RunState.spent`` and ``RunState.reserved``) and holds a batch's
worst case while it is in flight.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import polars as pl

from batchata_df.engine.planning import PlannedBatch
from batchata_df.engine.run import InFlightBatch, RunState
from batchata_df.state import lined_up

__all__ = ["Admission", "Calibration", "billed_input", "fitting"]


def fitting(worst: pl.Series, room: float) -> int:
    """How many leading jobs, with these worst-case costs, fit in ``room`` dollars.

    Examples
    --------
    >>> fitting(pl.Series([0.4, 0.4, 0.4]), 1.0)
    2
    >>> fitting(pl.Series([0.5, 0.5]), 1.0)
    2
    >>> fitting(pl.Series([2.0]), 1.0)
    0
    """
    return int((worst.cum_sum() <= room + 1e-12).sum())


@dataclass
class Calibration:
    """Actual/estimated input tokens per model, learned from collected batches.

    Calibration only ever raises a worst case (never below the offline estimate), so it
    can only make the cap safer. It keeps two sums per model, nothing per job: each batch
    carries its own jobs' estimates (:attr:`InFlightBatch.est_input`), and
    :func:`billed_input` compares them with what was billed when it is collected.

    Examples
    --------
    >>> cal = Calibration()
    >>> cal.observe("openai", "m", estimated=200, actual=300)
    >>> cal.ratio("openai", "m")
    1.5
    >>> cal.worst("openai", "m", pl.Series([1.0]), pl.Series([0.2])).to_list()
    [1.1]
    """

    _seen: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    _ratio: dict[tuple[str, str], float] = field(default_factory=dict)

    def ratio(self, provider: str, model: str) -> float:
        """Actual over estimated input tokens seen so far for the model (1.0: none yet)."""
        return self._ratio.get((provider, model), 1.0)

    def observe(self, provider: str, model: str, *, estimated: int, actual: int) -> None:
        """Learn from collected jobs: their estimated and actual input tokens, summed.

        ``actual`` counts every collected job with billed input, ``estimated`` those of
        them that have an estimate (a job without one, e.g. another call's, only makes
        calibration more cautious: its tokens count, its estimate does not).
        """
        key = (provider, model)
        seen_est, seen_actual = self._seen.get(key, (0, 0))
        seen_est, seen_actual = seen_est + estimated, seen_actual + actual
        self._seen[key] = (seen_est, seen_actual)
        if seen_est > 0:
            self._ratio[key] = seen_actual / seen_est

    def worst(
        self, provider: str, model: str, worst: pl.Series, est_input_usd: pl.Series | None
    ) -> pl.Series:
        """Each job's worst case with its input part scaled up if estimates ran low."""
        worst = worst.fill_null(0.0)
        ratio = self.ratio(provider, model)
        if ratio <= 1.0 or est_input_usd is None:
            return worst
        return worst + est_input_usd.fill_null(0.0) * (ratio - 1.0)


def billed_input(
    batch: InFlightBatch, events: pl.DataFrame, job_ids: pl.Series | None = None
) -> tuple[int, int]:
    """The estimated and the billed input tokens of a collected batch's jobs.

    Both over the jobs of ``events`` (``job_id``, ``input_tokens``) with billed input, one
    per job (the last event of a job given twice); a job's estimate is its entry in the
    batch's :attr:`~InFlightBatch.est_input` (none: 0). Column sums, no Python per job.
    ``job_ids`` are the batch's ids if the caller has them as text already (they are
    decoded from :attr:`~InFlightBatch.ids` otherwise).

    Examples
    --------
    >>> from batchata_df.engine.clock import Backoff
    >>> from batchata_df.engine.run import PackedIds
    >>> ids = PackedIds.of(pl.Series(["a", "b", "c"]))
    >>> batch = InFlightBatch("k", "openai", "m", "id", ids, Backoff(1, 1, 1),
    ...                       est_input=pl.Series([10, 20, 30]))
    >>> billed_input(batch, pl.DataFrame({"job_id": ["a", "b", "c"],
    ...                                   "input_tokens": [15, None, 40]}))
    (40, 55)
    >>> billed_input(batch, pl.DataFrame({"job_id": ["c", "zzz"], "input_tokens": [40, 9]}))
    (30, 49)
    """
    usage = events.select("job_id", "input_tokens")
    if job_ids is None:
        job_ids = batch.job_ids
    if lined_up(pl.DataFrame({"job_id": job_ids}), usage):
        # Events in the batch's order (as collection writes them): a mask by position.
        collected = usage.get_column("input_tokens").is_not_null()
    else:
        usage = usage.filter(pl.col("input_tokens").is_not_null()).unique(
            "job_id", keep="last", maintain_order=True
        )
        collected = job_ids.is_in(usage.get_column("job_id").implode())
    actual = int(usage.get_column("input_tokens").sum())
    if batch.est_input is None:
        return 0, actual
    return int(batch.est_input.filter(collected).sum()), actual


class Admission:
    """Decides what part of a planned batch may be sent under the cap, and holds its cost.

    Parameters
    ----------
    state
        The run's state: ``spent`` and ``reserved`` are read and changed here.
    cap
        ``max_cost_usd`` (``None``: everything is admitted; reservations are still kept,
        for the progress figures and the dry run's agreement).
    calibration
        Learned input-token ratios.
    """

    def __init__(
        self,
        state: RunState,
        cap: float | None,
        calibration: Calibration | None = None,
    ) -> None:
        self.state, self.cap = state, cap
        self.calibration = calibration or Calibration()

    def worst(self, plan: PlannedBatch) -> pl.Series:
        """The calibrated worst case of each job of ``plan``."""
        return self.calibration.worst(plan.provider, plan.model, plan.worst, plan.est_input_usd)

    def admit(self, plan: PlannedBatch, *, holding: bool = False) -> PlannedBatch | None:
        """The part of ``plan`` that fits under the cap now (``None``: nothing does).

        Worst case of everything in flight plus what was spent plus this batch must fit. A
        batch that does not fit whole is split: its leading jobs that fit go now.
        ``holding``: budget is also held by requests that are not batches in flight (the
        realtime engine's, running or waiting to retry), so jobs that do not fit wait for
        them (and the progress says so) instead of never fitting.
        """
        if self.cap is None:
            return plan
        room = self.cap - self.state.spent - self.state.reserved
        fit = fitting(self.worst(plan), room)
        waited = self.state.cap_waiting > 0
        if fit == len(plan):
            if waited:  # jobs the cap had held back go now: one more serialised round
                self.state.cap_rounds += 1
            self.state.cap_waiting = 0
            return plan
        # The cap holds jobs back: they wait for batches in flight to free their reservation
        # (the run is serialised by the worst case), or, with nothing in flight and nothing
        # fitting, never fit (the driver ends them cancelled: cost_limit).
        if fit > 0 and waited:
            self.state.cap_rounds += 1
        if fit > 0 or self.state.in_flight or holding:
            if self.state.cap_first_fit is None:
                in_flight = sum(b.n_jobs for b in self.state.in_flight)
                self.state.cap_first_fit = in_flight + fit
            self.state.cap_waiting = len(plan) - fit
        else:  # nothing holds budget: nothing waits, the driver ends these cost_limit
            self.state.cap_waiting = 0
        if fit == 0:
            return None
        return plan.head(fit)

    def reserve(self, plan: PlannedBatch) -> float:
        """Hold ``plan``'s worst case against the cap; return the amount held."""
        amount = float(self.worst(plan).sum())
        self.state.reserved += amount
        return amount

    def hold_recovered(
        self,
        batches: Iterable[InFlightBatch],
        known: pl.DataFrame,
        fallback: float | None = None,
    ) -> None:
        """Hold the worst case of batches re-attached after a crash; give them estimates.

        ``known`` has ``job_id`` and ``worst_usd`` of the jobs whose worst case is known
        (this call's job table, or the worst cases recorded when the batches were sent),
        and ``est_input_tokens`` where this call has input estimates for them (the
        batches then carry those for calibration, as planned batches do). A member not
        in ``known`` is held at ``fallback``, by default the largest worst case known.
        """
        if fallback is None:
            top = known.get_column("worst_usd").max() if known.height else None
            fallback = 0.0 if top is None else float(top)  # type: ignore[arg-type]
        columns = ["job_id", "worst_usd"]
        estimates = "est_input_tokens" in known.columns
        if estimates:
            columns.append("est_input_tokens")
        known = known.select(columns)
        for batch in batches:
            theirs = pl.DataFrame({"job_id": batch.job_ids}).join(
                known, on="job_id", how="left", maintain_order="left"
            )
            batch.reserved = float(theirs.get_column("worst_usd").fill_null(fallback).sum())
            if estimates:
                batch.est_input = theirs.get_column("est_input_tokens")
            self.state.reserved += batch.reserved

    def settle(
        self,
        batch: InFlightBatch,
        actual: float,
        events: pl.DataFrame,
        job_ids: pl.Series | None = None,
    ) -> None:
        """A batch was collected: its actual cost replaces its reservation; learn from it.

        ``job_ids``: the batch's ids as text, if the caller decoded them already.
        """
        self.state.spent += actual
        self.state.release(batch.reserved)
        if "input_tokens" not in events.columns:
            return
        estimated, billed = billed_input(batch, events, job_ids)
        self.calibration.observe(batch.provider, batch.model, estimated=estimated, actual=billed)
