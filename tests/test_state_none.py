"""``state=None`` (the default): what a call that fails after paying leaves to the user.

Without a folder of the user's, a call checkpoints into a temporary one. When it fails
after it sent batches, that folder holds answers already paid for: it is kept, and the
error names it, so that the same call with ``state=`` that folder collects them without
paying again. A call that fails before writing anything leaves nothing behind.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from batchata_df import batch_llm
from batchata_df import frame as fr
from batchata_df.errors import CapSerialisedWarning, ConfigError, PriceError

NOTE = "call again with state="


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The folder temporary state folders go to (so a test can see what is left)."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _kept(error: BaseException, scratch: Path) -> Path:
    notes = [n for n in getattr(error, "__notes__", []) if NOTE in n]
    assert len(notes) == 1, getattr(error, "__notes__", None)
    kept = [p for p in scratch.iterdir() if p.name.startswith("batchata-df-")]
    assert len(kept) == 1
    assert repr(str(kept[0])) in notes[0]
    return kept[0]


def _billed(emu) -> Counter[str]:
    billed = Counter(e["custom_id"] for e in emu.billing())
    assert set(billed.values()) <= {1}, "a request was billed twice"
    return billed


def test_a_streamed_call_that_fails_after_paying_keeps_its_answers_for_a_call_with_state(
    emu, tmp_path: Path, scratch: Path
) -> None:
    # The third file's column has another type: the scan fails when it reaches it, after
    # the first two files' rows were sent and paid for. (A plain scan of the three is
    # refused before sending, tests/test_stream_guards.py; a window over the rows, the
    # shift, hides the files from that check until they are read.)
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        pl.DataFrame({"text": [f"row {i}-{j}" for j in range(30)]}).write_parquet(
            src / f"p{i}.parquet"
        )
    pl.DataFrame({"text": list(range(30))}).write_parquet(src / "p2.parquet")

    def scan() -> pl.LazyFrame:
        return pl.concat([
            pl.scan_parquet(src / "p0.parquet"),
            pl.scan_parquet([src / "p1.parquet", src / "p2.parquet"]).with_columns(
                pl.col("text").shift(1).fill_null("first")
            ),
        ])

    with pytest.raises(ConfigError, match="failed to read after") as failed:
        batch_llm(scan(), model="gpt-4.1-mini", prompt="Say: {text}",
                  sink=tmp_path / "o.parquet", chunk_rows=30)
    kept = _kept(failed.value, scratch)
    # The emulator bills a batch as it runs it, after the call that sent it may be gone.
    limit = time.monotonic() + 30
    while len(_billed(emu)) < 30 and time.monotonic() < limit:
        time.sleep(0.05)
    assert len(_billed(emu)) >= 30

    (src / "p2.parquet").unlink()
    pl.DataFrame({"text": [str(j) for j in range(30)]}).write_parquet(src / "p2.parquet")
    out = batch_llm(scan(), model="gpt-4.1-mini",
                    prompt="Say: {text}", sink=tmp_path / "o.parquet", chunk_rows=30,
                    state=kept).collect()
    assert out.height == 90
    assert out.get_column("_status").to_list() == ["completed"] * 90
    again = _billed(emu)
    assert sum(again.values()) == 90  # the first call's rows were not sent again


def test_an_in_memory_call_that_fails_after_paying_keeps_its_answers(
    emu, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    df = pl.DataFrame({"text": [f"t{i}" for i in range(12)]})
    real = fr._assemble

    def broken(*args: object, **kwargs: object) -> pl.DataFrame:
        raise RuntimeError("disk full while assembling")

    monkeypatch.setattr(fr, "_assemble", broken)
    with pytest.raises(RuntimeError) as failed:
        batch_llm(df, model="gpt-4.1-mini", prompt="Say: {text}")
    kept = _kept(failed.value, scratch)
    assert sum(_billed(emu).values()) == 12

    monkeypatch.setattr(fr, "_assemble", real)
    out = batch_llm(df, model="gpt-4.1-mini", prompt="Say: {text}", state=kept)
    assert out.get_column("_status").to_list() == ["completed"] * 12
    assert sum(_billed(emu).values()) == 12


def test_a_call_that_fails_before_writing_anything_leaves_no_folder(
    emu, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("stopped before sending")

    monkeypatch.setattr(fr.Engine, "run", refuse)
    with pytest.raises(RuntimeError) as failed:
        batch_llm(pl.DataFrame({"text": ["a"]}), model="gpt-4.1-mini", prompt="{text}")
    assert not getattr(failed.value, "__notes__", None)
    assert list(scratch.iterdir()) == []
    assert emu.billing() == []


def test_a_successful_call_leaves_no_folder(emu, scratch: Path) -> None:
    out = batch_llm(pl.DataFrame({"text": ["a"]}), model="gpt-4.1-mini", prompt="{text}")
    assert out.get_column("_status").item() == "completed"
    assert list(scratch.iterdir()) == []


def test_a_sink_that_cannot_be_written_is_refused_before_anything_is_sent(
    emu, tmp_path: Path
) -> None:
    (tmp_path / "a-file").write_text("")
    lf = pl.LazyFrame({"text": ["a", "b"]})
    with pytest.raises(ConfigError, match="cannot write in .*a-file.*Nothing was sent"):
        batch_llm(lf, model="gpt-4.1-mini", prompt="{text}",
                  sink=tmp_path / "a-file" / "out.parquet")
    assert emu.billing() == []
    assert emu.log() == []  # no provider request at all


def test_a_call_refused_before_anything_was_billed_leaves_no_folder(
    emu, scratch: Path
) -> None:
    # The key is rejected when the batch is created: the call recorded its intent (events),
    # but no provider accepted a batch and nothing was billed: nothing to keep.
    from batchata_df.errors import CredentialsError

    emu.inject_fault(path_regex=r"/openai/v1/batches$", status=401, times=None, body={
        "error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                  "code": "invalid_api_key"}})
    with pytest.raises(CredentialsError) as failed:
        batch_llm(pl.DataFrame({"text": ["a", "b"]}), model="gpt-4.1-mini", prompt="{text}")
    assert not getattr(failed.value, "__notes__", None)
    assert list(scratch.iterdir()) == []
    assert emu.billing() == []


def _stored_at(state: Path, rates: tuple[float, float]) -> float:
    """What the folder's answers stored without a cost cost at ``rates`` (batch USD/Mtok)."""
    from batchata_df import sql

    jobs = sql("select input_tokens, output_tokens from jobs where cost_usd is null "
               "and input_tokens > 0", state)
    return float(((jobs["input_tokens"] * rates[0] + jobs["output_tokens"] * rates[1])
                  / 1e6).sum())


@pytest.mark.parametrize("streamed", [False, True])
def test_a_cap_is_refused_on_a_folder_holding_spend_without_a_price(
    emu, tmp_path: Path, streamed: bool
) -> None:
    """An uncapped call ran a model without a price (its cost unknown); a capped call on
    the same folder counted those answers as $0 and spent past its cap (CLI reviewer's
    finding: $1.24 spent under a 0.9 cap). Without a price for them it is refused before
    anything is sent, naming prices= as the fix."""
    state = tmp_path / "st"
    first = pl.DataFrame({"text": [f"a{i}" for i in range(5)]})
    batch_llm(first, model="gpt-6-terra", prompt="{text}", state=state)
    paid = len(emu.billing())
    assert paid == 5
    more = pl.DataFrame({"text": [f"a{i}" for i in range(10)]})
    kw: dict[str, object] = {"model": "gpt-6-terra", "prompt": "{text}", "state": state,
                             "max_cost_usd": 0.9}
    with pytest.raises(PriceError) as info:
        if streamed:
            batch_llm(more.lazy(), sink=tmp_path / "o.parquet", **kw)  # type: ignore[arg-type]
        else:
            batch_llm(more, **kw)  # type: ignore[arg-type]
    message = str(info.value)
    assert "holds answers stored without a cost (5 of gpt-6-terra" in message, message
    assert "Pass prices={'gpt-6-terra': (INPUT_USD, OUTPUT_USD)}" in message, message
    assert (info.value.model, info.value.needed_by, info.value.stored) == (
        "gpt-6-terra", "max_cost_usd", 5)
    assert len(emu.billing()) == paid
    # without the cap the folder is used as before: the five answers are not paid again
    out = batch_llm(more, model="gpt-6-terra", prompt="{text}", state=state)
    assert out.get_column("_status").to_list() == ["completed"] * 10
    assert len(emu.billing()) == paid + 5


@pytest.mark.parametrize("streamed", [False, True])
def test_with_a_price_the_cap_counts_the_answers_stored_without_a_cost(
    emu, tmp_path: Path, streamed: bool
) -> None:
    """prices= prices the stored answers for the cap: a cap they already use up sends
    nothing; a cap with room sends, and the folder's bill at that price stays under it."""
    state = tmp_path / "st"
    rates = (1000.0, 1000.0)
    # A small worst case per answer ($0.05 of output at most), so the cap's room is counted
    # in answers.
    params = {"max_tokens": 50, "reasoning_effort": "none"}
    batch_llm(pl.DataFrame({"text": [f"a{i}" for i in range(5)]}), model="gpt-6-terra",
              prompt="{text}", state=state, params=params)
    paid = len(emu.billing())
    earlier = _stored_at(state, rates)
    assert earlier > 0
    more = pl.DataFrame({"text": [f"a{i}" for i in range(10)]})

    def run(cap: float) -> pl.DataFrame:
        kw: dict[str, object] = {"model": "gpt-6-terra", "prompt": "{text}", "state": state,
                                 "max_cost_usd": cap, "prices": {"gpt-6-terra": rates},
                                 "params": params}
        with warnings.catch_warnings():  # the cap serialises the run: not the point here
            warnings.simplefilter("ignore", CapSerialisedWarning)
            if streamed:
                batch_llm(more.lazy(), sink=tmp_path / "o.parquet", **kw)  # type: ignore[arg-type]
                return pl.read_parquet(tmp_path / "o.parquet")
            return batch_llm(more, **kw)  # type: ignore[arg-type]

    # Counted as $0 the cap would have had room for every new row: nothing fits.
    out = run(earlier * 0.99)
    assert len(emu.billing()) == paid
    assert out.filter(pl.col("_status") == "completed").height == 5  # the stored ones
    # Room for one more answer's worst case (about $0.06): some are sent, the cap holds.
    cap = earlier + 0.08
    out = run(cap)
    sent = len(emu.billing()) - paid
    assert 0 < sent < 5, (sent, earlier)
    from batchata_df import sql

    new_cost = float(sql("select sum(cost_usd) as usd from jobs", state)["usd"][0] or 0.0)
    assert earlier + new_cost <= cap


@pytest.mark.parametrize("streamed", [False, True])
def test_a_dry_run_shows_the_cap_passed_and_counts_the_priced_stored_answers_as_spent(
    emu, tmp_path: Path, capsys: pytest.CaptureFixture[str], streamed: bool
) -> None:
    """The cap the engine admits under was the cap minus the stored answers' price, and the
    summary showed that ("cap $-0.03: not one request fits") with an "already spent" that
    left those answers out. It shows the cap passed, and counts them as spent."""
    from batchata_df.progress import _cap

    state = tmp_path / "st"
    rates = (1000.0, 1000.0)
    params = {"max_tokens": 50, "reasoning_effort": "none"}
    batch_llm(pl.DataFrame({"text": [f"a{i}" for i in range(5)]}), model="gpt-6-terra",
              prompt="{text}", state=state, params=params)
    earlier = _stored_at(state, rates)
    more = pl.DataFrame({"text": [f"a{i}" for i in range(10)]})
    for cap in (round(earlier * 0.9, 4), round(earlier + 0.08, 4)):
        capsys.readouterr()
        kw: dict[str, object] = {"model": "gpt-6-terra", "prompt": "{text}", "state": state,
                                 "max_cost_usd": cap, "prices": {"gpt-6-terra": rates},
                                 "params": params, "dry_run": True, "progress": True}
        if streamed:
            batch_llm(more.lazy(), sink=tmp_path / "plan.parquet", **kw)  # type: ignore[arg-type]
        else:
            batch_llm(more, **kw)  # type: ignore[arg-type]
        err = capsys.readouterr().err
        assert f"already spent or held by batches in flight: ${earlier:,.4f}" in err, err
        assert f"cap {_cap(cap)}" in err and "cap $-" not in err, (cap, err)
        if cap < earlier:
            assert f"cap {_cap(cap)}: not one request fits" in err, err
    assert len(emu.billing()) == 5


def test_the_serialised_warning_names_the_cap_passed(emu, tmp_path: Path) -> None:
    """CapSerialisedWarning named the cap less the stored answers' price."""
    state = tmp_path / "st"
    rates = (1000.0, 1000.0)
    params = {"max_tokens": 50, "reasoning_effort": "none"}
    batch_llm(pl.DataFrame({"text": [f"a{i}" for i in range(5)]}), model="gpt-6-terra",
              prompt="{text}", state=state, params=params)
    # Room for one worst case (~$0.059: 9 input tokens, 50 output) but not two; once the
    # first answer (~$0.03) is in, another fits: a second round, serialised.
    cap = round(_stored_at(state, rates) + 0.10, 4)
    with pytest.warns(CapSerialisedWarning) as seen:
        batch_llm(pl.DataFrame({"text": [f"a{i}" for i in range(10)]}), model="gpt-6-terra",
                  prompt="{text}", state=state, params=params, max_cost_usd=cap,
                  prices={"gpt-6-terra": rates})
    message = str(seen[0].message)
    assert message.startswith(f"max_cost_usd={cap:g} serialised this run"), (cap, message)


@pytest.mark.parametrize("streamed", [False, True])
def test_a_call_that_returns_rows_left_in_flight_keeps_its_folder_for_a_call_with_state(
    emu, tmp_path: Path, scratch: Path, engine_clock, streamed: bool
) -> None:
    """A stop whose cancel does not end in time returns rows ``pending`` in a paid batch.

    The call returned (no error to note the folder on) and removed its temporary folder:
    those answers could never be collected, and the same call again paid for them again
    (a new user's Jupyter pass: 48 billed requests for 30 rows). The folder is kept, a
    warning names it, and a call with ``state=`` it collects them, each billed once.
    """
    from batchata_df import KeptStateWarning

    # 8 requests spread over 1,000 s of the emulator's clock; once the batch is accepted
    # the clock jumps 500 s (some have run, billed). The 1 s time limit asks to cancel it,
    # which the emulator ends only after an hour: the grace period (900 s of the engine's
    # fake clock) runs out first and the batch is left in flight, its rows pending.
    emu.configure(latency=1000.0, cancel_delay=3600.0)
    jumped: list[object] = []

    def on_progress(snapshot: object) -> None:
        if getattr(snapshot, "batches", {}).get("submitted") and not jumped:
            jumped.append(emu.advance(500.0))

    df = pl.DataFrame({"text": [f"t{i}" for i in range(8)]})
    sink = tmp_path / "o.parquet"
    kw: dict[str, object] = {"model": "gpt-4.1-mini", "prompt": "Say: {text}", "items_per_batch": 8}

    def run(**more: object) -> pl.DataFrame:
        if streamed:
            return batch_llm(df.lazy(), sink=sink, **kw, **more).collect()  # type: ignore[arg-type]
        return batch_llm(df, **kw, **more)  # type: ignore[arg-type]

    with pytest.warns(KeptStateWarning) as seen:
        out = run(time_limit=1.0, progress=on_progress)
    assert jumped
    assert out.get_column("_status").to_list() == ["pending"] * 8
    kept = [p for p in scratch.iterdir() if p.name.startswith("batchata-df-")]
    assert len(kept) == 1 and kept[0].is_dir()
    [warning] = [w for w in seen if w.category is KeptStateWarning]
    message = str(warning.message)
    assert f"state={str(kept[0])!r}" in message, message
    assert "8 rows" in message, message
    assert warning.message.folder == str(kept[0])  # type: ignore[union-attr]
    assert Path(warning.filename).name == Path(__file__).name  # the caller's line

    first = {e["batch_id"] for e in emu.billing()}
    assert len(first) == 1
    emu.advance(4000.0)  # the cancel has ended: what ran before it is in the output file
    emu.configure(latency=0.0)  # the rows it cancelled unrun go in a batch that ends at once
    out = run(state=kept[0])
    assert out.get_column("_status").to_list() == ["completed"] * 8
    billed = Counter(e["request"] for e in emu.billing())
    assert len(billed) == 8 and set(billed.values()) == {1}, billed
    # (The emulator counts a batch's requests as run until its end is seen: here.)
    ran = len([e for e in emu.billing() if e["batch_id"] in first])
    assert 0 < ran < 8  # collected from the first call's batch, not paid again
