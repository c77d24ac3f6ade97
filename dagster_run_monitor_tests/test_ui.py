"""The Dagster UI in a real browser: headless Chromium (Debian's, see scripts/chromium) driven by
Playwright against `dagster dev` (webserver and daemon) on 127.0.0.1.

Three runs that `dagster dev`'s daemon, ours, acts on (a crashed worker resumed, a start
time-out, a max-runtime failure) must show the monitor's messages in their event logs, and the
Daemons page must list our daemon as Running. Screenshots go to the test's tmp_path and, when
DAGSTER_RUN_MONITOR_SCREENSHOTS names a directory, there too (docs/screenshots/ holds the
pictures of docs/operations.md).
"""

import os
import re
import shutil
import urllib.request
from pathlib import Path

import pytest
from dagster import MAX_RUNTIME_SECONDS_TAG
from dagster._core.storage.dagster_run import DagsterRunStatus as S
from dagster._time import get_current_timestamp

from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.heartbeats import beat_key, stack_key
from dagster_run_monitor.demo_job import crash_demo
from dagster_run_monitor.integration.internals import run_storage_database
from dagster_run_monitor.worker.watcher import Watcher
from dagster_run_monitor_tests.support.home import SCRIPTED_LAUNCHER, load_instance, write_home
from dagster_run_monitor_tests.support.launchers import HEALTH_TAG
from dagster_run_monitor_tests.support.runs import make_run, messages, status_of
from dagster_run_monitor_tests.support.subprocesses import BIN, free_port, running, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.ui]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
    "--disable-sync",
]
SCREENSHOTS_ENV = "DAGSTER_RUN_MONITOR_SCREENSHOTS"
SETTINGS = {
    "start_timeout_seconds": 60,
    "max_resume_run_attempts": 3,
    "worker_unknown_grace_seconds": 0,
    "poll_interval_seconds": 5,
}
UI_TIMEOUT_MS = 30_000
STACK_LINE = '  File "/srv/etl/partners.py", line 42, in wait_for_partner_api'


def require_browser():
    """Playwright's sync API, or skip with the reason (fail under CI, which must run this)."""
    reason = None
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (scripts/chromium installs Debian's chromium)"
    else:
        try:
            from playwright import sync_api
        except ImportError as exc:
            reason = f"playwright is not installed (pip install -e '.[test]'): {exc}"
    if reason is None:
        return sync_api
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the UI tests, but {reason}")
    pytest.skip(reason)


def test_daemons_page_and_run_pages_show_the_monitor_at_work(tmp_path):
    pw = require_browser()
    expect = pw.expect
    home = write_home(tmp_path / "home", SETTINGS, launcher=SCRIPTED_LAUNCHER)
    # Dagster's own "seen" mark of its "Join the Dagster community" dialog, which would
    # otherwise cover the pages on 127.0.0.1 (a person clicks Skip once).
    (home / ".nux").mkdir()
    (home / ".nux" / "nux.yaml").write_text("seen: 1\n")
    instance = load_instance(home)
    now = get_current_timestamp()

    # Three runs of the demo's job, each in a state the monitor acts on when `dagster dev` starts.
    resumed = make_run(
        instance, S.STARTED, created=now - 300, tags={HEALTH_TAG: "FAILED"}, job_def=crash_demo
    )
    start_timeout = make_run(
        instance, S.STARTING, created=now - 600, launched=now - 600, job_def=crash_demo
    )
    max_runtime = make_run(
        instance,
        S.STARTED,
        created=now - 902,
        launched=now - 901,
        started=now - 900,
        tags={MAX_RUNTIME_SECONDS_TAG: "600"},
        job_def=crash_demo,
    )
    # The max-runtime run's worker beats (as its watcher writes them): its failure says where.
    where = {"stacks": ["Thread MainThread:", STACK_LINE], "hash": "h1", "steps": ["load"]}
    watcher = Watcher(
        {
            "database": "sqlite",
            "target": run_storage_database(instance)[1],
            "key": beat_key(max_runtime.run_id),
            "stack_key": stack_key(max_runtime.run_id),
            "token": "ui",
            "pid": os.getpid(),  # (never signaled: the run is not taken over)
            "host": "worker-1",
            "interval": 30,
        }
    )
    watcher.sample = where
    watcher.beat()
    expected = {
        resumed.run_id: (
            S.STARTED,
            [
                f"Detected run worker status FAILED: 'worker is failed'. Resuming run"
                f" {resumed.run_id} with a new worker.",
                c.RESUME_RUN_LOG_MESSAGE,
            ],
        ),
        start_timeout.run_id: (S.FAILURE, [c.start_timeout_message(60)]),
        max_runtime.run_id: (
            S.FAILURE,
            [
                c.max_runtime_canceling_message(600),
                c.max_runtime_failed_message(600),
                STACK_LINE.strip(),
            ],
        ),
    }

    def acted() -> bool:  # in storage first: then the UI's turn
        return all(
            status_of(instance, run_id) == status
            and all(any(s in m for m in messages(instance, run_id)) for s in shown)
            for run_id, (status, shown) in expected.items()
        )

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = [str(BIN / "dagster"), "dev", "--empty-workspace", "-h", "127.0.0.1", "-p", str(port)]
    shots = tmp_path / "screenshots"
    with running(args, home, "dagster-dev.log"):
        try:
            wait_until(acted, timeout=90, what="dagster dev's daemon to act on the three runs")
        except AssertionError as exc:
            seen = {i: (status_of(instance, i), messages(instance, i)) for i in expected}
            raise AssertionError(f"{exc}; runs now: {seen}") from None
        heartbeat = wait_until(
            lambda: instance.get_daemon_heartbeats().get(c.DAEMON_TYPE),
            timeout=30,
            what=f"a {c.DAEMON_TYPE} heartbeat from dagster dev's daemon",
        )
        assert not heartbeat.errors, heartbeat.errors
        assert messages(instance, resumed.run_id).count(c.RESUME_RUN_LOG_MESSAGE) == 1
        wait_until(lambda: answers(f"{base}/server_info"), timeout=60, what="the webserver")
        with pw.sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=UI_TIMEOUT_MS
            )
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.set_default_timeout(UI_TIMEOUT_MS)
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))

                # Daemons page: our daemon's row, Running, with a heartbeat.
                page.goto(f"{base}/deployment/daemons", wait_until="domcontentloaded")
                row = page.locator("tr").filter(
                    has=page.get_by_text(re.compile(r"^run monitor$", re.IGNORECASE))
                )
                expect(row).to_have_count(1, timeout=UI_TIMEOUT_MS)
                expect(row.locator("td").nth(1)).to_have_text("Running", timeout=UI_TIMEOUT_MS)
                expect(row.locator("td").nth(2)).not_to_have_text("Never", timeout=UI_TIMEOUT_MS)
                builtin = page.get_by_text(re.compile(r"^monitoring$", re.IGNORECASE))
                expect(builtin).to_have_count(0)  # replaced, not doubled
                shoot(page, shots, "daemons.png")

                for run_id, name in (
                    (resumed.run_id, "resumed-run.png"),
                    (start_timeout.run_id, "start-timeout.png"),
                    (max_runtime.run_id, "max-runtime.png"),
                ):
                    # As a person does (and without reloading the app): Runs, then the run.
                    page.locator('a[href="/runs"]').first.click()
                    page.locator(f'a[href="/runs/{run_id}"]').first.click()
                    expect(page).to_have_url(f"{base}/runs/{run_id}", timeout=UI_TIMEOUT_MS)
                    for message in expected[run_id][1]:
                        cell = page.get_by_text(message, exact=False).first
                        expect(cell).to_be_visible(timeout=UI_TIMEOUT_MS)
                    shoot(page, shots, name)
                assert not errors, f"JavaScript errors in the UI: {errors}"
            finally:
                browser.close()
    instance.dispose()


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def shoot(page, directory: Path, name: str) -> None:
    """A screenshot in the test's own directory, and a copy where SCREENSHOTS_ENV says."""
    directory.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(directory / name))
    if os.environ.get(SCREENSHOTS_ENV):
        target = Path(os.environ[SCREENSHOTS_ENV])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(directory / name, target / name)
