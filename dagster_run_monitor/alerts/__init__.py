"""Alerts: the sender (which alert goes where, once), the sinks (log, callable, webhook,
Slack, Microsoft Teams, PagerDuty, email) and the PagerDuty incidents that are over."""
