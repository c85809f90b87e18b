"""batchata-df: LLM jobs over Polars frames through the providers' batch APIs.

>>> from batchata_df import batch_llm  # doctest: +SKIP
>>> out = df.pipe(batch_llm, schema=Review, model="gpt-6-luna", prompt="{text}")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from batchata_df.errors import (
    AmbiguousJobKeyWarning,
    BatchataError,
    CapSerialisedWarning,
    ColumnError,
    ConfigError,
    CredentialsError,
    FileInputError,
    KeptStateWarning,
    LostUnpricedWarning,
    ModelError,
    ModelShutdownWarning,
    OrphanedBatchError,
    ParamError,
    PriceError,
    ProviderError,
    ProviderUnavailableWarning,
    ResultFileError,
    SchemaError,
    SinkLockedError,
    StateError,
    StateLockedError,
    StateMismatchError,
    SummaryWarning,
    ThinkingRoomWarning,
    UnpricedAnswerWarning,
)

if TYPE_CHECKING:
    from batchata_df.engine import ProgressSnapshot
    from batchata_df.frame import batch_llm, reparse
    from batchata_df.query import sql
    from batchata_df.repair import RepairReport, doctor, repair
else:
    # Registers df.llm and lf.llm. Hidden from mypy on purpose: namespace.py types its
    # methods from frame.py (imported there only for type checking), and this import would
    # make mypy check namespace.py first in the package's import cycle ("Cannot determine
    # type of batch_llm").
    from batchata_df import namespace as _namespace  # noqa: F401

__version__ = "0.1.0"

# The engine, the frame functions, the queries and repair are imported at first use, not by
# ``import batchata_df``: every ``batchata-df`` command imports this package first, and
# ``batchata-df --help`` or ``status`` need none of them (ARCHITECTURE.md, "Lazy imports").
_LAZY = {
    "ProgressSnapshot": "batchata_df.engine",
    "batch_llm": "batchata_df.frame",
    "reparse": "batchata_df.frame",
    "sql": "batchata_df.query",
    "RepairReport": "batchata_df.repair",
    "doctor": "batchata_df.repair",
    "repair": "batchata_df.repair",
}


def __getattr__(name: str) -> Any:
    """Import a public name of :data:`_LAZY` from its module at its first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """The package, where ``repair`` stays the function when its submodule is imported.

    Importing ``batchata_df.repair`` (the module) binds it on the package as ``repair``,
    over the function of the same name that ``from batchata_df import repair`` must give.
    """

    def __setattr__(self, name: str, value: object) -> None:
        if name == "repair" and isinstance(value, types.ModuleType):
            value = value.repair
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "BatchataError",
    "ColumnError",
    "ConfigError",
    "CredentialsError",
    "FileInputError",
    "KeptStateWarning",
    "ModelError",
    "ModelShutdownWarning",
    "OrphanedBatchError",
    "ParamError",
    "PriceError",
    "ProgressSnapshot",
    "ProviderError",
    "AmbiguousJobKeyWarning",
    "LostUnpricedWarning",
    "ProviderUnavailableWarning",
    "CapSerialisedWarning",
    "RepairReport",
    "ResultFileError",
    "SchemaError",
    "ThinkingRoomWarning",
    "UnpricedAnswerWarning",
    "SinkLockedError",
    "StateError",
    "StateLockedError",
    "StateMismatchError",
    "SummaryWarning",
    "__version__",
    "batch_llm",
    "doctor",
    "repair",
    "reparse",
    "sql",
]
