"""The seed library's builder API (``Batch(...)...run().results()``) on our engine.

For users moving from ``batchata``: the same calls, but results are never deleted, nothing
is paid twice after a crash (the checkpoint folder is ``results_dir/state``), failed rows
are kept, and cost limits are hard caps. Jobs with the same response model, citations flag
and parameters run in one :func:`~batchata_df.batch_llm` call each.

Examples
--------
>>> import tempfile
>>> from batchata_df.compat import Batch
>>> from batchata_df.emulator import Emulator
>>> with Emulator() as emu, emu.environ():
...     batch = (
...         Batch(results_dir=tempfile.mkdtemp())
...         .set_default_params(model="gpt-4.1-mini", temperature=0.0)
...         .add_cost_limit(usd=1.0)
...     )
...     _ = batch.add_job(prompt="Say hi")
...     results = batch.run().results()
>>> [r.is_success for r in results["completed"]]
[True]
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel

from batchata_df.engine import ProgressSnapshot
from batchata_df.errors import ConfigError
from batchata_df.frame import batch_llm
from batchata_df.schema import AnswerSchema
from batchata_df.state import spent_usd

__all__ = ["Batch", "BatchRun", "JobResult"]

_PARAM_KEYS = ("temperature", "max_tokens", "top_p", "seed", "stop")


@dataclass
class JobResult:
    """One job's outcome, like the seed library's ``JobResult``."""

    job_id: str
    status: str
    raw_response: str | None = None
    parsed_response: BaseModel | dict[str, Any] | str | None = None
    citations: list[dict[str, Any]] | None = None
    citation_mappings: dict[str, list[dict[str, Any]]] | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    error: str | None = None
    batch_id: str | None = None

    @property
    def is_success(self) -> bool:
        """Whether the job completed."""
        return self.status == "completed"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        parsed = self.parsed_response
        if isinstance(parsed, BaseModel):
            parsed = parsed.model_dump(mode="json")
        return {
            "job_id": self.job_id,
            "status": self.status,
            "raw_response": self.raw_response,
            "parsed_response": parsed,
            "citation_mappings": self.citation_mappings,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
            "error": self.error,
            "batch_id": self.batch_id,
        }

    def save_to_json(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, default=str))


@dataclass
class _Job:
    job_id: str
    prompt: str
    model: str
    file: str | None
    response_model: type[BaseModel] | None
    citations: bool
    params: dict[str, Any]


@dataclass
class BatchRun:
    """The outcome of :meth:`Batch.run`."""

    frames: list[tuple[list[_Job], pl.DataFrame]] = field(default_factory=list)

    def results(self) -> dict[str, list[JobResult]]:
        """``{"completed": [...], "failed": [...], "cancelled": [...]}`` (and ``pending``)."""
        out: dict[str, list[JobResult]] = {"completed": [], "failed": [], "cancelled": []}
        for jobs, frame in self.frames:
            for job, row in zip(jobs, frame.iter_rows(named=True), strict=True):
                result = _to_result(job, row)
                out.setdefault(result.status, []).append(result)
        return out

    def to_polars(self) -> pl.DataFrame:
        """All result frames stacked (columns that differ between groups are unioned)."""
        return pl.concat([f for _, f in self.frames], how="diagonal_relaxed")


def _to_result(job: _Job, row: dict[str, Any]) -> JobResult:
    model = job.response_model
    parsed: BaseModel | dict[str, Any] | str | None = None
    raw: str | None = None
    if row["_status"] == "completed":
        if model is None:
            parsed = raw = row.get("response")
        else:
            values = {name: row[name] for name in model.model_fields}
            parsed = model.model_validate(values)
            raw = parsed.model_dump_json()
    mappings = None
    if job.citations and model is not None:
        mappings = {
            name: row.get(f"{name}_citations") or [] for name in model.model_fields
        }
    return JobResult(
        job_id=job.job_id,
        status=row["_status"],
        raw_response=raw,
        parsed_response=parsed,
        citation_mappings=mappings,
        input_tokens=row["_input_tokens"] or 0,
        output_tokens=row["_output_tokens"] or 0,
        cost_usd=row["_cost_usd"] or 0.0,
        error=row["_error"],
        batch_id=row["_batch_id"],
    )


class Batch:
    """Builder for a set of jobs, compatible with the seed library's ``Batch``.

    Parameters
    ----------
    results_dir
        Where checkpoints live (``results_dir/state``); never deleted by us.
    max_parallel_batches, items_per_batch
        As in :func:`~batchata_df.batch_llm`.
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
        self._defaults: dict[str, Any] = {}
        self._state: Path | None = None
        self._cost_limit: float | None = None
        self._time_limit: float | None = None
        self._jobs: list[_Job] = []

    def set_default_params(self, **params: Any) -> Batch:
        """Defaults for every job: ``model``, ``temperature``, ``max_tokens``, ..."""
        self._defaults.update(params)
        return self

    def set_state(self, file: str | Path | None = None, reuse_state: bool = True) -> Batch:
        """Where to checkpoint (a folder; a ``.json`` name is turned into a folder)."""
        if file is not None:
            path = Path(file)
            self._state = path.with_suffix("") if path.suffix == ".json" else path
        if not reuse_state and self._state is not None and self._state.exists():
            msg = (
                f"reuse_state=False but {str(self._state)!r} exists; delete it yourself or "
                "choose another state folder (we never delete results for you)"
            )
            raise ConfigError(msg)
        return self

    def add_cost_limit(self, usd: float) -> Batch:
        """A hard cap on spend for this batch."""
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
        """Accepted for compatibility; use ``run(print_status=True)`` for a display."""
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
    ) -> Batch:
        """Add one job (a prompt, or the last user message of ``messages``)."""
        if prompt is None and messages:
            users = [m for m in messages if m.get("role") == "user"]
            prompt = str(users[-1]["content"]) if users else None
        if prompt is None:
            msg = "add_job needs prompt= or messages= with a user message"
            raise ConfigError(msg)
        chosen = model or self._defaults.get("model")
        if not chosen:
            msg = "no model: pass model= or set_default_params(model=...)"
            raise ConfigError(msg)
        params = {k: v for k, v in self._defaults.items() if k in _PARAM_KEYS}
        if temperature is not None:
            params["temperature"] = temperature
        if max_tokens is not None:
            params["max_tokens"] = max_tokens
        self._jobs.append(
            _Job(
                job_id=f"job-{len(self._jobs):06d}",
                prompt=prompt,
                model=str(chosen),
                file=None if file is None else str(file),
                response_model=response_model,
                citations=enable_citations,
                params=params,
            )
        )
        return self

    def run(
        self,
        on_progress: Callable[[ProgressSnapshot], None] | None = None,
        progress_interval: float = 1.0,
        print_status: bool = False,
        dry_run: bool = False,
    ) -> BatchRun:
        """Run every job; one :func:`~batchata_df.batch_llm` call per compatible group."""
        groups: dict[str, list[_Job]] = {}
        for job in self._jobs:
            model = job.response_model
            key_src = json.dumps(
                [
                    # Name and shape: two models of the same name are different groups.
                    f"{model.__module__}.{model.__qualname__}:{AnswerSchema(model).fingerprint}"
                    if model
                    else None,
                    job.citations,
                    job.params,
                    job.file is not None,
                ],
                sort_keys=True,
                default=str,
            )
            key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
            groups.setdefault(key, []).append(job)
        root = self._state or (self.results_dir / "state")
        run = BatchRun()
        started = time.monotonic()
        for key, jobs in groups.items():
            cap = self._cost_limit
            if cap is not None:
                # One cap over all groups: each group may spend what the others have not.
                others = sum(spent_usd(root / k) for k in groups if k != key)
                cap = max(cap - others, 1e-12)
            first = jobs[0]
            data: dict[str, Any] = {
                "_prompt": [j.prompt for j in jobs],
                "_model": [j.model for j in jobs],
            }
            if first.file is not None:
                data["_file"] = [j.file for j in jobs]
            progress: bool | Callable[[ProgressSnapshot], None] = print_status
            if on_progress is not None:
                progress = on_progress
            frame = pl.DataFrame(data).pipe(
                batch_llm,
                schema=first.response_model,
                model=pl.col("_model"),
                prompt=pl.col("_prompt"),
                files="_file" if first.file is not None else None,
                citations=first.citations,
                params=first.params or None,
                state=root / key,
                max_cost_usd=cap,
                # One time limit for the whole run, not one per group.
                time_limit=(
                    None
                    if self._time_limit is None
                    else max(self._time_limit - (time.monotonic() - started), 1e-3)
                ),
                dry_run=dry_run,
                items_per_batch=self.items_per_batch,
                max_parallel_batches=self.max_parallel_batches,
                progress=progress,
            )
            run.frames.append((jobs, frame))
        return run
