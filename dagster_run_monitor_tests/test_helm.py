"""The dagster.yaml that Dagster's Helm chart renders from docs/helm/values-run-monitor.yaml,
loaded with our instance class.

``render`` reproduces, for the keys that matter here, the chart's
``templates/configmap-instance.yaml``: its ``run_monitoring:`` block (written when
``dagsterDaemon.runMonitoring.enabled``, Dagster's keys only) and ``additionalInstanceConfig``
appended at the end through ``toYaml`` (keys sorted). Storage is SQLite instead of the
chart's PostgreSQL; the run launcher is the chart's K8sRunLauncher with a kubeconfig file.
"""

from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import DagsterInstance
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.ref import InstanceRef

from dagster_run_monitor import RunMonitorInstance
from dagster_run_monitor.config.parse import read_settings
from dagster_run_monitor.core.constants import DAEMON_TYPE
from dagster_run_monitor_tests.support.subprocesses import REPO_ROOT

OVERLAY = REPO_ROOT / "docs" / "helm" / "values-run-monitor.yaml"
CHART_DEFAULTS: dict[str, Any] = {  # helm/dagster/values.yaml
    "dagsterDaemon": {
        "enabled": True,
        "runMonitoring": {
            "enabled": True,
            "startTimeoutSeconds": 300,
            "pollIntervalSeconds": 120,
            "maxResumeRunAttempts": 0,
            "freeSlotsAfterRunEndSeconds": 0,
        },
    },
    "additionalInstanceConfig": {},
}
CHART_MONITORING_KEYS = {  # the only keys the chart's template renders, in its order
    "enabled": "enabled",
    "startTimeoutSeconds": "start_timeout_seconds",
    "cancelTimeoutSeconds": "cancel_timeout_seconds",
    "maxRuntimeSeconds": "max_runtime_seconds",
    "maxResumeRunAttempts": "max_resume_run_attempts",
    "pollIntervalSeconds": "poll_interval_seconds",
    "freeSlotsAfterRunEndSeconds": "free_slots_after_run_end_seconds",
}


def merged(base: dict, overlay: dict) -> dict:
    """Helm's merge of a values file over the chart's values."""
    result = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def render(values: dict, base_dir: Path) -> str:
    kubeconfig = base_dir / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "not-used"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    chart_part = {
        "run_launcher": {
            "module": "dagster_k8s",
            "class": "K8sRunLauncher",
            "config": {
                "load_incluster_config": False,
                "kubeconfig_file": str(kubeconfig),
                "job_namespace": "dagster",
                "instance_config_map": "dagster-instance",
                "service_account_name": "dagster",
                "dagster_home": "/opt/dagster/dagster_home",
                "image_pull_policy": "Always",
            },
        },
        "storage": {"sqlite": {"base_dir": str(base_dir)}},
    }
    text = yaml.safe_dump(chart_part, sort_keys=False)
    daemon, monitoring = values["dagsterDaemon"], values["dagsterDaemon"]["runMonitoring"]
    if daemon["enabled"] and monitoring["enabled"]:
        text += "run_monitoring:\n"
        for key, name in CHART_MONITORING_KEYS.items():
            if monitoring.get(key) is not None:
                text += f"  {name}: {yaml.safe_dump(monitoring[key]).splitlines()[0]}\n"
    text += "telemetry:\n  enabled: false\n"
    if values["additionalInstanceConfig"]:
        text += yaml.safe_dump(values["additionalInstanceConfig"], sort_keys=True)
    return text


def load(values: dict, home: Path) -> DagsterInstance:
    (home / "dagster.yaml").write_text(render(values, home))
    return DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def overlay() -> dict:
    return yaml.safe_load(OVERLAY.read_text())


def test_the_overlay_gives_our_daemon_with_the_overlays_settings(tmp_path):
    values = merged(CHART_DEFAULTS, overlay())
    rendered = render(values, tmp_path)
    assert rendered.count("run_monitoring:") == 1  # the chart's own block is off
    instance = load(values, tmp_path)
    assert isinstance(instance, RunMonitorInstance)
    daemons = instance.get_required_daemon_types()
    assert DAEMON_TYPE in daemons and "MONITORING" not in daemons
    settings = read_settings(instance)
    ours = overlay()["additionalInstanceConfig"]["run_monitoring"]
    assert settings.start_timeout_seconds == ours["start_timeout_seconds"] == 300
    assert settings.cancel_timeout_seconds == ours["cancel_timeout_seconds"]
    assert settings.poll_interval_seconds == ours["poll_interval_seconds"]
    assert settings.resume_attempts == ours["max_resume_run_attempts"] == 3
    assert settings.worker_unknown_grace_seconds == ours["worker_unknown_grace_seconds"]


def test_the_overlay_with_the_charts_block_left_on_is_refused_naming_the_duplicate(tmp_path):
    values = merged(CHART_DEFAULTS, overlay())
    values["dagsterDaemon"]["runMonitoring"]["enabled"] = True  # the chart's default
    assert render(values, tmp_path).count("run_monitoring:") == 2
    with pytest.raises(DagsterInvalidConfigError) as raised:
        load(values, tmp_path)
    message = str(raised.value)
    assert "two `run_monitoring:` keys" in message
    assert "dagsterDaemon.runMonitoring.enabled: false" in message


def test_only_the_instance_class_added_keeps_the_charts_settings(tmp_path):
    """The smallest change: the chart's own block (Dagster's keys), our daemon running it."""
    instance_class = overlay()["additionalInstanceConfig"]["instance_class"]
    values = merged(
        CHART_DEFAULTS, {"additionalInstanceConfig": {"instance_class": instance_class}}
    )
    instance = load(values, tmp_path)
    assert DAEMON_TYPE in instance.get_required_daemon_types()
    settings = read_settings(instance)
    assert settings.start_timeout_seconds == 300
    assert settings.resume_attempts == 0  # the chart's maxResumeRunAttempts


METRICS_OVERLAY = REPO_ROOT / "docs" / "observability" / "values-metrics.yaml"
# The keys the chart's schema allows under dagsterDaemon (helm/dagster/schema: class Daemon,
# extra forbidden); no container port, no Service.
CHART_DAEMON_KEYS = {
    "schedulerName", "volumeMounts", "volumes", "enabled", "image", "runCoordinator",
    "heartbeatTolerance", "env", "envConfigMaps", "envSecrets", "deploymentLabels", "labels",
    "nodeSelector", "affinity", "tolerations", "podSecurityContext", "securityContext",
    "resources", "livenessProbe", "readinessProbe", "startupProbe", "annotations",
    "runMonitoring", "runRetries", "sensors", "schedules",
}  # fmt: skip


def test_the_metrics_overlay_serves_the_metrics_on_the_pods_interfaces(tmp_path):
    """After the run-monitor overlay (Helm merges maps): the daemon's metrics on 0.0.0.0:9464,
    the pod annotated for Prometheus's pod discovery, every key one the chart's schema allows
    and every annotation a string (Kubernetes' type)."""
    metrics = yaml.safe_load(METRICS_OVERLAY.read_text())
    assert set(metrics["dagsterDaemon"]) <= CHART_DAEMON_KEYS
    annotations = metrics["dagsterDaemon"]["annotations"]
    assert all(isinstance(v, str) for v in annotations.values())
    assert annotations["prometheus.io/port"] == "9464"
    values = merged(merged(CHART_DEFAULTS, overlay()), metrics)
    settings = read_settings(load(values, tmp_path))
    assert (settings.metrics_host, settings.metrics_port) == ("0.0.0.0", 9464)
    assert settings.resume_attempts == 3  # the first overlay's block is kept
