"""The benchmark's ``docker`` launchers: Dagster's ``DockerRunLauncher``, unchanged, on the real
engine (``EngineDockerRunLauncher``, its HTTP requests counted) or with its docker client
objects faked (``LatencyDockerRunLauncher``, ``dagster_run_monitor_tests.support.fake_docker``).
A module of its own: docker-py is imported only where it is used."""

import re
import threading
from collections import Counter
from typing import Any

import requests
from dagster_docker import DockerRunLauncher
from docker.api.client import APIClient

from benchmarks.launcher import DEFAULT_LATENCY_SECONDS, CountedHealthChecks, latency_field
from dagster_run_monitor_tests.support.fake_docker import (
    ENGINE,
    FakeDockerEngine,
    FakeEngineDockerRunLauncher,
)

_ID = re.compile(r"/[0-9a-f]{64}(?=/|$)")
_VERSION_PREFIX = re.compile(r"^/v\d+\.\d+")


class EngineRequests:
    """Every HTTP request docker-py's clients send in this process, counted by method and path
    (container ids and the API version left out), e.g. ``GET /containers/{id}/json``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.call_count = 0
        self._installed = False

    def install(self) -> None:
        if self._installed:
            return
        self._installed = True
        send = requests.Session.send

        def counting_send(client: APIClient, request: Any, **kwargs: Any) -> Any:
            self.record(request.method, request.path_url)
            return send(client, request, **kwargs)

        APIClient.send = counting_send  # type: ignore[method-assign]

    def record(self, method: str, path: str) -> None:
        path = _ID.sub("/{id}", _VERSION_PREFIX.sub("", path.split("?", 1)[0]))
        with self._lock:
            self.call_count += 1
            self.calls[f"{method} {path}"] += 1


ENGINE_REQUESTS = EngineRequests()


class _Counted(CountedHealthChecks):
    """Counts calls of ``check_run_worker_health``; ``api_calls`` and ``api_by_call``: the API
    calls ``api`` counted (every launcher's)."""

    def _count(self, api: EngineRequests | FakeDockerEngine) -> None:
        self._api = api

    @property
    def api_calls(self) -> int:
        return self._api.call_count

    @property
    def api_by_call(self) -> Counter[str]:
        return self._api.calls


class EngineDockerRunLauncher(_Counted, DockerRunLauncher):
    """Dagster's ``DockerRunLauncher`` on the real engine (``DOCKER_HOST``); its API calls are
    the HTTP requests sent to it."""

    def __init__(self, **kwargs: Any) -> None:
        ENGINE.disable()
        ENGINE_REQUESTS.install()
        super().__init__(**kwargs)
        self._count(ENGINE_REQUESTS)


class LatencyDockerRunLauncher(_Counted, FakeEngineDockerRunLauncher):
    """Dagster's ``DockerRunLauncher``, only its docker client objects faked: each API call
    takes ``latency_seconds``; a container the fake has no record of reads as running (a
    healthy worker), so N workers need no objects; the crash storm records exited ones."""

    def __init__(self, latency_seconds: float = DEFAULT_LATENCY_SECONDS, **kwargs: Any) -> None:
        ENGINE.latency_seconds = latency_seconds
        ENGINE.default_running = True
        super().__init__(**kwargs)
        self._count(ENGINE)

    @classmethod
    def config_type(cls) -> dict:
        return {
            **DockerRunLauncher.config_type(),
            "latency_seconds": latency_field(),
        }
