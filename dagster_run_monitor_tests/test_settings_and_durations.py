import pytest
from dagster._core.errors import DagsterInvalidConfigError

from dagster_run_monitor.config.parse import settings_from_config
from dagster_run_monitor.core.durations import parse_duration
from dagster_run_monitor.core.settings import MonitorSettings


@pytest.mark.parametrize(
    "value, seconds",
    [
        (90, 90),
        (1.5, 1.5),
        ("90", 90),
        ("90s", 90),
        ("2h", 7200),
        ("1h30m", 5400),
        ("1h 30m", 5400),
        ("PT1H30M", 5400),
        ("P1D", 86400),
        ("500ms", 0.5),
        (" 10 ", 10),
    ],
)
def test_durations_people_write(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value", ["", "soon", "-1", "1x", "nan", "inf", "P", "PT", True, None, [1]]
)
def test_not_durations(value):
    with pytest.raises(ValueError):
        parse_duration(value)


def test_documented_defaults():
    settings = settings_from_config({"enabled": True}, can_check_health=True, can_resume=True)
    assert settings == MonitorSettings(
        enabled=True,
        start_timeout_seconds=180,
        cancel_timeout_seconds=180,
        max_resume_run_attempts=3,
        poll_interval_seconds=120,
        max_runtime_seconds=0,
        can_check_health=True,
        can_resume=True,
    )
    assert settings.resume_attempts == 3
    assert settings_from_config({"enabled": True}).resume_attempts == 0  # launcher cannot resume


@pytest.mark.parametrize(
    "key, value, why",
    [
        ("start_timeout_seconds", -1, "must be at least 0"),
        ("poll_interval_seconds", 0, "must be at least 1"),
        ("health_check_threads", 0, "must be at least 1"),
        ("max_resume_run_attempts", "3", "expected a number"),
        ("enabled", "yes", "expected true or false"),
    ],
)
def test_bad_values_name_their_key(key, value, why):
    with pytest.raises(DagsterInvalidConfigError) as error:
        settings_from_config({key: value})
    assert f"run_monitoring.{key}" in str(error.value) and why in str(error.value)
