"""Tasks ``archive.chat`` and ``archive.unarchive``: one chat, one action, exactly one outcome.

runner.py     one run of a job, from its dispatch ticket to its ending (plain Python)
task.py       the Celery tasks, and how endings read in Flower
"""

from tasks.archive.task import archive_chat, unarchive_chat

__all__ = ["archive_chat", "unarchive_chat"]
