"""The message contract: what crosses a process boundary as a Celery message."""
