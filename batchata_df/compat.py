"""The seed library's builder API (``Batch(...)...run().results()``) on our engine.

For users moving from ``batchata``: replace ``from batchata import Batch`` with
``from batchata_df.compat import Batch`` and the seed's scripts run unchanged. What differs
(all on the safe side):

* State is a checkpoint *folder*: ``set_state(file="./state.json")`` keeps it in
  ``./state/``. Running the script again resumes (``reuse_state=True``, the default): jobs
  already answered are not sent or paid again. ``reuse_state=False`` starts afresh as the
  seed does, but this Batch's earlier state is moved aside to
  ``<name>.previous-<UTC time>``, never deleted: its groups' folders and, in a
  ``set_state`` folder (this Batch's own, as the seed's state file is), every folder no
  one else holds. Without ``set_state`` the checkpoint is ``results_dir/state``, which
  other Batches may share: there a folder of no group of this Batch stays, but what it
  spent or holds is from before the fresh start and does not count under the cost limit
  (its jobs in flight are named); a group folder of this Batch that holds other jobs too
  (another script's Batch with the same parameters) is copied whole aside and only this
  Batch's jobs are taken out of it, the others' answers staying where their Batch finds
  them (refused while one of this Batch's jobs is in flight there). A group
  folder another live Batch uses or another process is writing is never moved (if it is
  one of this Batch's groups, the run is refused before sending).
* ``results_dir`` gets one ``<job_id>.json`` per job (:meth:`JobResult.to_dict`) and, with
  ``raw_files`` (default: on), ``raw_files/responses/<job_id>_raw.json`` holding the
  provider's own result for the job exactly as it was served (the OpenAI batch output or
  error line, the Anthropic results line, the Gemini result line or inlined response;
  secrets scrubbed): ``batch_llm(keep_responses=True)``. A job the provider never
  answered (cancelled before it ran) has none. Nothing already there is deleted. Job ids
  are ``job-000000``, ``job-000001``, ... in the order of ``add_job``; a second live
  ``Batch`` on the same ``results_dir`` numbers its jobs after the first one's (the
  seed's ids were random: two Batches never wrote one file), unless it asks the same job
  from the same state folder (the same answer).
* Cost limits are hard caps (worst case held before submitting), failed rows are kept
  with their error, and ``messages=`` histories are sent whole, every role in order.

Jobs with the same response model, citations flag, parameters and kind of input run in
one :func:`~batchata_df.batch_llm` call each (checkpoint sub-folder per group). One cost
limit covers every group, and the group folders an earlier ``run()`` left under the state
root that no group uses any more (a job's parameters changed since): what they spent and
the worst case of their jobs still in flight count under it, and a
:class:`~batchata_df.errors.KeptStateWarning` names each such folder with jobs in flight
(paid for, their answers not read into the results; running the earlier parameters
again collects them) or, with a limit, money spent (not after ``reuse_state=False``:
see above). A folder removed counts no more. A
group folder another ``Batch`` of the script uses (two Batches on one ``results_dir``, or
a run of another process writing it now) is not left behind: it counts under that
Batch's own limit, and that Batch reads its answers.

Examples
--------
>>> import tempfile
>>> from batchata_df.compat import Batch
>>> from batchata_df.emulator import Emulator
>>> with Emulator() as emu, emu.environ():
...     batch = (
...         Batch(results_dir=tempfile.mkdtemp())
...         .set_default_params(model="gpt-5.4-mini", temperature=0.0)
...         .add_cost_limit(usd=1.0)
...     )
...     _ = batch.add_job(prompt="Say hi")
...     results = batch.run().results()
>>> [r.is_success for r in results["completed"]]
[True]
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import inspect
import json
import os
import re
import shutil
import sys
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel

from batchata_df.engine import ProgressSnapshot, busy_jobs
from batchata_df.engine.recovery import as_lost
from batchata_df.errors import (
    BatchataError,
    ConfigError,
    KeptStateWarning,
    StateError,
    StateLockedError,
    warn_user,
)
from batchata_df.frame import batch_llm, interrupts, job_ids_of
from batchata_df.schema import AnswerSchema
from batchata_df.state import (
    LOCK_FILE,
    TERMINAL_JOB,
    StateStore,
    WriterLock,
    read_manifest,
    reading_folder,
    spent_usd,
    table_parts,
)

__all__ = ["Batch", "BatchRun", "Citation", "JobResult"]

_PARAM_KEYS = (
    "temperature",
    "max_tokens",
    "top_p",
    "seed",
    "stop",
    "frequency_penalty",
    "presence_penalty",
    "reasoning_effort",
)
_ROLES = ("system", "user", "assistant")
_INTERRUPTED = "cancelled: interrupted"
_STOPPED_BY_LIMIT = "cancelled: time_limit"
_SPENT = 1e-3
"""A time limit already spent: batch_llm submits nothing (and cancels what is in flight)."""
# Internal column names of the frames compat builds; they cannot collide with output columns.
_PROMPT, _MODEL, _SYSTEM, _HISTORY, _FILE = (
    "__compat_prompt",
    "__compat_model",
    "__compat_system",
    "__compat_history",
    "__compat_file",
)


@dataclass
class Citation:
    """A citation, like the seed library's ``Citation``.

    ``text`` is the cited text, ``source`` the document (its title, or ``document <n>``),
    ``page`` the first page cited (1-based; None for text documents) and ``metadata`` the
    rest of what the provider said: document index, page/char/block ranges.
    """

    text: str
    source: str
    page: int | None = None
    metadata: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, item: dict[str, Any]) -> Citation:
        """From one element of a ``<field>_citations`` column."""
        title = item.get("document_title")
        index = item.get("document_index")
        meta = {k: v for k, v in item.items() if k not in ("cited_text",) and v is not None}
        return cls(
            text=str(item.get("cited_text") or ""),
            source=str(title) if title else f"document {index}",
            page=item.get("start_page"),
            metadata=meta or None,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"text": self.text, "source": self.source, "page": self.page,
                "metadata": self.metadata}


@dataclass
class JobResult:
    """One job's outcome, with the seed library's fields and types.

    ``raw_response`` is the model's own answer text (also when it failed validation),
    ``parsed_response`` the ``response_model`` instance (None without one or when the job
    did not complete), ``citations`` every citation of the answer and
    ``citation_mappings`` the citations of each field.
    """

    job_id: str
    raw_response: str | None = None
    parsed_response: BaseModel | dict[str, Any] | None = None
    citations: list[Citation] | None = None
    citation_mappings: dict[str, list[Citation]] | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    error: str | None = None
    batch_id: str | None = None
    status: str = "completed"
    """``completed``, ``failed``, ``cancelled`` or ``pending`` (not in the seed)."""

    @property
    def is_success(self) -> bool:
        """Whether the job completed."""
        return self.status == "completed" and self.error is None

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the seed's keys, plus ``status``)."""
        parsed: Any = self.parsed_response
        if isinstance(parsed, BaseModel):
            parsed = parsed.model_dump(mode="json")
        return {
            "job_id": self.job_id,
            "raw_response": self.raw_response,
            "parsed_response": parsed,
            "citations": None if self.citations is None
            else [c.to_dict() for c in self.citations],
            "citation_mappings": None if self.citation_mappings is None else {
                name: [c.to_dict() for c in cites]
                for name, cites in self.citation_mappings.items()
            },
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
            "error": self.error,
            "batch_id": self.batch_id,
            "status": self.status,
        }

    def save_to_json(self, filepath: str | Path, indent: int = 2) -> None:
        """Write :meth:`to_dict` as JSON, creating the parent folders."""
        path = Path(filepath)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=indent, default=str))


@dataclass
class _Job:
    job_id: str
    prompt: str
    model: str
    file: str | None
    response_model: type[BaseModel] | None
    citations: bool
    params: dict[str, Any]
    system: str | None = None
    history: list[dict[str, str]] | None = None
    group: str | None = None
    """Its group's key (:func:`_group_key`), once known."""


def _group_key(job: _Job) -> str:
    """The group ``job`` runs in: the name of its checkpoint folder under the state root.

    Jobs with the same response model, citations flag, parameters and kind of input run
    in one :func:`~batchata_df.batch_llm` call (the model is a column of it).
    """
    if job.group is None:
        model = job.response_model
        key_src = json.dumps(
            [
                _model_shape(model) if model else None,
                job.citations,
                job.params,
                job.file is not None,
                job.system is not None,
                job.history is not None,
            ],
            sort_keys=True,
            default=str,
        )
        job.group = hashlib.sha256(key_src.encode()).hexdigest()[:12]
    return job.group


_SHAPES: weakref.WeakKeyDictionary[type[BaseModel], str] = weakref.WeakKeyDictionary()
""":func:`_model_shape` of each response model seen (a class's schema is fixed once made)."""


def _model_shape(model: type[BaseModel]) -> str:
    """A response model's name and shape: two models of the same name are different groups.

    Read once per model (its schema's fingerprint is 0.3 ms: 33 s for 100,000 jobs if
    read for each job's key).
    """
    shape = _SHAPES.get(model)
    if shape is None:
        shape = f"{model.__module__}.{model.__qualname__}:{AnswerSchema(model).fingerprint}"
        _SHAPES[model] = shape
    return shape


def _job_identity(job: _Job) -> tuple[Any, ...]:
    """What ``job`` asks: two jobs alike in it get the same answer from one checkpoint."""
    return (_group_key(job), job.model, job.prompt, job.file, job.system, job.history)


@dataclass
class BatchRun:
    """The outcome of :meth:`Batch.run`."""

    frames: list[tuple[list[_Job], pl.DataFrame]] = field(default_factory=list)
    dry_run: bool = False
    cost_limit_usd: float | None = None
    results_dir: Path | None = None
    raw_files: bool = False

    def results(self) -> dict[str, list[JobResult]]:
        """``{"completed": [...], "failed": [...], "cancelled": [...]}`` (and ``pending``).

        Empty lists after a dry run (nothing ran).
        """
        out: dict[str, list[JobResult]] = {"completed": [], "failed": [], "cancelled": []}
        if self.dry_run:
            return out
        for jobs, frame in self.frames:
            for job, row in zip(jobs, frame.iter_rows(named=True), strict=True):
                result = _to_result(job, row)
                out.setdefault(result.status, []).append(result)
        return out

    def status(self, print_status: bool = False) -> dict[str, Any]:
        """Counts by status, cost, and whether every job has ended (as the seed's)."""
        frame = self.to_polars()
        counts = dict(frame.get_column("_status").value_counts().iter_rows()) if frame.height \
            else {}
        if self.dry_run:
            stats: dict[str, Any] = {
                "dry_run": True,
                "total": frame.height,
                "planned": counts.get("planned", 0),
                "estimated_cost_usd": float(frame.get_column("_est_cost_usd").sum())
                if frame.height else 0.0,
                "cost_limit_usd": self.cost_limit_usd,
            }
        else:
            stats = {
                "total": frame.height,
                "pending": counts.get("pending", 0),
                "completed": counts.get("completed", 0),
                "failed": counts.get("failed", 0),
                "cancelled": counts.get("cancelled", 0),
                "cost_usd": float(frame.get_column("_cost_usd").fill_null(0.0).sum())
                if frame.height else 0.0,
                "cost_limit_usd": self.cost_limit_usd,
                "is_complete": counts.get("pending", 0) == 0,
            }
        if print_status:
            print(json.dumps(stats, indent=2))
        return stats

    def to_polars(self) -> pl.DataFrame:
        """All result frames stacked (columns that differ between groups are unioned)."""
        if not self.frames:
            return pl.DataFrame()
        return pl.concat([f for _, f in self.frames], how="diagonal_relaxed")

    def _write_files(self) -> None:
        """One ``<job_id>.json`` per ended job; raw answers under ``raw_files/responses``."""
        if self.dry_run or self.results_dir is None:
            return
        raw_dir = self.results_dir / "raw_files" / "responses"
        for jobs, frame in self.frames:
            for job, row in zip(jobs, frame.iter_rows(named=True), strict=True):
                result = _to_result(job, row)
                if result.status == "pending":
                    continue
                result.save_to_json(self.results_dir / f"{result.job_id}.json")
                response = row.get("_response")
                if self.raw_files and response is not None:
                    # The provider's own result for the job, as it sent it (scrubbed of
                    # secrets): an OpenAI output/error line, an Anthropic results line,
                    # a Gemini result line or inlined response.
                    raw_dir.mkdir(parents=True, exist_ok=True)
                    (raw_dir / f"{result.job_id}_raw.json").write_text(
                        response, encoding="utf-8"
                    )


def _spent_or_held(
    folder: Path, largest: Callable[[], float] = lambda: 0.0, without: pl.Series | None = None
) -> float:
    """What a group's checkpoint folder was billed, plus the worst case of its jobs in flight.

    The worst case is the one recorded when the batch was sent; a batch whose results are
    in but not collected yet still holds it, as it does in the engine
    (:func:`~batchata_df.engine.busy_jobs`). A batch sent without a cap (an earlier
    ``run(wait=False)`` before ``add_cost_limit``) recorded none: its jobs are held at the
    largest worst case known, recorded or ``largest()`` (the group's jobs' own), as
    batch_llm holds the batches it re-attaches. ``without``: job ids whose money is not
    counted (a fresh start's dry run: the jobs its run takes out of the folder).
    """
    spent, held, _ = _folder_money(folder, largest, without)
    return spent + held


def _folder_money(
    folder: Path, largest: Callable[[], float] = lambda: 0.0, without: pl.Series | None = None
) -> tuple[float, float, int]:
    """A group folder's billed USD, the worst case its jobs in flight hold, and how many.

    See :func:`_spent_or_held` (their sum; ``without`` too).
    """
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return (spent_usd(folder) if folder.is_dir() else 0.0), 0.0, 0
    store = StateStore(folder, read_manifest(manifest).fingerprint, readonly=True)
    current, billed = store.snapshot()
    if without is not None:
        others = ~pl.col("job_id").is_in(without.implode())
        current, billed = current.filter(others), billed.filter(others)
    busy = busy_jobs(store, as_lost(current))
    held = busy.get_column("est_cost_usd").cast(pl.Float64)
    if held.null_count():
        known = held.max()
        held = held.fill_null(max(largest(), 0.0 if known is None else float(known)))  # type: ignore[arg-type]
    return (
        float(billed.get_column("cost_usd").fill_null(0.0).sum()),
        float(held.fill_null(0.0).sum()),
        busy.height,
    )


_LIVE: weakref.WeakSet[Batch] = weakref.WeakSet()
"""Every :class:`Batch` of this process still referenced: whose groups are in use."""


def _used_by_others(root: Path, me: Batch) -> set[str]:
    """The groups the other live :class:`Batch` objects sharing the state ``root`` hold.

    A script may build two Batches (two models' parameters, two schemas) on one
    ``results_dir``: each one's group folders are its own, not left behind by the other.
    The price of telling them apart by liveness: an earlier Batch a notebook still holds
    (a cell that displayed it is kept in ``Out``) keeps its groups too, so they count under
    its own limit, not the edited Batch's, and are not named until it is gone.
    """
    where = root.resolve()
    used: set[str] = set()
    for other in list(_LIVE):
        if other is me or not other._jobs:
            continue
        if (other._state or other.results_dir / "state").resolve() == where:
            used.update(_group_key(job) for job in other._jobs)
    return used


def _being_written(folder: Path) -> bool:
    """Whether a live call (another process's Batch, a thread) holds ``folder``'s writer lock.

    Its writer counts it under its own limit. Taken only for the look (closing the
    descriptor lets it go); where locks are refused nothing can be told: not in use.
    """
    from filelock import lock_descriptor

    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDONLY)
    except OSError:  # never written by a call, or gone meanwhile
        return False
    try:
        return not lock_descriptor(fd, blocking=False)
    except OSError:
        return False
    finally:
        os.close(fd)


def _left_behind(root: Path, groups: Sequence[str], me: Batch) -> list[Path]:
    """Group folders under ``root`` that no group of this run uses, nor anyone else's.

    Left by an earlier ``run()`` whose jobs' parameters, model, response model or kind of
    input have changed since (the group key is made of them). Only checkpoint folders (a
    manifest) count. A group of another live :class:`Batch` of this process on the same
    root (:func:`_used_by_others`), or a folder another call is writing now
    (:func:`_being_written`: another process's run) is not left behind: its money counts
    under its own Batch's limit, and that Batch reads its answers.
    """
    if not root.is_dir():
        return []
    found = sorted(
        p
        for p in root.iterdir()
        if p.name not in groups and p.is_dir() and (p / "manifest.json").is_file()
    )
    if not found:
        return found
    others = _used_by_others(root, me)
    return [p for p in found if p.name not in others and not _being_written(p)]


def _unreadable_left_behind(folder: Path, e: StateError, *, limited: bool) -> KeptStateWarning:
    """A :func:`_left_behind` folder that cannot be read; raises it with a cost limit.

    With ``add_cost_limit`` what it spent and holds in flight cannot be counted under the
    limit, so the run is refused before anything is sent (:class:`StateError`, naming the
    folder and the repair); without one, the warning naming it is returned.
    """
    what = (
        f"state folder {str(folder)!r}, left by an earlier run() of this Batch whose group "
        "no longer exists (their parameters, model or response_model changed since), "
        f"cannot be read"
    )
    if limited:
        msg = (
            f"{what}, so what it spent and holds in flight cannot be counted under "
            f"add_cost_limit; nothing was sent: {e}"
        )
        raise StateError(msg) from e
    msg = (
        f"{what}: its answers are not read into these results, and jobs it may hold in "
        f"flight may still be run and billed by the provider: {e}"
    )
    return KeptStateWarning(msg, folder=str(folder))


def _left_behind_warning(
    folder: Path, spent: float, held: float, busy: int, *, limited: bool
) -> KeptStateWarning | None:
    """What a user must know of a folder :func:`_left_behind` finds, or None (nothing)."""
    counted = (
        f"; it counts under add_cost_limit (${spent:.4f} spent, ${held:.4f} held in flight)"
        if limited
        else ""
    )
    if busy:
        jobs = f"{busy} job{'s' if busy != 1 else ''}"
        msg = (
            f"state folder {str(folder)!r} holds {jobs} in flight, sent by an earlier run() "
            "of this Batch whose group no longer exists (their parameters, model or "
            "response_model changed since): the provider may run and bill them, and their "
            "answers are not "
            f"collected into these results{counted}. To collect them, run() the jobs again "
            f"with their earlier parameters (nothing is sent again); `batchata-df cancel "
            f"{folder}` cancels what has not run yet; removing the folder stops counting it "
            "(and loses its answers)"
        )
        return KeptStateWarning(msg, folder=str(folder))
    if limited and spent > 0:
        msg = (
            f"state folder {str(folder)!r} holds answers of an earlier run() of this Batch "
            "whose group no longer exists (their parameters, model or response_model changed "
            f"since), not read into these results{counted}. Run the jobs again with their "
            "earlier parameters to read them (nothing is sent again), or remove the folder to "
            "stop counting it"
        )
        return KeptStateWarning(msg, folder=str(folder))
    return None


def _call_args(first: _Job) -> dict[str, Any]:
    """The :func:`~batchata_df.batch_llm` arguments of a group (``first``: one of its jobs).

    Those that make its job ids (:func:`~batchata_df.frame.job_ids_of` takes them too).
    """
    return {
        "schema": first.response_model,
        "model": pl.col(_MODEL),
        "prompt": pl.col(_PROMPT),
        "system": pl.col(_SYSTEM) if first.system is not None else None,
        "history": _HISTORY if first.history is not None else None,
        "files": _FILE if first.file is not None else None,
        "citations": first.citations,
        "params": first.params or None,
    }


def _group_frame(jobs: Sequence[_Job]) -> pl.DataFrame:
    """The frame of one group's jobs, in batch_llm's terms (internal column names)."""
    first = jobs[0]
    data: dict[str, Any] = {
        _PROMPT: [j.prompt for j in jobs],
        _MODEL: [j.model for j in jobs],
    }
    if first.file is not None:
        data[_FILE] = [j.file for j in jobs]
    if first.system is not None:
        data[_SYSTEM] = [j.system for j in jobs]
    frame = pl.DataFrame(data)
    if first.history is not None:
        frame = frame.with_columns(
            pl.Series(
                _HISTORY,
                [j.history for j in jobs],
                dtype=pl.List(pl.Struct({"role": pl.String, "content": pl.String})),
            )
        )
    return frame


def _citations_of(row: dict[str, Any], names: Sequence[str]) -> dict[str, list[Citation]]:
    return {
        name: [Citation.from_row(c) for c in (row.get(f"{name}_citations") or [])]
        for name in names
    }


def _to_result(job: _Job, row: dict[str, Any]) -> JobResult:
    model = job.response_model
    parsed: BaseModel | None = None
    completed = row["_status"] == "completed"
    raw = row.get("_raw")
    if completed and model is not None:
        parsed = model.model_validate({name: row[name] for name in model.model_fields})
    if completed and raw is None:  # an answer from a checkpoint written without raw text
        raw = parsed.model_dump_json() if parsed is not None else row.get("response")
    mappings = flat = None
    if job.citations and completed:
        names = list(model.model_fields) if model is not None else ["response"]
        mappings = _citations_of(row, names)
        seen: set[str] = set()
        flat = []
        for cites in mappings.values():
            for c in cites:
                key = json.dumps(c.to_dict(), sort_keys=True, default=str)
                if key not in seen:
                    seen.add(key)
                    flat.append(c)
        if model is None:
            mappings = None
    return JobResult(
        job_id=job.job_id,
        raw_response=raw,
        parsed_response=parsed,
        citations=flat,
        citation_mappings=mappings,
        input_tokens=row["_input_tokens"] or 0,
        output_tokens=row["_output_tokens"] or 0,
        cost_usd=row["_cost_usd"] or 0.0,
        error=row["_error"],
        batch_id=row["_batch_id"],
        status=row["_status"],
    )


_FINISHED_BATCHES = ("ended", "collected", "failed", "cancelled", "expired")


@dataclass
class _RunTotals:
    """What the groups of one :meth:`Batch.run` add to each seed-style progress call.

    Each group is a :func:`~batchata_df.batch_llm` call of its own, whose snapshots count
    that group only; the seed's stats are about the whole batch.
    """

    total: int
    started: float
    later: int = 0
    """Jobs of the groups not run yet (pending)."""
    ended: dict[str, float] = field(default_factory=dict)
    """Counts by status and ``cost_usd`` of the groups that have run."""
    batches: dict[str, int] = field(default_factory=dict)
    """Their provider batches by state, as their last snapshots gave them."""
    last: ProgressSnapshot | None = None
    """The running group's latest snapshot."""

    def start_group(self, n_jobs: int) -> None:
        self.later -= n_jobs
        self.last = None

    def end_group(self, out: pl.DataFrame) -> None:
        """Fold a group's result (and its last snapshot) into the totals."""
        for status in ("completed", "failed", "cancelled", "pending"):
            n = int((out.get_column("_status") == status).sum()) if out.height else 0
            self.ended[status] = self.ended.get(status, 0) + n
        if self.last is not None:
            cost = self.last.cost_usd
            for word, n in self.last.batches.items():
                self.batches[word] = self.batches.get(word, 0) + n
        else:
            cost = float(out.get_column("_cost_usd").fill_null(0.0).sum()) if out.height else 0.0
        self.ended["cost_usd"] = self.ended.get("cost_usd", 0.0) + cost
        self.last = None


def _seed_progress(
    callback: Callable[..., Any],
    interval: float,
    cost_limit: float | None,
    items_per_batch: int,
    totals: _RunTotals | None = None,
) -> Callable[[ProgressSnapshot], None]:
    """Adapt ``on_progress``: the seed's ``(stats, elapsed_s, batch_data)`` or ours.

    A callable taking three positional arguments gets the seed's stats dict (``total``,
    ``pending``, ``active``, ``completed``, ``failed``, ``cancelled``, ``cost_usd``,
    ``cost_limit_usd``, ``is_complete``, ``batches_*``, ``items_per_batch``), the elapsed
    seconds and the batch counts by state, over the whole run (``totals``: every group);
    one taking one argument gets the :class:`~batchata_df.engine.ProgressSnapshot` of the
    group's call. Calls come at most every ``interval`` seconds, and always for the last
    snapshot of a group.
    """
    totals = totals or _RunTotals(total=0, started=time.monotonic())
    try:
        params = inspect.signature(callback).parameters.values()
        positional = [
            p for p in params
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
        seed_style = len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in params)
    except (TypeError, ValueError):
        seed_style = False
    last = [-float("inf")]

    def adapter(snap: ProgressSnapshot) -> None:
        totals.last = snap
        done = snap.pending == 0
        now = time.monotonic()
        if not done and now - last[0] < interval:
            return
        last[0] = now
        if not seed_style:
            callback(snap)
            return
        ended = totals.ended
        # One vocabulary for every provider (batch_word); the groups that ran, then this one.
        batches = dict(totals.batches)
        for word, n in snap.batches.items():
            batches[word] = batches.get(word, 0) + n
        finished = sum(v for k, v in batches.items() if k in _FINISHED_BATCHES)
        total_batches = sum(batches.values())
        pending = int(ended.get("pending", 0)) + snap.pending + totals.later
        stats = {
            "batch_id": None,
            "total": max(totals.total, snap.total),
            "pending": pending,
            "active": pending,
            "completed": int(ended.get("completed", 0)) + snap.completed,
            "failed": int(ended.get("failed", 0)) + snap.failed,
            "cancelled": int(ended.get("cancelled", 0)) + snap.cancelled,
            "cost_usd": ended.get("cost_usd", 0.0) + snap.cost_usd,
            "cost_limit_usd": cost_limit,
            "is_complete": pending == 0,
            "batches_completed": finished,
            "batches_total": total_batches,
            "batches_pending": total_batches - finished,
            "items_per_batch": items_per_batch,
        }
        callback(stats, now - totals.started, batches)

    return adapter


_COMPAT_WORDS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"files='<column of file paths>'"), "add_job(file=...)"),
    (re.compile(r"files column '__compat_file', row \d+, value"), "add_job(file=...) file"),
    (re.compile(r"\bparams\['(\w+)'\]"), r"\1 (of set_default_params / add_job)"),
    (re.compile(r"\bfiles=(?:'[^']*'|\S+)"), "add_job(file=...)"),
    (re.compile(r"\bcitations=True"), "enable_citations=True"),
    (re.compile(r"\bschema=None"), "response_model=None"),
    (re.compile(r"\bschema="), "response_model="),
    (re.compile(r"\bmax_cost_usd="), "add_cost_limit(usd=...) of "),
    (re.compile(r"\btime_limit="), "add_time_limit(...) of "),
)
"""batch_llm's argument names as this API spells them (``params={...}``: see below)."""


def _in_compat_words(message: str) -> str:
    """``message`` (said to a batch_llm caller) in the words of this API's methods.

    Examples
    --------
    >>> _in_compat_words("citations=True needs documents to cite: pass "
    ...                  "files='<column of file paths>' (PDF or text), or remove citations=True")
    'enable_citations=True needs documents to cite: pass add_job(file=...) (PDF or text), \
or remove enable_citations=True'
    >>> _in_compat_words("params['temperature'] must be between 0 and 1")
    'temperature (of set_default_params / add_job) must be between 0 and 1'
    >>> _in_compat_words("use it with params={'reasoning_effort': 'high'} instead")
    "use it with set_default_params(reasoning_effort='high') (or add_job(...)) instead"
    """
    for pattern, words in _COMPAT_WORDS:
        message = pattern.sub(words, message)

    def as_kwargs(match: re.Match[str]) -> str:
        pairs = re.findall(r"'(\w+)':\s*('[^']*'|[^,}]+)", match.group(1))
        args = ", ".join(f"{k}={v.strip()}" for k, v in pairs)
        return f"set_default_params({args}) (or add_job(...))"

    return re.sub(r"\bparams=\{([^}]*)\}", as_kwargs, message)


def _split_messages(
    messages: Sequence[dict[str, Any]],
) -> tuple[str | None, list[dict[str, str]], str]:
    """``messages`` as (system, earlier turns, last user message), checked."""
    if not messages:
        msg = "add_job(messages=...) needs at least one message"
        raise ConfigError(msg)
    checked: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        content = m.get("content") if isinstance(m, dict) else None
        if role not in _ROLES:
            msg = (
                f"messages[{i}] must be a dict with role 'system', 'user' or 'assistant', "
                f"got {m!r}"
            )
            raise ConfigError(msg)
        if not isinstance(content, str):
            msg = (
                f"messages[{i}]['content'] must be text; for documents use "
                "add_job(file=..., prompt=...)"
            )
            raise ConfigError(msg)
        if not content.strip():
            # Anthropic and Gemini refuse a turn without text (see batchata_df.jobs).
            msg = (
                f"messages[{i}]['content'] is empty or only whitespace ({role} message): "
                "Anthropic and Gemini refuse such a message; write its text, or leave the "
                "message out"
            )
            raise ConfigError(msg)
        checked.append({"role": str(role), "content": content})
    system = None
    if checked[0]["role"] == "system":
        system = checked.pop(0)["content"]
    if any(m["role"] == "system" for m in checked):
        msg = (
            "a system message may only come first in messages= (Anthropic and Gemini take one "
            "system prompt per request); merge it into the first one"
        )
        raise ConfigError(msg)
    if not checked or checked[-1]["role"] != "user":
        msg = "the last of messages= must be a user message (the one the model answers)"
        raise ConfigError(msg)
    return system, checked[:-1], checked[-1]["content"]


class Batch:
    """Builder for a set of jobs, compatible with the seed library's ``Batch``.

    Parameters
    ----------
    results_dir
        Where ``<job_id>.json`` results (and raw answers) are written; the checkpoint is
        ``results_dir/state`` unless :meth:`set_state` says otherwise. Never cleared.
    max_parallel_batches, items_per_batch
        As in :func:`~batchata_df.batch_llm`.
    raw_files
        Write ``raw_files/responses/<job_id>_raw.json``: the provider's own result for
        the job, as it sent it; default on when ``results_dir`` is set (as in the seed).
    """

    def __init__(
        self,
        results_dir: str | Path,
        max_parallel_batches: int = 10,
        items_per_batch: int = 10,
        raw_files: bool | None = None,
    ) -> None:
        self.results_dir = Path(results_dir)
        self.max_parallel_batches = max_parallel_batches
        self.items_per_batch = items_per_batch
        self.raw_files = bool(str(results_dir).strip()) if raw_files is None else raw_files
        self._defaults: dict[str, Any] = {}
        self._state: Path | None = None
        self._reuse_state = True
        self._fresh_done = False
        self._cost_limit: float | None = None
        self._time_limit: float | None = None
        self._jobs: list[_Job] = []
        self._numbers: dict[int, _Job] = {}
        """Its jobs by the number of their ``job_id`` (:meth:`_number_for`)."""
        self._top = -1
        """The largest of those numbers."""
        self._where = (self.results_dir, self.results_dir.resolve())
        self._state_at: tuple[Path | None, Path, Path] = (
            None, self.results_dir, (self.results_dir / "state").resolve()
        )  # fmt: skip
        _LIVE.add(self)

    def set_default_params(self, **params: Any) -> Batch:
        """Defaults for every job: ``model``, ``temperature``, ``max_tokens``, ..."""
        unknown = sorted(k for k in params if k != "model" and k not in _PARAM_KEYS)
        if unknown:
            msg = f"unknown parameters {unknown!r}; supported: ['model', *{list(_PARAM_KEYS)!r}]"
            raise ConfigError(msg)
        self._defaults.update(params)
        return self

    def set_state(self, file: str | Path | None = None, reuse_state: bool = True) -> Batch:
        """Where to checkpoint, and whether to resume what an earlier run left there.

        A ``.json`` name is turned into a folder (``state.json`` -> ``state/``).
        ``reuse_state=True`` (default) resumes: answered jobs are not sent again.
        ``reuse_state=False`` starts afresh at the first :meth:`run`: this Batch's earlier
        state is moved aside to ``<folder>.previous-<UTC time>`` (kept, never deleted):
        its groups' folders, and in a ``file=`` folder every other one no one holds; never
        a group folder another Batch uses or another process is writing. Under
        ``results_dir/state``, a group folder holding other jobs too (another script's
        Batch with the same parameters) is copied there whole and only this Batch's jobs
        are taken out of it.
        """
        if file is not None:
            path = Path(file)
            self._state = path.with_suffix("") if path.suffix == ".json" else path
        self._reuse_state = bool(reuse_state)
        self._fresh_done = False
        return self

    def add_cost_limit(self, usd: float) -> Batch:
        """A hard cap on spend for this batch."""
        if not isinstance(usd, int | float) or usd <= 0:
            msg = f"add_cost_limit(usd=...) must be a positive number, got {usd!r}"
            raise ConfigError(msg)
        self._cost_limit = float(usd)
        return self

    def add_time_limit(self, seconds: float = 0, minutes: float = 0, hours: float = 0) -> Batch:
        """Stop submitting and cancel batches in flight after this long."""
        total = dt.timedelta(seconds=seconds, minutes=minutes, hours=hours).total_seconds()
        if total <= 0:
            msg = "add_time_limit needs a positive duration"
            raise ConfigError(msg)
        self._time_limit = total
        return self

    def set_verbosity(self, level: str) -> Batch:
        """Accepted for compatibility (``debug``, ``info``, ``warn``, ``error``)."""
        if str(level).lower() not in ("debug", "info", "warn", "warning", "error"):
            msg = f"verbosity must be 'debug', 'info', 'warn' or 'error', got {level!r}"
            raise ConfigError(msg)
        return self

    def add_job(
        self,
        messages: Sequence[dict[str, Any]] | None = None,
        file: str | Path | None = None,
        prompt: str | None = None,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        response_model: type[BaseModel] | None = None,
        enable_citations: bool = False,
        **kwargs: Any,
    ) -> Batch:
        """Add one job: ``messages=`` (a whole conversation), or ``prompt=`` with ``file=``.

        ``messages`` may start with a system message, then alternate user/assistant turns,
        and must end with the user message to answer; it is sent whole, in order.
        """
        system: str | None = None
        history: list[dict[str, str]] | None = None
        if messages is not None:
            if prompt is not None or file is not None:
                msg = "add_job takes messages= or prompt=/file=, not both"
                raise ConfigError(msg)
            system, earlier, prompt = _split_messages(messages)
            history = earlier or None
        if prompt is None:
            msg = "add_job needs messages=, or prompt= (with or without file=)"
            raise ConfigError(msg)
        if not prompt.strip():
            msg = (
                f"add_job(prompt={prompt!r}) has no text to send: the providers refuse an "
                "empty prompt or answer nothing; write the question in prompt= (with file= "
                "it is asked about the file)"
            )
            raise ConfigError(msg)
        if enable_citations and file is None:
            msg = (
                "add_job(enable_citations=True) needs a document to cite: pass "
                "add_job(file='<path to a PDF or text file>', prompt=..., "
                "enable_citations=True), or leave enable_citations out"
            )
            raise ConfigError(msg)
        chosen = model or self._defaults.get("model")
        if not chosen:
            msg = "no model: pass model= or set_default_params(model=...)"
            raise ConfigError(msg)
        params = {k: v for k, v in self._defaults.items() if k in _PARAM_KEYS}
        unknown = sorted(k for k in kwargs if k not in _PARAM_KEYS)
        if unknown:
            msg = f"add_job: unknown parameters {unknown!r}; supported: {list(_PARAM_KEYS)!r}"
            raise ConfigError(msg)
        params.update(kwargs)
        if temperature is not None:
            params["temperature"] = temperature
        if max_tokens is not None:
            params["max_tokens"] = max_tokens
        if file is not None and not Path(file).is_file():
            msg = f"add_job(file={str(file)!r}): no such file"
            raise ConfigError(msg)
        job = _Job(
            job_id="",
            prompt=prompt,
            model=str(chosen),
            file=None if file is None else str(file),
            response_model=response_model,
            citations=enable_citations,
            params=params,
            system=system,
            history=history,
        )
        number = self._number_for(job)
        job.job_id = f"job-{number:06d}"
        self._jobs.append(job)
        self._numbers[number] = job
        self._top = max(self._top, number)
        return self

    def _number_for(self, job: _Job) -> int:
        """The number of ``job``'s ``job_id`` (``job-<number>``), and so of its result files.

        Its place in this Batch (``job-000000`` first), as scripts read them; but two live
        Batches on one ``results_dir`` write their files side by side, and the seed's
        random ids never met: when another one holds that number for a different job, the
        number after the largest either holds (the order of add_job calls, the same at
        each run of a script). The same job on the same state root (a notebook cell run
        again while the earlier Batch is still referenced) keeps its number: the same
        answer, from the same checkpoint. Like groups (:func:`_used_by_others`), a Batch no
        longer referenced holds no number: a later Batch's ``job-000000.json`` replaces its
        file, as the same script run again (its jobs edited) replaces its own.
        """
        number = len(self._jobs)
        others = self._sharing_results_dir()
        if number not in self._numbers and not any(
            (held := other._numbers.get(number)) is not None
            and (
                _job_identity(held) != _job_identity(job)
                # Another checkpoint: its answer is another one, sent and paid again.
                or other._state_where() != self._state_where()
            )
            for other in others
        ):
            return number
        return max([self._top, *(other._top for other in others)]) + 1

    def _sharing_results_dir(self) -> list[Batch]:
        """The other live Batches with jobs that write their files in this ``results_dir``."""
        if len(_LIVE) < 2:  # this one alone: the common case, at every add_job
            return []
        others = [b for b in list(_LIVE) if b is not self and b._jobs]
        if not others:
            return []
        where = self._results_where()
        return [b for b in others if b._results_where() == where]

    def _results_where(self) -> Path:
        """``results_dir`` resolved (once per value it is given)."""
        if self._where[0] is not self.results_dir:
            self._where = (self.results_dir, self.results_dir.resolve())
        return self._where[1]

    def _state_where(self) -> Path:
        """The state root (``set_state``'s folder, or ``results_dir/state``) resolved."""
        state, results_dir, where = self._state_at
        if state is not self._state or results_dir is not self.results_dir:
            where = (self._state or self.results_dir / "state").resolve()
            self._state_at = (self._state, self.results_dir, where)
        return where

    def __len__(self) -> int:
        return len(self._jobs)

    def _fresh_start(
        self, root: Path, groups: Mapping[str, Sequence[_Job]], *, move: bool
    ) -> tuple[list[Path], dict[str, pl.Series]]:
        """What ``reuse_state=False`` moves aside under ``root``: this Batch's earlier state.

        Its own group folders (its groups' keys), and, under a root it named itself
        (``set_state(file=...)``: as the seed's state file, one Batch's state), every other
        folder there no one else holds: this Batch's earlier groups (a parameter changed
        since). Under ``results_dir/state`` (the seed has no such root, and its
        ``results_dir`` may be shared) such a folder may be another script's between two of
        its runs: it stays, and counts as left behind (:func:`_left_behind`). Never a group
        another live Batch of this process holds (:func:`_used_by_others`) or a folder a
        call is writing now (:func:`_being_written`): its owner would not find its
        checkpoint, and would send and pay for its jobs again. Its own group held so is
        refused (nothing sent): it cannot start afresh. With ``move``, each is moved into
        ``<root>.previous-<UTC time>`` (kept, never deleted) holding its writer lock, so
        that a call another process starts on it meanwhile is not moved from under it.

        Under ``results_dir/state`` a group folder is named by its jobs' parameters, not by
        the Batch: another script's Batch with the same parameters writes the same folder,
        and moving it aside would make that one pay again at every run of the script. So a
        group folder there holding other jobs than this Batch's (:meth:`_own_jobs_in`) is
        not moved: it is copied whole into ``<root>.previous-<UTC time>`` and this Batch's
        jobs are taken out of it (:meth:`~batchata_df.state.StateStore.drop_jobs`), every
        other job's answers and bills staying where their Batch finds them (and counted
        under this Batch's cost limit, as any job of a folder it resumes). Refused
        (:class:`StateError`, nothing copied or changed, nothing sent) while one of this
        Batch's jobs is in flight there. "This Batch's jobs" are its jobs as they are now:
        one whose prompt (or file, model...) was edited since its earlier run has another
        job id, and its earlier answer cannot be told from another Batch's job; it stays in
        the folder like any other job (not sent again: no job asks for it any more). A
        folder whose every job is this Batch's, or that cannot be read (damaged, no
        manifest), is moved aside whole, as above.

        Returns the folders moved aside and, by group key, this Batch's job ids taken (or,
        without ``move``, to be taken) out of the folders that stay.
        """
        if not root.is_dir():
            return [], {}
        others = _used_by_others(root, self)
        mine = set(groups)
        aside: list[Path] = []
        trimmed: dict[str, pl.Series] = {}
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            if folder.name not in mine and (
                self._state is None or not (folder / "manifest.json").is_file()
            ):
                continue
            held = folder.name in others
            if held or _being_written(folder):
                if folder.name not in mine:
                    continue
                who = (
                    "another live Batch of this script on the same state folder uses it"
                    if held
                    else "another call (of another process) is writing it now"
                )
                msg = (
                    f"reuse_state=False cannot start group folder {str(folder)!r} afresh: "
                    f"{who}, and moving it aside would make that one send and pay for its "
                    "jobs again; nothing was sent. Give this Batch a state of its own "
                    "(set_state(file=...) or another results_dir), or let the other finish "
                    "and run again"
                )
                if held:
                    raise StateError(msg)
                raise StateLockedError(msg)
            if self._state is None and folder.name in mine:
                ids = self._own_jobs_in(folder, groups[folder.name])
                if ids is not None:
                    trimmed[folder.name] = ids
                    continue
            aside.append(folder)
        if not move or not (aside or trimmed):
            return aside, trimmed
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        kept = root.with_name(f"{root.name}.previous-{stamp}")
        moved: list[Path] = []
        for folder in aside:
            # Under its writer lock: a run another process starts on it meanwhile would
            # find it gone mid-run; one that took the lock since the look above keeps it
            # (this Batch's own: refused, as above).
            with self._holding(folder, mine) as lock:
                if lock is None:
                    continue
                kept.mkdir(parents=True, exist_ok=True)
                folder.rename(kept / folder.name)
            moved.append(folder)
        for key, ids in trimmed.items():
            folder = root / key
            with self._holding(folder, mine):
                # Copied whole first: the earlier state stays readable where a fresh start
                # keeps it, this Batch's earlier answers and bills included.
                kept.mkdir(parents=True, exist_ok=True)
                shutil.copytree(folder, kept / key, ignore=shutil.ignore_patterns(LOCK_FILE))
                store = StateStore(folder, read_manifest(folder / "manifest.json").fingerprint)
                store.drop_jobs(ids)
        if moved or trimmed:
            print(
                f"batchata-df: reuse_state=False: starting afresh; the earlier state is "
                f"kept in {kept}",
                file=sys.stderr,
            )
        return moved, trimmed

    @contextlib.contextmanager
    def _holding(self, folder: Path, mine: set[str]) -> Iterator[WriterLock | None]:
        """``folder``'s writer lock, taken at once; ``None`` if another call holds it.

        This Batch's own group held so is refused (:class:`StateLockedError`): it cannot
        start afresh.
        """
        lock = WriterLock(folder, timeout=0)
        try:
            lock.acquire()
        except StateLockedError as e:
            if folder.name not in mine:
                yield None
                return
            msg = f"reuse_state=False cannot start group folder {str(folder)!r} afresh: {e}"
            raise StateLockedError(msg, holder=e.holder) from None
        try:
            yield lock
        finally:
            lock.release()

    def _own_jobs_in(self, folder: Path, jobs: Sequence[_Job]) -> pl.Series | None:
        """The ids of ``jobs`` (this Batch's, of one group) in its group ``folder``.

        ``None`` when the folder holds no other job (or cannot be read: damaged, no
        manifest): it is this Batch's alone, moved aside whole. Raises
        :class:`StateError` (nothing changed) when one of them is in flight there: taken
        out, its answer would be lost and it would be paid again.
        """
        try:
            store = StateStore(
                folder, read_manifest(folder / "manifest.json").fingerprint, readonly=True
            )
            ids = job_ids_of(_group_frame(jobs), state=folder, **_call_args(jobs[0]))
            ids = ids.drop_nulls().unique()
            with reading_folder(folder):
                other = (
                    pl.scan_parquet(
                        table_parts(folder / "jobs"), schema={"job_id": pl.String},
                        missing_columns="insert", extra_columns="ignore", glob=False,
                    )
                    .filter(~pl.col("job_id").is_in(ids.implode()))
                    .select(pl.col("job_id").is_not_null().any())
                    .collect()
                    .item()
                ) if table_parts(folder / "jobs") else False  # fmt: skip
            if not other:
                return None
            latest = store.latest_status(ids)
        except StateError:
            return None
        busy = latest.filter(~pl.col("status").is_in(TERMINAL_JOB)).height
        if busy:
            n = f"{busy} of its job{'s' if busy != 1 else ''}"
            msg = (
                f"reuse_state=False cannot start this Batch's jobs afresh in group folder "
                f"{str(folder)!r}: {n} sent by an earlier run() {'is' if busy == 1 else 'are'} "
                "in flight there, not collected yet, and the folder holds other jobs too "
                "(another Batch's or script's with the same parameters), so it is not moved "
                "aside; nothing was copied, changed or sent. Run this Batch once with "
                "reuse_state=True (the default) to collect them (nothing is sent or paid "
                "again), then with reuse_state=False"
            )
            raise StateError(msg)
        return ids

    def run(
        self,
        on_progress: Callable[[ProgressSnapshot], None] | None = None,
        progress_interval: float = 1.0,
        print_status: bool = False,
        dry_run: bool = False,
        wait: bool = True,
    ) -> BatchRun:
        """Run every job (one :func:`~batchata_df.batch_llm` call per compatible group).

        ``dry_run=True`` prints the plan and its worst-case cost and sends nothing.
        ``on_progress`` may take the seed's ``(stats, elapsed_s, batch_data)`` or one
        :class:`~batchata_df.engine.ProgressSnapshot`; it is called at most every
        ``progress_interval`` seconds. ``wait=False`` (the seed's older README) submits and
        returns: unfinished jobs are ``pending``; ``run()`` again collects them.
        """
        if not self._jobs:
            msg = "no jobs: call add_job(...) before run()"
            raise ConfigError(msg)
        groups: dict[str, list[_Job]] = {}
        for job in self._jobs:
            groups.setdefault(_group_key(job), []).append(job)
        root = self._state or self.results_dir / "state"
        # reuse_state=False: the first run() moves this Batch's earlier state aside and sends
        # every job again; its dry run plans that fresh start (no folder), not what the old
        # folders hold, and is refused as the run would be.
        discarded: list[Path] = []
        trimmed: dict[str, pl.Series] = {}  # this Batch's jobs out of a shared group folder
        if not self._reuse_state and not self._fresh_done:
            try:
                discarded, trimmed = self._fresh_start(root, groups, move=not dry_run)
            except BatchataError as e:
                e.args = (_in_compat_words(str(e)), *e.args[1:])
                raise
            self._fresh_done = not dry_run
        fresh = dry_run and not self._reuse_state and not self._fresh_done
        run = BatchRun(
            dry_run=dry_run,
            cost_limit_usd=self._cost_limit,
            results_dir=self.results_dir,
            raw_files=self.raw_files,
        )
        started = time.monotonic()
        if not dry_run and len(groups) > 1:
            # Every group's checks (parameters, models, files, the folder's settings) before
            # the first group is sent: batch_llm checks its own jobs before sending, but a
            # later group's refusal would come after the earlier groups were paid for.
            # Silent: what it warns, in a dry run's words ("would be sent (this is a dry
            # run)"), each group's own call warns in the run's ("are sent now").
            for key, jobs in groups.items():
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        self._run_group(_group_frame(jobs), jobs[0], root / key,
                                        self._cost_limit, started, False, dry_run=True,
                                        wait=wait)  # fmt: skip
                except BatchataError as e:
                    e.args = (_in_compat_words(str(e)), *e.args[1:])
                    raise
        worst: dict[str, float] = {}

        def largest(k: str) -> float:  # a group's largest worst case, planned once a run
            if k not in worst:
                worst[k] = self._largest_worst(groups[k])
            return worst[k]

        # Group folders of an earlier run() no group of this one uses (a parameter changed
        # since): what they spent and hold in flight is this Batch's spending, under the
        # one limit, and their answers are not read into the results: said, with the
        # folder. A folder the user removed is not there to count. reuse_state=False
        # starts afresh (the seed forgets its earlier state): such a folder under
        # results_dir/state stays (it may be another script's) but what it spent or holds
        # is from before the fresh start, not under this run's limit, as a folder the fresh
        # start moved aside is not; its jobs in flight are still named.
        counted = self._cost_limit is not None and self._reuse_state
        behind = 0.0
        for folder in _left_behind(root, list(groups), self):
            if folder in discarded:  # a dry run's: the run moves it aside
                continue
            try:
                spent, held, busy = _folder_money(
                    folder, lambda: max((largest(k) for k in groups), default=0.0)
                )
            except StateError as e:
                # Damaged (a part, its manifest): without a limit nothing needs its
                # money, and no group of this run reads it: said, not a refusal.
                warn_user(_unreadable_left_behind(folder, e, limited=counted))
                continue
            if counted:
                behind += spent + held
            notice = _left_behind_warning(folder, spent, held, busy, limited=counted)
            if notice is not None:
                warn_user(notice)
        interrupted = False
        planned_usd = 0.0  # a dry run: the worst case its earlier groups would send
        totals = _RunTotals(total=len(self._jobs), started=started, later=len(self._jobs))
        for key, jobs in groups.items():
            totals.start_group(len(jobs))
            cap = self._cost_limit
            if cap is not None:
                # One cap over all groups: each group may spend what the others have not
                # spent or hold in flight (run(wait=False) leaves their batches running).
                # A fresh start's dry run plans each group without a folder: the other
                # jobs of a folder its run takes this Batch's jobs out of (another
                # Batch's) count as in the run, this group's own folder too.
                others = sum(
                    _spent_or_held(root / k, lambda k=k: largest(k), ids)  # type: ignore[misc]
                    for k, ids in trimmed.items()
                ) if fresh else sum(
                    _spent_or_held(root / k, lambda k=k: largest(k))  # type: ignore[misc]
                    for k in groups if k != key
                )  # fmt: skip
                cap = max(cap - others - behind - planned_usd, 1e-12)
            first = jobs[0]
            frame = _group_frame(jobs)
            # A dry run shows its cost estimates, as the seed's does.
            progress: bool | Callable[[ProgressSnapshot], None] = print_status or dry_run
            if on_progress is not None and not dry_run:  # a dry run has no progress
                progress = _seed_progress(
                    on_progress, progress_interval, self._cost_limit, self.items_per_batch,
                    totals,
                )
            pressed = interrupts()
            try:
                out = self._run_group(frame, first, None if fresh else root / key, cap,
                                      started, progress,
                                      dry_run=dry_run, wait=wait,
                                      stopped=interrupted)  # fmt: skip
            except BatchataError as e:
                # Said in batch_llm's words; this user called add_job / set_default_params.
                e.args = (_in_compat_words(str(e)), *e.args[1:])
                raise
            if interrupted:
                # Sent nothing (a spent time limit): its unsent jobs were stopped by Ctrl+C.
                out = out.with_columns(
                    pl.when(pl.col("_error") == _STOPPED_BY_LIMIT)
                    .then(pl.lit(_INTERRUPTED))
                    .otherwise(pl.col("_error"))
                    .alias("_error")
                )
            elif not dry_run and "_error" in out.columns:
                # batch_llm turns the first Ctrl+C into a graceful stop and returns: the
                # later groups must not be sent either (nothing more is submitted).
                # So does a Ctrl+C after the group's last row ended: it cancelled no row.
                interrupted = interrupts() != pressed or bool(
                    (out.get_column("_error") == _INTERRUPTED).any()
                )
            if not dry_run:
                totals.end_group(out)
            elif out.height:
                # The later groups are planned with what is left of the one limit, as the
                # run gives them what is left after this group has spent (at most this).
                sent = (pl.col("_status") == "planned") & pl.col("_within_cap")
                planned_usd += float(
                    out.select(pl.col("_est_cost_usd").filter(sent).fill_null(0.0).sum()).item()
                )
            internal = [c for c in out.columns if c.startswith("__compat_")]
            run.frames.append((jobs, out.drop(internal)))
        run._write_files()
        return run

    def _largest_worst(self, jobs: list[_Job]) -> float:
        """The largest worst case of one of ``jobs`` (a dry run of the group, no folder).

        Silent, and 0 when such a dry run refuses the group (a model retired since its
        folder was started is refused without the folder): the group's own call decides.
        """
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                plan = self._run_group(_group_frame(jobs), jobs[0], None, self._cost_limit,
                                       time.monotonic(), False, dry_run=True,
                                       wait=True)  # fmt: skip
        except BatchataError:
            return 0.0
        top = plan.get_column("_est_cost_usd").max() if plan.height else None
        return 0.0 if top is None else float(top)  # type: ignore[arg-type]

    def _run_group(
        self,
        frame: pl.DataFrame,
        first: _Job,
        state: Path | None,
        cap: float | None,
        started: float,
        progress: bool | Callable[[ProgressSnapshot], None],
        *,
        dry_run: bool,
        wait: bool,
        stopped: bool = False,
    ) -> pl.DataFrame:
        """One :func:`~batchata_df.batch_llm` call: the jobs of one compatible group.

        ``stopped`` (Ctrl+C ended an earlier group): a time limit already spent, so that
        nothing is submitted, batches in flight are cancelled and what the folder holds is
        read, as a stop inside the call does.
        """
        out: pl.DataFrame = frame.pipe(
            batch_llm,
            **_call_args(first),
            state=state,
            max_cost_usd=cap,
            # One time limit for the whole run, not one per group.
            time_limit=(
                _SPENT
                if stopped
                else None
                if self._time_limit is None
                else max(self._time_limit - (time.monotonic() - started), _SPENT)
            ),
            dry_run=dry_run,
            items_per_batch=self.items_per_batch,
            max_parallel_batches=self.max_parallel_batches,
            progress=progress,
            wait=wait,
            keep_raw=not dry_run,
            keep_responses=self.raw_files and not dry_run,
        )
        return out
