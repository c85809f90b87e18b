"""CPU of ``jobs.job_ids`` alone, per scheme (ninth pass of ``PROFILE.md``).

The stage timer of ``profile_stages.py`` is exclusive: the ``Series.to_list`` of the
BLAKE2b path's keys is counted under ``Series.to_list``, not under "job ids". This times
the whole call (user + system CPU of the process, Polars' threads included) on the
rows of ``bench_overhead.py`` (OpenAI's model, ``prompt="{text}"``), best of ``--repeat``:

    python benchmarks/bench_job_ids.py --rows 1000000

Schemes: ``blake2b`` (folders written before schemes were recorded), ``hmac-sha256``
(compiled, polars-hash; the NUL-joined key), ``hmac-sha256-v2`` (new folders: the same
hash of the injective key, whose scan for NUL / ``\x01`` is the difference),
``hmac-sha256 (hmac)`` (the Python fallback). Take the benchmark mutex on a shared
machine.
"""

from __future__ import annotations

import argparse
import resource
from collections.abc import Callable
from unittest import mock

import polars as pl

from batchata_df import jobs


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _best(run: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = _cpu()
        run()
        best = min(best, _cpu() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n = args.rows
    frame = pl.select(
        pl.concat_str([pl.lit("Review "), pl.int_range(n).cast(pl.String),
                       pl.lit(": " + "the product arrived on time and works well, " * 3)])
        .alias("text")
    )
    salt = "0123456789abcdef" * 4  # as long as the real one (a SHA-256 in hex)
    built = jobs.build_jobs(frame, model="gpt-4.1-mini", prompt="{text}", system=None,
                            salt=salt, scheme="hmac-sha256").drop("job_id")
    runs: dict[str, Callable[[], object]] = {
        "blake2b": lambda: jobs.job_ids(built, salt, scheme="blake2b"),
        "hmac-sha256": lambda: jobs.job_ids(built, salt, scheme="hmac-sha256"),
        "hmac-sha256-v2": lambda: jobs.job_ids(built, salt, scheme="hmac-sha256-v2"),
    }

    def fallback() -> object:
        with mock.patch.object(jobs, "_compiled_hmac_agrees", return_value=False):
            return jobs.job_ids(built, salt, scheme="hmac-sha256")

    runs["hmac-sha256 (hmac)"] = fallback
    for name, run in runs.items():
        seconds = _best(run, args.repeat)
        print(f"{name:20} {n:>10,} rows: {seconds:6.3f} s CPU, {seconds / n * 1e9:6.0f} ns a row")


if __name__ == "__main__":
    main()
