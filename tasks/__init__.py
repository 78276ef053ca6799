"""What the worker does: the archive task, the sweep task, and the provider adapters.

Producers import from here: ``from tasks import enqueue_archive, enqueue_many`` (and
``enqueue_unarchive`` to restore a chat). They raise
``InvalidJob`` for a job that is not valid and ``PublishFailed`` when Redis refuses or loses a
write (worker/producer.py says which rows to send again).
"""

from worker.contract.jobs import ArchiveJob, InvalidJob
from worker.producer import (
    BulkResult,
    PublishFailed,
    Unsent,
    enqueue_archive,
    enqueue_job,
    enqueue_many,
    enqueue_unarchive,
)

__all__ = [
    "ArchiveJob",
    "BulkResult",
    "InvalidJob",
    "PublishFailed",
    "Unsent",
    "enqueue_archive",
    "enqueue_job",
    "enqueue_many",
    "enqueue_unarchive",
]
