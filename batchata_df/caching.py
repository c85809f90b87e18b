"""Prompt caching: the providers' rules, shared prefixes, and where requests mark them.

Rows that share a long leading part (one system prompt of thousands of tokens, many
questions about one document) pay full input price on every row unless the provider can
serve that part from its prompt cache. The three providers do it differently:

* **Anthropic** caches only what a request marks: a ``cache_control`` on a content block
  caches everything up to and including it (tools, system, messages in that order), at
  most 4 breakpoints a request, and only when that prefix holds at least the model's
  minimum cacheable length (:func:`min_cacheable_tokens`; below it the request runs
  uncached, without an error). A write costs 1.25x the input rate (5-minute cache), a
  read 0.1x, both on top of the batch discount. Anthropic's batch documentation advises
  caching shared context in batches (https://docs.claude.com/en/docs/build-with-claude/
  batch-processing, "Since batches may take longer than 5 minutes ... consider using the
  1-hour cache duration"); we use the default 5-minute duration, whose write price is the
  one genai-prices lists (``cache_write_mtok``); the 1-hour write (2x) is not priced there.
* **OpenAI** caches every prompt of at least 1,024 tokens on its own, matched by exact
  prefix in 128-token steps; ``prompt_cache_key`` routes requests that share a prefix to the
  same cache (https://developers.openai.com/api/docs/guides/prompt-caching; openai 3.57
  ``types/chat/completion_create_params.py`` ``prompt_cache_key``). Reads are billed at the
  cached-input rate; genai-prices lists a cache-write rate for the newest models.
* **Gemini** caches implicitly (2.5 and newer): requests that start with the same content
  inside a short time hit the cache, reported as ``cachedContentTokenCount``, above a
  minimum per model (https://ai.google.dev/gemini-api/docs/caching, updated 2026-10-13:
  2,048 for Gemini 2.5 Flash/Pro, 4,096 for Gemini 3.x). Explicit cached contents are not
  used: batch prediction refuses them on Vertex ("does not support cached content with
  batch prediction", discuss.ai.google.dev/t/107293), they bill storage per hour while a
  batch may wait for hours, and implicit caching of ordered requests already gives the
  cached rate (genai-prices' batch variant of each Gemini model keeps the standard cache
  rate, see :mod:`batchata_df.cost`).

What we do (:func:`cache_plan`): per provider and model, sort the jobs so that rows with
the same system prompt, files and leading prompt text are adjacent (the frame keeps input
order: results are joined back by job id), find each run of adjacent rows that share a
leading part of their prompt (exact longest common prefix, cut back to a whitespace
boundary), and give every job the length of the shared prompt prefix it may mark
(``cache_split``), whether its system prompt is worth a breakpoint (``cache_system``), a
routing key for the shared prefix (``cache_key``) and the estimated tokens of that prefix
(``cache_prefix_tokens``). The providers' encoders turn these into ``cache_control``
blocks (Anthropic), ``prompt_cache_key`` (OpenAI) or nothing but the order (Gemini).
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

import polars as pl

__all__ = [
    "CACHE_COLUMNS",
    "cache_plan",
    "cache_sort",
    "cluster_order",
    "caches_unasked",
    "min_cacheable_tokens",
]

# Anthropic: the minimum cacheable prompt per model family (first match wins). Sources:
# the prompt-caching page (https://platform.claude.com/docs/en/build-with-claude/
# prompt-caching, "Cache limitations") as quoted by docs.orq.ai/docs/proxy/prompt-caching
# (Opus 4.5/4.6 and Haiku 4.5 4,096; Sonnet 4.5, Opus 4.1/4, Sonnet 4 1,024; Haiku 3/3.5
# 2,048), claudecodeguides.com/claude-cache-minimum-token-requirements-2026 and
# clawdemy.org (Opus 4.7 4,096; Opus 4.8 and Sonnet 4.6 1,024) and dev.to/creeta
# "Claude's prompt cache fails silently below 1,024 tokens" (Opus 5 512; Sonnet 5 1,024).
_ANTHROPIC_MIN: Final[tuple[tuple[str, int], ...]] = (
    (r"claude-opus-5", 512),
    (r"claude-opus-4-[567]", 4096),
    (r"claude-haiku-4", 4096),
    (r"claude-(3-5-|3-)?haiku", 2048),
    (r"claude-", 1024),
)
# Gemini implicit caching (2.5 and newer only; older models have none).
_GEMINI_MIN: Final[tuple[tuple[str, int | None], ...]] = (
    (r"gemini-2\.5", 2048),
    (r"gemini-(1|2\.0)", None),
    (r"gemini-", 4096),
)
OPENAI_MIN: Final = 1024
"""OpenAI caches prompts of at least 1,024 tokens, in 128-token steps beyond that."""
OPENAI_STEP: Final = 128


def min_cacheable_tokens(provider: str, model: str) -> int | None:
    """The shortest prefix the provider caches for ``model`` (``None``: no caching).

    Examples
    --------
    >>> min_cacheable_tokens("anthropic", "claude-haiku-4-5"), min_cacheable_tokens(
    ...     "anthropic", "claude-sonnet-4-6")
    (4096, 1024)
    >>> min_cacheable_tokens("gemini", "gemini-2.5-flash"), min_cacheable_tokens(
    ...     "gemini", "gemini-2.0-flash")
    (2048, None)
    >>> min_cacheable_tokens("openai", "gpt-5.4-mini")
    1024
    """
    if provider == "openai":
        return OPENAI_MIN
    table: tuple[tuple[str, int | None], ...]
    if provider == "anthropic":
        table = _ANTHROPIC_MIN
    elif provider == "gemini":
        table = _GEMINI_MIN
    else:
        return None
    name = model.rsplit("/", 1)[-1]
    for pattern, tokens in table:
        if re.match(pattern, name):
            return tokens
    return None


def caches_unasked(provider: str) -> bool:
    """Whether the provider may cache (and bill a write for) a prompt nobody marked."""
    return provider == "openai"


CACHE_COLUMNS: Final = (
    "cache_split", "cache_system", "cache_files", "cache_key", "cache_prefix_tokens"
)  # fmt: skip
"""Columns :func:`cache_plan` adds to the jobs (see the module docstring)."""

_MIN_SHARED_CHARS: Final = 256
"""A shared prompt prefix shorter than this is not worth a breakpoint of its own."""


_LCP_CHUNK: Final = 1024


def _lcp_with_previous(text: pl.Series, same_group: pl.Series) -> pl.Series:
    """Exact longest common prefix (characters) of each string and the one before it.

    0 for the first row and where ``same_group`` is false. Vectorised in two phases, so
    each row's characters are copied about twice, not once per step: equal chunks of
    :data:`_LCP_CHUNK` characters (all rows still equal move to the next chunk together),
    then a binary search inside the first chunk that differs.

    Examples
    --------
    >>> t = pl.Series(["abcd", "abcx", "abcx", "zz"])
    >>> _lcp_with_previous(t, pl.Series([False, True, True, True])).to_list()
    [0, 3, 4, 0]
    """
    n = text.len()
    frame = pl.DataFrame({"t": text, "same": same_group}).with_columns(
        pl.col("t").shift(1).alias("p"),
        pl.int_range(n, dtype=pl.Int64).alias("i"),
    )
    frame = frame.with_columns(
        pl.when(pl.col("same"))
        .then(pl.min_horizontal(pl.col("t").str.len_chars(), pl.col("p").str.len_chars()))
        .otherwise(0)
        .fill_null(0)
        .cast(pl.Int64)
        .alias("lim"),
    ).filter(pl.col("lim") > 0)
    found: list[pl.DataFrame] = []
    offset = 0
    active = frame.select("i", "t", "p", "lim")
    searching: list[pl.DataFrame] = []
    while active.height:
        active = active.with_columns(
            (pl.col("t").str.slice(offset, _LCP_CHUNK) == pl.col("p").str.slice(offset, _LCP_CHUNK))
            .alias("eq")
        )
        end = offset + _LCP_CHUNK
        done = active.filter(pl.col("eq") & (pl.col("lim") <= end))
        found.append(done.select("i", pl.col("lim").alias("lcp")))
        searching.append(
            active.filter(~pl.col("eq")).select(
                "i", "t", "p", pl.lit(offset, dtype=pl.Int64).alias("lo"),
                pl.min_horizontal(pl.col("lim"), pl.lit(end)).cast(pl.Int64).alias("hi"),
            )
        )  # fmt: skip
        active = active.filter(pl.col("eq") & (pl.col("lim") > end)).drop("eq")
        offset = end
    pending = pl.concat(searching) if searching else pl.DataFrame()
    while pending.height:
        mid = (pl.col("lo") + pl.col("hi") + 1) // 2
        eq = pl.col("t").str.slice(pl.col("lo"), mid - pl.col("lo")) == pl.col("p").str.slice(
            pl.col("lo"), mid - pl.col("lo")
        )
        pending = pending.with_columns(eq.alias("eq"), mid.alias("mid")).with_columns(
            pl.when(pl.col("eq")).then(pl.col("mid")).otherwise(pl.col("lo")).alias("lo"),
            pl.when(pl.col("eq")).then(pl.col("hi")).otherwise(pl.col("mid") - 1).alias("hi"),
        )
        settled = pending.filter(pl.col("lo") >= pl.col("hi"))
        found.append(settled.select("i", pl.col("lo").alias("lcp")))
        pending = pending.filter(pl.col("lo") < pl.col("hi")).drop("eq", "mid")
    lcp = (
        pl.concat(found)
        if found
        else pl.DataFrame(schema={"i": pl.Int64, "lcp": pl.Int64})
    )
    return (
        pl.DataFrame({"i": pl.int_range(n, dtype=pl.Int64, eager=True)})
        .join(lcp, on="i", how="left")
        .get_column("lcp")
        .fill_null(0)
        .cast(pl.Int64)
    )


def _key(*parts: str) -> str:
    h = hashlib.blake2b(digest_size=10)
    for p in parts:
        h.update(p.encode())
        h.update(b"\x00")
    return "bdf-" + h.hexdigest()


def cluster_order(group: pl.DataFrame) -> pl.DataFrame:
    """``group`` (with ``cache_key``) in send order: jobs sharing a prefix sit together.

    Each job sharing a prefix moves up to the first job of its ``cache_key``; every other
    job keeps its place, so the input order holds wherever nothing is shared.

    Examples
    --------
    >>> g = pl.DataFrame({"job_id": list("abcd"), "cache_key": ["k", None, "k", None]})
    >>> cluster_order(g).get_column("job_id").to_list()
    ['a', 'c', 'b', 'd']
    """
    index = pl.int_range(pl.len())
    anchor = pl.when(pl.col("cache_key").is_not_null()).then(index.min().over("cache_key"))
    return (
        group.with_columns(index.alias("_i"))
        .with_columns(anchor.fill_null(pl.col("_i")).alias("_a"))
        .sort("_a", "_i")
        .drop("_a", "_i")
    )


def cache_sort(group: pl.DataFrame, *, keep_key: bool = False) -> pl.DataFrame:
    """``group`` sorted by system, files and prompt: shared prefixes become neighbours.

    Stable (equal keys keep their order). With ``keep_key`` the files' key column
    ``_files_key`` is kept.
    """
    if "files" in group.columns:
        from batchata_df.files import files_key

        group = group.with_columns(files_key(pl.col("files")).alias("_files_key"))
    else:
        group = group.with_columns(pl.lit("").alias("_files_key"))
    group = group.sort(
        [pl.col("system").fill_null(""), "_files_key", pl.col("prompt").fill_null("")],
        maintain_order=True,
    )
    return group if keep_key else group.drop("_files_key")


def cache_plan(group: pl.DataFrame, provider: str, model: str) -> pl.DataFrame:
    """Sort one provider+model group of jobs for caching and add :data:`CACHE_COLUMNS`.

    ``group`` has ``prompt``, ``system`` and optionally ``files`` / ``history`` /
    ``est_input_tokens``. Jobs with the same system prompt, files and leading prompt text
    end up adjacent. ``cache_split`` is the number of prompt characters shared with the
    neighbouring jobs (cut at whitespace; null: none worth marking), ``cache_system``
    whether the system prompt alone reaches the model's cacheable minimum and is shared,
    ``cache_key`` a stable id of the deepest shared prefix (null: nothing shared) and
    ``cache_prefix_tokens`` its estimated tokens.

    Examples
    --------
    >>> doc = "Contract text. " * 400
    >>> jobs = pl.DataFrame({"job_id": ["a", "b", "c"], "system": [None] * 3,
    ...     "prompt": [doc + "Q: who?", "Unrelated", doc + "Q: when?"]})
    >>> plan = cache_plan(jobs, "anthropic", "claude-sonnet-4-6")
    >>> plan.get_column("job_id").to_list(), plan.get_column("cache_split").to_list()
    (['a', 'c', 'b'], [6003, 6003, None])

    A job whose whole prompt is the shared part marks all of it (every job of a key marks
    the same prefix, so the one that runs first writes it and the others read it):

    >>> jobs = pl.DataFrame({"job_id": ["a", "b"], "system": [None] * 2,
    ...     "prompt": [doc, doc + "what is it?"]})
    >>> cache_plan(jobs, "anthropic", "claude-sonnet-4-6").get_column("cache_split").to_list()
    [6000, 6000]
    """
    minimum = min_cacheable_tokens(provider, model)
    if minimum is not None and group.height >= 2 and _too_short(group, minimum):
        # Nothing can be shared: the plan below would find nothing to mark and keep the
        # input order, so skip the sort, the prefix search and the tokenizer.
        return _unmarked(group)
    return _plan(group, provider, model, minimum)


def _too_short(group: pl.DataFrame, minimum: int) -> bool:
    """Whether no job's system prompt and prompt together can reach ``minimum`` tokens.

    Every token estimate is at most the text's UTF-8 byte count (an OpenAI BPE token is
    at least one byte; :func:`batchata_df.tokens.estimate_tokens`' approximation counts
    at most one token per byte), and a shared prefix is made of the system prompt, the
    files and a leading part of the prompt (history turns are never part of it). So
    without files, when every row's system + prompt is shorter than ``minimum`` bytes,
    no prefix is worth marking and :func:`cache_plan` marks nothing.
    """
    if "files" in group.columns:
        return False
    longest = group.select(
        (
            pl.col("system").cast(pl.String).str.len_bytes().fill_null(0)
            + pl.col("prompt").cast(pl.String).str.len_bytes().fill_null(0)
        ).max()
    ).item()
    return longest is None or int(longest) < minimum


def _unmarked(group: pl.DataFrame) -> pl.DataFrame:
    """``group`` in input order with :data:`CACHE_COLUMNS` saying nothing is shared."""
    return group.with_columns(
        pl.lit(None, dtype=pl.Int64).alias("cache_split"),
        pl.lit(False).alias("cache_system"),
        pl.lit(False).alias("cache_files"),
        pl.lit(None, dtype=pl.String).alias("cache_key"),
        pl.lit(0, dtype=pl.Int64).alias("cache_prefix_tokens"),
    )


def _plan(group: pl.DataFrame, provider: str, model: str, minimum: int | None) -> pl.DataFrame:
    """:func:`cache_plan` without the shortcut for groups too short to share anything."""
    from batchata_df.tokens import estimate_tokens

    group = cache_sort(group.with_row_index("_input_order"), keep_key=True)
    empty = group.with_columns(
        pl.lit(None, dtype=pl.Int64).alias("cache_split"),
        pl.lit(False).alias("cache_system"),
        pl.lit(False).alias("cache_files"),
        pl.lit(None, dtype=pl.String).alias("cache_key"),
        pl.lit(0, dtype=pl.Int64).alias("cache_prefix_tokens"),
    ).drop("_files_key")
    if minimum is None or group.height < 2:
        return empty.sort("_input_order").drop("_input_order")
    system = group.get_column("system").fill_null("")
    fkey = group.get_column("_files_key")
    prompt = group.get_column("prompt").fill_null("")
    head = pl.DataFrame({"s": system, "f": fkey})
    same_head = (
        head.select((pl.col("s") == pl.col("s").shift(1)) & (pl.col("f") == pl.col("f").shift(1)))
        .to_series()
        .fill_null(False)
    )
    # Rows sharing system + files: the "head" every row of the group repeats.
    head_id = (~same_head).cum_sum()
    head_size = head.with_columns(head_id.alias("h")).select(pl.len().over("h")).to_series()
    # Tokens of each distinct system prompt and file set (estimated once per head).
    heads = (
        pl.DataFrame({"h": head_id, "s": system, "i": pl.int_range(group.height, eager=True)})
        .group_by("h", maintain_order=True)
        .first()
    )
    sys_tokens_by_head = estimate_tokens(heads.get_column("s"), provider, model)
    file_tokens = pl.Series([0] * group.height, dtype=pl.Int64)
    if "files" in group.columns:
        from batchata_df.files import file_tokens as count_files

        firsts = group.select(pl.col("files").gather(heads.get_column("i")))
        per_head = count_files(firsts.to_series(), provider, model)
        file_tokens = (
            pl.DataFrame({"h": heads.get_column("h"), "ft": per_head.cast(pl.Int64)})
            .join(pl.DataFrame({"h": head_id}), on="h", how="right")
            .get_column("ft")
        )
    head_tokens = pl.DataFrame(
        {"h": heads.get_column("h"), "st": sys_tokens_by_head.cast(pl.Int64)}
    ).join(pl.DataFrame({"h": head_id}), on="h", how="right").get_column("st").fill_null(
        0
    ) + file_tokens.fill_null(0)
    has_system = system.str.len_chars() > 0
    cache_system = (has_system & (head_size >= 2) & (head_tokens >= minimum)).fill_null(False)
    # The same files (sent before the prompt) on several jobs: mark the last file block.
    has_files = fkey.str.len_chars() > 0
    cache_files = (has_files & (head_size >= 2) & (head_tokens >= minimum)).fill_null(False)

    # The prompt prefix shared within a head: runs of adjacent rows whose common prefix
    # is long enough; a run's common prefix is the smallest adjacent one in it (sorted).
    with_history = "history" in group.columns
    lcp = _lcp_with_previous(prompt, same_head)
    link = lcp >= _MIN_SHARED_CHARS
    if with_history:  # turns sit between system and prompt: only the system is shared
        link = pl.Series([False] * group.height)
    nxt = link.shift(-1).fill_null(False)
    in_run = link | nxt
    run_id = (~link).cum_sum()
    runs = pl.DataFrame({"run": run_id, "lcp": lcp, "link": link, "in": in_run, "p": prompt})
    run_lcp = runs.select(
        pl.when(pl.col("link")).then(pl.col("lcp")).min().over("run").alias("m")
    ).to_series()
    runs = runs.with_columns(run_lcp.alias("m"))
    # Cut back to the last whitespace inside the shared part, so a block never splits a word.
    # The shared part is the same text for every job of a run: cut it once per run, on
    # its last 256 characters (the whitespace is near the end of the shared part).
    firsts = (
        runs.with_row_index("_r")
        .filter(pl.col("in"))
        .group_by("run", maintain_order=True)
        .first()
        .select(
            "run",
            pl.col("m").fill_null(0).alias("m"),
            pl.col("p")
            .str.slice(pl.max_horizontal(pl.col("m").fill_null(0) - 256, 0), 256)
            .alias("tail"),
        )
        .with_columns(
            (
                pl.col("m")
                - pl.col("tail").str.len_chars()
                + pl.col("tail").str.len_chars()
                - pl.col("tail").str.replace(r"(?s)^.*\s", "").str.len_chars()
            ).alias("cut"),
            pl.col("tail").str.contains(r"\s").alias("ws"),
        )
        .with_columns(pl.when(pl.col("ws")).then(pl.col("cut")).otherwise(0).alias("cut"))
    )
    cut = (
        firsts.select("run", "cut")
        .join(pl.DataFrame({"run": run_id}), on="run", how="right")
        .get_column("cut")
        .fill_null(0)
    )
    # A job whose whole prompt is the shared part (``cut == n``: "P" beside "P + question")
    # marks it too, as one block: leaving it unmarked made the other job write a cache
    # that nothing read (1.25x paid for nothing) and this one pay the full rate.
    split = (
        pl.DataFrame({"cut": cut, "in": in_run, "n": prompt.str.len_chars()})
        .select(
            pl.when(pl.col("in") & (pl.col("cut") > 0) & (pl.col("cut") <= pl.col("n")))
            .then(pl.col("cut"))
            .cast(pl.Int64)
        )
        .to_series()
    )
    # Tokens of each run's shared prompt part, estimated once per run.
    cand = (
        pl.DataFrame({"run": run_id, "c": split, "p": prompt})
        .filter(pl.col("c").is_not_null())
        .group_by("run", maintain_order=True)
        .first()
    )
    cand_tokens = estimate_tokens(
        cand.select(pl.col("p").str.slice(0, pl.col("c"))).to_series(), provider, model
    ).cast(pl.Int64)
    prefix_tokens = (
        pl.DataFrame({"run": cand.get_column("run"), "t": cand_tokens})
        .join(pl.DataFrame({"run": run_id}), on="run", how="right")
        .select(pl.when(split.is_not_null()).then(pl.col("t")).otherwise(0).fill_null(0))
        .to_series()
    )
    deep_tokens = head_tokens + prefix_tokens
    use_split = split.is_not_null() & (deep_tokens >= minimum)
    final_split = pl.select(pl.when(use_split).then(split)).to_series()
    # The deepest prefix each job shares: system + files (+ the marked prompt part).
    shared_tokens = pl.select(
        pl.when(use_split)
        .then(deep_tokens)
        .when((head_size >= 2) & (head_tokens >= minimum))
        .then(head_tokens)
        .otherwise(0)
    ).to_series()
    # One key per shared prefix: per head, and per run whose prompt part is marked.
    units = pl.DataFrame(
        {
            "h": head_id,
            "r": pl.select(pl.when(use_split).then(run_id)).to_series(),
            "t": shared_tokens,
            "i": pl.int_range(group.height, eager=True),
        }
    )
    firsts = units.filter(pl.col("t") > 0).group_by("h", "r", maintain_order=True).first()
    keys = []
    for i, r in zip(firsts.get_column("i").to_list(), firsts.get_column("r").to_list(),
                    strict=True):  # fmt: skip
        part = prompt[i][: split[i]] if r is not None else ""
        keys.append(_key(model, system[i], fkey[i], part))
    cache_key = (
        firsts.select("h", "r")
        .with_columns(pl.Series("k", keys, dtype=pl.String))
        .join(units.select("h", "r"), on=["h", "r"], how="right", nulls_equal=True)
        .select(pl.when(shared_tokens > 0).then(pl.col("k")))
        .to_series()
    )
    planned = group.with_columns(
        final_split.alias("cache_split"),
        cache_system.alias("cache_system"),
        cache_files.alias("cache_files"),
        cache_key.alias("cache_key"),
        shared_tokens.cast(pl.Int64).alias("cache_prefix_tokens"),
    ).drop("_files_key")
    return cluster_order(planned.sort("_input_order").drop("_input_order"))
