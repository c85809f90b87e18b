"""The lookup of a batch whose create answer was lost does not depend on list order.

OpenAI's and Gemini's batch lists do not document their order (openai 3.57
``resources/batches.py`` ``list``: "List your organization's batches."; google-genai 3.6.1
``batches.list``: no order either), while Anthropic's says "Most recently created batches
are returned first" (anthropic 2.14 ``resources/messages/batches.py``). The emulator can
list in another order (``list_order``); the lookup must still find the batch instead of
stopping at the first older one and paying for the same rows twice.
"""

from __future__ import annotations

import time

import polars as pl
import pytest
from pydantic import BaseModel

import batchata_df.engine.clock
import batchata_df.state
from batchata_df import batch_llm
from batchata_df.emulator.server import listed
from batchata_df.providers.base import BatchTag


class A(BaseModel):
    label: str


HOUR = 3600.0

CASES = {
    "openai": ("gpt-4.1-mini", r"^/openai/v1/batches$", "/openai/v1/batches"),
    "gemini": ("gemini-2.5-flash", r":batchGenerateContent$", ":batchGenerateContent"),
}


class _Later:
    """The ``time`` module, with the wall clock an hour later."""

    def __getattr__(self, name):
        return getattr(time, name)

    def time(self):
        return time.time() + HOUR

    def time_ns(self):
        return time.time_ns() + int(HOUR * 1e9)


def _older_batches(provider, model, n):
    """Create ``n`` small batches straight through the provider's SDK."""
    if provider == "openai":
        from openai import OpenAI

        client = OpenAI()
        line = ('{"custom_id":"x","method":"POST","url":"/v1/chat/completions","body":'
                f'{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}}}')
        file = client.files.create(file=("in.jsonl", line.encode()), purpose="batch")
        for _ in range(n):
            client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
        client.close()
    else:
        from google import genai

        gclient = genai.Client()
        for i in range(n):
            gclient.batches.create(
                model=model,
                src=[{"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}],
                config={"display_name": f"someone-else-{i}"},
            )


def _creates(emu, suffix):
    return [e for e in emu.log() if e["method"] == "POST" and e["path"].endswith(suffix)]


@pytest.mark.parametrize("order", ["oldest_first", "shuffled"])
@pytest.mark.parametrize("provider", sorted(CASES))
def test_lost_create_is_found_whatever_the_list_order(emu, tmp_path, monkeypatch, provider,
                                                      order):
    model, create_re, create_suffix = CASES[provider]
    # Older batches in the account, an hour before this run: more than one page of the
    # client's lookup (100), so that a whole page can be older than the lost batch.
    _older_batches(provider, model, 101)
    emu.advance(HOUR)
    # Our side's wall clock moves on by the same hour (sleeps and timers stay real).
    monkeypatch.setattr(batchata_df.state, "time", _Later())
    monkeypatch.setattr(batchata_df.engine.clock, "time", _Later())
    emu.configure(list_order=order)
    try:
        before = len(_creates(emu, create_suffix))
        # The provider creates the batch but the answer is lost.
        emu.inject_fault(method="POST", path_regex=create_re, status=503, times=1,
                         when="after")
        df = pl.DataFrame({"t": ["a", "b"]})
        out = df.pipe(batch_llm, schema=A, model=model, prompt="{t}", state=tmp_path / "s")
        assert out["_status"].to_list() == ["completed", "completed"]
        # Exactly one batch was created for these rows: the lost one was found, not paid twice.
        assert len(_creates(emu, create_suffix)) - before == 1
    finally:
        emu.configure(list_order="newest_first")


def test_emulator_lists_in_the_configured_order(emu, tmp_path):
    for i in range(4):
        pl.DataFrame({"t": [f"row {i}"]}).pipe(batch_llm, schema=A, model="gpt-4.1-mini",
                                               prompt="{t}", state=tmp_path / f"s{i}",
                                               wait=False)
    from openai import OpenAI

    client = OpenAI()
    try:
        newest = [b.id for b in client.batches.list(limit=100)]
        emu.configure(list_order="oldest_first")
        oldest = [b.id for b in client.batches.list(limit=100)]
        emu.configure(list_order="shuffled")
        shuffled = [b.id for b in client.batches.list(limit=2).iter_pages() for b in b.data]
    finally:
        emu.configure(list_order="newest_first")
    assert len(newest) == 4
    assert oldest == newest[::-1]
    # Paging through a shuffled list loses nothing and follows one fixed shuffle.
    assert shuffled == listed(oldest, "shuffled")
    fixed = [f"batch_{i}" for i in range(8)]
    assert listed(fixed, "shuffled") not in (fixed, fixed[::-1])
    with pytest.raises(Exception, match="list_order"):
        emu.configure(list_order="random")


def test_search_is_bounded_by_count(emu, tmp_path, monkeypatch):
    """A search that cannot look at every batch stops and says so; it never guesses."""
    from batchata_df.errors import OrphanedBatchError
    from batchata_df.providers.openai import OpenAIProvider

    for i in range(5):
        pl.DataFrame({"t": [f"row {i}"]}).pipe(batch_llm, schema=A, model="gpt-4.1-mini",
                                               prompt="{t}", state=tmp_path / f"s{i}",
                                               wait=False)
    monkeypatch.setattr(OpenAIProvider, "MAX_LISTED", 3)
    provider = OpenAIProvider()
    tag = BatchTag(run_id="not-there", batch_key="b0", created_after=time.time())
    try:
        with pytest.raises(OrphanedBatchError, match="3 batches were listed"):
            provider.find(tag)
    finally:
        provider.close()


@pytest.mark.parametrize(("name", "article", "path", "what"), [
    ("OpenAI", "an", r"/openai/v1/batches(\?|$)", "list batches"),
    ("Anthropic", "an", r"/anthropic/v1/messages/batches(\?|$)", "list message batches"),
    ("Gemini", "a", r"/gemini/v1beta/batches(\?|$)", "list batches"),
])
def test_a_batch_list_that_cannot_be_read_stops_the_search_and_says_why(emu, name, article,
                                                                        path, what):
    from batchata_df.errors import OrphanedBatchError
    from batchata_df.providers import make_provider

    emu.inject_fault(path_regex=path, method="GET", status=400, times=None)
    provider = make_provider(name.lower())
    try:
        with pytest.raises(OrphanedBatchError) as info:
            provider.find(BatchTag(run_id="r", batch_key="b0", created_after=time.time()))
    finally:
        provider.close()
    message = str(info.value)
    assert message.startswith(
        f"{article} {name} batch for these rows may already exist (created by this "
        "call or an earlier one just before an error or a stop), but listing batches failed "
        f"({name} failed to {what}: HTTP 400")
    assert message.endswith("); call again later with the same state: nothing is paid twice")


@pytest.mark.parametrize("order", ["newest_first", "oldest_first"])
def test_openai_lookup_matches_run_and_batch_key_both(emu, tmp_path, order):
    """Two batches of one run (one state folder, two calls): the lookup of either batch key
    finds that batch, never its sibling that shares the run id."""
    from batchata_df.providers.openai import OpenAIProvider
    from batchata_df.state import read_manifest

    for row in ("row 0", "row 1"):
        pl.DataFrame({"t": [row]}).pipe(batch_llm, schema=A, model="gpt-4.1-mini",
                                        prompt="{t}", state=tmp_path / "s", wait=False)
    run_id = read_manifest(tmp_path / "s" / "manifest.json").run_id
    sent = (pl.read_parquet(tmp_path / "s" / "batches" / "*.parquet")
            .drop_nulls("provider_batch_id").unique(["batch_key", "provider_batch_id"]))
    ids = dict(zip(sent["batch_key"], sent["provider_batch_id"], strict=True))
    assert len(ids) == 2
    provider = OpenAIProvider()
    emu.configure(list_order=order)
    try:
        for key, batch_id in ids.items():
            tag = BatchTag(run_id=run_id, batch_key=key, created_after=0.0)
            assert provider.find(tag) == batch_id
        other = BatchTag(run_id=run_id, batch_key="b-not-sent", created_after=0.0)
        assert provider.find(other) is None
    finally:
        emu.configure(list_order="newest_first")
        provider.close()
