"""Alerts to Slack, Microsoft Teams, PagerDuty, email and a webhook, each against a local
server on 127.0.0.1: one message per alert with the expected fields, secrets read from the
environment and never in a log line, an event or an error, a failing sink costing neither the
other sinks nor the pass, and the monitor's own actions alerted once per run and cause."""

import logging

import pytest
from dagster import DagsterInstance
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.events import DagsterEventType
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.dagster_run import DagsterRunStatus as S

from dagster_run_monitor.config.parse import read_settings, settings_from_config
from dagster_run_monitor.core import constants as c
from dagster_run_monitor.daemon.monitor import RunMonitorDaemon
from dagster_run_monitor_tests.support.launchers import HEALTH_TAG
from dagster_run_monitor_tests.support.runs import T0, make_run, messages, monitor_pass, report
from dagster_run_monitor_tests.support.sink_servers import closed_port, http_sink, smtp_sink
from dagster_run_monitor_tests.support.subprocesses import free_port

UI = "http://dagster.example.com"
WARNING = "Run has used 50% of its max runtime (50 of 100 seconds)."
SECRET = "s3cr3t-VALUE-0123456789"  # every sink's secret, read from the environment


@pytest.fixture
def secret_env(monkeypatch):
    for name in ("SLACK_TOKEN", "TEAMS_URL_KEY", "PD_ROUTING_KEY", "SMTP_PASSWORD", "HOOK_KEY"):
        monkeypatch.setenv(name, SECRET)


def warn_config(alerts: dict) -> dict:
    """A run at half its max runtime gets one warning; its alert goes to ``alerts.sender``."""
    return {
        "max_runtime_seconds": 100,
        "warn_after_fraction": 0.5,
        "alerts": {"webserver_url": UI, **alerts},
    }


def warned_run(make_instance, workspace_context, config: dict, passes: int = 2, daemons=None):
    """One run past the warning threshold, ``passes`` passes (a new daemon each: as if
    restarted, added to ``daemons``); returns the run, the pass errors, and the instance's
    events for checks."""
    with make_instance(run_monitoring=config) as instance:
        run = make_run(instance, S.STARTED, started=T0 - 50)
        errors = []
        with workspace_context(instance) as ctx:
            for i in range(passes):
                daemon = RunMonitorDaemon.from_instance(instance)
                errors += monitor_pass(instance, ctx, now=T0 + i, daemon=daemon)
                (daemons if daemons is not None else []).append(daemon)
        log = messages(instance, run.run_id)
    assert log.count(WARNING) == 1
    return run, errors, log


def assert_secret_never_shown(caplog, capsys, errors, log) -> None:
    shown = caplog.text + "".join(capsys.readouterr()) + "".join(e.to_string() for e in errors)
    assert SECRET not in shown + "".join(log)


def test_slack_one_message_per_alert_token_from_the_environment(
    make_instance, workspace_context, secret_env, caplog, capsys
):
    caplog.set_level(logging.DEBUG)
    with http_sink(answer={"ok": True}) as slack:
        sink = {"token": {"env": "SLACK_TOKEN"}, "channel": "#ops", "base_url": f"{slack.url}/api/"}
        run, errors, log = warned_run(
            make_instance, workspace_context, warn_config({"slack": sink})
        )
    assert errors == []
    (request,) = slack.requests
    assert request.path == "/api/chat.postMessage"
    assert request.headers["Authorization"] == f"Bearer {SECRET}"
    assert request.body["channel"] == "#ops"
    text = request.body["text"]
    assert f"Dagster run {run.run_id} (monitored_job): warning" in text
    assert WARNING in text and f"{UI}/runs/{run.run_id}" in text
    assert_secret_never_shown(caplog, capsys, errors, log)


def test_msteams_one_adaptive_card_per_alert_hook_url_from_the_environment(
    make_instance, workspace_context, monkeypatch, caplog, capsys
):
    caplog.set_level(logging.DEBUG)
    with http_sink(status=202) as teams:
        monkeypatch.setenv("TEAMS_URL", f"{teams.url}/workflows/run-alerts?sig={SECRET}")
        config = warn_config({"msteams": {"hook_url": {"env": "TEAMS_URL"}}})
        run, errors, log = warned_run(make_instance, workspace_context, config)
    assert errors == []
    (request,) = teams.requests
    assert request.path == f"/workflows/run-alerts?sig={SECRET}"
    (attachment,) = request.body["attachments"]
    card = attachment["content"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert card["type"] == "AdaptiveCard"
    assert [block["text"].split("\n")[0] for block in card["body"]] == [
        f"Dagster run {run.run_id} (monitored_job): warning",
        WARNING,
    ]
    assert card["actions"] == [
        {"type": "Action.OpenUrl", "title": "Open the run", "url": f"{UI}/runs/{run.run_id}"}
    ]
    assert_secret_never_shown(caplog, capsys, errors, log)


def test_email_one_message_per_alert_password_from_the_environment(
    make_instance, workspace_context, secret_env, caplog, capsys
):
    caplog.set_level(logging.DEBUG)
    with smtp_sink("monitor", SECRET) as smtp:
        sink = {
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp.port,
            "from": "dagster@example.com",
            "to": ["oncall@example.com", "data@example.com"],
            "username": "monitor",
            "password": {"env": "SMTP_PASSWORD"},
        }
        run, errors, log = warned_run(
            make_instance, workspace_context, warn_config({"email": sink})
        )
    assert errors == []
    assert smtp.logins == ["monitor"]
    (mail,) = smtp.messages
    assert mail["Subject"].strip() == f"Dagster run {run.run_id} (monitored_job): warning"
    assert mail["From"] == "dagster@example.com"
    assert mail["To"] == "oncall@example.com, data@example.com"
    body = mail.get_payload(decode=True).decode()
    assert WARNING in body and f"{UI}/runs/{run.run_id}" in body
    assert_secret_never_shown(caplog, capsys, errors, log)


def test_email_over_starttls_verifies_the_servers_certificate(
    make_instance, workspace_context, secret_env, monkeypatch, tmp_path
):
    """``starttls: true``: the password goes only over TLS, to a server whose certificate the
    system's trust store (here: a test CA in SSL_CERT_FILE) vouches for."""
    import ssl

    import trustme

    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    with smtp_sink("monitor", SECRET, tls=server_tls) as smtp:
        sink = {
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp.port,
            "starttls": True,
            "from": "dagster@example.com",
            "to": "oncall@example.com",
            "username": "monitor",
            "password": {"env": "SMTP_PASSWORD"},
        }
        config = warn_config({"email": sink})
        run, errors, _ = warned_run(make_instance, workspace_context, config)
    assert errors == [] and smtp.logins == ["monitor"]
    (mail,) = smtp.messages
    assert mail["To"] == "oncall@example.com" and run.run_id in mail["Subject"]


def test_webhook_url_and_headers_from_the_environment(
    make_instance, workspace_context, monkeypatch, caplog, capsys
):
    caplog.set_level(logging.DEBUG)
    with http_sink(status=204) as hook:
        monkeypatch.setenv("HOOK_URL", f"{hook.url}/hooks/{SECRET}")
        monkeypatch.setenv("HOOK_KEY", SECRET)
        sink = {
            "url": {"env": "HOOK_URL"},
            "headers": {"Authorization": {"env": "HOOK_KEY"}},
            "timeout_seconds": 2,
            "retries": 0,
        }
        run, errors, log = warned_run(
            make_instance, workspace_context, warn_config({"webhook": sink})
        )
    assert errors == []
    (request,) = hook.requests
    assert request.headers["Authorization"] == SECRET
    assert request.body["event"] == request.body["kind"] == "warning"
    assert request.body["url"] == f"{UI}/runs/{run.run_id}"
    assert request.body["message"] == WARNING and request.body["run_id"] == run.run_id
    assert_secret_never_shown(caplog, capsys, errors, log)


def test_pagerduty_triggers_then_resolves_when_the_run_ends(
    make_instance, workspace_context, secret_env, caplog, capsys
):
    """A warning opens one incident (its dedup_key: the run and the limit); the run ends; the
    next pass resolves it with the same dedup_key, once."""
    caplog.set_level(logging.DEBUG)
    answer = {"status": "success", "message": "Event processed"}
    with http_sink(status=202, answer=answer) as pagerduty:
        sink = {
            "routing_key": {"env": "PD_ROUTING_KEY"},
            "events_url": f"{pagerduty.url}/v2/enqueue",
        }
        with make_instance(run_monitoring=warn_config({"pagerduty": sink})) as instance:
            run = make_run(instance, S.STARTED, started=T0 - 50)
            errors = []
            with workspace_context(instance) as ctx:
                daemon = RunMonitorDaemon.from_instance(instance)
                errors += monitor_pass(instance, ctx, now=T0, daemon=daemon)
                assert instance.get_run_by_id(run.run_id).tags[c.PAGERDUTY_TAG] != ""
                report(instance, run, DagsterEventType.RUN_SUCCESS)
                for i in (1, 2):  # a restarted daemon resolves nothing twice
                    daemon = RunMonitorDaemon.from_instance(instance)
                    errors += monitor_pass(instance, ctx, now=T0 + i, daemon=daemon)
            assert instance.get_run_by_id(run.run_id).tags[c.PAGERDUTY_TAG] == ""
            log = messages(instance, run.run_id)
    assert errors == []
    trigger, resolve = (r.body for r in pagerduty.requests)
    assert trigger["event_action"] == "trigger" and resolve["event_action"] == "resolve"
    assert trigger["routing_key"] == resolve["routing_key"] == SECRET
    assert trigger["dedup_key"] == resolve["dedup_key"]
    assert trigger["dedup_key"] == f"dagster-run-monitor/{run.run_id}/warning/max_runtime_seconds"
    assert trigger["payload"]["severity"] == "warning"
    assert trigger["payload"]["component"] == "monitored_job"
    assert WARNING in trigger["payload"]["summary"]
    assert trigger["links"] == [{"href": f"{UI}/runs/{run.run_id}", "text": "The run in Dagster"}]
    assert_secret_never_shown(caplog, capsys, errors, log)


def test_pagerduty_resolves_a_resume_once_the_new_worker_is_healthy(
    make_instance, workspace_context, secret_env
):
    with http_sink(status=202) as pagerduty:
        sink = {"routing_key": {"env": "PD_ROUTING_KEY"}, "events_url": f"{pagerduty.url}/e"}
        config = {"alerts": {"on": ["resumed"], "pagerduty": sink}}
        with make_instance(run_monitoring=config) as instance:
            run = make_run(instance, S.STARTED, tags={HEALTH_TAG: "FAILED"})
            with workspace_context(instance) as ctx:
                daemon = RunMonitorDaemon.from_instance(instance)
                for i in range(3):  # resume; healthy again: resolve; nothing more
                    assert monitor_pass(instance, ctx, now=T0 + i, daemon=daemon) == []
            assert messages(instance, run.run_id).count(c.RESUME_RUN_LOG_MESSAGE) == 1
    trigger, resolve = (r.body for r in pagerduty.requests)
    assert (trigger["event_action"], resolve["event_action"]) == ("trigger", "resolve")
    assert trigger["dedup_key"] == resolve["dedup_key"]
    assert trigger["dedup_key"] == f"dagster-run-monitor/{run.run_id}/resumed/worker_crash"
    assert trigger["payload"]["severity"] == "error"
    assert trigger["payload"]["custom_details"]["cause"] == "unknown"


def test_a_sink_that_is_down_or_slow_stops_neither_the_others_nor_the_pass(
    make_instance, workspace_context, secret_env, caplog
):
    """Slack is down, Teams answers after 30 s (its timeout: 1 s), the webhook works: the
    webhook gets its alert, the pass returns while Teams still holds the request, and both
    failures are in the pass's errors (the daemon's heartbeat) without the secret."""
    caplog.set_level(logging.DEBUG)
    with http_sink(status=202) as teams, http_sink(status=204) as hook:
        teams.delay = 30
        config = warn_config(
            {
                "slack": {
                    "token": {"env": "SLACK_TOKEN"},
                    "channel": "#ops",
                    "base_url": f"http://127.0.0.1:{closed_port()}/api/",
                    "timeout_seconds": 1,
                },
                "msteams": {"hook_url": f"{teams.url}/hook", "timeout_seconds": 1},
                "webhook": {"url": f"{hook.url}/alerts", "timeout_seconds": 2, "retries": 0},
            }
        )
        config["metrics"] = {"port": free_port()}
        daemons: list = []
        run, errors, log = warned_run(make_instance, workspace_context, config, 1, daemons)
        assert len(teams.requests) == 1 and teams.answered == 0  # the pass did not wait for it
        assert len(hook.requests) == 1
    reported = sorted(e.message for e in errors)
    assert len(reported) == 2
    assert reported[0].startswith(f"Alert sink msteams failed for run {run.run_id}: ")
    assert "timed out" in reported[0]
    assert reported[1].startswith(f"Alert sink slack failed for run {run.run_id}: ")
    assert "Connection refused" in reported[1]
    assert SECRET not in caplog.text + "".join(reported)
    deliveries = {
        (sink, outcome): daemons[0].metrics.registry.get_sample_value(
            "dagster_run_monitor_alerts_total", {"sink": sink, "outcome": outcome}
        )
        for sink in ("slack", "msteams", "webhook")
        for outcome in ("sent", "failed")
    }
    assert {k: v for k, v in deliveries.items() if v} == {
        ("slack", "failed"): 1,
        ("msteams", "failed"): 1,
        ("webhook", "sent"): 1,
    }


def test_the_monitors_actions_alert_once_per_run_and_cause(make_instance, workspace_context):
    """alerts.on: failed, resumed, canceled: a start timeout, a crashed worker resumed, a
    cancel that never finished; three passes, a new daemon each (as if restarted): one alert
    each, with the action's reason (and the crash's cause)."""
    with http_sink(status=204) as hook:
        config = {
            "start_timeout_seconds": 100,
            "cancel_timeout_seconds": 100,
            "alerts": {
                "on": ["failed", "resumed", "canceled"],
                "webhook": {"url": f"{hook.url}/a", "timeout_seconds": 2, "retries": 0},
            },
        }
        with make_instance(run_monitoring=config) as instance:
            starting = make_run(instance, S.STARTING, launched=T0 - 500)
            crashed = make_run(instance, S.STARTED, tags={HEALTH_TAG: "FAILED"})
            canceling = make_run(instance, S.CANCELING, canceling=T0 - 500)
            with workspace_context(instance) as ctx:
                for i in range(3):
                    daemon = RunMonitorDaemon.from_instance(instance)
                    assert monitor_pass(instance, ctx, now=T0 + i, daemon=daemon) == []
    got = sorted((r.body["run_id"], r.body["event"], r.body["reason"]) for r in hook.requests)
    assert got == sorted(
        [
            (starting.run_id, "failed", c.REASON_START_TIMEOUT),
            (crashed.run_id, "resumed", c.REASON_WORKER_CRASH),
            (canceling.run_id, "canceled", c.REASON_CANCEL_TIMEOUT),
        ]
    )
    (resumed,) = [r.body for r in hook.requests if r.body["event"] == "resumed"]
    assert resumed["cause"] == "unknown"
    assert resumed["message"].startswith("Detected run worker status FAILED: ")


def test_a_secret_from_a_missing_variable_fails_at_start_up_naming_key_and_variable(monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    config = {"alerts": {"slack": {"token": {"env": "NOT_SET_ANYWHERE"}, "channel": "#x"}}}
    with pytest.raises(DagsterInvalidConfigError) as raised:
        settings_from_config(config)
    text = str(raised.value) + "".join(str(e.message) for e in raised.value.errors)
    assert "run_monitoring.alerts.slack.token" in text
    assert "the environment variable NOT_SET_ANYWHERE is not set" in text
    monkeypatch.setenv("PLAIN", SECRET)
    settings = settings_from_config(
        {"alerts": {"slack": {"token": {"env": "PLAIN"}, "channel": "#x"}}}
    )
    assert settings.alerts.slack.token.value == SECRET
    assert SECRET not in repr(settings)
    with pytest.raises(DagsterInvalidConfigError) as raised:
        settings_from_config({"alerts": {"on": ["warning", "page me"]}})
    assert "run_monitoring.alerts.on" in "".join(str(e.message) for e in raised.value.errors)


@pytest.mark.parametrize("to", [True, 5, {"a": "b@example.com"}, [], ["nobody"]])
def test_email_recipients_that_are_not_addresses_fail_at_start_up_naming_the_key(to):
    """Found by the fuzz test: ``to: true`` raised a TypeError instead."""
    mail = {"smtp_host": "127.0.0.1", "from": "monitor@example.com", "to": to}
    with pytest.raises(DagsterInvalidConfigError) as raised:
        settings_from_config({"alerts": {"email": mail}})
    assert "run_monitoring.alerts.email.to" in "".join(str(e.message) for e in raised.value.errors)


ALERTS_YAML = """
instance_class:
  module: dagster_run_monitor
  class: RunMonitorInstance
run_monitoring:
  enabled: true
  alerts:
    {on_key}: [warning, failed]
    slack: {{token: {{env: SLACK_TOKEN_FOR_TEST}}, channel: "#data-oncall"}}
"""


@pytest.mark.parametrize("on_key", ["on", '"on"'])
def test_alerts_on_loads_as_people_write_it_quoted_or_not(tmp_path, monkeypatch, on_key):
    """YAML reads an unquoted ``on:`` as the key true; both forms load with the real instance
    class from a dagster.yaml as written (Dagster's validation failed on the unquoted one)."""
    monkeypatch.setenv("SLACK_TOKEN_FOR_TEST", SECRET)
    (tmp_path / "dagster.yaml").write_text(ALERTS_YAML.format(on_key=on_key))
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path))) as instance:
        settings = read_settings(instance)
    assert settings.alerts.on == {"warning", "failed"}
    assert settings.alerts.slack.token.value == SECRET


@pytest.mark.parametrize(
    ("alerts", "key", "why"),
    [
        ({"slak": {}}, "run_monitoring.alerts", "unknown key 'slak'"),
        ({False: ["warning"]}, "run_monitoring.alerts", "quote off, no, yes in YAML"),
        ({True: ["failed"], "on": ["warning"]}, "run_monitoring.alerts.on", "given twice"),
        ({"slack": {"channel": "#x"}}, "run_monitoring.alerts.slack", "missing 'token'"),
        (
            {"slack": {"token": 12, "channel": "#x"}},
            "run_monitoring.alerts.slack.token",
            "expected ",
        ),
        ({"log": "maybe"}, "run_monitoring.alerts.log", "expected Bool"),
    ],
)
def test_a_bad_alerts_key_fails_at_start_up_naming_it_without_the_secrets(alerts, key, why):
    config = {"alerts": {**alerts, "webhook": {"url": f"https://hooks.example/{SECRET}"}}}
    with pytest.raises(DagsterInvalidConfigError) as raised:
        settings_from_config(config)
    text = str(raised.value) + "".join(str(e.message) for e in raised.value.errors)
    assert f"for {key}: " in text and why in text, text
    assert SECRET not in text
