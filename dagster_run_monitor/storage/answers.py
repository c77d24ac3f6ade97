"""What the daemon already knows, which Dagster's calls made for it answer from.

A launcher asked about one run at a time can cost a query or an API call per run per pass:
``K8sRunLauncher`` counts the run's resumes (an event-log query, to name its Job) and reads
the Job's status (an API call); ``EcsRunLauncher`` reads the run again (a query) and
describes its task (an API call, where the API takes 100 tasks). The pass reads these for
every run at once (one query, one list of Jobs per namespace, a description per 100 tasks)
and, in its health-check threads only, the launchers' reads answer from them. Everything
else (a resume, a terminate, a question about a run the pass did not read) asks storage or
the API, as Dagster does.

While a launcher resumes a run for the daemon, the daemon knows the run as it just wrote it
(under the run's claim): a tag write that changes nothing is left out (``K8sRunLauncher``
writes its image tag on every resume, a read and two writes).
"""

import contextlib
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PassAnswers:
    resume_counts: Mapping[str, int] = field(default_factory=dict)  # run id -> resumes
    job_statuses: Mapping[tuple[str, str], Any] = field(default_factory=dict)  # (ns, Job)
    ecs_tasks: Mapping[tuple[str, str], Any] = field(default_factory=dict)  # (cluster, task ARN)
    runs: Mapping[str, Any] = field(default_factory=dict)  # run id -> DagsterRun, as read


_PASS = threading.local()


@contextlib.contextmanager
def _holding(name: str, value: Any) -> Iterator[None]:
    previous = getattr(_PASS, name, None)
    setattr(_PASS, name, value)
    try:
        yield
    finally:
        setattr(_PASS, name, previous)


def answering(answers: PassAnswers | None) -> contextlib.AbstractContextManager[None]:
    """In this thread, answer from ``answers`` (None: from nothing)."""
    return _holding("answers", answers)


def resume_count(run_id: str) -> int | None:
    """The run's resume count, if this thread answers it from the pass."""
    answers: PassAnswers | None = getattr(_PASS, "answers", None)
    return answers.resume_counts.get(run_id) if answers is not None else None


def job_status(namespace: str, job_name: str) -> tuple[bool, Any]:
    """(known, the Job's status) if this thread answers it from the pass's list of Jobs."""
    answers: PassAnswers | None = getattr(_PASS, "answers", None)
    if answers is None or (namespace, job_name) not in answers.job_statuses:
        return False, None
    return True, answers.job_statuses[(namespace, job_name)]


def ecs_task(cluster: str, arn: str) -> tuple[bool, Any]:
    """(known, the task's document) if this thread answers it from the pass's descriptions."""
    answers: PassAnswers | None = getattr(_PASS, "answers", None)
    if answers is None or (cluster, arn) not in answers.ecs_tasks:
        return False, None
    return True, answers.ecs_tasks[(cluster, arn)]


def run_of(run_id: str) -> Any:
    """The run as the pass read it, if this thread answers from the pass (else None)."""
    answers: PassAnswers | None = getattr(_PASS, "answers", None)
    return answers.runs.get(run_id) if answers is not None else None


def resuming(run: Any) -> contextlib.AbstractContextManager[None]:
    """In this thread, ``run`` (a ``DagsterRun``) is known as stored while it is resumed."""
    return _holding("run", run)


def already_tagged(run_id: str, tags: Mapping[str, str]) -> bool:
    """True if this thread resumes the run and it already has every one of ``tags``."""
    run = getattr(_PASS, "run", None)
    return (
        run is not None
        and run.run_id == run_id
        and all(run.tags.get(key) == value for key, value in tags.items())
    )


def tagged(run_id: str, tags: Mapping[str, str]) -> None:
    """The run this thread resumes now has ``tags`` too."""
    run = getattr(_PASS, "run", None)
    if run is not None and run.run_id == run_id:
        _PASS.run = run.with_tags({**run.tags, **tags})
