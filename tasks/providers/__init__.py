"""One adapter per provider over the shared outcome model (worker.outcomes)."""

from config import GREEN_API, WASSENGER

from .base import ProviderAdapter, ProviderAnswer, Rule, classify
from .green_api import GreenApiAdapter
from .http import close_shared_client, shared_client
from .wassenger import WassengerAdapter

ADAPTERS: dict[str, ProviderAdapter] = {
    GREEN_API: GreenApiAdapter(),
    WASSENGER: WassengerAdapter(),
}


def adapter_for(provider: str) -> ProviderAdapter:
    return ADAPTERS[provider]


__all__ = [
    "ADAPTERS",
    "GreenApiAdapter",
    "ProviderAdapter",
    "ProviderAnswer",
    "Rule",
    "WassengerAdapter",
    "adapter_for",
    "classify",
    "close_shared_client",
    "shared_client",
]
