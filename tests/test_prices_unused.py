"""A ``prices=`` key shaped like a typo of the run's model is refused before anything is sent.

``prices={"gpt-5.4-mnii": (0.1, 0.4)}`` (a typo of the run's ``gpt-5.4-mini``) was taken
without a word: the caller's negotiated price was never applied, and ``_cost_usd``, the
dry run's estimates and the cap were all computed at the list price. Such a key, one
close to a model of the call that no key prices or one in another case or with a
``provider:``/``provider/`` prefix, is a
:class:`~batchata_df.errors.PriceError` naming the key, the run's models and the model it
was meant for, raised before any request (in memory, streamed, realtime, auto, dry run).
A key for a model the call does not use, and close to none it leaves unpriced, is a price
for another call (one dict shared by a project's calls) and is taken. Keys that are used
are never refused: a model of any row, Gemini's ``models/<id>`` spelling, the successor a
routed model is answered (and billed) by, a model the state folder holds answers of (a
capped call prices those stored without a cost from ``prices=``).

Through the public API against the emulator, with the official SDKs.
"""

from __future__ import annotations

import polars as pl
import pytest

from batchata_df import batch_llm
from batchata_df.errors import PriceError

MODEL, TYPO = "gpt-5.4-mini", "gpt-5.4-mnii"
ROWS = pl.DataFrame({"text": [f"review {i}: fine" for i in range(4)]})
GEMINI = {"max_tokens": 16384}  # thinking's room (ThinkingRoomWarning otherwise)
KW = {"prompt": "Summarise: {text}", "progress": False, "params": {"max_tokens": 50}}


def _collect(out: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    return out.collect() if isinstance(out, pl.LazyFrame) else out


def _nothing_sent(emu) -> None:  # type: ignore[no-untyped-def]
    assert emu.log() == []
    assert emu.billing() == []


@pytest.mark.parametrize(
    ("how", "extra"),
    [
        ("batch", {}),
        ("capped", {"max_cost_usd": 1.0}),
        ("dry run", {"dry_run": True}),
        ("realtime", {"mode": "realtime"}),
        ("auto", {"mode": "auto", "deadline": 3600}),
        ("streamed", {"sink": "out.parquet"}),
        ("streamed capped", {"sink": "out.parquet", "max_cost_usd": 1.0}),
    ],
)
def test_a_price_for_a_misspelt_model_is_refused_before_sending(emu, tmp_path, how, extra):
    kw = dict(extra)
    if "sink" in kw:
        kw["sink"] = str(tmp_path / str(kw["sink"]))
    with pytest.raises(PriceError) as e:
        _collect(
            ROWS.pipe(
                batch_llm, model=MODEL, state=str(tmp_path / "s"),
                prices={TYPO: (0.1, 0.4)}, **KW, **kw,  # type: ignore[arg-type]
            )
        )  # fmt: skip
    message = str(e.value)
    assert message.startswith(f"prices[{TYPO!r}]: no row of this call uses model {TYPO!r}")
    assert f"this call's models: {MODEL!r}" in message
    assert f"Did you mean {MODEL!r}?" in message
    assert "Nothing was sent" in message
    _nothing_sent(emu)
    assert not (tmp_path / "out.parquet").exists()


def test_the_run_s_models_and_the_closest_one_are_named(emu, tmp_path):
    # A per-row model: two models; the price meant for the Claude one is misspelt.
    rows = ROWS.with_columns(
        m=pl.when(pl.int_range(pl.len()) % 2 == 0)
        .then(pl.lit(MODEL))
        .otherwise(pl.lit("claude-haiku-4-5"))
    )
    with pytest.raises(PriceError) as e:
        rows.pipe(batch_llm, model=pl.col("m"), prices={"claude-haiku-4.5": (1, 5)}, **KW)
    message = str(e.value)
    assert "this call's models: 'claude-haiku-4-5', 'gpt-5.4-mini'" in message
    assert "Did you mean 'claude-haiku-4-5'?" in message
    _nothing_sent(emu)


def test_a_provider_prefixed_key_is_refused_naming_the_bare_model(emu):
    # Prices are keyed by the model's name without "openai:": this one was never applied.
    with pytest.raises(PriceError) as e:
        ROWS.pipe(batch_llm, model=f"openai:{MODEL}", prices={f"openai:{MODEL}": (1, 2)}, **KW)
    assert f"Did you mean {MODEL!r}?" in str(e.value)
    _nothing_sent(emu)


SHARED = {  # one project's price dict, passed to each of its calls
    MODEL: (1.0, 2.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "gemini-2.5-flash": (0.15, 1.25),
    "my-finetune": (3.0, 6.0),
    TYPO: (9.0, 9.0),  # close to MODEL, which a key prices as meant: no money goes wrong
}


@pytest.mark.parametrize("streamed", [False, True])
def test_a_price_dict_shared_by_other_calls_is_taken(emu, tmp_path, streamed):
    # Keys for models this call does not use, close to none it leaves unpriced: taken, and
    # the call's own model is charged at its key's price.
    sink = str(tmp_path / "out.parquet") if streamed else None
    out = _collect(
        ROWS.pipe(batch_llm, model=MODEL, prices=SHARED, sink=sink, max_cost_usd=1.0, **KW)  # type: ignore[arg-type]
    )
    assert out["_status"].to_list() == ["completed"] * 4
    expected = (out["_input_tokens"] * 1.0 + out["_output_tokens"] * 2.0) / 1e6
    assert (out["_cost_usd"] - expected).abs().max() < 1e-15
    assert len(emu.billing()) == 4


def test_a_key_close_to_a_model_no_key_prices_is_refused_among_shared_ones(emu):
    # The same dict on a call of gpt-5.4-nano, whose price was misspelt "gpt-5.4-nanoo".
    with pytest.raises(PriceError) as e:
        ROWS.pipe(batch_llm, model="gpt-5.4-nano",
                  prices={**SHARED, "gpt-5.4-nanoo": (1, 2)}, **KW)  # fmt: skip
    message = str(e.value)
    assert message.startswith("prices['gpt-5.4-nanoo']: no row of this call uses")
    assert "Did you mean 'gpt-5.4-nano'?" in message
    assert "my-finetune" not in message and "claude" not in message
    _nothing_sent(emu)


@pytest.mark.parametrize("streamed", [False, True])
def test_a_price_the_run_uses_is_applied(emu, tmp_path, streamed):
    """The control: the same call with the key spelt right is charged at that price."""
    sink = str(tmp_path / "out.parquet") if streamed else None
    out = _collect(
        ROWS.pipe(batch_llm, model=MODEL, prices={MODEL: (1.0, 2.0)}, sink=sink, **KW)  # type: ignore[arg-type]
    )
    assert out["_status"].to_list() == ["completed"] * 4
    expected = (out["_input_tokens"] * 1.0 + out["_output_tokens"] * 2.0) / 1e6
    assert (out["_cost_usd"] - expected).abs().max() < 1e-15
    assert len(emu.billing()) == 4


def test_gemini_s_models_prefix_names_the_same_model(emu):
    plan = ROWS.pipe(
        batch_llm, model="gemini-3.5-flash", dry_run=True,
        prices={"models/gemini-3.5-flash": (100.0, 100.0)}, **{**KW, "params": GEMINI},
    )  # fmt: skip
    assert plan["_est_cost_usd"].min() > 0.001  # at $100 per million tokens: applied
    _nothing_sent(emu)


def test_a_price_for_the_successor_of_a_routed_model_is_used(on, emu):
    """gemini-2.5-flash is answered (and billed) by gemini-3.5-flash-lite from 2026-12-01:
    a call sent on 2026-11-30 may run into that day, and its worst case takes the
    successor's price: the key names no row's model, but it is used."""
    on("2026-11-30")
    rows = ROWS.with_columns(pl.col("text") + " " + "lorem ipsum " * 50)
    kw = {**KW, "params": GEMINI, "model": "gemini-2.5-flash", "dry_run": True,
          "max_cost_usd": 1.0}  # fmt: skip
    with pytest.warns(Warning, match="shut"):  # the shutdown is near
        listed = rows.pipe(batch_llm, **kw)  # type: ignore[arg-type]
    with pytest.warns(Warning, match="shut"):
        priced = rows.pipe(batch_llm, prices={"gemini-3.5-flash-lite": (100, 100)}, **kw)  # type: ignore[arg-type]
    assert priced["_est_cost_usd"].min() > 10 * listed["_est_cost_usd"].max()
    _nothing_sent(emu)


def test_a_price_for_a_model_the_folder_holds_is_not_refused(emu, tmp_path):
    """A per-row model's folder holds answers of two models; a later call on some of its
    rows, all of one model, may name the other's price (a capped call prices that model's
    answers stored without a cost from ``prices=``): it is not a typo."""
    rows = ROWS.with_columns(m=pl.Series([MODEL, MODEL, "gpt-5.4-nano", "gpt-5.4-nano"]))
    state = str(tmp_path / "s")
    rows.pipe(batch_llm, model=pl.col("m"), state=state, **KW)
    assert len(emu.billing()) == 4
    prices = {MODEL: (1.0, 2.0), "gpt-5.4-nano": (1.0, 2.0)}
    out = rows.head(2).pipe(
        batch_llm, model=pl.col("m"), state=state, prices=prices, max_cost_usd=1.0, **KW
    )
    assert out["_status"].to_list() == ["completed"] * 2
    with pytest.raises(PriceError) as e:  # a typo of the folder's model, which no key prices
        rows.head(2).pipe(batch_llm, model=pl.col("m"), state=state,
                          prices={MODEL: (1.0, 2.0), "gpt-5.4-nanoo": (1, 2)}, **KW)  # fmt: skip
    assert "Did you mean 'gpt-5.4-nano'?" in str(e.value)
    assert len(emu.billing()) == 4  # nothing sent again


def test_the_command_line_takes_a_price_for_the_routed_successor(on, emu, tmp_path, capsys):
    """``--price`` was refused for any model but ``--model``'s: the successor's price, which
    a run of a routed model is billed at, was "a price for another model"."""
    from batchata_df.cli import main

    on("2026-11-30")
    rows = tmp_path / "in.parquet"
    ROWS.write_parquet(rows)
    args = ["run", str(rows), str(tmp_path / "out.parquet"), "--model", "gemini-2.5-flash",
            "--prompt", "{text}", "--max-tokens", "16384", "--dry-run"]  # fmt: skip
    assert main([*args, "--price", "gemini-3.5-flash-lite=100,100"]) == 0
    assert "--price" not in capsys.readouterr().err
    assert main([*args, "--price", "gemini-3.5-flash-lit=100,100"]) == 2
    err = capsys.readouterr().err
    assert "--price gemini-3.5-flash-lit=...: this run's model is 'gemini-2.5-flash'" in err
    assert "(did you mean 'gemini-3.5-flash-lite'?)" in err
    _nothing_sent(emu)


@pytest.mark.parametrize(
    "key", ["GPT-5.4-Mini", "openai/gpt-5.4-mini", "OpenAI:gpt-5.4-mini", "openai:gpt-5.4-mnii"]
)
def test_a_key_in_another_case_or_with_a_provider_spelt_otherwise_is_refused(emu, key):
    # Keys are matched as written: none of these ever prices gpt-5.4-mini's requests.
    with pytest.raises(PriceError) as e:
        ROWS.pipe(batch_llm, model=MODEL, prices={key: (0.1, 0.4)}, max_cost_usd=1.0, **KW)
    assert str(e.value).startswith(f"prices[{key!r}]: no row of this call uses")
    assert f"Did you mean {MODEL!r}?" in str(e.value)
    _nothing_sent(emu)


def test_a_sibling_model_s_price_is_refused_with_a_way_forward(emu):
    # A shared dict prices gpt-5.5-mini (another call's model) and not this call's
    # gpt-5.4-mini: refused as a likely typo, and the message says how to go on when the
    # key really is another call's; doing so runs the call.
    shared = {"gpt-5.5-mini": (1.0, 2.0), "claude-haiku-4-5": (1.0, 5.0)}
    with pytest.raises(PriceError) as e:
        ROWS.pipe(batch_llm, model=MODEL, prices=shared, **KW)
    message = str(e.value)
    assert f"Did you mean {MODEL!r}?" in message
    assert "If it prices another call's model, pass this call only its own models' keys" in (
        message
    )
    _nothing_sent(emu)
    own = {k: v for k, v in shared.items() if k in {MODEL}}
    out = ROWS.pipe(batch_llm, model=MODEL, prices=own, **KW)
    assert out["_status"].to_list() == ["completed"] * 4
