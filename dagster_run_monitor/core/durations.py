"""Durations as people write them: ``90``, ``"90s"``, ``"1h30m"``, ``"PT1H30M"``; and times
as the monitor shows them (``2026-12-07T01:42:00+00:00``)."""

import datetime
import re

import pendulum

_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
# Whitespace only after a unit (the text is stripped): one way to match, so linear time.
_COMPOUND = re.compile(r"(?:\d+(?:\.\d+)?\s*(?:ms|s|m|h|d|w)\s*)+", re.IGNORECASE)


def parse_duration(value: object) -> float:
    """Seconds in ``value``; raises ``ValueError`` for anything that is not a duration >= 0."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value.strip())
    else:
        raise ValueError(f"not a duration: {value!r}")
    if not seconds >= 0 or seconds == float("inf"):  # also rejects NaN
        raise ValueError(f"not a duration >= 0: {value!r}")
    return seconds


def _parse_text(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    if _COMPOUND.fullmatch(text):
        return sum(float(n) * _UNIT_SECONDS[u.lower()] for n, u in _PART.findall(text))
    if text[:1].upper() == "P" and text.upper() not in ("P", "PT"):
        try:
            parsed = pendulum.parse(text)
        except Exception as exc:  # pendulum raises its own ParserError
            raise ValueError(f"not a duration: {text!r}") from exc
        if isinstance(parsed, pendulum.Duration):
            return parsed.total_seconds()
    raise ValueError(f"not a duration: {text!r}")


def iso_time(timestamp: float) -> str:
    """A UNIX time to the second, in UTC, ISO 8601: ``2026-12-07T01:42:00+00:00``."""
    return datetime.datetime.fromtimestamp(round(timestamp), datetime.timezone.utc).isoformat()
