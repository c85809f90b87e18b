"""Streaming runs: a LazyFrame in chunks, the result written to a Parquet sink.

``batch_llm(lf, ..., sink="out.parquet")`` never holds the input, the job table or the
answers whole. It goes in two passes over bounded pieces:

1. **Send and collect.** The input is read in chunks of ``chunk_rows`` rows
   (``LazyFrame.collect_batches``: Polars' streaming engine). Each chunk's jobs are built
   (job ids, prompts, estimates) and the chunk is spilled to the state folder
   (``<state>/.stream-<call>/chunk-<k>.parquet``: the input rows with their job id, input
   error and whether an earlier chunk had the same request). The engine pulls the next
   chunk only when the previous one is in provider batches
   (:class:`~batchata_df.engine.source.Feeder`); answers go to the state folder's
   Parquet parts as usual.
2. **Assemble.** Each spilled chunk is joined with the state of its own job ids (read with
   the filter pushed into the scan) and appended to the sink as Parquet row groups
   (``pyarrow.parquet.ParquetWriter``) in input order; the sink is written to a hidden
   temporary name and renamed when complete. The state folder's parts are compacted
   (:meth:`~batchata_df.state.StateStore.compact`) before this pass, so each chunk's
   lookup scans a few parts; the spilled chunks are removed after it.

A killed run leaves its spilled chunks (removed by the next call, which holds the lock)
and its state parts; the next call reads the input again chunk by chunk, sends only what
the state folder does not have (nothing twice: the usual intents, ids and lookups), and
writes the sink again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel

from batchata_df.cost import PriceOverride, PriceTable
from batchata_df.engine import Engine, RunOptions
from batchata_df.engine.driver import job_states_of, with_unavailable
from batchata_df.engine.planning import DatedEstimate
from batchata_df.errors import ConfigError, FileInputError
from batchata_df.estimates import observed_output
from batchata_df.jobindex import JobIndex
from batchata_df.jobs import build_jobs, check_param_values, check_params, id_ints
from batchata_df.providers import SUPPORTED_PARAMS, make_provider
from batchata_df.providers.base import Provider, RequestSpec
from batchata_df.schema import AnswerSchema
from batchata_df.schema_limits import check_schema_limits
from batchata_df.state import (
    JOB_EVENTS,
    LockHolder,
    StateStore,
    WriterLock,
    check_lock_timeout,
)
from batchata_df.summary import dictionary_columns
from batchata_df.validate import (
    call_models,
    check_prices_used,
    check_run_arguments,
    price_lost_requests,
)

__all__ = ["DEFAULT_CHUNK_ROWS", "stream_llm"]

DEFAULT_CHUNK_ROWS = 200_000
"""Rows read, hashed and planned at a time by a streaming run (memory follows it)."""

SINK_SLICE_ROWS = 50_000
"""Rows assembled into the sink at a time: each slice's answers are read, joined, decoded
and written before the next (a chunk's answers at once held several times more: the peak of
a ten-million-row run was reached there, and it grew with the run as the allocators kept
what each chunk had held)."""

_JOB = "__batchata_job_id"
_ERR = "__batchata_input_error"
_LATER = "__batchata_later"
_SPILL_PREFIX = ".stream-"


def stream_llm(
    lf: pl.LazyFrame,
    *,
    sink: str | os.PathLike[str],
    chunk_rows: int | None,
    schema: type[BaseModel] | None,
    model: str | pl.Expr,
    prompt: str | pl.Expr,
    state: str | os.PathLike[str] | None,
    system: str | pl.Expr | None,
    files: str | None,
    citations: bool,
    params: Mapping[str, Any] | None,
    max_cost_usd: float | None,
    time_limit: Any,
    dry_run: bool,
    items_per_batch: int | None,
    max_parallel_batches: int,
    progress: Any,
    wait: bool,
    prices: Mapping[str, PriceOverride] | None,
    retry_failed: bool,
    provider_patience: Any,
    keep_raw: bool,
    lock_timeout: float | None,
    history: str | None,
    keep_responses: bool = False,
    prompt_caching: bool = True,
) -> pl.LazyFrame:
    """``batch_llm`` with ``sink=``: see :func:`batchata_df.batch_llm` and the module."""
    from batchata_df import frame as fr

    rows = DEFAULT_CHUNK_ROWS if chunk_rows is None else chunk_rows
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        msg = f"chunk_rows must be a whole number of rows >= 1, got {chunk_rows!r}"
        raise ConfigError(msg)
    sink_path = Path(sink)
    if sink_path.suffix.lower() != ".parquet":
        msg = (
            f"sink= writes Parquet: give a path ending in .parquet (got {str(sink)!r}), or "
            "leave sink out to get a DataFrame back"
        )
        raise ConfigError(msg)
    # A link is written through: the file it names gets the result, the link stays.
    sink_path = sink_target(sink_path, what=f"sink={str(sink)!r}")
    _check_writable(sink_path)  # creates nothing: the folder comes with the sink
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
    answer = AnswerSchema(schema)
    columns = list(lf.collect_schema().names())
    fr._check_outputs(
        columns, answer, dry_run=dry_run, citations=citations, files=files,
        keep_raw=keep_raw, keep_responses=keep_responses,
    )  # fmt: skip
    scans = _scanned_files(lf)
    _check_not_input(lf, sink_path, scans)
    _check_readable(lf, scans)
    lock_wait = check_lock_timeout(lock_timeout)
    price_table = PriceTable(prices)
    fingerprint = fr._fingerprint(
        model, prompt, system, answer, params, citations=citations, history=history
    )
    fingerprint, salt, scheme = fr._job_salt(state, fingerprint)

    # Everything checkable is checked on one row per model before anything is read in
    # full or sent: templates, columns, models, parameters (the models of a per-row model
    # expression come from one streaming pass over that expression alone).
    try:
        probe = _probe(lf, model)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise _unreadable(e, scans) from e
    probe_jobs = build_jobs(
        probe, model=model, prompt=prompt, system=system, salt=salt, scheme=scheme,
        history=history,
    )
    needed = sorted(set(probe_jobs.get_column("provider").drop_nulls().to_list()))
    supported = frozenset.intersection(
        *[SUPPORTED_PARAMS.get(p, frozenset()) for p in needed]
    ) if needed else SUPPORTED_PARAMS["openai"]
    if citations and any(p not in fr.CITATION_PROVIDERS for p in needed):
        other = [p for p in needed if p not in fr.CITATION_PROVIDERS]
        msg = (
            f"citations=True is supported for {sorted(fr.CITATION_PROVIDERS)!r} models only, "
            f"but this run uses {other!r}; use a Claude model (e.g. model='claude-haiku-4-5') "
            "or remove citations=True"
        )
        raise ConfigError(msg)
    run_params = check_params(params, supported)
    check_param_values(run_params, needed)
    no_claude_format = fr._check_models(
        probe_jobs, run_params, structured=answer.json_schema is not None, citations=citations,
        resuming=fr._existing_folder(state),
    )
    check_schema_limits(
        answer.json_schema, needed, name=answer.name, citations=no_claude_format
    )
    check_prices_used(prices, call_models(model, probe_jobs, fr._model_pairs), state)  # probed
    _check_system_everywhere(lf, model, system, probe, probe_jobs, scans)
    _check_history_everywhere(lf, history, scans)
    spec = RequestSpec(
        schema=answer, params=run_params, citations=citations, keep_responses=keep_responses,
        prompt_caching=prompt_caching,
    )  # fmt: skip
    if files is not None:
        from batchata_df.files import content_preparer

        spec = dataclasses.replace(spec, prepare=content_preparer(citations=citations))
    why = "max_cost_usd" if max_cost_usd is not None else "dry_run"
    if max_cost_usd is not None or dry_run:
        # Prices are needed for the cap: a model without one fails here, before spending.
        fr.with_estimates(
            probe_jobs.filter(pl.col("input_error").is_null()), spec, price_table, why=why
        )
    options = RunOptions(
        items_per_batch=items_per_batch,
        max_parallel_batches=max_parallel_batches,
        wait=wait,
        time_limit_s=time_limit_s,
        retry_failed=retry_failed,
        max_cost_usd=None if max_cost_usd is None else float(max_cost_usd),
        provider_patience_s=patience_s,
    )

    recorded = fr._recorded_lookup(state, fingerprint, retry_failed=retry_failed)

    def jobs_of(chunk: pl.DataFrame, first_row: int = 0) -> pl.DataFrame:
        jobs = build_jobs(
            chunk, model=model, prompt=prompt, system=system, salt=salt, scheme=scheme,
            history=history,
        )
        if files is not None:
            from batchata_df.files import attach_files

            jobs = attach_files(
                jobs, chunk, files, salt=salt, scheme=scheme, first_row=first_row
            )
        if existing:  # a retired model's rows the folder never recorded fail as data
            jobs = fr._check_retired_rows(jobs, recorded, refuse=False)
        return fr._over_window(jobs, spec, recorded)

    existing = fr._existing_folder(state)
    if existing:
        # Held: failed rows count whatever retry_failed (frame._check_retired_rows).
        held = fr._recorded_lookup(state, fingerprint, retry_failed=False)
        _check_retired_everywhere(
            lf, model, probe, probe_jobs, jobs_of, recorded, held, rows, scans,
            dry_run=dry_run,
        )  # fmt: skip

    # A dry run's expected cost learns from the answers already in the folder, as in memory.
    observed = fr._observed(state, fingerprint) if dry_run else None

    def estimated(sendable: pl.DataFrame) -> pl.DataFrame:
        if max_cost_usd is None and not dry_run:
            return sendable
        return fr.with_estimates(sendable, spec, price_table, why=why, observed=observed)

    # Remembers the models it priced: a new date re-prices only when it changes their terms.
    estimate = DatedEstimate(estimated, price_table)

    try:
        expected = int(lf.select(pl.len()).collect(engine="streaming").item())
    except (pl.exceptions.PolarsError, OSError) as e:
        raise _unreadable(e, scans) from e
    if dry_run:
        show = None
        if progress is True:
            from batchata_df.progress import make_display

            show = make_display(max_cost_usd=max_cost_usd).show_plan
        # A dry run reads the folder without its lock: as checked above. "Already spent"
        # counts lost realtime requests at their recorded worst case, as the run's cap
        # would (a streamed call cannot price those without one: refused under a cap).
        if state is not None and Path(state).is_dir():
            stored_unpriced += price_lost_requests(
                state, None, recorded=True, refuse=max_cost_usd is not None
            )
        options = dataclasses.replace(options, stored_unpriced_usd=stored_unpriced)
        # Never to the sink: it may hold a finished result (the same call re-run with
        # dry_run=True replaced it with the plan), and a pipeline reads it as answers.
        plan_file = PlanFile()
        try:
            with plan_folder() as plan_dir:
                source = ChunkSource(lf, plan_dir, rows, jobs_of, estimate, expected, sends=False)
                stream_plan(
                    source, plan_file.path, spec, options, state, fingerprint, show,
                    pl.DataFrame(schema=lf.collect_schema()),
                )
            return plan_file.scan()
        except BaseException:
            plan_file.remove()
            raise

    fr._load_dotenv()
    providers: dict[str, Provider] = {}
    display = fr._progress_callback(progress, max_cost_usd)
    scope = fr._state_folder(state)
    try:
        for name in needed:
            providers[name] = make_provider(name)
        with (
            # Before the state folder's lock: a call waiting for the sink holds nothing.
            claim_sink(sink_path, state=state, lock_timeout=lock_wait),
            scope as folder,
            WriterLock(folder, lock_wait),
            _spill_folder(folder) as spill,
        ):
            # Under the lock, as the engine reads the rest of the folder's spend.
            options = fr._count_stored_spend(options, folder, prices, streamed=True)
            store = StateStore(folder, fingerprint)
            source = ChunkSource(lf, spill, rows, jobs_of, estimate, expected)
            stop = threading.Event()
            engine = Engine(
                store, providers, spec, price_table, options,
                progress=display, stop_event=stop, make_provider=make_provider,
                # On a new date, the planned jobs are priced again (planning.Repricer).
                reprice=estimate if max_cost_usd is not None else None,
            )
            with fr._interrupt_sets(stop):
                unsent = engine.run_source(source)
            source.read_rest()  # rows never read (wait=False, a stop): pending or cancelled
            source.seen = None  # not needed to write the sink: let it go
            # Compacted first: each chunk's lookup below then scans a few parts, not the
            # thousand a 10M-row run leaves (faster, and less held per scan).
            store.compact()
            flagged = _write_sink(
                sink_path, source.files, store, engine.state.unavailable, unsent, answer,
                pl.DataFrame(schema=lf.collect_schema()), citations=citations, keep_raw=keep_raw,
                keep_responses=keep_responses, distinct=source.distinct,
            )
            # After the sink: a warning turned into an error loses no result. In memory's
            # order: the rows a provider left unsent first (an error filter raises that).
            if flagged is not None:
                fr._warn_unavailable(flagged)
            # As in memory: the jobs' estimates were added up per model as the chunks were
            # read; the answers are the folder's (compacted), aggregated as they are scanned.
            fr._warn_serialised(
                engine, lambda: observed_output(store.answer_usage()), options.max_cost_usd
            )
            if scope.temporary:  # rows left in flight keep the folder (fr._state_folder)
                scope.pending = _pending_rows(sink_path)
    except KeyboardInterrupt:
        abort = getattr(display, "abort", None)  # a second Ctrl+C: batch_llm's last frame
        if callable(abort):
            abort()
        raise
    finally:
        close = getattr(display, "close", None)
        if callable(close):
            close()
        for provider in providers.values():
            provider.close()
    return pl.scan_parquet(sink_path, glob=False)


def _pending_rows(sink: Path) -> int:
    """How many rows of a written sink are ``pending`` (its ``_status`` column alone)."""
    pending = (pl.col("_status") == "pending").sum()
    return int(pl.scan_parquet(sink, glob=False).select(pending).collect().item())


class PlanFile:
    """A streamed dry run's plan: ``plan.parquet`` in a new temporary folder, and its lifetime.

    A dry run with ``sink=`` writes its plan here, never to the sink (which may hold a
    finished result) nor to the state folder (a dry run only reads it). The folder is in
    the system's temporary folder (:func:`tempfile.gettempdir`: ``TMPDIR``). A plan holds
    the input's columns, so it is about as large as the input: the folder is removed as
    soon as no LazyFrame reads it any more. :meth:`scan` returns a LazyFrame whose source
    is this object's reader (a Polars IO source), so every frame derived from it (a
    filter, a select, a join) holds it: when the last one is gone (and collected by the
    garbage collector), or at the process's exit, the folder goes. A scan of the file by
    its path would not tell: the folder stayed until the process exited, one per dry run
    in a notebook or a service.

    A process killed (``kill -9``, the out-of-memory killer) runs no clean-up: the folder
    is a :func:`plan_folder`'s, locked while this object lives, and the next plan made
    (in any process) removes those whose lock is free (:func:`remove_stale_plan_folders`).

    Examples
    --------
    >>> import gc
    >>> plan = PlanFile()
    >>> pl.DataFrame({"i": [1, 2, 3]}).write_parquet(plan.path)
    >>> folder = plan.path.parent
    >>> later = plan.scan().filter(pl.col("i") > 1)
    >>> del plan; _ = gc.collect()
    >>> later.collect()["i"].to_list(), folder.is_dir()
    ([2, 3], True)
    >>> del later; _ = gc.collect()
    >>> folder.exists()
    False
    """

    def __init__(self) -> None:
        folder, lock = _new_plan_folder()
        self.path = folder / "plan.parquet"
        # Also at the process's exit (finalize's atexit), if a frame outlives it.
        self._finalizer = weakref.finalize(self, _drop_plan_folder, folder, lock, os.getpid())

    def remove(self) -> None:
        """Remove the folder now (a dry run that failed or was stopped returns no plan)."""
        self._finalizer()

    def scan(self) -> pl.LazyFrame:
        """A LazyFrame over the plan; it (and each one derived from it) keeps the file."""
        from polars.io.plugins import register_io_source

        return register_io_source(
            self._batches,
            schema=pl.read_parquet_schema(self.path),
            explain_name="batchata-df dry-run plan",
            explain_detail=str(self.path),
        )

    def _batches(
        self,
        with_columns: list[str] | None,
        predicate: pl.Expr | None,
        n_rows: int | None,
        batch_size: int | None,
    ) -> Iterator[pl.DataFrame]:
        """The plan in batches, read by Polars' own Parquet reader (the pushdowns applied)."""
        lf = pl.scan_parquet(self.path, glob=False)
        if with_columns is not None:
            lf = lf.select(with_columns)
        if predicate is not None:
            lf = lf.filter(predicate)
        if n_rows is not None:
            lf = lf.head(n_rows)
        yield from lf.collect_batches(chunk_size=batch_size)


PLAN_PREFIX = "batchata-df-plan-"
"""The name of a dry run's folders in TMPDIR (:func:`plan_folder`), then 16 hex digits."""

_PLAN_NAME = re.compile(rf"{re.escape(PLAN_PREFIX)}[0-9a-f]{{16}}")


@contextlib.contextmanager
def plan_folder() -> Iterator[Path]:
    """A new private folder in TMPDIR for a dry run, removed when the block ends.

    It holds a plan (about the input's size) or a dry run's spilled chunks. While the
    block runs, the folder is locked as a :func:`hidden_folder` is (its
    :data:`FOLDER_LOCK` file, ``flock``: the kernel lets go when the process ends, however
    it ends). A process killed in the block leaves it; the next plan folder made (in this
    process or another) removes it, never a live one (:func:`remove_stale_plan_folders`).

    Examples
    --------
    >>> with plan_folder() as folder:
    ...     folder.name.startswith(PLAN_PREFIX), sorted(p.name for p in folder.iterdir())
    (True, ['.lock'])
    >>> folder.exists()
    False
    """
    folder, lock = _new_plan_folder()
    owner = os.getpid()
    try:
        yield folder
    finally:
        _drop_plan_folder(folder, lock, owner)


def _new_plan_folder() -> tuple[Path, int | None]:
    """Make a :func:`plan_folder` (those dead processes left are removed first): ``(path, lock)``.

    ``lock`` is the descriptor holding its lock (``None`` where locks are refused: then no
    other process removes it either).
    """
    tmp = Path(tempfile.gettempdir())
    remove_stale_plan_folders(tmp)
    # Created locked under a hidden name and renamed (_locked_file): no sweep ever sees it
    # unlocked. 0700, as mkdtemp makes it: a plan holds the input's columns.
    path = tmp / f"{PLAN_PREFIX}{secrets.token_hex(8)}"
    return path, _locked_file(path, folder=True)


def _drop_plan_folder(folder: Path, lock: int | None, owner: int) -> None:
    """Remove a plan folder, then let its lock go (held meanwhile: no sweep takes it).

    Only in the process that made it (``owner``, its pid): a child it forked inherits the
    object and its clean-up (run at the child's exit, or when the child drops its copy),
    but the plan is still the parent's, which reads it. The child only closes its copy of
    the lock's descriptor; the parent's keeps the lock.
    """
    if os.getpid() == owner:
        shutil.rmtree(folder, ignore_errors=True)
    if lock is not None:
        os.close(lock)


def remove_stale_plan_folders(tmp: Path) -> list[Path]:
    """Remove the :func:`plan_folder` folders in ``tmp`` that killed processes left.

    Returns the folders removed. Only names :data:`PLAN_PREFIX` and 16 hex digits, folders
    (not links) owned by this user, holding a :data:`FOLDER_LOCK` file whose lock is free
    (its process is gone: the kernel let it go) are removed; a live process's (this one's
    included: ``flock`` locks of two descriptors conflict) and anything else is left.
    Costs one listing of ``tmp``, and an ``open`` per folder of ours. Where locks are
    refused (Windows, some network mounts) nothing can be told and nothing is removed.

    Examples
    --------
    >>> tmp = Path(tempfile.mkdtemp())
    >>> dead = tmp / f"{PLAN_PREFIX}{'0' * 16}"  # a killed dry run's: its lock is free
    >>> dead.mkdir(); _ = (dead / FOLDER_LOCK).write_bytes(b"")
    >>> _ = (dead / "plan.parquet").write_bytes(b"PAR1")
    >>> (tmp / f"{PLAN_PREFIX}{'1' * 16}").mkdir()  # no lock file: not made by a plan
    >>> (tmp / f"{PLAN_PREFIX}abc").mkdir()  # not such a name
    >>> [p.name for p in remove_stale_plan_folders(tmp)]
    ['batchata-df-plan-0000000000000000']
    >>> with plan_folder() as live:  # held (by this process): never swept
    ...     live in remove_stale_plan_folders(live.parent), live.is_dir()
    (False, True)
    >>> sorted(p.name for p in tmp.iterdir())
    ['batchata-df-plan-1111111111111111', 'batchata-df-plan-abc']
    """
    removed: list[Path] = []
    if not _LOCKS:
        return removed
    from filelock import lock_descriptor

    uid = os.getuid()
    try:
        listing = os.scandir(tmp)
    except OSError:
        return removed
    with listing:
        for entry in listing:
            if not entry.name.startswith(PLAN_PREFIX) or not _PLAN_NAME.fullmatch(entry.name):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
                if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid:
                    continue
                fd = os.open(Path(entry.path, FOLDER_LOCK), os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:  # gone meanwhile (another sweep), or no lock file: not ours
                continue
            try:
                if lock_descriptor(fd, blocking=False):  # its process is gone
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed.append(Path(entry.path))
            except OSError:  # no locks here: cannot tell
                pass
            finally:
                os.close(fd)
    return removed


@contextlib.contextmanager
def _spill_folder(folder: Path) -> Iterator[Path]:
    """A new spill folder in the state folder, removed when the call ends, however it ends.

    Those a killed call left (a kill runs no ``finally``) are removed first: the caller
    holds the folder's writer lock, so none of them is a live call's.
    """
    for stale in folder.glob(f"{_SPILL_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    spill = folder / f"{_SPILL_PREFIX}{secrets.token_hex(4)}"
    spill.mkdir()
    try:
        yield spill
    finally:
        shutil.rmtree(spill, ignore_errors=True)


def sink_target(path: Path, *, what: str) -> Path:
    """The file written for ``path``: ``path``, or the file its symbolic link names.

    The result is written beside the file a link names, then renamed over it: the link
    stays, and what it points to (a file on a data lake mount, say) gets the result, as
    ``open(link, "w")``, the shell's ``>`` and Polars' ``write_parquet`` would. Replacing
    the link itself made it a regular file and left its target as it was. A link to a
    link is followed to the end (:func:`os.path.realpath`), and the input check compares
    that file with the input's files.

    A link whose file does not exist yet (a dangling one) is written through too, when the
    folder it names exists: the file is created there. When that folder does not exist
    either, or the links loop, :class:`ConfigError` is raised, before anything is sent:
    the folder is not created, because a link into a folder that is missing is most often
    a link into a drive that is not mounted (creating the folder would put the result on
    the local disk under the mount point, where the mounted drive would then hide it).
    ``what`` names the path in the message (``"sink='out.parquet'"``).

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> (folder / "lake").mkdir()
    >>> (folder / "out.parquet").symlink_to(folder / "lake" / "t.parquet")  # dangling
    >>> sink_target(folder / "out.parquet", what="sink") == folder / "lake" / "t.parquet"
    True
    >>> sink_target(folder / "plain.parquet", what="sink") == folder / "plain.parquet"
    True
    >>> (folder / "gone.parquet").symlink_to(folder / "unmounted" / "t.parquet")
    >>> sink_target(folder / "gone.parquet", what="sink")
    Traceback (most recent call last):
    ...
    batchata_df.errors.ConfigError: sink is a symbolic link to ...
    """
    if not os.path.islink(path):
        return path
    target = Path(os.path.realpath(path))
    if os.path.islink(target):  # realpath stops where links loop
        msg = (
            f"{what} is a symbolic link that loops ({str(target)!r} leads back to itself); "
            "point the link at a file, or remove it to write a regular file there. Nothing "
            "was sent"
        )
        raise ConfigError(msg)
    if not target.parent.is_dir():
        msg = (
            f"{what} is a symbolic link to {str(target)!r}, whose folder "
            f"{str(target.parent)!r} does not exist (a drive that is not mounted?). The "
            "result is written through the link, to that file: mount the drive or create "
            "the folder, or point the link elsewhere, or remove the link to write a "
            "regular file in its place. Nothing was sent"
        )
        raise ConfigError(msg)
    return target


def _check_writable(sink: Path) -> None:
    """Raise :class:`ConfigError` unless ``sink`` can be written; create nothing.

    Checked before anything is sent (the sink is written at the end, after paying), and
    before the other checks of the call, so it leaves nothing on disk: a missing folder
    is only looked at here (its nearest existing folder must take a file); it is created
    with the sink, once every check passed.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _check_writable(folder / "new" / "out.parquet")
    >>> (folder / "new").exists()
    False
    >>> _check_writable(Path(__file__) / "out.parquet")
    Traceback (most recent call last):
    ...
    batchata_df.errors.ConfigError: sink=...
    """
    if sink.is_dir():  # found only at the end (after paying) by the rename over it
        msg = (
            f"sink={str(sink)!r} is a folder: the result is one Parquet file, written under "
            "that name. Give a file path (e.g. inside the folder, or beside it), or remove "
            "the folder. Nothing was sent"
        )
        raise ConfigError(msg)
    folder = sink.absolute().parent
    existing = next((f for f in (folder, *folder.parents) if f.exists()), folder)
    if not existing.is_dir():
        msg = (
            f"sink={str(sink)!r}: cannot write in {str(existing)!r}: it is a file, not a "
            "folder; write the sink to another path. Nothing was sent"
        )
        raise ConfigError(msg)
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".batchata-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        msg = (
            f"sink={str(sink)!r}: cannot write in {str(existing)!r} "
            f"({e.strerror or e}); choose a folder you can write to. Nothing was sent"
        )
        raise ConfigError(msg) from e


_Scans = tuple[list[tuple[str, list[str]]], bool]
"""The files each scan of a plan reads, as ``(kind, paths)``, and whether some scan's
files could not be listed (its kind or the plan's shape is one Polars' visitor skips)."""


def _scanned_files(lf: pl.LazyFrame) -> _Scans:
    """The files the optimized plan of ``lf`` scans: globs, folders and lists expanded.

    Read with Polars' plan visitor (``LazyFrame._ldf.visit()``, the ``NodeTraverser``
    cudf-polars translates plans with: ``get_node``/``set_node``/``view_current_node``/
    ``get_inputs``, rapidsai/cudf ``python/cudf_polars/cudf_polars/typing/__init__.py``;
    internal to Polars, hence every failure is "unknown" here): its ``Scan`` nodes
    hold the expanded paths (every file of a glob, where the plan's text shows the first
    and "... 11 other sources"). The visitor does not show every node (an IPC scan, a
    scan of a buffer: ``NotImplementedError``); those are marked unknown, and so is the
    whole plan if the visitor fails (a Polars version without it).

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> for k in range(3):
    ...     pl.DataFrame({"a": [k]}).write_parquet(folder / f"p{k}.parquet")
    >>> scans, unknown = _scanned_files(pl.scan_parquet(folder / "*.parquet").head(1))
    >>> [(kind, [Path(p).name for p in paths]) for kind, paths in scans], unknown
    ([('parquet', ['p0.parquet', 'p1.parquet', 'p2.parquet'])], False)
    """
    scans: list[tuple[str, list[str]]] = []
    try:
        plan = lf._ldf.visit()
        todo, done = [plan.get_node()], set()
        unknown = False
        while todo:
            node = todo.pop()
            if node in done:
                continue
            done.add(node)
            plan.set_node(node)
            try:
                view = plan.view_current_node()
            except Exception:  # NotImplementedError: "ipc scan", "scan with BytesIO", ...
                unknown = True
            else:
                if type(view).__name__ == "Scan":
                    kind = view.scan_type[0] if isinstance(view.scan_type, tuple) else ""
                    scans.append((str(kind), [str(p) for p in view.paths]))
            todo.extend(plan.get_inputs())
    except Exception:  # an internal API: any failure means "not known", never a refusal
        return scans, True
    return scans, unknown


def _local(path: str) -> Path | None:
    """``path`` as a local file, or ``None`` for a cloud or HTTP address."""
    if path.startswith("file://"):
        return Path(path.removeprefix("file://"))
    return None if "://" in path else Path(path)


def same_file(path: Path, target: Path) -> bool:
    """Whether ``path`` names the file ``target`` names (links resolved, hard links too)."""
    try:
        if path.resolve() == target.resolve():
            return True
        return os.path.samefile(path, target)
    except (OSError, RuntimeError):  # either missing (or a link loop): not the same file
        return False


def _check_not_input(lf: pl.LazyFrame, sink: Path, scans: _Scans) -> None:
    """Refuse a sink that is a file ``lf`` reads: writing it would replace the input.

    The input's rows and columns would be lost for the result's, and the same call again
    would read the result as its input. Compared as files (:func:`same_file`), so a
    relative path, a symbolic or a hard link to the input is caught. A scan whose files
    the plan visitor does not list (:func:`_scanned_files`) is looked for in the plan's
    text; there Polars lists the first file of a many-file scan only, so another of them
    goes unnoticed (a documented limit). A sink that does not exist yet is not an input
    now; a glob that would match it is read on the next call, which then refuses.
    """
    listed, unknown = scans
    files = [path for _, paths in listed for path in paths]
    if unknown and sink.exists():
        for line in lf.explain(optimized=False).splitlines():
            match = re.search(r"SCAN \[(.*)\]\s*$", line)
            if match:
                files += [p for p in match[1].split(", ") if not p.startswith("... ")]
    for given in files:
        path = _local(given)
        if path is not None and same_file(path, sink):
            msg = (
                f"sink={str(sink)!r} is the file {given!r} that the input LazyFrame reads: "
                "the result would replace the input (its rows and columns lost). Write "
                "the result to another path. Nothing was sent"
            )
            raise ConfigError(msg)


def _check_readable(lf: pl.LazyFrame, scans: _Scans) -> None:
    """Refuse, before anything is sent, an input whose files Polars cannot read as one.

    The files of one scan that disagree on a column's type (``n`` Int64 in one Parquet
    file, String in the next) fail the read at the first row of the second file: after
    the chunks before it were sent. The plan filtered on ``False`` reads no rows but opens
    every file and checks it against the scan's schema, with the scan's own options
    (``missing_columns=``, ``cast_options=``, ...), so it fails exactly where the run
    would: in milliseconds for Parquet (footers only); CSV and NDJSON files are parsed
    once (about 0.2 and 0.5 s of CPU a million rows). Where Polars cannot push that
    filter into the scans (a window over the rows in between, such as ``shift``) it
    reads nothing, and a bad file is found mid-stream (:meth:`ChunkSource._read`).
    """
    empty = lf.filter(pl.lit(False))
    try:
        if any(line.lstrip().startswith("FILTER") for line in empty.explain().splitlines()):
            return  # a filter left over the rows: it would read them all, not check files
        empty.collect(engine="streaming")
    except (pl.exceptions.PolarsError, OSError) as e:
        raise _unreadable(e, scans) from e
    except Exception:  # a Python function of the plan given no rows: not the files' fault
        return  # (Polars 2.1 does not call one on no rows); the run reports what fails


def _unreadable(e: Exception, scans: _Scans) -> ConfigError:
    """The error for an input Polars failed to read before anything was sent."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    msg = (
        f"the input cannot be read: {first}{_drifted(scans)}. Fix the input (one type per "
        "column in every file: rewrite the file, or cast with the scan's cast_options=) "
        "and call again. Nothing was sent"
    )
    return ConfigError(msg)


def footer_schema(path: str | os.PathLike[str]) -> dict[str, pl.DataType]:
    """The schema in a Parquet file's footer, the path taken as a name, never a pattern.

    Given a path, Polars expands ``[``, ``*`` and ``?`` in it: ``in[1].parquet`` matched
    nothing. An open file is read as itself (as :mod:`batchata_df.state` reads parts).

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "in[1].parquet"
    >>> pl.DataFrame({"a": [1]}).write_parquet(path)
    >>> footer_schema(path)
    Schema([('a', Int64)])
    """
    with open(path, "rb") as file:
        return pl.read_parquet_schema(file)


def _drifted(scans: _Scans) -> str:
    """Name the first Parquet file whose column types differ from its scan's first file."""
    for kind, paths in scans[0]:
        if kind != "parquet" or len(paths) < 2:
            continue
        try:
            first = footer_schema(paths[0])
            for path in paths[1:]:
                schema = footer_schema(path)
                for name, dtype in schema.items():
                    if name in first and first[name] != dtype:
                        return (
                            f" ({path!r} has column {name!r} as {dtype}, {paths[0]!r} "
                            f"as {first[name]})"
                        )
        except (pl.exceptions.PolarsError, OSError):
            continue
    return ""


def _probe(lf: pl.LazyFrame, model: str | pl.Expr) -> pl.DataFrame:
    """One input row per distinct model (the first row, for a model given by name)."""
    if not isinstance(model, pl.Expr):
        return lf.head(1).collect()
    key = "\u0000model"
    return (
        lf.with_columns(model.cast(pl.String).alias(key))
        .unique(key, keep="first", maintain_order=True)
        .drop(key)
        .collect(engine="streaming")
    )


def _check_system_everywhere(
    lf: pl.LazyFrame,
    model: str | pl.Expr,
    system: str | pl.Expr | None,
    probe: pl.DataFrame,
    probe_jobs: pl.DataFrame,
    scans: _Scans,
) -> None:
    """Refuse a system prompt on any row of a model that takes none, before sending.

    The in-memory path checks every row (``frame._check_models``); the probe holds one
    row per model, so a per-row ``system`` (a column, or a template over one) that is
    null on that row and set on a later one went out, and the provider refused those
    rows one by one. Every row is checked here, up front, by one streaming pass over the
    columns the model and system expressions read (Polars reads no other column): only
    when the run has such a model and a system prompt, so other runs pay nothing.
    Per chunk it would cost nothing more, but it would raise after the earlier chunks
    were sent and paid for.
    """
    from batchata_df import frame as fr
    from batchata_df.jobs import _as_expr
    from batchata_df.models import family_of

    if system is None:
        return
    refused = {
        str(m): str(p)
        for p, m in fr._model_pairs(probe_jobs)
        if not family_of(str(p), str(m)).system_prompt
    }
    if not refused:
        return
    text = _as_expr(system, lf.collect_schema(), "system")
    if isinstance(model, pl.Expr):
        # The model expression's values (as the user wrote them: "o1-mini", or with
        # "openai/") of the refused models, from the probe: one row per value.
        spec = model.cast(pl.String)
        values = probe.select(spec.alias("v")).get_column("v")
        names = probe_jobs.get_column("model")
        bad = values.filter(names.is_in(list(refused)).fill_null(False))
        where = spec.is_in(bad.implode()) & text.is_not_null()
    else:
        spec, where = text, text.is_not_null()  # the one model: refused, as probed
    try:
        # A column is selected, never a literal alone: Polars gives a select of literals
        # one row whatever the filter kept.
        hit = lf.filter(where).select(spec.alias("m")).head(1).collect(engine="streaming")
    except (pl.exceptions.PolarsError, OSError) as e:
        raise _unreadable(e, scans) from e
    if hit.height:
        from batchata_df.jobs import parse_model

        provider, name = parse_model(str(hit.item()) if isinstance(model, pl.Expr) else model)
        raise fr._no_system_prompt(provider, name)


def _check_retired_everywhere(
    lf: pl.LazyFrame,
    model: str | pl.Expr,
    probe: pl.DataFrame,
    probe_jobs: pl.DataFrame,
    jobs_of: Callable[[pl.DataFrame], pl.DataFrame],
    recorded: Callable[[pl.Series], pl.Series] | None,
    holds: Callable[[pl.Series], pl.Series] | None,
    rows: int,
    scans: _Scans,
    *,
    dry_run: bool = False,
) -> None:
    """On an existing state folder: refuse a retired model the folder holds no row of.

    As in memory (``frame._check_retired_rows``): when the folder holds none of a retired
    model's rows, the call raises the :class:`~batchata_df.errors.ModelError` of a fresh
    folder before anything is sent; when it holds some, they are collected and the
    others fail as data (each chunk's ``jobs_of`` marks them), or, for a model routed to a
    successor (``models.routed_successor``), are sent, with one warning saying so. One
    streaming pass over the rows of the retired models, their job ids built as each
    chunk's are: only when the probe found a retired model. ``holds``: the job ids the
    folder holds, failed ones included whatever ``retry_failed`` (``recorded`` says which
    it will not send again).
    """
    from batchata_df import frame as fr
    from batchata_df.errors import ModelError, ModelShutdownWarning, warn_user
    from batchata_df.models import check_retired, routed_resume_warning, routed_successor

    retired: list[str] = []
    for p, m in fr._model_pairs(probe_jobs):
        try:
            check_retired(str(p), str(m))
        except ModelError:
            retired.append(str(m))
    if not retired:
        return
    if isinstance(model, pl.Expr):
        spec = model.cast(pl.String)
        values = probe.select(spec.alias("v")).get_column("v")
        names = probe_jobs.get_column("model")
        rows_of = lf.filter(spec.is_in(values.filter(names.is_in(retired)).implode()))
    else:
        rows_of = lf  # the one model, retired
    try:
        total = int(rows_of.select(pl.len()).collect(engine="streaming").item())
        held: set[str] = set()  # the retired models the folder holds rows of
        unsent: set[str] = set()  # ... and those with rows it never recorded (to send)
        for chunk in _chunks(rows_of, rows, total):
            jobs = jobs_of(chunk)  # marks the rows the folder never recorded
            of_retired = jobs.filter(
                pl.col("model").is_in(retired) & pl.col("job_id").is_not_null()
            )
            # (A routed model's unrecorded rows keep their ids: they will be sent.)
            ids = of_retired.get_column("job_id")
            known = recorded(ids) if recorded is not None else ids.clear()
            is_known = pl.col("job_id").is_in(known.implode())
            ours = holds(ids) if holds is not None else known
            is_held = pl.col("job_id").is_in(ours.implode())
            held.update(of_retired.filter(is_held).get_column("model").unique().to_list())
            unsent.update(of_retired.filter(~is_known).get_column("model").unique().to_list())
    except (pl.exceptions.PolarsError, OSError) as e:
        raise _unreadable(e, scans) from e
    for p, m in fr._model_pairs(probe_jobs):
        if str(m) in retired and str(m) not in held:
            check_retired(str(p), str(m))  # raises: nothing of it to collect
        successor = routed_successor(str(p), str(m))
        if str(m) in unsent and successor is not None:  # its other rows are sent
            notice = routed_resume_warning(str(p), str(m), successor, dry_run=dry_run)
            warn_user(ModelShutdownWarning(notice))


def _check_history_everywhere(lf: pl.LazyFrame, history: str | None, scans: _Scans) -> None:
    """Refuse a bad turn in any row's ``history``, before sending (as in memory).

    Each chunk's jobs check their rows' turns (:func:`batchata_df.jobs.history_expr`), so
    a bad turn in a later chunk raised after the earlier chunks were sent and paid for.
    One streaming pass over the history column (its type was checked on the probe),
    only when ``history=`` is given.
    """
    from batchata_df.jobs import BAD_TURN, bad_turn_error

    if history is None:
        return
    turn = pl.col("\u0000turn")
    try:
        bad = (
            lf.select(pl.col(history).explode().alias("\u0000turn"))
            .filter(turn.is_not_null())
            .select(
                turn.struct.field("role").cast(pl.String).alias("role"),
                turn.struct.field("content").cast(pl.String).alias("content"),
            )
            .filter(BAD_TURN)
            .head(1)
            .collect(engine="streaming")
        )
    except (pl.exceptions.PolarsError, OSError) as e:
        raise _unreadable(e, scans) from e
    if bad.height:
        raise bad_turn_error(history, bad.row(0, named=True))


def _chunks(lf: pl.LazyFrame, rows: int, total: int) -> Iterator[pl.DataFrame]:
    """The input in chunks of ``rows`` rows, in order.

    A plain Parquet scan (or a frame in memory) is read by slices: Polars pushes each slice
    into the scan (only the row groups it needs are read), which keeps memory at one chunk.
    Any other plan goes through ``collect_batches`` (Polars' streaming engine, which reads
    ahead a bounded amount), so it runs once whatever it does.
    """
    if _sliceable(lf):
        for offset in range(0, total, rows):
            yield lf.slice(offset, rows).collect()
        return
    yield from lf.collect_batches(chunk_size=rows, maintain_order=True)


def _sliceable(lf: pl.LazyFrame) -> bool:
    """Whether the optimized plan is one Parquet scan or in-memory frame, unfiltered."""
    lines = [
        line
        for line in lf.explain().splitlines()
        if line.strip() and not line.startswith(("PROJECT", "ESTIMATED ROWS"))
    ]
    return len(lines) == 1 and lines[0].startswith(("Parquet SCAN", "DF "))


class ChunkSource:
    """A :class:`~batchata_df.engine.source.JobSource` over a LazyFrame, read in chunks.

    Each chunk is spilled to ``spill`` with its keys; identical requests in different
    chunks are one job (a later chunk's copy is marked and not given to the engine).
    """

    def __init__(
        self,
        lf: pl.LazyFrame,
        spill: Path,
        chunk_rows: int,
        jobs_of: Callable[[pl.DataFrame, int], pl.DataFrame],
        estimate: Callable[[pl.DataFrame], pl.DataFrame],
        expected_rows: int,
        *,
        sends: bool = True,
    ) -> None:
        self.spill, self.jobs_of, self.estimate = spill, jobs_of, estimate
        self.sends = sends
        """Whether the chunks read go to an engine that sends them (not a dry run's plan)."""
        self.expected_rows = expected_rows
        self.rows_seen = 0
        self.files: list[Path] = []
        self.distinct: set[Path] = set()
        """Spilled chunks whose job ids are known to be distinct (nulls aside): nothing in
        them repeats a request of the same chunk, so no need to look for one."""
        self.seen: SeenIds | None = SeenIds(spill=spill / "seen")
        """Job ids of the chunks read so far (a later chunk's copy of a request is marked)."""
        self._batches = _chunks(lf, chunk_rows, expected_rows)

    def read(self) -> tuple[pl.DataFrame, pl.DataFrame] | None:
        """The next chunk, keyed and spilled: ``(chunk with keys, its jobs)``."""
        return self._read()

    def _read(self) -> tuple[pl.DataFrame, pl.DataFrame] | None:
        """Read, key and spill the next chunk: ``(chunk with keys, its jobs)``."""
        try:
            chunk = next(self._batches, None)
        except (pl.exceptions.PolarsError, OSError) as e:
            # A file found bad only now (_check_readable could not look ahead of the
            # plan): what was sent is in the state folder's intents and batches, which the
            # next call reattaches to and collects before it sends anything.
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            msg = (
                f"the input failed to read after {self.rows_seen:,} rows: {first}. Fix the "
                "input (one type per column in every file), scan it again (a LazyFrame "
                "keeps what it read of its files) and call again with the same state=: "
                "the batches already sent are kept in the state folder and are collected "
                "then, never sent or paid for twice"
            )
            raise ConfigError(msg) from e
        if chunk is None:
            return None
        try:
            jobs = self.jobs_of(chunk, self.rows_seen)
        except FileInputError as e:
            # The files of a chunk are read when the chunk is (reading every file up
            # front, as in memory, would read each twice): one found bad in a later chunk
            # comes after the earlier chunks were sent.
            if not (self.sends and self.rows_seen):
                raise
            msg = (
                f"{e}. Found after {self.rows_seen:,} rows were read and sent: fix the file "
                "and call again with the same state=: the batches already sent are kept in "
                "the state folder and are collected then, never sent or paid for twice"
            )
            raise FileInputError(msg) from e
        ids = jobs.get_column("job_id")
        later = pl.repeat(False, chunk.height, dtype=pl.Boolean, eager=True).alias(_LATER)
        hit = self.seen.check_and_add(ids) if self.seen is not None else None
        distinct = hit is not None and self.seen is not None and self.seen.distinct
        if hit is None:
            self.seen = None  # an id it cannot key exactly: the spilled chunks are searched
        if self.files:
            if hit is None:
                seen = (
                    pl.scan_parquet(self.files, glob=False)
                    .select(pl.col(_JOB))
                    .filter(pl.col(_JOB).is_in(ids.unique().implode()))
                    .unique()
                    .collect()
                    .to_series()
                )
                if seen.len():
                    later = ids.is_in(seen.implode()).alias(_LATER)
            elif hit.any():
                later = ids.is_in(ids.filter(hit).implode()).alias(_LATER)
        keyed = chunk.with_columns(
            ids.alias(_JOB), jobs.get_column("input_error").alias(_ERR), later
        )
        path = self.spill / f"chunk-{len(self.files):06d}.parquet"
        # lz4: the chunk is read back by this call only; zstd's smaller file cost more
        # CPU both ways (a 200,000-row chunk: 62 + 22 against 39 + 12 ms to write and read;
        # benchmarks/PROFILE.md, eleventh pass).
        keyed.write_parquet(path, compression="lz4", statistics=False)
        self.files.append(path)
        if distinct:
            self.distinct.add(path)
        self.rows_seen += chunk.height
        return keyed, jobs.with_columns(later)

    def next_chunk(self) -> pl.DataFrame | None:
        """The next chunk's jobs not given before (see the protocol)."""
        read = self._read()
        if read is None:
            return None
        _, jobs = read
        sendable = jobs.filter(pl.col("input_error").is_null() & ~pl.col(_LATER))
        if self.files[-1] not in self.distinct:  # else each id is there once already
            sendable = sendable.unique("job_id", keep="first", maintain_order=True)
        sendable = sendable.drop("input_error", _LATER)
        return self.estimate(sendable)

    def read_rest(self) -> None:
        """Spill the chunks never read (their rows are written to the sink too)."""
        while self._read() is not None:
            pass

    def lookup(self, job_ids: pl.Series) -> pl.DataFrame:
        """Rebuild the job rows of ``job_ids`` from the spilled chunks."""
        if not self.files:
            return pl.DataFrame()
        rows = (
            pl.scan_parquet(self.files, glob=False)
            .filter(pl.col(_JOB).is_in(job_ids.implode()))
            .unique(_JOB, keep="first", maintain_order=True)
            .collect()
        )
        jobs = self.jobs_of(rows.drop(_JOB, _ERR, _LATER), 0)
        return self.estimate(jobs.filter(pl.col("input_error").is_null()).drop("input_error"))


SEEN_SEGMENT_IDS = 1 << 21
"""Most ids :class:`SeenIds` merges into one segment (2,097,152: 25 MB). A merge holds both
segments and the result at once (about 25 bytes per id merged): uncapped, the last merges
took the whole set; capped, a merge holds at most 50 MB more. Measured apart, ten million
ids added 200,000 at a time peaked at 197 MB capped against 245 MB uncapped."""

SEEN_SPILL_IDS = 1 << 20
"""Segments of :class:`SeenIds` this big or bigger (1,048,576 ids: 12 MB) are written to its
spill folder and read back one at a time when looked up: what is held stays under a few
such segments whatever the number of ids (held whole, ten million ids took 120 MB)."""


@dataclasses.dataclass(frozen=True)
class _OnDisk:
    """A segment of :class:`SeenIds` in a file: its high words, then its low words."""

    path: Path
    size: int

    @staticmethod
    def write(path: Path, hi: np.ndarray, lo: np.ndarray) -> _OnDisk:
        with open(path, "wb") as f:
            f.write(hi.tobytes())
            f.write(lo.tobytes())
        return _OnDisk(path, int(hi.size))

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        hi = np.fromfile(self.path, dtype=np.uint64, count=self.size)
        lo = np.fromfile(self.path, dtype=np.uint32, count=self.size, offset=8 * self.size)
        return hi, lo


_Segment = tuple[np.ndarray, np.ndarray] | _OnDisk


class SeenIds:
    """A set of job ids in bounded memory: each id as its exact 96-bit value.

    Job ids are 24 hex digits (:func:`batchata_df.jobs.job_ids`): kept as a 64-bit and a
    32-bit integer (12 bytes an id), in sorted segments merged as they grow
    (binary-counter style, up to :data:`SEEN_SEGMENT_IDS` ids a segment), and looked up by
    binary search, the asked ids sorted first so that the searches walk each segment in
    order: a chunk's ids are checked against every earlier chunk without reading them back
    (which cost a scan of every spilled chunk per chunk). With a ``spill`` folder, segments
    of :data:`SEEN_SPILL_IDS` ids or more are kept in files there and read one at a time
    (each lookup reads them all: 120 MB for ten million ids, from the page cache), so what
    is held does not grow with the ids; without one, every segment is held.
    """

    def __init__(self, max_segment: int = SEEN_SEGMENT_IDS, spill: Path | None = None) -> None:
        self.segments: list[_Segment] = []
        self.distinct = False
        """Whether the ids of the last :meth:`check_and_add` were distinct, nulls aside
        (``False``: maybe not; known from their sort, at no cost)."""
        self.max_segment = max_segment
        self.spill = spill
        self._files = 0
        if spill is not None:
            spill.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _size(segment: _Segment) -> int:
        return segment.size if isinstance(segment, _OnDisk) else int(segment[0].size)

    @staticmethod
    def _held(segment: _Segment) -> tuple[np.ndarray, np.ndarray]:
        return segment.read() if isinstance(segment, _OnDisk) else segment

    def _keep(self, hi: np.ndarray, lo: np.ndarray) -> _Segment:
        """The segment as kept: in a file if it is big and there is a spill folder."""
        if self.spill is None or hi.size < SEEN_SPILL_IDS:
            return hi, lo
        self._files += 1
        return _OnDisk.write(self.spill / f"seen-{self._files:06d}.bin", hi, lo)

    @staticmethod
    def _keys(ids: pl.Series) -> tuple[np.ndarray, np.ndarray] | None:
        """``(high 64 bits, low 32 bits)`` of each non-null id (``None``: one is not hex)."""
        return id_ints(ids.drop_nulls())

    def add(self, ids: pl.Series) -> bool:
        """Add ``ids`` (nulls are ignored); ``False`` (nothing added) if one is not hex."""
        return self.check_and_add(ids) is not None

    def contains(self, ids: pl.Series) -> pl.Series | None:
        """Whether each id was added (null ids: ``False``); ``None`` if one is not hex."""
        return self.check_and_add(ids, add=False)

    def check_and_add(self, ids: pl.Series, *, add: bool = True) -> pl.Series | None:
        """Whether each id was added before (null ids: ``False``), then add them.

        ``None`` (and nothing added) if an id is not 24 lowercase hex digits.
        """
        self.distinct = False
        keys = self._keys(ids)
        if keys is None:
            return None
        order = np.argsort(keys[0], kind="stable")  # by the high bits; equal ones: below
        hi, lo = keys[0][order], keys[1][order]
        # Equal ids have equal high bits, next to each other once sorted: none such, none
        # repeated (some such: maybe; the caller then looks).
        self.distinct = not bool((hi[1:] == hi[:-1]).any())
        found = np.zeros(hi.size, dtype=bool)
        for segment in self.segments:
            if not self._size(segment):
                continue
            seg_hi, seg_lo = self._held(segment)  # one segment read at a time
            left = np.searchsorted(seg_hi, hi, side="left")
            there = np.flatnonzero(seg_hi[np.minimum(left, seg_hi.size - 1)] == hi)
            if not there.size:
                continue
            # The high bits are there: compare the low bits (a loop only where several
            # keys of the segment share the high bits).
            start = left[there]
            count = np.searchsorted(seg_hi, hi[there], side="right") - start
            one = count == 1
            found[there[one]] |= seg_lo[start[one]] == lo[there[one]]
            for i, a, n in zip(there[~one], start[~one], count[~one], strict=True):
                found[i] |= bool((seg_lo[a : a + n] == lo[i]).any())
            del seg_hi, seg_lo
        out = np.zeros(ids.len(), dtype=bool)
        unsorted = np.empty_like(found)
        unsorted[order] = found
        out[ids.is_not_null().to_numpy()] = unsorted
        if add and hi.size:
            self.segments.append(self._keep(hi, lo))
            segs = self.segments
            while (
                len(segs) > 1
                and self._size(segs[-2]) <= 2 * self._size(segs[-1])
                and self._size(segs[-2]) + self._size(segs[-1]) <= self.max_segment
            ):
                newer, older = segs.pop(), segs.pop()
                merged = _merge_sorted(self._held(older), self._held(newer))
                for gone in (older, newer):
                    if isinstance(gone, _OnDisk):
                        gone.path.unlink(missing_ok=True)
                segs.append(self._keep(*merged))
                del merged
        return pl.Series(_LATER, out, dtype=pl.Boolean)


def _merge_sorted(
    older: tuple[np.ndarray, np.ndarray], newer: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Two segments sorted by their high bits merged into one, in linear time.

    Each of ``newer``'s keys goes right after the ``older`` keys not above it; ``older``'s
    fill the other places. What is held besides the two segments and the result is one
    position per ``newer`` key and one flag per key (a concatenation sorted again held the
    keys three times and a 64-bit order per key: about 250 MB more at ten million ids).
    """
    (old_hi, old_lo), (new_hi, new_lo) = older, newer
    at = np.searchsorted(old_hi, new_hi, side="right")
    at += np.arange(new_hi.size, dtype=at.dtype)
    hi = np.empty(old_hi.size + new_hi.size, dtype=np.uint64)
    lo = np.empty(hi.size, dtype=np.uint32)
    hi[at], lo[at] = new_hi, new_lo
    rest = np.ones(hi.size, dtype=bool)
    rest[at] = False
    hi[rest], lo[rest] = old_hi, old_lo
    return hi, lo


class SinkWriter:
    """Appends frames to a Parquet file written under a hidden name, renamed when complete.

    The hidden name is ``.tmp-<sink>-<8 hex digits>`` beside the sink. While it is written
    its writer holds an OS lock on it (``filelock.lock_descriptor``: ``flock`` on POSIX),
    which the kernel releases when the process ends, however it ends. A new writer first
    removes the hidden files of the same sink whose lock it can take: those of calls killed
    while writing it (they stayed for good: 212 MB for a 10M-row sink), never one a live
    call is writing (whatever its state folder: that folder's writer lock does not cover
    another folder's call writing the same sink).
    """

    def __init__(self, sink: Path) -> None:
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

        self._pq = pq
        self.sink = sink
        self.tmp, self._lock = _claim(sink)
        self._writer: Any = None

    def write(self, frame: pl.DataFrame) -> None:
        """Append ``frame`` (the first one fixes the schema)."""
        table = frame.to_arrow()
        if self._writer is None:
            # No dictionary for the string columns that would overflow one (the input's
            # prompts, the job ids): the same values, for less CPU (summary module).
            self._writer = self._pq.ParquetWriter(
                self.tmp, table.schema, compression="zstd",
                use_dictionary=dictionary_columns(frame),
            )
        self._writer.write_table(table.cast(self._writer.schema))

    def close(self, empty: pl.DataFrame) -> None:
        """Finish: ``empty`` gives the columns when nothing was written; rename into place."""
        if self._writer is None:
            self.write(empty)
        self._writer.close()
        self._writer = None
        os.replace(self.tmp, self.sink)  # still locked: no other writer may take it first
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def __enter__(self) -> SinkWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()
        self.tmp.unlink(missing_ok=True)
        self._release()


_LOCKS = os.name != "nt"
"""Whether a writer locks its hidden file. On Windows it does not need to (and could not
rename it while open): a file open by its writer cannot be deleted there."""


FOLDER_LOCK = ".lock"
"""The file inside a :func:`hidden_folder` that its writer holds the lock on. Not the
folder itself: on NFS a lock on a folder's descriptor is local to one machine (Linux's
NFS client locks files through the server, folders only in the local kernel), so another
host would take a live run's folder for a dead one's."""


def _locked_file(path: Path, *, folder: bool = False) -> int | None:
    """Create ``path`` (a file, or a folder) locked: the descriptor holding the lock, or None.

    A folder's lock is held on the file :data:`FOLDER_LOCK` in it. It is created and
    locked under another name, then renamed to ``path``, so that no other writer can see
    it under ``path`` unlocked (and take it for a dead one's). On Windows, or a file
    system that refuses locks (some network mounts), it is created unlocked (a file: not
    at all, its writer creates it) and ``None`` is returned: there no writer can take a
    lock on it either, so none removes it.
    """
    if not _LOCKS:
        if folder:
            path.mkdir()
        return None
    from filelock import lock_descriptor

    if folder:
        fresh = tempfile.mkdtemp(dir=path.parent, prefix=".batchata-new-")
        try:
            fd = os.open(Path(fresh, FOLDER_LOCK), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except BaseException:
            _remove(Path(fresh))
            raise
    else:
        fd, fresh = _new_file(path.parent)
    try:
        try:
            locked = lock_descriptor(fd, blocking=False)  # a new file: nobody else has it
        except OSError:  # no locks on this file system
            locked = False
        os.replace(fresh, path)
    except BaseException:
        os.close(fd)
        _remove(Path(fresh))
        raise
    if not locked:
        os.close(fd)
        return None
    return fd


def _new_file(folder: Path) -> tuple[int, str]:
    """Create a new hidden file in ``folder``: its descriptor and path.

    Like :func:`tempfile.mkstemp`, but with the mode a file the user writes gets (0666
    less the umask), not 0600: the file becomes the output, which others in the user's
    group may have to read, as they can read the state folder's parts.

    Examples
    --------
    >>> import tempfile
    >>> fd, name = _new_file(Path(tempfile.mkdtemp()))
    >>> os.close(fd); Path(name).name.startswith(".batchata-new-")
    True
    """
    while True:
        name = str(folder / f".batchata-new-{secrets.token_hex(8)}")
        try:
            return os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), name
        except FileExistsError:  # pragma: no cover - 64 random bits taken
            continue


def _remove(path: Path) -> None:
    """Remove a hidden file, or a hidden folder with what is in it."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _claim(target: Path, *, folder: bool = False) -> tuple[Path, int | None]:
    """A new hidden file (or folder) of ``target`` beside it, locked: ``(path, lock)``.

    Named ``.tmp-<target>-<8 hex digits>``; the hidden files and folders of ``target`` that
    writers killed while writing it left are removed first (:func:`remove_stale_sink_files`).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_sink_files(target)
    path = target.with_name(f".tmp-{target.name}-{secrets.token_hex(4)}")
    return path, _locked_file(path, folder=folder)


@contextlib.contextmanager
def hidden_folder(target: str | os.PathLike[str]) -> Iterator[Path]:
    """A private folder beside ``target`` for what is written before ``target`` is.

    The folder (``.tmp-<target>-<8 hex digits>``, the name a :class:`SinkWriter` gives its
    hidden file) is locked as that file is while the ``with`` block runs, and removed with
    what is in it when the block ends, however it ends. A process killed in the block
    leaves it; the next writer of ``target`` (another ``hidden_folder`` or ``SinkWriter``)
    removes it, never the folder of a live one. A file written in it is renamed to
    ``target`` when complete: ``target`` never appears half written.

    The ``batchata-df run`` command writes its result there before it becomes OUTPUT (with
    the process id in their names, its files stayed beside OUTPUT for good when it was
    killed: gigabytes at 10M rows).

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "out.csv"
    >>> with hidden_folder(target) as folder:
    ...     _ = (folder / "out.csv").write_text("a,b")
    ...     os.replace(folder / "out.csv", target)
    ...     folder.name.startswith(".tmp-out.csv-")
    True
    >>> [p.name for p in target.parent.iterdir()]
    ['out.csv']
    """
    path, lock = _claim(Path(target), folder=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)  # still locked: no other writer takes it
        if lock is not None:
            os.close(lock)


def remove_stale_sink_files(sink: Path) -> list[Path]:
    """Remove the hidden files of ``sink`` that writers killed while writing it left.

    Returns the files (and :func:`hidden_folder` folders, with what is in them) removed.
    One whose lock is held (a live writer, in this process or another) is left alone; so
    is any other name.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / ".tmp-out.parquet-0badcafe").write_bytes(b"PAR1")  # a dead writer's
    >>> (folder / ".tmp-out.parquet-5ca1ab1e").mkdir()  # a dead run's hidden folder
    >>> _ = (folder / ".tmp-out.parquet-5ca1ab1e" / FOLDER_LOCK).write_bytes(b"")
    >>> _ = (folder / ".tmp-out.parquet-5ca1ab1e" / "result.parquet").write_bytes(b"PAR1")
    >>> (folder / ".tmp-out.parquet-abcdef12").mkdir()  # a folder no writer made (no lock)
    >>> for other in ("notes", "0badcafe.bak", "0badcafe1", "DEADBEEF"):  # not such names
    ...     _ = (folder / f".tmp-out.parquet-{other}").write_bytes(b"")
    >>> _ = (folder / ".tmp-outXparquet-0badcafe").write_bytes(b"")  # another sink's
    >>> sorted(p.name for p in remove_stale_sink_files(folder / "out.parquet"))
    ['.tmp-out.parquet-0badcafe', '.tmp-out.parquet-5ca1ab1e']
    >>> sorted(p.name for p in folder.iterdir())  # doctest: +NORMALIZE_WHITESPACE
    ['.tmp-out.parquet-0badcafe.bak', '.tmp-out.parquet-0badcafe1',
     '.tmp-out.parquet-DEADBEEF', '.tmp-out.parquet-abcdef12', '.tmp-out.parquet-notes',
     '.tmp-outXparquet-0badcafe']
    """
    import re

    from filelock import lock_descriptor

    name = re.compile(rf"\.tmp-{re.escape(sink.name)}-[0-9a-f]{{8}}")
    removed: list[Path] = []
    if not sink.parent.is_dir():
        return removed
    for path in sink.parent.iterdir():
        if not name.fullmatch(path.name):
            continue
        try:
            kind = os.lstat(path).st_mode
            if stat.S_ISDIR(kind):  # a hidden folder: its writer locks the file in it
                fd = os.open(path / FOLDER_LOCK, os.O_RDONLY)
            elif stat.S_ISREG(kind):
                fd = os.open(path, os.O_RDONLY)
            else:  # a link, a pipe (opening one would wait for a writer): never ours
                continue
        except OSError:  # gone meanwhile (another call removed it), or a folder without
            continue  # its lock file: not one a writer made, left alone
        try:
            if lock_descriptor(fd, blocking=False):  # its writer is gone
                _remove(path)
                removed.append(path)
        except OSError:  # on Windows: open by its writer
            pass
        finally:
            os.close(fd)
    return removed


WRITER_RECORD = "run.json"
"""The file in a writer's :func:`hidden_folder` naming it (what it is, pid, host, start
time, state folder), for the message another writer of the same target gets."""


def record_writer(folder: Path, state: str | os.PathLike[str] | None, by: str) -> None:
    """Name this process in its hidden ``folder`` (:data:`WRITER_RECORD`).

    ``by`` says what it is (``"batchata-df run"``, ``"batch_llm(sink=...)"``).
    """
    import json
    import socket
    import time

    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.time(),
        "state": None if state is None else os.path.abspath(state),
        "by": by,
    }
    tmp = folder / f"{WRITER_RECORD}.tmp"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, folder / WRITER_RECORD)  # never read half written


def live_writers(target: Path, mine: Path | None) -> list[Path]:
    """The hidden folders and files of ``target`` (other than ``mine``) a live writer holds.

    The names and locks of :func:`remove_stale_sink_files`: a folder's lock is on its
    :data:`FOLDER_LOCK` file, a :class:`SinkWriter`'s hidden file is locked itself. A lock
    this process can take is a dead writer's (taken only for the look, and let go at
    once). Where locks are refused (Windows, some network mounts), nothing can be told and
    nothing is reported.
    """
    import re

    from filelock import lock_descriptor

    name = re.compile(rf"\.tmp-{re.escape(target.name)}-[0-9a-f]{{8}}")
    live: list[Path] = []
    if not target.parent.is_dir():
        return live
    for path in sorted(target.parent.iterdir()):
        if (mine is not None and path.name == mine.name) or not name.fullmatch(path.name):
            continue
        try:
            kind = os.lstat(path).st_mode
            if stat.S_ISDIR(kind):
                fd = os.open(path / FOLDER_LOCK, os.O_RDONLY)
            elif stat.S_ISREG(kind):
                fd = os.open(path, os.O_RDONLY)
            else:  # a link, a pipe: no writer's
                continue
        except OSError:  # gone meanwhile, or a folder no writer made
            continue
        try:
            if not lock_descriptor(fd, blocking=False):
                live.append(path)
        except OSError:  # no locks here: cannot tell
            pass
        finally:
            os.close(fd)
    return live


def describe_writer(path: Path) -> tuple[str, LockHolder | None]:
    """Who writes through ``path`` (a hidden folder, or a :class:`SinkWriter`'s file).

    Also its :class:`~batchata_df.state.LockHolder` (``None`` if it has not named itself).
    """
    import json

    if not path.is_dir():
        return f"a batch_llm(sink=...) call (its hidden file {path.name!r})", None
    try:
        text = (path / WRITER_RECORD).read_text()
    except OSError:
        text = ""
    holder = LockHolder.parse(text)
    if holder is None:
        return f"a run or call starting up (its hidden folder {path.name!r})", None
    record = json.loads(text)
    state = record.get("state")
    with_state = f", state folder {state!r}" if state else ""
    by = record.get("by") or "batchata-df run"
    return f"{by}, {holder.describe()}{with_state} (its hidden folder {path.name!r})", holder


@contextlib.contextmanager
def claim_sink(
    sink: Path, *, state: str | os.PathLike[str] | None, lock_timeout: float | None
) -> Iterator[Path]:
    """Hold ``sink`` for a whole ``sink=`` call, as ``batchata-df run`` holds OUTPUT.

    A :func:`hidden_folder` beside the sink, locked and named (:func:`record_writer`) for
    the whole call, so that another call or run writing the same file sees this one; and
    before anything is sent, a look for another live writer of the sink (a run's hidden
    folder, another call's, a :class:`SinkWriter`'s file). Each makes its folder before it
    looks, so of two starting at once at least one sees the other (both may, and then
    both wait or refuse; never both send). One found: this call gives its folder up and
    waits for it up to ``lock_timeout`` seconds (``None``: as long as it takes), then
    raises :class:`~batchata_df.errors.SinkLockedError`.
    """
    import random
    import time

    from batchata_df.errors import SinkLockedError

    deadline = None if lock_timeout is None else time.monotonic() + lock_timeout
    while True:
        with contextlib.ExitStack() as stack:
            folder = stack.enter_context(hidden_folder(sink))
            record_writer(folder, state, "batch_llm(sink=...)")
            others = live_writers(sink, folder)
            if not others:
                yield folder
                return
        who, holder = describe_writer(others[0])
        if deadline is not None and time.monotonic() >= deadline:
            waited = f" after waiting {lock_timeout:g} s" if lock_timeout else ""
            msg = (
                f"sink={str(sink)!r} is being written by another call or run: {who}{waited}. "
                "Two calls writing one sink would each send every row and pay for it. Let "
                "it finish, or pass lock_timeout=<seconds> (None: as long as it takes) to "
                "wait for it, or write another sink. Nothing was sent"
            )
            raise SinkLockedError(msg, writer=who, holder=holder)
        # Jittered, so that two calls that saw each other do not retry in step.
        left = 0.5 if deadline is None else max(0.0, deadline - time.monotonic())
        time.sleep(min(random.uniform(0.1, 0.5), left))


def _unsent_in(
    ids: pl.Series, states: pl.DataFrame, unsent: pl.DataFrame | None
) -> pl.DataFrame | None:
    """The jobs of one sink slice left unsent after a refused create (``wait=False``).

    Those the engine planned (``unsent``) and, with them, the slice's jobs it never read
    (no event at all): every one of them goes with the next call, for the same reason.
    Only this slice's jobs, so that each is flagged (and counted) once.
    """
    if unsent is None or unsent.height == 0:
        return None
    reason = unsent.get_column("error")[0]
    planned = unsent.filter(pl.col("job_id").is_in(ids.implode()))
    never = ids.filter(
        ~ids.is_in(states.get_column("job_id").implode()) & ~ids.is_in(planned["job_id"].implode())
    )
    return pl.concat([
        planned.select("job_id", "error"),
        never.to_frame("job_id").with_columns(pl.lit(reason, dtype=pl.String).alias("error")),
    ])


def _write_sink(
    sink: Path,
    chunks: list[Path],
    store: StateStore,
    unavailable: dict[str, str],
    unsent: pl.DataFrame | None,
    answer: AnswerSchema,
    empty: pl.DataFrame,
    *,
    citations: bool,
    keep_raw: bool,
    keep_responses: bool,
    distinct: set[Path] | None = None,
) -> pl.DataFrame | None:
    """Assemble each spilled chunk with its jobs' states into ``sink``, in input order.

    ``distinct`` are the chunks whose job ids are known to be distinct, nulls aside
    (:attr:`ChunkSource.distinct`): no repeat within them is looked for. Returns the
    ``status``/``error`` of rows flagged ``provider_unavailable`` (for the warning), or
    ``None``.
    """
    from batchata_df import frame as fr
    from batchata_df.state import _conform
    from batchata_df.summary import SummaryWriter

    flagged: list[pl.DataFrame] = []
    batches = store.batch_state()  # read once: the ids of batches, for every chunk
    index = store.job_index()  # one scan of the job ids; each slice reads its row groups
    # The jobs' summary for `sql` (batchata_df.summary), from the events read for the sink.
    summary = SummaryWriter(store.root, index.parts, index.n_events)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(index.close)  # its spilled partitions, if any
        cleanup.callback(summary.discard)  # nothing half-written stays (no-op once closed)
        writer = cleanup.enter_context(SinkWriter(sink))
        for path in chunks:
            whole = pl.read_parquet(path, glob=False)
            # A repeat of a request earlier in the chunk is marked like one of an earlier
            # chunk before the chunk is cut into slices, so its bill stays on the first row
            # whichever slice that is.
            whole = whole.with_columns(_repeats(path in (distinct or ())).alias(_LATER))
            # A spilled index reads its partitions once for the chunk, not once per slice.
            index.prefetch(whole.filter(pl.col(_ERR).is_null()).get_column(_JOB))
            for start in range(0, whole.height, SINK_SLICE_ROWS):
                chunk = whole.slice(start, SINK_SLICE_ROWS)
                keys = chunk.select(
                    pl.col(_JOB).alias("job_id"),
                    pl.col(_ERR).alias("input_error"),
                    pl.col(_LATER).alias("later"),
                )
                sendable = keys.filter(pl.col("input_error").is_null())
                # Each job once: at its first row (the bill's row), as in the sink.
                first = sendable.filter(~pl.col("later"))
                ids = sendable.get_column("job_id")
                if first.height < sendable.height:  # some rows repeat an earlier one's job
                    ids = ids.unique()
                with store._reading():
                    events = _conform(index.events(ids, list(JOB_EVENTS)), JOB_EVENTS)
                # ``raw`` as the folder's format stores it, read (for the sink and summary).
                events = store.restored(events)
                states = job_states_of(store, ids, batches, index, events)
                if first.height < ids.len():  # some jobs are an earlier slice's: summarized there
                    events = events.filter(pl.col("job_id").is_in(first["job_id"].implode()))
                summary.add(events)
                results = with_unavailable(states, unavailable, _unsent_in(ids, states, unsent))
                hit = results.filter(
                    pl.col("error").str.contains("provider_unavailable: ", literal=True)
                )
                if hit.height:
                    flagged.append(hit.select("status", "error"))
                writer.write(
                    fr._assemble(
                        chunk.drop(_JOB, _ERR, _LATER), keys, results, answer,
                        citations=citations, keep_raw=keep_raw, keep_responses=keep_responses,
                    )
                )
                del chunk, keys, states, results, events
            del whole
        # No input rows: an empty file with the output's columns.
        writer.close(
            fr._assemble(
                empty, pl.DataFrame(schema={"job_id": pl.String, "input_error": pl.String}),
                pl.DataFrame(schema=dict(JOB_EVENTS)), answer,
                citations=citations, keep_raw=keep_raw, keep_responses=keep_responses,
            )
        )
        summary.close()
    return pl.concat(flagged) if flagged else None


def _repeats(distinct: bool) -> pl.Expr:
    """``later``, with the rows repeating a request earlier in the same chunk marked too.

    For a chunk whose ids are distinct but for nulls (rows with an input error), only the
    nulls after the first can repeat: the same marks as ``is_first_distinct`` gives,
    without hashing the ids.
    """
    if not distinct:
        return pl.col(_LATER) | ~pl.col(_JOB).is_first_distinct()
    null = pl.col(_JOB).is_null()
    return pl.col(_LATER) | (null & (null.cum_sum() > 1))


def stream_plan(
    source: ChunkSource,
    sink: Path,
    spec: RequestSpec,
    options: RunOptions,
    state: str | os.PathLike[str] | None,
    fingerprint: dict[str, str],
    show: Callable[[Any], None] | None,
    empty: pl.DataFrame,
) -> None:
    """A dry run, chunk by chunk: the plan of every row written to ``sink`` in input order.

    ``sink`` is the plan's own file (:func:`plan_path`), never the call's ``sink=``.

    The same plan as :func:`batchata_df.plan.dry_run_plan` gives in memory, with the
    batches a streaming run makes (planned per chunk, in order): ``_batch_index`` counts
    on across chunks, ``_within_cap`` adds the worst cases up across chunks, a request an
    earlier chunk already had is a ``duplicate``. Nothing is written to the state folder.
    """
    from batchata_df.engine import plan_batches, settled
    from batchata_df.engine.recovery import as_lost
    from batchata_df.plan import PLAN_COLUMNS, failed_ids, plan_columns, plan_status

    store = None
    index: JobIndex | None = None
    held = 0.0
    busy = pl.Series("job_id", [], dtype=pl.String)
    if state is not None and Path(state).is_dir():
        store = StateStore(state, fingerprint, readonly=True)
        index = store.job_index()
        batches = store.batch_state()
        if batches.height:
            open_keys = batches.filter(
                pl.col("status").is_in(["intent", "submitted", "cancel_requested"])
            ).get_column("batch_key")
            # As the engine: a job with an outcome under its open batch's key (a crash after
            # the batch's outcomes were stored) is not in flight, nor held under the cap.
            assigned, outcomes = store.members_and_outcomes(open_keys)
            assigned = assigned.join(outcomes, on=["batch_key", "job_id"], how="anti")
            busy = assigned.get_column("job_id")
            held += float(assigned.get_column("est_cost_usd").fill_null(0.0).sum())
        held += store.spent()
    held += options.stored_unpriced_usd  # priced at prices= (none without a cap)
    providers: dict[str, Provider] = {}
    cap = options.max_cost_usd
    n_batches, running = 0, held
    per_model: dict[tuple[str, str], dict[str, float]] = {}
    sources: dict[tuple[str, str], str] = {}  # each model's expected answer sizes' source
    saved = 0.0  # what prompt caching is expected to save on the planned requests
    with SinkWriter(sink) as writer:
        while (read := source.read()) is not None:
            chunk, jobs = read
            ids = jobs.get_column("job_id")
            done = kept = pl.Series("job_id", [], dtype=pl.String)
            if store is not None:
                latest, _ = store.snapshot(ids, index)
                latest = as_lost(latest)  # left in flight: lost, not sent again (the run)
                ended = settled(latest, retry_failed=options.retry_failed)
                done, kept = ended.get_column("job_id"), failed_ids(ended)
            sendable = jobs.filter(pl.col("input_error").is_null())
            todo = (
                sendable.filter(
                    ~pl.col(_LATER)
                    & ~pl.col("job_id").is_in(done.implode())
                    & ~pl.col("job_id").is_in(busy.implode())
                )
                .unique("job_id", keep="first", maintain_order=True)
                .drop("input_error", _LATER)
            )
            todo = source.estimate(todo)
            for name in todo.get_column("provider").unique().to_list():
                if name not in providers:
                    providers[name] = make_provider(name, offline=True)
            index_of: list[pl.DataFrame] = []
            for planned in plan_batches(todo, providers, spec, options.items_per_batch):
                index_of.append(
                    pl.DataFrame({"job_id": planned.job_ids}).with_columns(
                        pl.lit(n_batches, dtype=pl.Int64).alias("batch_index")
                    )
                )
                key = (planned.provider, planned.model)
                figures = per_model.setdefault(key, {"batches": 0})
                figures["batches"] += 1
                n_batches += 1
            indexed = (
                pl.concat(index_of)
                if index_of
                else pl.DataFrame(schema={"job_id": pl.String, "batch_index": pl.Int64})
            )
            planned_jobs = todo.join(indexed, on="job_id", how="left").sort(
                "batch_index", maintain_order=True
            )
            if "expected_source" in planned_jobs.columns:  # for the summary, as plan.py's
                for row in (
                    planned_jobs.group_by("provider", "model")
                    .agg(
                        pl.col("expected_source").drop_nulls().first(),
                        pl.col("expected_cache_saved_usd").fill_null(0.0).sum(),
                    )
                    .iter_rows(named=True)
                ):
                    sources[(str(row["provider"]), str(row["model"]))] = str(
                        row["expected_source"] or ""
                    )
                    saved += float(row["expected_cache_saved_usd"] or 0.0)
            worst = planned_jobs.get_column("worst_usd").fill_null(0.0)
            within = (
                (worst.cum_sum() + running <= cap + 1e-12)
                if cap is not None
                else pl.Series([None] * planned_jobs.height, dtype=pl.Boolean)
            )
            running += float(worst.sum())
            planned_jobs = planned_jobs.with_columns(within.alias("within_cap"))
            per_row = jobs.select("job_id", "input_error", "provider", "model", _LATER).join(
                planned_jobs.select(
                    "job_id", "est_input_tokens", "est_output_tokens_max", "worst_usd",
                    "est_output_tokens_expected", "expected_usd", "batch_index", "within_cap",
                ),
                on="job_id",
                how="left",
                maintain_order="left",
            )
            status = plan_status(
                done, busy, ~pl.col("job_id").is_first_distinct() | pl.col(_LATER), kept=kept
            )
            out = per_row.select(plan_columns(status, "batch"))  # streaming sends batches
            writer.write(pl.concat([chunk.drop(_JOB, _ERR, _LATER), out], how="horizontal"))
        writer.close(
            empty.with_columns(
                pl.lit(None, dtype=pl.String).alias(c) for c in PLAN_COLUMNS
            )
        )
    if index is not None:  # its open parts (else closed when it is collected)
        index.close()
    if show is not None:
        show(_summary(sink, per_model, n_batches, cap, held, sources=sources, saved=saved))


def _summary(
    sink: Path,
    per_model: dict[tuple[str, str], dict[str, float]],
    n_batches: int,
    cap: float | None,
    held: float,
    *,
    sources: dict[tuple[str, str], str] | None = None,
    saved: float = 0.0,
) -> Any:
    """The dry run's summary for people, aggregated from the plan file while scanning.

    With the expected cost beside the worst case, as an in-memory dry run's
    (:func:`batchata_df.plan.summarize`): ``sources`` names each model's answer sizes
    (``schema``, ``observed (N answers)``), ``saved`` what prompt caching is expected to
    save.
    """
    from batchata_df.progress import PlanSummary

    plan = pl.scan_parquet(sink, glob=False)
    counts = dict(plan.group_by("_status").len().collect(engine="streaming").iter_rows())
    order = ["planned", "duplicate", "done", "in_flight", "failed"]
    planned = plan.filter(pl.col("_status") == "planned")
    models = (
        planned.group_by("_provider", "_model")
        .agg(
            pl.len().alias("jobs"),
            pl.col("_est_input_tokens").sum().alias("est_input_tokens"),
            pl.col("_est_output_tokens_max").sum().alias("max_output_tokens"),
            pl.col("_est_cost_usd").sum().alias("worst_case_usd"),
            pl.col("_within_cap").fill_null(cap is None).sum().alias("within"),
            pl.col("_expected_cost_usd").sum().alias("expected_usd"),
            pl.col("_expected_cost_usd").is_not_null().any().alias("has_expected"),
        )
        .sort("_provider", "_model")
        .collect(engine="streaming")
    )
    by_model = [
        {
            "provider": row["_provider"],
            "model": row["_model"],
            "jobs": int(row["jobs"]),
            "batches": int(per_model.get((row["_provider"], row["_model"]), {}).get(
                "batches", 0
            )),
            "est_input_tokens": int(row["est_input_tokens"] or 0),
            "max_output_tokens": int(row["max_output_tokens"] or 0),
            "worst_case_usd": float(row["worst_case_usd"] or 0.0),
            "expected_source": (sources or {}).get((row["_provider"], row["_model"]), ""),
        }
        for row in models.iter_rows(named=True)
    ]
    expected = (
        float(models.get_column("expected_usd").fill_null(0.0).sum())
        if models.height and bool(models.get_column("has_expected").any())
        else None
    )
    return PlanSummary(
        rows_by_status={k: int(counts[k]) for k in order if counts.get(k)},
        by_model=by_model,
        n_batches=n_batches,
        worst_case_usd=float(models.get_column("worst_case_usd").sum()),
        held_usd=held,
        max_cost_usd=cap,
        within_cap=int(models.get_column("within").sum()),
        expected_usd=expected,
        expected_cache_saved_usd=saved,
    )
