"""What a benchmark run is made of: the mix of statuses, the monitor settings, the logger."""

import logging
import os

from dagster._core.storage.dagster_run import DagsterRunStatus

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


DEFAULT_DATABASE = "run_monitor_bench"


# --launcher docker: the largest N with real containers (one per STARTED/STARTING run, so
# 900): each holds ~4 MB and ~12 tasks (its containerd shim's threads); created at ~5/s and
# removed at ~9/s on two cores.
DOCKER_REAL_MAX_N = 1000


MIX = (  # share of N per status
    (DagsterRunStatus.QUEUED, 0.05),
    (DagsterRunStatus.STARTING, 0.10),
    (DagsterRunStatus.STARTED, 0.80),
    (DagsterRunStatus.CANCELING, 0.05),
)


# Limits no run crosses while the benchmark runs (Dagster's 180 s start and cancel timeouts
# would be crossed during the data set-up at 10,000 runs); what a check costs does not depend
# on the value of its limit.
RUN_MONITORING = {
    "enabled": True,
    "start_timeout_seconds": 3600,
    "cancel_timeout_seconds": 3600,
    "max_runtime_seconds": 86400,
    "max_resume_run_attempts": 3,
    "poll_interval_seconds": 120,
}


PLACEHOLDER_RUN_ID = "ffffffff-ffff-4fff-bfff-ffffffffffff"


MARK_BASE = 1_111_000_000.0  # template event timestamps, replaced per run


log = logging.getLogger("benchmarks.monitor_pass")
