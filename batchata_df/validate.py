"""Checks of ``batch_llm``'s run-level arguments, all made before anything is sent.

Numbers are real numbers: a boolean is not a number (``max_cost_usd=True`` is not a $1
cap), NaN and infinities are refused (``time_limit=nan`` is not "no limit"), counts are
``int``. Flags are ``bool`` (``wait="no"`` is truthy). Each error names the argument, shows
the bad value with ``!r`` and says what to pass instead.
"""

from __future__ import annotations

import datetime as dt
import difflib
import math
import numbers
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import polars as pl

from batchata_df.errors import ConfigError, StateError

__all__ = [
    "check_count",
    "check_flag",
    "check_patience",
    "check_positive",
    "check_price_value",
    "RunArguments",
    "check_run_arguments",
    "check_state_path",
    "is_real",
]


def is_real(value: object) -> bool:
    """Whether ``value`` is a finite real number (not a boolean).

    Examples
    --------
    >>> [is_real(v) for v in (1, 2.5, True, float("nan"), float("inf"), "1")]
    [True, True, False, False, False, False]
    """
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def check_positive(name: str, value: object, hint: str) -> float:
    """``value`` as a float if it is a finite number > 0; else a :class:`ConfigError`.

    Examples
    --------
    >>> check_positive("max_cost_usd", 2, "US dollars")
    2.0
    >>> try:
    ...     check_positive("max_cost_usd", True, "US dollars")
    ... except ConfigError as e:
    ...     print(e)
    max_cost_usd must be a positive finite number (US dollars), got True (a bool)
    """
    if not is_real(value) or float(value) <= 0:  # type: ignore[arg-type]
        kind = " (a bool)" if isinstance(value, bool) else ""
        msg = f"{name} must be a positive finite number ({hint}), got {value!r}{kind}"
        raise ConfigError(msg)
    return float(value)  # type: ignore[arg-type]


def check_count(name: str, value: object, hint: str) -> int:
    """``value`` if it is an ``int`` >= 1 (not a boolean, not a float)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        msg = f"{name} must be a whole number >= 1 ({hint}), got {value!r}"
        if isinstance(value, float) and value.is_integer() and value >= 1:
            msg += f"; pass {int(value)}"
        raise ConfigError(msg)
    return int(value)


def check_flag(name: str, value: object) -> bool:
    """``value`` if it is a ``bool``; ``"no"``, ``1`` or ``None`` are refused."""
    if not isinstance(value, bool):
        msg = f"{name} must be True or False, got {value!r}"
        raise ConfigError(msg)
    return value


class RunArguments(NamedTuple):
    """The run-level arguments in seconds, as :func:`check_run_arguments` returns them."""

    time_limit_s: float | None
    patience_s: float
    stored_unpriced_usd: float = 0.0
    """With a cap: what the state folder's answers stored without a cost cost at ``prices``
    when checked (see :func:`check_spend_is_priced`). A dry run counts it as spent; a run
    prices them again once it holds the folder's writer lock."""


def check_run_arguments(
    *,
    max_cost_usd: object,
    time_limit: object,
    items_per_batch: object,
    max_parallel_batches: object,
    flags: Mapping[str, object],
    state: object,
    prices: object,
    params: object = None,
    provider_patience: object,
) -> RunArguments:
    """Check the run-level arguments shared by the in-memory and the streaming call.

    Returns
    -------
    RunArguments
        ``time_limit`` and ``provider_patience`` in seconds.
    """
    patience_s = check_patience(provider_patience)
    if max_cost_usd is not None:
        check_positive("max_cost_usd", max_cost_usd, "a cap in US dollars, e.g. 5.0")
    if items_per_batch is not None:
        check_count("items_per_batch", items_per_batch, "most jobs per provider batch")
    check_count("max_parallel_batches", max_parallel_batches, "most batches in flight")
    for name, value in flags.items():
        check_flag(name, value)
    if state is not None and not isinstance(state, str | os.PathLike):
        msg = f"state must be a folder path (str or pathlib.Path) or None, got {state!r}"
        raise ConfigError(msg)
    # A dry run writes nothing to the folder: it plans as for a folder not made yet.
    state_is_file = state is not None and not check_state_path(
        state, dry_run=flags.get("dry_run") is True
    )
    if prices is not None and not isinstance(prices, Mapping):
        msg = (
            f"prices must be a mapping {{model: (input_usd_per_mtok, output_usd_per_mtok)}}, "
            f"got {type(prices).__name__}: {prices!r}"
        )
        raise ConfigError(msg)
    if params is not None and not isinstance(params, Mapping):
        msg = (
            f"params must be a mapping of parameter names to values, e.g. "
            f"params={{'temperature': 0.2, 'max_tokens': 500}}, got {type(params).__name__}: "
            f"{params!r}"
        )
        raise ConfigError(msg)
    # Refused here, before waiting for the folder's lock, when they cannot be priced.
    stored_unpriced = 0.0
    if max_cost_usd is not None and state is not None and not state_is_file:
        stored_unpriced = check_spend_is_priced(
            state, prices if isinstance(prices, Mapping) else None
        )
    time_limit_s = _time_limit_seconds(time_limit)
    if flags.get("wait") is False and state is None:
        msg = "wait=False needs state='some/folder' so that a later call can collect results"
        raise ConfigError(msg)
    return RunArguments(time_limit_s, patience_s, stored_unpriced)


def check_state_path(state: str | os.PathLike[str], *, dry_run: bool = False) -> bool:
    """Refuse ``state=`` naming something that exists and is not a folder.

    Returns whether the path can be a checkpoint folder (a folder, or nothing yet). A dry
    run only reads the folder, so a file there is allowed (``False``: nothing stored).

    Examples
    --------
    >>> import tempfile
    >>> file = Path(tempfile.mkdtemp(), "out.parquet")
    >>> _ = file.write_bytes(b"PAR1")
    >>> check_state_path(file.parent), check_state_path(file, dry_run=True)
    (True, False)
    >>> check_state_path(file)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    batchata_df.errors.StateError: state='.../out.parquet' is a file, not a folder: ...
    """
    path = Path(state)
    if not path.exists() or path.is_dir():
        return True
    if dry_run:
        return False
    other = path.with_name(path.stem + "_state")
    msg = (
        f"state={os.fspath(state)!r} is a file, not a folder: state= is the checkpoint "
        f"folder where batch_llm keeps jobs and results (it creates it). Pass a folder "
        f"path, e.g. state={os.fspath(other)!r}, or move the file away. Nothing was sent"
    )
    raise StateError(msg)


def lost_requests(state: str | os.PathLike[str]) -> pl.DataFrame:
    """The folder's realtime requests that may have been billed without a cost stored.

    Every lost attempt, including those of rows sent again and answered since
    (:func:`batchata_df.state.lost_attempts`): columns ``job_id`` and ``est_cost_usd`` (the
    worst case recorded when it was sent: null when that call had no cap).
    """
    from batchata_df.state import lost_attempts

    return lost_attempts(state)


def price_lost_requests(
    state: str | os.PathLike[str],
    worst_of: Callable[[pl.Series], pl.DataFrame] | None,
    *,
    recorded: bool,
    refuse: bool = True,
) -> float:
    """The worst case a cap counts for the folder's lost realtime requests; refuse the rest.

    The provider may have billed a lost request (:func:`lost_requests`), and how much is
    unknown: a cap counts it at its worst case, the one it holds for a new request (input
    estimate + ``max_tokens`` of output at the realtime price). A request sent by a call
    without a cap has none recorded: it is computed now by ``worst_of`` (``job_id`` ->
    ``job_id``, ``worst_usd``; the current call's rows, realtime prices) when the request
    is one of this call's rows. Every lost attempt counts, also one whose row was sent
    again and answered since (the provider may have billed both). ``recorded``: add the
    recorded worst cases too (the in-memory engines count them with
    :func:`batchata_df.state.lost_usd`, a streamed run and a dry run do not).
    ``refuse=False`` (a dry run without a cap): a lost request that cannot be priced is
    left out with a :class:`~batchata_df.errors.LostUnpricedWarning` instead.

    Raises
    ------
    StateError
        A lost request has no recorded worst case and is not among this call's rows (or
        ``worst_of`` is ``None``): a cap cannot count what it may have cost. Nothing was
        sent.
    """
    from batchata_df.errors import StateError

    lost = lost_requests(state)
    if not lost.height:
        return 0.0
    total = float(lost.get_column("est_cost_usd").fill_null(0.0).sum()) if recorded else 0.0
    missing = lost.filter(pl.col("est_cost_usd").is_null()).select("job_id")
    if not missing.height:
        return total
    found = (
        worst_of(missing.get_column("job_id"))
        if worst_of is not None
        else pl.DataFrame(schema={"job_id": pl.String, "worst_usd": pl.Float64})
    )
    priced = missing.join(found.select("job_id", "worst_usd"), on="job_id", how="left")
    unknown = priced.filter(pl.col("worst_usd").is_null())
    if unknown.height and not refuse:

        from batchata_df.errors import LostUnpricedWarning, warn_user

        warn_user(
            f"the state folder {os.fspath(state)!r} holds {unknown.height} realtime "
            "request(s) lost in flight (the provider may have billed them) with no worst "
            f"case recorded (e.g. job {unknown.item(0, 'job_id')!r}) and not among this "
            "call's rows: 'already spent' leaves them out. Include the rows they were sent "
            "for to count them",
            LostUnpricedWarning,
        )
    elif unknown.height:
        fix = (
            "Include the rows they were sent for in this call's frame (their worst case is "
            "computed from them), run"
            if worst_of is not None
            else "A streamed call cannot compute it (it reads its rows as it goes): run the "
            "capped call on a DataFrame holding those rows (batch_llm without sink=; on the "
            "command line, --mode realtime or auto), run"
        )
        msg = (
            f"max_cost_usd: the state folder {os.fspath(state)!r} holds {unknown.height} "
            "realtime request(s) lost in flight (sent by a call without a cap that was "
            "stopped; the provider may have billed them) with no worst case recorded (e.g. "
            f"job {unknown.item(0, 'job_id')!r}), so a cap cannot count what the folder has "
            f"spent. {fix} this folder without a cap, or give the capped call a new state "
            "folder. Nothing was sent"
        )
        raise StateError(msg)
    return total + float(priced.get_column("worst_usd").fill_null(0.0).sum())


def check_spend_is_priced(
    state: str | os.PathLike[str], prices: Mapping[str, Any] | None = None
) -> float:
    """Price the folder's answers stored without a cost for a cap; refuse what cannot be.

    A call without a cap may run a model the price tables do not know: its answers are
    stored without a cost. A cap counts what the folder has spent and would count those as
    $0, letting a capped call spend past the cap. So they are priced now, as an answer of
    their model collected now would be: from ``prices`` (the caller's batch price;
    realtime answers at the realtime rate) or the price tables, which may know the model
    by now. The cap is then exactly as right as that price, as it is for this call's own
    answers of the model (a ``prices`` below the provider's real price lets any capped call
    of an unpriced model overspend; this adds no other way). The engine adds the total to
    what the folder has spent (``RunOptions.stored_unpriced_usd``). It is called before
    anything else (to refuse early), and a run calls it again with the folder's writer
    lock held, as the engine reads the rest of the spend: answers another process stored
    while this one waited for the lock are counted. Counting follows
    :func:`batchata_df.state.spent_usd`: each billed attempt once, its latest terminal
    event, in bounded memory.

    Returns
    -------
    float
        What those answers cost, USD (0 when there are none).

    Raises
    ------
    PriceError
        Some of them are of a model with no price in ``prices`` or the tables; nothing was
        sent. A folder that cannot be read is left to the call (which says why).
    """
    from batchata_df.cost import PriceTable, cost_expr
    from batchata_df.errors import PriceError
    from batchata_df.state import JOB_EVENTS, SPENT_SLICE_EVENTS, TERMINAL_JOB, table_parts

    parts = table_parts(Path(state) / "jobs")
    if not parts:
        return 0.0
    columns = ("seq", "job_id", "batch_key", "status", "provider", "model", "mode",
               "input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens",
               "cost_usd")  # fmt: skip
    billable = (
        pl.col("batch_key").is_not_null()
        | pl.col("cost_usd").is_not_null()
        | pl.col("input_tokens").is_not_null()
    )
    try:
        events = pl.scan_parquet(
            parts, schema=JOB_EVENTS, missing_columns="insert", extra_columns="ignore",
            glob=False,
        ).select(*columns)
        n_events = int(events.select(pl.len()).collect().item())
        slices = max(1, -(-n_events // SPENT_SLICE_EVENTS))
        found: list[pl.DataFrame] = []
        for i in range(slices):
            part = events
            if slices > 1:
                part = events.filter((pl.col("job_id").hash(seed=0) % slices).fill_null(0) == i)
            found.append(
                part.filter(pl.col("status").is_in(TERMINAL_JOB) & billable)
                .with_columns(pl.col("batch_key").fill_null(""))
                .group_by("job_id", "batch_key")
                .agg(pl.all().sort_by("seq").last())
                # the answers a cap would count as $0: usage stored, no cost
                .filter(
                    pl.col("cost_usd").is_null()
                    & ((pl.col("input_tokens") > 0) | (pl.col("output_tokens") > 0))
                )
                .drop("seq", "job_id", "batch_key", "status", "cost_usd")
                .collect()
            )
    except (pl.exceptions.PolarsError, OSError):
        return 0.0
    unpriced = pl.concat(found)
    if not unpriced.height:
        return 0.0
    table = PriceTable(dict(prices) if prices else None)
    realtime = table.realtime()
    total = 0.0
    missing: list[tuple[str, int]] = []
    for (provider, model), group in unpriced.group_by("provider", "model", maintain_order=True):
        batch_price = table.get(str(provider or ""), str(model))
        if batch_price is None:
            missing.append((str(model), group.height))
            continue
        at_price = (
            pl.when(pl.col("mode") == "realtime")
            .then(cost_expr(realtime.get(str(provider or ""), str(model))))
            .otherwise(cost_expr(batch_price))
        )
        total += float(group.select(at_price.fill_null(0.0).sum()).item())
    if missing:
        model, n = missing[0]
        what = ", ".join(f"{k} of {m}" for m, k in missing)
        msg = (
            f"max_cost_usd: the state folder {os.fspath(state)!r} holds answers stored "
            f"without a cost ({what}: collected when no price was known for the model), so a "
            "cap cannot count what the folder has spent. Pass prices={"
            f"{model!r}: (INPUT_USD, OUTPUT_USD)}} (batch USD per million tokens) to count "
            "them at that price, run this folder without a cap, or give the capped call a "
            "new state folder. Nothing was sent"
        )
        raise PriceError(msg, model=model, needed_by="max_cost_usd", stored=n)
    return total


def check_prices_used(
    prices: Mapping[str, Any] | None,
    pairs: Sequence[tuple[object, object]] | None,
    state: str | os.PathLike[str] | None = None,
) -> None:
    """Refuse a ``prices=`` key that looks meant for a model of the call but prices none.

    A misspelt key (``"gpt-4.1-mnii"``) or one written with its provider
    (``"openai:gpt-4.1-mini"``) never applies: without this the call ran at the price
    tables' prices, the cap and ``_cost_usd`` included, without a word. A key is used when
    it names (:meth:`PriceTable.priced_by`) a model of the call's rows (``pairs``: distinct
    ``(provider, model)``; ``None`` when no model is known, a per-row model over no rows:
    nothing is refused, :func:`call_models`), the successor such a model is routed to, or a
    model whose answers the state folder holds (a capped call prices those stored without a
    cost from ``prices=``: :func:`check_spend_is_priced`); the folder is read only when a
    key is left over. An unused key is refused only when it is a typo's shape: a model of
    the call in another case or with a provider prefix (``openai:``, ``openai/``), or close
    (``difflib``, ratio >= 0.85, case aside) to one of the call's models that no key prices,
    or another dated snapshot of such a model (``gpt-4.1-mini-2025-04-14`` on rows of
    ``gpt-4.1-mini``, the reverse, or another date: prices go by the exact name, and a
    row that runs the key's snapshot makes it used); the message then names the key to
    use and says how to pass a sibling model's price meant for another call. Any
    other unused key is a price for another call (one price dict shared by a project's
    calls) and is taken.

    Raises
    ------
    PriceError
        Naming the first such key, the call's models and the model it was likely meant for;
        nothing was sent.

    Examples
    --------
    >>> check_prices_used({"gpt-5.4-mini": (1, 2)}, [("openai", "gpt-5.4-mini")])
    >>> check_prices_used({"claude-haiku-4-5": (1, 5)}, [("openai", "gpt-5.4-mini")])
    >>> check_prices_used({"gpt-5.4-mnii": (1, 2)}, [("openai", "gpt-5.4-mini")])
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    batchata_df.errors.PriceError: prices['gpt-5.4-mnii']: ... Did you mean 'gpt-5.4-mini'? ...
    """
    if not prices or pairs is None:
        return
    from batchata_df.cost import PriceTable
    from batchata_df.errors import PriceError

    def used_by(found: Iterable[tuple[object, object]]) -> set[str]:
        return {k for p, m in found for k in PriceTable.priced_by(str(p), str(m))}

    unused = [k for k in prices if k not in used_by(pairs)]
    held: list[tuple[object, object]] = []
    if unused and state is not None and Path(state).is_dir():
        held = _folder_models(state)
        unused = [k for k in unused if k not in used_by(held)]
    if not unused:
        return
    every = [*pairs, *held]
    names = used_by(every)
    # The names of the models no key prices: a price meant for one of them was misspelt.
    bare = sorted({
        k for p, m in every
        if not PriceTable.priced_by(str(p), str(m)) & prices.keys()
        for k in PriceTable.priced_by(str(p), str(m))
    })  # fmt: skip
    # Keys are matched as written: another case or a provider prefix ("openai:", "openai/")
    # never prices a row, so both are compared without them.
    named = {n.lower(): n for n in names}
    unpriced = {n.lower(): n for n in bare}
    meant: dict[str, str] = {}
    close_only: set[str] = set()
    dated: dict[str, str] = {}  # such a key: the name it gives (no case, no provider)
    for key in unused:
        text = str(key).lower()
        for sep in (":", "/"):
            prefix, found, rest = text.partition(sep)
            if found and prefix in ("openai", "anthropic", "gemini", "google"):
                text = rest
                break
        if text in named:
            meant[key] = named[text]
            continue
        # Another snapshot of a model no key prices (gpt-4.1-mini-2025-04-14 for the
        # gpt-4.1-mini the rows run, or the reverse): prices go by the exact name.
        base = _undated(text)
        snapshot = sorted(n for low, n in unpriced.items() if _undated(low) == base)
        if snapshot:
            meant[key] = snapshot[0]
            dated[key] = text
            continue
        close = difflib.get_close_matches(text, sorted(unpriced), n=1, cutoff=0.85)
        if close:
            meant[key] = unpriced[close[0]]
            close_only.add(key)
    if not meant:
        return
    key, likely = next(iter(meant.items()))
    # A sibling model's price (gpt-5.5-mini for gpt-5.4-mini) may be another call's.
    other = (
        " If it prices another call's model, pass this call only its own models' keys."
        if key in close_only or key in dated
        else ""
    )
    if key in dated:
        # Which of the two is dated: the key, the model the rows run, or both.
        key_dated = _undated(dated[key].lower()) != dated[key].lower()
        runs_dated = _undated(likely.lower()) != likely.lower()
        which = (
            f"{key!r} and {likely!r} are two dated snapshots"
            if key_dated and runs_dated
            else f"{key!r} is a dated snapshot of {likely!r}"
            if key_dated
            else f"This call runs the dated snapshot {likely!r}"
        )
        other = (
            f" {which}, and a price applies only to the exact name a row's model has: key "
            f"the price prices[{likely!r}].{other}"
        )
    models = sorted({str(m) for _, m in pairs})
    shown = ", ".join(repr(m) for m in models) or "none"
    others = sorted({str(m) for _, m in held} - set(models))
    if others:
        shown += f"; the state folder's also: {', '.join(repr(m) for m in others)}"
    more = [k for k in meant if k != key]
    also = f" (and {', '.join(repr(k) for k in more)})" if more else ""
    msg = (
        f"prices[{key!r}]{also}: no row of this call uses model {key!r} (this call's models: "
        f"{shown}), so that price would never apply: costs, estimates and max_cost_usd would "
        f"use the built-in prices. Did you mean {likely!r}? Key prices by the rows' model "
        f"name (without 'provider:').{other} Nothing was sent"
    )
    raise PriceError(msg)


_DATE_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8})$")
"""A snapshot's date: OpenAI's ``-2025-04-14``, Anthropic's ``-20251001``."""


def _undated(name: str) -> str:
    """``name`` without a snapshot's date suffix.

    Examples
    --------
    >>> _undated("gpt-4.1-mini-2025-04-14"), _undated("claude-haiku-4-5-20251001")
    ('gpt-4.1-mini', 'claude-haiku-4-5')
    >>> _undated("gpt-4.1-mini")
    'gpt-4.1-mini'
    """
    return _DATE_SUFFIX.sub("", name)


def call_models(
    model: str | pl.Expr, jobs: pl.DataFrame, pairs: Callable[[pl.DataFrame], list[Any]]
) -> list[tuple[object, object]] | None:
    """The ``(provider, model)`` pairs a call prices, for :func:`check_prices_used`.

    Its rows' (``pairs(jobs)``); with no rows, a literal ``model``'s (the call names it: an
    empty frame takes the price of its model, and still refuses a typo of it), or ``None``
    for a per-row model expression (no row names a model) or one that cannot be parsed
    (the run says what is wrong with it).

    Examples
    --------
    >>> none = pl.DataFrame(schema={"provider": pl.String, "model": pl.String})
    >>> call_models("openai:gpt-5.4-mini", none, lambda j: j.rows())
    [('openai', 'gpt-5.4-mini')]
    >>> call_models(pl.col("m"), none, lambda j: j.rows()) is None
    True
    """
    if jobs.height:
        return list(pairs(jobs))
    if not isinstance(model, str):
        return None
    from batchata_df.errors import BatchataError
    from batchata_df.jobs import parse_model

    try:
        return [parse_model(model)]
    except BatchataError:
        return None


def _folder_models(state: str | os.PathLike[str]) -> list[tuple[object, object]]:
    """The distinct ``(provider, model)`` of the job events of folder ``state``.

    Read without the lock, before it (``batch_llm`` reads again what a compaction
    replaced: ``frame._reads_again_before_the_lock``); a damaged part is a
    :class:`~batchata_df.errors.StateError` naming it.
    """
    from batchata_df.state import JOB_EVENTS, reading_folder, table_parts

    parts = table_parts(Path(state) / "jobs")
    if not parts:
        return []
    with reading_folder(state):
        found = (
            pl.scan_parquet(
                parts, schema=JOB_EVENTS, missing_columns="insert", extra_columns="ignore",
                glob=False,
            )
            .select("provider", "model")
            .drop_nulls()
            .unique()
            .collect()
        )  # fmt: skip
    return list(found.iter_rows())


def check_price_value(model: str, part: str, value: object) -> float:
    """A price in USD per million tokens: a finite number >= 0 (a boolean is not one)."""
    if not is_real(value) or float(value) < 0:  # type: ignore[arg-type]
        msg = (
            f"prices[{model!r}] {part} must be a finite number >= 0 (USD per million "
            f"tokens), got {value!r}"
        )
        raise ConfigError(msg)
    return float(value)  # type: ignore[arg-type]


def check_patience(value: object) -> float:
    """``provider_patience`` in seconds: a finite number > 0 or a positive timedelta."""
    if isinstance(value, dt.timedelta):
        if value.total_seconds() <= 0:
            msg = f"provider_patience must be positive, got {value!r}"
            raise ConfigError(msg)
        return value.total_seconds()
    return check_positive("provider_patience", value, "seconds, or a datetime.timedelta")


def _time_limit_seconds(value: Any) -> float | None:
    if value is None:
        return None
    hint = "seconds, or a datetime.timedelta"
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
        if seconds <= 0:
            msg = f"time_limit must be positive ({hint}), got {value!r}"
            raise ConfigError(msg)
        return seconds
    return check_positive("time_limit", value, hint)


MODES = ("batch", "realtime", "auto")


def check_mode(
    mode: object, *, concurrency: object, deadline: object, wait: object
) -> tuple[str, int | None, float | None]:
    """Check ``mode``, ``concurrency`` and ``deadline``; deadline in seconds from now.

    ``deadline`` is seconds (or a ``timedelta``) from now, or a timezone-aware
    ``datetime``; it only means something to ``mode="auto"``. ``concurrency`` only means
    something to the modes that send realtime requests (``"realtime"``, ``"auto"``): with
    ``mode="batch"`` it is refused, as ``deadline`` is outside ``"auto"``.

    Examples
    --------
    >>> check_mode("auto", concurrency=4, deadline=dt.timedelta(minutes=5), wait=True)
    ('auto', 4, 300.0)
    """
    if mode not in MODES:
        msg = (
            f"mode must be one of {list(MODES)!r}, got {mode!r}: 'batch' (half price, minutes "
            "to hours), 'realtime' (standard price, seconds), 'auto' (batch, realtime for "
            "small jobs and what a batch would not finish by deadline=)"
        )
        raise ConfigError(msg)
    count = None
    if concurrency is not None:
        count = check_count("concurrency", concurrency, "most realtime requests in flight at once")
        if mode == "batch":
            # Taken and ignored, it let a user believe it bounded something (the batches).
            msg = (
                "concurrency= is for mode='realtime' or mode='auto' (the realtime requests "
                "in flight at once), got mode='batch', which sends batches: drop "
                "concurrency=, or pass mode='realtime' or mode='auto' "
                "(max_parallel_batches= bounds the batches in flight)"
            )
            raise ConfigError(msg)
    seconds: float | None = None
    if deadline is not None:
        if mode != "auto":
            msg = (
                f"deadline= is for mode='auto' (it decides what goes realtime), got "
                f"mode={mode!r}; use time_limit= to stop a {mode} run at a time"
            )
            raise ConfigError(msg)
        if isinstance(deadline, dt.datetime):
            if deadline.tzinfo is None:
                msg = (
                    f"deadline={deadline!r} has no timezone; give an aware datetime, e.g. "
                    "datetime.now(timezone.utc) + timedelta(hours=1)"
                )
                raise ConfigError(msg)
            seconds = (deadline - dt.datetime.now(dt.UTC)).total_seconds()
        elif isinstance(deadline, dt.timedelta):
            seconds = deadline.total_seconds()
        else:
            seconds = check_positive(
                "deadline", deadline, "seconds from now, a timedelta or an aware datetime"
            )
        if seconds <= 0:
            msg = f"deadline={deadline!r} has already passed; give a time in the future"
            raise ConfigError(msg)
    if mode != "batch" and wait is False:
        msg = (
            f"wait=False is for mode='batch' (submit now, collect later); mode={mode!r} "
            "answers while you wait. Use mode='batch' with wait=False, or wait=True"
        )
        raise ConfigError(msg)
    return str(mode), count, seconds
