"""Step events as Dagster's executors write them, for runs a test or the benchmark builds."""

import os
from typing import Any

from dagster import DagsterEvent
from dagster._core.definitions.dependency import NodeHandle
from dagster._core.events import DagsterEventType
from dagster._core.execution.plan.handle import StepHandle
from dagster._core.execution.plan.step import StepKind
from dagster._core.storage.dagster_run import DagsterRun


def step_event(
    run: DagsterRun, step_key: str, event_type: DagsterEventType, data: Any, message: str
) -> DagsterEvent:
    """A step's event as ``DagsterEvent.from_step`` builds it."""
    handle = NodeHandle(step_key, None)
    return DagsterEvent(
        event_type_value=event_type.value,
        job_name=run.job_name,
        step_handle=StepHandle(handle),
        node_handle=handle,
        step_kind_value=StepKind.COMPUTE.value,
        logging_tags={"job_name": run.job_name, "step_key": step_key},
        event_specific_data=data,
        message=message,
        pid=os.getpid(),
    )
