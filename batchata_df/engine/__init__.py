"""The batch lifecycle: plan -> admit -> submit -> poll -> collect, and its driver.

One module per unit, each unit-tested on its own (``tests/test_engine_<unit>.py``):

* :mod:`~batchata_df.engine.planning` -- jobs -> provider batches, lazily; requeue after a
  queue-limit refusal;
* :mod:`~batchata_df.engine.admission` -- the cost cap: spent + held worst case + this
  batch; calibration of estimates;
* :mod:`~batchata_df.engine.submission` -- intent and assigned events before the create
  call, the id after; failed-create lookup, retry, patience;
* :mod:`~batchata_df.engine.collection` -- polls, results -> outcomes -> terminal events;
* :mod:`~batchata_df.engine.recovery` -- re-attach batches in flight, resolve intents;
* :mod:`~batchata_df.engine.stopping` -- time limit, Ctrl+C, cancel, grace period;
* :mod:`~batchata_df.engine.driver` -- :class:`Engine`, the loop that composes them;
* :mod:`~batchata_df.engine.realtime` -- ``RealtimeEngine`` (``mode="realtime"``), a second
  driver composed from the same units: one request at a time, bounded concurrency;
* :mod:`~batchata_df.engine.auto` -- ``AutoEngine`` (``mode="auto"``): batch, realtime
  for small jobs and for what a deadline would not wait for.

They share :class:`~batchata_df.engine.run.RunContext` (what a run works with) and
:class:`~batchata_df.engine.run.RunState` (what it changes), and read time through a
:class:`~batchata_df.engine.clock.Clock`. Every step is recorded in the
:class:`~batchata_df.state.StateStore` *before* it is acted on:

* an ``intent`` batch event and ``assigned`` job events are written before ``submit``;
* the provider's batch id is written right after ``submit`` returns;
* on resume, an ``intent`` without an id is looked up at the provider (``find``) before
  anything else is submitted, so a crash between "created" and our checkpoint never makes
  us pay twice.
"""

from __future__ import annotations

from batchata_df.engine.clock import Backoff, Clock, FakeClock, SystemClock
from batchata_df.engine.collection import outcomes_to_events
from batchata_df.engine.driver import Engine
from batchata_df.engine.planning import plan_batches, split_sizes
from batchata_df.engine.recovery import busy_jobs, settled
from batchata_df.engine.run import BatchPhase, ProgressSnapshot, RunOptions

__all__ = [
    "Backoff",
    "BatchPhase",
    "Clock",
    "Engine",
    "FakeClock",
    "ProgressSnapshot",
    "RunOptions",
    "SystemClock",
    "busy_jobs",
    "outcomes_to_events",
    "plan_batches",
    "settled",
    "split_sizes",
]
