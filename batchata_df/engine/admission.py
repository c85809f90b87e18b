"""Admission under the cost cap: spent + held worst case + this batch must fit.

The arithmetic is pure (:func:`fitting`, :class:`Calibration`); :class:`Admission` applies
it to a run's money (``RunState.spent`` and ``RunState.reserved``) and holds a batch's
worst case while it is in flight.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import polars as pl

from batchata_df.engine.planning import PlannedBatch
from batchata_df.engine.run import InFlightBatch, RunState

__all__ = ["Admission", "Calibration", "fitting"]


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
    can only make the cap safer.

    Examples
    --------
    >>> cal = Calibration({"a": 100, "b": 100})
    >>> cal.observe("openai", "m", {"a": 150, "b": 150})
    >>> cal.ratio("openai", "m")
    1.5
    >>> cal.worst("openai", "m", pl.Series([1.0]), pl.Series([0.2])).to_list()
    [1.1]
    """

    est_input: Mapping[str, int] = field(default_factory=dict)
    """Estimated input tokens per job id."""
    _seen: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    _ratio: dict[tuple[str, str], float] = field(default_factory=dict)

    def ratio(self, provider: str, model: str) -> float:
        """Actual over estimated input tokens seen so far for the model (1.0: none yet)."""
        return self._ratio.get((provider, model), 1.0)

    def observe(self, provider: str, model: str, actual: Mapping[str, int]) -> None:
        """Learn from the actual input tokens of collected jobs (job id -> tokens)."""
        if not self.est_input:
            return
        est = sum(self.est_input.get(j, 0) for j in actual)
        key = (provider, model)
        seen_est, seen_actual = self._seen.get(key, (0, 0))
        seen_est, seen_actual = seen_est + est, seen_actual + sum(actual.values())
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


class Admission:
    """Decides what part of a planned batch may be sent under the cap, and holds its cost.

    Parameters
    ----------
    state
        The run's state: ``spent`` and ``reserved`` are read and changed here.
    cap
        ``max_cost_usd`` (``None``: everything is admitted; reservations are still kept,
        for the progress figures and the dry run's agreement).
    worst
        The worst case per job id (from the job table), for batches re-attached after a
        crash, whose worst case is not in a plan.
    calibration
        Learned input-token ratios.
    """

    def __init__(
        self,
        state: RunState,
        cap: float | None,
        worst: Mapping[str, float] | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        self.state, self.cap = state, cap
        self.worst_by_job = dict(worst or {})
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
                in_flight = sum(len(b.job_ids) for b in self.state.in_flight)
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
        self, batches: Iterable[InFlightBatch], fallback: float | None = None
    ) -> None:
        """Hold the worst case of batches re-attached after a crash.

        Their jobs' worst case comes from this call's job table; a job not in it (another
        call's frame) is held at ``fallback``, by default the largest worst case known.
        """
        if fallback is None:
            fallback = max(self.worst_by_job.values(), default=0.0)
        for batch in batches:
            batch.reserved = sum(
                self.worst_by_job.get(j, fallback) for j in batch.job_ids.to_list()
            )
            self.state.reserved += batch.reserved

    def settle(self, batch: InFlightBatch, actual: float, events: pl.DataFrame) -> None:
        """A batch was collected: its actual cost replaces its reservation; learn from it."""
        self.state.spent += actual
        self.state.release(batch.reserved)
        if not self.calibration.est_input:
            return
        usage = events.filter(pl.col("input_tokens").is_not_null())
        self.calibration.observe(
            batch.provider,
            batch.model,
            dict(
                zip(
                    usage.get_column("job_id").to_list(),
                    usage.get_column("input_tokens").to_list(),
                    strict=True,
                )
            ),
        )
