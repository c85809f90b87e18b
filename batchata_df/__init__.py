"""batchata-df: LLM jobs over Polars frames through the providers' batch APIs.

>>> from batchata_df import batch_llm  # doctest: +SKIP
>>> out = df.pipe(batch_llm, schema=Review, model="gpt-6-luna", prompt="{text}")  # doctest: +SKIP
"""

from __future__ import annotations

from batchata_df import namespace as _namespace  # noqa: F401  (registers df.llm, lf.llm)
from batchata_df.engine import ProgressSnapshot
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
from batchata_df.frame import batch_llm, reparse
from batchata_df.query import sql
from batchata_df.repair import RepairReport, doctor, repair

__version__ = "0.1.0"

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
