"""Diagnose and repair a damaged checkpoint folder without paying for anything twice.

:func:`doctor` says what is wrong with a folder, offline. :func:`repair` says what it will
do (``apply=False``, the default) and, with ``apply=True``, does it:

* **Damaged event parts** (truncated, garbage, another schema) are *moved aside* to
  ``<state>/damaged/`` (never deleted), and what they held is recovered:

  - a batch whose batch events were lost but whose jobs name it gets its ``intent`` back
    (or its ``submitted`` event, when a job event still carries the provider's batch id):
    the next call looks the batch up at the provider (OpenAI by metadata, Gemini by
    display name, Anthropic by listing and ``custom_id`` s) and re-attaches it instead of
    sending its rows again;
  - a batch whose job events were lost (fewer known jobs than it was sent with) has its
    requests listed at the provider (its results, once it has ended) and gets their
    ``assigned`` events back;
  - a batch already collected whose jobs lost their answers is re-opened (a ``submitted``
    event), so the next call downloads its results again: downloading is free, sending is
    not.

* **A missing or unreadable manifest** is rebuilt from the parts: every part records its
  run id and the run's settings fingerprint in its Parquet key-value metadata. Parts
  written before that have neither: the run id is then read from the provider's batches
  (OpenAI ``metadata.batchata_run``, Gemini ``display_name``), and the first call that
  opens the folder states the settings again.

Repair takes the folder's writer lock, so it never runs beside a call (a call holding it
is a :class:`~batchata_df.errors.StateLockedError`: nothing is changed). :func:`doctor` and
a plan take no lock: a run beside may compact the folder's parts as they are read, and a
part that vanished is read again, never reported as damaged. Until it is applied,
every call on a damaged folder is refused with a :class:`~batchata_df.errors.StateError`
naming the file and this fix.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from batchata_df.errors import BatchataError, StateError, StateLockedError
from batchata_df.state import (
    BATCH_EVENTS,
    FORMAT_VERSION,
    FOUND_BY_REPAIR,
    JOB_EVENTS,
    PART_FINGERPRINT_KEY,
    PART_FORMAT_KEY,
    PART_RUN_KEY,
    READ_VERSIONS,
    Damage,
    Manifest,
    StateStore,
    WriterLock,
    find_damaged,
    list_parts,
    not_a_state_folder,
    part_version,
    read_manifest,
    read_unlocked,
)

__all__ = ["RepairReport", "doctor", "repair"]

_OPEN = ("intent", "submitted", "cancel_requested")
"""Batch phases in which a batch may still be running (no results collected yet)."""


@dataclass
class RepairReport:
    """What is wrong with a checkpoint folder and what repair does (or did) about it.

    ``str(report)`` is the human-readable plan.
    """

    state: Path
    damaged: list[Damage] = field(default_factory=list)
    manifest_problem: str | None = None
    manifest: Manifest | None = None
    """The manifest repair writes (``None``: the current one is fine)."""
    run_id_source: str = ""
    intents: dict[str, str] = field(default_factory=dict)
    """Batch key -> what is restored for a batch whose batch events were lost."""
    recovered: dict[str, int] = field(default_factory=dict)
    """Batch key -> jobs whose membership was listed at the provider."""
    to_list: dict[str, int] = field(default_factory=dict)
    """Batch key -> jobs missing from the folder (to list at the provider)."""
    reopened: list[str] = field(default_factory=list)
    """Collected batches whose results are downloaded again by the next call."""
    found: dict[str, str] = field(default_factory=dict)
    """Batch key -> provider batch id of an unresolved intent that lost jobs, found now."""
    pending: list[str] = field(default_factory=list)
    """What cannot be recovered yet (repair refuses to apply until it can)."""
    applied: bool = False
    _restore: list[dict[str, Any]] = field(default_factory=list, repr=False)
    _members: dict[str, list[str]] = field(default_factory=dict, repr=False)
    _batches: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    @property
    def healthy(self) -> bool:
        """Nothing to repair."""
        return not (
            self.damaged
            or self.manifest_problem
            or self.intents
            or self.to_list
            or self.reopened
            or self.found
            or self.pending
        )

    def actions(self) -> list[str]:
        """The steps, one line each."""
        out = []
        for d in self.damaged:
            out.append(f"move aside {d.path} ({d.problem}) to {self.state / 'damaged'}")
        if self.manifest is not None:
            fp = "with" if self.manifest.fingerprint else "without"
            out.append(
                f"write manifest.json with run id {self.manifest.run_id} "
                f"({self.run_id_source}), {fp} the settings fingerprint"
            )
        for key, what in sorted(self.intents.items()):
            out.append(f"batch {key}: {what}")
        for key, n in sorted(self.to_list.items()):
            got = self.recovered.get(key)
            if got is None:
                out.append(f"batch {key}: list its {n} lost job(s) at the provider")
            else:
                out.append(f"batch {key}: restore {got} job(s) listed at the provider")
        for key, pbid in sorted(self.found.items()):
            out.append(f"batch {key}: record {pbid}, found at the provider (its intent lost jobs)")
        for key in self.reopened:
            out.append(f"batch {key}: collect its results again on the next call")
        return out

    def __str__(self) -> str:
        if self.healthy:
            return f"{self.state}: healthy, nothing to repair"
        lines = [f"{self.state}:"]
        if self.manifest_problem:
            lines.append(f"  problem: {self.manifest_problem}")
        lines += [f"  {'done' if self.applied else 'will'}: {a}" for a in self.actions()]
        lines += [f"  cannot yet: {p}" for p in self.pending]
        if not self.applied and not self.pending:
            lines.append(
                f"  nothing changed yet: `batchata-df repair {self.state} --apply` "
                "(or repair(state, apply=True)) does it"
            )
        return "\n".join(lines)


def doctor(state: str | os.PathLike[str]) -> RepairReport:
    """Diagnose a checkpoint folder offline (no provider is asked, nothing is written).

    Examples
    --------
    >>> import tempfile
    >>> from batchata_df.state import StateStore
    >>> folder = tempfile.mkdtemp()
    >>> _ = StateStore(folder, {"model": "m"})
    >>> doctor(folder).healthy
    True

    Raises
    ------
    StateError
        ``state`` is not a checkpoint folder (it holds no ``manifest.json``, ``jobs/`` or
        ``batches/``); the message lists the checkpoint folders below it, if any.
    """
    root = _state_folder(state, "doctor")
    return _examine(root, online=False)


def repair(state: str | os.PathLike[str], *, apply: bool = False) -> RepairReport:
    """Show (``apply=False``) or do (``apply=True``) what makes a damaged folder usable again.

    See the module documentation for what is done. Asks the providers (credentials from
    the environment, as :func:`~batchata_df.batch_llm`) for what the damaged parts held.
    With ``apply=True`` it holds the folder's writer lock (taken at once, or
    :class:`~batchata_df.errors.StateLockedError` naming the call that holds it: let that
    call end, then repair), and refuses (raising :class:`StateError`, changing nothing)
    while something cannot be recovered yet, e.g. a batch whose lost requests can only be
    listed once it has ended.

    A path that is not a checkpoint folder (no ``manifest.json``, ``jobs/`` or
    ``batches/``: a results folder holding several, an empty or a data folder) is a
    :class:`StateError` listing the checkpoint folders below it, raised before any lock is
    taken or anything written.

    Examples
    --------
    >>> import tempfile
    >>> from batchata_df.state import StateStore
    >>> folder = tempfile.mkdtemp()
    >>> _ = StateStore(folder, {"model": "m"})
    >>> print(repair(folder))  # doctest: +ELLIPSIS
    /...: healthy, nothing to repair
    """
    root = _state_folder(state, "repair")
    if not apply:
        return _examine(root, online=True)
    with _repair_lock(root):
        report = _examine(root, online=True)
        if report.pending:
            msg = "cannot repair yet, nothing was changed:\n" + str(report)
            raise StateError(msg)
        if not report.healthy:
            _apply(report)
            report.applied = True
    return report


def _state_folder(state: str | os.PathLike[str], command: str) -> Path:
    """``state`` as a path, or the :class:`StateError` saying it is not a checkpoint folder.

    Checked before anything else: a lock taken on any folder leaves its ``writer.lock``.
    """
    problem = not_a_state_folder(state, command=command)
    if problem is not None:
        if command == "repair":
            msg = f"{problem}; nothing was changed"
            raise StateError(msg) from None
        raise problem
    return Path(state)


@contextlib.contextmanager
def _repair_lock(root: Path) -> Iterator[None]:
    """The folder's writer lock, taken now; refused at once while a call writes the folder.

    Repair reads the folder under it, so no run can compact (replace) parts that repair
    then moves aside, nor send rows whose jobs repair restores. It does not wait: a live
    run may last a day, and what it leaves may need no repair (a call refuses a damaged
    folder before it starts). The error says so in repair's words (no ``lock_timeout``).
    """
    lock = WriterLock(root)
    try:
        lock.acquire()
    except StateLockedError as e:
        who = e.holder.describe() if e.holder else "another process (starting up)"
        msg = (
            f"cannot repair {str(root)!r} now, nothing was changed: another call is writing "
            f"it ({who}), and its writes would race the repair's. Let it finish (or stop "
            f"it), then run `batchata-df repair {root}` again to see what is still to do; "
            "`batchata-df doctor` reads the folder without waiting"
        )
        raise StateLockedError(msg, holder=e.holder) from None
    try:
        yield
    finally:
        lock.release()


# -- examining ------------------------------------------------------------------------------


def _examine(root: Path, *, online: bool) -> RepairReport:
    report = RepairReport(state=root)
    if not root.is_dir():
        return report
    path = root / "manifest.json"
    run_id = ""
    if path.exists():
        try:
            run_id = read_manifest(path).run_id
        except StateError as e:
            report.manifest_problem = str(e)
    identities = bool(report.manifest_problem) or not path.exists()
    # doctor and a repair plan take no lock: a run beside may compact the folder (merge
    # its parts, delete them) between our listing and our reading. A part that vanished
    # then reads as damaged or fails the read: read the folder again when its parts changed
    # (never call a compaction damage: --apply would move parts aside that are not).
    # Under repair's lock no writer runs: the parts never change, nothing is read twice.
    folder = read_unlocked(
        [root],
        lambda: _read_folder(root, identities=identities),
        suspect=lambda f: bool(f.damaged),
    )
    report.damaged = folder.damaged
    if not path.exists() and (folder.good or folder.damaged):
        report.manifest_problem = f"{path} is missing"
    if report.manifest_problem:
        report.manifest = _rebuild_manifest(report, folder, online=online)
        run_id = report.manifest.run_id

    _lost_batches(report, folder.jobs, folder.batches)
    _lost_jobs(report, folder.jobs, folder.batches, run_id, online=online)
    return report


@dataclass(frozen=True)
class _Folder:
    """What a folder's parts hold, as listed and read by one :func:`_read_folder`."""

    damaged: list[Damage]
    good: list[Path]
    jobs: pl.DataFrame
    batches: pl.DataFrame
    identities: list[tuple[str, str | None]]
    """(run id, settings fingerprint as JSON) of each good part that records them, oldest
    part first (names start with the write time); read only to rebuild the manifest."""
    versions: set[int | str] = field(default_factory=set)
    """The format versions the good parts record (:func:`~batchata_df.state.part_version`:
    1 for a part written before the key existed); read only to rebuild the manifest."""


def _read_folder(root: Path, *, identities: bool) -> _Folder:
    damaged = find_damaged(root, deep=True)
    bad = {d.path for d in damaged}
    good = [p for p in list_parts(root) if p not in bad]
    found = []
    versions: set[int | str] = set()
    for part in sorted(good, key=lambda p: p.name) if identities else []:
        with part.open("rb") as file:  # not the path: Polars would expand ``[`` etc. in it
            meta = pl.read_parquet_metadata(file)
        run = meta.get(PART_RUN_KEY)
        if run:
            found.append((run, meta.get(PART_FINGERPRINT_KEY)))
        versions.add(part_version(meta))
    return _Folder(
        damaged=damaged,
        good=good,
        jobs=_read([p for p in good if p.parent.name == "jobs"], JOB_EVENTS),
        batches=_read([p for p in good if p.parent.name == "batches"], BATCH_EVENTS),
        identities=found,
        versions=versions,
    )


def _read(parts: list[Path], schema: pl.Schema) -> pl.DataFrame:
    if not parts:
        return pl.DataFrame(schema=schema)
    return (
        pl.scan_parquet(
            parts, schema=schema, missing_columns="insert", extra_columns="ignore", glob=False
        )
        .select(list(schema))
        .collect()
        .sort("seq")
    )


def _rebuild_manifest(report: RepairReport, folder: _Folder, *, online: bool) -> Manifest:
    manifest = _rebuilt_identity(report, folder, online=online)
    manifest.format_version = _rebuilt_version(report, folder)
    return manifest


def _rebuilt_version(report: RepairReport, folder: _Folder) -> int:
    """The format version of a rebuilt manifest: the one the parts record.

    A folder without parts is new (:data:`~batchata_df.state.FORMAT_VERSION`). Parts of a
    version not read here, or of several, leave the manifest unwritten (``pending``):
    written with another version, the folder would be misread.
    """
    versions = folder.versions
    if not versions:
        return FORMAT_VERSION
    (version, *others) = sorted(versions, key=str)
    if others or version not in READ_VERSIONS:
        seen = " and ".join(repr(v) for v in sorted(versions, key=str))
        readable = " and ".join(str(v) for v in READ_VERSIONS)
        report.pending.append(
            f"the event parts record format version {seen} ({PART_FORMAT_KEY}); this "
            f"batchata-df reads versions {readable}, one per folder: the manifest is not "
            "rebuilt (use the batchata-df version that wrote the parts)"
        )
        return FORMAT_VERSION
    assert isinstance(version, int)
    return version


def _rebuilt_identity(report: RepairReport, folder: _Folder, *, online: bool) -> Manifest:
    runs: Counter[str] = Counter()
    fingerprints: dict[str, dict[str, str]] = {}
    # Oldest part first, so each run keeps the fingerprint of its newest part: a folder's
    # fingerprint can change (reparse).
    for run, fingerprint in folder.identities:
        runs[run] += 1
        try:
            fingerprints[run] = json.loads(fingerprint or "{}")
        except ValueError:
            fingerprints.setdefault(run, {})
    batches = folder.batches
    if runs:
        run_id, n = runs.most_common(1)[0]
        report.run_id_source = f"recorded in {n} of {len(folder.good)} parts"
        if len(runs) > 1:
            report.run_id_source += f"; other run ids seen: {sorted(set(runs) - {run_id})}"
        return Manifest(run_id=run_id, fingerprint=fingerprints.get(run_id, {}))
    found = _run_id_from_provider(batches) if online else None
    if found is not None:
        run_id, where = found
        report.run_id_source = f"read from the provider's batch {where}"
        return Manifest(run_id=run_id, fingerprint={})
    ids = batches.filter(pl.col("provider").is_in(["openai", "gemini"]))
    if ids.height and not online:
        report.run_id_source = "to be read from the provider's batches by `repair`"
    else:
        report.run_id_source = "new: no part or provider batch records the old one"
    return Manifest(run_id=secrets.token_hex(8), fingerprint={})


def _run_id_from_provider(batches: pl.DataFrame) -> tuple[str, str] | None:
    """The run id that OpenAI (metadata) or Gemini (display name) batches carry."""
    from batchata_df.providers import make_provider

    known = batches.filter(
        pl.col("provider_batch_id").is_not_null() & pl.col("provider").is_in(["openai", "gemini"])
    ).unique("provider_batch_id", keep="last")
    for name, pbid in known.select("provider", "provider_batch_id").iter_rows():
        try:
            provider = make_provider(str(name))
        except BatchataError:
            continue
        try:
            client = provider.client  # type: ignore[attr-defined]
            if name == "openai":
                meta = client.batches.retrieve(pbid).metadata or {}
                run = meta.get("batchata_run")
            else:
                display = client.batches.get(name=pbid).display_name or ""
                parts = display.split("-")
                run = parts[1] if len(parts) >= 3 and parts[0] == "batchata" else None
        except Exception:  # one unreachable batch: try the next
            run = None
        finally:
            provider.close()
        if run:
            return str(run), str(pbid)
    return None


def _lost_batches(report: RepairReport, jobs: pl.DataFrame, batches: pl.DataFrame) -> None:
    """Batches that jobs name but no batch event describes: restore their intent.

    Realtime requests' keys are not batches: they are never restored.
    """
    known = set(batches.get_column("batch_key").to_list())
    # A realtime call's requests name a key of their own ("r..."), never a provider batch.
    known |= set(jobs.filter(pl.col("mode") == "realtime").get_column("batch_key").to_list())
    named = jobs.filter(pl.col("batch_key").is_not_null() & ~pl.col("batch_key").is_in(known))
    if named.height == 0:
        return
    for row in (
        named.group_by("batch_key")
        .agg(
            pl.col("provider").drop_nulls().first(),
            pl.col("model").drop_nulls().first(),
            pl.col("provider_batch_id").drop_nulls().first(),
            pl.col("job_id").n_unique().alias("n_jobs"),
            pl.col("ts").min(),
        )
        .sort("batch_key")
        .iter_rows(named=True)
    ):
        if row["provider_batch_id"]:
            what = (
                f"restore it as submitted ({row['provider_batch_id']}, named by its jobs); "
                "the next call collects it"
            )
        else:
            what = (
                f"restore its intent ({row['n_jobs']} jobs, {row['provider']}); the next call "
                "looks it up at the provider and re-attaches it"
            )
        report.intents[row["batch_key"]] = what
        report._restore.append(row)


def _lost_jobs(
    report: RepairReport,
    jobs: pl.DataFrame,
    batches: pl.DataFrame,
    run_id: str,
    *,
    online: bool,
) -> None:
    """Batches with fewer known jobs than they were sent with; collected ones that lost some.

    A collected batch whose jobs lost their outcome is re-opened so it is collected again.
    """
    if batches.height == 0:
        return
    per_batch = batches.group_by("batch_key").agg(
        pl.col("status").last(),
        pl.col("provider").drop_nulls().first(),
        pl.col("model").drop_nulls().first(),
        pl.col("provider_batch_id").drop_nulls().first(),
        pl.col("n_jobs").max(),
        pl.col("ts").min(),
    )
    known_ids = frozenset(batches.get_column("provider_batch_id").drop_nulls().to_list())
    members = jobs.filter(pl.col("batch_key").is_not_null()).group_by("batch_key").agg(
        pl.col("job_id").unique()
    )
    member_map = {k: set(v) for k, v in members.iter_rows()}
    everyone = set(jobs.get_column("job_id").to_list())
    latest = jobs.unique("job_id", keep="last", maintain_order=True)
    stuck = latest.filter(pl.col("status") == "assigned").group_by("batch_key").agg(pl.len())
    stuck_map = dict(stuck.iter_rows())
    restored: dict[str, list[str]] = {}
    for row in per_batch.sort("batch_key").iter_rows(named=True):
        key, status = row["batch_key"], row["status"]
        missing = int(row["n_jobs"] or 0) - len(member_map.get(key, set()))
        if status == "intent" and missing > 0 and online:
            # A crash left the submit unresolved and its job list was damaged: the engine
            # would find the batch but not know all its jobs. Find it now.
            found = _find_intent(row, run_id, member_map.get(key, set()), known_ids, report)
            if found:
                row["provider_batch_id"] = found
                report.found[key] = found
        if status == "abandoned" or not row["provider_batch_id"]:
            continue
        if missing > 0:
            report.to_list[key] = missing
            if online:
                ids = _listed_jobs(row, report)
                if ids is not None:
                    new = [j for j in ids if j not in everyone and j not in member_map.get(key, ())]
                    restored[key] = new
                    report.recovered[key] = len(new)
        stuck_here = stuck_map.get(key, 0) + len(restored.get(key, []))
        if status not in _OPEN and (stuck_here or (missing > 0 and key not in restored)):
            report.reopened.append(key)
    report._members = restored
    report._batches = {r["batch_key"]: r for r in per_batch.iter_rows(named=True)}
    for key, pbid in report.found.items():
        report._batches[key]["provider_batch_id"] = pbid


def _find_intent(
    row: dict[str, Any],
    run_id: str,
    members: set[str],
    known_ids: frozenset[str],
    report: RepairReport,
) -> str | None:
    """The provider batch of an unresolved intent (the engine's orphan lookup)."""
    from batchata_df.providers import make_provider
    from batchata_df.providers.base import BatchTag

    tag = BatchTag(
        run_id=run_id,
        batch_key=str(row["batch_key"]),
        created_after=row["ts"].timestamp(),
        n_jobs=row["n_jobs"],
        job_ids=frozenset(members),
        known_batch_ids=known_ids,
    )
    try:
        provider = make_provider(str(row["provider"]))
    except BatchataError as e:
        report.pending.append(f"batch {row['batch_key']}: cannot ask {row['provider']}: {e}")
        return None
    try:
        return provider.find(tag)
    except BatchataError as e:
        report.pending.append(f"batch {row['batch_key']}: lookup failed: {e}")
        return None
    finally:
        provider.close()


def _listed_jobs(row: dict[str, object], report: RepairReport) -> list[str] | None:
    """The job ids of a provider batch (from its results, so once it has ended)."""
    from batchata_df.providers import make_provider
    from batchata_df.providers.base import ProviderState, RequestSpec
    from batchata_df.schema import AnswerSchema

    key, pbid = str(row["batch_key"]), str(row["provider_batch_id"])
    try:
        provider = make_provider(str(row["provider"]))
    except BatchataError as e:
        report.pending.append(f"batch {key} ({pbid}): cannot ask {row['provider']}: {e}")
        return None
    try:
        poll = provider.poll(pbid)
        if poll.state is ProviderState.RUNNING:
            report.pending.append(
                f"batch {key} ({pbid}) lost {report.to_list[key]} job(s) and is still running "
                "at the provider; its requests can be listed once it has ended: run repair "
                "again then"
            )
            return None
        if poll.state is ProviderState.FAILED:
            return []  # nothing ran, nothing was billed: the jobs may be sent again
        spec = RequestSpec(schema=AnswerSchema(None), params={})
        results = provider.results(pbid, spec)
        return [str(j) for j in results.get_column("job_id").drop_nulls().unique().to_list()]
    except BatchataError as e:
        report.pending.append(f"batch {key} ({pbid}): the provider could not answer: {e}")
        return None
    finally:
        provider.close()


# -- applying -------------------------------------------------------------------------------


def _apply(report: RepairReport) -> None:
    root = report.state
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    for d in report.damaged:
        _move_aside(root, d.path, stamp)
    path = root / "manifest.json"
    if report.manifest is not None:
        if path.exists():
            _move_aside(root, path, stamp)
        StateStore._atomic_write(path, report.manifest.to_json().encode())
    manifest = read_manifest(path)
    store = StateStore(root, manifest.fingerprint)
    for key, pbid in report.found.items():
        row = report._batches[key]
        store.append_batch(
            batch_key=key,
            provider=row["provider"],
            model=row["model"],
            provider_batch_id=pbid,
            n_jobs=row["n_jobs"],
            status="submitted",
            detail=FOUND_BY_REPAIR,
        )
    for row in report._restore:
        common = {
            "batch_key": row["batch_key"],
            "provider": row["provider"],
            "model": row["model"],
            "n_jobs": row["n_jobs"],
        }
        if row["provider_batch_id"]:
            store.append_batch(
                **common,
                provider_batch_id=row["provider_batch_id"],
                status="submitted",
                detail="restored by repair from its jobs' events",
            )
        else:
            store.append_batch(
                **common,
                status="intent",
                ts=row["ts"],  # the lookup searches batches created after the intent
                detail="restored by repair: look the batch up at the provider",
            )
    info = report._batches
    for key, ids in report._members.items():
        if not ids:
            continue
        row = info[key]
        store.append_jobs(
            pl.DataFrame(
                {
                    "job_id": ids,
                    "batch_key": [key] * len(ids),
                    "provider": [row["provider"]] * len(ids),
                    "model": [row["model"]] * len(ids),
                    "status": ["assigned"] * len(ids),
                }
            )
        )
    for key in report.reopened:
        row = info[key]
        store.append_batch(
            batch_key=key,
            provider=row["provider"],
            model=row["model"],
            provider_batch_id=row["provider_batch_id"],
            n_jobs=row["n_jobs"],
            status="submitted",
            detail="reopened by repair: its results are collected again",
        )


def _move_aside(root: Path, path: Path, stamp: str) -> None:
    rel = path.relative_to(root)
    target = root / "damaged" / stamp / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
