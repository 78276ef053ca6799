"""The worker: the Celery app and the runtime machinery jobs run on.

``celery -A worker worker`` finds ``worker.app``. This package may import ``config``, never
``tasks``: the app names its task modules as strings.
"""

from worker.celery_app import app

__all__ = ["app"]
