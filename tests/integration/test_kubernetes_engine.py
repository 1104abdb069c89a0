"""`servegate up --engine kubernetes` against an in-memory Kubernetes API served over real HTTP
(tests/kube_api), through the official client, with a kubelet that runs each pod's container as a
real replica process on the pod's own loopback address (tests/kube_kubelet.py).

Covered: a service becomes a Deployment, a Service and a Secret, applied with server-side apply by
one field manager and scaled through the scale subresource; requests reach the pods; a new model
makes a new Deployment and the old one is drained and deleted with no failed request; a canary
splits traffic between two Deployments; scaling up and down; a dropped watch goes on; the gateway
restarts and adopts its pods without restarting them; deleting the service deletes what it made;
a manifest the cluster would refuse is refused at apply; no cluster, or a service account without
a permission, stops `servegate up` with the reason.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway_helpers import ControlApi, Load, python_isvc, revision, traffic
from tests.kube_api import KubeApi, Rules, kube_api
from tests.kube_kubelet import ProcessKubelet
from tests.servers import GatewayProcess, free_port, until

pytestmark = pytest.mark.integration

NAMESPACE = "models"
BODY = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}]}
SELECTOR = "app.kubernetes.io/managed-by=servegate"


class Cluster:
    """The fake API, its kubelet, and the module's gateway (restarted by one test)."""

    def __init__(self, api: KubeApi, kubelet: ProcessKubelet, state_dir: Path, kubeconfig: Path) -> None:
        self.api, self.kubelet, self.state_dir, self.kubeconfig = api, kubelet, state_dir, kubeconfig
        self.pod_ports = f"{free_port()},{free_port()}"
        self.gateway = self._start()
        self.control = ControlApi(self.gateway.url, self.gateway.token)

    def _start(self) -> GatewayProcess:
        args = ("--engine", "kubernetes", "--kubeconfig", str(self.kubeconfig), "--namespace", NAMESPACE)
        gateway = GatewayProcess(self.state_dir, *args, "--pod-ports", self.pod_ports, "--drain-timeout", "5")
        gateway.wait_live(timeout=60)
        return gateway

    def restart(self) -> None:
        self.control.close()
        assert self.gateway.stop() == 0, self.gateway.output()[-5000:]
        self.gateway = self._start()
        self.control = ControlApi(self.gateway.url, self.gateway.token)

    def stop(self) -> None:
        self.control.close()
        assert self.gateway.stop() == 0, self.gateway.output()[-5000:]

    def objects(self, plural: str, group_version: str = "v1") -> list[dict[str, Any]]:
        return self.api.list(group_version, plural, NAMESPACE, label_selector=SELECTOR)

    def names(self, plural: str, group_version: str = "v1") -> list[str]:
        return sorted(o["metadata"]["name"] for o in self.objects(plural, group_version))

    def pods(self, revision_name: str) -> list[dict[str, Any]]:
        return self.api.list(
            "v1", "pods", NAMESPACE, label_selector=f"serving.servegate.io/revision={revision_name}"
        )

    def infer(self, model: str) -> httpx.Response:
        return httpx.post(
            f"{self.gateway.url}/v2/models/{model}/infer", json=BODY, headers=self.gateway.headers, timeout=10
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("kubernetes")
    kubelet = ProcessKubelet(root / "pods")
    with kube_api(kubelet=kubelet) as api:
        kubelet.attach(api)
        kubeconfig = api.write_kubeconfig(root / "kubeconfig", namespace=NAMESPACE)
        running = Cluster(api, kubelet, root / "state", kubeconfig)
        try:
            yield running
        finally:
            running.stop()


def test_a_service_is_a_deployment_a_service_and_a_secret_applied_server_side(cluster: Cluster) -> None:
    cluster.control.apply(python_isvc("echo", "SlowStart"))
    cluster.control.wait_ready("echo", timeout=60)
    name = revision("echo", 1)
    [deployment] = cluster.objects("deployments", "apps/v1")
    labels = deployment["metadata"]["labels"]
    assert labels["serving.kserve.io/inferenceservice"] == "echo" and labels["component"] == "predictor"
    assert cluster.names("services") == [name]
    assert cluster.names("secrets") == [f"{name}-credentials"]
    # Everything servegate wrote is a server-side apply by its one field manager, or the scale.
    writes = [r for r in cluster.api.requests if r.verb not in ("get", "list", "watch")]
    assert {r.field_manager for r in writes} == {"servegate"}, writes
    assert {r.verb for r in writes} <= {"apply", "patch"}, writes
    assert any(r.path.endswith(f"/deployments/{name}/scale") for r in writes)
    response = cluster.infer("echo")
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [2.0, 4.0]
    status = cluster.control.status("echo")
    [pool] = status["components"]["predictor"]["replicas"].values()
    [replica] = pool["replicas"]
    assert replica["node"] == "kube-api-fake-node" and replica["state"] == "Ready"


def test_a_new_model_is_a_new_deployment_and_traffic_moves_without_a_failed_request(cluster: Cluster) -> None:
    with Load(cluster.gateway.url, "echo", BODY, concurrency=4, token=cluster.gateway.token) as load:
        load.wait_count(30)
        cluster.control.apply(python_isvc("echo", "SlowStart", env={"VERSION": "2"}))
        load.wait_for(revision("echo", 2))
        load.wait_count(len(load.snapshot()) + 30)
    assert load.failures() == []
    assert traffic(cluster.control.status("echo")) == {revision("echo", 2): 100}
    # The previous revision stays, warm, for an instant rollback (as with the other engines).
    assert cluster.names("deployments", "apps/v1") == [revision("echo", 1), revision("echo", 2)]


def test_a_canary_splits_traffic_and_a_retired_revision_is_deleted(cluster: Cluster) -> None:
    canary = python_isvc("echo", "SlowStart", env={"VERSION": "3"}, predictor={"canaryTrafficPercent": 50})
    cluster.control.apply(canary)
    split = {revision("echo", 2): 50, revision("echo", 3): 50}
    until(lambda: traffic(cluster.control.status("echo")) == split, 60, "the 50/50 split")
    until(lambda: _ready(cluster, "echo", revision("echo", 3)) == 1, 60, "the canary ready")
    seen = {cluster.infer("echo").headers["x-servegate-revision"] for _ in range(40)}
    assert seen == {revision("echo", 2), revision("echo", 3)}
    with Load(cluster.gateway.url, "echo", BODY, concurrency=4, token=cluster.gateway.token) as load:
        load.wait_count(20)
        assert cluster.control.promote("echo").status_code == 200
        # revision 1 is neither serving nor the previous one any more: drained, then deleted
        until(
            lambda: revision("echo", 1) not in cluster.names("deployments", "apps/v1"), 60, "revision 1 to go"
        )
        load.wait_count(len(load.snapshot()) + 20)
    assert load.failures() == []
    assert cluster.names("deployments", "apps/v1") == [revision("echo", 2), revision("echo", 3)]
    assert f"{revision('echo', 1)}-credentials" not in cluster.names("secrets")


def test_scaling_up_and_down_and_a_dropped_watch(cluster: Cluster) -> None:
    name = revision("echo", 3)
    manifest = python_isvc(
        "echo", "SlowStart", env={"VERSION": "3"}, predictor={"minReplicas": 3, "maxReplicas": 3}
    )
    cluster.api.drop_watches(abort=True)  # the gateway's pod watch goes on from where it was
    cluster.control.apply(manifest)
    until(lambda: _ready(cluster, "echo", name) == 3, 60, "3 ready replicas")
    deployment = cluster.api.get("apps/v1", "deployments", NAMESPACE, name)
    assert deployment is not None and deployment["spec"]["replicas"] == 3
    addresses = {p["status"]["podIP"] for p in cluster.pods(name)}
    assert len(addresses) == 3
    seen = set()
    for _ in range(30):
        assert cluster.infer("echo").status_code == 200
    seen = {r["id"] for r in _replicas(cluster, "echo", name)}
    assert len(seen) == 3
    manifest["spec"]["predictor"].update(minReplicas=1, maxReplicas=1)
    cluster.control.apply(manifest)
    until(lambda: len(cluster.pods(name)) == 1 and _ready(cluster, "echo", name) == 1, 60, "1 replica")


def test_a_restarted_gateway_adopts_its_pods_without_restarting_them(cluster: Cluster) -> None:
    before = {p["metadata"]["name"] for p in cluster.objects("pods")}
    started = len(cluster.kubelet.started)
    cluster.restart()
    cluster.control.wait_ready("echo", timeout=60)
    assert cluster.infer("echo").status_code == 200
    assert {p["metadata"]["name"] for p in cluster.objects("pods")} == before
    assert len(cluster.kubelet.started) == started


def test_deleting_the_service_deletes_what_it_made(cluster: Cluster) -> None:
    assert cluster.control.delete("echo").status_code == 200

    def left() -> list[str]:
        plurals = [("deployments", "apps/v1"), ("pods", "v1"), ("services", "v1"), ("secrets", "v1")]
        return [name for plural, group in plurals for name in cluster.names(plural, group)]

    until(lambda: left() == [], 60, "nothing left")


def test_a_manifest_the_cluster_would_refuse_is_refused_at_apply(cluster: Cluster) -> None:
    local = python_isvc("local", "SlowStart")
    local["spec"]["predictor"]["model"]["storageUri"] = "/models/iris.onnx"
    local["spec"]["predictor"]["model"]["modelFormat"] = {"name": "onnx"}
    long = python_isvc("x" * 46, "SlowStart")
    response = cluster.control.apply_text(_list(local, long))
    assert response.status_code == 400, response.text
    problems = {(p["path"], p["message"].split(",")[0]) for p in response.json()["problems"]}
    assert (
        "InferenceService/local: spec.predictor.model.storageUri",
        "a path on the gateway's machine",
    ) in problems
    assert (
        f"InferenceService/{'x' * 46}: metadata.name",
        "at most 45 characters on Kubernetes: its revisions are named NAME-transformer-00001",
    ) in problems
    assert cluster.objects("deployments", "apps/v1") == []


def _list(*items: dict[str, Any]) -> str:
    import json

    return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(items)})


def _replicas(cluster: Cluster, name: str, revision_name: str | None = None) -> list[dict[str, Any]]:
    pools = cluster.control.status(name)["components"]["predictor"]["replicas"]
    return [r for rev, pool in pools.items() if revision_name in (None, rev) for r in pool["replicas"]]


def _ready(cluster: Cluster, name: str, revision_name: str | None = None) -> int:
    return sum(r["state"] == "Ready" for r in _replicas(cluster, name, revision_name))


# -- no cluster, no permission ---------------------------------------------------------------------


def _up(tmp_path: Path, kubeconfig: Path) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "serving",
        "up",
        "--engine",
        "kubernetes",
        "--kubeconfig",
        str(kubeconfig),
    ]
    command += ["--namespace", NAMESPACE, "--http-port", str(free_port()), "--grpc-port", str(free_port())]
    command += ["--state-dir", str(tmp_path / "state")]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_a_service_account_without_a_permission_is_told_which(tmp_path: Path) -> None:
    reader = Rules(allow=[("list", "", "pods"), ("list", "", "services")])
    with kube_api(tokens={"reader": reader}, controllers=False) as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", token="reader", namespace=NAMESPACE)
        done = _up(tmp_path, kubeconfig)
    assert done.returncode == 1, done.stderr
    assert (
        'deployments.apps is forbidden: User "system:serviceaccount:servegate:servegate" cannot list '
        'resource "deployments" in API group "apps" in the namespace "models"'
    ) in done.stderr, done.stderr


def test_no_reachable_cluster_is_said(tmp_path: Path) -> None:
    with kube_api(controllers=False) as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    # the server has stopped: nothing listens at its address any more
    done = _up(tmp_path, kubeconfig)
    assert done.returncode == 1, done.stderr
    assert "cannot reach the Kubernetes API at http://127.0.0.1:" in done.stderr, done.stderr
