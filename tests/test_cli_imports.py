"""The installed ``batchata-df`` command imports only what the command it runs needs.

Every command imports the package first, so ``import batchata_df`` and the CLI module load
no provider SDK, emulator, engine or DuckDB; each command imports its own (``run`` the
engine, ``sql`` and ``status`` DuckDB, a provider's client its SDK when it sends;
``doctor`` and ``repair`` of a folder that needs no lookup at a provider import neither the
engine nor an SDK, and ``status`` not pydantic, which only answer schemas need). The
children run the console script pip installed under ``python -X importtime``, which lists
every module imported; the assertions are on those modules, never on the times.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import batchata_df
from batchata_df import batch_llm

EXE = Path(sys.executable).with_name("batchata-df")

SDKS = ("openai", "anthropic", "google", "httpx", "genai_prices", "bpe_openai")
"""The providers' SDKs (and their HTTP client), the price data and the tokenizer."""

LIBRARY = (
    "batchata_df.emulator",
    "batchata_df.engine",
    "batchata_df.frame",
    "batchata_df.providers",
)
"""batchata-df's own heavy parts: what ``run`` needs and ``--help`` or ``status`` do not."""


def imported(*args: str, cwd: Path, code: int = 0) -> set[str]:
    """Modules the installed command imports to run ``batchata-df ARGS`` (exit ``code``)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(EXE), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == code, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    modules = {line.rpartition("|")[2].strip() for line in lines[1:]}  # [0]: the header
    assert "batchata_df.cli" in modules
    return modules


def under(modules: set[str], roots: tuple[str, ...]) -> list[str]:
    """The modules that are one of ``roots`` or inside one of them."""
    return sorted(m for m in modules if any(m == r or m.startswith(r + ".") for r in roots))


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["run", "--help"]])
def test_help_and_version_import_no_sdk_engine_duckdb_or_pydantic(
    args: list[str], tmp_path: Path
) -> None:
    modules = imported(*args, cwd=tmp_path)
    assert under(modules, (*SDKS, *LIBRARY, "duckdb", "pyarrow", "pydantic")) == []


def test_status_and_sql_of_a_folder_import_no_sdk_and_no_engine(emu, tmp_path: Path) -> None:
    pl.DataFrame({"text": ["a", "b"]}).pipe(
        batch_llm, model="gpt-4.1-mini", prompt="Say: {text}", state=tmp_path / "st"
    )
    status = imported("status", "st", cwd=tmp_path)
    assert under(status, (*SDKS, *LIBRARY, "pydantic", "pydantic_core")) == []
    assert "duckdb" in status  # status is DuckDB queries over the folder
    sql = imported("sql", "select count(*) from jobs", "st", cwd=tmp_path)
    assert under(sql, (*SDKS, *LIBRARY, "pydantic", "pydantic_core")) == []


def test_doctor_and_repair_of_a_folder_import_no_sdk_and_no_engine(emu, tmp_path: Path) -> None:
    """Offline checks, and a repair that has nothing to ask a provider, load neither."""
    pl.DataFrame({"text": ["a", "b"]}).pipe(
        batch_llm, model="gpt-4.1-mini", prompt="Say: {text}", state=tmp_path / "st"
    )
    for args in (["doctor", "st"], ["repair", "st"], ["repair", "st", "--apply"]):
        modules = imported(*args, cwd=tmp_path)
        assert "batchata_df.repair" in modules, args
        assert under(modules, (*SDKS, *LIBRARY, "duckdb", "pydantic")) == [], args
    (part,) = sorted((tmp_path / "st" / "batches").glob("*.parquet"))[-1:]
    part.write_bytes(part.read_bytes()[:20])  # truncated: doctor says so, offline
    modules = imported("doctor", "st", cwd=tmp_path, code=1)
    assert under(modules, (*SDKS, *LIBRARY, "duckdb", "pydantic")) == []


def test_importing_the_package_imports_none_of_its_heavy_parts() -> None:
    code = "import sys, batchata_df, batchata_df.cli; print('\\n'.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    modules = set(done.stdout.split())
    assert under(modules, (*SDKS, *LIBRARY, "duckdb", "pyarrow", "pydantic")) == []
    assert "polars" in modules  # df.llm and lf.llm are registered by the import


def test_every_public_name_imports_from_the_package_as_its_module_defines_it() -> None:
    for name in batchata_df.__all__:
        value = getattr(batchata_df, name)
        assert value is not None
        module = getattr(value, "__module__", None)
        if module is not None and module.startswith("batchata_df."):
            assert getattr(sys.modules[module], name) is value, name
    assert set(batchata_df.__all__) <= set(dir(batchata_df))
    with pytest.raises(AttributeError, match="has no attribute 'batch_lm'"):
        batchata_df.batch_lm  # noqa: B018


def test_names_moved_to_state_still_import_from_where_they_were() -> None:
    """``DECODED`` (schema) and the adopted-batch details (engine.recovery) moved to state,
    so that ``status``, ``doctor`` and ``repair`` need neither pydantic nor the engine."""
    from batchata_df import schema, state
    from batchata_df.engine import recovery

    assert schema.DECODED is state.DECODED == "\x00answer"
    for name in ("FOUND_AFTER_CRASH", "FOUND_AFTER_FAILED_CREATE", "FOUND_BY_REPAIR"):
        assert getattr(recovery, name) is getattr(state, name), name
        assert getattr(state, name) in state.ADOPTED_DETAILS, name
    assert recovery.ADOPTED_DETAILS is state.ADOPTED_DETAILS
    assert state.FOUND_BY_REPAIR == "found at the provider by repair"  # stored in folders


def test_repair_stays_the_function_when_its_module_is_imported_first() -> None:
    code = (
        "from batchata_df.repair import doctor\n"  # imports the submodule batchata_df.repair
        "import batchata_df\n"
        "from batchata_df import repair\n"
        "print(repair.__module__, repair.__name__, batchata_df.repair is repair)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["batchata_df.repair", "repair", "True"]


def test_the_llm_namespace_forwards_with_the_functions_signature_and_doc(emu) -> None:
    import batchata_df.frame as frame

    df = pl.DataFrame({"text": ["a"]})
    assert df.llm.batch.__wrapped__ is frame.batch_llm
    assert df.llm.batch.__doc__ == frame.batch_llm.__doc__
    assert pl.LazyFrame(df).llm.reparse.__wrapped__ is frame.reparse
    out = pl.LazyFrame(df).llm.batch(model="gpt-4.1-mini", prompt="Say: {text}")
    assert isinstance(out, pl.LazyFrame)
    assert out.collect().get_column("_status").to_list() == ["completed"]
