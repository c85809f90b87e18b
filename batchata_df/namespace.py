"""The ``llm`` namespace on Polars frames: ``df.llm.batch(...)`` forwards to ``batch_llm``.

Registered when :mod:`batchata_df` is imported. It only forwards, as polars' own
namespaces do (``polars/api.py``): the typed function :func:`~batchata_df.batch_llm` is
the API; the namespace reads naturally in a method chain.

``df.llm.batch(**kwargs)`` is ``batch_llm(df, **kwargs)`` and returns a DataFrame.
``lf.llm.batch(**kwargs)`` runs the batch **at that call** (a provider batch is not a lazy
computation: the LazyFrame is collected first) and returns a LazyFrame over the answers,
so a lazy pipeline keeps its shape. ``.llm.reparse(...)`` forwards to
:func:`~batchata_df.reparse` the same way.

Examples
--------
>>> import polars as pl
>>> import batchata_df
>>> from batchata_df.emulator import Emulator
>>> with Emulator() as emu, emu.environ():
...     out = pl.DataFrame({"text": ["great", "awful"]}).llm.batch(
...         model="gpt-6-luna", prompt="Rate: {text}"
...     )
>>> out.select("text", "_status").rows()
[('great', 'completed'), ('awful', 'completed')]
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec

import polars as pl

if TYPE_CHECKING:
    from batchata_df.frame import batch_llm, reparse

__all__ = ["NAME", "LLMFrameNamespace", "LLMLazyFrameNamespace"]

P = ParamSpec("P")
NAME = "llm"
"""The attribute name on DataFrame and LazyFrame."""


def _eager(
    func: Callable[Concatenate[pl.DataFrame | pl.LazyFrame, P], pl.DataFrame],
) -> Callable[Concatenate[LLMFrameNamespace, P], pl.DataFrame]:
    @functools.wraps(func)
    def method(self: LLMFrameNamespace, /, *args: P.args, **kwargs: P.kwargs) -> pl.DataFrame:
        return func(self._df, *args, **kwargs)

    return method


def _lazy(
    func: Callable[Concatenate[pl.DataFrame | pl.LazyFrame, P], pl.DataFrame],
) -> Callable[Concatenate[LLMLazyFrameNamespace, P], pl.LazyFrame]:
    @functools.wraps(func)
    def method(self: LLMLazyFrameNamespace, /, *args: P.args, **kwargs: P.kwargs) -> pl.LazyFrame:
        return func(self._lf, *args, **kwargs).lazy()

    return method


class _Forward:
    """A namespace method over a :mod:`batchata_df.frame` function imported at first use.

    The namespaces are registered by ``import batchata_df``, which must not import the
    engine (every ``batchata-df`` command imports the package). The first lookup wraps the
    function (``_eager`` or ``_lazy``) and puts the method on the class in place of this
    descriptor, so ``help(df.llm.batch)`` and every later call see the wrapped function.
    """

    def __init__(self, wrap: Callable[[Any], Callable[..., Any]], name: str) -> None:
        self._wrap = wrap
        self._name = name

    def __set_name__(self, owner: type, attr: str) -> None:
        self._attr = attr

    def __get__(self, instance: object, owner: type) -> Any:
        from batchata_df import frame

        method = self._wrap(getattr(frame, self._name))
        setattr(owner, self._attr, method)
        return method.__get__(instance, owner)


@pl.api.register_dataframe_namespace(NAME)
class LLMFrameNamespace:
    """``df.llm``: :func:`~batchata_df.batch_llm` and :func:`~batchata_df.reparse`."""

    def __init__(self, df: pl.DataFrame) -> None:
        self._df = df

    if TYPE_CHECKING:
        batch = _eager(batch_llm)
        reparse = _eager(reparse)
    else:
        batch = _Forward(_eager, "batch_llm")
        reparse = _Forward(_eager, "reparse")


@pl.api.register_lazyframe_namespace(NAME)
class LLMLazyFrameNamespace:
    """``lf.llm``: the same, returning a LazyFrame (the batch runs at the call)."""

    def __init__(self, lf: pl.LazyFrame) -> None:
        self._lf = lf

    if TYPE_CHECKING:
        batch = _lazy(batch_llm)
        reparse = _lazy(reparse)
    else:
        batch = _Forward(_lazy, "batch_llm")
        reparse = _Forward(_lazy, "reparse")
