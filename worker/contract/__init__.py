"""The message contract: what crosses a process boundary as a Celery message.

``envelope`` reads what producers publish (any language, any shape, checked before anything else
touches it) and writes the canonical messages workers run.
"""
