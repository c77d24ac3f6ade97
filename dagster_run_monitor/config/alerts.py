"""The ``alerts:`` part of the ``run_monitoring`` block -> the core's ``AlertSettings``.
Secrets take Dagster's ``{env: VAR}`` form or a plain string and are kept as ``Secret``."""

import os
import re
from collections.abc import Mapping
from typing import Any

from dagster._config import process_config, resolve_to_config_type
from dagster._config.errors import (
    FieldNotDefinedErrorData,
    FieldsNotDefinedErrorData,
    MissingFieldErrorData,
    MissingFieldsErrorData,
    RuntimeMismatchErrorData,
)

from dagster_run_monitor.config.schema import alerts_schema
from dagster_run_monitor.core.alert_settings import (
    ALERT_EVENTS,
    PAGERDUTY_EVENTS_URL,
    SINKS,
    WARNING,
    AlertSettings,
    Email,
    MsTeams,
    PagerDuty,
    Secret,
    Slack,
    Webhook,
)


def read_alerts(raw: Any, invalid: Any) -> dict[str, Any]:
    """``alerts:`` as written, checked against its schema (defaults filled in, ``{env: VAR}``
    read). YAML 1.1 reads an unquoted ``on:`` as the key true: it is taken as ``on``."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise invalid("alerts", raw, "expected a mapping such as {on: [warning], slack: ...}")
    config: dict[str, Any] = {}
    for key, value in raw.items():
        name = "on" if key is True else key
        if not isinstance(name, str):
            raise invalid(
                "alerts", key, "expected a key such as on or slack (quote off, no, yes in YAML)"
            )
        if name in config:
            raise invalid("alerts.on", value, 'given twice (as on: and "on":)')
        config[name] = value
    result = process_config(resolve_to_config_type(alerts_schema().config_type), config)
    if result.success:
        return dict(result.value or {})
    error = result.errors[0]  # type: ignore[index]
    path = [e.field_name for e in error.stack.entries if hasattr(e, "field_name")]
    value: Any = config
    for name in path:
        value = value.get(name) if isinstance(value, Mapping) else None
    if (path and path[0] in SINKS) or isinstance(value, (Mapping, list)):
        value = "***"  # a sink's block may hold a secret: never shown
    raise invalid(".".join(["alerts", *path]), value, _why(error))


def _why(error: Any) -> str:
    """A Dagster validation error in a few words, without the value (it may be a secret)."""
    data = error.error_data
    if isinstance(data, (FieldNotDefinedErrorData, FieldsNotDefinedErrorData)):
        names = getattr(data, "field_names", None) or [data.field_name]
        return f"unknown key {', '.join(map(repr, names))}"
    if isinstance(data, (MissingFieldErrorData, MissingFieldsErrorData)):
        names = getattr(data, "field_names", None) or [data.field_name]
        return f"missing {', '.join(map(repr, names))}"
    if isinstance(data, RuntimeMismatchErrorData):
        return f"expected {data.config_type_snap.given_name or data.config_type_snap.key}"
    unset = _UNSET.search(error.message)
    if unset:
        return f"the environment variable {unset.group(1)} is not set"
    return error.message.splitlines()[0]


_UNSET = re.compile(r'environment variable "([^"]+)" which is not set')


def alert_settings(config: Mapping[str, Any], invalid: Any) -> AlertSettings:
    """``alerts:`` as validated settings; ``invalid(key, value, why)`` makes the error."""

    def secret(key: str, value: Any) -> Secret:
        if isinstance(value, Mapping) and set(value) == {"env"}:
            name = str(value["env"])
            if not os.environ.get(name):
                raise invalid(key, {"env": name}, f"the environment variable {name} is not set")
            return Secret(os.environ[name])
        if not isinstance(value, str) or not value:
            raise invalid(key, "***", "expected a string or {env: VARIABLE}")
        return Secret(value)

    def url(key: str, value: Any) -> Any:
        text = value.value if isinstance(value, Secret) else value
        if text is not None and not str(text).startswith(("http://", "https://")):
            raise invalid(
                key,
                "***" if isinstance(value, Secret) else value,
                "expected an http:// or https:// URL",
            )
        return value

    def secret_url(key: str, value: Any) -> Secret:
        return url(key, secret(key, value))

    on = config.get("on") or [WARNING]
    if not isinstance(on, list) or set(on) - set(ALERT_EVENTS):
        raise invalid("alerts.on", on, f"expected a list of {', '.join(ALERT_EVENTS)}")
    function, hook, slack, teams, pager, mail = (config.get(k) for k in ("callable", *SINKS))
    return AlertSettings(
        log=config.get("log", True),
        on=frozenset(on),
        webserver_url=url("alerts.webserver_url", config.get("webserver_url")),
        callable=(function["module"], function["function"]) if function else None,
        webhook=Webhook(
            secret_url("alerts.webhook.url", hook.get("url")),
            {
                name: secret(f"alerts.webhook.headers.{name}", value)
                for name, value in (hook.get("headers") or {}).items()
            },
            hook.get("timeout_seconds", 5.0),
            hook.get("retries", 3),
        )
        if hook
        else None,
        slack=Slack(
            secret("alerts.slack.token", slack.get("token")),
            slack.get("channel", ""),
            url("alerts.slack.base_url", slack.get("base_url")),
            slack.get("timeout_seconds", 5.0),
        )
        if slack
        else None,
        msteams=MsTeams(
            secret_url("alerts.msteams.hook_url", teams.get("hook_url")),
            teams.get("timeout_seconds", 5.0),
        )
        if teams
        else None,
        pagerduty=PagerDuty(
            secret("alerts.pagerduty.routing_key", pager.get("routing_key")),
            url("alerts.pagerduty.events_url", pager.get("events_url")) or PAGERDUTY_EVENTS_URL,
            pager.get("timeout_seconds", 5.0),
        )
        if pager
        else None,
        email=_email(mail, secret, invalid) if mail else None,
    )


def _email(mail: Mapping[str, Any], secret: Any, invalid: Any) -> Email:
    to = mail.get("to") or []
    to = [to] if isinstance(to, str) else list(to) if isinstance(to, (list, tuple)) else [to]
    if not to or not all(isinstance(a, str) and "@" in a for a in to):
        raise invalid("alerts.email.to", mail.get("to"), "expected one or more addresses")
    password = mail.get("password")
    return Email(
        smtp_host=mail.get("smtp_host", ""),
        to=tuple(to),
        sender=mail.get("from", ""),
        smtp_port=mail.get("smtp_port", 25),
        username=secret("alerts.email.username", mail["username"]).value
        if mail.get("username")
        else None,
        password=secret("alerts.email.password", password) if password else None,
        starttls=mail.get("starttls", False),
        timeout_seconds=mail.get("timeout_seconds", 10.0),
    )
