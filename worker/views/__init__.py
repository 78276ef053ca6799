"""Operator views: what `status` and the Prometheus exporter read from Redis."""
