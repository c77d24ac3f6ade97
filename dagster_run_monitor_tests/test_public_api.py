"""What users write keeps working whatever the package's layout: the mixin's snippet, the
public names and the dotted paths the docs gave (every dagster.yaml of the docs is loaded by
test_docs.py, the Helm overlay by test_helm.py)."""

import re
import subprocess
import sys

import pytest
from dagster import DagsterInstance

import dagster_run_monitor
from dagster_run_monitor_tests.support.subprocesses import REPO_ROOT


def code_blocks(page: str, language: str) -> list[str]:
    text = (REPO_ROOT / page).read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def test_the_mixin_snippet_runs():
    page = "docs/configuration.md"
    block = next(b for b in code_blocks(page, "python") if "RunMonitorInstanceMixin" in b)
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
