"""The chaos soak (``benchmarks.soak``), 3 minutes with a fixed seed: two stock daemons, a
stream of runs, random faults, and every invariant checked on the whole history (issue 32).
The hour-long runs and their figures are in docs/reliability-and-performance.md."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from dagster_run_monitor_tests.support import cgroups
from dagster_run_monitor_tests.support.postgres import require_private_postgres
from dagster_run_monitor_tests.support.subprocesses import REPO_ROOT

pytestmark = pytest.mark.slow


def require_chaos_tools() -> None:
    """A private PostgreSQL to stop, faketime for the skewed clock, memory cgroups for the OOM
    kills: skipped without them on a developer's machine, failed in CI."""
    require_private_postgres()
    reason = None
    if shutil.which("faketime") is None:
        reason = "faketime is missing (scripts/faketime installs Debian's)"
    elif (why := cgroups.unavailable(1)) is not None:
        reason = why
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the soak, but {reason}")
    pytest.skip(reason)


@pytest.mark.timeout(1200)  # 3 minutes of runs and faults, then the drain (at most 5)
def test_three_minutes_of_random_faults_break_no_invariant(tmp_path):
    require_chaos_tools()
    out = tmp_path / "soak"
    command = [sys.executable, "-m", "benchmarks.soak", "--launcher", "process"]
    command += ["--minutes", "3", "--seed", "7", "--drain-seconds", "300", "--out", str(out)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    report = json.loads((out / "report.json").read_text())
    assert report["failed"] == [], done.stdout[-6000:]
    assert done.returncode == 0, done.stderr[-3000:]
    # the soak did what it says: runs, faults of several kinds, the monitor acting
    assert report["runs"] >= 20
    assert report["fault_kinds"] >= 4, report["faults"]
    assert report["resumes"] + report["retries"] >= 1
    assert set(report["statuses"]) <= {"SUCCESS", "FAILURE", "CANCELED"}
