"""The ``alerts:`` settings as typed values: which alerts go out, and where
(``config.alerts`` reads them from dagster.yaml).

Every field that holds a secret (a token, a webhook URL, a routing key, a password, a header)
is a ``Secret``, which never shows its value: not in a repr, a log line, an event or an error.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field

# What a sink can be told about: threshold warnings (and bad tags), and the monitor's actions.
WARNING, FAILED, RESUMED, CANCELED = "warning", "failed", "resumed", "canceled"
ALERT_EVENTS = (WARNING, FAILED, RESUMED, CANCELED)
BREAKER = "breaker"  # about the monitor itself: always sent, whatever alerts.on says
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"


class Secret:
    """A string from dagster.yaml or the environment that is never shown."""

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)


@dataclass(frozen=True)
class Webhook:
    url: Secret
    headers: Mapping[str, Secret] = field(default_factory=dict)
    timeout_seconds: float = 5.0
    retries: int = 3


@dataclass(frozen=True)
class Slack:
    token: Secret
    channel: str
    base_url: str | None = None  # slack_sdk's default: https://slack.com/api/
    timeout_seconds: float = 5.0


@dataclass(frozen=True)
class MsTeams:
    hook_url: Secret
    timeout_seconds: float = 5.0


@dataclass(frozen=True)
class PagerDuty:
    routing_key: Secret
    events_url: str = PAGERDUTY_EVENTS_URL
    timeout_seconds: float = 5.0


@dataclass(frozen=True)
class Email:
    smtp_host: str
    to: tuple[str, ...]
    sender: str  # the "from" key
    smtp_port: int = 25
    username: str | None = None
    password: Secret | None = None
    starttls: bool = False
    timeout_seconds: float = 10.0


@dataclass(frozen=True)
class AlertSettings:
    log: bool = True
    on: frozenset[str] = frozenset({WARNING})
    webserver_url: str | None = None  # messages link to <webserver_url>/runs/<run_id>
    callable: tuple[str, str] | None = None  # (module, function)
    webhook: Webhook | None = None
    slack: Slack | None = None
    msteams: MsTeams | None = None
    pagerduty: PagerDuty | None = None
    email: Email | None = None

    def run_url(self, run_id: str) -> str | None:
        return f"{self.webserver_url.rstrip('/')}/runs/{run_id}" if self.webserver_url else None


SINKS = ("webhook", "slack", "msteams", "pagerduty", "email")
