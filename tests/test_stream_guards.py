"""Guards of streaming runs (``batch_llm(lf, sink=...)``) that refuse before paying.

A sink that is a file the input reads (it would replace the input), files of one scan that
disagree on a column's type (found up front where Polars can check them without reading
rows, else mid-stream with what was paid kept for the next call), and nothing created on
disk by a call that is then refused. Each runs the real SDK against the emulator over HTTP.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from batchata_df import batch_llm
from batchata_df.errors import ColumnError, ConfigError

KW: dict[str, object] = {"model": "gpt-4.1-mini", "prompt": "Rate: {text}", "progress": False}


def requests(emu) -> int:
    """Every request the emulator received (none may be sent for refused input)."""
    return sum(1 for e in emu.log() if "/openai/" in e["path"])


def creates(emu) -> int:
    """Batches created (each a ``POST /batches``)."""
    return sum(
        1 for e in emu.log() if e["method"] == "POST" and e["path"] == "/openai/v1/batches"
    )


def billed_once(emu, at_least: int) -> Counter[str]:
    """Requests billed (each once), waited for: the emulator bills a batch as it runs it."""
    limit = time.monotonic() + 30
    while len(emu.billing()) < at_least and time.monotonic() < limit:
        time.sleep(0.05)
    billed = Counter(e["request"] for e in emu.billing())
    assert set(billed.values()) <= {1}, "a request was billed twice"
    return billed


def data(tmp_path: Path) -> Path:
    path = tmp_path / "data.parquet"
    pl.DataFrame({"text": ["a", "b", "c", "d"], "keep": [1, 2, 3, 4]}).write_parquet(path)
    return path


def _same(tmp_path: Path) -> tuple[pl.LazyFrame, Path]:
    path = data(tmp_path)  # the reviewer's case: a filtered, projected scan of the sink
    return pl.scan_parquet(path).filter(pl.col("keep") <= 2).select("text"), path


def _relative(tmp_path: Path) -> tuple[pl.LazyFrame, Path]:
    data(tmp_path)
    (tmp_path / "sub").mkdir()
    os.chdir(tmp_path)  # undone by monkeypatch.chdir in the test
    return pl.scan_parquet("data.parquet"), tmp_path / "sub" / ".." / "data.parquet"


def _symlink(tmp_path: Path) -> tuple[pl.LazyFrame, Path]:
    path = data(tmp_path)
    link = tmp_path / "link.parquet"
    link.symlink_to(path)
    return pl.scan_parquet(path), link


def _hardlink(tmp_path: Path) -> tuple[pl.LazyFrame, Path]:
    path = data(tmp_path)
    other = tmp_path / "other" / "hard.parquet"
    other.parent.mkdir()
    os.link(path, other)
    return pl.scan_parquet(other), path


def _glob(tmp_path: Path) -> tuple[pl.LazyFrame, Path]:
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(12):  # more files than Polars' plan text lists
        pl.DataFrame({"text": [f"t{k}"]}).write_parquet(folder / f"p{k:02d}.parquet")
    return pl.scan_parquet(folder / "*.parquet"), folder / "p07.parquet"


def _folder(tmp_path: Path) -> tuple[pl.LazyFrame, Path]:
    lf, sink = _glob(tmp_path)
    return pl.scan_parquet(tmp_path / "in"), sink


def _list_in_a_concat(tmp_path: Path) -> tuple[pl.LazyFrame, Path]:
    path = data(tmp_path)
    csv = tmp_path / "more.csv"
    pl.DataFrame({"text": ["x"]}).write_csv(csv)
    lf = pl.concat([pl.scan_csv(csv), pl.scan_parquet([path, path]).select("text")])
    return lf.with_columns(pl.col("text").str.to_uppercase()), path


def _ipc(tmp_path: Path) -> tuple[pl.LazyFrame, Path]:
    # An IPC scan: Polars' plan visitor cannot show its files; the plan's text does.
    path = tmp_path / "data.parquet"
    pl.DataFrame({"text": ["a", "b"]}).write_ipc(path)
    return pl.scan_ipc(path).join(pl.scan_ipc(path), on="text"), path


def _ndjson(tmp_path: Path) -> tuple[pl.LazyFrame, Path]:
    path = tmp_path / "data.parquet"
    pl.DataFrame({"text": ["a", "b"]}).write_ndjson(path)
    return pl.scan_ndjson(path), path


@pytest.mark.parametrize(
    "case",
    [_same, _relative, _symlink, _hardlink, _glob, _folder, _list_in_a_concat, _ipc, _ndjson],
)
def test_a_sink_that_is_an_input_file_is_refused_before_anything_is_sent(
    emu, tmp_path, monkeypatch, case: Callable[[Path], tuple[pl.LazyFrame, Path]]
):
    monkeypatch.chdir(tmp_path)
    lf, sink = case(tmp_path)
    target = sink.resolve()
    before = target.read_bytes()
    with pytest.raises(ConfigError, match="would replace the input.*another path"):
        batch_llm(lf, state=tmp_path / "st", sink=sink, chunk_rows=2, **KW)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="would replace the input"):
        batch_llm(lf, state=tmp_path / "st", sink=sink, dry_run=True, **KW)  # type: ignore[arg-type]
    assert requests(emu) == 0
    assert target.read_bytes() == before  # the input is untouched
    assert not (tmp_path / "st").exists()
    assert not [p.name for p in sink.parent.iterdir() if p.name.startswith(".tmp-")]


def test_an_existing_sink_that_is_not_an_input_is_replaced_by_the_result(emu, tmp_path):
    path = data(tmp_path)
    sink = tmp_path / "out.parquet"
    pl.DataFrame({"old": [1]}).write_parquet(sink)
    lf = pl.scan_parquet(path).filter(pl.col("keep") <= 2)
    out = batch_llm(lf, state=tmp_path / "st", sink=sink, chunk_rows=1, **KW)  # type: ignore[arg-type]
    got = out.collect()
    assert got["text"].to_list() == ["a", "b"]
    assert got["_status"].to_list() == ["completed"] * 2
    # The same call again (a resume) writes the same sink, sending nothing.
    billed = len(emu.billing())
    again = batch_llm(lf, state=tmp_path / "st", sink=sink, chunk_rows=1, **KW)  # type: ignore[arg-type]
    assert again.collect()["text"].to_list() == ["a", "b"]
    assert len(emu.billing()) == billed == 2
    assert pl.read_parquet(path).height == 4


def drift(folder: Path) -> Path:
    """Two files of one scan: ``n`` is Int64 in the first, String in the second."""
    folder.mkdir()
    pl.DataFrame({"text": ["a", "b", "c"], "n": [1, 2, 3]}).write_parquet(folder / "p1.parquet")
    pl.DataFrame({"text": ["d", "e", "f"], "n": ["x", "y", "z"]}).write_parquet(
        folder / "p2.parquet"
    )
    return folder


def test_files_of_one_scan_that_disagree_on_a_type_are_refused_before_anything_is_sent(
    emu, tmp_path
):
    folder = drift(tmp_path / "in")
    sink = tmp_path / "out" / "out.parquet"
    for lf in (
        pl.scan_parquet(folder / "*.parquet"),
        pl.scan_parquet([folder / "p1.parquet", folder / "p2.parquet"])
        .filter(pl.col("text") != "b"),
    ):
        with pytest.raises(ConfigError, match=r"p2\.parquet.*'n'.*String.*p1\.parquet.*Int64"):
            batch_llm(lf, state=tmp_path / "st", sink=sink, chunk_rows=2, **KW)  # type: ignore[arg-type]
    assert requests(emu) == 0
    assert not sink.parent.exists()
    assert not (tmp_path / "st").exists()


def test_drift_found_mid_stream_keeps_what_was_sent_and_the_fixed_call_pays_nothing_twice(
    emu, tmp_path
):
    folder = drift(tmp_path / "in")
    sink, state = tmp_path / "out.parquet", tmp_path / "st"
    # A window over the rows (shift) between the scan and the end of the plan: Polars
    # cannot check the scan's files without reading its rows, so the second scan's bad
    # file is found after the first scan's chunk was sent.
    def scan() -> pl.LazyFrame:  # anew for each call: a LazyFrame keeps its files' footers
        return pl.concat([
            pl.scan_parquet(folder / "p1.parquet"),
            pl.scan_parquet(folder / "*.parquet").with_columns(
                pl.col("text").shift(1).fill_null("z")
            ),
        ])

    kept = "call again with the same state=.*kept in the state folder"
    with pytest.raises(ConfigError, match=kept) as caught:
        batch_llm(scan(), state=state, sink=sink, chunk_rows=3, **KW)  # type: ignore[arg-type]
    assert "data type mismatch" in str(caught.value)
    assert not sink.exists()
    sent = creates(emu)
    # The first call sent the 6 rows it read before the bad file: a b c, z a b (4 requests).
    first = billed_once(emu, 4)
    assert sent >= 1 and len(first) == 4
    pl.DataFrame({"text": ["d", "e", "f"], "n": [4, 5, 6]}).write_parquet(folder / "p2.parquet")
    out = batch_llm(scan(), state=state, sink=sink, chunk_rows=3, **KW).collect()  # type: ignore[arg-type]
    assert out["text"].to_list() == ["a", "b", "c", "z", "a", "b", "c", "d", "e"]
    assert out["_status"].to_list() == ["completed"] * 9
    # The second call collected those and sent one batch more, for d and e only.
    assert len(billed_once(emu, 6)) == 6
    assert creates(emu) == sent + 1


def test_a_refused_call_creates_no_folder_for_its_sink(emu, tmp_path):
    path = data(tmp_path)
    sink = tmp_path / "nope" / "deeper" / "out.parquet"
    with pytest.raises(ColumnError, match="txt"):
        batch_llm(pl.scan_parquet(path), state=tmp_path / "st", sink=sink,
                  model="gpt-4.1-mini", prompt="{txt}")
    with pytest.raises(ConfigError, match="chunk_rows"):
        batch_llm(pl.scan_parquet(path), sink=sink, chunk_rows=0, **KW)  # type: ignore[arg-type]
    assert not (tmp_path / "nope").exists()
    assert not (tmp_path / "st").exists()
    # A file in the way of the sink's folder: refused, naming it.
    (tmp_path / "afile").write_text("")
    with pytest.raises(ConfigError, match="afile"):
        batch_llm(pl.scan_parquet(path), sink=tmp_path / "afile" / "out.parquet", **KW)  # type: ignore[arg-type]
    # A call that passes creates the folder and writes the sink.
    batch_llm(pl.scan_parquet(path), state=tmp_path / "st", sink=sink, **KW).collect()  # type: ignore[arg-type]
    assert sink.exists()
    assert requests(emu) > 0


# -- a sink that is a symbolic link is written through it --------------------------------


def _lake(tmp_path: Path) -> tuple[pl.LazyFrame, Path, Path]:
    """The input, a file in a "data lake" folder, and a link to it beside the input."""
    path = data(tmp_path)
    lake = tmp_path / "lake"
    lake.mkdir()
    return pl.scan_parquet(path), lake / "table.parquet", tmp_path / "out.parquet"


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_sink_that_is_a_link_writes_the_file_it_names_and_the_link_stays(
    emu, tmp_path, dry_run
):
    """The result was renamed over the link: the link became a regular file and the
    file it named (on a data lake mount, say) kept its old content."""
    lf, target, link = _lake(tmp_path)
    pl.DataFrame({"old": [1]}).write_parquet(target)
    (tmp_path / "hop.parquet").symlink_to(target)  # a link to a link: followed to the end
    link.symlink_to("hop.parquet")
    before = target.read_bytes()
    out = batch_llm(lf, state=tmp_path / "st", sink=link, chunk_rows=3, dry_run=dry_run, **KW)  # type: ignore[arg-type]
    assert link.is_symlink() and os.readlink(link) == "hop.parquet"
    assert (tmp_path / "hop.parquet").is_symlink()
    if dry_run:  # a dry run writes no sink: the plan is a file of its own
        assert target.read_bytes() == before
        assert out.collect()["text"].to_list() == ["a", "b", "c", "d"]
        assert sorted(p.name for p in target.parent.iterdir()) == ["table.parquet"]
        return
    got = pl.read_parquet(target)
    assert got["text"].to_list() == ["a", "b", "c", "d"]
    assert out.collect().equals(got) and pl.read_parquet(link).equals(got)
    # The hidden file and folder were beside the file written, and are gone.
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.parquet"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    if dry_run:
        assert got["_status"].to_list() == ["planned"] * 4
        assert requests(emu) == 0
    else:
        assert got["_status"].to_list() == ["completed"] * 4
        assert len(billed_once(emu, 4)) == 4


def test_a_dangling_link_creates_the_file_it_names_in_an_existing_folder(emu, tmp_path):
    lf, target, link = _lake(tmp_path)
    link.symlink_to(target)  # table.parquet does not exist yet
    batch_llm(lf, state=tmp_path / "st", sink=link, **KW).collect()  # type: ignore[arg-type]
    assert link.is_symlink()
    assert pl.read_parquet(target)["_status"].to_list() == ["completed"] * 4
    assert len(billed_once(emu, 4)) == 4


def test_a_link_into_a_missing_folder_or_a_loop_is_refused_and_nothing_is_created(
    emu, tmp_path
):
    """A link into a folder that does not exist is most often one into a drive that is
    not mounted: creating the folder would hide the result under the mount point."""
    lf, _, link = _lake(tmp_path)
    link.symlink_to(tmp_path / "mnt" / "lake" / "table.parquet")
    with pytest.raises(ConfigError, match=r"symbolic link to .*mnt.*does not exist.*mount"):
        batch_llm(lf, state=tmp_path / "st", sink=link, **KW)  # type: ignore[arg-type]
    assert not (tmp_path / "mnt").exists()
    loop = tmp_path / "loop.parquet"
    loop.symlink_to("loop2.parquet")
    (tmp_path / "loop2.parquet").symlink_to("loop.parquet")
    with pytest.raises(ConfigError, match="symbolic link that loops"):
        batch_llm(lf, state=tmp_path / "st", sink=loop, **KW)  # type: ignore[arg-type]
    assert requests(emu) == 0
    assert not (tmp_path / "st").exists()
    assert link.is_symlink() and loop.is_symlink()


def test_a_link_to_an_input_file_through_another_link_is_refused(emu, tmp_path):
    lf, _, link = _lake(tmp_path)
    (tmp_path / "hop.parquet").symlink_to(tmp_path / "data.parquet")
    link.symlink_to("hop.parquet")
    before = (tmp_path / "data.parquet").read_bytes()
    with pytest.raises(ConfigError, match="would replace the input"):
        batch_llm(lf, state=tmp_path / "st", sink=link, **KW)  # type: ignore[arg-type]
    assert requests(emu) == 0
    assert (tmp_path / "data.parquet").read_bytes() == before
    assert link.is_symlink()


@pytest.mark.parametrize("through_link", [False, True])
def test_a_sink_that_is_a_folder_is_refused_before_anything_is_sent(
    emu, tmp_path, through_link
):
    """Found only by the rename at the end, after every row was paid for."""
    lf, target, link = _lake(tmp_path)
    target.mkdir()  # a partitioned dataset's folder, say
    sink = link if through_link else target
    if through_link:
        link.symlink_to(target)
    with pytest.raises(ConfigError, match="is a folder.*Give a file path"):
        batch_llm(lf, state=tmp_path / "st", sink=sink, **KW)  # type: ignore[arg-type]
    assert requests(emu) == 0
    assert not (tmp_path / "st").exists()


def test_a_bad_history_turn_in_a_later_chunk_is_refused_before_anything_is_sent(emu, tmp_path):
    """Each chunk checked its own turns: the chunks before the bad one were sent and paid."""
    good = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    path = tmp_path / "in.parquet"
    frame = pl.DataFrame({"text": list("abcdef"), "h": [good, [], None, good, good, good]})
    frame.write_parquet(path, row_group_size=2)
    for bad in ({"role": "system", "content": "x"}, {"role": "user", "content": None},
                {"role": None, "content": "x"}):  # fmt: skip
        frame.with_columns(
            pl.Series("h", [good, [], None, good, good, [*good, bad]])
        ).write_parquet(path, row_group_size=2)
        for dry_run in (False, True):
            with pytest.raises(ColumnError, match=r"history='h': every turn needs role") as e:
                batch_llm(pl.scan_parquet(path), state=tmp_path / "st",
                          sink=tmp_path / "out.parquet", chunk_rows=2, history="h",
                          dry_run=dry_run, **KW)  # type: ignore[arg-type]  # fmt: skip
            assert repr(bad) in str(e.value)
    assert requests(emu) == 0 and emu.billing() == []
    assert not (tmp_path / "st").exists()
    # Fixed, the same call runs every row; the rows without turns are sent without them.
    frame.write_parquet(path, row_group_size=2)
    out = batch_llm(pl.scan_parquet(path), state=tmp_path / "st", sink=tmp_path / "out.parquet",
                    chunk_rows=2, history="h", **KW).collect()  # type: ignore[arg-type]
    assert out["_status"].to_list() == ["completed"] * 6
    assert len(billed_once(emu, 6)) == 6


def test_a_missing_file_in_a_later_chunk_names_its_input_row_and_what_was_kept(emu, tmp_path):
    """A chunk's files are read with the chunk (reading every file up front would read
    each twice): a bad one in a later chunk is found after the earlier chunks were sent.
    The error named the row within its chunk ("row 1" for input row 3) and said nothing
    of what was sent; the fixed call collects that and pays nothing twice."""
    from batchata_df.errors import FileInputError

    docs = [tmp_path / f"d{i}.txt" for i in range(4)]
    for i, doc in enumerate(docs[:3]):
        doc.write_text(f"doc {i}")
    path = tmp_path / "in.parquet"
    pl.DataFrame({"text": list("abcd"), "f": [str(d) for d in docs]}).write_parquet(path)
    args: dict[str, object] = {"state": tmp_path / "st", "sink": tmp_path / "out.parquet",
                               "chunk_rows": 2, "files": "f", **KW}  # fmt: skip
    with pytest.raises(FileInputError, match=r"row 3, .*d3\.txt.*does not exist") as e:
        batch_llm(pl.scan_parquet(path), dry_run=True, **args)  # type: ignore[arg-type]
    assert "sent" not in str(e.value)  # a dry run sends nothing
    with pytest.raises(FileInputError, match=r"row 3, .*d3\.txt.*does not exist") as e:
        batch_llm(pl.scan_parquet(path), **args)  # type: ignore[arg-type]
    assert "after 2 rows were read and sent" in str(e.value)
    assert "same state=" in str(e.value) and "never sent or paid for twice" in str(e.value)
    assert len(billed_once(emu, 2)) == 2
    docs[3].write_text("doc 3")
    out = batch_llm(pl.scan_parquet(path), **args).collect()  # type: ignore[arg-type]
    assert out["_status"].to_list() == ["completed"] * 4
    assert len(billed_once(emu, 4)) == 4
    # A bad file in the first chunk: nothing was sent, and the message says no more.
    docs[0].unlink()
    with pytest.raises(FileInputError, match=r"row 0, .*d0\.txt") as e:
        batch_llm(pl.scan_parquet(path), state=tmp_path / "st2", sink=tmp_path / "o2.parquet",
                  chunk_rows=2, files="f", **KW)  # type: ignore[arg-type]  # fmt: skip
    assert "sent" not in str(e.value)
    assert len(billed_once(emu, 4)) == 4
