"""Provider implementations behind one small contract (:mod:`.base`).

Each provider module is imported only when a run needs it, so ``import batchata_df`` never
imports a provider SDK.
"""

from __future__ import annotations

import importlib.util

from batchata_df.errors import ConfigError, ModelError
from batchata_df.providers.base import Provider

__all__ = ["SUPPORTED_PARAMS", "make_provider"]

# Model parameters accepted in ``params=`` (our names; each provider maps them).
SUPPORTED_PARAMS: dict[str, frozenset[str]] = {
    "openai": frozenset(
        {
            "max_tokens",
            "temperature",
            "top_p",
            "seed",
            "stop",
            "frequency_penalty",
            "presence_penalty",
            "reasoning_effort",
        }
    ),
    "anthropic": frozenset(
        {"max_tokens", "temperature", "top_p", "top_k", "stop", "reasoning_effort"}
    ),
    "gemini": frozenset(
        {"max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "reasoning_effort"}
    ),
}


# provider -> (module to import, distribution name) for the SDKs that are extras.
_SDKS = {"anthropic": ("anthropic", "anthropic"), "gemini": ("google.genai", "google-genai")}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package
        return False


def make_provider(name: str, *, offline: bool = False) -> Provider:
    """Create the provider called ``name`` with credentials from the environment.

    ``offline=True`` gives a provider that can only encode requests (for dry runs): it
    needs no credentials and never opens a connection.
    """
    sdk = _SDKS.get(name)
    if sdk is not None and not _installed(sdk[0]):
        msg = (
            f"{name} models need the {sdk[1]!r} package, which is not installed: "
            f"pip install 'batchata-df[{name}]'"
        )
        raise ConfigError(msg)
    kw: dict[str, str] = {}
    if offline:
        kw = {"api_key": "offline", "base_url": "http://offline.invalid"}
    if name == "openai":
        from batchata_df.providers.openai import OpenAIProvider

        return OpenAIProvider(**kw)
    if name == "anthropic":
        from batchata_df.providers.anthropic import AnthropicProvider

        return AnthropicProvider(**kw)
    if name == "gemini":
        from batchata_df.providers.gemini import GeminiProvider

        return GeminiProvider(**kw)
    msg = (
        f"provider {name!r} is not available in this version; use an OpenAI, Anthropic "
        "(claude-...) or Gemini (gemini-...) model"
    )
    raise ModelError(msg)
