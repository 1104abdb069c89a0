"""Manifests: KServe's own samples apply unchanged, bad ones list every problem by path."""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.spec import (
    Component,
    InferenceService,
    ManifestError,
    Problem,
    TrainedModel,
    load_manifests,
    parse_documents,
    parse_resource,
    read_manifest_paths,
)

MANIFESTS = Path(__file__).parent.parent / "manifests"
ISVC = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService"}
ONNX = {"modelFormat": {"name": "onnx"}, "storageUri": "./models/mlp"}
AT_MOST_100 = "Input should be less than or equal to 100"


def isvc(predictor: dict[str, Any] | None = None, name: str = "iris", **spec: Any) -> dict[str, Any]:
    """An InferenceService document; the predictor serves ONNX unless given."""
    predictor = {"model": copy.deepcopy(ONNX)} if predictor is None else predictor
    return {**ISVC, "metadata": {"name": name}, "spec": {"predictor": predictor, **spec}}


def problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        parse_resource(doc)
    return [str(p) for p in caught.value.problems]


def component(doc: dict[str, Any], kind: str = "predictor") -> Component:
    resource = parse_resource(doc)
    assert isinstance(resource, InferenceService)
    return resource.components()[kind]


# --- KServe manifests apply unchanged --------------------------------------------------------

KSERVE_SAMPLES = {
    "sklearn-v2": """
apiVersion: "serving.kserve.io/v1beta1"
kind: "InferenceService"
metadata:
  name: "sklearn-irisv2"
spec:
  predictor:
    model:
      modelFormat:
        name: sklearn
      protocolVersion: v2
      runtime: kserve-sklearnserver
      storageUri: "gs://seldon-models/sklearn/mms/lr_model"
""",
    "triton-model-form": """
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: triton-densenet
spec:
  predictor:
    model:
      modelFormat:
        name: triton
        version: "2"
      storageUri: gs://kfserving-examples/models/torchscript
      runtimeVersion: 21.09-py3
      env:
        - name: OMP_NUM_THREADS
          value: "1"
      args: ["--strict-model-config=false"]
""",
    "batcher": """
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: torchserve-batch
spec:
  predictor:
    minReplicas: 1
    timeout: 60
    batcher:
      maxBatchSize: 32
      maxLatency: 5000
    model:
      modelFormat:
        name: pytorch
      storageUri: gs://kfserving-examples/models/torchserve/image_classifier/v1
""",
    "custom-container-with-transformer": """
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: custom-model
  namespace: kserve-test
  annotations:
    serving.kserve.io/deploymentMode: RawDeployment
spec:
  predictor:
    scaleTarget: 5
    scaleMetric: concurrency
    containerConcurrency: 4
    nodeSelector: {accelerator: a100}
    imagePullSecrets: [{name: regcred}]
    affinity: {}
    volumes: []
    labels: {team: ml}
    annotations: {prometheus.io/scrape: "true"}
    containers:
      - name: kserve-container
        image: kserve/custom-model:v1
        resources: {limits: {cpu: 1, memory: 2Gi}}
  transformer:
    containers:
      - image: kserve/image-transformer:latest
        name: kserve-container
        command: ["python", "-m", "model"]
        args: ["--model_name", "mnist"]
""",
    "old-form-v2": """
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: onnx-old
spec:
  predictor:
    onnx:
      storageUri: gs://kfserving-examples/onnx/style
      runtimeVersion: "1.16"
      protocolVersion: grpc-v2
      resources: {requests: {cpu: 500m, memory: 512M}}
""",
}


@pytest.mark.parametrize("text", KSERVE_SAMPLES.values(), ids=KSERVE_SAMPLES.keys())
def test_kserve_samples_validate_unchanged_without_warnings(text: str) -> None:
    (resource,) = load_manifests(text)
    assert isinstance(resource, InferenceService)
    assert resource.check() == []
    assert resource.warnings() == []


def test_manifest_folder_loads() -> None:
    sources = read_manifest_paths([str(MANIFESTS)])
    assert [Path(source).name for source, _ in sources] == sorted(p.name for p in MANIFESTS.glob("*.yaml"))
    resources = [r for source, text in sources for r in load_manifests(text, source)]
    names = {(r.kind, r.metadata.name) for r in resources}
    assert ("InferenceService", "iris") in names
    assert ("InferenceService", "sklearn-iris-v1") in names
    assert ("TrainedModel", "cifar10") in names
    assert all(r.warnings() == [] for r in resources)


def test_json_input_and_tab_indentation() -> None:
    text = json.dumps(isvc(), indent="\t")  # PyYAML alone rejects tabs
    (resource,) = load_manifests(text)
    assert resource.metadata.name == "iris"


def test_multiple_documents_and_kind_list() -> None:
    listed = {"apiVersion": "v1", "kind": "List", "items": [isvc(name="b"), isvc(name="c")]}
    text = "---\n" + yaml.safe_dump(isvc(name="a")) + "---\n---\n" + yaml.safe_dump(listed)
    assert [r.metadata.name for r in load_manifests(text)] == ["a", "b", "c"]


def test_status_and_server_metadata_are_accepted_silently() -> None:
    doc = isvc()
    doc["metadata"].update(
        uid="1234", resourceVersion="7", generation=3, creationTimestamp="2024-01-01T00:00:00Z"
    )
    doc["status"] = {"url": "http://iris.default.example.com", "conditions": [{"type": "Ready"}]}
    resource = parse_resource(doc)
    assert resource.warnings() == []
    assert "status" not in resource.model_dump()


# --- every problem, by path -------------------------------------------------------------------

BAD = {
    "min replicas not a number": (
        isvc({"minReplicas": "two", "model": ONNX}),
        "spec.predictor.minReplicas: Input should be a valid integer",
    ),
    "missing predictor": (
        {**ISVC, "metadata": {"name": "iris"}, "spec": {}},
        "spec.predictor: Field required",
    ),
    "canary above 100": (
        isvc({"canaryTrafficPercent": 150, "model": ONNX}),
        "spec.predictor.canaryTrafficPercent: Input should be less than or equal to 100",
    ),
    "canary below 0": (
        isvc({"canaryTrafficPercent": -1, "model": ONNX}),
        "spec.predictor.canaryTrafficPercent: Input should be greater than or equal to 0",
    ),
    "unknown model format": (
        isvc({"model": {"modelFormat": {"name": "xgboost"}, "storageUri": "gs://m"}}),
        "spec.predictor.model.modelFormat.name: unknown model format 'xgboost': "
        "servegate serves onnx, pytorch, sklearn, python, triton",
    ),
    "unsupported framework field": (
        isvc({"xgboost": {"storageUri": "gs://m"}}),
        "spec.predictor.xgboost: unknown model format 'xgboost'",
    ),
    "model and framework": (
        isvc({"model": ONNX, "sklearn": {"storageUri": "gs://m"}}),
        "spec.predictor: model and sklearn are given: give exactly one of",
    ),
    "nothing to serve": (isvc({"minReplicas": 1}), "spec.predictor: nothing to serve"),
    "min above max": (
        isvc({"minReplicas": 3, "maxReplicas": 2, "model": ONNX}),
        "spec.predictor.minReplicas: minReplicas (3) exceeds maxReplicas (2)",
    ),
    "bad quantity": (
        isvc({"model": {**ONNX, "resources": {"limits": {"memory": "lots"}}}}),
        "spec.predictor.model.resources.limits.memory: 'lots' is not a Kubernetes quantity",
    ),
    "quantity of the wrong type": (
        isvc({"model": {**ONNX, "resources": {"requests": {"cpu": [1]}}}}),
        "spec.predictor.model.resources.requests.cpu: expected a Kubernetes quantity",
    ),
    "half a GPU": (
        isvc({"model": {**ONNX, "resources": {"limits": {"nvidia.com/gpu": "0.5"}}}}),
        "spec.predictor.model.resources.limits.nvidia.com/gpu: GPUs are whole devices, got 0.5",
    ),
    "unknown protocol": (
        isvc({"model": {**ONNX, "protocolVersion": "v3"}}),
        "spec.predictor.model.protocolVersion: Input should be 'v1', 'v2' or 'grpc-v2'",
    ),
    "unknown scale metric": (
        isvc({"scaleMetric": "gpu", "model": ONNX}),
        "spec.predictor.scaleMetric: Input should be 'concurrency', 'rps', 'cpu' or 'memory'",
    ),
    "model format missing": (
        isvc({"model": {"storageUri": "gs://m"}}),
        "spec.predictor.model.modelFormat: Field required",
    ),
    "transformer not python": (
        isvc(transformer={"model": ONNX}),
        "spec.transformer.model.modelFormat.name: transformer model format must be 'python', got 'onnx'",
    ),
    "transformer with nothing": (
        isvc(transformer={"minReplicas": 1}),
        "spec.transformer: give exactly one of model (a python class) or containers",
    ),
    "python transformer without a class": (
        isvc(transformer={"model": {"modelFormat": {"name": "python"}, "storageUri": "pkg/model.py"}}),
        "spec.transformer.model.storageUri: python model URI 'pkg/model.py' must be",
    ),
    "name starting with a digit": (isvc(name="1iris"), "metadata: an InferenceService name must start"),
    "name not a DNS label": (isvc(name="Iris_1"), "metadata.name: String should match pattern"),
    "logger mode": (
        isvc({"logger": {"mode": "everything"}, "model": ONNX}),
        "spec.predictor.logger.mode: Input should be 'all', 'request' or 'response'",
    ),
    "batch size 0": (
        isvc({"batcher": {"maxBatchSize": 0}, "model": ONNX}),
        "spec.predictor.batcher.maxBatchSize: Input should be greater than or equal to 1",
    ),
}


@pytest.mark.parametrize(("doc", "expected"), BAD.values(), ids=BAD.keys())
def test_bad_manifest_names_the_field(doc: dict[str, Any], expected: str) -> None:
    found = problems(doc)
    name = doc["metadata"]["name"]
    assert any(p.startswith(f"InferenceService/{name}: {expected}") for p in found), found


def test_every_problem_of_a_document_is_listed() -> None:
    doc = isvc(
        {"minReplicas": "two", "canaryTrafficPercent": 150, "timeout": 0, "model": ONNX},
        transformer={
            "model": {"modelFormat": {"name": "python"}, "storageUri": "x.py:Pre"},
            "maxReplicas": -1,
        },
        experiment={"variants": [{"name": "a", "weight": 50}, {"name": "a", "weight": 20, "service": "B"}]},
    )
    assert problems(doc) == [
        "InferenceService/iris: spec.predictor.minReplicas: "
        "Input should be a valid integer, unable to parse string as an integer",
        "InferenceService/iris: spec.predictor.timeout: Input should be greater than or equal to 1",
        f"InferenceService/iris: spec.predictor.canaryTrafficPercent: {AT_MOST_100}",
        "InferenceService/iris: spec.transformer.maxReplicas: Input should be greater than or equal to 0",
        "InferenceService/iris: spec.experiment.variants[1].service: String should match pattern "
        "'^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'",
        # cross-field checks still run on the rest of the document
        "InferenceService/iris: spec.experiment.variants: variant weights add up to 70, not 100",
        "InferenceService/iris: spec.experiment.variants[1].name: 'a' is repeated",
    ]


def test_type_errors_and_cross_field_problems_come_together() -> None:
    doc = isvc(
        {"canaryTrafficPercent": 150, "model": {"modelFormat": {"name": "xgboost"}}},
        experiment={"variants": [{"name": "a", "weight": 50}, {"name": "b", "weight": 20}]},
        shadow={"percent": 10},
    )
    assert problems(doc) == [
        f"InferenceService/iris: spec.predictor.canaryTrafficPercent: {AT_MOST_100}",
        "InferenceService/iris: spec.predictor.model.modelFormat.name: unknown model format 'xgboost': "
        "servegate serves onnx, pytorch, sklearn, python, triton",
        "InferenceService/iris: spec.experiment.variants: variant weights add up to 70, not 100",
        "InferenceService/iris: spec.shadow: shadow needs exactly one of service or revision",
    ]


def test_a_mistyped_field_is_not_also_reported_missing() -> None:
    # `model` is wrong, not absent: "nothing to serve" would send the user looking in the wrong place.
    assert problems(isvc({"model": "onnx"})) == [
        "InferenceService/iris: spec.predictor.model: "
        "Input should be a valid dictionary or instance of ModelSpecField"
    ]


@pytest.mark.parametrize(
    ("api_version", "kind", "expected"),
    [
        (
            "apps/v1",
            "Deployment",
            [
                "Deployment/iris: kind: unknown kind 'Deployment': "
                "servegate applies InferenceService, TrainedModel, InferenceGraph",
                "Deployment/iris: apiVersion: unknown apiVersion 'apps/v1': "
                "servegate applies serving.kserve.io/v1beta1 and serving.kserve.io/v1alpha1",
            ],
        ),
        (
            "serving.kserve.io/v1alpha1",
            "InferenceService",
            [
                "InferenceService/iris: apiVersion: InferenceService is serving.kserve.io/v1beta1, "
                "got 'serving.kserve.io/v1alpha1'"
            ],
        ),
        (
            "serving.kserve.io/v1beta1",
            None,
            [
                "<no kind>/iris: kind: kind is missing: "
                "servegate applies InferenceService, TrainedModel, InferenceGraph"
            ],
        ),
    ],
)
def test_unknown_api_version_or_kind(api_version: str, kind: str | None, expected: list[str]) -> None:
    doc = {**isvc(), "apiVersion": api_version, "kind": kind}
    assert problems(doc) == expected


def test_load_collects_problems_of_every_document_and_duplicates() -> None:
    docs = [isvc(name="a"), isvc({"minReplicas": -1, "model": ONNX}, name="b"), isvc(name="a")]
    with pytest.raises(ManifestError) as caught:
        load_manifests(yaml.safe_dump_all(docs), "app.yaml")
    assert [str(p) for p in caught.value.problems] == [
        "InferenceService/b: spec.predictor.minReplicas: Input should be greater than or equal to 0",
        "InferenceService/a: defined more than once in app.yaml",
    ]


def test_documents_without_kind_or_name_are_not_duplicates() -> None:
    with pytest.raises(ManifestError) as caught:
        load_manifests("apiVersion: serving.kserve.io/v1beta1\n---\napiVersion: serving.kserve.io/v1beta1\n")
    assert [str(p) for p in caught.value.problems] == [
        "<no kind>/<no name>: kind: kind is missing: "
        "servegate applies InferenceService, TrainedModel, InferenceGraph"
    ] * 2


def test_yaml_syntax_error_names_source_and_line() -> None:
    with pytest.raises(ManifestError) as caught:
        load_manifests("apiVersion: v1\nkind: [InferenceService\nmetadata: {}\n", "iris.yaml")
    (problem,) = caught.value.problems
    assert problem.path == "iris.yaml"
    assert problem.message.startswith("invalid YAML at line 3:")


def test_documents_that_are_not_objects() -> None:
    with pytest.raises(ManifestError) as caught:
        parse_documents("- a\n- b\n---\n42\n---\nkind: List\nitems: [1]\n", "x.yaml")
    assert [str(p) for p in caught.value.problems] == [
        "x.yaml: document 1: expected a Kubernetes object (a mapping), got list",
        "x.yaml: document 2: expected a Kubernetes object (a mapping), got int",
        "x.yaml: document 3: items[0]: expected a Kubernetes object (a mapping), got int",
    ]


def test_empty_text_has_no_resources() -> None:
    assert load_manifests("") == []
    assert load_manifests("---\n# nothing\n---\n") == []


def test_stored_form_reads_back_the_same() -> None:
    # The controller stores `model_dump(mode="json", by_alias=True, exclude_none=True)` and reads it back.
    routed = isvc(
        experiment={"variants": [{"name": "a", "weight": 50}, {"name": "b", "weight": 50}], "stickyBy": None},
        shadow={"revision": "iris-predictor-00001"},
    )
    texts = [p.read_text() for p in sorted(MANIFESTS.glob("*.yaml"))] + list(KSERVE_SAMPLES.values())
    texts.append(json.dumps(routed))
    for text in texts:
        for resource in load_manifests(text):
            stored = json.loads(
                json.dumps(resource.model_dump(mode="json", by_alias=True, exclude_none=True))
            )
            again = parse_resource(stored)
            assert again == resource
            if isinstance(resource, InferenceService):
                assert again.components() == resource.components()


# --- warnings ---------------------------------------------------------------------------------


def test_unknown_fields_and_explainers_are_warnings() -> None:
    doc = isvc(
        {"fooBar": 1, "model": {**ONNX, "readinessProbe": {}}}, explainer={"alibi": {"type": "AnchorTabular"}}
    )
    doc["spec"]["predictor"]["logger"] = {"url": "http://log", "format": "json"}
    resource = parse_resource(doc)
    assert resource.warnings() == [
        "spec.predictor.fooBar: unknown field, ignored",
        "spec.predictor.logger.format: unknown field, ignored",
        "spec.predictor.model.readinessProbe: unknown field, ignored",
        "spec.explainer: explainers are not supported, ignored",
    ]


# --- normalized components --------------------------------------------------------------------


def test_component_defaults() -> None:
    assert component(isvc()) == Component(
        kind="predictor",
        format="onnx",
        storage_uri="./models/mlp",
        protocol="v1",
        min_replicas=1,
        max_replicas=1,
    )
    c = component(isvc())
    assert (c.scale_metric, c.container_concurrency, c.max_batch_size, c.max_latency_ms) == (
        "concurrency",
        0,
        1,
        5.0,
    )
    assert (c.gpus, c.cpus, c.memory_bytes, c.timeout_s, c.logger_url, c.logger_mode) == (
        0,
        None,
        None,
        None,
        None,
        "all",
    )


@pytest.mark.parametrize(
    ("scaling", "expected"),
    [
        ({}, (1, 1)),
        ({"minReplicas": 0}, (0, 1)),
        ({"minReplicas": 3}, (3, 3)),
        ({"minReplicas": 2, "maxReplicas": 0}, (2, 2)),
        ({"maxReplicas": 5}, (1, 5)),
    ],
)
def test_replica_defaults(scaling: dict[str, int], expected: tuple[int, int]) -> None:
    c = component(isvc({**scaling, "model": ONNX}))
    assert (c.min_replicas, c.max_replicas) == expected


def test_component_from_a_full_predictor() -> None:
    (resource,) = load_manifests((MANIFESTS / "torchserve-canary.yaml").read_text())
    c = resource.components()["predictor"]
    assert (c.format, c.canary_traffic_percent, c.gpus, c.cpus, c.memory_bytes) == (
        "pytorch",
        10,
        1,
        2.0,
        4 * 2**30,
    )
    assert (c.logger_url, c.logger_mode) == ("http://message-dumper.default/", "all")
    batch = component(yaml.safe_load(KSERVE_SAMPLES["batcher"]))
    assert (batch.max_batch_size, batch.max_latency_ms, batch.timeout_s) == (32, 5000.0, 60.0)


def test_component_from_other_forms() -> None:
    old = component(
        isvc({"sklearn": {"storageUri": "gs://m", "protocolVersion": "v2", "env": [{"name": "A"}]}})
    )
    assert (old.format, old.storage_uri, old.protocol, old.env) == ("sklearn", "gs://m", "v2", (("A", ""),))
    triton = component(yaml.safe_load(KSERVE_SAMPLES["triton-model-form"]))
    assert (triton.format, triton.env, triton.args) == (
        "triton",
        (("OMP_NUM_THREADS", "1"),),
        ("--strict-model-config=false",),
    )
    custom = parse_resource(yaml.safe_load(KSERVE_SAMPLES["custom-container-with-transformer"])).components()
    assert custom["predictor"].containers and custom["predictor"].format is None
    assert custom["transformer"].containers and custom["predictor"].scale_target == 5
    assert component(isvc({"model": ONNX, "batcher": {}})).max_batch_size == 32
    gpu_request = {**ONNX, "resources": {"requests": {"nvidia.com/gpu": 2}}}
    assert component(isvc({"model": gpu_request})).gpus == 2


def test_transformer_component() -> None:
    (resource,) = load_manifests((MANIFESTS / "doubler-transformer.yaml").read_text())
    transformer = resource.components()["transformer"]
    assert (transformer.kind, transformer.format, transformer.storage_uri) == (
        "transformer",
        "python",
        "tests.python_models:Doubler",
    )
    assert list(parse_resource(isvc()).components()) == ["predictor"]


def test_revision_key_ignores_routing_and_sizing() -> None:
    base = component(isvc()).revision_key()
    assert len(base) == 12 and int(base, 16) >= 0
    routing = {
        "canaryTrafficPercent": 20,
        "minReplicas": 2,
        "maxReplicas": 9,
        "scaleMetric": "rps",
        "scaleTarget": 7,
    }
    assert component(isvc({**routing, "model": ONNX})).revision_key() == base
    assert component(isvc()).revision_key() == base  # stable across calls and objects


@pytest.mark.parametrize(
    "change",
    [
        {"model": {**ONNX, "storageUri": "./models/mlp2"}},
        {"model": ONNX, "batcher": {"maxBatchSize": 4}},
        {"model": ONNX, "batcher": {"maxBatchSize": 1, "maxLatency": 50}},
        {"model": {**ONNX, "env": [{"name": "A", "value": "1"}]}},
        {"model": {**ONNX, "args": ["--x"]}},
        {"model": {**ONNX, "resources": {"limits": {"memory": "1Gi"}}}},
        {"model": {**ONNX, "protocolVersion": "v2"}},
        {"model": ONNX, "timeout": 30},
        {"model": ONNX, "containerConcurrency": 2},
        {"model": ONNX, "logger": {"url": "http://log"}},
        {"sklearn": {"storageUri": "./models/mlp"}},
    ],
)
def test_revision_key_follows_what_runs(change: dict[str, Any]) -> None:
    assert component(isvc(change)).revision_key() != component(isvc()).revision_key()


def test_revision_key_follows_custom_containers() -> None:
    def key(image: str) -> str:
        return component(isvc({"containers": [{"name": "c", "image": image}]})).revision_key()

    assert key("a:1") == key("a:1") != key("a:2")


# --- experiments and shadows ------------------------------------------------------------------


def test_experiment_and_shadow() -> None:
    doc = isvc(
        experiment={
            "variants": [
                {"name": "current", "weight": 80},
                {"name": "candidate", "weight": 20, "revision": "iris-predictor-00002"},
            ],
            "stickyBy": "cookie:session",
        },
        shadow={"service": "iris-next", "percent": 5},
    )
    resource = parse_resource(doc)
    assert resource.spec.experiment.sticky == ("cookie", "session")
    assert resource.spec.shadow.percent == 5
    unset = parse_resource(isvc(experiment=doc["spec"]["experiment"] | {"stickyBy": None}))
    assert unset.spec.experiment.sticky == ("header", "x-user-id")
    default = parse_resource(isvc(experiment={"variants": doc["spec"]["experiment"]["variants"]}))
    assert default.spec.experiment.sticky_by == "header:x-user-id"
    assert parse_resource(isvc(shadow={"revision": "iris-predictor-00001"})).spec.shadow.percent == 100


@pytest.mark.parametrize(
    ("experiment", "expected"),
    [
        (
            {"variants": [{"name": "a", "weight": 100}]},
            "spec.experiment.variants: List should have at least 2 items",
        ),
        (
            {"variants": [{"name": "a", "weight": 60}, {"name": "b", "weight": 60}]},
            "spec.experiment.variants: variant weights add up to 120, not 100",
        ),
        (
            {"variants": [{"name": "a", "weight": 50}, {"name": "a", "weight": 50}]},
            "spec.experiment.variants[1].name: 'a' is repeated",
        ),
        (
            {
                "variants": [
                    {"name": "a", "weight": 50},
                    {"name": "b", "weight": 50, "service": "s", "revision": "r"},
                ]
            },
            "spec.experiment.variants[1]: give service or revision, not both",
        ),
        (
            {"variants": [{"name": "a", "weight": 50}, {"name": "b", "weight": 50}], "stickyBy": "x-user"},
            "spec.experiment.stickyBy: stickyBy must be 'header:NAME' or 'cookie:NAME', got 'x-user'",
        ),
        (
            {"variants": [{"name": "a", "weight": 50}, {"name": "b", "weight": 50}], "stickyBy": 5},
            "spec.experiment.stickyBy: Input should be a valid string",
        ),
        (
            {"variants": [{"name": "a", "weight": 101}, {"name": "b", "weight": -1}]},
            "spec.experiment.variants[0].weight: Input should be less than or equal to 100",
        ),
    ],
)
def test_bad_experiment(experiment: dict[str, Any], expected: str) -> None:
    found = problems(isvc(experiment=experiment))
    assert any(p.startswith(f"InferenceService/iris: {expected}") for p in found), found


def test_shadow_needs_exactly_one_target() -> None:
    both = isvc(shadow={"service": "a", "revision": "b", "percent": 150})
    assert problems(both) == [
        "InferenceService/iris: spec.shadow.percent: Input should be less than or equal to 100"
    ]
    assert problems(isvc(shadow={"service": "a", "revision": "b"})) == [
        "InferenceService/iris: spec.shadow: shadow needs exactly one of service or revision"
    ]


# --- TrainedModel -----------------------------------------------------------------------------

TRAINED = {
    "apiVersion": "serving.kserve.io/v1alpha1",
    "kind": "TrainedModel",
    "metadata": {"name": "model1"},
    "spec": {
        "inferenceService": "sklearn-mms",
        "model": {
            "storageUri": "gs://kfserving-examples/models/sklearn/1.0/model",
            "framework": "sklearn",
            "memory": "256Mi",
        },
    },
}


def test_trained_model() -> None:
    model = parse_resource(TRAINED)
    assert isinstance(model, TrainedModel)
    assert model.memory_bytes == 256 * 2**20
    assert model.check() == [] and model.warnings() == []


def test_bad_trained_model() -> None:
    bad = copy.deepcopy(TRAINED)
    bad["spec"]["model"] = {"framework": "xgboost", "memory": "a lot"}
    assert problems(bad) == [
        "TrainedModel/model1: spec.model.storageUri: Field required",
        "TrainedModel/model1: spec.model.memory: 'a lot' is not a Kubernetes quantity (e.g. 500m, 2, 1Gi)",
    ]
    bad["spec"]["model"] = {"framework": "xgboost", "memory": "1Gi", "storageUri": "gs://m"}
    assert problems(bad) == [
        "TrainedModel/model1: spec.model.framework: unknown model format 'xgboost': "
        "servegate serves onnx, pytorch, sklearn, python, triton"
    ]
    del bad["spec"]["inferenceService"]
    assert problems(bad)[0] == "TrainedModel/model1: spec.inferenceService: Field required"


# --- reading paths ----------------------------------------------------------------------------


def test_read_manifest_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "b.yml").write_text("b")
    (tmp_path / "a.json").write_text("a")
    (tmp_path / "notes.txt").write_text("not a manifest")
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "c.yaml").write_text("c")
    monkeypatch.setattr(sys, "stdin", io.StringIO("from stdin"))
    found = read_manifest_paths([str(tmp_path), "-", str(tmp_path / "nested" / "c.yaml")])
    assert found == [
        (str(tmp_path / "a.json"), "a"),
        (str(tmp_path / "b.yml"), "b"),
        ("<stdin>", "from stdin"),
        (str(tmp_path / "nested" / "c.yaml"), "c"),
    ]


def test_read_manifest_paths_names_every_missing_path(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError) as caught:
        read_manifest_paths([str(tmp_path / "nope.yaml"), str(tmp_path / "empty")])
    assert caught.value.problems == [
        Problem(str(tmp_path / "nope.yaml"), "no such file or directory"),
        Problem(str(tmp_path / "empty"), "no manifests (*.yaml, *.yml, *.json) in this directory"),
    ]


# --- InferenceGraph is imported lazily --------------------------------------------------------


def test_package_import_does_not_import_the_graph_module() -> None:
    code = "import sys, serving.spec; assert 'serving.spec.graph' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_inference_graph_dispatch() -> None:
    graph = pytest.importorskip("serving.spec.graph")
    doc = {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "InferenceGraph",
        "metadata": {"name": "model-chainer"},
        "spec": {
            "nodes": {
                "root": {
                    "routerType": "Sequence",
                    "steps": [
                        {"serviceName": "sklearn-iris"},
                        {"serviceName": "xgboost-iris", "data": "$request"},
                    ],
                }
            }
        },
    }
    assert isinstance(parse_resource(doc), graph.InferenceGraph)


# --- autoscaling fields ------------------------------------------------------------------------


def scaling(doc: dict[str, Any], kind: str = "predictor") -> Any:
    resource = parse_resource(doc)
    assert isinstance(resource, InferenceService)
    return resource.scaling(kind)


def test_scaling_defaults_follow_knative() -> None:
    config = scaling(isvc())
    assert (config.metric, config.target, config.target_utilization) == ("concurrency", 100.0, 0.7)
    assert (config.stable_window_s, config.panic_threshold_pct, config.scale_to_zero_grace_s) == (60, 200, 30)


def test_scaling_fields_and_annotations() -> None:
    doc = isvc({"model": ONNX, "minReplicas": 0, "maxReplicas": 5, "scaleMetric": "rps", "scaleTarget": 50})
    doc["metadata"]["annotations"] = {"autoscaling.knative.dev/window": "2m"}
    config = scaling(doc)
    assert (config.min_replicas, config.max_replicas, config.metric, config.target) == (0, 5, "rps", 50)
    assert config.stable_window_s == 120


def test_kserve_autoscaling_metrics_form() -> None:
    external = {
        "type": "External",
        "external": {
            "metric": {"backend": "prometheus", "serverAddress": "http://prom:9090", "query": "sum(q)"},
            "target": {"type": "Value", "value": 4},
        },
    }
    config = scaling(isvc({"model": ONNX, "autoScaling": {"metrics": [external]}}))
    assert (config.metric, config.query, config.target) == ("custom", "sum(q)", 4)
    cpu = {
        "type": "Resource",
        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}},
    }
    config = scaling(isvc({"model": ONNX, "autoScaling": {"metrics": [cpu]}}))
    assert (config.metric, config.target) == ("cpu", 50)


@pytest.mark.parametrize(
    ("predictor", "annotations", "expected"),
    [
        ({"minReplicas": 3, "maxReplicas": 2}, {}, "spec.predictor.minReplicas"),
        ({"scaleTarget": 0}, {}, "spec.predictor.scaleTarget"),
        ({"scaleMetric": "gpu"}, {}, "spec.predictor.scaleMetric"),
        ({"scaleMetric": "memory"}, {}, "spec.predictor.scaleMetric"),  # no memory limit to scale against
        (
            {},
            {"autoscaling.knative.dev/window": "soon"},
            'metadata.annotations["autoscaling.knative.dev/window"]',
        ),
        (
            {},
            {"autoscaling.knative.dev/panic-threshold-percentage": "50"},
            'metadata.annotations["autoscaling.knative.dev/panic-threshold-percentage"]',
        ),
        (
            {"autoScaling": {"metrics": [{"type": "External"}]}},
            {},
            "spec.predictor.autoScaling.metrics[0].external",
        ),
    ],
)
def test_bad_autoscaling_fields_are_rejected_with_their_path(
    predictor: dict[str, Any], annotations: dict[str, str], expected: str
) -> None:
    doc = isvc({"model": ONNX, **predictor})
    doc["metadata"]["annotations"] = annotations
    found = problems(doc)
    assert any(p.startswith(f"InferenceService/iris: {expected}") for p in found), found
