"""The Kubernetes engine's pure parts: what a revision renders to, what a cluster would refuse in a
manifest (found at apply), and what a Pod is as a replica."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from serving.controller.controller import replica_spec
from serving.engines.base import ReplicaState
from serving.engines.kubernetes.admission import MAX_SERVICE_NAME, manifest_problems
from serving.engines.kubernetes.pods import replica_of, unschedulable
from serving.engines.kubernetes.render import Placement, credentials_secret, revision_objects
from serving.spec import InferenceService, load_manifests
from tests.kube_schemas import validate

POD_FIELDS = {
    "serviceAccountName": "reader",
    "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "nodeSelector": {"accelerator": "h100"},
    "imagePullSecrets": [{"name": "registry-creds"}],
    "labels": {"team": "search"},
    "annotations": {"example.com/owner": "search-team"},
}


def isvc(name: str = "iris", predictor: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    model = {"modelFormat": {"name": "onnx"}, "storageUri": "pvc://models/iris/1", "protocolVersion": "v2"}
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {"predictor": predictor if predictor is not None else {"model": model}, **spec},
    }


def rendered(manifest: dict[str, Any], placement: Placement | None = None) -> list[dict[str, Any]]:
    [r] = load_manifests(json.dumps(manifest))
    assert isinstance(r, InferenceService)
    objects = []
    for kind, component in r.components().items():
        spec = replica_spec(r.metadata.name, kind, f"{r.metadata.name}-{kind}-00001", component)
        objects += revision_objects(spec, placement or Placement(namespace="models"))
    return objects


def _every_manifest() -> list[InferenceService]:
    paths = sorted(Path("examples").glob("*.yaml")) + sorted(Path("tests/manifests").glob("*.yaml"))
    found = [r for path in paths for r in load_manifests(path.read_text(), str(path))]
    pods = isvc("pods", predictor={**isvc()["spec"]["predictor"], **POD_FIELDS})
    server = {"name": "server", "image": "example.com/server:1"}
    containers = isvc("custom", predictor={"containers": [server]})
    found += load_manifests(json.dumps({"apiVersion": "v1", "kind": "List", "items": [pods, containers]}))
    return [r for r in found if isinstance(r, InferenceService)]


def test_every_rendered_object_validates_against_the_kubernetes_schemas() -> None:
    services = _every_manifest()
    assert len(services) >= 8
    for r in services:
        for kind, component in r.components().items():
            spec = replica_spec(r.metadata.name, kind, f"{r.metadata.name}-{kind}-00001", component)
            tokens = {"replica-token": "t", "metrics-token": "m"}
            objects = [
                *revision_objects(spec, Placement()),
                credentials_secret(spec, Placement(), tokens, "uid"),
            ]
            for obj in objects:
                assert validate(obj) == [], (r.metadata.name, obj["kind"])


def test_a_revision_is_a_deployment_and_a_service_with_kserves_labels() -> None:
    deployment, service = rendered(isvc())
    labels = deployment["metadata"]["labels"]
    assert labels["serving.kserve.io/inferenceservice"] == "iris"
    assert labels["component"] == "predictor"
    assert labels["serving.servegate.io/revision"] == "iris-predictor-00001"
    assert deployment["metadata"]["namespace"] == service["metadata"]["namespace"] == "models"
    # The scale subresource sets replicas: a re-apply never undoes a scaling decision.
    assert "replicas" not in deployment["spec"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["name"] == "kserve-container"
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert [p["name"] for p in container["ports"]] == ["http", "grpc"]
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False


def test_the_pvc_model_is_mounted_read_only_and_served_from_its_path() -> None:
    [deployment, _] = rendered(isvc())
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    args = container["args"]
    assert args[args.index("--model-uri") + 1] == "/mnt/pvc/models/iris/1"
    assert {"name": "pvc-models", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in pod[
        "volumes"
    ]
    assert {"name": "pvc-models", "mountPath": "/mnt/pvc/models", "readOnly": True} in container[
        "volumeMounts"
    ]


def test_pod_fields_resources_and_secret_references_are_passed_on() -> None:
    model = {
        "modelFormat": {"name": "onnx"},
        "storageUri": "s3://models/iris",
        "resources": {"limits": {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": 1}, "requests": {"cpu": "1"}},
        "env": [
            {"name": "MODE", "value": "fast"},
            {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "secret"}}},
        ],
    }
    [deployment, _] = rendered(isvc(predictor={"model": model, **POD_FIELDS}))
    template = deployment["spec"]["template"]
    pod = template["spec"]
    assert pod["serviceAccountName"] == "reader" and pod["automountServiceAccountToken"] is True
    assert pod["tolerations"] == POD_FIELDS["tolerations"]
    assert pod["nodeSelector"] == {"accelerator": "h100"}
    assert pod["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert template["metadata"]["labels"]["team"] == "search"
    assert template["metadata"]["annotations"] == POD_FIELDS["annotations"]
    [container] = pod["containers"]
    assert container["resources"] == model["resources"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MODE"]["value"] == "fast"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "s3", "key": "secret"}}
    token = env["SERVEGATE_REPLICA_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token == {"name": "iris-predictor-00001-credentials", "key": "replica-token"}


def test_a_pod_field_change_is_a_new_revision_and_no_pod_field_keeps_old_revisions() -> None:
    [plain] = load_manifests(json.dumps(isvc()))
    [tolerant] = load_manifests(json.dumps(isvc(predictor={**isvc()["spec"]["predictor"], **POD_FIELDS})))
    assert isinstance(plain, InferenceService) and isinstance(tolerant, InferenceService)
    before, after = plain.components()["predictor"], tolerant.components()["predictor"]
    assert before.pod is None and after.pod is not None
    assert before.revision_key() != after.revision_key()


def test_custom_containers_run_as_given() -> None:
    containers = [{"name": "server", "image": "example.com/server:1", "ports": [{"containerPort": 9000}]}]
    [deployment, _] = rendered(isvc(predictor={"containers": containers}))
    pod = deployment["spec"]["template"]["spec"]
    assert pod["containers"] == containers
    assert "securityContext" not in pod


def test_the_credentials_secret_is_owned_by_its_deployment() -> None:
    [r] = load_manifests(json.dumps(isvc()))
    assert isinstance(r, InferenceService)
    spec = replica_spec("iris", "predictor", "iris-predictor-00001", r.components()["predictor"])
    secret = credentials_secret(spec, Placement(), {"replica-token": "t", "metrics-token": "m"}, "uid-1")
    assert secret["metadata"]["name"] == "iris-predictor-00001-credentials"
    [owner] = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Deployment", "iris-predictor-00001", "uid-1")


# -- what a cluster would refuse ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("manifest", "path", "why"),
    [
        (isvc("a" * (MAX_SERVICE_NAME + 1)), "metadata.name", "at most 45 characters"),
        (
            isvc(predictor={"model": {"modelFormat": {"name": "onnx"}, "storageUri": "/models/iris.onnx"}}),
            "spec.predictor.model.storageUri",
            "which pods cannot read",
        ),
        (
            isvc(predictor={"model": {"modelFormat": {"name": "python"}, "storageUri": "model.py:Model"}}),
            "spec.predictor.model.storageUri",
            "which pods cannot read",
        ),
        (
            isvc(predictor={**isvc()["spec"]["predictor"], "labels": {"bad key!": "x"}}),
            "spec.predictor.labels.bad key!",
            "not a valid key",
        ),
        (
            isvc(predictor={**isvc()["spec"]["predictor"], "nodeSelector": {"zone": "a b"}}),
            "spec.predictor.nodeSelector.zone",
            "not a label value",
        ),
        (
            isvc(
                predictor={
                    "model": {
                        **isvc()["spec"]["predictor"]["model"],
                        "resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "2"}},
                    }
                }
            ),
            "spec.predictor.model.resources.requests.cpu",
            "above its limit",
        ),
        (
            isvc(
                predictor={
                    "model": {
                        **isvc()["spec"]["predictor"]["model"],
                        "resources": {"limits": {"cpu": "0.0005"}},
                    }
                }
            ),
            "spec.predictor.model.resources.limits.cpu",
            "whole millicores",
        ),
        (
            isvc(predictor={**isvc()["spec"]["predictor"], "serviceAccountName": "Not_A_Name"}),
            "spec.predictor.serviceAccountName",
            "not a service account name",
        ),
    ],
)
def test_what_a_cluster_would_refuse_is_found_at_apply(manifest: dict[str, Any], path: str, why: str) -> None:
    problems = manifest_problems(load_manifests(json.dumps(manifest)))
    assert [p.path.split(": ", 1)[1] for p in problems] == [path], problems
    assert why in problems[0].message


def test_what_a_cluster_takes_passes() -> None:
    python = {"model": {"modelFormat": {"name": "python"}, "storageUri": "models.scorer:Scorer"}}
    for manifest in (
        isvc(),
        isvc(predictor=python),
        isvc(predictor={**isvc()["spec"]["predictor"], **POD_FIELDS}),
    ):
        assert manifest_problems(load_manifests(json.dumps(manifest))) == []


# -- pods as replicas ------------------------------------------------------------------------------------


def pod(phase: str = "Running", ready: bool = True, **status: Any) -> dict[str, Any]:
    conditions = [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": str(ready)}]
    return {
        "metadata": {"name": "iris-predictor-00001-abc", "labels": {"serving.servegate.io/revision": "r1"}},
        "spec": {"nodeName": "node-1"},
        "status": {"phase": phase, "podIP": "10.0.0.7", "conditions": conditions, **status},
    }


def waiting(reason: str, message: str = "") -> list[dict[str, Any]]:
    return [
        {
            "name": "kserve-container",
            "restartCount": 3,
            "state": {"waiting": {"reason": reason, "message": message}},
        }
    ]


@pytest.mark.parametrize(
    ("obj", "was_ready", "state", "reason"),
    [
        (pod(), False, ReplicaState.READY, ""),
        (pod(ready=False), False, ReplicaState.STARTING, "readiness check not passed yet"),
        (pod(ready=False), True, ReplicaState.UNHEALTHY, "readiness check not passed yet"),
        (
            pod(
                "Pending",
                conditions=[
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/3 nodes have nvidia.com/gpu",
                    }
                ],
            ),
            False,
            ReplicaState.PENDING,
            "0/3 nodes have nvidia.com/gpu",
        ),
        (
            pod("Pending", containerStatuses=waiting("ContainerCreating")),
            False,
            ReplicaState.STARTING,
            "ContainerCreating",
        ),
        (
            pod(ready=False, containerStatuses=waiting("CrashLoopBackOff", "back-off 40s")),
            True,
            ReplicaState.FAILED,
            "CrashLoopBackOff: back-off 40s",
        ),
        (pod("Failed", message="evicted: low memory"), False, ReplicaState.FAILED, "evicted: low memory"),
        (
            {**pod(), "metadata": {**pod()["metadata"], "deletionTimestamp": "2026-12-04T00:00:00Z"}},
            True,
            ReplicaState.DRAINING,
            "being deleted",
        ),
    ],
)
def test_a_pod_as_a_replica(obj: dict[str, Any], was_ready: bool, state: ReplicaState, reason: str) -> None:
    replica = replica_of(obj, 8080, 8081, was_ready)
    assert (replica.state, replica.reason) == (state, reason)
    assert (replica.http_url, replica.grpc_target) == ("http://10.0.0.7:8080", "10.0.0.7:8081")
    assert (replica.id, replica.revision, replica.node) == ("iris-predictor-00001-abc", "r1", "node-1")


def test_pod_addresses_restarts_and_scheduling() -> None:
    v6 = pod(podIP="fd00::7", containerStatuses=[{"restartCount": 2}, {"restartCount": 1}])
    replica = replica_of(v6, 8080, 8081)
    assert (replica.http_url, replica.grpc_target, replica.restarts) == (
        "http://[fd00::7]:8080",
        "[fd00::7]:8081",
        3,
    )
    no_ip = pod("Pending")
    del no_ip["status"]["podIP"]
    assert replica_of(no_ip, 8080, 8081).http_url is None
    stuck = pod(
        "Pending",
        conditions=[
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "no GPU"}
        ],
    )
    assert unschedulable(stuck) == "no GPU" and unschedulable(pod()) is None


# -- the command line ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--namespace", "models"], "--namespace, --image and --pod-ports need --engine kubernetes"),
        (["--engine", "kubernetes", "--namespace", "Models"], "'Models' must be lowercase letters"),
        (["--engine", "kubernetes", "--pod-ports", "8080"], "'8080' is not HTTP,GRPC"),
        (["--engine", "kubernetes", "--pod-ports", "8080,8080"], "two different ports"),
        (
            ["--engine", "kubernetes", "--kubeconfig", "/dev/null"],
            "--engine kubernetes: no usable Kubernetes",
        ),
    ],
)
def test_up_says_what_is_wrong_with_a_kubernetes_flag(tmp_path: Path, args: list[str], message: str) -> None:
    from click.testing import CliRunner

    from serving.cli.main import cli

    result = CliRunner().invoke(cli, ["up", "--no-auth", "--state-dir", str(tmp_path), *args])
    assert result.exit_code in (1, 2), result.output
    assert message in result.output and "Traceback" not in result.output


def test_render_prints_the_objects_or_the_problems(tmp_path: Path) -> None:
    import yaml
    from click.testing import CliRunner

    from serving.cli.main import cli

    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(json.dumps(isvc()))
    local = isvc(predictor={"model": {"modelFormat": {"name": "onnx"}, "storageUri": "/models/iris.onnx"}})
    bad.write_text(json.dumps(local))
    result = CliRunner().invoke(cli, ["render", "-f", str(good), "--namespace", "models"])
    assert result.exit_code == 0, result.output
    objects = list(yaml.safe_load_all(result.stdout))
    assert [(o["kind"], o["metadata"]["namespace"]) for o in objects] == [
        ("Deployment", "models"),
        ("Service", "models"),
    ]
    result = CliRunner().invoke(cli, ["render", "-f", str(bad)])
    assert result.exit_code == 2
    assert (
        "InferenceService/iris: spec.predictor.model.storageUri: a path on the gateway's machine"
        in result.output
    )
