"""The ``alerts:`` part of the ``run_monitoring`` block -> the core's ``AlertSettings``.
Secrets take Dagster's ``{env: VAR}`` form or a plain string and are kept as ``Secret``."""

import os
from collections.abc import Mapping
from typing import Any

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
