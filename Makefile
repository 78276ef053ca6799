# README's two commands, `make demo` and `make test`, each doing its own set-up on a machine with
# Python >= 3.11: a .venv holding exactly what requirements.lock pins (hash-checked), then the run.
# `make lock` re-resolves the lock after a change to pyproject.toml; `make update` moves every pin
# to the newest release pyproject.toml allows and runs the tests (docs/contributing.md).

PYTHON ?= python3
VENV := .venv
# Installed again whenever the lock or pyproject.toml is newer than it.
INSTALLED := $(VENV)/.installed-from-lock
LOCK := requirements.lock
RUNTIME_LOCK := requirements-runtime.lock
# Extra arguments for pytest, e.g. make test PYTEST_ARGS='tests/unit -q'.
PYTEST_ARGS ?=
# Test processes (pytest-xdist): each takes whole files, so a module's shared worker cluster and
# its last_in_module checks stay in one process. The suite mostly waits on real workers, so two
# processes halve its time on two cores; TEST_PROCESSES=0 runs it in this one process. Tests
# marked `alone` (they count what a busy machine can change) run afterwards, by themselves;
# pytest's exit 5 there means PYTEST_ARGS selected none of them.
TEST_PROCESSES ?= 2
# make update PACKAGES='kombu redis' moves only those pins; by default every pin moves.
PACKAGES ?=

# Every recipe runs the venv's programs, and the processes the tests start find celery and
# chat-archiver in it, as if it were activated.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export VIRTUAL_ENV := $(CURDIR)/$(VENV)

# One lock for every platform and every Python the project supports (--universal, markers where
# they differ), with the hash of each file; its header names `make lock` as the command that made
# it. The build backend (pyproject's [build-system]) is pinned in it too: the editable install
# builds without fetching anything the lock does not name.
COMPILE := uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command 'make lock'
BUILD_REQUIRES := python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")'

.PHONY: demo test install lock update

demo: $(INSTALLED)
	chat-archiver demo

test: $(INSTALLED)
	python -m tests.host_tools
	ruff check .
	ruff format --check .
	mypy
	python -m pytest -n $(TEST_PROCESSES) --dist loadfile -m 'not alone' $(PYTEST_ARGS)
	python -m pytest -m alone $(PYTEST_ARGS) || test $$? -eq 5

install: $(INSTALLED)

# pip installs the lock (hash-checked: a file that is not the one locked is refused), uv removes
# whatever the lock no longer names, and the project goes in editable on top, with no
# dependencies of its own to resolve.
$(INSTALLED): $(LOCK) pyproject.toml
	@test -x $(VENV)/bin/python || { \
		$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
			|| { echo "chat-archiver needs Python >= 3.11: make PYTHON=python3.11 ..." >&2; exit 1; }; \
		echo "$(PYTHON) -m venv $(VENV)"; $(PYTHON) -m venv $(VENV); }
	python -m pip install --quiet --disable-pip-version-check --require-hashes -r $(LOCK)
	uv pip sync --quiet --python $(VENV)/bin/python $(LOCK)
	python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation --editable .
	@touch $@

# Every extra of pyproject.toml is locked (--all-extras): an extra added there is in the next lock.
# Pins already in the lock stay unless pyproject.toml no longer allows them (UPGRADE moves them).
# The image's lock holds the same pins, less the extras.
lock: | $(INSTALLED)
	$(BUILD_REQUIRES) | $(COMPILE) --all-extras $(UPGRADE) -o $(LOCK) pyproject.toml -
	$(COMPILE) -c $(LOCK) -o $(RUNTIME_LOCK) pyproject.toml

update: UPGRADE = $(if $(PACKAGES),$(addprefix --upgrade-package=,$(PACKAGES)),--upgrade)
update: lock
	$(MAKE) test
