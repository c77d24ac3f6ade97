"""What users write keeps working whatever the package's layout: the README's dagster.yaml
and Python, the launcher's dagster.yaml of docs/launchers.md, the Helm overlay (loaded in
test_helm.py), the public names and the dotted paths the docs gave."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef

import dagster_run_monitor
from dagster_run_monitor.config.parse import read_settings
from dagster_run_monitor.core.constants import DAEMON_TYPE
from dagster_run_monitor_tests.support.subprocesses import REPO_ROOT


def code_blocks(page: str, language: str) -> list[str]:
    text = (REPO_ROOT / page).read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def load(home: Path, config: dict) -> DagsterInstance:
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def process_launcher(tmp_path: Path) -> dict:
    block = next(b for b in code_blocks("docs/launchers.md", "yaml") if "ProcessRunLauncher" in b)
    launcher = yaml.safe_load(block)["run_launcher"]
    launcher["config"]["log_dir"] = str(tmp_path / "workers")  # the example's /var/log
    return launcher


def test_the_readmes_dagster_yaml_loads_unchanged(tmp_path):
    """With a launcher that can resume (its max_resume_run_attempts: 3 is refused by
    Dagster itself under the DefaultRunLauncher): the docs' ProcessRunLauncher."""
    block = next(b for b in code_blocks("README.md", "yaml") if "instance_class:" in b)
    config = yaml.safe_load(block)
    assert config["instance_class"] == {
        "module": "dagster_run_monitor",
        "class": "RunMonitorInstance",
    }
    instance = load(tmp_path, {**config, "run_launcher": process_launcher(tmp_path)})
    try:
        assert type(instance) is dagster_run_monitor.RunMonitorInstance
        assert DAEMON_TYPE in instance.get_required_daemon_types()
        assert read_settings(instance).start_timeout_seconds == 180
        assert type(instance.run_launcher) is dagster_run_monitor.ProcessRunLauncher
    finally:
        instance.dispose()


def test_the_readmes_dagster_yaml_under_the_default_launcher_as_its_comment_says(tmp_path):
    """Dagster refuses max_resume_run_attempts: 3 for a launcher that cannot resume; the
    README's comment says to write 0 there, which loads."""
    block = next(b for b in code_blocks("README.md", "yaml") if "instance_class:" in b)
    assert "# 0 under Dagster's DefaultRunLauncher" in block
    config = yaml.safe_load(block)
    with pytest.raises(Exception, match="does not support resuming runs"):
        load(tmp_path, config)
    config["run_monitoring"]["max_resume_run_attempts"] = 0
    instance = load(tmp_path, config)
    try:
        assert type(instance) is dagster_run_monitor.RunMonitorInstance
        assert DAEMON_TYPE in instance.get_required_daemon_types()
    finally:
        instance.dispose()


def test_the_readmes_mixin_snippet_runs():
    block = next(b for b in code_blocks("README.md", "python") if "RunMonitorInstanceMixin" in b)
    namespace = {"MyExistingInstance": DagsterInstance}
    exec(block, namespace)
    assert issubclass(namespace["MyInstance"], dagster_run_monitor.RunMonitorInstanceMixin)


@pytest.mark.parametrize(
    "statement",
    [
        "from dagster_run_monitor import RunMonitorInstance, RunMonitorInstanceMixin",
        "from dagster_run_monitor import ProcessRunLauncher, process_step_executor",
        "from dagster_run_monitor import Alert, CrashCause, __version__",
        "from dagster_run_monitor.model import Alert",  # docs of 0.2: an alert callable's argument
        "from dagster_run_monitor.crash_cause import CrashCause",  # a launcher's crash_cause
        "import dagster_run_monitor.demo_job",  # dg dev -m dagster_run_monitor.demo_job
        "import dagster_run_monitor.cli",  # the dagster-run-monitor entry point
    ],
)
def test_what_users_import_resolves_in_a_fresh_interpreter(statement):
    result = subprocess.run([sys.executable, "-c", statement], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_public_names_are_the_classes_they_name():
    from dagster_run_monitor.core.crash_cause import CrashCause
    from dagster_run_monitor.core.model import Alert
    from dagster_run_monitor.launchers.process.launcher import ProcessRunLauncher

    assert dagster_run_monitor.Alert is Alert and dagster_run_monitor.CrashCause is CrashCause
    assert dagster_run_monitor.ProcessRunLauncher is ProcessRunLauncher
    assert set(dagster_run_monitor.__all__) <= set(dir(dagster_run_monitor))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        dagster_run_monitor.nothing  # noqa: B018
