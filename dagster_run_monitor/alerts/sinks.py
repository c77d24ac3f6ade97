"""The places an alert can go, each one call that delivers it or raises: your function, a JSON
webhook, Slack (``slack_sdk``), Microsoft Teams, PagerDuty (Events API v2) and email.

Teams and PagerDuty are plain HTTPS POSTs of their documented payloads: dagster-msteams and
dagster-pagerduty each pin one exact Dagster release (so they cannot be installed beside
another one), dagster-pagerduty's client cannot be pointed at another URL and has no
timeout, and dagster-slack's resource takes no ``base_url``, so Slack goes through the client
dagster-slack itself uses. Email uses the standard library.
"""

import dataclasses
import importlib
import json
import smtplib
import ssl
import time
import urllib.request
from collections.abc import Callable, Mapping
from email.message import EmailMessage
from typing import Any

from dagster_run_monitor.core.alert_settings import (
    WARNING,
    AlertSettings,
    Email,
    MsTeams,
    PagerDuty,
    Slack,
)
from dagster_run_monitor.core.model import Alert

Deliver = Callable[[Alert], None]
MESSAGE_LIMIT = 1000  # characters of an event's message in a chat message or an email


def title(alert: Alert) -> str:
    if not alert.run_id:  # about the monitor itself (the breaker)
        return f"Dagster run monitor: {alert.event}"
    return f"Dagster run {alert.run_id} ({alert.job_name}): {alert.event}"


def text(alert: Alert, settings: AlertSettings) -> str:
    """The message: the event-log message (shortened) and the run's link in the UI."""
    message = alert.message[:MESSAGE_LIMIT] + ("..." if len(alert.message) > MESSAGE_LIMIT else "")
    url = settings.run_url(alert.run_id) if alert.run_id else None
    return f"{message}\n{url}" if url else message


def post(
    url: str, payload: Mapping[str, Any], timeout: float, headers: Mapping[str, str] = {}
) -> int:
    """POST ``payload`` as JSON; the HTTP status (an error status raises)."""
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status


def sinks(settings: AlertSettings) -> dict[str, tuple[Deliver, float]]:
    """Each configured sink's delivery, and how long one delivery may take."""
    found: dict[str, tuple[Deliver, float]] = {}
    if settings.callable:
        module, function = settings.callable
        found["callable"] = (lambda a: getattr(importlib.import_module(module), function)(a), 5.0)
    if settings.webhook:
        hook = settings.webhook
        found["webhook"] = (
            lambda a: webhook(a, settings),
            hook.timeout_seconds * (hook.retries + 1)
            + sum(min(0.5 * i, 5) for i in range(1, hook.retries + 2)),
        )
    for name, config, deliver in (
        ("slack", settings.slack, slack),
        ("msteams", settings.msteams, msteams),
        ("pagerduty", settings.pagerduty, pagerduty),
        ("email", settings.email, email),
    ):
        if config is not None:
            found[name] = (lambda a, d=deliver, c=config: d(a, c, settings), config.timeout_seconds)
    return found


def webhook(alert: Alert, settings: AlertSettings) -> None:
    """The alert's fields as JSON, and its ``event`` and ``url``; retried on failure."""
    hook = settings.webhook
    assert hook is not None
    payload = {
        **dataclasses.asdict(alert),
        "event": alert.event,
        "url": settings.run_url(alert.run_id),
    }
    headers = {name: secret.value for name, secret in hook.headers.items()}
    for attempt in range(1, hook.retries + 2):
        try:
            post(hook.url.value, payload, hook.timeout_seconds, headers)
            return
        except Exception:
            if attempt == hook.retries + 1:
                raise
        time.sleep(min(0.5 * attempt, 5))


def slack(alert: Alert, config: Slack, settings: AlertSettings) -> None:
    """``chat.postMessage`` to the channel, through slack_sdk (its own retries off)."""
    from slack_sdk import WebClient

    kwargs = {"base_url": config.base_url} if config.base_url else {}
    client = WebClient(
        token=config.token.value, timeout=int(config.timeout_seconds), retry_handlers=[], **kwargs
    )
    client.chat_postMessage(
        channel=config.channel, text=f"*{title(alert)}*\n{text(alert, settings)}"
    )


def msteams(alert: Alert, config: MsTeams, settings: AlertSettings) -> None:
    """An Adaptive Card, as dagster-msteams posts to a Teams workflow webhook."""
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": title(alert), "weight": "Bolder", "wrap": True},
        {"type": "TextBlock", "text": text(alert, settings), "wrap": True},
    ]
    card = {
        "type": "AdaptiveCard",
        "version": "1.5",
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "body": body,
    }
    url = settings.run_url(alert.run_id)
    if url:
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Open the run", "url": url}]
    attachment = {
        "contentType": "application/vnd.microsoft.card.adaptive",
        "contentUrl": None,
        "content": card,
    }
    post(
        config.hook_url.value,
        {"type": "message", "attachments": [attachment]},
        config.timeout_seconds,
    )


def pagerduty(alert: Alert, config: PagerDuty, settings: AlertSettings) -> None:
    """An Events API v2 ``trigger``, one incident per run and cause (its ``dedup_key``)."""
    url = settings.run_url(alert.run_id)
    event = {
        "routing_key": config.routing_key.value,
        "event_action": "trigger",
        "dedup_key": dedup_key(alert.subject),
        "payload": {
            "summary": f"{title(alert)}: {alert.message}"[:1024],
            "source": settings.webserver_url or "dagster-run-monitor",
            "severity": "warning" if alert.event == WARNING else "error",
            "component": alert.job_name,
            "class": alert.kind,
            "custom_details": {k: v for k, v in dataclasses.asdict(alert).items() if v is not None},
        },
        "client": "dagster-run-monitor",
        **(
            {"client_url": url, "links": [{"href": url, "text": "The run in Dagster"}]}
            if url
            else {}
        ),
    }
    post(config.events_url, event, config.timeout_seconds)


def pagerduty_resolve(subject: str, config: PagerDuty) -> None:
    """An Events API v2 ``resolve`` of the incident of ``subject`` (an ``Alert.subject``)."""
    event = {
        "routing_key": config.routing_key.value,
        "event_action": "resolve",
        "dedup_key": dedup_key(subject),
    }
    post(config.events_url, event, config.timeout_seconds)


def dedup_key(subject: str) -> str:
    return f"dagster-run-monitor/{subject}"


def email(alert: Alert, config: Email, settings: AlertSettings) -> None:
    message = EmailMessage()
    message["Subject"] = title(alert)
    message["From"] = config.sender
    message["To"] = ", ".join(config.to)
    message.set_content(text(alert, settings))
    with smtplib.SMTP(config.smtp_host, config.smtp_port, timeout=config.timeout_seconds) as smtp:
        if config.starttls:
            smtp.starttls(context=ssl.create_default_context())
        if config.username:
            smtp.login(config.username, config.password.value if config.password else "")
        smtp.send_message(message)
