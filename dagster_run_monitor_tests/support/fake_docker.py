"""A fake Docker engine under the real ``dagster_docker.DockerRunLauncher``.

Only the docker-py client objects the launcher calls are faked: ``docker.client.from_env()``
(with docker-py 7's default ``version="auto"`` a ``GET /version`` round trip, so one API call),
``client.containers.get`` / ``create``, ``container.start`` / ``stop`` / ``logs`` and
``client.login``. Health checks, resume, terminate and the launcher's container arguments are
dagster-docker's own code. Every API call sleeps ``latency_seconds`` and is counted by the
request docker-py would send (``containers.create`` is two: docker-py reads the new container
back with ``GET /containers/{id}/json``).

``ENGINE.enable()`` points ``docker.client.from_env`` (the name dagster-docker calls) at the
fake, for the whole process, until ``ENGINE.disable()``.
"""

import copy
import json
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import docker
import docker.client
import docker.errors
from dagster_docker import DockerRunLauncher

RECORDED = Path(__file__).resolve().parent.parent / "recorded"
# What `docker inspect` showed for a worker the kernel OOM-killed (recorded on the test engine).
OOM_KILLED_STATE: dict[str, Any] = json.loads(
    (RECORDED / "docker_state_oom_killed.json").read_text()
)
RUNNING_STATE: dict[str, Any] = {
    **OOM_KILLED_STATE,
    "Status": "running",
    "Running": True,
    "OOMKilled": False,
    "Pid": 4242,
    "ExitCode": 0,
    "FinishedAt": "0001-01-01T00:00:00Z",
}
WORKER_LOG = b"Started execution of run.\nLoading the day's orders into memory...\n"
_REAL_FROM_ENV = docker.client.from_env


class FakeContainer:
    """What docker-py's ``Container`` model gives the launcher: ``id``, ``short_id``,
    ``status`` (from ``attrs["State"]``) and ``attrs``; start, stop and logs are API calls."""

    def __init__(self, engine: "FakeDockerEngine", attrs: dict[str, Any]) -> None:
        self._engine = engine
        self.attrs = attrs

    @property
    def id(self) -> str:
        return self.attrs["Id"]

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def status(self) -> str:
        return self.attrs["State"]["Status"]

    def start(self, **_: Any) -> None:
        self._engine.call("POST /containers/{id}/start")
        self._engine.set_state(self.id, RUNNING_STATE)

    def stop(self, timeout: int | None = None, **_: Any) -> None:
        self._engine.call("POST /containers/{id}/stop")
        self._engine.set_state(self.id, {**RUNNING_STATE, "Status": "exited", "Running": False})

    def logs(self, **_: Any) -> bytes:
        self._engine.call("GET /containers/{id}/logs")
        return WORKER_LOG


class FakeContainers:
    """``client.containers``: get and create."""

    def __init__(self, engine: "FakeDockerEngine") -> None:
        self._engine = engine

    def get(self, container_id: str) -> FakeContainer:
        self._engine.call("GET /containers/{id}/json")
        return FakeContainer(self._engine, self._engine.inspect(container_id))

    def create(self, image: str, command: Any = None, **kwargs: Any) -> FakeContainer:
        self._engine.call("POST /containers/create")
        attrs = self._engine.add(image, command, kwargs.get("labels") or {})
        self._engine.call("GET /containers/{id}/json")  # docker-py reads the container back
        return FakeContainer(self._engine, attrs)


class FakeDockerClient:
    """A ``docker.DockerClient`` as the launcher uses it; any other attribute is recorded in
    ``ENGINE.unexpected`` (pulling an image, for one, is never faked)."""

    def __init__(self, engine: "FakeDockerEngine") -> None:
        self._engine = engine
        self.containers = FakeContainers(engine)

    def login(self, registry: str | None = None, **_: Any) -> dict[str, str]:
        self._engine.call("POST /auth")
        return {"Status": "Login Succeeded"}

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_"):
            self._engine.unexpected.append(f"DockerClient.{name}")
        raise AttributeError(name)


class FakeDockerEngine:
    """Containers by id, and a count of every API call. A container the engine has no record
    of reads as running (``default_running``; False: it does not exist, 404), so N healthy
    workers need no objects; ``put_state`` records one that crashed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.containers: dict[str, dict[str, Any]] = {}
            self.calls: Counter[str] = Counter()  # by request, ids left out
            self.call_count = 0
            self.latency_seconds = 0.0
            self.default_running = True
            self.unexpected: list[str] = []

    def enable(self) -> None:
        docker.client.from_env = self.from_env  # type: ignore[assignment]

    def disable(self) -> None:
        docker.client.from_env = _REAL_FROM_ENV  # type: ignore[assignment]

    # --- what tests do to the engine ---------------------------------------------------------

    def put_state(self, container_id: str, state: dict[str, Any] | None = None) -> None:
        """The container is in ``state`` (default: exited, OOMKilled, exit code 137)."""
        attrs = {"Id": container_id, "Image": "", "Config": {"Labels": {}}}
        with self._lock:
            self.containers[container_id] = attrs | {"State": dict(state or OOM_KILLED_STATE)}

    def forget(self) -> None:
        """No container on record any more (calls stay counted)."""
        with self._lock:
            self.containers.clear()

    def state(self, container_id: str) -> str | None:
        """The recorded container's status (None: no record)."""
        with self._lock:
            attrs = self.containers.get(container_id)
            return None if attrs is None else attrs["State"]["Status"]

    # --- the API ------------------------------------------------------------------------------

    def call(self, request: str) -> None:
        with self._lock:
            self.call_count += 1
            self.calls[request] += 1
        if self.latency_seconds:
            time.sleep(self.latency_seconds)

    def from_env(self, **_: Any) -> FakeDockerClient:
        self.call("GET /version")  # docker-py's version="auto": one round trip per client
        return FakeDockerClient(self)

    def inspect(self, container_id: str) -> dict[str, Any]:
        with self._lock:
            attrs = self.containers.get(container_id)
            if attrs is not None:
                return copy.deepcopy(attrs)
        if not self.default_running:
            raise docker.errors.NotFound(f"No such container: {container_id}")
        return {"Id": container_id, "State": dict(RUNNING_STATE)}

    def add(self, image: str, command: Any, labels: dict[str, str]) -> dict[str, Any]:
        container_id = uuid.uuid4().hex + uuid.uuid4().hex  # 64 hex digits, like Docker's
        state = {**RUNNING_STATE, "Status": "created", "Running": False, "Pid": 0}
        attrs = {"Id": container_id, "Image": image, "Config": {"Labels": dict(labels)}}
        with self._lock:
            self.containers[container_id] = {**attrs, "State": state}
        return copy.deepcopy(attrs | {"State": state})

    def set_state(self, container_id: str, state: dict[str, Any]) -> None:
        with self._lock:
            self.containers[container_id]["State"] = dict(state)


ENGINE = FakeDockerEngine()  # the engine every FakeEngineDockerRunLauncher talks to


class FakeEngineDockerRunLauncher(DockerRunLauncher):
    """The real ``DockerRunLauncher``, its docker client pointed at :data:`ENGINE`. Takes
    DockerRunLauncher's own config."""

    def __init__(self, **kwargs: Any) -> None:
        ENGINE.enable()
        super().__init__(**kwargs)
