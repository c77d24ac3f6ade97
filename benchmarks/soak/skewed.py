"""Runs launched from a host whose clock is off: started under faketime by ``system.Skewed``,
this process launches each run id it reads on stdin (home ``b``: no run queue), so that the
run worker (and, under DefaultRunLauncher, the code server that starts it) inherit the clock."""

import os
import sys

from dagster import DagsterInstance
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget


def main() -> None:
    instance = DagsterInstance.get()
    target = WorkspaceFileTarget(paths=[os.path.join(os.environ["DAGSTER_HOME"], "workspace.yaml")])
    with WorkspaceProcessContext(instance, target) as context:
        for line in sys.stdin:
            run_id = line.strip()
            try:
                instance.launch_run(run_id, context.create_request_context())
                print(f"launched {run_id}", flush=True)
            except Exception as error:  # the soak's checks see the run never started
                print(f"could not launch {run_id}: {error}", flush=True)


if __name__ == "__main__":
    main()
