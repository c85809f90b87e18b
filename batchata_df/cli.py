r"""Command line: ``batchata-df run | status | sql | doctor | repair | emulator | demo``.

Examples
--------
::

    batchata-df run reviews.parquet out.parquet --model gpt-4.1-mini \
        --prompt "Classify: {text}" --schema mypkg.models:Review --state runs/reviews \
        --max-cost-usd 5
    batchata-df status runs/reviews
    batchata-df repair runs/reviews          # shows what it would do; --apply does it
    batchata-df sql "select status, count(*) from jobs group by all" runs/reviews
    batchata-df emulator --port 8765
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import polars as pl
from pydantic import BaseModel

from batchata_df.errors import BatchataError, ConfigError

__all__ = ["main"]


def _load_schema(spec: str | None) -> type[BaseModel] | None:
    if spec is None:
        return None
    module_name, _, attr = spec.partition(":")
    if not attr:
        msg = f"--schema must look like 'package.module:ClassName', got {spec!r}"
        raise ConfigError(msg)
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        msg = f"cannot load --schema {spec!r}: {e}"
        raise ConfigError(msg) from e
    if not (isinstance(obj, type) and issubclass(obj, BaseModel)):
        msg = f"--schema {spec!r} is not a pydantic BaseModel subclass"
        raise ConfigError(msg)
    return obj


def _read(path: str) -> pl.DataFrame:
    if path.endswith(".csv"):
        return pl.read_csv(path)
    if path.endswith((".jsonl", ".ndjson")):
        return pl.read_ndjson(path)
    return pl.read_parquet(path)


def _cmd_run(args: argparse.Namespace) -> int:
    from batchata_df.frame import batch_llm

    frame = _read(args.input)
    out = batch_llm(
        frame,
        schema=_load_schema(args.schema),
        model=args.model,
        prompt=args.prompt,
        system=args.system,
        state=args.state,
        max_cost_usd=args.max_cost_usd,
        time_limit=args.time_limit,
        dry_run=args.dry_run,
        items_per_batch=args.items_per_batch,
        max_parallel_batches=args.max_parallel_batches,
        wait=not args.no_wait,
        progress=not args.quiet,
        retry_failed=args.retry_failed,
    )
    if args.output:
        out.write_parquet(args.output)
    counts = out.get_column("_status").value_counts().sort("_status")
    print(counts)
    return 0


def _print(frame: pl.DataFrame) -> None:
    with pl.Config(tbl_rows=100, tbl_cols=30, fmt_str_lengths=60, tbl_width_chars=200):
        print(frame)


def _cmd_status(args: argparse.Namespace) -> int:
    from batchata_df.query import batch_durations, cost_by_status

    _print(cost_by_status(args.state))
    _print(batch_durations(args.state))
    return 0


def _cmd_sql(args: argparse.Namespace) -> int:
    from batchata_df.query import sql

    _print(sql(args.query, args.state))
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from batchata_df.repair import doctor, repair

    report = repair(args.state, apply=args.apply) if args.command == "repair" else doctor(
        args.state
    )
    print(report)
    return 0 if report.healthy or report.applied else 1


def _cmd_emulator(args: argparse.Namespace) -> int:
    from batchata_df.emulator.__main__ import main as emulator_main

    argv = ["--port", str(args.port), "--latency", str(args.latency)]
    result = emulator_main(argv)
    return int(result or 0)


def _cmd_demo(args: argparse.Namespace) -> int:
    from batchata_df.demo import main as demo_main

    demo_main([])
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="batchata-df", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a Parquet/CSV/JSONL file through batch_llm")
    run.add_argument("input")
    run.add_argument("output", nargs="?", help="Parquet file for the result frame")
    run.add_argument("--model", required=True)
    run.add_argument("--prompt", required=True, help="template over columns, e.g. '{text}'")
    run.add_argument("--schema", help="pydantic model as 'package.module:Class'")
    run.add_argument("--system")
    run.add_argument("--state", required=True, help="checkpoint folder")
    run.add_argument("--max-cost-usd", type=float)
    run.add_argument("--time-limit", type=float, help="seconds")
    run.add_argument("--dry-run", action="store_true")
    run.add_argument("--items-per-batch", type=int)
    run.add_argument("--max-parallel-batches", type=int, default=8)
    run.add_argument("--no-wait", action="store_true", help="submit and return")
    run.add_argument("--retry-failed", action="store_true")
    run.add_argument("--quiet", action="store_true", help="no progress display")
    run.set_defaults(func=_cmd_run)

    status = sub.add_parser("status", help="cost by status and batch durations")
    status.add_argument("state", nargs="+", help="checkpoint folder(s) or globs")
    status.set_defaults(func=_cmd_status)

    sql = sub.add_parser("sql", help="DuckDB SQL over views jobs, batches, job_events, ...")
    sql.add_argument("query")
    sql.add_argument("state", nargs="+")
    sql.set_defaults(func=_cmd_sql)

    for name, text in (
        ("doctor", "say what is wrong with a checkpoint folder (offline; exit 1 if damaged)"),
        ("repair", "show how a damaged checkpoint folder is repaired; --apply does it"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("state", help="checkpoint folder")
        if name == "repair":
            cmd.add_argument("--apply", action="store_true", help="do it (else only show it)")
        cmd.set_defaults(func=_cmd_doctor, apply=False)

    emu = sub.add_parser("emulator", help="serve the provider emulator on 127.0.0.1")
    emu.add_argument("--port", type=int, default=8765)
    emu.add_argument("--latency", type=float, default=0.0)
    emu.set_defaults(func=_cmd_emulator)

    demo = sub.add_parser("demo", help="the demo on the emulator")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``batchata-df`` command."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BatchataError as e:
        print(f"batchata-df: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
