"""Task ``archive.chat``: archive one chat and end in exactly one outcome.

runner.py     one run of a job, from admission to its ending (plain Python)
admission.py  what a run learns before it may call, in one Redis step
pauses.py     what runs and probes do around an account's circuit breaker
task.py       the Celery task, and how endings read in the result backend and Flower
"""

from tasks.archive.runner import ArchiveRunner, Done, Failed, Quiet, RunContext, RunEnd, Waiting
from tasks.archive.task import ArchiveTask, JobTask, archive_chat, settle

__all__ = [
    "ArchiveRunner",
    "ArchiveTask",
    "Done",
    "Failed",
    "JobTask",
    "Quiet",
    "RunContext",
    "RunEnd",
    "Waiting",
    "archive_chat",
    "settle",
]
