"""Flower as a person sees it: a real headless Chromium on a real Flower, started with the
compose file's own command, watching a real worker archive, find already archived, dead-letter
and park jobs, then run the parked jobs once their account answers again (README: Operations,
Flower).

What is checked is what the browser rendered: the tasks page's table, filled by Flower's
JavaScript from /tasks/datatable (the state badges and their colours, the outcome in the result
column, the dead letter's reason in the exception column, every configured column in its order),
its state filters' counts, and the dashboard's Succeeded and Failed cards. Screenshots of each
page are kept as test artefacts, in ARCHIVER_TEST_ARTEFACTS or else a folder under pytest's
basetemp; the test prints where.

The browser is Debian's chromium, driven by Debian's chromium-driver through Selenium (.ci/run
installs them): both come from one Debian source package at one version, so the driver always
speaks the browser's protocol, and nothing is downloaded at run time. Where they are missing, the
test fails saying what to install, unless ARCHIVER_TEST_WITHOUT names chromium
(tests/host_tools.py).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from config import load_accounts
from tests.conftest import GREEN_ID, WASSENGER_CANARY, WASSENGER_ID
from tests.host_tools import CHROMEDRIVER, CHROMIUM, require
from tests.integration.conftest import Cluster
from tests.support import eventually
from worker.sandbox.simulator import SimulatorHandle
from worker.stores.circuit import AccountCircuit

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FLOWER_USER, FLOWER_PASSWORD = "ops", "flower-pass"

# How this machine runs Chromium: as root (no sandbox), no GPU, and no call to Google's services
# (the network is closed: they would fail, many at a time), in a fresh profile.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1680,900",
)


def compose_flower_options() -> list[str]:
    """Flower's options as docker-compose.yml runs it (after `celery -A worker flower`), less the
    port, which the test picks."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    command = compose["services"]["flower"]["command"]
    assert command[:4] == ["celery", "-A", "worker", "flower"], command
    return [arg for arg in command[4:] if not arg.startswith("--port")]


def configured_columns(options: list[str]) -> list[str]:
    [value] = [arg.split("=", 1)[1] for arg in options if arg.startswith("--tasks_columns=")]
    return [name.strip() for name in value.split(",")]


@pytest.fixture
def artefacts(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> Path:
    base = os.environ.get("ARCHIVER_TEST_ARTEFACTS")
    root = Path(base) if base else tmp_path_factory.getbasetemp() / "artefacts"
    folder = root / request.node.name
    folder.mkdir(parents=True, exist_ok=True)
    with capsys.disabled():
        print(f"\n[artefacts] Flower screenshots: {folder}")
    return folder


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Headless Chromium through chromedriver, sending Flower's basic-auth credentials with every
    request (the page's own XHRs included)."""
    require("chromium")
    # Selenium Manager, which looks for browsers and drivers online, has nothing to look for:
    # both are named. Offline, should it run all the same.
    monkeypatch.setenv("SE_OFFLINE", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(20)
        credentials = base64.b64encode(f"{FLOWER_USER}:{FLOWER_PASSWORD}".encode()).decode()
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd(
            "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {credentials}"}}
        )
        yield driver
    finally:
        # Ends Chromium and its children, then chromedriver; stop() again in case quit() failed.
        with contextlib.suppress(Exception):
            driver.quit()
        service.stop()


@pytest.fixture
def cluster(redis_url: str, simulator: SimulatorHandle, tmp_path: Path) -> Iterator[Cluster]:
    # A paused account is probed only after 5 minutes: the parked job stays parked (RETRY) for
    # the whole test instead of coming back to run its probe.
    c = Cluster(
        redis_url,
        simulator,
        tmp_path,
        env={"ARCHIVER_CIRCUIT_COOLDOWN": "300", "ARCHIVER_CIRCUIT_COOLDOWN_MAX": "600"},
    )
    yield c
    c.close()


def screenshot(driver: Any, path: Path) -> None:
    """The page as a PNG: the window as a person sees it, or the whole page when it is taller
    (a task's page). Capturing beyond the window lays the page out again, which leaves the
    tasks table's separately scrolled header out of line: only done when needed."""
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size, window = metrics["cssContentSize"], metrics["cssLayoutViewport"]
    if size["height"] <= window["clientHeight"]:
        driver.save_screenshot(str(path))
        return
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        },
    )
    path.write_bytes(base64.b64decode(shot["data"]))


def rgb(css_colour: str) -> tuple[int, int, int]:
    red, green, blue = (int(v) for v in re.findall(r"\d+", css_colour)[:3])
    return red, green, blue


def table_rows(driver: Any) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The tasks table as rendered: the header labels a person reads, and per row (by task id)
    each cell's text under its column slug, plus the state badge's class and colour."""
    return driver.execute_script(
        """
        const table = $('#tasks-table').DataTable();
        const slugs = table.columns().dataSrc().toArray();
        const labels = table.columns().header().toArray().map(th => th.innerText.trim());
        const rows = {};
        document.querySelectorAll('#tasks-table tbody tr[id]').forEach(tr => {
            const cells = {};
            Array.from(tr.cells).forEach((td, i) => { cells[slugs[i]] = td.innerText.trim(); });
            const badge = tr.querySelector('span.badge');
            cells._badge_class = badge ? badge.className : '';
            cells._badge_colour = badge ? getComputedStyle(badge).backgroundColor : '';
            rows[tr.id] = cells;
        });
        return [labels, rows];
        """
    )


def wait_for_table(driver: Any, ids: list[str], states: dict[str, str]) -> dict[str, dict]:
    """Reload the tasks page until every job's row shows its final state (the page is filled by
    XHR after load; Flower hears some events a moment after the result is stored)."""

    def rendered() -> dict[str, dict] | None:
        driver.get(driver.current_url)
        with contextlib.suppress(Exception):
            rows = eventually(
                lambda: (
                    driver.execute_script(
                        "return window.jQuery && $.fn.dataTable.isDataTable('#tasks-table')"
                        " && document.querySelectorAll('#tasks-table tbody tr[id]').length"
                    )
                    and table_rows(driver)[1]
                ),
                5,
                "the tasks table",
                step=0.1,
            )
            if all(rows.get(task_id, {}).get("state") == states[task_id] for task_id in ids):
                return rows
        return None

    return eventually(rendered, 30, "the tasks page showing every job's state", step=0.5)


FILTERS = {"All": None, "Succeeded": "SUCCESS", "Failed": "FAILURE", "Retried": "RETRY"}


def filter_count(driver: Any, label: str) -> int:
    """Click a state filter above the table; once the table shows only that state, the number of
    tasks its footer reports."""
    [button] = [
        b for b in driver.find_elements("css selector", ".task-state-filter") if b.text == label
    ]
    button.click()
    state = FILTERS[label]
    pattern = re.compile(r"of ([\d,]+) tasks|No tasks")

    def total() -> int | None:
        if driver.find_element("id", "tasks-table_processing").is_displayed():
            return None
        shown = {row["state"] for row in table_rows(driver)[1].values()}
        if state is not None and shown - {state}:
            return None  # the previous draw is still on the page
        found = pattern.search(driver.find_element("id", "tasks-table_info").text)
        if not found:
            return None
        return int(found.group(1).replace(",", "")) + 1 if found.group(1) else 1  # truthy

    return eventually(total, 10, f"the {label} filter's count", step=0.2) - 1


def test_flower_tells_every_outcome_at_a_glance(
    cluster: Cluster, browser: Any, artefacts: Path
) -> None:
    options = compose_flower_options()
    columns = configured_columns(options)
    url, api = cluster.start_flower(*options, user=FLOWER_USER, password=FLOWER_PASSWORD)
    cluster.start_worker()
    # Flower hears the worker's events (its health check answers before it listens).
    eventually(
        lambda: api.get("/workers", params={"json": 1}).json()["data"], 20, "Flower seeing w1"
    )

    cluster.add_chats("green-api", ["79000000001@c.us"])
    cluster.add_chats("green-api", ["79000000002@c.us"], archived=True)
    job = {"provider": "green-api", "account": GREEN_ID}
    archived = cluster.producer.enqueue({**job, "chat_id": "79000000001@c.us"})
    already = cluster.producer.enqueue({**job, "chat_id": "79000000002@c.us"})
    missing = cluster.producer.enqueue({**job, "chat_id": "79000000404@c.us"})
    assert cluster.result(archived)["outcome"] == "archived"
    assert cluster.result(already)["outcome"] == "already_archived"
    dead = cluster.result(missing)
    assert (dead["outcome"], dead["reason"]) == ("dead_lettered", "chat_not_found")

    # The provider wants another token than ours: the account pauses, its job parks.
    cluster.add_chats("wassenger", ["447000000001@c.us", "447000000002@c.us"])
    cluster.sim.patch_account("wassenger", WASSENGER_ID, token="the-right-token-0000")
    device = {"provider": "wassenger", "account": WASSENGER_ID}
    parked = cluster.producer.enqueue({**device, "chat_id": "447000000001@c.us"})
    eventually(
        lambda: cluster.services_parked() == 1 and cluster.app.AsyncResult(parked).state == "RETRY",
        20,
        "the job parked behind its paused account",
    )
    # A job for the paused account enqueued now never reaches a worker: it waits for the
    # account's next probe turn, where the dispatcher parks it without a run. Celery has no
    # event or result for it but its task-sent: PENDING. status counts both jobs.
    early = cluster.producer.enqueue({**device, "chat_id": "447000000002@c.us"})
    line = f"wassenger:{WASSENGER_ID} paused (unauthorized): 2 jobs waiting"
    eventually(lambda: line in cluster.cli("status").stdout, 20, "status counting 2 jobs waiting")
    assert cluster.app.AsyncResult(early).state == "PENDING"
    [paused] = json.loads(cluster.cli("status", "--json").stdout)["accounts"]["paused"]
    # Parked, or in the account's list until its next probe turn parks it (when it came
    # before the dispatcher parked the first job's fellows, it is parked already).
    assert paused["parked"] + paused["waiting"] == 2, paused

    expected = {
        archived: "SUCCESS",
        already: "SUCCESS",
        missing: "FAILURE",
        parked: "RETRY",
        early: "PENDING",
    }
    ids = list(expected)

    # The result contract (README: From any language), as the backend's JSON holds it.
    def stored(task_id: str) -> dict[str, Any]:
        return json.loads(cluster.redis.get(f"celery-task-meta-{task_id}") or "{}")

    for task_id, outcome in ((archived, "archived"), (already, "already_archived")):
        meta = stored(task_id)
        assert (meta["status"], meta["result"]["outcome"]) == ("SUCCESS", outcome), meta
    meta = stored(missing)
    assert meta["status"] == "FAILURE", meta
    assert meta["result"]["exc_type"] == "DeadLettered", meta
    assert meta["result"]["exc_module"] == "worker.contract.outcomes", meta
    assert meta["result"]["exc_message"] == [
        "chat_not_found",
        dead["detail"],
        dead["dead_letter_id"],
    ], meta
    meta = stored(parked)
    assert (meta["status"], meta["result"]["exc_type"]) == ("RETRY", "Deferred"), meta
    [why] = meta["result"]["exc_message"]
    assert "unauthorized" in why, meta
    assert stored(early) == {}  # no result yet: AsyncResult says PENDING

    # --- the tasks page ------------------------------------------------------------------------
    browser.get(f"{url}/tasks")
    rows = wait_for_table(browser, ids, expected)
    labels, _ = table_rows(browser)
    screenshot(browser, artefacts / "tasks.png")

    # The configured columns, in their order, each under its Flower label (which the page's
    # style writes in capitals); nobody has to pick them in the browser.
    from flower.views.tasks import TASK_COLUMNS

    assert [label.upper() for label in labels] == [TASK_COLUMNS[c].upper() for c in columns]
    assert {"state", "result", "exception"} <= set(columns)

    # Green SUCCESS with the outcome in the result; red FAILURE with the dead letter's reason
    # as the exception; amber RETRY for the parked job, with why it waits.
    for task_id in (archived, already):
        assert "text-bg-success" in rows[task_id]["_badge_class"]
        red, green, blue = rgb(rows[task_id]["_badge_colour"])
        assert green > red and green > blue, rows[task_id]
    assert "'outcome': 'archived'" in rows[archived]["result"]
    assert "'outcome': 'already_archived'" in rows[already]["result"]
    failed = rows[missing]
    assert "text-bg-danger" in failed["_badge_class"]
    red, green, blue = rgb(failed["_badge_colour"])
    assert red > 150 and red > 2 * green and red > 2 * blue, failed
    assert failed["exception"].startswith("DeadLettered('chat_not_found'"), failed
    assert dead["dead_letter_id"] in failed["exception"]
    retried = rows[parked]
    assert "text-bg-warning" in retried["_badge_class"]
    assert retried["exception"].startswith("Deferred("), retried
    assert "unauthorized" in retried["exception"]
    # Parked before any run: grey PENDING, nothing in Result or Exception (README: a parked job).
    pending = rows[early]
    assert "text-bg-secondary" in pending["_badge_class"], pending
    assert (pending["result"], pending["exception"]) == ("", ""), pending
    for task_id in ids:
        assert rows[task_id]["name"] == "archive.chat"

    # The page's state filters count them: Retried only the job a run sent back to wait, where
    # status counts both parked jobs. The paused account's probe turn waits its 5 minutes
    # (PENDING): nothing else has succeeded.
    succeeded = 2
    assert filter_count(browser, "Failed") == 1
    screenshot(browser, artefacts / "tasks-failed.png")
    assert filter_count(browser, "Retried") == 1
    screenshot(browser, artefacts / "tasks-retried.png")
    assert filter_count(browser, "Succeeded") == succeeded
    filter_count(browser, "All")

    # --- the dead-lettered job's own page ------------------------------------------------------
    browser.get(f"{url}/task/{missing}")
    page = eventually(lambda: browser.find_element("tag name", "body").text, 10, "the task page")
    assert "FAILURE" in page and "DeadLettered('chat_not_found'" in page
    screenshot(browser, artefacts / "task-dead-lettered.png")

    # --- the dashboard -------------------------------------------------------------------------
    browser.get(f"{url}/")

    def cards() -> dict[str, str] | None:
        values = {
            name: browser.find_element("id", f"workers-{name}").text
            for name in ("online", "succeeded", "failed")
        }
        want = {"online": "1", "succeeded": str(succeeded), "failed": "1"}
        return values if values == want else None

    try:
        eventually(cards, 15, "the dashboard's counts", step=0.3)
    finally:
        screenshot(browser, artefacts / "dashboard.png")
    # The worker's own row says the same: Processed, Failed, Succeeded. Processed counts
    # deliveries: the four jobs, plus any that went back to the job store for a permit and came
    # again (on a busy machine a job can reach its slot too late for the permit its dispatch
    # reserved), as the worker's log tells.
    log = cluster.logs()
    deliveries = sum(log.count(f"archive.chat[{task_id}] received") for task_id in ids)
    waits = sum(log.count(f"archive.chat[{task_id}] retry:") for task_id in ids)
    assert deliveries >= 4
    [row] = browser.find_elements("css selector", "#workers-table tbody tr")
    cells = [cell.text for cell in row.find_elements("tag name", "td")]
    assert cells[3:6] == [str(deliveries), "1", str(succeeded)], cells
    # Flower counted the retry events (the parked job's, and any such wait), which its
    # dashboard has no card or column for (the tasks page's Retried filter shows the parked one).
    [worker] = api.get("/workers", params={"json": 1}).json()["data"]
    assert worker.get("task-retried") == waits >= 1

    # --- recovery ------------------------------------------------------------------------------
    # The token is right again. The account's probe (5 minutes away here) would find it
    # answering and release the parked jobs; resume() is that verdict, now.
    cluster.sim.patch_account("wassenger", WASSENGER_ID, token=WASSENGER_CANARY)
    settings = cluster.settings
    circuit = AccountCircuit(
        cluster.redis,
        settings.key_prefix,
        settings.circuit_cooldown,
        settings.circuit_cooldown_max,
        settings.circuit_max_pause,
    )
    device_account = load_accounts(cluster.accounts_file, secrets=False).get(
        "wassenger", WASSENGER_ID
    )
    assert circuit.resume(device_account) >= 1  # the parked ones back to the account's list
    for task_id in (parked, early):
        assert cluster.result(task_id)["outcome"] == "archived"
    browser.get(f"{url}/tasks")
    rows = wait_for_table(browser, [parked, early], {parked: "SUCCESS", early: "SUCCESS"})
    screenshot(browser, artefacts / "tasks-recovered.png")
    # Green SUCCESS with the outcome, and no trace of the wait in the Exception column.
    for task_id in (parked, early):
        assert "text-bg-success" in rows[task_id]["_badge_class"], rows[task_id]
        assert "'outcome': 'archived'" in rows[task_id]["result"], rows[task_id]
        assert rows[task_id]["exception"] == "", rows[task_id]
    assert filter_count(browser, "Retried") == 0
    assert filter_count(browser, "Succeeded") == succeeded + 2
    browser.get(f"{url}/task/{parked}")
    page = eventually(lambda: browser.find_element("tag name", "body").text, 10, "the task page")
    assert "SUCCESS" in page and "Deferred(" not in page, page

    for name in (
        "tasks.png",
        "tasks-failed.png",
        "tasks-retried.png",
        "dashboard.png",
        "tasks-recovered.png",
    ):
        assert (artefacts / name).stat().st_size > 10_000, name
