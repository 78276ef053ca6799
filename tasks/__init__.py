"""What the worker does: the archive task, the sweep task, and the provider adapters.

Producers import from here: ``from tasks import enqueue_archive, enqueue_many``.
"""

from worker.contract.jobs import ArchiveJob, InvalidJob
from worker.producer import BulkResult, enqueue_archive, enqueue_job, enqueue_many

__all__ = [
    "ArchiveJob",
    "BulkResult",
    "InvalidJob",
    "enqueue_archive",
    "enqueue_job",
    "enqueue_many",
]
