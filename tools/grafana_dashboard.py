"""Build deploy/grafana/dashboards/chat-archiver.json, the Grafana dashboard over the series
`chat-archiver metrics` serves (worker/views/exporter.py).

    python tools/grafana_dashboard.py          # write the JSON
    python tools/grafana_dashboard.py --check  # exit 1 if the JSON is not what this builds

Panels are listed row by row below and laid out left to right; edit them here, not in the JSON
(tests/unit/test_observability.py fails when the two differ, and checks that every query names
a series the exporter serves). The JSON also imports by hand into any Grafana 10 or 11: it asks
for a Prometheus data source.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUTPUT = (
    Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "dashboards" / "chat-archiver.json"
)
UID = "chat-archiver"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Every per-account query is filtered by the dashboard's provider and account variables.
ACCOUNT = 'provider=~"$provider", account=~"$account"'
GRID_WIDTH = 24


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    instant: bool = False


@dataclass(frozen=True)
class Panel:
    title: str
    kind: str  # stat, timeseries, table
    queries: list[Query]
    width: int = 12
    height: int = 8
    unit: str = "short"
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def q(expr: str, legend: str = "", *, instant: bool = False) -> Query:
    return Query(" ".join(expr.split()), legend, instant)


def stat(title: str, expr: str, description: str, **extra: Any) -> Panel:
    return Panel(title, "stat", [q(expr)], width=4, height=4, description=description, extra=extra)


def table(title: str, expr: str, description: str) -> Panel:
    return Panel(title, "table", [q(expr, instant=True)], description=description)


ROWS: list[tuple[str, list[Panel]]] = [
    (
        "Overview",
        [
            stat(
                "Exporter",
                'up{job="chat-archiver"}',
                "0 while the exporter is down or cannot read Redis (it answers 503 then).",
                mappings=[
                    {"type": "value", "options": {"0": {"text": "DOWN", "color": "red"}}},
                    {"type": "value", "options": {"1": {"text": "UP", "color": "green"}}},
                ],
            ),
            stat(
                "Worker nodes alive",
                "chat_archiver_workers_alive",
                "Nodes whose heartbeat is within two lease timeouts.",
            ),
            stat(
                "Jobs waiting",
                f"sum(chat_archiver_jobs_waiting{{{ACCOUNT}}}) or vector(0)",
                "Jobs in the job store waiting for their account's turn.",
            ),
            stat(
                "Accounts paused",
                f"sum(chat_archiver_account_paused{{{ACCOUNT}}})",
                "Accounts whose circuit is open: their jobs are parked.",
            ),
            stat(
                "Dead letters",
                f"sum(chat_archiver_dead_letters{{{ACCOUNT}}}) or vector(0)",
                "Entries in the dead-letter store (chat-archiver dlq list).",
            ),
            stat(
                "Running or handed out",
                'chat_archiver_jobs_stored{state="running_or_dispatched"}',
                "Jobs whose run holds a lease: handed out to a worker, or running.",
            ),
        ],
    ),
    (
        "Jobs",
        [
            Panel(
                "Jobs ended per second, by outcome",
                "timeseries",
                [
                    q(
                        f"sum by (outcome) (rate(chat_archiver_jobs_total{{{ACCOUNT}}}"
                        "[$__rate_interval]))",
                        "{{outcome}}",
                    )
                ],
                unit="ops",
            ),
            Panel(
                "Dead-lettered per second, by reason",
                "timeseries",
                [
                    q(
                        "sum by (reason) (rate(chat_archiver_jobs_total"
                        f'{{outcome="dead_lettered", {ACCOUNT}}}[$__rate_interval]))',
                        "{{reason}}",
                    )
                ],
                unit="ops",
            ),
            Panel(
                "Queues and the job store",
                "timeseries",
                [
                    q("chat_archiver_queue_depth", "queue {{queue}}"),
                    q("chat_archiver_jobs_stored", "stored: {{state}}"),
                ],
                description="Intake and ready queues (broker), jobs in the job store by state.",
            ),
            Panel(
                "Jobs waiting, the 10 busiest accounts",
                "timeseries",
                [
                    q(
                        f"topk(10, chat_archiver_jobs_waiting{{{ACCOUNT}}})",
                        "{{provider}} {{account}}",
                    )
                ],
            ),
        ],
    ),
    (
        "Providers and rate limits",
        [
            Panel(
                "Provider call duration",
                "timeseries",
                [
                    q(
                        f"histogram_quantile({quantile}, sum by (le, provider) "
                        "(rate(chat_archiver_provider_request_seconds_bucket"
                        f"{{{ACCOUNT}}}[$__rate_interval])))",
                        f"p{round(quantile * 100)} {{{{provider}}}}",
                    )
                    for quantile in (0.5, 0.95, 0.99)
                ]
                + [
                    q(
                        "sum by (provider) (rate(chat_archiver_provider_request_seconds_sum"
                        f"{{{ACCOUNT}}}[$__rate_interval])) / sum by (provider) "
                        "(rate(chat_archiver_provider_request_seconds_count"
                        f"{{{ACCOUNT}}}[$__rate_interval]))",
                        "mean {{provider}}",
                    )
                ],
                unit="s",
            ),
            Panel(
                "Provider calls per second",
                "timeseries",
                [
                    q(
                        "sum by (provider) (rate(chat_archiver_provider_request_seconds_count"
                        f"{{{ACCOUNT}}}[$__rate_interval]))",
                        "{{provider}}",
                    )
                ],
                unit="reqps",
            ),
            Panel(
                "429 answers per minute",
                "timeseries",
                [
                    q(
                        "60 * sum by (provider, account, method) "
                        f"(rate(chat_archiver_provider_rate_limited_total{{{ACCOUNT}}}"
                        "[$__rate_interval])) > 0",
                        "{{provider}} {{account}} {{method}}",
                    )
                ],
                width=8,
                description="Each one means the configured rate is above what the provider "
                "allows the account (alert ChatArchiverProviderRateLimited).",
            ),
            Panel(
                "Retries held back by the rate limit, per minute",
                "timeseries",
                [
                    q(
                        "60 * sum by (provider, method) (rate(chat_archiver_limiter_deferred_total"
                        f"{{{ACCOUNT}}}[$__rate_interval]))",
                        "{{provider}} {{method}}",
                    )
                ],
                width=8,
                description="A retry's permit was further than ARCHIVER_LIMITER_MAX_WAIT: its job "
                "waited for its account's turn in the job store.",
            ),
            Panel(
                "Late calls",
                "timeseries",
                [
                    q(
                        "60 * sum by (provider, method) "
                        f"(rate(chat_archiver_limiter_late_calls_total{{{ACCOUNT}}}"
                        "[$__rate_interval]))",
                        "late calls/min {{provider}} {{method}}",
                    ),
                ],
                width=8,
                description="Late calls went out later past their slot than the limiter "
                "allows; each pushed the later slots back (docs/design.md, Rate limits).",
            ),
        ],
    ),
    (
        "Accounts",
        [
            table(
                "Paused accounts",
                f"chat_archiver_account_paused{{{ACCOUNT}}} == 1",
                "Open circuits, with the reason (alert ChatArchiverAccountPaused after an hour).",
            ),
            table(
                "Parked jobs",
                f"chat_archiver_parked_jobs{{{ACCOUNT}}} > 0",
                "Jobs waiting for a paused account; they run when its probe succeeds.",
            ),
            table(
                "Dead letters, by account and reason",
                f"chat_archiver_dead_letters{{{ACCOUNT}}}",
                "chat-archiver dlq list --reason REASON shows them.",
            ),
            table(
                "Sweeps not completed in the last day",
                'increase(chat_archiver_sweeps_total{result=~"skipped|held|failed", '
                f"{ACCOUNT}}}[1d]) > 0",
                "skipped, held (waits for an operator) or failed (alert "
                "ChatArchiverSweepNotCompleted).",
            ),
        ],
    ),
    (
        "Sweeps",
        [
            Panel(
                "Sweeps per hour, by result",
                "timeseries",
                [
                    q(
                        f"sum by (result) (increase(chat_archiver_sweeps_total{{{ACCOUNT}}}[1h]))",
                        "{{result}}",
                    )
                ],
                width=24,
            ),
        ],
    ),
]


def _target(query: Query, ref: str) -> dict[str, Any]:
    return {
        "datasource": DATASOURCE,
        "expr": query.expr,
        "legendFormat": query.legend or "__auto",
        "instant": query.instant,
        "range": not query.instant,
        "format": "table" if query.instant else "time_series",
        "refId": ref,
    }


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    built: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "targets": [_target(query, chr(ord("A") + n)) for n, query in enumerate(panel.queries)],
        "fieldConfig": {
            "defaults": {"unit": panel.unit, "mappings": panel.extra.get("mappings", [])},
            "overrides": [],
        },
        "options": {},
    }
    if panel.kind == "timeseries":
        built["options"] = {"legend": {"displayMode": "list", "placement": "bottom"}}
    elif panel.kind == "stat":
        built["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"}
    elif panel.kind == "table":
        # One row per series: its labels and the value, without the timestamp column.
        built["transformations"] = [
            {"id": "organize", "options": {"excludeByName": {"Time": True, "__name__": True}}}
        ]
    return built


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-values"},
        "definition": query,
        "refresh": 2,  # on time range change: accounts added to the file appear
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def build() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y = 0
    for title, row in ROWS:
        panels.append(
            {
                "id": len(panels) + 1,
                "type": "row",
                "title": title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
            }
        )
        y += 1
        x = height = 0
        for panel in row:
            if x + panel.width > GRID_WIDTH:
                x, y, height = 0, y + height, 0
            panels.append(_panel(panel, len(panels) + 1, x, y))
            x += panel.width
            height = max(height, panel.height)
        y += height
    return {
        "uid": UID,
        "title": "chat-archiver",
        "description": "Jobs, queues, providers, rate limits, paused accounts, dead letters and "
        "sweeps, from chat-archiver's exporter (chat-archiver metrics).",
        "tags": ["chat-archiver"],
        "timezone": "utc",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "schemaVersion": 39,
        "version": 1,
        "links": [],
        "annotations": {"list": []},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                _variable(
                    "provider", "Provider", "label_values(chat_archiver_account_paused, provider)"
                ),
                _variable(
                    "account",
                    "Account",
                    'label_values(chat_archiver_account_paused{provider=~"$provider"}, account)',
                ),
            ]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the JSON is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT}: stale; run python tools/grafana_dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
