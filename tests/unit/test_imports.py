"""Importing the producer API or the contract is cheap and has no side effects (issue 12)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import config


def test_every_name_config_exports_resolves() -> None:
    for name in config.__all__:
        assert getattr(config, name) is not None
    with pytest.raises(AttributeError, match="NotAName"):
        config.NotAName  # noqa: B018


def imported_after(statement: str) -> set[str]:
    probe = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        # A worker setting that does not parse must not stop a service importing the producer.
        env={"ARCHIVER_LEASE_TIMEOUT": "abc", "PATH": "/usr/bin:/bin"},
    )
    return set(out.stdout.split())


def test_importing_the_producer_api_makes_no_app_and_reads_no_setting() -> None:
    # The environment holds a worker setting that does not parse: importing must not read it.
    assert "worker.celery_app" not in imported_after("import tasks")
    assert "worker.celery_app" not in imported_after("import worker")


def test_the_outcome_model_imports_without_celery_or_settings() -> None:
    modules = imported_after("import worker.contract.outcomes")
    assert not {m for m in modules if m.split(".")[0] in {"celery", "kombu", "pydantic"}}
