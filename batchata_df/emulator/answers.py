"""Deterministic fake answers for the loopback emulator, shared by every provider.

Everything here is a pure function of its inputs: the same schema and seed always give
the same value, so a test can predict an emulated batch's answers byte for byte.

Schemas
-------
:func:`fake_value` returns a value that is valid for a JSON Schema of the subset used by
structured outputs (OpenAI strict mode, Anthropic ``output_config.format``, Gemini
``responseJsonSchema``): ``$ref``/``$defs`` (also ``definitions``, and recursive models),
``anyOf``/``oneOf``/``allOf``, type lists such as ``["string", "null"]``, ``enum``, ``const``,
(``anyOf [number, string]``, pydantic's ``Decimal``, yields numbers or numeric strings),
objects (``properties``, ``required``, ``additionalProperties``), arrays (``items``,
``prefixItems``, ``minItems``/``maxItems``, ``uniqueItems`` for enums), strings (``format``
``date``, ``date-time``, ``time``, ``email``, ``uuid``, ``uri``, ``duration``,
``ipv4``; ``pattern`` for the usual decimal/integer/date patterns; ``minLength``/``maxLength``),
integers and numbers (``minimum``/``maximum``, exclusive bounds, ``multipleOf``) and booleans.
The generator for a schema is compiled once and cached.

Magic markers
-------------
A test forces the outcome of one request by putting a marker anywhere in the request's
prompt text (any message, system prompt included):

``[[emulator:error]]``
    The request fails. OpenAI: an error-file line with ``status_code`` 500 and error
    code ``server_error``. ``[[emulator:error:400]]`` (or 429) picks the status; 400 gives an
    ``invalid_request_error``.
``[[emulator:invalid]]``
    The model answers with JSON that parses but does **not** validate against the schema
    (a required field is missing, or a value has the wrong type).
``[[emulator:overflow]]``
    The answer's first unbounded number (no bound, ``multipleOf``, ``enum`` or ``const`` in
    its schema; nested objects searched too) is ``1e400``, past what a double holds, the
    rest valid: JSON sets no limit on numbers and such a schema allows any, so a model may
    write one (a decoder reads it as infinity, or refuses it). An answer without such a
    number is left valid. Structured answers in text only (an Anthropic tool call's input
    stays valid).
``[[emulator:truncate]]``
    The answer is cut off by the output limit: OpenAI ``finish_reason`` ``length``,
    Anthropic ``stop_reason`` ``max_tokens``, Gemini ``finishReason`` ``MAX_TOKENS``, text
    that is not valid JSON, and the whole limit billed as output tokens.
``[[emulator:refusal]]``
    The model refuses (OpenAI: ``message.refusal`` set and ``content`` null).
``[[emulator:filter]]``
    The provider's safety filter stops the answer part-way: OpenAI ``finish_reason``
    ``content_filter``, Anthropic ``stop_reason`` ``refusal``, Gemini ``finishReason``
    ``SAFETY``, each with the partial text.
``[[emulator:recitation]]``
    Gemini ``finishReason`` ``RECITATION`` with the partial text (the others: as ``filter``).
``[[emulator:details]]``
    Gemini: a per-request error whose ``details`` are the typed ``google.rpc`` objects the
    API sends (``{"@type": ...}``), which google-genai 3.6.1's ``JobError`` (``details:
    list[str]``) cannot parse. The others: as ``error``.
``[[emulator:context]]``
    Anthropic ``stop_reason`` ``model_context_window_exceeded`` with the partial text (the
    others have no such stop reason: as ``truncate``).
``[[emulator:think]]``
    Gemini: the model thinks as long as it may, inside ``maxOutputTokens``: 2.5's dynamic
    thinking (no budget, or -1) up to 8,192 tokens, a fixed budget all of it, a 3.x level
    until the output limit stops it (:func:`.model_rules.gemini_thoughts`, sources there).
    The others: an unmarked prompt.

Examples
--------
>>> schema = {"type": "object", "additionalProperties": False, "required": ["n", "tag"],
...           "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 5},
...                          "tag": {"enum": ["a", "b"]}}}
>>> value = fake_value(schema, "row-1")
>>> sorted(value), 1 <= value["n"] <= 5, value["tag"] in ("a", "b")
(['n', 'tag'], True, True)
>>> fake_value(schema, "row-1") == value
True
>>> find_marker("Summarise this [[emulator:truncate]]")
'truncate'
>>> count_tokens("twelve chars")
3
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import re
import zlib
from collections.abc import Callable, Mapping
from typing import Any, Final

__all__ = [
    "MARKER_ERROR",
    "MARKER_INVALID",
    "MARKER_OVERFLOW",
    "MARKER_CONTEXT",
    "MARKER_DETAILS",
    "MARKER_FILTER",
    "MARKER_RECITATION",
    "MARKER_REFUSAL",
    "MARKER_THINK",
    "MARKER_TRUNCATE",
    "POOL_SIZE",
    "UNKNOWN_MODEL",
    "AnswerGenerator",
    "count_tokens",
    "fake_invalid_value",
    "fake_text",
    "fake_value",
    "find_marker",
    "generator_for",
    "marker_status",
    "seed_int",
]

MARKER_ERROR: Final = "error"
MARKER_INVALID: Final = "invalid"
MARKER_OVERFLOW: Final = "overflow"
MARKER_TRUNCATE: Final = "truncate"
MARKER_REFUSAL: Final = "refusal"
MARKER_FILTER: Final = "filter"
MARKER_RECITATION: Final = "recitation"
MARKER_CONTEXT: Final = "context"
MARKER_DETAILS: Final = "details"
#: a prompt the model thinks about as long as it may (Gemini: :mod:`.model_rules`
#: ``gemini_thoughts``); the other protocols answer it as an unmarked prompt
MARKER_THINK: Final = "think"
#: a model name every protocol answers as unknown (OpenAI ``model_not_found``, Anthropic
#: ``not_found_error``, Gemini 404 ``NOT_FOUND``), as it does any name the provider does
#: not serve (:func:`batchata_df.emulator.model_rules.serves`)
UNKNOWN_MODEL: Final = "emulator-unknown-model"
_MARKER_PREFIX: Final = "[[emulator:"
_MARKER_RE: Final = re.compile(
    r"\[\[emulator:(error|invalid|overflow|truncate|refusal|filter|recitation|context|details|think)(?::(\d{3}))?\]\]"
)

# How deep recursive schemas are expanded before the generator takes the shortest way
# out (null branch, no optional properties, fewest array items).
_MAX_DEPTH: Final = 6
_MASK64: Final = (1 << 64) - 1
#: Distinct answers per schema that batch rows draw from (see AnswerGenerator.pooled).
POOL_SIZE: Final = 4096
_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_OVERFLOW: Final = "\x00overflow"  # stands for 1e400 while a value is encoded: no answer holds it
_quote = json.JSONEncoder(ensure_ascii=False).encode

_WORDS: Final = (
    "amber", "brisk", "cedar", "delta", "ember", "fable", "gamma", "harbor", "ivory", "jolly",
    "kestrel", "lumen", "maple", "nectar", "onyx", "pebble", "quartz", "raven", "sable",
    "tundra", "umber", "velvet", "willow", "xenon", "yonder", "zephyr", "atlas", "bramble",
    "cobalt", "dune", "echo", "fjord",
)  # fmt: skip
assert len(_WORDS) == 32  # _words takes five bits per word


# --------------------------------------------------------------------------------------
# Seeds and a tiny PRNG. random.Random would do, but constructing one per row costs more
# than generating the row, and splitmix64 is enough for fake data.


def seed_int(seed: str) -> int:
    """Turn a text seed into a 64-bit integer, stable across processes and platforms.

    Examples
    --------
    >>> seed_int("a") == seed_int("a") != seed_int("b")
    True
    """
    digest = hashlib.blake2b(seed.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class _Rng:
    """splitmix64: a fast, well-mixed 64-bit generator."""

    __slots__ = ("state",)

    def __init__(self, seed: int) -> None:
        self.state = seed & _MASK64

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        """Return an integer in ``[0, n)``; ``n`` must be positive."""
        return self.next() % n

    def between(self, lo: int, hi: int) -> int:
        """Return an integer in ``[lo, hi]``."""
        return lo + self.next() % (hi - lo + 1)

    def unit(self) -> float:
        """Return a float in ``[0, 1)``."""
        return (self.next() >> 11) * (1.0 / 9007199254740992.0)


_Gen = Callable[[_Rng, int], object]


# --------------------------------------------------------------------------------------
# Public helpers


def count_tokens(text: str) -> int:
    """Approximate a token count the way the emulator bills it: ``max(1, len(text) // 4)``.

    Examples
    --------
    >>> count_tokens(""), count_tokens("abcdefgh")
    (1, 2)
    """
    return max(1, len(text) // 4)


def find_marker(text: str) -> str | None:
    """Return the first magic marker in ``text`` (``"error"``, ``"invalid"``, ...), or None.

    Examples
    --------
    >>> find_marker("plain prompt") is None
    True
    >>> find_marker("x [[emulator:error:400]] y")
    'error'
    """
    if _MARKER_PREFIX not in text:  # the common case costs one substring search
        return None
    match = _MARKER_RE.search(text)
    return match.group(1) if match else None


def marker_status(text: str, default: int = 500) -> int:
    """Return the HTTP status chosen by an ``[[emulator:error:NNN]]`` marker, else ``default``.

    Examples
    --------
    >>> marker_status("[[emulator:error:429]]"), marker_status("[[emulator:error]]")
    (429, 500)
    """
    match = _MARKER_RE.search(text)
    if match is None or match.group(2) is None:
        return default
    status = int(match.group(2))
    return status if 400 <= status <= 599 else default


def answer_seed(prompt: str) -> str:
    """The seed of the answer to a request whose text is ``prompt``, in any mode.

    It depends on what was asked only (not on a batch's ``custom_id``), so a request gets
    the same answer in a batch and from a realtime endpoint, as a deterministic model would.

    Examples
    --------
    >>> answer_seed("Rate: great") == answer_seed("Rate: great") != answer_seed("Rate: bad")
    True
    """
    return "\x1f" + prompt


def request_key(provider: str, model: str, prompt: str) -> str:
    """A short digest naming what a request asked (provider, model, text), in any mode.

    The billing ledger records it for batch and realtime requests alike, so a test can
    prove that no request was paid twice across modes.

    Examples
    --------
    >>> request_key("openai", "m", "hi") == request_key("openai", "m", "hi")
    True
    >>> len(request_key("openai", "m", "hi"))
    16
    """
    text = f"{provider}\x1f{model}\x1f{prompt}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(text, digest_size=8).hexdigest()


def fake_text(prompt: str, seed: str) -> str:
    """Return a short deterministic plain-text answer to ``prompt``.

    Examples
    --------
    >>> fake_text("Say hi", "s1") == fake_text("Say hi", "s1")
    True
    >>> fake_text("Say hi", "s1").startswith("Emulated answer")
    True
    """
    rng = _Rng(seed_int(seed))
    words = " ".join(_WORDS[rng.below(len(_WORDS))] for _ in range(rng.between(6, 14)))
    topic = " ".join(prompt.split()[:6])
    return f"Emulated answer about {topic!r}: {words}."


class AnswerGenerator:
    """A compiled, reusable value generator for one JSON Schema.

    Parameters
    ----------
    schema
        A JSON Schema (the dict form). It is not modified.

    Examples
    --------
    >>> gen = AnswerGenerator({"type": "array", "items": {"type": "boolean"}, "minItems": 2})
    >>> values = gen.value("seed")
    >>> len(values) >= 2 and all(isinstance(v, bool) for v in values)
    True
    """

    __slots__ = ("_gen", "_pool", "schema", "schema_tokens")

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.schema = schema
        #: Rough prompt-token cost of sending the schema, computed once.
        self.schema_tokens = count_tokens(json.dumps(schema, separators=(",", ":")))
        self._gen = _Compiler(schema).compile(schema)
        self._pool: list[tuple[str, str, int]] | None = None

    def value(self, seed: str) -> object:
        """Return a schema-valid value chosen by ``seed``."""
        return self._gen(_Rng(seed_int(seed)), 0)

    def pooled(self, seed: str) -> tuple[str, str, int]:
        """Return ``(json_text, quoted, tokens)`` of a schema-valid answer chosen by ``seed``.

        The answer is one of :data:`POOL_SIZE` values generated once per schema, picked by
        a CRC-32 of the seed, and ``quoted`` is ``json_text`` already encoded as a JSON
        string literal. This is how the emulator answers batch requests: a dictionary
        lookup per row instead of generating and encoding a value, which keeps a
        million-row benchmark from being limited by the emulator.

        Examples
        --------
        >>> gen = AnswerGenerator({"type": "object", "required": ["x"],
        ...                        "properties": {"x": {"type": "integer"}}})
        >>> text, quoted, tokens = gen.pooled("row-7")
        >>> json.loads(json.loads(quoted)) == json.loads(text) and "x" in json.loads(text)
        True
        """
        pool = self._pool
        if pool is None:
            pool = []
            for i in range(POOL_SIZE):
                text = _compact(self._gen(_Rng(seed_int(f"pool:{i}")), 0))
                pool.append((text, _quote(text), count_tokens(text)))
            self._pool = pool
        return pool[zlib.crc32(seed.encode("utf-8", "surrogatepass")) % POOL_SIZE]

    def invalid(self, seed: str) -> object:
        """Return a value that parses as JSON but is *not* valid for the schema."""
        return _invalidate(self.schema, self.value(seed))

    def overflowed(self, seed: str) -> str:
        """The compact JSON of :meth:`value` with its first free number written ``1e400``.

        A free number is one whose schema sets no bound, ``multipleOf``, ``enum`` or
        ``const`` (a decoder constrained to the schema could not write ``1e400`` anywhere
        else), found depth first through the object's properties, nested objects included.
        A value without one is written as it is.

        Examples
        --------
        >>> gen = AnswerGenerator({"type": "object", "required": ["a", "b", "x", "y"],
        ...                        "properties": {"a": {"enum": [1, 2]},
        ...                                       "b": {"type": "integer", "maximum": 5},
        ...                                       "x": {"type": "number"},
        ...                                       "y": {"type": "integer"}}})
        >>> text = gen.overflowed("s")
        >>> json.loads(text)["x"], '"x":1e400,' in text
        (inf, True)
        >>> nested = AnswerGenerator({"type": "object", "required": ["n"], "properties": {
        ...     "n": {"type": "object", "required": ["y"], "properties": {
        ...         "y": {"type": "number"}}}}})
        >>> nested.overflowed("s")
        '{"n":{"y":1e400}}'
        """
        value = self.value(seed)
        path = _free_number(self.schema, self.schema, value)
        if not path:  # none (an empty path would be a bare number: not an object's field)
            return _compact(value)
        marked = copy.deepcopy(value)
        holder = marked
        for key in path[:-1]:
            holder = holder[key]  # type: ignore[index]
        holder[path[-1]] = _OVERFLOW  # type: ignore[index]
        return _compact(marked).replace(_compact(_OVERFLOW), "1e400", 1)


_BOUNDS: Final = (
    "enum", "const", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
)  # fmt: skip


def _free_number(root: Mapping[str, Any], schema: object, value: object) -> list[str] | None:
    """The path to the first number in ``value`` whose schema leaves it unbounded."""
    for _ in range(64):  # a chain of $refs, followed (a cycle ends it)
        if not (isinstance(schema, Mapping) and "$ref" in schema):
            break
        schema = _resolve_pointer(root, str(schema["$ref"]))
    if not isinstance(schema, Mapping):
        return None
    if isinstance(value, dict):
        props = schema.get("properties")
        if not isinstance(props, Mapping):
            return None
        for key, item in value.items():
            if key in props:
                found = _free_number(root, props[key], item)
                if found is not None:
                    return [key, *found]
        return None
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and isinstance(kinds, list)
        and {"number", "integer"} & set(kinds)
        and not any(k in schema for k in _BOUNDS)
    ):
        return []
    return None


_CACHE: dict[str, AnswerGenerator] = {}
_CACHE_LIMIT: Final = 1024


def generator_for(schema: Mapping[str, Any]) -> AnswerGenerator:
    """Return the cached :class:`AnswerGenerator` for ``schema`` (keyed by its JSON text).

    Examples
    --------
    >>> generator_for({"type": "string"}) is generator_for({"type": "string"})
    True
    """
    key = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    gen = _CACHE.get(key)
    if gen is None:
        if len(_CACHE) >= _CACHE_LIMIT:
            _CACHE.clear()
        gen = _CACHE[key] = AnswerGenerator(schema)
    return gen


def fake_value(json_schema: Mapping[str, Any], seed: str) -> object:
    """Return a deterministic value that is valid for ``json_schema``.

    Parameters
    ----------
    json_schema
        The schema, as produced e.g. by ``pydantic.BaseModel.model_json_schema()`` or the
        OpenAI SDK's strict-schema helpers.
    seed
        Any text; the same seed gives the same value.

    Examples
    --------
    >>> fake_value({"type": "string", "format": "date"}, "x")[:2]
    '20'
    >>> fake_value({"anyOf": [{"type": "integer"}, {"type": "null"}]}, "x") in (None, *range(101))
    True
    """
    return generator_for(json_schema).value(seed)


def fake_invalid_value(json_schema: Mapping[str, Any], seed: str) -> object:
    """Return a deterministic value that parses as JSON but violates ``json_schema``.

    Examples
    --------
    >>> schema = {"type": "object", "required": ["a"], "properties": {"a": {"type": "string"}}}
    >>> fake_invalid_value(schema, "x")
    {}
    """
    return generator_for(json_schema).invalid(seed)


# --------------------------------------------------------------------------------------
# Compiler: schema -> closure. Each closure takes (rng, depth) and returns a value.


class _Compiler:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.refs: dict[str, _Gen] = {}

    def compile(self, schema: object) -> _Gen:
        if schema is False:
            return _const(None)
        if schema is True or not isinstance(schema, Mapping) or not schema:
            return _const("value")
        if "$ref" in schema:
            return self._ref(str(schema["$ref"]))
        if "const" in schema:
            return _const(schema["const"])
        if "enum" in schema:
            return _choice(list(schema["enum"]))
        if "allOf" in schema:
            return self.compile(_merge_all_of(schema))
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self._union([self._merged(schema, key, b) for b in schema[key]])
        kind = schema.get("type")
        if isinstance(kind, list):
            if len(kind) == 1:
                kind = kind[0]
            else:
                branches: list[object] = [{**schema, "type": t} for t in kind]
                return self._union(branches)
        if kind is None:
            kind = _infer_type(schema)
        if kind == "object":
            return self._object(schema)
        if kind == "array":
            return self._array(schema)
        if kind == "string":
            return _string(schema)
        if kind == "integer":
            return _integer(schema)
        if kind == "number":
            return _number(schema)
        if kind == "boolean":
            return _boolean
        if kind == "null":
            return _const(None)
        return _const("value")

    @staticmethod
    def _merged(parent: Mapping[str, Any], key: str, branch: object) -> object:
        # Keywords next to anyOf (description, or a shared "type") also apply to each branch.
        rest = {k: v for k, v in parent.items() if k not in (key, "description", "title")}
        if not rest or not isinstance(branch, Mapping):
            return branch
        if "$ref" in branch:
            return {"allOf": [branch, rest]}
        return {**rest, **branch}

    def _ref(self, ref: str) -> _Gen:
        if ref in self.refs:
            return self.refs[ref]
        target = _resolve_pointer(self.root, ref)
        slot: list[_Gen] = []

        def call(rng: _Rng, depth: int) -> object:
            return slot[0](rng, depth + 1)

        # Registered before compiling the target so that a recursive model refers back here.
        self.refs[ref] = call
        slot.append(self.compile(target))
        return call

    def _union(self, branches: list[object]) -> _Gen:
        numeric = any(
            isinstance(b, Mapping) and b.get("type") in ("number", "integer") for b in branches
        )
        if numeric:
            # anyOf [number, string] is how pydantic writes Decimal: its string branch must
            # hold a number too, or the answer validates against the schema but not the model.
            branches = [_NUMERIC_STRING if _is_bare_string(b) else b for b in branches]
        gens = [self.compile(b) for b in branches]
        nulls = [g for g, b in zip(gens, branches, strict=True) if _is_null(b)]
        others = [g for g, b in zip(gens, branches, strict=True) if not _is_null(b)]
        if not others:
            return _const(None)
        null_gen = nulls[0] if nulls else None

        def gen(rng: _Rng, depth: int) -> object:
            # Nullable fields come back null about one time in five, and always once deep
            # inside a recursive model so that generation terminates.
            if null_gen is not None and (depth >= _MAX_DEPTH or rng.below(5) == 0):
                return None
            if depth >= _MAX_DEPTH:
                return others[0](rng, depth)
            return others[rng.below(len(others))](rng, depth)

        return gen

    def _object(self, schema: Mapping[str, Any]) -> _Gen:
        props: Mapping[str, Any] = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        fields = [(name, self.compile(sub), name in required) for name, sub in props.items()]
        extra = schema.get("additionalProperties")
        extra_gen = self.compile(extra) if isinstance(extra, Mapping) and not props else None
        min_props = int(schema.get("minProperties", 1 if extra_gen else 0))

        def gen(rng: _Rng, depth: int) -> dict[str, object]:
            out: dict[str, object] = {}
            for name, sub, req in fields:
                if req or depth < _MAX_DEPTH:
                    out[name] = sub(rng, depth)
            if extra_gen is not None:
                count = max(min_props, 0 if depth >= _MAX_DEPTH else rng.between(1, 2))
                for i in range(count):
                    out[f"key_{i + 1}"] = extra_gen(rng, depth)
            return out

        return gen

    def _array(self, schema: Mapping[str, Any]) -> _Gen:
        prefix = [self.compile(s) for s in schema.get("prefixItems") or ()]
        items = schema.get("items")
        item_gen = self.compile(items) if items is not None and items is not False else None
        lo = int(schema.get("minItems", 0))
        hi = int(schema.get("maxItems", max(lo, 3)))
        lo = max(lo, len(prefix)) if item_gen is None else lo
        if item_gen is None:
            hi = len(prefix)
        unique_pool: list[object] | None = None
        if schema.get("uniqueItems") and isinstance(items, Mapping) and "enum" in items:
            unique_pool = list(items["enum"])
            hi = min(hi, len(unique_pool))

        def gen(rng: _Rng, depth: int) -> list[object]:
            # Empty lists come up (one time in four, where allowed) as well as full ones.
            n = lo if depth >= _MAX_DEPTH else rng.between(lo, max(lo, hi))
            if unique_pool is not None:
                start = rng.below(len(unique_pool)) if unique_pool else 0
                return [unique_pool[(start + i) % len(unique_pool)] for i in range(n)]
            out = [p(rng, depth) for p in prefix[:n]]
            if item_gen is not None:
                out.extend(item_gen(rng, depth) for _ in range(n - len(out)))
            return out

        return gen


def _const(value: object) -> _Gen:
    def gen(rng: _Rng, depth: int) -> object:
        return value

    return gen


def _choice(options: list[object]) -> _Gen:
    if not options:
        return _const(None)

    def gen(rng: _Rng, depth: int) -> object:
        return options[rng.below(len(options))]

    return gen


def _boolean(rng: _Rng, depth: int) -> object:
    return rng.next() & 1 == 1


def _infer_type(schema: Mapping[str, Any]) -> str | None:
    if "properties" in schema or "additionalProperties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    if "format" in schema or "pattern" in schema or "minLength" in schema:
        return "string"
    if "minimum" in schema or "maximum" in schema:
        return "number"
    return None


_NUMERIC_STRING: Final = {"type": "string", "pattern": r"^-?\d+(\.\d+)?$"}
_STRING_CONSTRAINTS: Final = ("format", "pattern", "enum", "const", "minLength", "maxLength")


def _is_bare_string(schema: object) -> bool:
    return (
        isinstance(schema, Mapping)
        and schema.get("type") == "string"
        and not any(key in schema for key in _STRING_CONSTRAINTS)
    )


def _is_null(schema: object) -> bool:
    return isinstance(schema, Mapping) and schema.get("type") == "null"


def _resolve_pointer(root: Mapping[str, Any], ref: str) -> object:
    if not ref.startswith("#"):
        msg = f"only local $ref pointers are supported, got {ref!r}"
        raise ValueError(msg)
    node: object = root
    for raw in ref[1:].split("/"):
        if not raw:
            continue
        part = raw.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, Mapping) or part not in node:
            msg = f"cannot resolve $ref {ref!r}"
            raise ValueError(msg)
        node = node[part]
    return node


def _merge_all_of(schema: Mapping[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
    for part in schema["allOf"]:
        if not isinstance(part, Mapping):
            continue
        for key, value in part.items():
            if key == "properties":
                merged["properties"] = {**merged.get("properties", {}), **value}
            elif key == "required":
                merged["required"] = [*merged.get("required", []), *value]
            else:
                merged.setdefault(key, value)
    if "$ref" in merged and len(schema["allOf"]) > 1:
        # allOf [{$ref}, {extra keywords}]: the referenced schema dominates for generation.
        return {"$ref": merged["$ref"]}
    return merged


# --------------------------------------------------------------------------------------
# Scalars


def _num_bounds(schema: Mapping[str, Any], integer: bool) -> tuple[float, float]:
    step = 1 if integer else 0.01
    lo: float | None = schema.get("minimum")
    hi: float | None = schema.get("maximum")
    if "exclusiveMinimum" in schema and isinstance(schema["exclusiveMinimum"], int | float):
        lo = schema["exclusiveMinimum"] + step
    if "exclusiveMaximum" in schema and isinstance(schema["exclusiveMaximum"], int | float):
        hi = schema["exclusiveMaximum"] - step
    if lo is None and hi is None:
        return 0, 100
    if lo is None:
        assert hi is not None
        return min(0, hi - 100), hi
    if hi is None:
        return lo, max(lo + 100, 100)
    return lo, hi


def _integer(schema: Mapping[str, Any]) -> _Gen:
    lo_f, hi_f = _num_bounds(schema, integer=True)
    lo, hi = -int(-lo_f // 1), int(hi_f // 1)  # ceil(lo), floor(hi)
    multiple = schema.get("multipleOf")
    if isinstance(multiple, int) and multiple > 0:
        first = -(-lo // multiple)
        last = hi // multiple
        if first <= last:

            def gen_multiple(rng: _Rng, depth: int) -> object:
                return rng.between(first, last) * multiple

            return gen_multiple
    hi = max(hi, lo)

    def gen(rng: _Rng, depth: int) -> object:
        return rng.between(lo, hi)

    return gen


def _number(schema: Mapping[str, Any]) -> _Gen:
    lo, hi = _num_bounds(schema, integer=False)
    hi = max(hi, lo)

    def gen(rng: _Rng, depth: int) -> object:
        # Anything from whole numbers to full double precision.
        value = round(lo + (hi - lo) * rng.unit(), _NUMBER_PLACES[rng.below(len(_NUMBER_PLACES))])
        return min(max(value, lo), hi)

    return gen


_NUMBER_PLACES: Final = (0, 2, 5, 17)


def _date(rng: _Rng) -> str:
    return f"20{rng.between(10, 29):02d}-{rng.between(1, 12):02d}-{rng.between(1, 28):02d}"


def _time(rng: _Rng) -> str:
    return f"{rng.between(0, 23):02d}:{rng.between(0, 59):02d}:{rng.between(0, 59):02d}"


#: RFC 3339 offsets answered for ``date-time`` and ``time``: UTC in its two spellings,
#: half-hour and negative offsets, and the extremes.
_OFFSETS: Final = ("Z", "+05:30", "-08:00", "+00:00", "+14:00", "-03:30", "+09:45")
_FRACTIONS: Final = ("", "", ".5", ".123456", ".001")


def _zoned_time(rng: _Rng) -> str:
    fraction = _FRACTIONS[rng.below(len(_FRACTIONS))]
    return _time(rng) + fraction + _OFFSETS[rng.below(len(_OFFSETS))]


#: Text beyond ASCII that answers carry now and then: accents, combining marks, CJK,
#: right-to-left, emoji (outside the BMP), quotes and backslashes, and the empty string.
_UNICODE_WORDS: Final = (
    "café", "naïve", "e\u0301", "日本語", "Ωmega", "שלום", "🎉 party", "a \"quote\"",
    "back\\slash", "",
)  # fmt: skip


def _text(rng: _Rng) -> str:
    """Free text: words, and one time in four a unicode or empty string."""
    if rng.below(4) == 0:
        return _UNICODE_WORDS[rng.below(len(_UNICODE_WORDS))]
    return _words(rng)


def _decimal(rng: _Rng) -> str:
    """A decimal string: sign, 0 to 12 integer digits, 0 to 9 places (trailing zeros too)."""
    sign = "-" if rng.below(4) == 0 else ""
    whole = str(rng.between(0, 10 ** _DIGITS[rng.below(len(_DIGITS))] - 1))
    places = rng.between(0, 9)
    if places == 0:
        return sign + whole
    return f"{sign}{whole}.{rng.between(0, 10**places - 1):0{places}d}"


_DIGITS: Final = (1, 3, 12)


def _words(rng: _Rng) -> str:
    # One 64-bit draw gives the count (2-6) and up to 12 five-bit word indices.
    z = rng.next()
    count = 2 + z % 5
    z >>= 3
    return " ".join([_WORDS[(z >> (5 * i)) & 31] for i in range(count)])


_FORMATS: Final[dict[str, Callable[[_Rng], str]]] = {
    "date": _date,
    "time": _zoned_time,
    "date-time": lambda rng: f"{_date(rng)}T{_zoned_time(rng)}",
    "email": lambda rng: f"{_WORDS[rng.below(len(_WORDS))]}{rng.below(100)}@example.com",
    "uuid": lambda rng: _uuid(rng),
    "uri": lambda rng: f"https://example.com/{_WORDS[rng.below(len(_WORDS))]}",
    "url": lambda rng: f"https://example.com/{_WORDS[rng.below(len(_WORDS))]}",
    "duration": lambda rng: f"PT{rng.between(1, 3600)}S",
    "ipv4": lambda rng: ".".join(str(rng.between(1, 254)) for _ in range(4)),
    "hostname": lambda rng: f"{_WORDS[rng.below(len(_WORDS))]}.example.com",
}


def _uuid(rng: _Rng) -> str:
    h = f"{rng.next():016x}{rng.next():016x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-8{h[17:20]}-{h[20:32]}"


# Candidates tried, in order, against a `pattern`; the first that matches is used for
# every value of that schema. Covers pydantic's Decimal pattern and common id/date ones.
_PATTERN_CANDIDATES: Final[tuple[Callable[[_Rng], str], ...]] = (
    lambda rng: f"{rng.between(0, 999)}.{rng.between(0, 99):02d}",
    lambda rng: str(rng.between(0, 9999)),
    _date,
    lambda rng: f"{_date(rng)}T{_time(rng)}Z",
    lambda rng: _WORDS[rng.below(len(_WORDS))],
    lambda rng: _WORDS[rng.below(len(_WORDS))].upper(),
    lambda rng: f"{_WORDS[rng.below(len(_WORDS))]}-{rng.between(1, 999)}",
    lambda rng: f"{_WORDS[rng.below(len(_WORDS))]}@example.com",
    _uuid,
    lambda rng: f"{rng.next():032x}",
    lambda rng: "a",
    lambda rng: "",
)


def _string(schema: Mapping[str, Any]) -> _Gen:
    min_len = int(schema.get("minLength", 0))
    max_len = schema.get("maxLength")
    base: Callable[[_Rng], str] = _text
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in _FORMATS:
        base = _FORMATS[fmt]
    pattern = schema.get("pattern")
    if pattern is None:
        pattern = _described_pattern(schema.get("description"))
    if isinstance(pattern, str):
        base = _pattern_source(pattern, _words if base is _text else base)

    def gen(rng: _Rng, depth: int) -> object:
        text = base(rng)
        if len(text) < min_len:
            text = (text + " " + "x" * min_len)[:min_len] if text else "x" * min_len
        if isinstance(max_len, int) and len(text) > max_len:
            text = text[:max_len]
        return text

    return gen


_DESCRIBED: Final = re.compile(r"\{pattern: (.*?)(?:, [A-Za-z]+: .*)?\}\Z")


def _described_pattern(description: object) -> str | None:
    r"""A ``pattern`` the Anthropic SDK moved into the description (``{pattern: ...}``).

    Anthropic's structured outputs take no ``pattern``; ``anthropic.transform_schema``
    appends unsupported keywords to the description for the model to follow, and the
    emulated model follows them.

    Examples
    --------
    >>> _described_pattern("A price.\n\n{pattern: ^[0-9]+$, minLength: 1}")
    '^[0-9]+$'
    """
    if not isinstance(description, str):
        return None
    match = _DESCRIBED.search(description.rpartition("\n")[2])
    return match.group(1) if match else None


def _pattern_source(pattern: str, fallback: Callable[[_Rng], str]) -> Callable[[_Rng], str]:
    try:
        regex = re.compile(pattern)
    except re.error:
        return fallback
    probe = _Rng(12345)
    if all(regex.search(_decimal(probe)) for _ in range(32)):
        return _decimal  # a decimal-number pattern (pydantic's Decimal): varied places
    safe = fallback
    for candidate in (fallback, *_PATTERN_CANDIDATES):
        # A candidate must match for any seed, not just one: check a few samples.
        if all(regex.search(candidate(probe)) for _ in range(8)):
            safe = candidate
            break
    walk = _regex_walker(pattern)
    if walk is None:
        return safe

    def gen(rng: _Rng) -> str:
        # Build a string from the pattern itself; lookarounds and back-references are
        # not modelled, so check the result and fall back to a known-good candidate.
        for _ in range(4):
            text = walk(rng)
            if regex.search(text):
                return text
        return safe(rng)

    return gen


class _Unsupported(Exception):
    pass


_MAX_EXTRA_REPEATS: Final = 3


def _regex_walker(pattern: str) -> Callable[[_Rng], str] | None:
    """A generator of strings shaped by ``pattern``, from the stdlib's regex parser."""
    try:
        parser: Any = importlib.import_module("re._parser")
        tree = list(parser.parse(pattern))
    except Exception:  # a private stdlib module: if it moves, patterns use the candidates
        return None

    def emit(items: Any, rng: _Rng, out: list[str]) -> None:
        for op, arg in items:
            name = getattr(op, "name", str(op))
            if name == "LITERAL":
                out.append(chr(arg))
            elif name == "NOT_LITERAL":
                out.append("b" if arg == ord("a") else "a")
            elif name == "ANY":
                out.append(_WORDS[rng.below(len(_WORDS))][0])
            elif name == "IN":
                out.append(_class_char(arg, rng))
            elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
                lo, hi, sub = arg
                for _ in range(rng.between(lo, max(lo, min(hi, lo + _MAX_EXTRA_REPEATS)))):
                    emit(sub, rng, out)
            elif name in ("SUBPATTERN", "ATOMIC_GROUP"):
                emit(arg[-1], rng, out)
            elif name == "BRANCH":
                branches = arg[1]
                emit(branches[rng.below(len(branches))], rng, out)
            elif name not in ("AT", "ASSERT", "ASSERT_NOT"):
                raise _Unsupported(name)

    def walk(rng: _Rng) -> str:
        out: list[str] = []
        try:
            emit(tree, rng, out)
        except _Unsupported:
            return "\x00"  # never matches a sane pattern: the caller falls back
        return "".join(out)

    return walk


_CATEGORY_CHARS: Final = {
    "CATEGORY_DIGIT": "0123456789",
    "CATEGORY_NOT_DIGIT": "abcxyz",
    "CATEGORY_WORD": "abcdefghijklmnopqrstuvwxyz0123456789",
    "CATEGORY_NOT_WORD": "-. ",
    "CATEGORY_SPACE": " ",
    "CATEGORY_NOT_SPACE": "abcxyz",
}


def _class_char(items: Any, rng: _Rng) -> str:
    entries = list(items)
    negate = bool(entries) and getattr(entries[0][0], "name", "") == "NEGATE"
    if negate:
        for ch in "xQ7_~-a":
            if not _in_class(ch, entries[1:]):
                return ch
        msg = "NEGATE"
        raise _Unsupported(msg)
    op, arg = entries[rng.below(len(entries))]
    name = getattr(op, "name", str(op))
    if name == "LITERAL":
        return chr(arg)
    if name == "RANGE":
        return chr(rng.between(arg[0], arg[1]))
    if name == "CATEGORY":
        chars = _CATEGORY_CHARS.get(getattr(arg, "name", str(arg)))
        if chars:
            return chars[rng.below(len(chars))]
    raise _Unsupported(name)


def _in_class(ch: str, entries: Any) -> bool:
    code = ord(ch)
    for op, arg in entries:
        name = getattr(op, "name", str(op))
        if name == "LITERAL" and arg == code:
            return True
        if name == "RANGE" and arg[0] <= code <= arg[1]:
            return True
        if name == "CATEGORY":
            chars = _CATEGORY_CHARS.get(getattr(arg, "name", str(arg)), "")
            positive = "NOT" not in getattr(arg, "name", "")
            if (ch in chars) == positive and (positive or chars):
                return True
    return False


# --------------------------------------------------------------------------------------
# Invalid answers


def _invalidate(schema: Mapping[str, Any], valid: object) -> object:
    root = schema
    if "$ref" in root:
        target = _resolve_pointer(schema, str(root["$ref"]))
        root = target if isinstance(target, Mapping) else {}
    kind = root.get("type")
    if isinstance(valid, dict):
        required = [r for r in root.get("required") or () if r in valid]
        if required:
            broken = dict(valid)
            del broken[required[0]]
            return broken
        if root.get("additionalProperties") is False:
            return {**valid, "__emulator_invalid__": True}
        return ["not", "an", "object"]
    if kind == "string" or isinstance(valid, str):
        return 12345
    if kind in ("integer", "number") or isinstance(valid, int | float):
        return "not-a-number"
    if kind == "array" or isinstance(valid, list):
        return "not-an-array"
    return {"__emulator_invalid__": True}
