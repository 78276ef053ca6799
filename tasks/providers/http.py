"""One ``httpx.Client`` per process, shared by every adapter: pooled connections, explicit timeouts.

Celery's prefork pool forks children after the parent may have created a client; sockets must not
be shared across processes, so the client is one per process (config/per_process.py).
"""

from __future__ import annotations

import httpx
from tenacity.wait import wait_base, wait_exponential_jitter

from config import Settings, get_settings
from config.per_process import PerProcess


def build_client() -> httpx.Client:
    settings = get_settings()
    return httpx.Client(
        timeout=httpx.Timeout(settings.http_read_timeout, connect=settings.http_connect_timeout),
        limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        headers={"User-Agent": "chat-archiver"},
        # A redirect would resend the token to wherever it points.
        follow_redirects=False,
    )


_client = PerProcess(build_client)


def shared_client() -> httpx.Client:
    return _client.get()


def transient_backoff(settings: Settings) -> wait_base:
    """How long tenacity waits between attempts after a transient failure, for archive calls
    and listing calls alike: exponential from half a second, jittered, capped."""
    return wait_exponential_jitter(multiplier=0.5, max=settings.transient_wait_max, jitter=0.5)
