"""docker-compose.yml, the Dockerfile and deploy/ checked against the code they start.

No Docker engine runs where the tests run, so the compose file is parsed, not run. Every command
is resolved to a real entry point and real options, every ARCHIVER_* name to a Settings field,
every health check to a real command or route on the port the service really listens on, and the
demo's files are loaded by the very code that reads them in the containers. Nothing is listed
here that the code could change under us: names come from the code.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml
from celery import Celery
from celery.app.control import Inspect
from celery.bin.celery import celery as celery_cli
from flower.options import options as flower_options
from flower.urls import handlers as flower_handlers
from flower.views.tasks import TASK_COLUMNS as FLOWER_TASK_COLUMNS
from kombu.utils.imports import symbol_by_name
from redbeat import RedBeatScheduler
from redis.connection import parse_url

from config.accounts import AccountRegistry, load_accounts
from config.settings import Settings
from tests.unit.test_observability import DASHBOARD, PROMETHEUS_CONFIG, RULE_TESTS, RULES
from worker.contract.jobs import ArchiveJob
from worker.sandbox.simulator import SimulatorState, load_scenario
from worker.sandbox.simulator.admin import admin_routes

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY = ROOT / "deploy"
ENV_EXAMPLE = DEPLOY / "env.example"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))

COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
# Services that run our image (they have a build section): every other one is a stock image.
APP_SERVICES = sorted(name for name, service in SERVICES.items() if "build" in service)
# The simulator stands in for the providers: it reads no ARCHIVER_* settings, no Redis, no secrets.
ARCHIVER_SERVICES = [name for name in APP_SERVICES if name != "simulator"]
CORE_SERVICES = {"redis", "worker", "beat", "flower", "metrics"}
DEMO_SERVICES = {"simulator", "producer"}
OBSERVABILITY_SERVICES = {"prometheus", "grafana"}

ENV_PREFIX = Settings.model_config["env_prefix"]
SETTINGS_VARIABLES = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
CONSOLE_SCRIPT = "chat-archiver"


# --- helpers ------------------------------------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines, the way compose reads the env file env.example becomes (no quotes used)."""
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=value: {line!r}"
            values[key.strip()] = value.strip()
    return values


ENV = read_env_file(ENV_EXAMPLE)

_INTERPOLATION = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} substitution, and $$ for a literal $."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.groups()
        value = env.get(name)
        empty = not value if operator and operator.startswith(":") else value is None
        if operator and operator.endswith("-") and empty:
            return argument
        if operator and operator.endswith("?") and empty:
            raise AssertionError(f"compose would refuse to start: {name}: {argument}")
        return value or ""

    return _INTERPOLATION.sub(substitute, text)


def compose_seconds(text: str) -> float:
    """A compose duration: '330s', '5m30s', '1h'."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", str(text))
    assert parts and "".join(a + b for a, b in parts) == str(text), f"not a duration: {text!r}"
    return sum(float(amount) * units[unit] for amount, unit in parts)


def deploy_mount(service: dict[str, Any]) -> str:
    """Where the service sees ./deploy (read-only)."""
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        if source in ("./deploy", "deploy", "./deploy/"):
            assert mode == ["ro"], f"./deploy must be mounted read-only, not {volume!r}"
            return target
    raise AssertionError("the service does not mount ./deploy")


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """The file in deploy/ that the service sees at container_path."""
    target = deploy_mount(service).rstrip("/") + "/"
    assert container_path.startswith(target), f"{container_path} is not under {target}"
    return DEPLOY / container_path[len(target) :]


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str, list[str]]]:
    """(host path, container path, options) of each bind mount: a source that is a path, not a
    volume name."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target, *options = volume.split(":")
        if source.startswith((".", "/")):
            mounts.append(((ROOT / source).resolve(), target, options))
    return mounts


def mounted_path(service: dict[str, Any], container_path: str) -> Path:
    """The host path a service sees at container_path, through the deepest bind mount above it."""
    path = PurePosixPath(container_path)
    found = [
        (PurePosixPath(target), host)
        for host, target, _ in bind_mounts(service)
        if path == PurePosixPath(target) or PurePosixPath(target) in path.parents
    ]
    assert found, f"{container_path} is on no bind mount of the service"
    target, host = max(found, key=lambda mount: len(mount[0].parts))
    return host.joinpath(*path.relative_to(target).parts)


def option_value(argv: list[str], name: str) -> str | None:
    for position, arg in enumerate(argv):
        if arg == name:
            return argv[position + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def healthcheck_argv(service: dict[str, Any]) -> list[str]:
    """The first command of a health check (CMD, or CMD-SHELL up to a pipe)."""
    test = service["healthcheck"]["test"]
    kind, *rest = test
    if kind == "CMD":
        return rest
    assert kind == "CMD-SHELL", f"unexpected health check form {kind!r}"
    words = shlex.split(rest[0])
    return words[: words.index("|")] if "|" in words else words


def _options(command: click.Command) -> dict[str, click.Parameter]:
    return {
        opt: param
        for param in command.params
        if isinstance(param, click.Option)
        for opt in (*param.opts, *param.secondary_opts)
    }


def _check_options(
    where: str, command: click.Command, args: list[str], service: dict[str, Any] | None
) -> None:
    """Every --option in args is one of the command's, its value converts, and a path it names
    (through the ./deploy mount) exists."""
    options = _options(command)
    position = 0
    while position < len(args):
        arg = args[position]
        position += 1
        if not arg.startswith("-"):
            continue
        name, has_value, value = arg.partition("=")
        assert name in options, f"{where}: {name} is not an option of {command.name!r}"
        param = options[name]
        if param.is_flag or param.count:
            continue
        if not has_value:
            value = args[position]
            position += 1
        if isinstance(param.type, click.Path):
            if service is not None and value.startswith(deploy_mount(service)):
                path = host_path(service, value)
                assert path.is_file(), f"{where}: {name} {value}: deploy/{path.name} is missing"
        elif "$" not in value:
            param.type.convert(value, param, click.Context(command))


def check_celery(where: str, argv: list[str], service: dict[str, Any] | None) -> None:
    """`celery -A worker <sub> ...`: the app is a Celery app, <sub> a celery command."""
    assert argv[1] in ("-A", "--app"), f"{where}: celery without -A: {argv}"
    module = importlib.import_module(argv[2])
    assert isinstance(getattr(module, "app", None), Celery), f"{where}: {argv[2]}.app"
    sub, args = argv[3], argv[4:]
    command = celery_cli.get_command(click.Context(celery_cli), sub)
    assert command is not None, f"{where}: celery has no {sub!r} command"
    if sub == "flower":
        # Flower hands its arguments to tornado's option parser, which knows its options.
        for arg in args:
            name, equals, _ = arg.lstrip("-").partition("=")
            assert name in flower_options, f"{where}: {arg} is not a Flower option"
            # Tornado takes `--name=value` only: `--name value` is "requires a value".
            option = flower_options._options[name.replace("_", "-")]
            assert equals or option.type is bool, f"{where}: {arg} needs =value"
        # Flower drops a column it does not know without a word: a typo hides that column.
        for column in flower_tasks_columns(args) or []:
            assert column in FLOWER_TASK_COLUMNS, f"{where}: Flower has no task column {column!r}"
        return
    if sub == "inspect":
        action, args = args[0], args[1:]
        assert callable(getattr(Inspect, action, None)), f"{where}: no inspect {action!r}"
    _check_options(where, command, args, service)


def flower_tasks_columns(args: list[str]) -> list[str] | None:
    """The columns a `--tasks_columns=a,b` option names, in order."""
    value = next((a.split("=", 1)[1] for a in args if a.startswith("--tasks_columns=")), None)
    return None if value is None else [name.strip() for name in value.split(",")]


def check_console_script(where: str, argv: list[str], service: dict[str, Any] | None) -> None:
    """`chat-archiver <cmd> ...`: <cmd> is a command of the click group pyproject installs."""
    module_name, attribute = PYPROJECT["project"]["scripts"][CONSOLE_SCRIPT].split(":")
    group = getattr(importlib.import_module(module_name), attribute)
    assert isinstance(group, click.Group)
    command: click.Command = group
    args = argv[1:]
    while isinstance(command, click.Group):
        if command.invoke_without_command and (not args or args[0].startswith("-")):
            break  # a group that runs by itself too (`chat-archiver sweep --dry-run`)
        assert args, f"{where}: {CONSOLE_SCRIPT} needs a command"
        name, args = args[0], args[1:]
        found = command.get_command(click.Context(command), name)
        assert found is not None, f"{where}: `{CONSOLE_SCRIPT} {name}`: no such command"
        command = found
    _check_options(where, command, args, service)


def check_entry_point(where: str, argv: list[str], service: dict[str, Any] | None = None) -> None:
    assert argv, f"{where}: no command"
    if argv[0] == "celery":
        check_celery(where, argv, service)
    elif argv[0] == CONSOLE_SCRIPT:
        check_console_script(where, argv, service)
    else:
        pytest.fail(f"{where}: {argv[0]!r} is not one of our entry points")


def published_ports(service: dict[str, Any]) -> list[tuple[str | None, str]]:
    """(host ip or None for every interface, container port) of each published port."""
    ports = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports.append((port.get("host_ip"), str(port["target"])))
            continue
        parts = str(port).split(":")
        # "container", "host:container" or "ip:host:container" (IPv6 not used here).
        host_ip = parts[0] if len(parts) == 3 else None
        ports.append((host_ip, parts[-1].split("/")[0]))
    return ports


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def one_liner(argv: list[str]) -> str | None:
    if argv[:2] == ["python", "-c"]:
        return argv[2]
    return None


def http_routes_of(handlers: list[Any]) -> set[str]:
    """Literal paths of tornado handler specs (tuples or URLSpec), without the $ anchor."""
    patterns = [h.regex.pattern if hasattr(h, "regex") else h[0] for h in handlers]
    return {pattern.rstrip("$") for pattern in patterns}


def demo_accounts() -> AccountRegistry:
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ENV.items():
            patch.setenv(key, value)
        return load_accounts(DEPLOY / "accounts.demo.toml")


# --- services and profiles ----------------------------------------------------------------------


def test_compose_file_uses_the_compose_spec_without_version() -> None:
    # v2 calls `version:` obsolete; v1 (1.27+) reads a file without one as the Compose spec.
    assert "version" not in COMPOSE


def test_core_services_run_without_a_profile() -> None:
    unprofiled = {name for name, service in SERVICES.items() if not service.get("profiles")}
    assert unprofiled == CORE_SERVICES


def test_demo_profile_holds_the_simulator_and_the_producer_only() -> None:
    demo = {name for name, service in SERVICES.items() if "demo" in service.get("profiles", [])}
    assert demo == DEMO_SERVICES
    for name in DEMO_SERVICES:
        assert SERVICES[name]["profiles"] == ["demo"]


def test_no_core_service_depends_on_a_demo_service() -> None:
    # Compose refuses to start a service whose dependency a profile left out.
    for name in CORE_SERVICES:
        depends = set(SERVICES[name].get("depends_on", {}))
        assert not depends & DEMO_SERVICES, name


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_build_this_repository(name: str) -> None:
    service = SERVICES[name]
    assert service["build"] in (".", {"context": "."}), name
    assert service["image"] == SERVICES["worker"]["image"], "one image for every service"


# --- commands -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", APP_SERVICES)
def test_command_is_a_real_entry_point(name: str) -> None:
    service = SERVICES[name]
    command = service["command"]
    assert isinstance(command, list), f"{name}: exec form, so the signal reaches the process"
    check_entry_point(name, command, service)


def test_worker_beat_and_flower_run_the_celery_app() -> None:
    for name, sub in (("worker", "worker"), ("beat", "beat"), ("flower", "flower")):
        assert SERVICES[name]["command"][:4] == ["celery", "-A", "worker", sub], name


def test_producer_enqueues_the_demo_jobs_file() -> None:
    command = SERVICES["producer"]["command"]
    assert command[:2] == [CONSOLE_SCRIPT, "enqueue"]
    path = host_path(SERVICES["producer"], option_value(command, "--file") or "")
    assert path == DEPLOY / "demo-jobs.jsonl"


def test_simulator_serves_the_demo_scenario_on_every_interface() -> None:
    command = SERVICES["simulator"]["command"]
    assert command[:2] == [CONSOLE_SCRIPT, "simulate"]
    # Other containers reach it over the compose network: loopback would shut them out.
    assert option_value(command, "--host") == "0.0.0.0"
    path = host_path(SERVICES["simulator"], option_value(command, "--scenario") or "")
    assert path == DEPLOY / "demo-scenario.json"


def test_metrics_exporter_listens_on_every_interface() -> None:
    command = SERVICES["metrics"]["command"]
    assert command[:2] == [CONSOLE_SCRIPT, "metrics"]
    assert option_value(command, "--host") == "0.0.0.0"
    assert option_value(command, "--port")


# --- settings and secrets -----------------------------------------------------------------------


def test_every_archiver_variable_is_a_settings_field() -> None:
    # Anywhere: set, interpolated or documented in a comment. A renamed setting fails here.
    for path in (COMPOSE_FILE, ENV_EXAMPLE):
        named = set(re.findall(rf"\b{ENV_PREFIX}[A-Z0-9_]+", path.read_text(encoding="utf-8")))
        unknown = named - SETTINGS_VARIABLES
        assert not unknown, f"{path.name}: not Settings fields: {sorted(unknown)}"


def test_env_example_documents_every_setting() -> None:
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    missing = sorted(v for v in SETTINGS_VARIABLES if not re.search(rf"\b{v}=", text))
    assert not missing, f"deploy/env.example does not document {missing}"


@pytest.mark.parametrize("name", ARCHIVER_SERVICES)
def test_app_services_read_secrets_from_the_env_file(name: str) -> None:
    env_file = SERVICES[name].get("env_file")
    assert env_file in (".env", [".env"]), name


def test_settings_from_env_example_are_valid() -> None:
    # The containers' settings: env.example's ARCHIVER_* values, then compose's environment.
    environment = {
        key: interpolate(str(value), ENV)
        for key, value in SERVICES["worker"]["environment"].items()
    }
    values = {k: v for k, v in {**ENV, **environment}.items() if k.startswith(ENV_PREFIX)}
    fields = {key[len(ENV_PREFIX) :].lower(): value for key, value in values.items()}
    Settings.model_validate(fields)


def test_broker_url_carries_the_redis_password_to_the_redis_service() -> None:
    for name in ARCHIVER_SERVICES:
        url = interpolate(SERVICES[name]["environment"][f"{ENV_PREFIX}BROKER_URL"], ENV)
        parsed = parse_url(url)
        # A password with URL-special characters would not survive the URL: env.example says so.
        assert parsed["password"] == ENV["REDIS_PASSWORD"], name
        assert (parsed["host"], parsed["port"]) == ("redis", 6379), name


def test_variables_compose_requires_are_set_in_env_example() -> None:
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE_FILE.read_text(encoding="utf-8")))
    assert required >= {"REDIS_PASSWORD", "FLOWER_BASIC_AUTH"}
    for name in required:
        assert ENV.get(name), f"`cp deploy/env.example .env` leaves {name} unset"


def test_env_example_runs_the_demo_as_shipped() -> None:
    accounts_file = interpolate(
        SERVICES["worker"]["environment"][f"{ENV_PREFIX}ACCOUNTS_FILE"], ENV
    )
    assert host_path(SERVICES["worker"], accounts_file) == DEPLOY / "accounts.demo.toml"


def test_production_accounts_file_is_the_one_the_operator_writes() -> None:
    # Without ARCHIVER_ACCOUNTS_FILE in .env, the services read deploy/accounts.toml, which the
    # operator writes from config/accounts.example.toml (not shipped: it names real accounts).
    accounts_file = interpolate(SERVICES["worker"]["environment"][f"{ENV_PREFIX}ACCOUNTS_FILE"], {})
    assert host_path(SERVICES["worker"], accounts_file) == DEPLOY / "accounts.toml"
    assert (ROOT / "config" / "accounts.example.toml").is_file()
    assert "config/accounts.example.toml" in ENV_EXAMPLE.read_text(encoding="utf-8")


# --- health checks and restart policies ---------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_healthcheck_and_a_restart_policy(name: str) -> None:
    service = SERVICES[name]
    assert service.get("restart") in ("unless-stopped", "always", "on-failure", "no"), name
    healthcheck = service["healthcheck"]
    if service["restart"] == "no":
        # A one-shot: its exit code is its health. Disabled on purpose, not forgotten.
        assert healthcheck == {"disable": True}, name
        return
    assert healthcheck["test"][0] in ("CMD", "CMD-SHELL"), name
    for key in ("interval", "timeout", "start_period"):
        compose_seconds(healthcheck[key])
    assert healthcheck["retries"] >= 1


@pytest.mark.parametrize("name", APP_SERVICES)
def test_healthcheck_runs_real_code(name: str) -> None:
    service = SERVICES[name]
    if service["healthcheck"].get("disable"):
        return
    argv = healthcheck_argv(service)
    code = one_liner(argv)
    if code is None:
        check_entry_point(f"{name} healthcheck", argv, service)
        return
    # A python one-liner: it compiles, and everything it imports exists.
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
        elif isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module or "")
            for alias in node.names:
                assert hasattr(module, alias.name), f"{name}: {node.module}.{alias.name}"


def _service_port(name: str) -> str:
    value = option_value(SERVICES[name]["command"], "--port")
    assert value, f"{name}: no --port"
    return value


def _healthcheck_url(name: str) -> tuple[str, str]:
    code = one_liner(healthcheck_argv(SERVICES[name])) or ""
    [url] = re.findall(r"http://[^'\"]+", code)
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1", f"{name}: a health check asks the container itself"
    return str(parts.port), parts.path


def test_flower_healthcheck_gets_flowers_healthcheck_route() -> None:
    port, path = _healthcheck_url("flower")
    assert port == _service_port("flower")
    assert path in http_routes_of(flower_handlers)


def test_simulator_healthcheck_gets_its_health_route() -> None:
    port, path = _healthcheck_url("simulator")
    assert port == _service_port("simulator")
    assert path in http_routes_of(admin_routes(SimulatorState()))


def test_metrics_healthcheck_gets_metrics_on_the_exporter_port() -> None:
    port, path = _healthcheck_url("metrics")
    assert (port, path) == (_service_port("metrics"), "/metrics")


def test_worker_healthcheck_pings_this_worker_node() -> None:
    argv = healthcheck_argv(SERVICES["worker"])
    assert argv[3:5] == ["inspect", "ping"]
    # $$ in compose is a literal $: the container's shell expands $HOSTNAME. Celery names a
    # worker celery@<hostname> unless told otherwise, so the worker must not be given a name.
    assert option_value(argv, "-d") == "celery@$$HOSTNAME"
    assert interpolate(option_value(argv, "-d") or "", {}) == "celery@$HOSTNAME"
    command = SERVICES["worker"]["command"]
    assert option_value(command, "-n") is None and option_value(command, "--hostname") is None


def test_beat_healthcheck_relies_on_the_redbeat_lock_the_app_uses() -> None:
    app = importlib.import_module("worker").app
    scheduler = symbol_by_name(app.conf.beat_scheduler)
    assert issubclass(scheduler, RedBeatScheduler)
    code = one_liner(healthcheck_argv(SERVICES["beat"])) or ""
    assert "RedBeatConfig(app).lock_key" in code


def test_redis_healthcheck_authenticates_with_the_password() -> None:
    redis = SERVICES["redis"]
    assert healthcheck_argv(redis)[:2] == ["redis-cli", "ping"]
    assert "PONG" in redis["healthcheck"]["test"][1]
    # redis-cli reads REDISCLI_AUTH: the check needs no -a and no escaping of the password.
    assert interpolate(redis["environment"]["REDISCLI_AUTH"], ENV) == ENV["REDIS_PASSWORD"]


# --- redis --------------------------------------------------------------------------------------


def test_redis_persists_with_aof_never_evicts_and_requires_a_password() -> None:
    command = SERVICES["redis"]["command"]
    assert isinstance(command, list)
    text = " ".join(str(part) for part in command)
    assert "--appendonly yes" in text
    assert "--maxmemory-policy noeviction" in text
    assert interpolate(option_value(command, "--requirepass") or "", ENV) == ENV["REDIS_PASSWORD"]
    assert "${REDIS_PASSWORD:?" in option_value(command, "--requirepass")


def test_redis_data_is_a_declared_named_volume() -> None:
    [volume] = [v for v in SERVICES["redis"]["volumes"] if v.endswith(":/data")]
    name = volume.split(":")[0]
    assert not name.startswith((".", "/")), "a named volume, not a bind mount"
    assert name in (COMPOSE.get("volumes") or {})


def test_redis_is_not_published() -> None:
    assert not SERVICES["redis"].get("ports")


@pytest.mark.parametrize("name", ARCHIVER_SERVICES)
def test_app_services_wait_for_a_healthy_redis(name: str) -> None:
    assert SERVICES[name]["depends_on"]["redis"] == {"condition": "service_healthy"}


# --- ports --------------------------------------------------------------------------------------


def test_flower_is_published_on_loopback_only() -> None:
    ports = published_ports(SERVICES["flower"])
    assert ports, "Flower's UI is published (on loopback)"
    assert all(host_ip == "127.0.0.1" for host_ip, _ in ports), ports
    assert {target for _, target in ports} == {_service_port("flower")}


def test_no_service_publishes_the_metrics_port() -> None:
    metrics_port = _service_port("metrics")
    assert not SERVICES["metrics"].get("ports")
    for name, service in SERVICES.items():
        for host_ip, target in published_ports(service):
            assert target != metrics_port, f"{name} publishes the metrics port"
            assert host_ip == "127.0.0.1", f"{name} publishes {target} beyond loopback"


def test_flower_shows_each_jobs_outcome_by_default() -> None:
    # The tasks page tells outcomes at a glance (README, Operations: Flower): the state, the
    # result (the outcome dict) and the exception (DeadLettered's reason, Deferred's why), with
    # the job's arguments; names Flower knows (check_celery), each once.
    columns = flower_tasks_columns(SERVICES["flower"]["command"])
    assert columns is not None, "Flower's command sets --tasks_columns"
    assert {"name", "uuid", "state", "result", "exception", "kwargs"} <= set(columns)
    assert all(column in FLOWER_TASK_COLUMNS for column in columns), columns
    assert len(columns) == len(set(columns)), columns
    # The outcome sits right after the state, before anything wide.
    assert columns.index("result") == columns.index("state") + 1, columns


def test_readme_runs_flower_with_the_compose_files_columns() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Running it for real", 1)[1].split("\n## ", 1)[0]
    flower_lines = [
        shlex.split(line, comments=True)
        for line in section.splitlines()
        if line.startswith("celery -A worker flower")
    ]
    assert flower_lines, "README's Running it for real starts Flower"
    for argv in flower_lines:
        assert flower_tasks_columns(argv) == flower_tasks_columns(SERVICES["flower"]["command"])


def test_flower_basic_auth_comes_from_the_environment() -> None:
    # FLOWER_<OPTION> is how Flower reads an option from the environment.
    assert "basic_auth" in flower_options
    value = SERVICES["flower"]["environment"]["FLOWER_BASIC_AUTH"]
    assert value.startswith("${FLOWER_BASIC_AUTH:?"), "required, never a default in the file"
    user, sep, password = interpolate(value, ENV).partition(":")
    assert user and sep and password and "," not in password


# --- graceful stop ------------------------------------------------------------------------------


def test_worker_stops_gracefully_within_the_task_time_limit() -> None:
    worker = SERVICES["worker"]
    assert worker["stop_signal"] == "SIGTERM"  # Celery's warm shutdown
    task_time_limit = Settings.model_fields["task_time_limit"].default
    assert compose_seconds(worker["stop_grace_period"]) > task_time_limit


# --- the demo -----------------------------------------------------------------------------------


def test_producer_is_a_one_shot_after_worker_and_simulator_are_healthy() -> None:
    producer = SERVICES["producer"]
    assert producer["restart"] == "no"
    for name in ("redis", "worker", "simulator"):
        assert producer["depends_on"][name] == {"condition": "service_healthy"}, name


def test_demo_accounts_file_loads_with_the_env_example_tokens() -> None:
    registry = demo_accounts()
    assert {a.provider for a in registry} == {"green-api", "wassenger"}


def test_demo_accounts_point_at_the_simulator_service() -> None:
    port = _service_port("simulator")
    for account in demo_accounts():
        parts = urlsplit(account.api_url)
        assert (parts.hostname, str(parts.port)) == ("simulator", port), account.key
        assert "simulator" in SERVICES


def test_demo_scenario_loads_in_the_simulator() -> None:
    state = SimulatorState()
    assert state.apply_scenario(load_scenario(DEPLOY / "demo-scenario.json")) >= 2


def test_demo_scenario_holds_the_demo_accounts_with_their_tokens() -> None:
    scenario = json.loads((DEPLOY / "demo-scenario.json").read_text(encoding="utf-8"))
    simulated = {(a["provider"], a["id"]): a["token"] for a in scenario["accounts"]}
    configured = {(a.provider, a.id): a.token.reveal() for a in demo_accounts()}
    assert configured == simulated


def test_demo_jobs_are_valid_and_name_demo_accounts() -> None:
    registry = demo_accounts()
    lines = (DEPLOY / "demo-jobs.jsonl").read_text(encoding="utf-8").splitlines()
    jobs = [ArchiveJob.parse(json.loads(line)) for line in lines if line.strip()]
    assert jobs
    for job in jobs:
        assert registry.find(job.provider, job.account) is not None, job


# --- the image ----------------------------------------------------------------------------------


def test_dockerfile_cmd_is_a_real_entry_point() -> None:
    commands = [rest for keyword, rest in dockerfile_instructions() if keyword == "CMD"]
    assert commands, "the Dockerfile has a CMD"
    check_entry_point("Dockerfile CMD", json.loads(commands[-1]))


def test_dockerfile_installs_the_package_without_dev_extras() -> None:
    instructions = dockerfile_instructions()
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert re.search(r"pip install [^&]*\s\.(\s|$)", runs), "pip install . from the repository"
    assert not re.search(r"pip install [^&]*(-e\s|\[(dev|test)\])", runs)
    bases = {rest.split()[0] for keyword, rest in instructions if keyword == "FROM"}
    assert bases == {"python:3.11-slim"}
    assert any(keyword == "USER" and rest not in ("root", "0") for keyword, rest in instructions)
    assert ("WORKDIR", "/app") in instructions


def test_dockerfile_copies_every_package_pyproject_installs() -> None:
    copied = {
        part.rstrip("/")
        for keyword, rest in dockerfile_instructions()
        if keyword == "COPY" and not rest.startswith("--from")
        for part in rest.split()[:-1]
    }
    packages = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    needed = {p.rstrip("*") for p in packages} | {"pyproject.toml", PYPROJECT["project"]["readme"]}
    assert needed <= copied


def test_dockerignore_admits_only_the_build_inputs() -> None:
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # An allow-list: everything out (.env and its secrets first of all), then the inputs back.
    assert lines[0] == "*"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    packages = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*") for p in packages} | {"pyproject.toml", "README.md"} <= admitted
    assert not {".env", "deploy", "tests", ".git"} & admitted


# --- Compose v1 and v2 ---------------------------------------------------------------------------
# Compose v1 (docker-compose 1.29.2, its last release, the one Debian and Ubuntu package) validates
# the file against its own compose_spec.json before anything else and refuses any key it does not
# know: a top-level `name:` stops it ("'name' does not match any of the regexes: '^x-'"). These
# are the keys that schema (compose/config/compose_spec.json in the 1.29.2 wheel) accepts where
# this file uses them; Compose v2 accepts all of them too. Checked by hand with docker-compose
# 1.29.2 `config`, which this machine cannot keep installed.
V1_TOP_LEVEL = {"version", "services", "networks", "volumes", "secrets", "configs"}
V1_SERVICE = {
    "blkio_config",
    "build",
    "cap_add",
    "cap_drop",
    "cgroup_parent",
    "command",
    "configs",
    "container_name",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpu_shares",
    "cpus",
    "cpuset",
    "credential_spec",
    "depends_on",
    "deploy",
    "device_cgroup_rules",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "entrypoint",
    "env_file",
    "environment",
    "expose",
    "extends",
    "external_links",
    "extra_hosts",
    "group_add",
    "healthcheck",
    "hostname",
    "image",
    "init",
    "ipc",
    "isolation",
    "labels",
    "links",
    "logging",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "network_mode",
    "networks",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "ports",
    "privileged",
    "profiles",
    "pull_policy",
    "read_only",
    "restart",
    "runtime",
    "scale",
    "secrets",
    "security_opt",
    "shm_size",
    "stdin_open",
    "stop_grace_period",
    "stop_signal",
    "storage_opt",
    "sysctls",
    "tmpfs",
    "tty",
    "ulimits",
    "user",
    "userns_mode",
    "volumes",
    "volumes_from",
    "working_dir",
}
# No start_interval (v2 only), no depends_on `required`/`restart` (v2 only).
V1_HEALTHCHECK = {"disable", "interval", "retries", "start_period", "test", "timeout"}
V1_DEPENDS_ON_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
V1_BUILD = {
    "args",
    "cache_from",
    "context",
    "dockerfile",
    "extra_hosts",
    "isolation",
    "labels",
    "network",
    "shm_size",
    "target",
}
V1_LOGGING = {"driver", "options"}
V1_VOLUME = {"name", "driver", "driver_opts", "external", "labels"}
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $VAR and $$: what both
# interpolate (v2 also knows ${VAR:+...} and nested defaults, which v1 would pass on verbatim).
V1_INTERPOLATION = re.compile(r"\$\$|\$\{\w+(?::?[-?][^}$]*)?\}|\$\w+")


def own_keys(mapping: dict[str, Any]) -> set[str]:
    """Keys but the x- extensions, which every Compose version accepts."""
    return {key for key in mapping if not key.startswith("x-")}


def test_top_level_keys_are_ones_compose_v1_accepts() -> None:
    assert "name" not in COMPOSE, "Compose v1 refuses a top-level name: (COMPOSE_PROJECT_NAME)"
    assert own_keys(COMPOSE) <= V1_TOP_LEVEL - {"version"}, own_keys(COMPOSE) - V1_TOP_LEVEL
    for name, volume in (COMPOSE.get("volumes") or {}).items():
        assert volume is None or own_keys(volume) <= V1_VOLUME, name


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_keys_are_ones_compose_v1_accepts(name: str) -> None:
    service = SERVICES[name]
    assert own_keys(service) <= V1_SERVICE, own_keys(service) - V1_SERVICE
    assert own_keys(service.get("healthcheck", {})) <= V1_HEALTHCHECK, name
    depends = service.get("depends_on", {})
    if isinstance(depends, dict):
        for dependency, how in depends.items():
            assert set(how) == {"condition"}, (name, dependency)
            assert how["condition"] in V1_DEPENDS_ON_CONDITIONS, (name, dependency)
    build = service.get("build")
    if isinstance(build, dict):
        assert own_keys(build) <= V1_BUILD, name
    assert own_keys(service.get("logging", {})) <= V1_LOGGING, name


def test_every_interpolation_is_one_compose_v1_understands() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        rest = V1_INTERPOLATION.sub("", line)
        assert "$" not in rest, f"an interpolation Compose v1 would not read: {line.strip()}"


def test_env_example_names_the_project_for_both_compose_versions() -> None:
    # Without a name: key, Compose (v1 and v2) takes COMPOSE_PROJECT_NAME from .env, else the
    # folder's name (a clone into another folder would get other volume names).
    assert ENV["COMPOSE_PROJECT_NAME"] == "chat-archiver"


def test_worker_concurrency_is_set_from_the_env_file_with_a_default() -> None:
    command = SERVICES["worker"]["command"]
    value = option_value(command, "-c") or option_value(command, "--concurrency")
    assert value is not None, "the worker's pool size is set (jobs wait: more than the cores)"
    worker = celery_cli.get_command(click.Context(celery_cli), "worker")
    assert worker is not None
    concurrency = _options(worker)["-c"]
    context = click.Context(worker)
    # As shipped (.env from env.example), and with no such variable at all.
    shipped = int(concurrency.type.convert(interpolate(value, ENV), concurrency, context))
    default = int(concurrency.type.convert(interpolate(value, {}), concurrency, context))
    assert shipped == int(ENV["WORKER_CONCURRENCY"]) and shipped >= 2
    assert default >= 2


# --- the observability profile ------------------------------------------------------------------


def _prometheus_port() -> str:
    address = option_value(SERVICES["prometheus"]["command"], "--web.listen-address")
    assert address, "Prometheus' listen address is set, so the tests know its port"
    return address.rsplit(":", 1)[1]


def _grafana_port() -> str:
    return str(SERVICES["grafana"]["environment"]["GF_SERVER_HTTP_PORT"])


def _wget_url(name: str) -> tuple[str, str]:
    argv = healthcheck_argv(SERVICES[name])
    assert argv[0] == "wget", f"{name}: the stock image has busybox wget, not curl"
    [url] = [arg for arg in argv if arg.startswith("http://")]
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1", f"{name}: a health check asks the container itself"
    return str(parts.port), parts.path


def test_observability_profile_holds_prometheus_and_grafana_only() -> None:
    profiled = {
        n for n, service in SERVICES.items() if "observability" in service.get("profiles", [])
    }
    assert profiled == OBSERVABILITY_SERVICES
    for name in OBSERVABILITY_SERVICES:
        assert SERVICES[name]["profiles"] == ["observability"]


def test_no_other_service_depends_on_an_observability_service() -> None:
    for name in CORE_SERVICES | DEMO_SERVICES:
        depends = set(SERVICES[name].get("depends_on", {}))
        assert not depends & OBSERVABILITY_SERVICES, name


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_bind_mount_exists_and_is_read_only(name: str) -> None:
    for host, target, options in bind_mounts(SERVICES[name]):
        # A missing source would be created on the host as an empty directory.
        assert host.exists(), f"{name}: {target} mounts {host.relative_to(ROOT)}, which is missing"
        assert options == ["ro"], f"{name}: {host.relative_to(ROOT)} is mounted {options}"


def test_stock_images_are_pinned() -> None:
    for name, service in SERVICES.items():
        if "build" in service:
            continue
        tag = service["image"].partition(":")[2]
        assert tag and tag != "latest", f"{name}: {service['image']} is not pinned"


@pytest.mark.parametrize("name", sorted(OBSERVABILITY_SERVICES))
def test_observability_keeps_its_data_on_a_declared_named_volume(name: str) -> None:
    named = [v.split(":")[0] for v in SERVICES[name]["volumes"] if not v.startswith((".", "/"))]
    assert named and set(named) <= set(COMPOSE.get("volumes") or {}), name


def test_prometheus_loads_the_config_and_the_rules_that_are_tested() -> None:
    command = SERVICES["prometheus"]["command"]
    config = option_value(command, "--config.file") or ""
    assert mounted_path(SERVICES["prometheus"], config) == PROMETHEUS_CONFIG
    # Prometheus reads rule_files relative to its config file, in the container.
    rule_files = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))["rule_files"]
    loaded = [
        mounted_path(SERVICES["prometheus"], str(PurePosixPath(config).parent / name))
        for name in rule_files
    ]
    assert loaded == [RULES]
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    assert [RULE_TESTS.parent / name for name in tests["rule_files"]] == loaded


def test_prometheus_keeps_its_time_series_on_its_volume() -> None:
    path = option_value(SERVICES["prometheus"]["command"], "--storage.tsdb.path")
    assert any(v.endswith(f":{path}") for v in SERVICES["prometheus"]["volumes"]), path


def test_prometheus_scrapes_the_exporter_and_flower_where_they_listen() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    targets = {
        job["job_name"]: (
            job.get("metrics_path", "/metrics"),
            [t for static in job["static_configs"] for t in static["targets"]],
        )
        for job in config["scrape_configs"]
    }
    assert targets["chat-archiver"] == ("/metrics", [f"metrics:{_service_port('metrics')}"])
    assert targets["flower"] == ("/metrics", [f"flower:{_service_port('flower')}"])
    assert "/metrics" in http_routes_of(flower_handlers)


def test_prometheus_healthcheck_asks_its_ready_route() -> None:
    assert _wget_url("prometheus") == (_prometheus_port(), "/-/ready")


def test_grafana_healthcheck_asks_its_health_route() -> None:
    assert _wget_url("grafana") == (_grafana_port(), "/api/health")


@pytest.mark.parametrize("name", sorted(OBSERVABILITY_SERVICES))
def test_observability_is_published_on_loopback_at_its_port(name: str) -> None:
    port = _prometheus_port() if name == "prometheus" else _grafana_port()
    assert published_ports(SERVICES[name]) == [("127.0.0.1", port)]


def _grafana_provisioning(kind: str) -> list[dict[str, Any]]:
    folder = mounted_path(SERVICES["grafana"], f"/etc/grafana/provisioning/{kind}")
    files = sorted(folder.glob("*.yml")) + sorted(folder.glob("*.yaml"))
    assert files, f"deploy/grafana/provisioning/{kind} holds no provisioning file"
    return [yaml.safe_load(path.read_text(encoding="utf-8")) for path in files]


def test_grafana_uses_the_prometheus_service_as_its_data_source() -> None:
    [provisioning] = _grafana_provisioning("datasources")
    [source] = provisioning["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    parts = urlsplit(source["url"])
    assert (parts.hostname, str(parts.port)) == ("prometheus", _prometheus_port())
    assert "prometheus" in SERVICES


def test_grafana_loads_the_dashboard_that_is_tested() -> None:
    [provisioning] = _grafana_provisioning("dashboards")
    [provider] = provisioning["providers"]
    assert provider["type"] == "file"
    folder = mounted_path(SERVICES["grafana"], provider["options"]["path"])
    assert sorted(folder.glob("*.json")) == [DASHBOARD]
    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert mounted_path(SERVICES["grafana"], home) == DASHBOARD


def test_grafana_admin_password_comes_from_the_env_file() -> None:
    environment = SERVICES["grafana"]["environment"]
    value = environment["GF_SECURITY_ADMIN_PASSWORD"]
    assert value.startswith("${GRAFANA_ADMIN_PASSWORD:?"), "required, never a default in the file"
    assert interpolate(value, ENV) == ENV["GRAFANA_ADMIN_PASSWORD"]
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert environment["GF_USERS_ALLOW_SIGN_UP"] == "false"
