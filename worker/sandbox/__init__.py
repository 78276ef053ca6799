"""The sandbox: everything that never runs in a production worker. The provider simulator, the
demo, and the local process tooling (private Redis, Celery nodes, one LocalCluster) that the demo,
the integration tests and the benchmarks share."""
