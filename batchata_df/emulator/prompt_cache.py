"""The providers' prompt caches, as strict as the services: what a request may read.

One :class:`PromptCaches` lives in each protocol app (so caches survive across batches,
as the providers' do, and expire on the emulator's clock). Requests are looked up in the
order a batch runs them (file order), so the first request with a prefix writes it and
the later ones read it.

* Anthropic (:meth:`PromptCaches.anthropic`): only prefixes ending at a block marked
  ``cache_control`` (at most 4) count, and only when that prefix holds at least the
  model's minimum (:func:`batchata_df.caching.min_cacheable_tokens`). The longest marked
  prefix found in the cache is read (``cache_read_input_tokens``); the tokens from there
  to the last eligible breakpoint are written (``cache_creation_input_tokens``). A read
  refreshes the entry's 5-minute (or ``ttl: "1h"``) lifetime.
* OpenAI (:meth:`PromptCaches.openai`): a request reads the longest exact prefix it shares
  with an earlier request of the same model *and* the same ``prompt_cache_key`` (requests
  without a key are not routed to a shared cache here: the key is how a batch client asks
  for it), when that prefix is at least 1,024 tokens, counted in 128-token steps.
  Entries live 10 minutes.
* Gemini (:meth:`PromptCaches.gemini`): implicit caching: the longest exact prefix shared
  with an earlier request of the same model, at least the model's minimum; none for
  models before 2.5.

Prefixes are compared on the request's text, and counted in tokens as the emulator bills
them (OpenAI: the prefix's exact BPE count; the others: 4 characters a token); binary
parts (images, PDFs) enter the compared text as a digest, so different files never share a
prefix.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Final

from batchata_df.caching import OPENAI_MIN, OPENAI_STEP, min_cacheable_tokens

__all__ = ["PromptCaches", "common_prefix"]

ANTHROPIC_TTL: Final = {"5m": 300.0, "1h": 3600.0}
OPENAI_TTL: Final = 600.0
GEMINI_TTL: Final = 600.0
_KEEP: Final = 64
"""Prefixes kept per (model, key) for OpenAI and Gemini matching (the most recent)."""
_CHARS_PER_TOKEN: Final = 4


def common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix of ``a`` and ``b`` (binary search on slices).

    Examples
    --------
    >>> common_prefix("abcdef", "abcxyz"), common_prefix("", "a"), common_prefix("ab", "ab")
    (3, 0, 2)
    """
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class PromptCaches:
    """Prompt caches of one provider protocol, keyed by model (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._marked: dict[tuple[str, str], float] = {}  # (model, prefix hash) -> expires
        self._texts: dict[tuple[str, str], OrderedDict[str, float]] = {}

    def anthropic(
        self, model: str, breakpoints: list[tuple[str, int, str]], now: float
    ) -> tuple[int, int]:
        """(read, written) tokens of a request with these breakpoints.

        ``breakpoints`` are ``(prefix hash, tokens up to and including the block, ttl)`` in
        request order.
        """
        minimum = min_cacheable_tokens("anthropic", model)
        if minimum is None:
            return 0, 0
        eligible = [b for b in breakpoints if b[1] >= minimum]
        if not eligible:
            return 0, 0
        with self._lock:
            read = 0
            for digest, tokens, ttl in reversed(eligible):
                expires = self._marked.get((model, digest))
                if expires is not None and expires >= now:
                    read = tokens
                    self._marked[(model, digest)] = now + ANTHROPIC_TTL.get(ttl, 300.0)
                    break
            deepest = eligible[-1][1]
            written = max(deepest - read, 0)
            for digest, tokens, ttl in eligible:
                if tokens > read:
                    self._marked[(model, digest)] = now + ANTHROPIC_TTL.get(ttl, 300.0)
        return read, written

    def _longest(self, scope: tuple[str, str], text: str, now: float, ttl: float) -> int:
        """Longest live prefix of ``text`` in ``scope``; remembers ``text`` (characters)."""
        with self._lock:
            entries = self._texts.setdefault(scope, OrderedDict())
            best = 0
            probe = text[:1]
            expired = []
            for other in reversed(entries):  # newest first: the likeliest longest match
                if entries[other] < now:
                    expired.append(other)
                    continue
                if not other.startswith(probe):
                    continue  # cannot share more than ``best``: skip without a scan
                best = common_prefix(text, other)
                if best == len(text):
                    break
                probe = text[: best + 1]
            for other in expired:
                del entries[other]
            entries[text] = now + ttl
            entries.move_to_end(text)
            while len(entries) > _KEEP:
                entries.popitem(last=False)
        return best

    def openai(self, model: str, key: str | None, text: str, prompt_tokens: int, now: float) -> int:
        """``cached_tokens`` of a request (0 without a ``prompt_cache_key``)."""
        if key is None or prompt_tokens < OPENAI_MIN:
            return 0
        from batchata_df.emulator.model_rules import openai_counter

        # The shared prefix in the tokens OpenAI bills (its exact BPE count, as usage is).
        chars = self._longest((model, "key:" + key), text, now, OPENAI_TTL)
        shared = min(openai_counter(model)(text[:chars]) if chars else 0, prompt_tokens)
        if shared < OPENAI_MIN:
            return 0
        return OPENAI_MIN + (shared - OPENAI_MIN) // OPENAI_STEP * OPENAI_STEP

    def gemini(self, model: str, text: str, prompt_tokens: int, now: float) -> int:
        """``cachedContentTokenCount`` of a request (implicit caching)."""
        minimum = min_cacheable_tokens("gemini", model)
        if minimum is None or prompt_tokens < minimum:
            return 0
        shared = self._longest((model, "implicit"), text, now, GEMINI_TTL) // _CHARS_PER_TOKEN
        shared = min(shared, prompt_tokens)
        return shared if shared >= minimum else 0
