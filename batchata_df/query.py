"""SQL over checkpoint folders with DuckDB.

:func:`sql` runs a query against one or several checkpoint folders (see
:mod:`batchata_df.state`) and returns a Polars frame; :func:`connect` returns the DuckDB
connection itself for several queries over the same snapshot. Both define these views:

``job_events``
    Every job event, all columns of :data:`~batchata_df.state.JOB_EVENTS` (plus any extra
    column a part carries), with ``run``: the checkpoint folder the event came from.
``jobs``
    One row per ``(run, job_id)``: the job's current state. ``status`` and ``error`` come
    from the job's latest event (highest ``seq``), so a job re-``assigned`` after a failure
    shows as in flight with no error. ``input_tokens``, ``output_tokens`` (thinking
    included), ``cached_tokens``, ``cache_write_tokens``, ``reasoning_tokens`` (the thinking
    part of ``output_tokens``), ``cost_usd`` and ``cache_saved_usd`` (what the prompt
    cache saved: the same usage at the input rate minus ``cost_usd``) add up every billed
    attempt (one per
    provider batch the job was in; ``attempts`` counts them), so ``sum(cost_usd)`` is what
    was paid, as far as it is known: a realtime attempt lost in flight (``error`` "lost:
    ...", or the job sent again and answered since) has no cost stored, though the
    provider may have billed it. :data:`LOST_REQUESTS` lists those attempts with their
    worst case, which ``max_cost_usd`` counts as spent. A billed batch result line whose
    id matched none of its batch's requests (damaged on its way) has a row of its own,
    ``job_id`` ``unmatched:<batch_key>:<n>``, ``status`` :data:`UNATTRIBUTED` (not a job:
    money not attributed to a row), ``error`` ``unmatched_result: ...``, with its usage
    and cost: no input row's, but paid. So ``sum(cost_usd)`` is the bill, and a count of
    jobs by status leaves them out unless it asks for :data:`UNATTRIBUTED`
    (:data:`COST_BY_STATUS` counts rows only; :data:`UNATTRIBUTED_SPEND` lists the lines).
    ``provider``, ``model``, ``batch_key`` and ``provider_batch_id`` are the latest *known*
    values (an event that does not repeat them does not erase them).
    ``answer`` (the validated answer as JSON, completed jobs) and ``raw`` (the text the
    provider returned, also for failed jobs: an answer that did not validate, a truncated
    one, a refusal; read in each folder's format, see :mod:`batchata_df.state`) come from
    the latest event, as does ``response`` (the provider's own
    result line, kept with ``batch_llm(keep_responses=True)``, else null).
    ``est_cost_usd`` is the latest known pre-submission estimate, or null when the
    checkpoint has none. ``first_seen_at`` / ``updated_at`` are the first and latest event
    times. ``mode`` is ``"batch"`` or ``"realtime"``: how the job was last sent (null if
    it never was), as the frame's ``_mode``. ``answered_by`` (latest event) names the model
    that answered when it was not ``model``: a provider routed the request to a successor
    (Gemini 2.5 Pro / Flash from 2026-12-01), and ``cost_usd`` is at its price.
``batch_events``
    Every batch event, all columns of :data:`~batchata_df.state.BATCH_EVENTS`, with ``run``.
``batches``
    One row per ``(run, batch_key)``: ``status`` of the latest event, the latest known
    ``provider``, ``model``, ``provider_batch_id``, ``provider_status``, ``n_jobs``,
    ``n_bytes`` and ``detail``; ``submitted_at`` (first ``submitted`` event),
    ``ended_at`` (first ``ended`` event), ``collected_at`` (first ``collected`` event),
    ``duration_s`` (submitted to collected, null while in flight) and ``updated_at``.
``runs``
    One row per folder: ``run``, ``path`` (absolute), ``run_id``, ``format_version``,
    ``created_at`` and ``fingerprint`` (JSON text) from its ``manifest.json``.

A folder that a streaming run finished has a summary of the ``jobs`` view
(``summary/jobs.parquet``, :mod:`batchata_df.summary`): its jobs are read from it, not
grouped from the events, while it is valid (it names the job parts it summarizes, and
they are the folder's parts now). Over ten million jobs a query of ``jobs`` takes a
fraction of a second instead of 26 s of CPU; the rows are the same.

Memory is bounded: the ``jobs`` view groups every event by job, and over a folder of
millions of jobs DuckDB's default (80 % of the machine's memory, nothing spilled) held 4.5
GB for a ten-million-job folder. A connection this module creates is limited to
:data:`MEMORY_LIMIT` and spills what does not fit to a private temporary folder (removed
when the connection closes), with ``preserve_insertion_order`` off (the views promise no
order; ``ORDER BY`` still sorts); a connection you pass in keeps your settings.

The part files are listed once, when the views are created, and the views read exactly
that list: parts that a running job writes afterwards are not seen, so every query over one
connection sees the same consistent snapshot (parts are written under a hidden temporary
name and renamed, and never rewritten). Call :func:`sql` again for a fresh snapshot.

Ready-made queries: :data:`COST_BY_STATUS`, :data:`ESTIMATED_VS_ACTUAL`,
:data:`FAILURES_BY_ERROR`, :data:`LOST_REQUESTS`, :data:`UNATTRIBUTED_SPEND`,
:data:`BATCH_DURATIONS` (SQL text, for :func:`sql` or the command line), and the
functions :func:`cost_by_status`, :func:`estimated_vs_actual`, :func:`failures_by_error`,
:func:`lost_requests`, :func:`unattributed_spend`, :func:`batch_durations`.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, TypeAlias

import polars as pl

from batchata_df.errors import ConfigError, StateError
from batchata_df.state import (
    BATCH_EVENTS,
    JOB_EVENTS,
    RAW_IS_ANSWER_SINCE,
    damaged_error,
    find_damaged,
    folder_version,
    is_state_folder,
    not_a_state_folder,
    read_unlocked,
    table_parts,
)
from batchata_df.summary import SUMMARY, valid_summary

if TYPE_CHECKING:
    import duckdb

__all__ = [
    "MEMORY_LIMIT",
    "BATCH_DURATIONS",
    "COST_BY_STATUS",
    "ESTIMATED_VS_ACTUAL",
    "FAILURES_BY_ERROR",
    "LOST_REQUESTS",
    "UNATTRIBUTED",
    "UNATTRIBUTED_SPEND",
    "StatePaths",
    "batch_durations",
    "connect",
    "cost_by_status",
    "estimated_vs_actual",
    "failures_by_error",
    "lost_requests",
    "sql",
    "unattributed_spend",
]

MEMORY_LIMIT = "1GB"
"""DuckDB's ``memory_limit`` on the connections :func:`connect` and :func:`sql` create:
beyond it, aggregates, joins and sorts spill to a temporary folder. Change it on the
connection (``SET memory_limit = '4GB'``) or pass your own ``connection=``."""

StatePaths: TypeAlias = "str | os.PathLike[str] | Sequence[str | os.PathLike[str]]"
"""One checkpoint folder, a glob pattern such as ``"runs/shard-*"``, or a list of them."""

UNATTRIBUTED = "unattributed"
"""The ``jobs`` view's ``status`` of a billed result line no row could be given (its id,
damaged on its way, matched none of its batch's requests; stored as a ``failed`` event
under ``job_id`` ``unmatched:<batch_key>:<n>``,
:data:`~batchata_df.engine.collection.UNMATCHED_PREFIX`): money not attributed to a row,
not a job, so never counted as a ``failed`` one."""

_UNMATCHED_IDS = "unmatched:"
""":data:`batchata_df.engine.collection.UNMATCHED_PREFIX` (not imported: the engine is not
needed to read a folder; tests/test_unmatched_results.py checks they agree)."""

COST_BY_STATUS = f"""
SELECT provider, model, status,
       count(*) AS n_jobs,
       sum(input_tokens)::BIGINT AS input_tokens,
       sum(output_tokens)::BIGINT AS output_tokens,
       sum(cost_usd) AS cost_usd
FROM jobs
WHERE status <> '{UNATTRIBUTED}'
GROUP BY ALL
ORDER BY provider, model, status
"""
"""Jobs, tokens and cost in USD by provider, model and current status.

Rows only: billed result lines not attributed to a row are :data:`UNATTRIBUTED_SPEND`'s
(their cost is in ``sum(cost_usd)`` over ``jobs``, not here).
"""

UNATTRIBUTED_SPEND = f"""
SELECT provider, model,
       count(*) AS n_lines,
       sum(input_tokens)::BIGINT AS input_tokens,
       sum(output_tokens)::BIGINT AS output_tokens,
       sum(cost_usd) AS cost_usd
FROM jobs
WHERE status = '{UNATTRIBUTED}'
GROUP BY ALL
ORDER BY provider, model
"""
"""Billed result lines not attributed to a row (:data:`UNATTRIBUTED`), by provider and
model: what the provider billed for answers whose id matched none of their batch's
requests. ``max_cost_usd`` counts them as spent; :data:`COST_BY_STATUS` does not list them
(they are no row's), so its cost plus this one is ``sum(cost_usd)`` over ``jobs``.
"""

ESTIMATED_VS_ACTUAL = """
SELECT provider, model,
       count(*) AS n_jobs,
       count(est_cost_usd) AS n_estimated,
       sum(est_cost_usd) AS est_cost_usd,
       sum(cost_usd) AS cost_usd,
       sum(cost_usd) / nullif(sum(est_cost_usd), 0) AS actual_over_estimate
FROM jobs
WHERE status = 'completed'
GROUP BY ALL
ORDER BY provider, model
"""
"""Completed jobs' estimated (worst-case) against actual cost, by provider and model.

``est_cost_usd`` and ``actual_over_estimate`` are null when the checkpoint holds no
estimates.
"""

FAILURES_BY_ERROR = """
SELECT split_part(error, ':', 1) AS error_class,
       count(*) AS n_jobs,
       any_value(error) AS example
FROM jobs
WHERE status = 'failed'
GROUP BY ALL
ORDER BY n_jobs DESC, error_class
"""
"""Failed jobs by error class (the part of ``error`` before the first ``:``)."""

LOST_REQUESTS = """
WITH attempts AS (
    SELECT run, job_id, batch_key,
           arg_max(status, seq) AS status,
           arg_max_null(error, seq) AS error,
           arg_max_null(est_cost_usd, seq) AS est_cost_usd,
           max(ts) AS lost_at
    FROM job_events
    WHERE mode = 'realtime'
    GROUP BY run, job_id, batch_key
)
SELECT a.run, a.job_id, a.batch_key, j.provider, j.model, a.est_cost_usd,
       j.status AS job_status, a.lost_at, a.error AS attempt_error
FROM attempts AS a JOIN jobs AS j USING (run, job_id)
WHERE a.status = 'assigned'
   OR (a.status = 'failed' AND (a.error LIKE 'lost:%' OR a.error LIKE 'server_error:%'))
ORDER BY a.run, a.lost_at, a.job_id
"""
"""Every realtime attempt the provider may have billed with no cost stored.

Lost in flight (``attempt_error`` "lost: ...", or null while still ``assigned``), or
answered 5xx (``attempt_error`` "server_error: ...": a gateway 502/504, or a 500, may
follow an answer the provider computed and billed; each attempt sent after one is its own
``batch_key``, ``<key>.<n>``).

One row per lost attempt (``run``, ``job_id``, ``batch_key``), also when the job was sent
again and answered since (``job_status`` is the job's status now): the provider may have
billed both attempts. ``est_cost_usd`` is the worst case recorded when it was sent (null
when that call had no cap). ``max_cost_usd`` counts each at that worst case as spent (or
at the one it computes from the call's rows), whatever became of the job: what a cap
counts as the folder's spend is ``sum(cost_usd)`` over ``jobs`` plus ``sum(est_cost_usd)``
here. An attempt whose job is still ``assigned`` is in flight, or was lost by a process
that died (the next call ends it ``failed`` "lost: ...").
"""

BATCH_DURATIONS = """
SELECT run, batch_key, provider_batch_id, provider, model, status, provider_status,
       n_jobs, submitted_at, collected_at, duration_s
FROM batches
ORDER BY submitted_at NULLS LAST, batch_key
"""
"""Every batch with its submission and collection times and duration in seconds."""


def _import_duckdb() -> ModuleType:
    try:
        import duckdb
    except ImportError as e:
        msg = (
            "querying checkpoints needs DuckDB, which is not installed; "
            "install it with: pip install 'batchata-df[duckdb]'"
        )
        raise ModuleNotFoundError(msg) from e
    return duckdb


def _folders(state: StatePaths) -> list[tuple[str, Path]]:
    """Resolve ``state`` to ``(label, folder)`` pairs; labels are the paths as given.

    A folder given that is not a checkpoint folder (no ``manifest.json``, ``jobs/`` or
    ``batches/``) is a :class:`StateError` listing those below it; a glob pattern keeps the
    checkpoint folders it matches.
    """
    items = [state] if isinstance(state, str | os.PathLike) else list(state)
    if not items:
        msg = "no checkpoint folder given; pass a folder path, a glob pattern or a list"
        raise StateError(msg)
    out: list[tuple[str, Path]] = []
    for item in items:
        text = os.fspath(item)
        if Path(text).is_dir():
            problem = not_a_state_folder(text, command=None)
            if problem is not None:  # read as no rows, it would look like a run of none
                raise problem
            out.append((text, Path(text)))
            continue
        if Path(text).exists():  # a file (a run's OUTPUT): named, with the folder beside it
            problem = not_a_state_folder(text, command=None)
            if problem is not None:
                raise problem
        matches = sorted(m for m in glob.glob(text) if is_state_folder(m))
        if not matches:
            beside = text + ".state"  # OUTPUT named before the run wrote it
            fix = (
                f"did you mean the state folder {beside!r}?" if is_state_folder(beside)
                else "pass the `state=` folder of a batch_llm run"
            )
            msg = (
                f"checkpoint folder {text!r} does not exist (nor matches any checkpoint "
                f"folder as a glob pattern); {fix}"
            )
            raise StateError(msg)
        out.extend((m, Path(m)) for m in matches)
    seen: set[str] = set()
    unique = []
    for label, folder in out:
        if label not in seen:
            seen.add(label)
            unique.append((label, folder))
    return unique


def _parts(folder: Path, table: str) -> list[str]:
    """The finished parts of one table; hidden ``.tmp-*`` files are still being written."""
    return [os.path.abspath(p) for p in table_parts(folder / table)]


_DUCK_TYPES: dict[type[pl.DataType], str] = {
    pl.Int64: "BIGINT",
    pl.Float64: "DOUBLE",
    pl.String: "VARCHAR",
    pl.Boolean: "BOOLEAN",
    pl.Date: "DATE",
}


def _duck_type(dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.Datetime):
        return "TIMESTAMPTZ" if dtype.time_zone else "TIMESTAMP"
    name = _DUCK_TYPES.get(type(dtype))
    if name is None:  # pragma: no cover - only reachable if the state schema changes
        msg = f"no DuckDB type for checkpoint column dtype {dtype!r}"
        raise TypeError(msg)
    return name


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _literal(path: str) -> str:
    r"""``path`` as DuckDB's ``read_parquet`` reads it literally.

    Glob characters are escaped (``glob.escape``), except in a POSIX path holding a
    backslash: DuckDB 2.0's glob matches nothing through one (escaped or not) and then
    reads the path as a literal name, which is what is wanted.

    Examples
    --------
    >>> _literal("runs[1]/jobs/part-1.parquet")
    'runs[[]1]/jobs/part-1.parquet'
    >>> print(_literal("a\\b[1]/p.parquet"))
    a\b[1]/p.parquet
    """
    if os.sep == "/" and "\\" in path:
        return path
    return glob.escape(path)


_READ_RAW = (
    "REPLACE (CASE WHEN f.raw_is_answer AND p.status = 'completed' "
    "THEN coalesce(p.raw, p.answer) ELSE p.raw END AS raw)"
)
"""``raw`` of a job event as :func:`batchata_df.state.read_raw` reads it, per folder: a
``completed`` event of a folder of format 2 or later stores its ``raw`` null when it is
the ``answer``; one of a version 1 folder is read as written."""


def _events_view(
    name: str, schema: pl.Schema, files: list[tuple[str, str]], *, read_raw: bool = False
) -> str:
    """SQL creating a view of every event: the typed empty schema, then the parts.

    The empty typed row set fixes the columns and types whatever the parts hold (none, or
    parts from a version without some column), and UNION ALL BY NAME keeps any extra column
    that newer parts carry. With ``read_raw`` (job events, some of a folder of format 2),
    ``raw`` is read per folder (:data:`_READ_RAW`).
    """
    typed = ", ".join(
        f"CAST(NULL AS {_duck_type(dtype)}) AS {name_}" for name_, dtype in schema.items()
    )
    empty = f"SELECT CAST(NULL AS VARCHAR) AS run, {typed} WHERE false"
    if not files:
        return f"CREATE VIEW {name} AS {empty}"
    # DuckDB expands ``*``, ``?`` and ``[`` in every path it is given, so ``runs[1]`` read a
    # folder ``runs1`` beside it and ``x?`` also read ``xy``: each part's name goes in
    # escaped (``[[]``, ``[*]``, ``[?]`` match the character itself); the ``filename``
    # DuckDB reports is the file's real name, as ``_parts`` holds it.
    listing = ", ".join(_quote(_literal(path)) for _, path in files)
    replace = f" {_READ_RAW}" if read_raw else ""
    data = (
        f"SELECT f.run, p.* EXCLUDE (filename){replace} FROM read_parquet([{listing}], "
        "union_by_name = true, filename = true) AS p JOIN _parts AS f USING (filename)"
    )
    return f"CREATE VIEW {name} AS {empty} UNION ALL BY NAME {data}"


_JOBS_COLUMNS = (
    "run, job_id, status, error, provider, model, batch_key, provider_batch_id, answer, raw, "
    "response, input_tokens, output_tokens, cached_tokens, cache_write_tokens, "
    "reasoning_tokens, cost_usd, cache_saved_usd, attempts, est_cost_usd, first_seen_at, "
    "updated_at, mode, answered_by"
)

_JOBS_VIEW = """
CREATE VIEW _jobs_grouped AS
WITH attempts AS (
    -- One row per billed attempt (job, provider batch); re-collecting a batch after a
    -- crash repeats its events, which count once.
    SELECT run, job_id, coalesce(batch_key, '') AS attempt,
           arg_max_null(input_tokens, seq) AS input_tokens,
           arg_max_null(output_tokens, seq) AS output_tokens,
           arg_max_null(cached_tokens, seq) AS cached_tokens,
           arg_max_null(cache_write_tokens, seq) AS cache_write_tokens,
           arg_max_null(reasoning_tokens, seq) AS reasoning_tokens,
           arg_max_null(cost_usd, seq) AS cost_usd,
           arg_max_null(cache_saved_usd, seq) AS cache_saved_usd
    FROM _grouped_events
    WHERE status IN ('completed', 'failed', 'cancelled')
      AND (batch_key IS NOT NULL OR cost_usd IS NOT NULL OR input_tokens IS NOT NULL)
    GROUP BY run, job_id, attempt
), billed AS (
    SELECT run, job_id,
           count(*) AS attempts,
           sum(input_tokens)::BIGINT AS input_tokens,
           sum(output_tokens)::BIGINT AS output_tokens,
           sum(cached_tokens)::BIGINT AS cached_tokens,
           sum(cache_write_tokens)::BIGINT AS cache_write_tokens,
           sum(reasoning_tokens)::BIGINT AS reasoning_tokens,
           sum(cost_usd) AS cost_usd,
           sum(cache_saved_usd) AS cache_saved_usd
    FROM attempts
    GROUP BY run, job_id
), latest AS (
    SELECT run, job_id,
           arg_max(status, seq) AS status,
           arg_max_null(error, seq) AS error,
           arg_max(provider, seq) AS provider,
           arg_max(model, seq) AS model,
           arg_max(batch_key, seq) AS batch_key,
           arg_max(provider_batch_id, seq) AS provider_batch_id,
           arg_max_null(answer, seq) AS answer,
           arg_max_null(raw, seq) AS raw,
           arg_max_null(response, seq) AS response,
           arg_max_null(answered_by, seq) AS answered_by,
           {est} AS est_cost_usd,
           min(ts) AS first_seen_at,
           max(ts) AS updated_at,
           -- How the job was last sent: realtime events say so; batch events carry a key.
           arg_max(coalesce(mode, CASE WHEN batch_key IS NOT NULL THEN 'batch' END), seq)
               AS mode
    FROM _grouped_events
    GROUP BY run, job_id
)
SELECT latest.run, latest.job_id, status, error, provider, model, batch_key,
       provider_batch_id, answer, raw, response,
       billed.input_tokens, billed.output_tokens, billed.cached_tokens,
       billed.cache_write_tokens, billed.reasoning_tokens, billed.cost_usd,
       billed.cache_saved_usd, coalesce(billed.attempts, 0) AS attempts,
       est_cost_usd, first_seen_at, updated_at, mode, answered_by
FROM latest LEFT JOIN billed USING (run, job_id)
"""

_BATCHES_VIEW = """
CREATE VIEW batches AS
SELECT *, epoch(collected_at) - epoch(submitted_at) AS duration_s
FROM (
    SELECT run, batch_key,
           arg_max(status, seq) AS status,
           arg_max(provider, seq) AS provider,
           arg_max(model, seq) AS model,
           arg_max(provider_batch_id, seq) AS provider_batch_id,
           arg_max(provider_status, seq) AS provider_status,
           arg_max(n_jobs, seq) AS n_jobs,
           arg_max(n_bytes, seq) AS n_bytes,
           arg_max(detail, seq) AS detail,
           min(ts) FILTER (WHERE status = 'submitted') AS submitted_at,
           min(ts) FILTER (WHERE status = 'ended') AS ended_at,
           min(ts) FILTER (WHERE status = 'collected') AS collected_at,
           max(ts) AS updated_at
    FROM batch_events
    GROUP BY run, batch_key
)
"""


def connect(
    state: StatePaths, *, connection: duckdb.DuckDBPyConnection | None = None
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the checkpoint views over a snapshot of ``state``.

    Parameters
    ----------
    state
        A checkpoint folder, a glob pattern matching several (``"runs/shard-*"``), or a
        list of folders and patterns.
    connection
        Define the views on this connection instead of a new in-memory one. Its session
        time zone is set to UTC.

    Returns
    -------
    duckdb.DuckDBPyConnection
        With the views ``jobs``, ``job_events``, ``batches``, ``batch_events`` and ``runs``
        described in :mod:`batchata_df.query`.

    Raises
    ------
    ModuleNotFoundError
        DuckDB is not installed (``pip install 'batchata-df[duckdb]'``).
    StateError
        A folder does not exist, or is not a checkpoint folder.

    Examples
    --------
    >>> import tempfile
    >>> import polars as pl
    >>> from batchata_df.state import StateStore
    >>> folder = tempfile.mkdtemp()
    >>> store = StateStore(folder, {"model": "gpt-5.4-mini"})
    >>> store.append_jobs(pl.DataFrame({"job_id": ["a", "b"], "status": "assigned"}))
    >>> con = connect(folder)
    >>> store.append_jobs(pl.DataFrame({"job_id": ["c"], "status": "assigned"}))
    >>> con.execute("SELECT count(*) FROM jobs").fetchall()  # the snapshot ignores job "c"
    [(2,)]
    """
    module = _import_duckdb()
    folders = _folders(state)
    if connection is not None:
        con: duckdb.DuckDBPyConnection = connection
    else:
        con = module.connect(":memory:", config=_bounded_config())
    con.execute("SET TimeZone = 'UTC'")

    job_files = [(label, p) for label, folder in folders for p in _parts(folder, "jobs")]
    batch_files = [(label, p) for label, folder in folders for p in _parts(folder, "batches")]
    # Folders whose summary is valid: their jobs are read from it, not grouped from events.
    summaries = {label: os.path.abspath(path) for label, folder in folders
                 if (path := valid_summary(folder)) is not None}  # fmt: skip
    grouped_files = [(label, p) for label, p in job_files if label not in summaries]
    for _, folder in folders:
        damaged = find_damaged(folder)  # footers only: a clear error instead of DuckDB's
        if damaged:
            raise damaged_error(folder, damaged)
    # Each folder's parts are read in its own format (a folder is never upgraded).
    raw_is_answer = {
        label for label, folder in folders if folder_version(folder) >= RAW_IS_ANSWER_SINCE
    }
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _parts (filename VARCHAR, run VARCHAR, "
        "raw_is_answer BOOLEAN)"
    )
    summary_files = list(summaries.items())
    rows = [
        (path, label, label in raw_is_answer)
        for label, path in job_files + batch_files + summary_files
    ]
    if rows:
        con.executemany("INSERT INTO _parts VALUES (?, ?, ?)", rows)
    views = ("jobs", "batches", "job_events", "batch_events", "runs", "_jobs_grouped",
             "_grouped_events", "_jobs_summary")  # fmt: skip
    for view in views:
        con.execute(f"DROP VIEW IF EXISTS {view}")
    # (A folder of format 2 has ``raw`` in every job part: REPLACE finds the column.)
    con.execute(_events_view("job_events", JOB_EVENTS, job_files,
                             read_raw=any(label in raw_is_answer for label, _ in job_files)))
    con.execute(_events_view("_grouped_events", JOB_EVENTS, grouped_files,
                             read_raw=any(label in raw_is_answer for label, _ in grouped_files)))
    con.execute(_events_view("batch_events", BATCH_EVENTS, batch_files))
    con.execute(_events_view("_jobs_summary", SUMMARY, summary_files))
    has_est = any(row[0] == "est_cost_usd" for row in con.execute("DESCRIBE job_events").fetchall())
    est = "arg_max(est_cost_usd, seq)" if has_est else "CAST(NULL AS DOUBLE)"
    con.execute(_JOBS_VIEW.format(est=est))
    # A billed line no row could be given is no job: its own status (UNATTRIBUTED), so
    # that counts of jobs by status count rows; its cost stays in the view (the bill).
    columns = _JOBS_COLUMNS.replace(
        " status,",
        f" CASE WHEN starts_with(job_id, '{_UNMATCHED_IDS}') THEN '{UNATTRIBUTED}' "
        "ELSE status END AS status,",
        1,
    )
    con.execute(
        f"CREATE VIEW jobs AS SELECT {columns} FROM _jobs_grouped "
        f"UNION ALL SELECT {columns} FROM _jobs_summary"
    )
    con.execute(_BATCHES_VIEW)
    _runs_view(con, folders)
    return con


def _bounded_config() -> dict[str, str]:
    """DuckDB settings for a connection we create: bounded memory, spilling to a temp folder.

    The folder is new and private to the connection; DuckDB deletes the files it spills
    when the connection closes, and the folder itself when it created it (it does here: the
    path does not exist yet).
    """
    import tempfile

    spill = Path(tempfile.gettempdir()) / f"batchata-df-duckdb-{os.getpid()}-{os.urandom(4).hex()}"
    return {
        "memory_limit": MEMORY_LIMIT,
        "temp_directory": str(spill),
        "preserve_insertion_order": "false",
    }


def _runs_view(con: duckdb.DuckDBPyConnection, folders: list[tuple[str, Path]]) -> None:
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _runs (run VARCHAR, path VARCHAR, run_id VARCHAR, "
        "format_version BIGINT, created_at TIMESTAMPTZ, fingerprint VARCHAR)"
    )
    rows = []
    for label, folder in folders:
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
        except (OSError, ValueError):
            manifest = {}
        created = manifest.get("created_at")
        rows.append(
            (
                label,
                str(folder.resolve()),
                manifest.get("run_id"),
                manifest.get("format_version"),
                float(created) if created is not None else None,
                json.dumps(manifest.get("fingerprint"), sort_keys=True) if manifest else None,
            )
        )
    con.executemany("INSERT INTO _runs VALUES (?, ?, ?, ?, to_timestamp(?), ?)", rows)
    con.execute("CREATE VIEW runs AS SELECT * FROM _runs")


def sql(query: str, state: StatePaths) -> pl.DataFrame:
    """Run a DuckDB SQL query over checkpoint folders and return a Polars frame.

    Parameters
    ----------
    query
        SQL over the views ``jobs``, ``job_events``, ``batches``, ``batch_events`` and
        ``runs`` (see :mod:`batchata_df.query` for their columns).
    state
        A checkpoint folder, a glob pattern matching several (``"runs/shard-*"``), or a
        list of folders and patterns; each row says which folder in its ``run`` column.

    Returns
    -------
    polars.DataFrame
        The query's result, over a consistent snapshot of the parts present when called.

    Raises
    ------
    ModuleNotFoundError
        DuckDB is not installed (``pip install 'batchata-df[duckdb]'``).
    StateError
        A folder does not exist, or is not a checkpoint folder (the message lists those
        below it, e.g. of a results folder holding several).
    ConfigError
        The query has no statement that gives a result (blank, or only ``;`` and comments).

    Examples
    --------
    >>> import tempfile
    >>> import polars as pl
    >>> from batchata_df.state import StateStore
    >>> folder = tempfile.mkdtemp()
    >>> store = StateStore(folder, {"model": "gpt-5.4-mini"})
    >>> store.append_jobs(pl.DataFrame({"job_id": ["a", "b"], "status": "assigned",
    ...                                 "provider": "openai", "model": "gpt-5.4-mini"}))
    >>> store.append_jobs(pl.DataFrame({"job_id": ["a", "b"], "status": ["completed", "failed"],
    ...                                 "error": [None, "refusal: declined"],
    ...                                 "cost_usd": [0.002, 0.0]}))
    >>> sql("SELECT job_id, status, error, model, cost_usd FROM jobs ORDER BY job_id", folder)
    shape: (2, 5)
    ┌────────┬───────────┬───────────────────┬──────────────┬──────────┐
    │ job_id ┆ status    ┆ error             ┆ model        ┆ cost_usd │
    │ ---    ┆ ---       ┆ ---               ┆ ---          ┆ ---      │
    │ str    ┆ str       ┆ str               ┆ str          ┆ f64      │
    ╞════════╪═══════════╪═══════════════════╪══════════════╪══════════╡
    │ a      ┆ completed ┆ null              ┆ gpt-5.4-mini ┆ 0.002    │
    │ b      ┆ failed    ┆ refusal: declined ┆ gpt-5.4-mini ┆ 0.0      │
    └────────┴───────────┴───────────────────┴──────────────┴──────────┘
    """
    if not isinstance(query, str) or not query.strip():
        raise _no_result(query)
    folders = [folder for _, folder in _folders(state)]

    def read() -> pl.DataFrame | None:
        con = connect(state)
        try:
            # None: no statement gave a result (only ";" or comments).
            relation = con.sql(query)
            if relation is None:
                return None
            frame: pl.DataFrame = relation.pl()
            return frame
        finally:
            con.close()

    # Beside a run that compacts the folder (a streamed run's end): read it again.
    frame = read_unlocked(folders, read, errors=(_import_duckdb().Error,))
    if frame is None:
        raise _no_result(query)
    return frame


def _no_result(query: object) -> ConfigError:
    """The error for a query without a statement that gives rows (blank, ``;``, comments)."""
    shown = repr(query) if len(repr(query)) <= 80 else repr(query)[:77] + "..."
    msg = (
        f"sql: the query {shown} has no statement that gives a result (it is blank, or only "
        "';' and comments): write a SELECT over the views jobs, job_events, batches, "
        "batch_events and runs, e.g. 'SELECT * FROM jobs LIMIT 10'"
    )
    return ConfigError(msg)


def cost_by_status(state: StatePaths) -> pl.DataFrame:
    """Jobs, tokens and cost by provider, model and status (:data:`COST_BY_STATUS`).

    Examples
    --------
    >>> import tempfile
    >>> import polars as pl
    >>> from batchata_df.state import StateStore
    >>> folder = tempfile.mkdtemp()
    >>> store = StateStore(folder, {})
    >>> store.append_jobs(pl.DataFrame({"job_id": ["a", "b", "c"], "provider": "openai",
    ...     "model": "gpt-5.4-mini", "status": ["completed", "completed", "failed"],
    ...     "input_tokens": [100, 120, None], "output_tokens": [10, 12, None],
    ...     "cost_usd": [0.001, 0.002, None]}))
    >>> cost_by_status(folder).select("status", "n_jobs", "input_tokens", "cost_usd")
    shape: (2, 4)
    ┌───────────┬────────┬──────────────┬──────────┐
    │ status    ┆ n_jobs ┆ input_tokens ┆ cost_usd │
    │ ---       ┆ ---    ┆ ---          ┆ ---      │
    │ str       ┆ i64    ┆ i64          ┆ f64      │
    ╞═══════════╪════════╪══════════════╪══════════╡
    │ completed ┆ 2      ┆ 220          ┆ 0.003    │
    │ failed    ┆ 1      ┆ null         ┆ null     │
    └───────────┴────────┴──────────────┴──────────┘
    """
    return sql(COST_BY_STATUS, state)


def estimated_vs_actual(state: StatePaths) -> pl.DataFrame:
    """Estimated against actual cost of completed jobs (:data:`ESTIMATED_VS_ACTUAL`).

    Examples
    --------
    >>> import tempfile
    >>> import polars as pl
    >>> from batchata_df.state import StateStore
    >>> folder = tempfile.mkdtemp()
    >>> store = StateStore(folder, {})
    >>> store.append_jobs(pl.DataFrame({"job_id": ["a"], "provider": "openai",
    ...     "model": "gpt-5.4-mini", "status": "completed", "cost_usd": [0.001]}))
    >>> estimated_vs_actual(folder).select("n_jobs", "est_cost_usd", "cost_usd").row(0)
    (1, None, 0.001)
    """
    return sql(ESTIMATED_VS_ACTUAL, state)


def failures_by_error(state: StatePaths) -> pl.DataFrame:
    """Failed jobs by error class (:data:`FAILURES_BY_ERROR`).

    Examples
    --------
    >>> import tempfile
    >>> import polars as pl
    >>> from batchata_df.state import StateStore
    >>> folder = tempfile.mkdtemp()
    >>> store = StateStore(folder, {})
    >>> store.append_jobs(pl.DataFrame({"job_id": ["a", "b", "c"], "status": "failed",
    ...     "error": ["expired: not done in 24h", "expired: not done in 24h", "refusal: no"]}))
    >>> failures_by_error(folder).select("error_class", "n_jobs").rows()
    [('expired', 2), ('refusal', 1)]
    """
    return sql(FAILURES_BY_ERROR, state)


def lost_requests(state: StatePaths) -> pl.DataFrame:
    """Every realtime request lost in flight, retried since or not (:data:`LOST_REQUESTS`).

    Examples
    --------
    >>> import tempfile
    >>> import polars as pl
    >>> from batchata_df.state import StateStore
    >>> folder = tempfile.mkdtemp()
    >>> store = StateStore(folder, {})
    >>> store.append_jobs(pl.DataFrame({"job_id": ["a", "a", "a"], "batch_key": ["r1", "r1", "r2"],
    ...     "status": ["assigned", "failed", "completed"], "mode": "realtime",
    ...     "error": [None, "lost: in flight", None], "est_cost_usd": [0.03, 0.03, None],
    ...     "cost_usd": [None, None, 0.02]}))
    >>> lost_requests(folder).select("job_id", "batch_key", "est_cost_usd", "job_status").row(0)
    ('a', 'r1', 0.03, 'completed')
    """
    return sql(LOST_REQUESTS, state)


def unattributed_spend(state: StatePaths) -> pl.DataFrame:
    """Billed result lines not attributed to a row (:data:`UNATTRIBUTED_SPEND`).

    Examples
    --------
    >>> import tempfile
    >>> import polars as pl
    >>> from batchata_df.state import StateStore
    >>> folder = tempfile.mkdtemp()
    >>> store = StateStore(folder, {})
    >>> store.append_jobs(pl.DataFrame({"job_id": ["a", "unmatched:k:0"], "provider": "openai",
    ...     "model": "gpt-5.4-mini", "status": ["completed", "failed"], "batch_key": "k",
    ...     "input_tokens": [100, 90], "cost_usd": [0.002, 0.0018]}))
    >>> unattributed_spend(folder).select("n_lines", "input_tokens", "cost_usd").row(0)
    (1, 90, 0.0018)
    >>> cost_by_status(folder).select("status", "n_jobs", "cost_usd").rows()
    [('completed', 1, 0.002)]
    """
    return sql(UNATTRIBUTED_SPEND, state)


def batch_durations(state: StatePaths) -> pl.DataFrame:
    """Every batch with its submission and collection times (:data:`BATCH_DURATIONS`).

    Examples
    --------
    >>> import tempfile
    >>> from batchata_df.state import StateStore
    >>> folder = tempfile.mkdtemp()
    >>> store = StateStore(folder, {})
    >>> store.append_batch(batch_key="k1", status="intent", n_jobs=2)
    >>> store.append_batch(batch_key="k1", status="submitted", provider_batch_id="batch_1")
    >>> store.append_batch(batch_key="k1", status="collected", provider_status="completed")
    >>> out = batch_durations(folder)
    >>> out.select("batch_key", "provider_batch_id", "status", "n_jobs").row(0)
    ('k1', 'batch_1', 'collected', 2)
    >>> out.item(0, "duration_s") >= 0
    True
    """
    return sql(BATCH_DURATIONS, state)
