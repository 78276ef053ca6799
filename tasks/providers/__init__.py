"""One adapter per provider over the shared outcome model (worker.contract.outcomes)."""

from config import GREEN_API, WASSENGER

from .base import ChatInfo, ListingError, ProviderAdapter, ProviderAnswer, Rule, classify
from .green_api import MESSAGE_WINDOW_CAP, GreenApiAdapter, GreenApiListings
from .http import shared_client, transient_backoff
from .wassenger import WassengerAdapter, WassengerListings

ADAPTERS: dict[str, ProviderAdapter] = {
    GREEN_API: GreenApiAdapter(),
    WASSENGER: WassengerAdapter(),
}


def adapter_for(provider: str) -> ProviderAdapter:
    return ADAPTERS[provider]


__all__ = [
    "ADAPTERS",
    "MESSAGE_WINDOW_CAP",
    "ChatInfo",
    "GreenApiAdapter",
    "GreenApiListings",
    "ListingError",
    "ProviderAdapter",
    "ProviderAnswer",
    "Rule",
    "WassengerAdapter",
    "WassengerListings",
    "adapter_for",
    "classify",
    "shared_client",
    "transient_backoff",
]
