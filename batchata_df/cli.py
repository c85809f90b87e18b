"""The ``batchata-df`` command: run, status, sql, cancel, doctor, repair, emulator, demo.

Built on `click <https://click.palletsprojects.com>`_ (maintained, typed, the base that
typer itself builds on; we need none of typer's extras, and click brings no further
dependency).

Exit codes of ``batchata-df run`` (what a scheduler can act on):

=====  =================================================================================
0      every row completed (or a dry run)
1      an error after checks passed: a damaged state folder (``batchata-df repair``), a
       provider problem, an output that cannot be written, a bug (``--debug``)
2      a usage error: bad option, missing or unreadable input (a broken CSV line), unknown
       format, a column or schema problem, a missing ``--price``, OUTPUT's folder or the
       ``--state`` folder not writable, OUTPUT naming an INPUT file; nothing was sent
3      finished, but some rows ``failed`` (see ``_error``; ``--retry-failed`` sends them
       again)
4      some rows were ``cancelled`` (cost cap, time limit, provider): run again to send them
5      some rows are still ``pending`` (``--no-wait``, or batches still in flight): run the
       same command again to collect them
75     another call is writing the state folder, or another run is writing OUTPUT (try again
       later, or ``--lock-timeout SECONDS``)
130    interrupted by Ctrl+C (finished rows are kept in the state folder; the output file is
       written only with ``--write-partial``)
=====  =================================================================================

When several apply, the highest of 5, 4, 3 wins (pending, then cancelled, then failed).
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import difflib
import errno
import fnmatch
import glob
import importlib
import importlib.util
import json
import math
import os
import random
import re
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import click
import polars as pl

from batchata_df.errors import (
    WARNINGS,
    BatchataError,
    ConfigError,
    ModelShutdownWarning,
    PriceError,
    SinkLockedError,
    StateLockedError,
    StateMismatchError,
    ThinkingRoomWarning,
)

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = [
    "EXIT_CANCELLED",
    "EXIT_ERROR",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_LOCKED",
    "EXIT_OK",
    "EXIT_PENDING",
    "EXIT_USAGE",
    "main",
    "read_frame",
    "write_frame",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_FAILED = 3
EXIT_CANCELLED = 4
EXIT_PENDING = 5
EXIT_LOCKED = 75
EXIT_INTERRUPTED = 130

FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
}
"""File extensions the command reads and writes, and their format."""

F = TypeVar("F", bound=Callable[..., Any])


class UsageProblem(Exception):
    """A mistake on the command line or in its inputs: one line, exit code 2."""


class Busy(Exception):
    """Another run is writing the same OUTPUT (or state folder): one line, exit code 75."""


# -- files ------------------------------------------------------------------------------------


def file_format(path: str | os.PathLike[str]) -> str:
    """The format of ``path`` from its extension.

    Examples
    --------
    >>> file_format("out.JSONL")
    'ndjson'
    >>> file_format("book.xlsx")
    Traceback (most recent call last):
    ...
    batchata_df.cli.UsageProblem: 'book.xlsx': unsupported file type '.xlsx'; use .parquet, .pq, .csv, .ndjson or .jsonl
    """  # noqa: E501
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        names = ", ".join(FORMATS)
        names = names[: names.rfind(", ")] + " or " + names[names.rfind(", ") + 2 :]
        shown = f"{suffix!r}" if suffix else "(none)"
        msg = f"{os.fspath(path)!r}: unsupported file type {shown}; use {names}"
        raise UsageProblem(msg)
    return FORMATS[suffix]


def input_files(path: str | os.PathLike[str]) -> tuple[str, list[Path]]:
    """The format and the files of INPUT: a file, a folder of Parquet files, or a glob.

    A file that exists under the very name given is that file, whatever characters its
    name holds (``in[1].parquet`` is itself, not ``in1.parquet``). Else a folder is its
    ``.parquet``/``.pq`` files (not those in folders inside it), and a name with glob
    characters the files it matches (``**`` any depth of folders: ``'hive/**/*.parquet'``
    for a hive layout); either in sorted order (the rows come in that order).

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> for name in ("b.parquet", "a.parquet", "notes.txt"):
    ...     _ = (folder / name).write_bytes(b"")
    >>> kind, files = input_files(folder)
    >>> kind, [f.name for f in files]
    ('parquet', ['a.parquet', 'b.parquet'])
    >>> [f.name for f in input_files(folder / "*.parquet")[1]]
    ['a.parquet', 'b.parquet']
    """
    given = Path(path)
    shown = os.fspath(path)
    if given.is_file():
        return file_format(given), [given]
    if given.is_dir():
        files = sorted(
            f
            for f in given.iterdir()
            if f.suffix.lower() in (".parquet", ".pq")
            and not f.name.startswith(".")  # as a glob skips them (macOS's ._ files)
            and f.is_file()
        )
        if not files:
            msg = f"input folder {shown!r} holds no .parquet (or .pq) files"
            nested = next(
                (f for f in sorted(given.rglob("*")) if f.suffix.lower() in (".parquet", ".pq")
                 and f.is_file() and not f.name.startswith(".")),
                None,
            )
            if nested is not None:  # a hive layout (dt=.../part.parquet), a folder per shard
                where = os.path.join(shown, "**", f"*{nested.suffix}")
                msg += (
                    f" of its own; the folders in it do ({os.fspath(nested)!r}): give INPUT "
                    f"as the recursive glob {where!r} (quoted), which reads them all (the "
                    "folder names, such as dt=..., are not read as columns)"
                )
            raise UsageProblem(msg)
        return "parquet", files
    kind = file_format(given)
    if not glob.has_magic(shown):
        msg = f"input file {shown!r} does not exist"
        raise UsageProblem(msg)
    files = sorted(Path(f) for f in glob.glob(shown, recursive=True) if Path(f).is_file())
    if not files:
        msg = f"input {shown!r} does not exist, nor matches any file as a glob pattern"
        raise UsageProblem(msg)
    others = [f.name for f in files if file_format(f) != kind]
    if others:
        msg = f"input {shown!r} matches files of another format than {kind}: {others[:3]!r}"
        raise UsageProblem(msg)
    return kind, files


def read_frame(path: str | os.PathLike[str]) -> pl.LazyFrame:
    r"""Scan INPUT lazily; its format comes from the extension.

    All reading of ``run`` goes through here (and all writing through :func:`write_frame`),
    so that a streaming ``run`` can keep the LazyFrame and sink it. INPUT is a file, a
    folder of Parquet files or a glob (:func:`input_files`); each file is read as itself,
    never as a pattern.

    A CSV file is read without type inference: every column is text, exactly as the file
    has it. A prompt then says what the file says (a zip code ``00501`` stays ``00501``,
    not ``501``), the output gets the same text back, and a value far down a column that
    does not fit the type its first rows suggest cannot fail the run halfway. NDJSON and
    Parquet carry their own types (``"00501"`` is a JSON string) and are read as typed,
    NDJSON's inferred from every line (:func:`_scan_ndjson`), not the first 100.
    A CSV file is also parsed whole once here (a streaming pass over every field), so
    that a broken line anywhere in it (a row with more fields than the header, an
    unclosed quote, bytes that are not UTF-8) is a :class:`UsageProblem` before anything
    is sent, not an error after the chunks before it were paid for.

    Examples
    --------
    >>> import tempfile
    >>> csv = Path(tempfile.mkdtemp()) / "in.csv"
    >>> _ = csv.write_text("zip,n\n00501,1.0\n")
    >>> read_frame(csv).collect().row(0)
    ('00501', '1.0')
    """
    kind, files = input_files(path)
    shown = os.fspath(path)
    try:
        if kind == "parquet":
            lazy = _scan_parquet(files, shown)
        elif kind == "csv":
            lazy = pl.scan_csv(files, glob=False, infer_schema=False, empty_string_is_null=False)
        else:
            lazy = _scan_ndjson(files, shown)
        if kind == "csv":  # every file's columns, up front: never a failure halfway
            for file in files:
                _check_csv_header(file)
            header = _csv_names(files[0])
            for file in files[1:]:
                names = _csv_names(file)
                if names != header:
                    _refuse_columns(file, files[0], shown, names, header)
        schema = lazy.collect_schema()  # reads the header/metadata: a broken file fails here
        if kind == "csv":
            _check_csv_names(schema.names(), shown)
        if kind == "csv":
            # Every field parsed once, before anything is sent (a streaming pass: ~0.1 s
            # of CPU for 1M rows): a broken line far down the file would otherwise fail
            # the run after the chunks before it were paid for.
            lazy.select(pl.all().null_count()).collect(engine="streaming")
    except (pl.exceptions.PolarsError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        msg = f"cannot read {shown!r} as {kind}: {first}"
        if kind == "csv":
            where = _csv_broken_line(files) if isinstance(e, pl.exceptions.PolarsError) else None
            if where is not None:
                file, line, what = where
                of = "" if len(files) == 1 else f" of {os.fspath(file)!r}"
                msg += f" (line {line}{of}: {what})"
            msg += (
                "; fix the file (UTF-8 text, quotes closed, no row with more fields than "
                "the header) and run again. Nothing was sent"
            )
        raise UsageProblem(msg) from e
    return lazy


def _csv_names(file: Path) -> list[str]:
    """The column names of CSV ``file``, as its scan reads them."""
    return pl.scan_csv(
        file, glob=False, infer_schema=False, empty_string_is_null=False
    ).collect_schema().names()


def _scan_parquet(files: Sequence[Path], shown: str) -> pl.LazyFrame:
    """Scan Parquet ``files`` as one input, as ``pl.scan_parquet`` of a glob reads them.

    Every file's footer is read first (milliseconds each), so that a file that does not
    fit is refused before anything is sent, naming what differs and the fix. Taken, as
    Polars takes them: the same columns in another order (a Spark job's part files), and
    a column that is all null in a file (Polars' ``Null`` type) beside that column's
    type in the others, in any file (Polars itself refuses a ``Null`` column in the
    first file): the scan is given the columns of the first file, each of the type its
    values have. Refused: a column missing or added, or one typed differently (Int32 in
    one file, Int64 in another), which Polars refuses too.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> pl.DataFrame({"id": [1], "text": [None]}).write_parquet(folder / "a.parquet")
    >>> pl.DataFrame({"text": ["b"], "id": [2]}).write_parquet(folder / "b.parquet")
    >>> _scan_parquet([folder / "a.parquet", folder / "b.parquet"], "in").collect().rows()
    [(1, None), (2, 'b')]
    """
    from batchata_df.stream import footer_schema

    schemas = [footer_schema(f) for f in files]
    first = schemas[0]
    merged = dict(first)
    typed_by = dict.fromkeys(first, files[0])  # the file each column's type comes from
    for file, schema in zip(files[1:], schemas[1:], strict=True):
        if set(schema) != set(first):
            _refuse_columns(file, files[0], shown, list(schema), list(first))
        for name, dtype in schema.items():
            if dtype == pl.Null or dtype == merged[name]:
                continue
            if merged[name] == pl.Null:
                merged[name], typed_by[name] = dtype, file
                continue
            other = os.fspath(typed_by[name])
            msg = (
                f"column {name!r} is {dtype} in {os.fspath(file)!r} but {merged[name]} in "
                f"{other!r} (files of {shown!r}): Polars reads the files of one input with "
                "one type per column (a column all null in a file excepted). Rewrite one of "
                f"them with {name!r} as the other's type, e.g. pl.read_parquet(FILE)"
                f".with_columns(pl.col({name!r}).cast(pl.{merged[name]})).write_parquet(FILE), "
                "or give INPUT as a glob of the files of one table. Nothing was sent"
            )
            raise UsageProblem(msg)
    if len(files) == 1:
        return pl.scan_parquet(list(files), glob=False)
    return pl.scan_parquet(list(files), glob=False, schema=merged)


def _refuse_columns(
    file: Path, first: Path, shown: str, names: Sequence[str], expected: Sequence[str]
) -> None:
    """Refuse a file of INPUT whose columns are not those of its first file, saying how."""
    lacks = [n for n in expected if n not in names]
    extra = [n for n in names if n not in expected]
    what: list[str] = []
    if lacks:
        what.append(f"it lacks {', '.join(map(repr, lacks))}")
    if extra:
        what.append(f"it has {', '.join(map(repr, extra))} besides")
    fix = (
        "every file of one input needs the same columns; rewrite it, or give INPUT as a "
        "glob of the files of one table"
    )
    if not what:  # a CSV file: the same names in another order
        what.append(f"the same columns in another order ({', '.join(names)})")
        fix = (
            "CSV files are read by position: write every file with the header of the first, "
            f"{', '.join(expected)}"
        )
    msg = (
        f"{os.fspath(file)!r} has other columns than {os.fspath(first)!r} (the first file "
        f"of {shown!r}): {'; '.join(what)}; {fix}. Nothing was sent"
    )
    raise UsageProblem(msg)


def _csv_broken_line(files: Sequence[Path]) -> tuple[Path, int, str] | None:
    r"""The first broken line of CSV ``files``: file, line and what is wrong (or ``None``).

    The line is 1-based and counted as an editor counts lines; ``None`` when this reading
    finds nothing wrong.

    Polars says what is wrong but not where (its byte offset is that of its parse chunk).
    Called only once reading has failed, so the line is found by a second, slower read:
    every line decoded as UTF-8 (a line holds whole characters: no UTF-8 sequence contains
    a newline byte), then the rows parsed by :mod:`csv` with Polars' quoting (``"``, a
    doubled ``""`` inside quotes), each row's fields counted against the header's. A row
    that spans lines (a quoted line break) is named by the line it starts on; text after
    its closing quote by the line that quote is on. :mod:`csv`'s field size limit (128K
    characters, which Polars does not have) is lifted while reading, and put back.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.csv").write_text('id,text\n1,"two\nlines"\n2,b,extra\n')
    >>> _csv_broken_line([folder / "a.csv"])[1:]
    (4, '3 fields, the header has 2')
    >>> _ = (folder / "b.csv").write_bytes(b'id,text\n1,a\n2,"b\n3,c\n')
    >>> _csv_broken_line([folder / "b.csv"])[1:]
    (3, 'a quote opened here is never closed')
    >>> _ = (folder / "c.csv").write_text('id,text\n1,"two\nlines" and more\n2,b\n')
    >>> _csv_broken_line([folder / "c.csv"])[1:]
    (3, 'text after a closing quote (a quote inside a field is written ""; the field opened on line 2)')
    """  # noqa: E501
    import csv

    limit = csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        for file in files:
            found = _csv_broken_line_of(file)
            if found is not None:
                return found
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    finally:
        csv.field_size_limit(limit)
    return None


def _csv_broken_line_of(file: Path) -> tuple[Path, int, str] | None:
    """:func:`_csv_broken_line` of one file (``None``: nothing found)."""
    import csv

    with open(file, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return file, number, f"byte {e.start + 1} of the line is not UTF-8"
    with open(file, encoding="utf-8", newline="") as text:
        reader = csv.reader(text, strict=True)
        header = next(reader, None)
        width = len(header) if header is not None else 0
        start = reader.line_num + 1
        try:
            for row in reader:
                if len(row) > width:
                    what = f"{len(row)} fields, the header has {width}"
                    return file, start, what
                start = reader.line_num + 1
        except csv.Error as e:
            if "expected after" in str(e):
                what = 'text after a closing quote (a quote inside a field is written ""'
                if reader.line_num > start:
                    what += f"; the field opened on line {start}"
                return file, reader.line_num, what + ")"
            if "end of data" in str(e):
                return file, start, "a quote opened here is never closed"
            return file, reader.line_num, str(e)
    return None


CSV_HEADER_PROBE_BYTES = 1 << 20
"""Bytes read from the start of a CSV file to check that its header line is UTF-8 text."""


def _check_csv_header(file: Path) -> None:
    r"""Refuse a CSV file whose header line is not UTF-8 text (Polars would rename it).

    A header byte that is not UTF-8 became U+FFFD in the column's name, and the run went
    on with a column the user never named; the rows are checked by the parse that follows.

    Examples
    --------
    >>> import tempfile
    >>> csv = Path(tempfile.mkdtemp()) / "in.csv"
    >>> _ = csv.write_bytes(b"id,caf\xe9\n1,2\n")
    >>> _check_csv_header(csv)
    Traceback (most recent call last):
    ...
    batchata_df.cli.UsageProblem: the header line of ...in.csv' is not UTF-8 text ...
    """
    with open(file, "rb") as handle:
        head = handle.read(CSV_HEADER_PROBE_BYTES)
    line, newline, _ = head.partition(b"\n")
    try:  # no newline in the probe: it may end inside a character, which is not an error
        codecs.getincrementaldecoder("utf-8")().decode(line, final=bool(newline))
    except UnicodeDecodeError as e:
        msg = (
            f"the header line of {os.fspath(file)!r} is not UTF-8 text (byte {e.start}); "
            "save the file as UTF-8 and run again. Nothing was sent"
        )
        raise UsageProblem(msg) from None


def _check_csv_names(names: Sequence[str], shown: str) -> None:
    r"""Refuse a CSV header that ran into the rows: a column name holding a line break.

    An unclosed quote in the header line, or lines ended by a bare CR (``\r``), made
    Polars read the whole file as the header: no rows, and the run ended with exit 0
    having written an empty OUTPUT.

    Examples
    --------
    >>> _check_csv_names(["id", "text"], "in.csv")
    >>> _check_csv_names(["id", "text\r0"], "in.csv")
    Traceback (most recent call last):
    ...
    batchata_df.cli.UsageProblem: the header of 'in.csv' runs into its rows ...
    """
    broken = [name for name in names if "\n" in name or "\r" in name]
    if broken:
        msg = (
            f"the header of {shown!r} runs into its rows (a column named "
            f"{broken[0][:40]!r}...): the header line has an unclosed quote, or the lines end "
            "with a bare CR (\\r) and not LF or CRLF; fix the file and run again. Nothing "
            "was sent"
        )
        raise UsageProblem(msg)


def _scan_ndjson(files: Sequence[Path], shown: str) -> pl.LazyFrame:
    """Scan NDJSON ``files`` with each column's type inferred from every line of every file.

    Polars infers from the first 100 lines (of the first file) by default: a column of
    integers that holds a string, or a float, further down failed the run halfway, after
    the chunks before it were paid for. Inferred from the whole input (one parsing pass
    before anything is sent, ~0.5 s of CPU per million short lines), such a column takes
    the type that holds every value (integers and strings: text, ``118`` as ``"118"``;
    integers and floats: floats), and a line that is not JSON is found before sending.
    NDJSON is not read as text as CSV is: it carries nested values (``--history``) and
    its numbers are numbers.
    """
    # scan_ndjson has no ``glob=False`` (polars 2.1): the names go in escaped.
    names = [glob.escape(os.fspath(f)) for f in files]
    schemas = [pl.scan_ndjson(n, infer_schema_length=None).collect_schema() for n in names]
    first = schemas[0]
    for file, schema in zip(files[1:], schemas[1:], strict=True):
        if set(schema) != set(first):
            msg = (
                f"{os.fspath(file)!r} has other columns than {os.fspath(files[0])!r} "
                f"(the first file of {shown!r}): {list(schema)!r} against {list(first)!r}"
            )
            raise UsageProblem(msg)
    # The type that holds every file's values (as one file's inference would pick it).
    merged = pl.concat(
        [pl.DataFrame(schema={c: s[c] for c in first}) for s in schemas],
        how="vertical_relaxed",
    ).schema
    return pl.scan_ndjson(names, schema=merged)


def _json_text(column: str) -> pl.Expr:
    """A nested column as JSON text (null stays null), for CSV."""
    as_json = (
        pl.struct(pl.col(column).alias("v"))
        .struct.json_encode()
        .str.strip_prefix('{"v":')
        .str.strip_suffix("}")
    )
    return pl.when(pl.col(column).is_null()).then(None).otherwise(as_json).alias(column)


def write_frame(frame: pl.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write ``frame`` in the format of ``path``'s extension, atomically.

    CSV cannot hold nested values: list and struct columns (list fields, ``*_citations``)
    are written as JSON text. The file appears under its name only when complete; until
    then it is in a hidden folder beside it, which a process killed meanwhile leaves and
    the next writer of the same file removes (:func:`batchata_df.stream.hidden_folder`).
    """
    from batchata_df.stream import hidden_folder

    kind = file_format(path)
    target = Path(path)
    with hidden_folder(target) as folder:
        tmp = folder / target.name
        if kind == "parquet":
            frame.write_parquet(tmp)
        elif kind == "csv":
            nested = [
                name
                for name, dtype in frame.schema.items()
                if isinstance(dtype, pl.List | pl.Array | pl.Struct)
            ]
            frame.with_columns(_json_text(c) for c in nested).write_csv(tmp)
        else:
            frame.write_ndjson(tmp)
        os.replace(tmp, target)


# -- options ----------------------------------------------------------------------------------


def load_schema(spec: str) -> type[BaseModel]:
    """Import ``module:Class`` (or ``path/to/file.py:Class``); the working dir is importable."""
    from pydantic import BaseModel

    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        msg = f"--schema must look like 'module:ClassName' (e.g. models:Ticket), got {spec!r}"
        raise UsageProblem(msg)
    try:
        if module_name.endswith(".py"):
            file = Path(module_name)
            if not file.is_file():
                msg = f"--schema {spec!r}: file {module_name!r} does not exist"
                raise UsageProblem(msg)
            loader_spec = importlib.util.spec_from_file_location(file.stem, file)
            if loader_spec is None or loader_spec.loader is None:
                msg = f"--schema {spec!r}: cannot load {module_name!r} as Python"
                raise UsageProblem(msg)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[file.stem] = module
            loader_spec.loader.exec_module(module)
        else:
            # Like `python -m`: the working directory is importable, without PYTHONPATH.
            cwd = os.getcwd()
            if cwd not in sys.path:
                sys.path.insert(0, cwd)
            module = importlib.import_module(module_name)
    except UsageProblem:
        raise
    except ModuleNotFoundError as e:
        raise UsageProblem(_not_found(spec, module_name, e)) from e
    except ImportError as e:
        own = Path(module_name).stem if module_name.endswith(".py") else module_name
        if e.name and e.name != own and not own.startswith(e.name + "."):
            # ``from pkg import Name`` in the schema's module: pkg was found, Name was not.
            msg = (
                f"--schema {spec!r}: {module_name!r} imports a name {e.name!r} does not have "
                f"({e}); fix that import in {module_name!r}, or install a version of "
                f"{e.name!r} that has it"
            )
        else:
            msg = (
                f"--schema {spec!r}: cannot import {module_name!r} ({e}); run from the "
                "folder that holds it, or give a file: --schema path/to/models.py:ClassName"
            )
        raise UsageProblem(msg) from e
    except Exception as e:
        msg = f"--schema {spec!r}: importing {module_name!r} failed: {type(e).__name__}: {e}"
        raise UsageProblem(msg) from e
    obj = getattr(module, attr, None)
    if obj is None:
        names = sorted(
            n for n, v in vars(module).items()
            if isinstance(v, type) and issubclass(v, BaseModel) and v is not BaseModel
        )
        msg = f"--schema {spec!r}: {module_name!r} has no {attr!r} (models there: {names!r})"
        raise UsageProblem(msg)
    if not (isinstance(obj, type) and issubclass(obj, BaseModel)):
        msg = f"--schema {spec!r} is not a pydantic BaseModel subclass"
        raise UsageProblem(msg)
    return obj


def _not_found(spec: str, module_name: str, e: ModuleNotFoundError) -> str:
    """What a ``ModuleNotFoundError`` importing ``--schema``'s module means, and the fix.

    The schema's module (or a package it is in) missing: run from its folder, or give the
    file. Another module missing is one the schema's module imports: install it (or, in
    the schema's own package, a module of it that does not exist).

    Examples
    --------
    >>> print(_not_found("mymod:M", "mymod", ModuleNotFoundError(name="thatpkg.sub")))
    --schema 'mymod:M': 'mymod' imports 'thatpkg.sub', which is not installed; install it (e.g. `pip install thatpkg`) in the environment that runs batchata-df, then run again
    """  # noqa: E501
    own = Path(module_name).stem if module_name.endswith(".py") else module_name
    missing = e.name
    ours = missing is not None and (own == missing or own.startswith(missing + "."))
    if missing is None or ours:
        return (
            f"--schema {spec!r}: cannot import {module_name!r} ({e}); run from the folder "
            "that holds it, or give a file: --schema path/to/models.py:ClassName"
        )
    if missing.split(".")[0] == own.split(".")[0]:
        return (
            f"--schema {spec!r}: {module_name!r} imports {missing!r}, which does not exist "
            f"in its package ({e}); fix that import in {module_name!r}"
        )
    top = missing.split(".")[0]
    if top != missing and top in sys.modules:  # imported: ``import pkg.nosuchmodule``
        return (
            f"--schema {spec!r}: {module_name!r} imports {missing!r}, which the installed "
            f"{top!r} does not have; fix that import in {module_name!r}, or install a "
            f"version of {top!r} that has it"
        )
    return (
        f"--schema {spec!r}: {module_name!r} imports {missing!r}, which is not installed; "
        f"install it (e.g. `pip install {missing.split('.')[0]}`) in the environment that "
        "runs batchata-df, then run again"
    )


def parse_params(params_json: str | None, pairs: Sequence[str], max_tokens: int | None) -> dict[
    str, Any
]:
    """``--params JSON``, each ``--param k=v`` (v as JSON, else text) and ``--max-tokens``.

    A parameter given twice (in ``--params`` and a ``--param``, in two ``--param`` s, or as
    ``max_tokens`` beside ``--max-tokens``) is refused, naming both: which one wins would
    be a guess.

    Examples
    --------
    >>> parse_params('{"temperature": 0.2}', ["seed=7", "stop=END"], 300)
    {'temperature': 0.2, 'seed': 7, 'stop': 'END', 'max_tokens': 300}
    >>> parse_params('{"temperature": 0}', ["temperature=1"], None)
    Traceback (most recent call last):
    ...
    batchata_df.cli.UsageProblem: temperature is given twice: in --params '{"temperature": 0}' and as --param temperature=1; give it once (which one should win is ambiguous). Nothing was sent
    """  # noqa: E501
    out: dict[str, Any] = {}
    given: dict[str, str] = {}  # parameter -> how it was given, for the error

    def put(key: str, value: Any, how: str) -> None:
        if key in given:
            msg = (
                f"{key} is given twice: {given[key]} and {how}; give it once (which one "
                "should win is ambiguous). Nothing was sent"
            )
            raise UsageProblem(msg)
        given[key] = how
        out[key] = value

    if params_json:
        try:
            loaded = json.loads(params_json)
        except ValueError as e:
            msg = f"--params must be a JSON object like '{{\"temperature\": 0}}': {e}"
            raise UsageProblem(msg) from e
        if not isinstance(loaded, dict):
            msg = (
                f"--params must be a JSON object like '{{\"temperature\": 0}}', "
                f"got {params_json!r}"
            )
            raise UsageProblem(msg)
        for name, given_value in loaded.items():
            put(name, given_value, f"in --params {params_json!r}")
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            msg = f"--param takes NAME=VALUE (e.g. --param temperature=0), got {pair!r}"
            raise UsageProblem(msg)
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        put(key.strip(), value, f"as --param {pair}")
    if max_tokens is not None:
        put("max_tokens", max_tokens, f"as --max-tokens {max_tokens}")
    return out


MAX_PRICE_PER_MTOK = 100_000.0
"""The largest ``--price`` rate taken, USD per million tokens: far above any model's (the
dearest listed are hundreds), low enough that a typo like ``1e308`` is refused, not
turned into a summary of ``$inf``."""


def parse_prices(specs: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Each ``--price MODEL=INPUT,OUTPUT`` (batch USD per million tokens) as ``prices=``.

    Examples
    --------
    >>> parse_prices(["gpt-6-terra=1.25,10", "my-model=0,0.5"])
    {'gpt-6-terra': (1.25, 10.0), 'my-model': (0.0, 0.5)}
    >>> parse_prices(["gpt-6-terra=1.25"])
    Traceback (most recent call last):
    ...
    batchata_df.cli.UsageProblem: --price takes MODEL=INPUT,OUTPUT in USD per million tokens (batch prices), e.g. --price gpt-6-terra=1.25,10; got 'gpt-6-terra=1.25'
    >>> parse_prices(["m=1e308,1e308"])
    Traceback (most recent call last):
    ...
    batchata_df.cli.UsageProblem: --price takes MODEL=INPUT,OUTPUT in USD per million tokens (batch prices), e.g. --price gpt-6-terra=1.25,10; got 'm=1e308,1e308'
    """  # noqa: E501
    out: dict[str, tuple[float, float]] = {}
    for spec in specs:
        model, sep, rates = spec.rpartition("=")
        parts = rates.split(",")
        try:
            values = tuple(float(x) for x in parts)
        except ValueError:
            values = ()
        if not sep or not model.strip() or len(values) != 2 or "_" in rates or not all(
            math.isfinite(v) and 0 <= v <= MAX_PRICE_PER_MTOK for v in values
        ):
            msg = (
                "--price takes MODEL=INPUT,OUTPUT in USD per million tokens (batch prices), "
                f"e.g. --price gpt-6-terra=1.25,10; got {spec!r}"
            )
            raise UsageProblem(msg)
        out[model.strip()] = (values[0], values[1])
    return out


def _check_prices_used(prices: Mapping[str, object], model: str) -> None:
    """Refuse a ``--price`` for a model this run never prices (a typo), as ``prices=`` is.

    The run has one model: a price is used when it names it (as ``--model`` does, with or
    without ``provider:``), or the successor the provider routes it to
    (:meth:`~batchata_df.cost.PriceTable.priced_by`; that one is not a typo). A wrong
    ``--model`` is left to the run, which names the fix.
    """
    from batchata_df.cost import PriceTable
    from batchata_df.jobs import parse_model

    bare = _bare_model(model)
    try:
        used = PriceTable.priced_by(parse_model(model)[0], bare)
    except BatchataError:
        used = frozenset({bare})
    stray = sorted(set(prices) - used)
    if stray:
        close = difflib.get_close_matches(stray[0], sorted(used), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        msg = (
            f"--price {stray[0]}=...: this run's model is {bare!r} (--model); a price for "
            f"another model would be ignored{hint}. Name the model as --model does"
        )
        raise UsageProblem(msg)


def _bare_model(model: str) -> str:
    """``model`` without a ``provider:`` prefix (the name prices are keyed by)."""
    provider, sep, name = model.partition(":")
    return name if sep and provider in ("openai", "anthropic", "gemini") else model


class Duration(click.ParamType):  # type: ignore[type-arg]
    """Seconds, or a number with ``s``, ``m`` or ``h`` (``90``, ``90s``, ``10m``, ``1.5h``)."""

    name = "duration"
    _units: ClassVar[dict[str, float]] = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        """Parse a duration into seconds."""
        if isinstance(value, int | float):
            return float(value)
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", str(value))
        if not match or float(match.group(1)) <= 0:
            self.fail(f"{value!r} is not a positive duration like 90, 90s, 10m or 1.5h", param, ctx)
        return float(match.group(1)) * self._units[match.group(2)]


def _debug_option(f: F) -> F:
    return click.option(
        "--debug",
        is_flag=True,
        default=False,
        expose_value=False,
        is_eager=True,
        callback=_set_debug,
        help="Print the full traceback on errors.",
    )(f)


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(dict)["debug"] = True
        os.environ["BATCHATA_DF_DEBUG"] = "1"


def _debug() -> bool:
    return os.environ.get("BATCHATA_DF_DEBUG", "") not in ("", "0")


# -- the group --------------------------------------------------------------------------------


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("batchata-df")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="""\b
Examples:
  batchata-df run tickets.parquet out.parquet --schema models:Ticket \\
      --model gpt-6-luna --prompt "Classify: {text}" --max-cost-usd 5
  batchata-df status out.parquet.state
  batchata-df sql "select status, count(*) from jobs group by all" out.parquet.state
  batchata-df cancel out.parquet.state
  batchata-df doctor out.parquet.state

Run 'batchata-df COMMAND --help' for a command's options and exit codes.""",
)
@click.version_option(_version(), "--version", "-V", prog_name="batchata-df")
@_debug_option
def cli() -> None:
    """Run the rows of a file through an LLM provider's batch API, at batch prices.

    Parquet, CSV or NDJSON in and out; OpenAI, Anthropic and Gemini models; checkpoints,
    resume without paying twice, and a hard cost cap.
    """


# -- run --------------------------------------------------------------------------------------

_RUN_EPILOG = """\b
Formats (from the extension): .parquet/.pq, .csv, .ndjson/.jsonl. CSV input is read as
text, every column as the file has it (00501 stays 00501). In CSV output, list and struct
columns (list fields, *_citations) are written as JSON text.

\b
Exit codes:
  0    every row completed (also: a dry run)
  1    error after the checks: damaged state folder (see 'repair'), provider, output
       not writable, bug (--debug shows the traceback)
  2    usage error: bad option, input (a broken CSV line), format, column, schema,
       price, OUTPUT or --state not writable, OUTPUT the INPUT itself; nothing was sent
  3    some rows failed (see the _error column; --retry-failed sends them again)
  4    some rows were cancelled (cost cap, time limit, provider); run again to send them
  5    some rows are still pending (--no-wait): run the same command again to collect
  75   another call is writing the state folder, or another run OUTPUT: try later, or
       --lock-timeout SECONDS
  130  interrupted (Ctrl+C); the output is written only with --write-partial
  When several apply, the highest of 5, 4, 3 wins.

\b
Examples:
  # models.py in the current folder defines `class Ticket(BaseModel)`
  batchata-df run tickets.parquet out.parquet --schema models:Ticket \\
      --model gpt-6-luna --prompt "Route this ticket: {subject} {body}" \\
      --param reasoning_effort=none --param temperature=0 --max-tokens 500 \\
      --max-cost-usd 10
  # one PDF path per row in column `path`, answers with citations
  batchata-df run invoices.csv out.jsonl --schema models:Invoice \\
      --model claude-haiku-4-5 --prompt "Extract the invoice" --files path --citations
  # what would it (still) cost? OUTPUT is not written; --plan plan.csv writes the plan
  batchata-df run big.parquet out.parquet --model gpt-6-luna --prompt "{text}" --dry-run
  # submit and return; collect later with the same command
  batchata-df run big.parquet out.parquet --model gpt-6-luna --prompt "{text}" --no-wait
"""


@cli.command(epilog=_RUN_EPILOG, no_args_is_help=True,
             short_help="Run a Parquet/CSV/NDJSON file through a model, write the result.")
@click.argument("input_path", metavar="INPUT", type=click.Path())
@click.argument("output_path", metavar="[OUTPUT]", type=click.Path(dir_okay=False),
                required=False)
@click.option("--model", required=True, help="Model, e.g. gpt-6-luna, claude-haiku-4-5, "
              "gemini-3.5-flash-lite, or provider:model.")
@click.option("--prompt", required=True,
              help="Prompt template over the input's columns, e.g. 'Classify: {text}' "
              "(write literal braces as {{ }}).")
@click.option("--schema", "schema_spec", metavar="MODULE:CLASS",
              help="Pydantic model of the answer, e.g. models:Ticket (models.py in the current "
              "folder) or path/to/models.py:Ticket. Without it: one text column 'response'.")
@click.option("--system", help="System prompt (a template over columns, like --prompt).")
@click.option("--state", type=click.Path(file_okay=False),
              help="Checkpoint folder; running again with it resumes without paying twice. "
              "Default: OUTPUT.state next to the output (when OUTPUT is a symbolic link: "
              "next to the file it points to, TARGET.state).")
@click.option("--files", "files_column", metavar="COLUMN",
              help="Column with a file path per row (PDF, text, DOCX, images) sent with the "
              "prompt.")
@click.option("--history", "history_column", metavar="COLUMN",
              help="Column with the earlier turns of a conversation per row: a list of "
              "{role: user|assistant, content} (NDJSON or Parquet input).")
@click.option("--citations", is_flag=True,
              help="Per-field citation columns (Claude models, with --files).")
@click.option("--param", "param_pairs", multiple=True, metavar="NAME=VALUE",
              help="A model parameter; repeat it. VALUE is JSON when it parses "
              "(temperature=0, stop='[\"END\"]'), else text.")
@click.option("--params", "params_json", metavar="JSON",
              help="Model parameters as a JSON object, e.g. '{\"temperature\": 0}'.")
@click.option("--max-tokens", type=click.IntRange(min=1),
              help="Output token limit per row, thinking included; bounds the worst-case "
              "cost. Default by model: 4096 for a model that does not think, more for one "
              "that does, by reasoning_effort (16384 at medium, e.g. gpt-6-luna), at most "
              "the model's output limit: the README's Models table lists it per model, and "
              "--dry-run shows it.")
@click.option("--max-cost-usd", type=click.FloatRange(min=0, min_open=True),
              help="Hard cap on spend (this state folder's earlier calls count).")
@click.option("--price", "price_specs", multiple=True, metavar="MODEL=INPUT,OUTPUT",
              help="Batch price of a model in USD per million input and output tokens, for a "
              "model the built-in prices lack (or to replace them); repeat it. E.g. "
              "--price gpt-6-terra=1.25,10.")
@click.option("--time-limit", type=Duration(),
              help="Stop after this long (90, 90s, 10m, 1.5h): cancel batches in flight, keep "
              "finished rows.")
@click.option("--mode", type=click.Choice(["batch", "realtime", "auto"]), default="batch",
              show_default=True,
              help="batch: half price, minutes to hours. realtime: standard price, seconds. "
              "auto: batch, but small jobs (<= 50 rows) and what a batch would not finish by "
              "--deadline go realtime.")
@click.option("--deadline", type=Duration(),
              help="With --mode auto: answer every row within this long (90, 10m, 1.5h).")
@click.option("--concurrency", type=click.IntRange(min=1),
              help="Realtime requests in flight at once [default: 8].")
@click.option("--dry-run", is_flag=True,
              help="Print the plan and its worst-case cost; send nothing, and write nothing "
              "to OUTPUT (it only names the run and its state folder, OUTPUT.state: rows "
              "answered there are planned 'done', rows failed there 'failed', or 'planned' "
              "with --retry-failed).")
@click.option("--plan", "plan_path", metavar="FILE", type=click.Path(dir_okay=False),
              help="With --dry-run: write the plan, one row per input row, to FILE "
              "(.parquet, .csv, .ndjson; not OUTPUT).")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="--no-wait submits and returns; unfinished rows are 'pending' (exit 5).")
@click.option("--retry-failed", is_flag=True,
              help="Send rows that failed in an earlier call again.")
@click.option("--items-per-batch", type=click.IntRange(min=1), help="Most rows per provider batch.")
@click.option("--max-parallel-batches", type=click.IntRange(min=1), default=8, show_default=True,
              help="Most provider batches in flight at once.")
@click.option("--chunk-rows", type=click.IntRange(min=1), default=None,
              help="Rows read, sent and written at a time (memory follows it) [default: "
              "200000].")
@click.option("--progress/--no-progress", default=None,
              help="Live progress on stderr [default: on when stderr is a terminal].")
@click.option("--keep-raw", is_flag=True,
              help="Add a _raw column: the model's own answer text, also for failed rows.")
@click.option("--keep-responses", is_flag=True,
              help="Keep each request's result as the provider sent it (checkpoint and a "
              "_response column).")
@click.option("--lock-timeout", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Seconds to wait when another call is writing the state folder, or another "
              "run is writing OUTPUT.")
@click.option("--write-partial", is_flag=True,
              help="After Ctrl+C, still write the rows so far to OUTPUT (unfinished ones "
              "'cancelled').")
@_debug_option
def run(
    input_path: str,
    output_path: str | None,
    model: str,
    prompt: str,
    schema_spec: str | None,
    system: str | None,
    state: str | None,
    files_column: str | None,
    history_column: str | None,
    citations: bool,
    param_pairs: tuple[str, ...],
    params_json: str | None,
    max_tokens: int | None,
    max_cost_usd: float | None,
    price_specs: tuple[str, ...],
    time_limit: float | None,
    mode: str,
    deadline: float | None,
    concurrency: int | None,
    dry_run: bool,
    plan_path: str | None,
    wait: bool,
    retry_failed: bool,
    items_per_batch: int | None,
    max_parallel_batches: int,
    chunk_rows: int | None,
    progress: bool | None,
    keep_raw: bool,
    keep_responses: bool,
    lock_timeout: float,
    write_partial: bool,
) -> None:
    """Run each row of INPUT through a model; write the rows with typed answers to OUTPUT.

    INPUT is a file, a folder of Parquet files, or a quoted glob ('in/*.parquet'). OUTPUT
    gets every input column, one column per schema field, then _status, _error,
    _cost_usd, _input_tokens, _output_tokens, _job_id, _batch_id, _mode.
    """
    if output_path is None and not dry_run:
        msg = "missing OUTPUT (the file to write the result to), e.g. out.parquet"
        raise UsageProblem(msg)
    if plan_path is not None and not dry_run:
        msg = (
            f"--plan writes a dry run's plan: add --dry-run to write it to {plan_path!r} "
            "(a run writes its result to OUTPUT). Nothing was sent"
        )
        raise UsageProblem(msg)
    _, inputs = input_files(input_path)
    kind = "parquet"
    if output_path is not None:
        kind = file_format(output_path)  # of the name given: a link's file may have none
        output_path = _output_target(output_path, inputs, input_path, "OUTPUT")
    plan_kind, shown_plan = "parquet", plan_path
    if plan_path is not None:
        plan_kind = file_format(plan_path)
        plan_path = _output_target(plan_path, inputs, input_path, "--plan")
        from batchata_df.stream import same_file

        if output_path is not None and same_file(Path(plan_path), Path(output_path)):
            msg = (
                f"--plan {shown_plan!r} is OUTPUT: the plan would replace the run's result. "
                "Write the plan to another file. Nothing was sent"
            )
            raise UsageProblem(msg)
    schema = load_schema(schema_spec) if schema_spec else None
    params = parse_params(params_json, param_pairs, max_tokens)
    prices = {_bare_model(k): v for k, v in parse_prices(price_specs).items()}
    _check_prices_used(prices, model)
    if state is not None and not state.strip():
        msg = (
            "--state '' names no folder (it would be the working folder); pass --state "
            "FOLDER, or leave it out for OUTPUT.state beside OUTPUT. Nothing was sent"
        )
        raise UsageProblem(msg)
    if state is None and output_path is not None:
        state = f"{output_path}.state"
    if plan_path is not None and state is not None:
        folder = Path(state).resolve()
        if folder == Path(plan_path).resolve() or folder in Path(plan_path).resolve().parents:
            msg = (
                f"--plan {shown_plan!r} is inside the state folder {state!r}: the plan "
                "would overwrite or sit among its checkpoint files. Write the plan to a "
                "file outside it. Nothing was sent"
            )
            raise UsageProblem(msg)
    if state is not None and not dry_run:  # a dry run only reads the folder
        _check_state_writable(state)
    lazy = read_frame(input_path)
    bare = _bare_model(model)
    from batchata_df.frame import batch_llm

    # A dry run is for reading its summary: shown unless --no-progress.
    show = (dry_run or sys.stderr.isatty()) if progress is None else progress
    # A run (and a dry run) streams: the input is read in chunks and the result written to
    # a Parquet file as it goes (then renamed to OUTPUT, or converted for CSV/NDJSON), so
    # memory does not grow with the input. That file is in a hidden folder beside OUTPUT,
    # removed when the run ends; a run killed meanwhile leaves it and the next run writing
    # OUTPUT removes it, never a live run's (see `_scratch`). A dry run writes its plan
    # beside --plan FILE, else to a temporary folder for the summary: never to OUTPUT,
    # which may hold a finished result (and a pipeline would read the plan as answers).
    target = plan_path if dry_run else output_path
    with _scratch(target, state=state, lock_timeout=lock_timeout) as folder:
        sink = str(folder / "result.parquet")
        # Realtime and auto runs are not streamed (they answer in memory); their result (or
        # plan) is written to the same Parquet target so that what follows is the same.
        streamed = mode == "batch"
        with _in_cli_words(state, lock_timeout):
            # What the folder had billed before this run: the summary tells this run's
            # spending from the folder's in all. Read with OUTPUT held (above) and the
            # folder's writer lock (waited for as the run would): a run that waited for
            # another one counted that one's answers as its own.
            before = _bill_before(state, bare, prices, dry_run=dry_run, wait=lock_timeout)
            out = batch_llm(
                lazy if streamed else lazy.collect(),
                sink=sink if streamed else None,
                chunk_rows=chunk_rows if streamed else None,
                schema=schema,
                model=model,
                prompt=prompt,
                system=system,
                state=state,
                files=files_column,
                citations=citations,
                params=params or None,
                max_cost_usd=max_cost_usd,
                time_limit=time_limit,
                dry_run=dry_run,
                items_per_batch=items_per_batch,
                max_parallel_batches=max_parallel_batches,
                wait=wait,
                progress=show,
                retry_failed=retry_failed,
                lock_timeout=lock_timeout,
                history=history_column,
                keep_raw=keep_raw,
                keep_responses=keep_responses,
                mode=mode,  # type: ignore[arg-type]  # click.Choice checked it
                deadline=deadline,
                concurrency=concurrency,
                prices=prices or None,
            )
        if not streamed:
            assert isinstance(out, pl.DataFrame)
            out.write_parquet(sink)
            out = pl.scan_parquet(sink, glob=False)
        if dry_run:
            if plan_path is not None:
                if streamed:  # the plan is in a file of its own: a dry run never writes sink=
                    out.sink_parquet(sink)
                _finish_output(sink, plan_path, plan_kind)
                _note(f"plan written to {shown_plan}")
            elif output_path is not None:
                _note(
                    f"dry run: {output_path} was not written (a dry run never writes OUTPUT); "
                    "--plan FILE writes the plan"
                )
            raise SystemExit(EXIT_OK)
        assert output_path is not None
        # A row the provider answered (it has token counts) without a cost: no price is
        # known for its model. Its cost is unknown, not $0.
        totals = out.select(
            pl.col("_status").value_counts().implode(),  # one row, even for no rows
            (pl.col("_error") == "cancelled: interrupted").any().alias("interrupted"),
        )
        summed = totals.collect(engine="streaming")
        counts = {
            row["_status"]: row["count"] for row in summed.get_column("_status")[0].to_list()
        }
        interrupted = bool(summed.get_column("interrupted")[0])
        summary = ", ".join(f"{counts[k]} {k}" for k in sorted(counts))
        assert state is not None  # OUTPUT.state without --state
        cost = _cost_summary(before, folder_bill(state, bare, prices), bare)
        if interrupted and not write_partial:
            _note(
                f"interrupted: {summary} ({cost}); {output_path} was NOT written. Finished "
                f"rows are kept in {state}: run the same command again to resume, or pass "
                "--write-partial"
            )
            raise SystemExit(EXIT_INTERRUPTED)
        try:
            _finish_output(sink, output_path, kind)
        except OSError as e:
            msg = (
                f"cannot write {output_path}: {e}. The results are kept in {state}: run the same "
                "command with a writable OUTPUT (nothing is sent or paid again)"
            )
            raise BatchataError(msg) from e
        _note(f"{summary}; {cost}; written to {output_path} (state: {state})")
        if interrupted:
            raise SystemExit(EXIT_INTERRUPTED)
        if counts.get("pending"):
            raise SystemExit(EXIT_PENDING)
        if counts.get("cancelled"):
            raise SystemExit(EXIT_CANCELLED)
        if counts.get("failed"):
            raise SystemExit(EXIT_FAILED)
        raise SystemExit(EXIT_OK)


@contextlib.contextmanager
def _scratch(
    output_path: str | None, *, state: str | None = None, lock_timeout: float = 0.0
) -> Iterator[Path]:
    """The folder a run writes its result in before it becomes OUTPUT (removed after).

    Beside OUTPUT (so that the result is renamed to it, never half written under its
    name): :func:`batchata_df.stream.hidden_folder`, locked while the run lives, which the
    next run (or streaming call) writing OUTPUT removes if this one is killed (for a dry
    run, ``output_path`` is its ``--plan`` file). Without one (a dry run's summary) a
    temporary folder.

    Two runs writing one OUTPUT with different state folders would each send every row
    (and the last rename wins): so a run that finds another live writer of OUTPUT (its
    locked hidden folder, a ``sink=`` call's, which it holds for the whole call, or a
    ``sink=`` call's locked hidden file) gives its own folder
    up and waits up to ``lock_timeout`` seconds for it to finish, then raises
    :class:`Busy`, before anything is sent. Each run makes its folder *before* it looks
    for others, so of two starting at once at least one sees the other (both may, and
    then both wait or refuse; never both send).

    Raises
    ------
    UsageProblem
        OUTPUT's folder cannot be written (or created): nothing was sent.
    Busy
        Another run is writing OUTPUT past ``lock_timeout``.
    """
    from batchata_df.stream import describe_writer, live_writers, plan_folder, record_writer

    if output_path is None:  # in TMPDIR, swept if this process is killed
        with plan_folder() as plan:
            yield plan
        return
    target = Path(output_path)
    deadline = time.monotonic() + lock_timeout
    waiting = False
    while True:
        with contextlib.ExitStack() as stack:
            folder = _claim(stack, target)
            record_writer(folder, state, "batchata-df run")
            others = live_writers(target, folder)
            if not others:
                yield folder
                return
        # Our folder is gone again: the other run's OUTPUT is not touched.
        who, _ = describe_writer(others[0])
        if time.monotonic() >= deadline:
            waited = f" after waiting {lock_timeout:g} s" if lock_timeout else ""
            msg = (
                f"OUTPUT {output_path!r} is being written by another run: {who}{waited}. Two "
                "runs writing one OUTPUT would each send every row and pay for it. Let it "
                "finish, or pass --lock-timeout SECONDS to wait for it, or write another OUTPUT"
            )
            raise Busy(msg)
        if not waiting:
            _note(
                f"{output_path} is being written by another run: {who}; waiting up to "
                f"{lock_timeout:g} s for it to finish"
            )
            waiting = True
        # Jittered, so that two runs that saw each other do not retry in step.
        time.sleep(min(random.uniform(0.1, 0.5), max(0.0, deadline - time.monotonic())))


def _claim(stack: contextlib.ExitStack, target: Path) -> Path:
    """Make the run's hidden folder beside ``target``; a usage error if it cannot be made."""
    from batchata_df.stream import hidden_folder

    try:
        return stack.enter_context(hidden_folder(target))
    except OSError as e:
        folder = target.absolute().parent
        msg = (
            f"cannot write OUTPUT {os.fspath(target)!r}: its folder {str(folder)!r} "
            f"{_unwritable(folder, e)}; give an OUTPUT in a folder you can write to. Nothing "
            "was sent"
        )
        raise UsageProblem(msg) from e


def _unwritable(folder: Path, e: OSError) -> str:
    """Why ``folder`` could not be written (or made), in words: what follows its name.

    The system's own reason misleads on a kernel's virtual file system: making a file
    in ``/proc`` fails with "No such file or directory" (``/sys``: "Operation not
    permitted") although the folder exists. Such a file system has no blocks
    (``statvfs``), which is said instead.

    Examples
    --------
    >>> import errno
    >>> _unwritable(Path("/proc/x"), OSError(errno.ENOENT, "No such file or directory"))
    "cannot be created: '/proc' is a virtual file system of the kernel (like /proc and /sys): no file can be made there"
    """  # noqa: E501
    base = folder
    while not base.is_dir() and base != base.parent:
        base = base.parent
    virtual = False
    with contextlib.suppress(OSError, AttributeError):  # no statvfs on Windows
        virtual = os.statvfs(base).f_blocks == 0
    if virtual:
        reason = (
            "is a virtual file system of the kernel (like /proc and /sys): no file can be "
            "made there"
        )
    elif e.errno == errno.EROFS:
        reason = "is on a read-only file system"
    elif e.errno in (errno.EACCES, errno.EPERM):
        reason = f"is not writable by this user ({e.strerror})"
    else:
        reason = f"is not writable ({e.strerror or e})"
    if base == folder:
        return reason
    return f"cannot be created: {str(base)!r} {reason}"


@contextlib.contextmanager
def _in_cli_words(state: str | None, lock_timeout: float) -> Iterator[None]:
    """The library's errors whose fix is an argument, reworded with the command's option.

    A busy state folder (:class:`~batchata_df.errors.StateLockedError`) names
    ``--lock-timeout`` and ``--state``; a missing price
    (:class:`~batchata_df.errors.PriceError`) names ``--price`` (and the option that
    needs it), not ``lock_timeout=`` or ``prices=``.
    """
    try:
        yield
    except StateLockedError as e:
        raise Busy(_state_busy(e, state, lock_timeout, "--lock-timeout SECONDS")) from e
    except PriceError as e:
        if e.model is None:
            raise
        if e.stored:
            msg = (
                f"--max-cost-usd: the state folder {state!r} holds {_answers(e.stored)} of "
                f"{e.model!r} stored without a cost (collected when no price was known for "
                "it), so the cap cannot count what the folder has spent; pass --price "
                f"{e.model}=INPUT,OUTPUT (batch USD per million input and output tokens) to "
                "count them at that price, run without --max-cost-usd, or use another "
                "--state. Nothing was sent"
            )
            raise UsageProblem(msg) from e
        needs = {"max_cost_usd": "--max-cost-usd", "dry_run": "--dry-run"}.get(
            e.needed_by or "", e.needed_by or "this run"
        )
        msg = (
            f"no batch price is known for model {e.model!r} ({e.provider}), and {needs} "
            f"needs one; pass --price {e.model}=INPUT,OUTPUT (batch USD per million input "
            "and output tokens)"
        )
        raise UsageProblem(msg) from e


def _state_busy(
    e: StateLockedError, state: str | os.PathLike[str] | None, timeout: float, wait: str | None
) -> str:
    """The command's message for a state folder another call is writing."""
    who = e.holder.describe() if e.holder else "another process (starting up)"
    waited = f" after waiting {timeout:g} s" if timeout else ""
    how = f"pass {wait} to wait for it" if wait else "try again when it has finished"
    shown = os.fspath(state) if state is not None else "the state folder"
    return (
        f"state folder {shown!r} is being written by another call: {who}{waited}. Two calls "
        f"on one folder would send the same rows twice. Let it finish, or {how}, or use "
        "another --state folder. `batchata-df status` and `batchata-df sql` read it "
        "without waiting"
    )


def _usd(cost: float) -> str:
    """:func:`batchata_df.progress.usd` without thousands separators (the CLI's tables).

    Examples
    --------
    >>> _usd(0.0123), _usd(0.0), _usd(1234.5), _usd(3.456e-06)
    ('$0.0123', '$0.0000', '$1234.5000', '$0.0000035')
    """
    from batchata_df.progress import usd

    return usd(cost, thousands=False)


@dataclasses.dataclass(frozen=True)
class Bill:
    """What a state folder's billed answers cost, for the summary line.

    An answer is one billed attempt of a job (a job sent twice, ``--retry-failed``, is
    two). Fields add up, so what one run spent is the folder's bill after it minus the
    folder's bill before it.
    """

    priced: int = 0
    """Billed answers whose cost is stored."""
    cost: float = 0.0
    """Their cost in USD."""
    from_price: int = 0
    """Billed answers stored without a cost (no price was known then), priced here from
    ``--price`` (the stored parts are not rewritten)."""
    from_price_usd: float = 0.0
    """Their cost at ``--price``."""
    unknown: int = 0
    """Billed answers whose cost is unknown (no price, then or now)."""
    lost: int = 0
    """Realtime attempts lost in flight or answered 5xx: the provider may have billed them,
    and no cost is stored (:func:`batchata_df.state.lost_attempts`, what a cap counts)."""
    lost_usd: float = 0.0
    """Their worst case as recorded when they were sent: what ``max_cost_usd`` counts."""
    lost_unpriced: int = 0
    """Those of them sent without a worst case recorded (no cap and no dry run then)."""
    unattributed: int = 0
    """Of the billed answers, result lines not attributed to a row (their id matched none
    of their batch's requests: :data:`batchata_df.query.UNATTRIBUTED`)."""
    unattributed_usd: float = 0.0
    """Their cost, included in ``cost`` and ``from_price_usd``."""

    def __sub__(self, other: Bill) -> Bill:
        """Field by field: what was billed between ``other`` and this.

        The folder's sums are float sums in no fixed order, so the same folder read twice
        can differ in the last bits: a difference is rounded to 1e-12 USD (a cost
        without an answer billed is zero, never ``$-0.0000``).

        Examples
        --------
        >>> (Bill(priced=2, cost=0.043512800000000004) - Bill(priced=2, cost=0.0435128)).cost
        0.0
        """
        fields = {
            f.name: getattr(self, f.name) - getattr(other, f.name)
            for f in dataclasses.fields(self)
        }
        for name in ("cost", "from_price_usd", "lost_usd", "unattributed_usd"):
            fields[name] = round(fields[name], 12) + 0.0  # + 0.0: -0.0 becomes 0.0
        return Bill(**fields)

    @property
    def answers(self) -> int:
        """Every billed answer, priced or not."""
        return self.priced + self.from_price + self.unknown


_BILL_COLUMNS = (
    "seq", "job_id", "batch_key", "status", "model", "mode", "input_tokens", "output_tokens",
    "cached_tokens", "cache_write_tokens", "cost_usd",
)


def folder_bill(
    state: str | os.PathLike[str], model: str, prices: dict[str, tuple[float, float]]
) -> Bill:
    """The bill of a state folder's answers; those stored without a cost priced by ``prices``.

    Every billed attempt counts once (its latest terminal event), as
    :func:`batchata_df.state.spent_usd` counts them. An answer stored without a cost (a
    model no price was known for when it was collected) whose model is ``model`` and has
    a price in ``prices`` (``--price``) is priced at it (realtime answers at the realtime
    rate), exactly as an answer collected now would be; nothing is written. Read in
    slices of the folder's jobs, as ``spent_usd`` is: bounded memory. The realtime
    attempts the provider may have billed with no cost stored (lost in flight, answered
    5xx) are counted apart, at the worst case ``max_cost_usd`` counts for them
    (:func:`batchata_df.state.lost_attempts`).
    """
    from batchata_df.state import lost_attempts, reading_folder

    with reading_folder(state):
        bill = _folder_bill(state, model, prices)
        lost = lost_attempts(state).get_column("est_cost_usd")
    return dataclasses.replace(
        bill,
        lost=lost.len(),
        lost_usd=float(lost.fill_null(0.0).sum()),
        lost_unpriced=lost.null_count(),
    )


def _bill_before(
    state: str | None,
    model: str,
    prices: dict[str, tuple[float, float]],
    *,
    dry_run: bool,
    wait: float | None,
) -> Bill:
    """The folder's bill before this run, read holding its writer lock (then released).

    The run takes the lock again at once; a third run taking it in between is waited for
    like any other (the summary would count that run's answers: display only).
    """
    from batchata_df.state import WriterLock

    if dry_run or state is None or not (Path(state) / "jobs").is_dir():
        return Bill()
    with WriterLock(state, wait):
        return folder_bill(state, model, prices)


def _folder_bill(
    state: str | os.PathLike[str], model: str, prices: dict[str, tuple[float, float]]
) -> Bill:
    from batchata_df.cost import PriceTable, cost_expr
    from batchata_df.engine.collection import UNMATCHED_PREFIX
    from batchata_df.state import JOB_EVENTS, SPENT_SLICE_EVENTS, TERMINAL_JOB, table_parts

    parts = table_parts(Path(state) / "jobs")
    if not parts:
        return Bill()
    events = pl.scan_parquet(
        parts, schema=JOB_EVENTS, missing_columns="insert", extra_columns="ignore",
        glob=False,
    ).select(*_BILL_COLUMNS)
    table = PriceTable(prices)
    batch_price = table.get("", model) if model in prices else None
    realtime_price = table.realtime().get("", model) if model in prices else None
    stored = pl.col("cost_usd").is_not_null() & pl.col("input_tokens").is_not_null()
    missing = pl.col("cost_usd").is_null() & pl.col("input_tokens").is_not_null()
    priceable = missing & (pl.col("model") == model) & pl.lit(batch_price is not None)
    at_price = (
        pl.when(pl.col("mode") == "realtime")
        .then(cost_expr(realtime_price))
        .otherwise(cost_expr(batch_price))
    )
    # Billed lines no row could be given (query.UNATTRIBUTED): money not attributed to a row.
    unattributed = pl.col("job_id").str.starts_with(UNMATCHED_PREFIX).fill_null(False)
    billable = (
        pl.col("batch_key").is_not_null()
        | pl.col("cost_usd").is_not_null()
        | pl.col("input_tokens").is_not_null()
    )
    n_events = int(events.select(pl.len()).collect().item())
    slices = max(1, -(-n_events // SPENT_SLICE_EVENTS))
    total = Bill()
    for i in range(slices):
        part = events
        if slices > 1:
            part = events.filter((pl.col("job_id").hash(seed=0) % slices).fill_null(0) == i)
        attempts = (
            part.filter(pl.col("status").is_in(TERMINAL_JOB) & billable)
            .with_columns(pl.col("batch_key").fill_null(""))
            .group_by("job_id", "batch_key")
            .agg(pl.all().sort_by("seq").last())
        )
        row = attempts.select(
            stored.sum().alias("priced"),
            pl.col("cost_usd").fill_null(0.0).sum().alias("cost"),
            priceable.sum().alias("from_price"),
            pl.when(priceable).then(at_price).otherwise(0.0).sum().alias("from_price_usd"),
            (missing & ~priceable).sum().alias("unknown"),
            unattributed.sum().alias("unattributed"),
            pl.when(unattributed & stored).then(pl.col("cost_usd"))
            .when(unattributed & priceable).then(at_price)
            .otherwise(0.0).sum().alias("unattributed_usd"),
        ).collect(engine="streaming").row(0, named=True)  # fmt: skip
        total = Bill(
            priced=total.priced + int(row["priced"] or 0),
            cost=total.cost + float(row["cost"] or 0.0),
            from_price=total.from_price + int(row["from_price"] or 0),
            from_price_usd=total.from_price_usd + float(row["from_price_usd"] or 0.0),
            unknown=total.unknown + int(row["unknown"] or 0),
            unattributed=total.unattributed + int(row["unattributed"] or 0),
            unattributed_usd=total.unattributed_usd + float(row["unattributed_usd"] or 0.0),
        )
    return total


def _answers(n: int) -> str:
    return f"{n} answer" if n == 1 else f"{n} answers"


def _bill_text(bill: Bill, model: str) -> str:
    """What ``bill`` costs, in words; never $0 for answers with no known price.

    Examples
    --------
    >>> _bill_text(Bill(priced=3, cost=0.0123), "gpt-5.4-mini")
    '$0.0123'
    >>> _bill_text(Bill(unknown=3), "gpt-6-terra")
    'cost unknown for 3 answers (no price for gpt-6-terra; --price gpt-6-terra=INPUT,OUTPUT gives one)'
    >>> _bill_text(Bill(priced=2, cost=0.5, unknown=1), "m")
    '$0.5000 for 2 answers, cost unknown for 1 answer (no price for m; --price m=INPUT,OUTPUT gives one)'
    >>> _bill_text(Bill(priced=2, cost=0.5, from_price=1, from_price_usd=0.25), "m")
    '$0.7500 ($0.2500 of it for 1 answer stored without a cost, priced from --price)'
    >>> _bill_text(Bill(priced=3, cost=0.5, lost=1, lost_usd=0.25), "m")
    '$0.5000, plus up to $0.2500 for 1 realtime attempt answered 5xx or lost in flight (the provider may have billed it with no cost known; max_cost_usd counts it at its worst case; batchata-df status lists it)'
    >>> _bill_text(Bill(priced=3, cost=0.5, lost=2, lost_usd=0.25, lost_unpriced=1), "m")
    '$0.5000, plus up to $0.2500 and an unknown amount (1 of them sent without a worst case recorded) for 2 realtime attempts answered 5xx or lost in flight (the provider may have billed them with no cost known; max_cost_usd counts them at their worst case; batchata-df status lists them)'
    """  # noqa: E501
    known = bill.priced + bill.from_price
    text = _usd(bill.cost + bill.from_price_usd)
    parts = []
    if bill.from_price:
        parts.append(
            f"{_usd(bill.from_price_usd)} of it for {_answers(bill.from_price)} stored "
            "without a cost, priced from --price"
        )
    if bill.unattributed:
        parts.append(_unattributed_text(bill))
    if parts:
        text += f" ({'; '.join(parts)})"
    if bill.unknown:
        unknown = (
            f"cost unknown for {_answers(bill.unknown)} (no price for {model}; --price "
            f"{model}=INPUT,OUTPUT gives one)"
        )
        text = f"{text} for {_answers(known)}, {unknown}" if known else unknown
    return text + _lost_text(bill)


def _unattributed_text(bill: Bill) -> str:
    """The part of ``bill`` not attributed to a row, in the words of :func:`_lost_text`.

    Examples
    --------
    >>> _unattributed_text(Bill(priced=5, cost=0.5, unattributed=1, unattributed_usd=0.1))
    "$0.1000 of it for 1 billed result line not attributed to a row (its id matched none of its batch's requests; max_cost_usd counts it as spent; batchata-df status lists it)"
    """  # noqa: E501
    one = bill.unattributed == 1
    lines = "1 billed result line" if one else f"{bill.unattributed} billed result lines"
    it, its = ("it", "its") if one else ("them", "their")
    return (
        f"{_usd(bill.unattributed_usd)} of it for {lines} not attributed to a row ({its} id "
        f"matched none of {its} batch's requests; max_cost_usd counts {it} as spent; "
        f"batchata-df status lists {it})"
    )


def _lost_text(bill: Bill) -> str:
    """What ``bill``'s realtime attempts with no cost known may have cost ("" for none).

    The same attempts, at the same worst case, as ``max_cost_usd`` counts them as spent
    and ``batchata-df status`` lists them: the summary never shows less than the cap
    counted.
    """
    if not bill.lost:
        return ""
    one = bill.lost == 1
    amount = f"up to {_usd(bill.lost_usd)}"
    if bill.lost_unpriced == bill.lost:
        amount = "an unknown amount (sent without a worst case recorded)"
    elif bill.lost_unpriced:
        amount += (
            f" and an unknown amount ({bill.lost_unpriced} of them sent without a worst case "
            "recorded)"
        )
    attempts = "1 realtime attempt" if one else f"{bill.lost} realtime attempts"
    it, its = ("it", "its") if one else ("them", "their")
    return (
        f", plus {amount} for {attempts} answered 5xx or lost in flight (the provider may "
        f"have billed {it} with no cost known; max_cost_usd counts {it} at {its} worst case; "
        f"batchata-df status lists {it})"
    )


def _cost_summary(before: Bill, after: Bill, model: str) -> str:
    """The summary's cost: this run's, and the folder's in all when it held answers before.

    Examples
    --------
    >>> _cost_summary(Bill(), Bill(priced=2, cost=0.02), "m")
    '$0.0200'
    >>> _cost_summary(Bill(priced=2, cost=0.02), Bill(priced=3, cost=0.03), "m")
    'this run $0.0100; the state folder in all, with earlier runs: $0.0300'
    """
    if not before.answers and not before.lost:
        return _bill_text(after, model)
    return (
        f"this run {_bill_text(after - before, model)}; the state folder in all, with "
        f"earlier runs: {_bill_text(after, model)}"
    )


def _output_target(path: str, inputs: Sequence[Path], input_path: str, what: str) -> str:
    """The file a run (OUTPUT) or a dry run (``--plan``) writes, checked before sending.

    Refused: a folder that cannot exist, an INPUT file, a file INPUT would read the next
    time. A symbolic link is the file it names: written in place (the link stays), and
    locked under that name, as a run given the file's own name locks it. A link into a
    folder that does not exist (an unmounted drive) is refused, not created.
    """
    _check_writable(path)
    _check_not_input(inputs, path, what)
    if os.path.islink(path):
        from batchata_df.stream import sink_target

        path = os.fspath(sink_target(Path(path), what=f"{what} {path!r}"))
    _check_not_matched(input_path, path, what)
    return path


def _check_not_input(inputs: Sequence[Path], output_path: str, what: str = "OUTPUT") -> None:
    """Refuse an OUTPUT that is an INPUT file (links resolved): the run would replace it."""
    from batchata_df.stream import same_file

    for given in inputs:
        if same_file(given, Path(output_path)):
            msg = (
                f"{what} {output_path!r} is the INPUT file {os.fspath(given)!r}: writing it "
                "would replace the input. Write it to another file"
            )
            raise UsageProblem(msg)


def _check_not_matched(input_path: str, output_path: str, what: str = "OUTPUT") -> None:
    """Refuse an OUTPUT that INPUT, a folder or a glob, would read on the next run.

    The first run would pass (OUTPUT does not exist yet), and "run the same command
    again" would then read its own output as input.

    Examples
    --------
    >>> _check_not_matched("in/*.parquet", "out/a.parquet")
    >>> _check_not_matched("in/*.parquet", "in/out.parquet")
    Traceback (most recent call last):
    ...
    batchata_df.cli.UsageProblem: OUTPUT 'in/out.parquet' would be read as INPUT ...
    >>> _check_not_matched("in/**/*.parquet", "in/out.parquet")
    Traceback (most recent call last):
    ...
    batchata_df.cli.UsageProblem: OUTPUT 'in/out.parquet' would be read as INPUT ...
    """
    given, target = Path(input_path), Path(output_path)
    if given.is_file():
        return
    if given.is_dir():
        matched = (
            target.absolute().parent == given.absolute()
            and target.suffix.lower() in (".parquet", ".pq")
            and not target.name.startswith(".")
        )
    else:
        pattern = os.path.normpath(os.path.abspath(input_path))
        # A recursive glob's ``**/`` also matches no folder at all (``in/**/*.parquet``
        # reads ``in/x.parquet``), which fnmatch's ``*`` (one or more characters) misses.
        patterns = {pattern, pattern.replace(f"**{os.sep}", "")}
        target_name = os.path.normpath(os.path.abspath(output_path))
        matched = glob.has_magic(input_path) and any(
            fnmatch.fnmatchcase(target_name, p) for p in patterns
        )
    if matched:
        msg = (
            f"{what} {output_path!r} would be read as INPUT by {input_path!r} when the "
            "command runs again (to collect, or resume): write it outside INPUT"
        )
        raise UsageProblem(msg)


def _finish_output(sink: str, output_path: str, kind: str) -> None:
    """Make the streamed Parquet result OUTPUT: renamed, or converted (streaming).

    ``kind`` is the format of the name OUTPUT was given as (:func:`file_format`): the file
    a link names may have another extension, or none. CSV and NDJSON are converted by
    Polars' streaming sinks into the folder of the result (see :func:`_scratch`); OUTPUT
    appears under its name only when complete.
    """
    target = Path(output_path)
    if kind == "parquet":
        os.replace(sink, target)
        return
    tmp = Path(sink).with_name(target.name)
    lazy = pl.scan_parquet(sink, glob=False)
    if kind == "csv":
        nested = [
            name
            for name, dtype in lazy.collect_schema().items()
            if isinstance(dtype, pl.List | pl.Array | pl.Struct)
        ]
        lazy.with_columns(_json_text(c) for c in nested).sink_csv(tmp)
    else:
        lazy.sink_ndjson(tmp)
    os.replace(tmp, target)


def _check_writable(path: str) -> None:
    """Refuse, before anything is sent, an OUTPUT whose folder cannot exist."""
    for parent in Path(path).absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                msg = f"cannot write {path!r}: {str(parent)!r} is a file, not a folder"
                raise UsageProblem(msg)
            break


def _check_state_writable(state: str) -> None:
    """Refuse, before anything is sent, a ``--state`` folder that cannot be written.

    The folder is written from the start of the run (its lock, the run's record), so one
    that cannot be made or written failed the run with exit 1. Probed with a file made
    and removed in it, or, if it does not exist yet, a folder made and removed in its
    nearest existing parent (it is not created here: a run refused later by another
    check leaves nothing behind). A folder where only some files can be written (a
    damaged one) is left to the run, which names the file.

    Examples
    --------
    >>> import tempfile
    >>> _check_state_writable(os.path.join(tempfile.mkdtemp(), "new", "out.state"))
    >>> _check_state_writable(__file__ + "/out.state")
    Traceback (most recent call last):
    ...
    batchata_df.cli.UsageProblem: cannot write the state folder ...
    """
    given = Path(state).absolute()
    folder = given
    while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
        folder = folder.parent
    why: str | None = None
    if folder == given and not folder.is_dir():
        why = "it is not a folder"
    elif not folder.is_dir():
        why = f"{str(folder)!r} is a file, not a folder"
    else:
        try:
            if folder == given:
                fd, probe = tempfile.mkstemp(dir=folder, prefix=".batchata-probe-")
                os.close(fd)
                os.unlink(probe)
            else:
                os.rmdir(tempfile.mkdtemp(dir=folder, prefix=".batchata-probe-"))
        except OSError as e:
            why = f"it {_unwritable(given, e)}"
    if why is not None:
        msg = (
            f"cannot write the state folder {state!r}: {why}; pass --state FOLDER in a "
            "place you can write to (default: OUTPUT.state beside OUTPUT). Nothing was sent"
        )
        raise UsageProblem(msg)


def _note(text: str) -> None:
    click.echo(f"batchata-df: {text}", err=True)


# -- state folders ----------------------------------------------------------------------------


def _checkpoints(paths: Sequence[str]) -> list[str]:
    """Expand globs; every folder must be a checkpoint folder (has a manifest.json).

    A glob keeps the state folders it matches (``runs/*`` beside the OUTPUT files of
    ``batchata-df run``), as :func:`batchata_df.sql` does; one matching none is refused.
    """
    from batchata_df.state import is_state_folder

    out: list[str] = []
    for given in paths:
        if Path(given).exists():
            matches = [given]
        else:
            found = sorted(glob.glob(given))
            if not found:
                msg = f"{given!r} does not exist (nor matches anything as a glob pattern)"
                raise UsageProblem(msg)
            matches = [m for m in found if is_state_folder(m)]
            if not matches:
                more = f" and {len(found) - 1} more" if len(found) > 1 else ""
                msg = (
                    f"{given!r} matches no batchata-df state folder (it matches "
                    f"{found[0]!r}{more}); pass the --state folder of a run (default: "
                    "OUTPUT.state)"
                )
                raise UsageProblem(msg)
        for path in matches:
            if not Path(path).is_dir():
                msg = f"{path!r} is not a folder; pass the --state folder of a run"
                raise UsageProblem(msg)
            if not (Path(path) / "manifest.json").is_file():
                msg = (
                    f"{path!r} is not a batchata-df state folder (no manifest.json); pass the "
                    "--state folder of a run (default: OUTPUT.state)"
                )
                raise UsageProblem(msg)
            out.append(path)
    return out


def _print(frame: pl.DataFrame) -> None:
    with pl.Config(
        tbl_rows=100, tbl_cols=30, fmt_str_lengths=60, tbl_width_chars=200,
        tbl_hide_dataframe_shape=True,
    ):
        click.echo(frame)


@cli.command(short_help="Cost, rows and batches of state folder(s).", epilog="""\b
Examples:
  batchata-df status out.parquet.state
  batchata-df status "runs/shard-*\"""")
@click.argument("state", nargs=-1, required=True)
@_debug_option
def status(state: tuple[str, ...]) -> None:
    """Cost and rows by status, and batch durations, of state folder(s) (globs allowed).

    Billed result lines not attributed to a row (their id matched none of their batch's
    requests) are listed apart, as are realtime attempts lost in flight or answered 5xx
    (possibly billed, no cost stored), with the worst case a cap counts for them.
    """
    from batchata_df.query import (
        batch_durations,
        cost_by_status,
        lost_requests,
        unattributed_spend,
    )

    folders = _checkpoints(state)
    click.echo("cost and rows by status:")
    _print(cost_by_status(folders))
    unattributed = unattributed_spend(folders)
    if unattributed.height:
        click.echo(
            "\nbilled result lines not attributed to a row (their id matched none of their "
            "batch's requests; the provider billed them, max_cost_usd counts them as spent, "
            "and the rows they may answer ended missing_result):"
        )
        _print(unattributed)
    shutdowns = _shutdown_lines(folders)
    if shutdowns:
        click.echo("\nmodel shutdowns:")
        for line in shutdowns:
            click.echo(f"  {line}")
    lost = lost_requests(folders)
    if lost.height:
        click.echo(
            "\nrealtime requests lost in flight or answered 5xx (the provider may have "
            "billed them; no cost is stored, and max_cost_usd counts each attempt at its "
            "worst case, also once its row was sent again):"
        )
        _print(
            lost.group_by("provider", "model", maintain_order=True)
            .agg(
                pl.len().alias("n_lost"),
                pl.col("est_cost_usd").null_count().alias("n_without_worst_case"),
                # Null, not $0, when none of them has a worst case recorded.
                pl.when(pl.col("est_cost_usd").count() > 0)
                .then(pl.col("est_cost_usd").sum())
                .alias("worst_case_usd"),
                (pl.col("job_status") == "completed").sum().alias("n_answered_since"),
                pl.col("attempt_error")
                .str.starts_with("server_error:")
                .fill_null(False)
                .sum()
                .alias("n_server_error"),
            )
            .sort("provider", "model")
        )
    click.echo("\nprovider batches:")
    _print(batch_durations(folders))


@cli.command(short_help="DuckDB SQL over state folder(s).", epilog="""\b
Views: jobs, job_events, batches, batch_events, runs.
Examples:
  batchata-df sql "select status, count(*) n, sum(cost_usd) usd from jobs group by all" runs/a
  batchata-df sql "select error, count(*) from jobs where status='failed' group by 1" "runs/*"
""")
@click.argument("query")
@click.argument("state", nargs=-1, required=True)
@click.option("--csv", "as_csv", is_flag=True, help="Print the result as CSV.")
@_debug_option
def sql(query: str, state: tuple[str, ...], as_csv: bool) -> None:
    """DuckDB SQL over state folder(s): views jobs, job_events, batches, batch_events, runs."""
    import duckdb

    from batchata_df.query import sql as run_sql

    folders = _checkpoints(state)
    try:
        result = run_sql(query, folders)
    except duckdb.Error as e:
        first = str(e).strip().splitlines()[0]
        msg = f"SQL error: {first}"
        raise UsageProblem(msg) from e
    if as_csv:
        click.echo(result.write_csv(), nl=False)
    else:
        _print(result)


@cli.command(short_help="Cancel a state folder's batches in flight.", epilog="""\b
The rows of cancelled batches end 'cancelled' when the folder is next run (finished
rows are kept); running the same `run` command again sends them again.
Example:
  batchata-df cancel out.parquet.state""")
@click.argument("state")
@_debug_option
def cancel(state: str) -> None:
    """Cancel the state folder's batches in flight at the provider, and record it."""
    folders = _checkpoints([state])
    if len(folders) > 1:
        shown = ", ".join(repr(f) for f in folders[:-1]) + f" and {folders[-1]!r}"
        msg = f"{state!r} matches {len(folders)} state folders ({shown}); cancel takes one"
        raise UsageProblem(msg)
    (folder,) = folders
    done = cancel_in_flight(folder)
    if not done:
        _note(f"no batches in flight in {folder}; nothing to cancel")
        return
    for provider, batch_id, outcome in done:
        click.echo(f"{provider} {batch_id}: {outcome}")


def cancel_in_flight(folder: str | os.PathLike[str]) -> list[tuple[str, str, str]]:
    """Cancel every batch of ``folder`` that is in flight, recording ``cancel_requested``.

    Returns ``(provider, provider batch id, outcome)`` per batch. The rows stay in their
    batch; the next call on the folder collects the cancelled batch (rows that finished
    before the cancel are kept, the others end ``cancelled``).
    """
    from batchata_df.state import StateStore, WriterLock

    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    lock = WriterLock(folder)
    try:
        lock.acquire()  # never beside a call writing the folder
    except StateLockedError as e:
        raise Busy(_state_busy(e, folder, 0.0, None)) from e
    try:
        return _cancel_locked(StateStore(folder, manifest.get("fingerprint", {})))
    finally:
        lock.release()


def _cancel_locked(store: Any) -> list[tuple[str, str, str]]:
    from batchata_df.engine import BatchPhase
    from batchata_df.errors import ProviderError
    from batchata_df.frame import _load_dotenv
    from batchata_df.providers import make_provider

    batches = store.batch_state()
    if batches.height == 0:
        return []
    live = batches.filter(pl.col("status") == BatchPhase.SUBMITTED.value)
    _load_dotenv()
    out: list[tuple[str, str, str]] = []
    providers: dict[str, Any] = {}
    try:
        for row in live.iter_rows(named=True):
            name = row["provider"]
            if name not in providers:
                providers[name] = make_provider(name)
            try:
                providers[name].cancel(row["provider_batch_id"])
            except ProviderError as e:
                out.append((name, row["provider_batch_id"], f"not cancelled: {e}"))
                continue
            store.append_batch(
                batch_key=row["batch_key"],
                provider=name,
                model=row["model"],
                provider_batch_id=row["provider_batch_id"],
                status=BatchPhase.CANCEL_REQUESTED.value,
                detail="cancelled_by_user",
            )
            out.append((name, row["provider_batch_id"], "cancel requested"))
    finally:
        for provider in providers.values():
            provider.close()
    return out


def _state_folder(path: str, command: str) -> str:
    """``path`` when it is a checkpoint folder, else a usage error (exit 2).

    The error names the state folders below it; checked before ``doctor`` or ``repair``
    reads or locks anything.
    """
    from batchata_df.state import not_a_state_folder

    problem = not_a_state_folder(path, command=command)
    if problem is not None:
        suffix = "; nothing was changed" if command == "repair" else ""
        msg = f"{problem}{suffix}"
        raise UsageProblem(msg)
    return path


@cli.command(short_help="Say what is wrong with a state folder (offline).", epilog="""\b
Exit code 0 when the folder is healthy, 1 when it needs a repair.
Example:
  batchata-df doctor out.parquet.state""")
@click.argument("state")
@_debug_option
def doctor(state: str) -> None:
    """Check a state folder for damaged parts or manifest, offline; nothing is changed."""
    from batchata_df.repair import doctor as check

    report = check(_state_folder(state, "doctor"))
    click.echo(report)
    raise SystemExit(EXIT_OK if report.healthy else EXIT_ERROR)


@cli.command(short_help="Repair a damaged state folder (--apply to do it).", epilog="""\b
Without --apply it only shows what it would do (exit 1 if something is to do).
Damaged files are moved aside, never deleted.
Example:
  batchata-df repair out.parquet.state --apply""")
@click.argument("state")
@click.option("--apply", "apply_", is_flag=True, help="Do it (else only show it).")
@_debug_option
def repair(state: str, apply_: bool) -> None:
    """Repair a damaged state folder: move damage aside, recover from the provider."""
    from batchata_df.repair import repair as fix

    report = fix(_state_folder(state, "repair"), apply=apply_)
    click.echo(report)
    raise SystemExit(EXIT_OK if report.healthy or report.applied else EXIT_ERROR)


@cli.command(short_help="Serve the provider emulator on 127.0.0.1.", epilog="""\b
It prints the variables to export in the shell that runs batchata-df, e.g. for port 8765:
  export OPENAI_BASE_URL=http://127.0.0.1:8765/openai/v1
  export ANTHROPIC_BASE_URL=http://127.0.0.1:8765/anthropic
  export GOOGLE_GEMINI_BASE_URL=http://127.0.0.1:8765/gemini
  and OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY (emulator keys), NO_PROXY.""")
@click.option("--port", type=int, default=8765, show_default=True, help="TCP port (0: any free).")
@click.option("--latency", type=float, default=0.0, show_default=True,
              help="Seconds from batch creation to completion.")
@_debug_option
def emulator(port: int, latency: float) -> None:
    """Serve the provider emulator on 127.0.0.1; print the variables that point a run at it."""
    from batchata_df.emulator.__main__ import exit_now
    from batchata_df.emulator.__main__ import main as emulator_main

    # Stopped (SIGTERM, Ctrl+C), it leaves without the interpreter's teardown, as
    # ``python -m batchata_df.emulator`` does: a large state took seconds to free.
    exit_now(emulator_main(["--port", str(port), "--latency", str(latency)], show_env=True))


@cli.command(short_help="A demo run on the emulator (no API key needed).")
@_debug_option
def demo() -> None:
    """A demo run on the bundled dataset against the emulator (no API key needed)."""
    from batchata_df.demo import main as demo_main

    demo_main([])


# -- entry point ------------------------------------------------------------------------------


# The library's fixes written as keyword arguments (batchata_df.jobs._check_not_blank),
# in the command's words: a CLI user has no ``system=None`` to pass (the errors whose fix
# is an argument of a call, see _in_cli_words, are reworded where they are raised).
_CLI_WORDS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^(prompt|system)=('[^']*'|\"[^\"]*\") has no text"), r"--\1 \2 has no text"),
    (re.compile(r"pass system=None to send no system prompt"),
     "leave --system out to send no system prompt"),
    (re.compile(r"e\.g\. prompt='\{text\}'"), "e.g. --prompt '{text}'"),
    (re.compile(r"\bparams\['(\w+)'\]"), r"--param \1"),
    (re.compile(r"files='<column of file paths>' \((PDF or text)\)"),
     r"--files COLUMN (a column of file paths; \1)"),
    (re.compile(r"\bcitations=True"), "--citations"),
    (re.compile(r"\(e\.g\. model='([^']+)'\)"), r"(e.g. --model \1)"),
    (re.compile(r"\bhistory=('[^']*')"), r"--history \1"),
    # The run's mode and its options (validate.check_mode): --deadline or --concurrency
    # with a --mode that takes none.
    (re.compile(r"\bmode='(batch|realtime|auto)'"), r"--mode \1"),
    (re.compile(r"\b(concurrency|deadline)=(?=[\s,;:.)]|$)"), r"--\1"),
    (re.compile(r"\btime_limit=(?=[\s,;:.)]|$)"), "--time-limit"),
    (re.compile(r"\bmax_parallel_batches=(?=[\s,;:.)]|$)"), "--max-parallel-batches"),
    (re.compile(r"\bwait=False\b"), "--no-wait"),
    (re.compile(r"\bwait=True\b"), "--wait"),
)  # fmt: skip


def _as_options(match: re.Match[str]) -> str:
    """``params={'a': 'x', 'b': 2}`` as ``--param a=x --param b=2``."""
    pairs = re.findall(r"'(\w+)':\s*('[^']*'|[^,}]+)", match.group(1))
    return " ".join(f"--param {k}={v.strip().strip(chr(39))}" for k, v in pairs)


def _renamed_in_input(match: re.Match[str]) -> str:
    """``df.rename({'id': 'id_in'})`` advice as what a command's user renames: INPUT's."""
    pairs = re.findall(r"'([^']*)':\s*'([^']*)'", match.group(1))
    example = ", ".join(f"{old!r} to {new!r}" for old, new in pairs)
    return f"Rename those columns of INPUT (e.g. {example}) or the --schema fields"


def _option_words(message: str) -> str:
    """A :class:`ConfigError`'s message with its Python-call fixes as command options.

    Examples
    --------
    >>> _option_words("system='' has no text to send: every row would fail; "
    ...               "pass system=None to send no system prompt")
    "--system '' has no text to send: every row would fail; leave --system out to send no \
system prompt"
    >>> _option_words("prompt=' ' has no text to send; give the template some text or a "
    ...               "column, e.g. prompt='{text}'")
    "--prompt ' ' has no text to send; give the template some text or a column, e.g. \
--prompt '{text}'"
    >>> _option_words("deadline= is for mode='auto' (it decides what goes realtime), got "
    ...               "mode='batch'; use time_limit= to stop a batch run at a time")
    '--deadline is for --mode auto (it decides what goes realtime), got --mode batch; use \
--time-limit to stop a batch run at a time'
    >>> _option_words("params['temperature'] must be between 0 and 2 for openai, got 3")
    '--param temperature must be between 0 and 2 for openai, got 3'
    >>> _option_words("use 'gpt-5' with params={'reasoning_effort': 'high'} instead")
    "use 'gpt-5' with --param reasoning_effort=high instead"
    >>> _option_words("Rename those input columns (df.rename({'id': 'id_in'})) or the "
    ...               "schema fields")
    "Rename those columns of INPUT (e.g. 'id' to 'id_in') or the --schema fields"
    """
    for pattern, words in _CLI_WORDS:
        message = pattern.sub(words, message)
    message = re.sub(r"\bparams=\{([^}]*)\}", _as_options, message)
    return re.sub(
        r"Rename those input columns \(df\.rename\(\{([^}]*)\}\)\) or the schema fields",
        _renamed_in_input,
        message,
    )


_CLI_WARNING_WORDS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bmax_cost_usd=([0-9][\w.+-]*)"), r"--max-cost-usd \1"),
    (re.compile(r"\bparams=\{'max_tokens': (\d+)\}"), r"--max-tokens \1"),
    (re.compile(r"\ba new state= folder"), "a new --state folder"),
)


def _warning_words(message: str) -> str:
    """A warning's Python-call fixes as the command's options (see :func:`_option_words`).

    Examples
    --------
    >>> _warning_words("max_cost_usd=0.02 serialised this run: ... params={'max_tokens': "
    ...                "576} fits them with a 25% margin: pass it with a new state= folder")
    '--max-cost-usd 0.02 serialised this run: ... --max-tokens 576 fits them with a 25% \
margin: pass it with a new --state folder'
    """
    for pattern, words in _CLI_WARNING_WORDS:
        message = pattern.sub(words, message)
    return _option_words(message)


def _fail(message: str, code: int) -> int:
    """Print ``message`` as one line on stderr (and the traceback with --debug)."""
    line = " ".join(message.split()) or "unknown error"
    click.echo(f"batchata-df: error: {line}", err=True)
    if _debug():
        traceback.print_exc()
    elif code == EXIT_ERROR:
        click.echo("batchata-df: run again with --debug for the full traceback", err=True)
    return code


@contextlib.contextmanager
def _warning_lines() -> Iterator[None]:
    """batchata-df's warnings as one ``batchata-df: warning: ...`` line on stderr each.

    Each message once for the whole command (never once per chunk or batch), without the
    Python source line a warning shows (in the command, the first frame outside
    batchata-df is click's). :class:`ModelShutdownWarning` and
    :class:`ThinkingRoomWarning` are advice given before anything is sent: always shown,
    and never turned into an error by a ``-W error`` filter (the run goes on); the others
    follow the warning filters as a library user's would. A :class:`ThinkingRoomWarning`
    is printed as its ``cli`` text: the fixes in this command's flags.
    """
    seen: set[str] = set()
    advice = (ModelShutdownWarning, ThinkingRoomWarning)
    with warnings.catch_warnings():
        for category in advice:
            warnings.filterwarnings("always", category=category)
        shown = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], filename: str,
                 lineno: int, file: Any = None, line: str | None = None) -> None:
            if not issubclass(category, WARNINGS):
                shown(message, category, filename, lineno, file, line)
                return
            # The fixes in this command's flags, not Python's params={...}.
            text = (
                message.cli
                if isinstance(message, ThinkingRoomWarning)
                else _warning_words(str(message))
            )
            if text not in seen:
                seen.add(text)
                _note(f"warning: {text}")

        warnings.showwarning = show
        yield


def _shutdown_lines(folders: Sequence[str]) -> list[str]:
    """A line per model of the folders whose announced shutdown is near or has passed.

    A model whose every job sent was sent realtime (answered in seconds) is warned without
    the batch window, as the run itself was (``shutdown_warning(batch=False)``).
    """
    from batchata_df.models import retirement, scheduled_shutdown, shutdown_warning
    from batchata_df.query import sql

    pairs = sql(
        "select provider, model, coalesce(bool_and(mode = 'realtime'), false) from jobs "
        "group by 1, 2 order by 1, 2",
        list(folders),
    )
    out: list[str] = []
    for provider, model, realtime in pairs.iter_rows():
        if provider is None or model is None:
            continue
        notice = shutdown_warning(str(provider), str(model), batch=not realtime)
        if notice is not None:
            out.append(notice)
        elif (gone := retirement(str(provider), str(model))) is not None:
            scheduled = scheduled_shutdown(str(provider), str(model))
            if scheduled is not None and scheduled[2] == "routed":
                # Still answered, by the successor: its rows never sent are sent by the next
                # call on the folder (frame._check_retired_rows).
                out.append(
                    f"model {model!r} is answered by {gone[1]!r} since {gone[0]} (the "
                    f"provider routes it there): requests it ran from then on were answered "
                    f"by {gone[1]!r} and are priced at its rates; rows not collected yet can "
                    f"still be collected; rows never sent are sent by the next call with this "
                    f"folder, answered by {gone[1]!r}"
                )
            else:
                out.append(
                    f"model {model!r} was shut down on {gone[0]}: rows not collected yet can "
                    "still be collected (those the provider had not run by then fail "
                    "model_shut_down, unbilled); rows never sent fail unsent"
                )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``batchata-df`` command; returns the exit code."""
    with _warning_lines():
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    try:
        result = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="batchata-df",
            standalone_mode=False,
        )
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_ERROR)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("batchata-df: interrupted", err=True)
        return EXIT_INTERRUPTED
    except click.exceptions.NoArgsIsHelpError as e:
        # Nothing asked: the help, and 2 (nothing was done), as click has it since 8.2.
        click.echo(e.ctx.get_help() if e.ctx is not None else e.format_message())
        return EXIT_USAGE
    except click.UsageError as e:
        where = e.ctx.command_path if e.ctx is not None else "batchata-df"
        return _fail(f"{e.format_message()} (see '{where} --help')", EXIT_USAGE)
    except click.ClickException as e:
        return _fail(e.format_message(), e.exit_code)
    except ConfigError as e:
        return _fail(_option_words(str(e)), EXIT_USAGE)
    except (UsageProblem, StateMismatchError) as e:
        return _fail(str(e), EXIT_USAGE)
    except (StateLockedError, SinkLockedError, Busy) as e:
        return _fail(str(e), EXIT_LOCKED)
    except BatchataError as e:
        return _fail(str(e), EXIT_ERROR)
    except Exception as e:
        return _fail(f"{type(e).__name__}: {e}", EXIT_ERROR)
    return result if isinstance(result, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
