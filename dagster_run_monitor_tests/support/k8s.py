"""The one-node cluster of scripts/k8s-cluster, for the Kubernetes tests and the soak: a
namespace with the service account run workers use, Dagster's K8sRunLauncher configured for
this cluster (host network, the local image, the host's Python and code mounted), the
instance ConfigMap its pods read, and a run worker's Docker container."""

import os
import sys
from pathlib import Path
from typing import Any

from dagster_run_monitor_tests.support.subprocesses import REPO_ROOT

CLUSTER_DIR = Path(os.environ.get("DAGSTER_RUN_MONITOR_K8S_DIR", "/tmp/dagster-run-monitor-k8s"))
KUBECONFIG = CLUSTER_DIR / "kubeconfig"
NODE = "localhost"
IMAGE = "dagster-run-monitor-worker:bookworm"  # scripts/docker-engine's, loaded, never pulled
DOCKER_HOST = "unix:///tmp/dagster-run-monitor-docker/docker.sock"  # scripts/docker-engine's
INSTANCE_CONFIG_MAP = "dagster-instance"
POD_DAGSTER_HOME = "/opt/dagster/dagster_home"  # where the launcher mounts the ConfigMap


def cluster_unavailable() -> str | None:
    """None if the cluster of scripts/k8s-cluster answers and its node is Ready."""
    if not KUBECONFIG.exists():
        return f"no {KUBECONFIG}: run scripts/k8s-cluster start (root, apt; builds Kubernetes once)"
    try:
        import kubernetes

        api = kubernetes.config.new_client_from_config(str(KUBECONFIG))
        node = kubernetes.client.CoreV1Api(api).read_node(NODE, _request_timeout=5)
    except Exception as exc:
        return f"the cluster of {KUBECONFIG} does not answer ({type(exc).__name__}: {exc})"
    ready = [c.status for c in node.status.conditions or [] if c.type == "Ready"]
    if ready != ["True"]:
        return f"node {NODE} is not Ready"
    return None


def apis() -> tuple[Any, Any, Any]:
    """CoreV1Api, BatchV1Api and RbacAuthorizationV1Api on the cluster's kubeconfig."""
    import kubernetes
    from kubernetes import client as k8s

    api = kubernetes.config.new_client_from_config(str(KUBECONFIG))
    return k8s.CoreV1Api(api), k8s.BatchV1Api(api), k8s.RbacAuthorizationV1Api(api)


def create_namespace(name: str) -> None:
    """A namespace with the service account ``dagster`` that run workers use to create step
    Jobs (in-cluster config), with what the Helm chart's Role grants them."""
    from kubernetes import client as k8s

    from dagster_run_monitor_tests.support.subprocesses import wait_until

    core, _, rbac = apis()
    meta = k8s.V1ObjectMeta
    core.create_namespace(k8s.V1Namespace(metadata=meta(name=name)))
    core.create_namespaced_service_account(
        name, k8s.V1ServiceAccount(metadata=meta(name="dagster"))
    )
    rule = k8s.V1PolicyRule(
        api_groups=["", "batch"],
        resources=["jobs", "jobs/status", "pods", "pods/log", "pods/status", "events"],
        verbs=["*"],
    )
    rbac.create_namespaced_role(name, k8s.V1Role(metadata=meta(name="dagster"), rules=[rule]))
    rbac.create_namespaced_role_binding(
        name,
        k8s.V1RoleBinding(
            metadata=meta(name="dagster"),
            role_ref=k8s.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="dagster"
            ),
            subjects=[k8s.RbacV1Subject(kind="ServiceAccount", name="dagster", namespace=name)],
        ),
    )
    wait_until(  # the token controller makes the account's token secret
        lambda: core.read_namespaced_service_account("dagster", name).secrets,
        60,
        "the service account's token",
    )


def delete_namespace(name: str, timeout: float = 180) -> None:
    """Delete the namespace and wait until it is gone (one still terminating refuses to be
    made again under its name)."""
    from kubernetes import client as k8s

    from dagster_run_monitor_tests.support.subprocesses import wait_until

    core, _, _ = apis()
    core.delete_namespace(name, grace_period_seconds=0)

    def gone() -> bool:
        try:
            core.read_namespace(name)
        except k8s.rest.ApiException as error:
            if error.status == 404:
                return True
            raise
        return False

    wait_until(gone, timeout, f"namespace {name} to be deleted", interval=1)


def launcher_config(
    namespace: str,
    writable: list[str],
    env: list[str] = (),  # type: ignore[assignment]
    pod_spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Dagster's K8sRunLauncher as a Helm deployment configures it, plus what this cluster
    needs: host network, the local image, the host's Python and code mounted read-only at the
    same paths, and the ``writable`` host paths."""
    mounts = {str(REPO_ROOT): True, sys.base_prefix: True, sys.prefix: True, str(KUBECONFIG): True}
    mounts.update({path: False for path in writable})
    volumes = [{"name": f"host-{i}", "host_path": {"path": path}} for i, path in enumerate(mounts)]
    volume_mounts = [
        {"name": f"host-{i}", "mount_path": path, "read_only": read_only}
        for i, (path, read_only) in enumerate(mounts.items())
    ]
    return {
        "module": "dagster_k8s",
        "class": "K8sRunLauncher",
        "config": {
            "service_account_name": "dagster",
            "instance_config_map": INSTANCE_CONFIG_MAP,
            "dagster_home": POD_DAGSTER_HOME,
            "job_image": IMAGE,
            "image_pull_policy": "Never",
            "job_namespace": namespace,
            "load_incluster_config": False,
            "kubeconfig_file": str(KUBECONFIG),  # the daemon's; run workers load it too
            "env_vars": [
                f"PATH={Path(sys.executable).parent}:/usr/bin:/bin",
                "HOME=/tmp",
                "DAGSTER_DISABLE_TELEMETRY=1",
                # The in-cluster config of step-launching run workers: the API server on
                # loopback (the container's env wins over the injected service variables).
                "KUBERNETES_SERVICE_HOST=127.0.0.1",
                "KUBERNETES_SERVICE_PORT=6443",
                *env,
            ],
            "volumes": volumes,
            "volume_mounts": volume_mounts,
            # Run worker and step pods: the host's network only (k8s_job_executor's step pods
            # inherit the launcher's run_k8s_config).
            "run_k8s_config": {"pod_spec_config": {"host_network": True, **(pod_spec or {})}},
        },
    }


def put_instance_config_map(namespace: str, dagster_yaml: str) -> None:
    """The ConfigMap the launcher mounts as the pods' DAGSTER_HOME."""
    from kubernetes import client as k8s

    core, _, _ = apis()
    config_map = k8s.V1ConfigMap(
        metadata=k8s.V1ObjectMeta(name=INSTANCE_CONFIG_MAP), data={"dagster.yaml": dagster_yaml}
    )
    try:
        core.replace_namespaced_config_map(INSTANCE_CONFIG_MAP, namespace, config_map)
    except k8s.rest.ApiException:
        core.create_namespaced_config_map(namespace, config_map)


def worker_containers(namespace: str, run_id: str) -> list[Any]:
    """The Docker containers of the run worker's pods (the kubelet's dockershim names them)."""
    import docker

    os.environ.setdefault("DOCKER_HOST", DOCKER_HOST)
    found = docker.from_env().containers.list(
        filters={
            "label": [
                f"io.kubernetes.pod.namespace={namespace}",
                "io.kubernetes.container.name=dagster",
            ]
        }
    )
    return [
        container
        for container in found
        if container.labels["io.kubernetes.pod.name"].startswith(f"dagster-run-{run_id}")
    ]


def kubelet_pid() -> int:
    return int((CLUSTER_DIR / "kubelet.pid").read_text())
