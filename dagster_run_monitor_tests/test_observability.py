"""The alert rules and the dashboard of docs/observability: promtool's unit tests of the rules,
and every PromQL expression of both run by a real Prometheus (Debian's package, on 127.0.0.1,
scraping every second) against a real ``dagster-daemon run`` whose run worker was killed and
resumed."""

import json
import os
import re
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request

import pytest
import yaml
from dagster._core.events import DagsterEventType
from dagster._core.storage.dagster_run import DagsterRunStatus as S

from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.crash_cause import CAUSES
from dagster_run_monitor_tests.support.home import load_instance, write_home
from dagster_run_monitor_tests.support.runs import messages, status_of
from dagster_run_monitor_tests.support.subprocesses import (
    REPO_ROOT,
    daemon,
    free_port,
    running,
    wait_until,
)
from dagster_run_monitor_tests.test_process_launcher import (
    PROCESS_LAUNCHER,
    has_event,
    launch,
    worker_pid,
)

OBSERVABILITY = REPO_ROOT / "docs" / "observability"
RULES = OBSERVABILITY / "prometheus-rules.yaml"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"


def tool(name: str) -> str:
    """Debian's prometheus package's binary; fails under CI (.ci/run installs it), else skips."""
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed (apt-get install prometheus)")
        pytest.skip(f"{name} is not installed (apt-get install prometheus)")
    return found


def rule_expressions() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def dashboard_expressions() -> dict[str, str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return {
        f"{panel['title']} ({target['refId']})": target["expr"]
        for panel in panels
        for target in panel["targets"]
    }


def test_promtool_unit_tests_of_the_rules_pass():
    promtool = tool("promtool")
    checked = subprocess.run(
        [promtool, "check", "rules", RULES.name], cwd=OBSERVABILITY, capture_output=True, text=True
    )
    assert checked.returncode == 0 and "SUCCESS: 11 rules found" in checked.stdout, checked
    tested = subprocess.run(
        [promtool, "test", "rules", "prometheus-rules.test.yaml"],
        cwd=OBSERVABILITY,
        capture_output=True,
        text=True,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_says_what_and_links_to_a_section_of_the_docs():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    for rule in (r for g in groups for r in g["rules"]):
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"], rule["alert"]
        path, _, anchor = notes["runbook"].partition("#")
        text = (REPO_ROOT / path).read_text()
        anchors = {heading_anchor(h) for h in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}
        assert not anchor or anchor in anchors, (rule["alert"], notes["runbook"])


def test_every_metric_of_the_rules_and_the_dashboard_is_one_the_daemon_exports():
    from dagster_run_monitor.metrics import Metrics

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    exported = {
        family.name + suffix
        for family in Metrics().registry.collect()
        for suffix in suffixes[family.type]
    }
    expressions = {**rule_expressions(), **dashboard_expressions()}
    used = {m for e in expressions.values() for m in re.findall(r"dagster_run_monitor_\w+", e)}
    assert "dagster_run_monitor_workers_near_memory_limit" in used
    assert used <= exported, used - exported


def heading_anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_the_dashboard_has_the_panels_operators_look_for():
    dashboard = json.loads(DASHBOARD.read_text())
    titles = [p["title"] for p in dashboard["panels"]]
    for wanted in (
        "Runs in progress by status",
        "Actions by kind and reason",
        "Crashes by cause",
        "Pass duration",
        "Health-check duration and errors",
        "Resumes by cause, and how resumed runs ended",
        "Runs over warning thresholds",
        "Workers near their memory limit",
    ):
        assert wanted in titles
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"


@pytest.mark.slow
def test_a_real_prometheus_runs_every_expression_against_a_real_daemon(tmp_path):
    """A run worker SIGKILLed mid-run and resumed under ``dagster-daemon run``; Prometheus
    scrapes the daemon every second; every expression of the rules and the dashboard runs
    without error, and the crash, the resume and the passes are in the series."""
    prometheus = tool("prometheus")
    metrics_port, prometheus_port = free_port(), free_port()
    settings = {
        "poll_interval_seconds": 1,
        "worker_unknown_grace_seconds": 0,
        "metrics": {"port": metrics_port},
    }
    launcher = {**PROCESS_LAUNCHER, "config": {"terminate_grace_seconds": 5}}
    home = write_home(tmp_path / "home", settings, "sqlite", launcher)
    instance = load_instance(home)
    scrape = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "dagster-daemon",
                "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
            }
        ],
    }
    (home / "prometheus.yml").write_text(yaml.safe_dump(scrape))
    args = [
        prometheus,
        f"--config.file={home / 'prometheus.yml'}",
        f"--storage.tsdb.path={home / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prometheus_port}",
    ]
    query = lambda expr: prom_query(prometheus_port, expr)  # noqa: E731
    with daemon(home), running(args, home, "prometheus.log"):
        run = launch(instance, "crash_demo")
        started = lambda: has_event(instance, run.run_id, DagsterEventType.STEP_START, "load")  # noqa: E731
        wait_until(started, 60, "the step load to start")
        os.killpg(worker_pid(instance, run.run_id), signal.SIGKILL)
        finished = ("SUCCESS", "FAILURE", "CANCELED")
        wait_until(lambda: status_of(instance, run.run_id).value in finished, 120, "the end")
        assert status_of(instance, run.run_id) == S.SUCCESS
        resumed = 'dagster_run_monitor_actions_total{action="resume",cause="signal"}'
        wait_until(lambda: query(resumed), 30, "Prometheus to scrape the resume")
        ended = 'dagster_run_monitor_resumed_runs_ended_total{status="SUCCESS"}'
        wait_until(lambda: query(ended), 30, "Prometheus to scrape the resumed run's end")
        assert query(resumed)[0]["value"][1] == "1"
        assert messages(instance, run.run_id).count(c.RESUME_RUN_LOG_MESSAGE) == 1
        passes = query('dagster_run_monitor_pass_duration_seconds_count{kind="full"}')
        assert float(passes[0]["value"][1]) >= 2
        expressions = {**rule_expressions(), **dashboard_expressions()}
        for expr in expressions.values():
            prom_query(prometheus_port, expr.replace("$__rate_interval", "1m"), up=True)
        by_cause = dashboard_expressions()["Crashes by cause (A)"]
        crashes = query(by_cause.replace("$__rate_interval", "5m"))
        # every cause's series is there from 0 (a first crash counts); only signal moved
        assert {series["metric"]["cause"] for series in crashes} == set(CAUSES)
        moved = [s["metric"]["cause"] for s in crashes if float(s["value"][1]) > 0]
        assert moved == ["signal"]
        assert query(rule_expressions()["DagsterRunMonitorNotPassing"]) == []
        near = query("dagster_run_monitor_workers_near_memory_limit")
        assert sorted((s["metric"]["worker"], s["value"][1]) for s in near) == [
            ("run", "0"),
            ("step", "0"),
        ]
        assert query(rule_expressions()["DagsterRunMonitorWorkerNearMemoryLimit"]) == []


def prom_query(port: int, expr: str, up: bool = False) -> list[dict]:
    """The result of an instant query; raises with Prometheus's error on a bad expression
    (``up``: also when Prometheus does not answer; else that reads as no result yet)."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise AssertionError(f"{expr}: {error.read().decode()}") from None
    except urllib.error.URLError:
        if up:
            raise
        return []  # Prometheus is still starting
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]
