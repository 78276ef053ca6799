"""The alert rules and the Grafana dashboard in deploy/, checked against Prometheus' own tool and
against what the exporter really serves.

promtool (Debian's `prometheus` package; .ci/run installs it) checks the rules and the
Prometheus configuration and runs deploy/prometheus/alerts.test.yml, where each alert fires on
its trouble and stays quiet while all is well. The series the exporter serves are read from its
registry against a real Redis holding one of everything, so a query that names a series (or a
label) the exporter does not serve fails here, naming the panel or the alert.
"""

from __future__ import annotations

import json
import re
import runpy
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client.registry import CollectorRegistry

from tests.conftest import GREEN_ID, Env
from tests.host_tools import require
from worker.services import get_accounts
from worker.stores.deadletters import DeadLetter
from worker.views.exporter import ArchiverCollector

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "alerts.test.yml"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "chat-archiver.json"
DASHBOARD_BUILDER = ROOT / "tools" / "grafana_dashboard.py"

# Labels Prometheus adds to every series it scrapes.
TARGET_LABELS = frozenset({"job", "instance"})
# Prometheus' own series for each target: 0 while the exporter answers 503 (Redis away).
PROMETHEUS_SERIES = {"up": TARGET_LABELS}
# What Grafana puts in place of its variables before a query reaches Prometheus.
GRAFANA_INTERVALS = {"$__rate_interval": "2m", "$__interval": "30s", "$__range": "6h"}

Served = dict[str, frozenset[str]]  # series name -> the labels it carries


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def promtool() -> str:
    require("promtool")
    path = shutil.which("promtool")
    assert path
    return path


def run_promtool(promtool: str, *args: str) -> str:
    done = subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=120, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


# --- the served series ------------------------------------------------------------------------


@pytest.fixture
def served(archiver_env: Env) -> Served:
    """Every series name the exporter serves (counters as _total, histograms as _bucket, _sum and
    _count), with its labels, read from its registry over a Redis holding one of everything."""
    services, accounts = archiver_env.services, get_accounts()
    green = accounts.get("green-api", GREEN_ID)
    pipe = services.redis.pipeline()
    services.metrics.queue_outcome(pipe, "green-api", GREEN_ID, "archived", None)
    pipe.execute()
    services.dead_letters.add(
        DeadLetter(
            reason="chat_not_found",
            job={"provider": "green-api", "account": GREEN_ID, "chat_id": "7@c.us"},
            detail="HTTP 400",
        )
    )
    services.redis.rpush(services.keys.wait(green.key), "t1")
    services.limiter.penalize(green, "archiveChat", 1.0)
    permit = services.limiter.acquire(green, "archiveChat", max_wait=2.0)  # deferred: 1 s away
    services.limiter.keep_distance(green, "archiveChat", 1.0, permit.slot or 1)  # a late call
    pipe = services.redis.pipeline()
    services.metrics.queue_latency(pipe, "green-api", GREEN_ID, 0.3)
    pipe.execute()
    services.circuit.trip(green, "unauthorized", "HTTP 401", probing=False)
    services.jobs.tick("celery@a", [], janitor_ms=0, node_timeout=60, unknown_grace=60)
    services.redis.hincrby(services.keys.metrics_sweeps, f"green-api|{GREEN_ID}|failed", 1)

    registry = CollectorRegistry()
    registry.register(ArchiverCollector(services, accounts))
    found: dict[str, set[str]] = {}
    for family in registry.collect():
        # A family without samples would hide its names: the data above must reach every one.
        assert family.samples, f"{family.name}: no sample; give the fixture data for it"
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    series = {name: frozenset(labels | TARGET_LABELS) for name, labels in found.items()}
    return {**series, **PROMETHEUS_SERIES}


# --- reading queries --------------------------------------------------------------------------


@dataclass(frozen=True)
class Selector:
    name: str
    labels: frozenset[str]  # the labels its matchers name


def selectors(expr: str) -> list[Selector]:
    """The series selectors of a PromQL expression, read by a PromQL parser."""
    found: list[Selector] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = node.matchers.matchers
            name = node.name or next(
                (m.value for m in matchers if m.name == "__name__"), "<no name>"
            )
            labels = frozenset(m.name for m in matchers if m.name != "__name__")
            found.append(Selector(name, labels))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def grafana_to_promql(expr: str) -> str:
    """A Grafana query as Prometheus receives it: interval variables replaced (label variables
    such as $provider sit inside matcher strings, where PromQL takes them as text)."""
    for variable, value in GRAFANA_INTERVALS.items():
        expr = expr.replace(variable, value)
    return expr


_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.+),\s*(?P<label>\w+)\s*\)\s*$")


@dataclass(frozen=True)
class DashboardQuery:
    where: str  # the panel or variable, as a person finds it in Grafana
    expr: str  # PromQL
    reads_label: str | None = None  # label_values(..., label): the label it lists


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[DashboardQuery]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            where = f'panel "{panel["title"]}" (id {panel["id"]}, query {target["refId"]})'
            yield DashboardQuery(where, grafana_to_promql(target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = _LABEL_VALUES.match(text)
        assert match, f'variable "{variable["name"]}": not a label_values() query: {text}'
        yield DashboardQuery(
            f'variable "{variable["name"]}"',
            grafana_to_promql(match["selector"]),
            reads_label=match["label"],
        )


def unknown_series(queries: list[DashboardQuery], served: Served) -> list[str]:
    """One line per query that names a series, or a label of one, that is not served."""
    problems = []
    for query in queries:
        for selector in selectors(query.expr):
            if selector.name not in served:
                problems.append(
                    f"{query.where}: {selector.name} is not a series the exporter serves "
                    f"(in: {query.expr})"
                )
                continue
            wanted = set(selector.labels) | ({query.reads_label} - {None})
            for label in sorted(wanted - served[selector.name]):
                problems.append(
                    f"{query.where}: {selector.name} has no label {label!r} "
                    f"(it has {', '.join(sorted(served[selector.name]))}; in: {query.expr})"
                )
    return problems


def rule_queries(rules: dict[str, Any]) -> list[DashboardQuery]:
    return [
        DashboardQuery(f'rule "{rule.get("alert") or rule.get("record")}"', rule["expr"])
        for group in rules["groups"]
        for rule in group["rules"]
    ]


def recorded(rules: dict[str, Any]) -> Served:
    """Series the rules file records itself (the thresholds): no labels."""
    return {
        rule["record"]: TARGET_LABELS
        for group in rules["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def alert_names(rules: dict[str, Any]) -> set[str]:
    return {
        rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule
    }


def built_dashboard() -> str:
    """What tools/grafana_dashboard.py writes (tools/ is scripts, not a package)."""
    render: Callable[[], str] = runpy.run_path(str(DASHBOARD_BUILDER), run_name="builder")["render"]
    return render()


# --- alert rules ------------------------------------------------------------------------------


def test_promtool_accepts_the_alert_rules(promtool: str) -> None:
    assert "SUCCESS" in run_promtool(promtool, "check", "rules", str(RULES))


def test_every_alert_fires_and_stays_quiet_in_promtools_rule_tests(promtool: str) -> None:
    assert "SUCCESS" in run_promtool(promtool, "test", "rules", str(RULE_TESTS))


def test_the_rule_tests_cover_every_alert_both_ways() -> None:
    """Each alert has a case where it fires and one where it must not, in the file of tests that
    loads the very rules file Prometheus loads."""
    tests = load_yaml(RULE_TESTS)
    assert [RULE_TESTS.parent / name for name in tests["rule_files"]] == [RULES]
    fired, quiet = set(), set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = alert_names(load_yaml(RULES))
    assert alerts >= {
        "ChatArchiverExporterDown",
        "ChatArchiverTooFewWorkers",
        "ChatArchiverDeadLettersGrowing",
        "ChatArchiverAccountPaused",
        "ChatArchiverProviderRateLimited",
        "ChatArchiverSweepNotCompleted",
        "ChatArchiverJobsNotFinishing",
    }
    assert not alerts - fired, f"no case fires {sorted(alerts - fired)}"
    assert not alerts - quiet, f"no case keeps {sorted(alerts - quiet)} quiet"
    assert not (fired | quiet) - alerts, "cases for alerts the rules do not have"


def test_promtool_accepts_the_prometheus_config_and_the_rules_it_loads(promtool: str) -> None:
    """rule_files is relative to prometheus.yml, so the rules promtool checks here are the ones
    Prometheus loads in the container (tests/unit/test_compose.py checks the mount)."""
    config = load_yaml(PROMETHEUS_CONFIG)
    assert [PROMETHEUS_CONFIG.parent / name for name in config["rule_files"]] == [RULES]
    output = run_promtool(promtool, "check", "config", str(PROMETHEUS_CONFIG))
    assert "1 rule files found" in output


def test_alert_rules_name_only_served_series(served: Served) -> None:
    rules = load_yaml(RULES)
    problems = unknown_series(rule_queries(rules), {**served, **recorded(rules)})
    assert not problems, "\n".join(problems)


def test_alerts_and_dashboard_select_the_exporter_by_its_scrape_job() -> None:
    jobs = {job["job_name"] for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]}
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    for queries in (rule_queries(load_yaml(RULES)), list(dashboard_queries(dashboard))):
        named = set()
        for query in queries:
            named.update(re.findall(r'\bjob="([^"]+)"', query.expr))
        assert named == {"chat-archiver"} and named <= jobs


# --- the dashboard ----------------------------------------------------------------------------


def test_dashboard_json_is_what_the_builder_builds() -> None:
    assert DASHBOARD.read_text(encoding="utf-8") == built_dashboard(), (
        "deploy/grafana/dashboards/chat-archiver.json is stale: python tools/grafana_dashboard.py"
    )


def test_dashboard_names_only_served_series(served: Served) -> None:
    queries = list(dashboard_queries(json.loads(DASHBOARD.read_text(encoding="utf-8"))))
    assert len(queries) > 20
    problems = unknown_series(queries, served)
    assert not problems, "\n".join(problems)


def test_an_unknown_series_is_reported_with_its_panel(served: Served) -> None:
    dashboard = {
        "panels": [
            {
                "id": 7,
                "title": "Jobs per second",
                "targets": [
                    {"refId": "A", "expr": "rate(chat_archiver_job_total[$__rate_interval])"},
                    {"refId": "B", "expr": 'sum(chat_archiver_dead_letters{acount="1"})'},
                ],
            }
        ],
        "templating": {"list": []},
    }
    problems = unknown_series(list(dashboard_queries(dashboard)), served)
    assert problems == [
        'panel "Jobs per second" (id 7, query A): chat_archiver_job_total is not a series the '
        "exporter serves (in: rate(chat_archiver_job_total[2m]))",
        'panel "Jobs per second" (id 7, query B): chat_archiver_dead_letters has no label '
        "'acount' (it has account, instance, job, provider, reason; in: "
        'sum(chat_archiver_dead_letters{acount="1"}))',
    ]


def test_dashboard_shows_every_series_the_exporter_serves(served: Served) -> None:
    queries = list(dashboard_queries(json.loads(DASHBOARD.read_text(encoding="utf-8"))))
    shown = {selector.name for query in queries for selector in selectors(query.expr)}
    families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in served}
    missing = {
        family
        for family in families
        if not any(re.sub(r"_(total|bucket|sum|count)$", "", name) == family for name in shown)
    }
    assert not missing, f"the dashboard shows nothing of {sorted(missing)}"


def test_prometheus_parses_every_dashboard_query(promtool: str, tmp_path: Path) -> None:
    """promtool checks each query as Prometheus parses it (the parser above is another one)."""
    queries = list(dashboard_queries(json.loads(DASHBOARD.read_text(encoding="utf-8"))))
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    # $provider and $account as Grafana substitutes them with "All" selected.
                    {"record": f"dashboard:query_{n}", "expr": q.expr.replace("$", "")}
                    for n, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    run_promtool(promtool, "check", "rules", str(path))


def test_dashboard_panels_are_laid_out_without_overlap() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f'panel "{panel["title"]}" overlaps another'
        taken |= cells


def test_dashboard_asks_for_a_prometheus_data_source() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    [variable] = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${" + variable["name"] + "}", panel["title"]
