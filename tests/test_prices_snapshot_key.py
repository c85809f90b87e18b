"""A ``prices=`` key naming a dated snapshot of the call's model (or the reverse) is refused.

``prices={"gpt-4.1-mini-2025-04-14": ...}`` on a call whose rows run ``gpt-4.1-mini`` (or
``{"gpt-4.1-mini": ...}`` on rows of the snapshot) never applies: prices are taken for the
exact name a row's model has, so the negotiated price was silently ignored (``_cost_usd``,
the estimates and the cap at the list price). Such a key is a
:class:`~batchata_df.errors.PriceError` naming the key, the model the call runs and the key
to use, before anything is sent, unless a row runs the key's model (then it is used).

Through the public API against the emulator, with the official SDKs.
"""

from __future__ import annotations

import polars as pl
import pytest

from batchata_df import batch_llm
from batchata_df.errors import PriceError

ROWS = pl.DataFrame({"text": [f"review {i}: fine" for i in range(4)]})
KW = {"prompt": "Summarise: {text}", "progress": False, "params": {"max_tokens": 50}}


def _collect(out: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    return out.collect() if isinstance(out, pl.LazyFrame) else out


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("gpt-4.1-mini", "gpt-4.1-mini-2025-04-14"),  # a snapshot's key on the alias
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),  # the alias's key on a snapshot
        ("claude-haiku-4-5", "claude-haiku-4-5-20251001"),  # Anthropic's dates
        ("gpt-4.1-mini", "openai:gpt-4.1-mini-2025-04-14"),
    ],
)
@pytest.mark.parametrize(
    "extra",
    [{}, {"max_cost_usd": 1.0}, {"dry_run": True}, {"sink": "out.parquet"}],
    ids=["batch", "capped", "dry_run", "streamed"],
)
def test_a_price_keyed_by_another_snapshot_of_the_model_is_refused(
    emu, tmp_path, model, key, extra
):
    kw = dict(extra)
    if "sink" in kw:
        kw["sink"] = str(tmp_path / "out.parquet")
    with pytest.raises(PriceError) as e:
        _collect(ROWS.pipe(batch_llm, model=model, prices={key: (0.1, 0.4)}, **KW, **kw))  # type: ignore[arg-type]
    message = str(e.value)
    bare = model.split(":")[-1]
    assert message.startswith(f"prices[{key!r}]: no row of this call uses model {key!r}"), message
    assert f"this call's models: {bare!r}" in message
    assert f"Did you mean {bare!r}?" in message
    assert f"key the price prices[{bare!r}]." in message, message
    assert "dated snapshot" in message and "Nothing was sent" in message
    assert emu.log() == [] and emu.billing() == []
    assert not (tmp_path / "out.parquet").exists()


def test_a_snapshot_key_a_row_runs_is_used(emu):
    """Rows of both the alias and the snapshot: the snapshot's key prices its rows (and the
    alias's key the others), each at its own price."""
    rows = ROWS.with_columns(m=pl.Series(["gpt-4.1-mini", "gpt-4.1-mini-2025-04-14"] * 2))
    prices = {"gpt-4.1-mini-2025-04-14": (1.0, 2.0), "gpt-4.1-mini": (3.0, 4.0)}
    out = rows.pipe(batch_llm, model=pl.col("m"), prices=prices, **KW)  # type: ignore[arg-type]
    assert out["_status"].to_list() == ["completed"] * 4
    dated = pl.col("m").str.ends_with("-2025-04-14")
    price_in, price_out = (
        pl.when(dated).then(1.0).otherwise(3.0),
        pl.when(dated).then(2.0).otherwise(4.0),
    )
    expected = out.select(
        (pl.col("_input_tokens") * price_in + pl.col("_output_tokens") * price_out) / 1e6
    )
    assert (out["_cost_usd"] - expected.to_series()).abs().max() < 1e-15
    assert len(emu.billing()) == 4


def test_a_snapshot_key_beside_the_model_s_own_is_another_call_s(emu):
    """A shared dict pricing the alias the call runs and a snapshot of it (another call's):
    the call is charged at its own key's price, nothing refused."""
    prices = {"gpt-4.1-mini": (1.0, 2.0), "gpt-4.1-mini-2025-04-14": (9.0, 9.0)}
    out = ROWS.pipe(batch_llm, model="gpt-4.1-mini", prices=prices, **KW)  # type: ignore[arg-type]
    expected = (out["_input_tokens"] * 1.0 + out["_output_tokens"] * 2.0) / 1e6
    assert (out["_cost_usd"] - expected).abs().max() < 1e-15
    assert len(emu.billing()) == 4


def test_the_command_line_refuses_a_snapshot_s_price_for_the_alias(emu, tmp_path, capsys):
    from batchata_df.cli import main

    ROWS.write_parquet(tmp_path / "in.parquet")
    args = ["run", str(tmp_path / "in.parquet"), str(tmp_path / "out.parquet"), "--model",
            "gpt-4.1-mini", "--prompt", "{text}", "--no-progress"]  # fmt: skip
    assert main([*args, "--price", "gpt-4.1-mini-2025-04-14=0.1,0.4"]) == 2
    err = capsys.readouterr().err
    assert "gpt-4.1-mini-2025-04-14" in err and "'gpt-4.1-mini'" in err, err
    assert emu.log() == [] and emu.billing() == []
    assert not (tmp_path / "out.parquet").exists()
