"""Review of the routed resume and the routed cap (session 19): paths their tests left out.

Through the public API against the emulator, official SDKs: a capped resume after
2026-12-01 with PDFs or images and a per-row model mixing a routed and a served model
(in memory and streamed), rows an earlier version failed as "retired" (sent once on the
next call, with or without ``retry_failed``), and the CLI's resume (one warning line).
"""

from __future__ import annotations

import warnings

import polars as pl
import pytest

from batchata_df import batch_llm, sql
from batchata_df.state import spent_usd

OLD, NEW = "gemini-2.5-flash", "gemini-3.5-flash-lite"
ROWS = pl.DataFrame({"text": [f"row {i}: " + "lorem ipsum " * 100 for i in range(6)]})
KW = {"prompt": "{text}", "progress": False, "params": {"max_tokens": 3000}}


def _collect(out: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    return out.collect() if isinstance(out, pl.LazyFrame) else out


def _files(tmp_path, kind: str, n: int) -> pl.DataFrame:
    if kind == "pdf":
        from pypdf import PdfWriter

        path = tmp_path / "doc.pdf"
        writer = PdfWriter()
        for _ in range(3):
            writer.add_blank_page(612, 792)
        writer.write(path)
    else:
        from PIL import Image

        path = tmp_path / "small.png"
        Image.new("RGB", (300, 300), (10, 20, 30)).save(path)
    return pl.DataFrame({"text": [f"row {i}" for i in range(n)], "file": [str(path)] * n})


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("kind", ["pdf", "image"])
def test_a_capped_resume_with_files_and_a_mixed_model_stays_under_the_cap(
    on, emu, tmp_path, streamed, kind
) -> None:
    # Half the rows gemini-2.5-flash (routed from 12-01: a PDF page 258 -> 560 tokens, a
    # small image 258 -> 1,120), half gemini-2.5-flash-lite (served). Started on 11-28
    # (its window ends 11-30: 2.5's counts), resumed on 12-01 under a cap.
    rows = _files(tmp_path, kind, 16)
    state = str(tmp_path / "s")
    sink = str(tmp_path / "out.parquet") if streamed else None
    model = (
        pl.when(pl.col("text").str.contains(r"[02468]$"))
        .then(pl.lit(OLD))
        .otherwise(pl.lit("gemini-2.5-flash-lite"))
    )
    kw = {"model": model, "prompt": "Describe: {text}", "files": "file", "state": state,
          "progress": False, "params": {"max_tokens": 50}, "sink": sink}  # fmt: skip
    on("2026-11-28")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shutdown warning; the cap's cancelled rows
        _collect(rows.pipe(batch_llm, max_cost_usd=0.0003, **kw))  # type: ignore[arg-type]
    before = sum(float(b["usd"]) for b in emu.billing(usd=True))  # type: ignore[arg-type]
    assert 0 < len(emu.billing()) < rows.height
    on("2026-12-01")
    cap = before + 0.0008
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _collect(rows.pipe(batch_llm, max_cost_usd=cap, **kw))  # type: ignore[arg-type]
    bills = emu.billing(usd=True)
    billed = sum(float(b["usd"]) for b in bills)  # type: ignore[arg-type]
    assert NEW in {b["model"] for b in bills}
    assert len(bills) < rows.height  # the cap held some rows back
    assert billed <= cap
    assert spent_usd(state) == pytest.approx(billed, rel=1e-9)
    jobs = sql("SELECT est_cost_usd, cost_usd FROM jobs WHERE cost_usd > 0", state)
    assert (jobs["est_cost_usd"] >= jobs["cost_usd"]).all(), jobs


@pytest.mark.parametrize("retry_failed", [False, True])
def test_rows_an_earlier_version_failed_as_retired_are_sent_once(
    on, emu, tmp_path, monkeypatch, retry_failed
) -> None:
    from batchata_df import frame

    state = str(tmp_path / "s")
    on("2026-11-30")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shutdown warning; the cap's cancelled rows
        first = ROWS.pipe(batch_llm, model=OLD, state=state, max_cost_usd=0.004, **KW)  # type: ignore[arg-type]
    sent = first.filter(pl.col("_status") == "completed").height
    assert 0 < sent < ROWS.height
    on("2026-12-01")
    # As before 78df8a3: no routed successor, the rows not sent fail as data.
    with monkeypatch.context() as m, warnings.catch_warnings():
        m.setattr(frame, "routed_successor", lambda provider, model: None)
        warnings.simplefilter("ignore")
        old = ROWS.pipe(batch_llm, model=OLD, state=state, **KW)  # type: ignore[arg-type]
    assert old.filter(pl.col("_status") == "failed").height == ROWS.height - sent
    assert len(emu.billing()) == sent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the routed resume's warning
        out = ROWS.pipe(batch_llm, model=OLD, state=state, retry_failed=retry_failed, **KW)  # type: ignore[arg-type]
    assert out["_status"].to_list() == ["completed"] * ROWS.height, out["_error"].to_list()
    bills = emu.billing(usd=True)
    assert sorted(b["custom_id"] for b in bills) == sorted(out["_job_id"].to_list())
    assert spent_usd(state) == pytest.approx(
        sum(float(b["usd"]) for b in bills), rel=1e-9)  # type: ignore[arg-type]  # fmt: skip


def test_the_cli_resumes_a_routed_run_after_the_date_with_one_warning(
    on, emu, tmp_path, capsys
) -> None:
    from batchata_df.cli import main

    src = tmp_path / "in.parquet"
    ROWS.write_parquet(src)
    state = str(tmp_path / "s")
    args = ["run", str(src), str(tmp_path / "out.parquet"), "--model", OLD, "--prompt",
            "{text}", "--state", state, "--max-tokens", "3000", "--no-progress"]  # fmt: skip
    on("2026-11-30")
    main([*args, "--max-cost-usd", "0.004"])  # some rows held back by the cap (exit 4)
    capsys.readouterr()
    sent = len(emu.billing())
    assert 0 < sent < ROWS.height
    on("2026-12-01")
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count(f"was retired by Gemini on 2026-12-01 and its requests are answered by "
                     f"'{NEW}' instead") == 1, err  # fmt: skip
    bills = emu.billing()
    assert len({b["custom_id"] for b in bills}) == len(bills) == ROWS.height
    assert sorted(b["model"] for b in bills) == sorted([OLD] * sent + [NEW] * (6 - sent))
    assert main(args) == 0  # again: nothing left to send, and nothing said about sending
    assert "was retired by Gemini" not in capsys.readouterr().err
    assert len(emu.billing()) == ROWS.height
