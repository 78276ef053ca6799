"""The worker: the Celery app and the runtime machinery jobs run on.

``celery -A worker worker`` finds ``worker.app``. Importing this package (or any module in it)
builds nothing and reads no setting: ``app`` is made on first use (PEP 562). This package may
import ``config``, never ``tasks``: the app names its task modules as strings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

    app: Celery

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name == "app":
        from worker.celery_app import app

        return app
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
