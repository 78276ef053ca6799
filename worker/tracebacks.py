"""Free a task's exception when its run ends, not at the next full garbage collection.

Every run that does not return (a dead letter, a job sent back to wait, a quiet ending: Celery's
FAILURE, RETRY and IGNORED) ends in an exception that Celery's tracer keeps in its own frame's
locals while the exception's traceback holds that frame: a reference cycle that only the cyclic
collector frees (celery/app/trace.py: ``traceback_clear`` cannot clear the frame still running;
celery#8882). The cycle also holds billiard's copy of the traceback, which on Python 3.11+ lists
every position of every code object in it (billiard/einfo.py ``_Code``). Those copies are mostly
tuples of ints, which the collector stops tracking, so they barely count towards the threshold of
the oldest generation (collected only once what was promoted to it since its last collection
reaches a quarter of what it holds): a busy pool process grows by them for many minutes.

Celery has formatted and stored the traceback before ``task_postrun``; dropping it there breaks
the cycle, and reference counting frees the run's frames and traceback copy at once. (Celery's
``Retry`` also holds itself in its ``args``: that small cycle stays, without the frames.)
"""

from __future__ import annotations

from typing import Any

from celery import signals


@signals.task_postrun.connect
def release_tracebacks(retval: object = None, **_: Any) -> None:
    """``task_postrun``: drop the tracebacks of the run's exception and of every exception
    chained to it (their frames are done with)."""
    pending = [retval] if isinstance(retval, BaseException) else []
    seen: set[int] = set()
    while pending:
        error = pending.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        error.__traceback__ = None
        pending += [e for e in (error.__cause__, error.__context__) if e is not None]
        # Celery's Retry carries the error that caused it (our Deferred) as ``exc``.
        chained = getattr(error, "exc", None)
        if isinstance(chained, BaseException):
            pending.append(chained)
