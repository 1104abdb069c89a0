"""`servegate operator` as a real process between a Kubernetes API (the in-memory fake, serving
KServe's CRDs) and a real gateway: KServe objects created, changed and deleted in the cluster are
run, changed and deleted on the gateway, their status comes back in KServe's shape, a refused spec
says which field, dropped watches go on, one of two operators leads and the other takes over when
it dies, and a service account without a permission is told which."""

from __future__ import annotations

import copy
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes.client
import pytest

from serving.operator.crds import load_crds
from tests.gateway_helpers import ControlApi, condition, python_isvc, revision, traffic
from tests.kube_api import KubeApi, Rules, kube_api
from tests.servers import ROOT, GatewayProcess, ServerProcess, free_port, until

pytestmark = pytest.mark.integration

NS = "models"
#: the operators' own namespace, where their Lease lives (POD_NAMESPACE in a cluster).
HOME = "servegate"
GROUP = "serving.kserve.io"
FINALIZER = "serving.servegate.io/cleanup"
#: short leases and resyncs, so that a takeover and a status change take seconds.
FAST = ["--resync-seconds", "0.5", "--lease-seconds", "4"]


class OperatorProcess(ServerProcess):
    """`servegate operator` against `cluster` and `gateway`, named `pod` (POD_NAME), health on a free port."""

    def __init__(self, kubeconfig: Path, gateway: GatewayProcess, pod: str) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        port = self.url.rsplit(":", 1)[1]
        command = ["operator", "--kubeconfig", str(kubeconfig), "--namespace", NS, "--health-port", port]
        command += ["--gateway-url", gateway.url, "--token-file", str(gateway.state_dir / "admin.token")]
        super().__init__([*command, *FAST], env={"POD_NAME": pod, "POD_NAMESPACE": HOME})

    def health(self, path: str) -> tuple[int, str]:
        response = httpx.get(self.url + path, timeout=2.0, trust_env=False)
        return response.status_code, response.text.strip()

    def wait_for(self, path: str, timeout: float = 30.0) -> None:
        self._wait(path, timeout)


@pytest.fixture(scope="module")
def cluster() -> Iterator[KubeApi]:
    """The fake API with KServe's CRDs and the two namespaces; a token that may only read leases."""
    lease_reader = Rules([("get", "coordination.k8s.io", "leases")])
    with kube_api(controllers=False, tokens={"lease-reader": lease_reader}) as api:
        for crd in load_crds():
            api.put(crd)
        for name in (NS, HOME):
            api.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        yield api


@pytest.fixture(scope="module")
def kubeconfig(cluster: KubeApi, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cluster.write_kubeconfig(tmp_path_factory.mktemp("operator") / "kubeconfig", namespace=NS)


@pytest.fixture(scope="module")
def custom(cluster: KubeApi) -> kubernetes.client.CustomObjectsApi:
    """What `kubectl` would do: the official client as the cluster's admin."""
    return kubernetes.client.CustomObjectsApi(cluster.api_client())


@pytest.fixture(scope="module")
def operator(kubeconfig: Path, gateway: GatewayProcess) -> Iterator[OperatorProcess]:
    """The module's operator, the first to lead (a later test kills it)."""
    process = OperatorProcess(kubeconfig, gateway, "operator-1")
    try:
        process.wait_for("/readyz")
        yield process
    finally:
        process.stop()


# -- helpers -----------------------------------------------------------------------------------------


def _version(kind: str) -> str:
    return "v1beta1" if kind == "InferenceService" else "v1alpha1"


def _plural(kind: str) -> str:
    return kind.lower() + "s"


def _create(custom: kubernetes.client.CustomObjectsApi, obj: dict[str, Any]) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj["metadata"]["namespace"] = NS
    kind = obj["kind"]
    return custom.create_namespaced_custom_object(GROUP, _version(kind), NS, _plural(kind), obj)


def _get(cluster: KubeApi, kind: str, name: str) -> dict[str, Any] | None:
    return cluster.get(f"{GROUP}/{_version(kind)}", _plural(kind), NS, name)


def _wait_status(cluster: KubeApi, kind: str, name: str, check: Any, timeout: float = 30.0) -> dict[str, Any]:
    """The object once `check(status)` holds."""

    def reached() -> dict[str, Any] | None:
        obj = _get(cluster, kind, name)
        return obj if obj is not None and check(obj.get("status") or {}) else None

    try:
        return until(reached, timeout, f"{kind} {name}'s status")
    except AssertionError:
        raise AssertionError(f"{kind} {name} now: {_get(cluster, kind, name)}") from None


def _ready(status: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or ())


def _graph(name: str, service: str = "scorer") -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "InferenceGraph",
        "metadata": {"name": name},
        "spec": {"nodes": {"root": {"routerType": "Sequence", "steps": [{"serviceName": service}]}}},
    }


def _gateway_has(api: ControlApi, plural: str, name: str) -> bool:
    return api.http.get(f"/{plural}/{name}").status_code == 200


def _lease_holder(cluster: KubeApi) -> str | None:
    lease = cluster.get("coordination.k8s.io/v1", "leases", HOME, "servegate-operator")
    return lease["spec"].get("holderIdentity") if lease else None


def _run_operator(kubeconfig: Path, gateway: GatewayProcess) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "serving", "operator", "--kubeconfig", str(kubeconfig), "-n", NS]
    command += ["--gateway-url", gateway.url, "--health-port", str(free_port())]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)


# -- tests -------------------------------------------------------------------------------------------


def test_an_inference_service_runs_on_the_gateway_and_its_status_comes_back(
    cluster: KubeApi, custom: Any, operator: OperatorProcess, api: ControlApi
) -> None:
    _create(custom, python_isvc("scorer", "Scorer"))
    obj = _wait_status(cluster, "InferenceService", "scorer", _ready)
    status = obj["status"]
    assert status["url"].endswith("/v2/models/scorer")
    assert status["observedGeneration"] == obj["metadata"]["generation"] == 1
    assert status["components"]["predictor"]["latestReadyRevision"] == revision("scorer", 1)
    assert "replicas" not in status["components"]["predictor"]  # servegate's own, not in KServe's CRD
    assert FINALIZER in obj["metadata"]["finalizers"]
    assert condition(api.status("scorer"), "Ready")["status"] == "True"
    assert operator.health("/readyz") == (200, "leading, synced")


def test_a_changed_spec_makes_a_new_revision(
    cluster: KubeApi, custom: Any, operator: OperatorProcess, api: ControlApi
) -> None:
    changed = python_isvc("scorer", "Scorer", env={"VERSION": "2"})
    custom.patch_namespaced_custom_object(
        GROUP, "v1beta1", NS, "inferenceservices", "scorer", {"spec": changed["spec"]}
    )

    def on_revision_2(status: dict[str, Any]) -> bool:
        predictor = status.get("components", {}).get("predictor", {})
        return _ready(status) and predictor.get("latestReadyRevision") == revision("scorer", 2)

    obj = _wait_status(cluster, "InferenceService", "scorer", on_revision_2)
    assert obj["status"]["observedGeneration"] == 2
    assert [t["revisionName"] for t in obj["status"]["components"]["predictor"]["traffic"]] == [
        revision("scorer", 2)
    ]
    assert traffic(api.status("scorer")) == {revision("scorer", 2): 100}


def test_a_refused_spec_is_an_invalid_spec_condition_naming_the_field(
    cluster: KubeApi, custom: Any, operator: OperatorProcess, api: ControlApi
) -> None:
    _create(custom, python_isvc("broken", "Scorer", model={"modelFormat": {"name": "nope"}}))

    def refused(status: dict[str, Any]) -> bool:
        return any(c.get("reason") == "InvalidSpec" for c in status.get("conditions") or ())

    obj = _wait_status(cluster, "InferenceService", "broken", refused)
    [ready] = obj["status"]["conditions"]
    assert (ready["type"], ready["status"]) == ("Ready", "False")
    assert "spec.predictor.model.modelFormat.name: unknown model format 'nope'" in ready["message"]
    assert obj["status"]["observedGeneration"] == 1
    assert not _gateway_has(api, "inferenceservices", "broken")


def test_a_trained_model_and_an_inference_graph_are_applied(
    cluster: KubeApi, custom: Any, operator: OperatorProcess, api: ControlApi
) -> None:
    model = {"framework": "python", "storageUri": "tests.gateway_models:Scorer", "memory": "64Mi"}
    trained = {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "TrainedModel",
        "metadata": {"name": "extra"},
        "spec": {"inferenceService": "scorer", "model": model},
    }
    _create(custom, trained)
    _create(custom, _graph("chain"))
    tm = _wait_status(cluster, "TrainedModel", "extra", _ready)
    assert tm["status"]["url"].endswith("/v2/models/extra")
    assert "storageUri" not in tm["status"]  # servegate's own, not in KServe's CRD
    graph = _wait_status(cluster, "InferenceGraph", "chain", _ready)
    assert graph["status"]["url"].endswith("/graphs/chain")
    assert _gateway_has(api, "trainedmodels", "extra") and _gateway_has(api, "inferencegraphs", "chain")


def test_the_sync_goes_on_after_dropped_and_expired_watches(
    cluster: KubeApi, custom: Any, operator: OperatorProcess, api: ControlApi
) -> None:
    cluster.drop_watches(abort=True)
    _create(custom, _graph("after-drop"))
    _wait_status(cluster, "InferenceGraph", "after-drop", _ready)
    # An expired place: the watch gets 410 Gone and lists again.
    cluster.compact()
    cluster.drop_watches()
    _create(custom, _graph("after-compaction"))
    _wait_status(cluster, "InferenceGraph", "after-compaction", _ready)
    assert _gateway_has(api, "inferencegraphs", "after-compaction")


def test_a_deleted_object_leaves_the_gateway_then_the_cluster(
    cluster: KubeApi, custom: Any, operator: OperatorProcess, api: ControlApi
) -> None:
    for kind, name in (
        ("TrainedModel", "extra"),
        ("InferenceGraph", "chain"),
        ("InferenceService", "broken"),
    ):
        custom.delete_namespaced_custom_object(GROUP, _version(kind), NS, _plural(kind), name)
    until(lambda: _get(cluster, "TrainedModel", "extra") is None, 30, "the TrainedModel to go")
    until(lambda: _get(cluster, "InferenceService", "broken") is None, 30, "the refused service to go")
    until(lambda: _get(cluster, "InferenceGraph", "chain") is None, 30, "the graph to go")
    assert not _gateway_has(api, "trainedmodels", "extra")
    assert not _gateway_has(api, "inferencegraphs", "chain")
    assert _gateway_has(api, "inferenceservices", "scorer")


def test_one_operator_leads_and_another_takes_over_when_it_dies(
    cluster: KubeApi, custom: Any, operator: OperatorProcess, kubeconfig: Path, gateway: GatewayProcess
) -> None:
    assert _lease_holder(cluster) == "operator-1"
    with OperatorProcess(kubeconfig, gateway, "operator-2") as second:
        second.wait_for("/readyz")
        assert second.health("/readyz") == (200, "waiting for the lease")
        until(lambda: "held by operator-1: waiting" in second.output(), 5, "operator-2 to say it waits")
        operator.signal(signal.SIGKILL)
        until(lambda: _lease_holder(cluster) == "operator-2", 20, "operator-2 to take the lease")
        until(lambda: second.health("/readyz") == (200, "leading, synced"), 20, "operator-2 to sync")
        _create(custom, _graph("after-takeover"))
        _wait_status(cluster, "InferenceGraph", "after-takeover", _ready)
        second.stop()
    # A clean stop gives the lease up at once.
    assert _lease_holder(cluster) == ""


def test_a_service_account_without_a_permission_is_told_which(
    cluster: KubeApi, tmp_path: Path, gateway: GatewayProcess
) -> None:
    kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig", token="lease-reader", namespace=NS)
    done = _run_operator(kubeconfig, gateway)
    assert done.returncode == 1, done.stderr
    assert (
        'inferenceservices.serving.kserve.io is forbidden: User "system:serviceaccount:servegate:servegate" '
        'cannot list resource "inferenceservices" in API group "serving.kserve.io" in the namespace "models"'
    ) in done.stderr, done.stderr


def test_no_reachable_cluster_is_said(tmp_path: Path, gateway: GatewayProcess) -> None:
    with kube_api(controllers=False) as stopped:
        kubeconfig = stopped.write_kubeconfig(tmp_path / "kubeconfig")
    done = _run_operator(kubeconfig, gateway)
    assert done.returncode == 1, done.stderr
    assert "cannot reach the Kubernetes API at http://127.0.0.1:" in done.stderr, done.stderr
