"""On the real cluster of scripts/k8s-cluster: what a K8sRunLauncher health check costs the
daemon's client (a GET of the run worker's Job) against one list of the namespace's Jobs,
which our daemon's checks answer from. N Jobs like the launcher's (the recorded one), their
pods bound to a node that does not exist, so none ever starts; all removed at the end.

    .venv/bin/python -m benchmarks.k8s_cluster_reads 300
"""

import copy
import json
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dagster import DagsterInstance
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
from kubernetes import client as k8s
from kubernetes import config

from dagster_run_monitor.config.dagster_yaml import instance_config, write_dagster_yaml
from dagster_run_monitor.launchers.kubernetes import launcher as k8s_launcher
from dagster_run_monitor.storage.answers import PassAnswers, answering
from dagster_run_monitor_tests.support.fake_k8s import RECORDED_JOB

KUBECONFIG = "/tmp/dagster-run-monitor-k8s/kubeconfig"


def job_like_the_launchers(run_id: str) -> dict:
    job = copy.deepcopy(json.loads(RECORDED_JOB.read_text()))
    labels = {**job["metadata"]["labels"], "dagster/run-id": run_id}
    template = job["spec"]["template"]
    template["metadata"]["labels"] = {
        k: v
        for k, v in template["metadata"]["labels"].items()
        if k not in ("controller-uid", "job-name")
    }
    template["spec"]["nodeName"] = "no-such-node"
    spec = {k: v for k, v in job["spec"].items() if k != "selector"}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": f"dagster-run-{run_id}", "labels": labels},
        "spec": spec,
    }


def main(n: int) -> None:
    config.load_kube_config(KUBECONFIG)
    core, batch = k8s.CoreV1Api(), k8s.BatchV1Api()
    namespace = f"run-monitor-reads-{uuid.uuid4().hex[:6]}"
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
    try:
        home = tempfile.mkdtemp()
        launcher = {
            "module": "dagster_k8s",
            "class": "K8sRunLauncher",
            "config": {
                "service_account_name": "default",
                "instance_config_map": "dagster-instance",
                "dagster_home": "/opt/dagster/dagster_home",
                "job_image": "127.0.0.1:9/missing:1",
                "image_pull_policy": "Never",
                "job_namespace": namespace,
                "load_incluster_config": False,
                "kubeconfig_file": KUBECONFIG,
            },
        }
        write_dagster_yaml(Path(home), instance_config({"enabled": True}, launcher, None))
        instance = DagsterInstance.from_config(home)  # the launcher holds it weakly
        run_launcher = instance.run_launcher
        k8s_launcher.prepare(run_launcher)
        runs = []
        for _ in range(n):
            run_id = str(uuid.uuid4())
            batch.create_namespaced_job(namespace, job_like_the_launchers(run_id))
            runs.append(DagsterRun("bench_job", run_id=run_id, status=DagsterRunStatus.STARTED))
        answers = PassAnswers({run.run_id: 0 for run in runs})

        def check(run: DagsterRun) -> str:
            with answering(answers):
                return run_launcher.check_run_worker_health(run).status.value

        for threads in (1, 16):
            cpu, wall = time.process_time(), time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                found = set(pool.map(check, runs))
            cpu, wall = (time.process_time() - cpu) / n * 1000, time.perf_counter() - wall
            print(
                f"{n} checks, a GET each, {threads} thread(s): {cpu:.2f} ms CPU a check,"
                f" {wall:.2f} s in all, {found}"
            )
        cpu, wall = time.process_time(), time.perf_counter()
        listed = k8s_launcher.job_statuses(run_launcher, runs)
        cpu, wall = (time.process_time() - cpu) * 1000, time.perf_counter() - wall
        print(
            f"one list: {len(listed)} Jobs, {cpu:.0f} ms CPU ({cpu / len(listed):.3f} a Job),"
            f" {wall:.2f} s"
        )
        answers = PassAnswers({run.run_id: 0 for run in runs}, listed)
        cpu = time.process_time()
        found = {check(run) for run in runs}
        cpu = (time.process_time() - cpu) / n * 1000
        print(f"{n} checks answered from the list: {cpu:.3f} ms CPU a check, {found}")
    finally:
        core.delete_namespace(namespace)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
