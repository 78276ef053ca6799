"""Benchmarks and soaks: scripts run by hand (``python -m benchmarks.<name> --help``), never by
pytest. They measure and print targets as PASS/MISS; they assert nothing."""
