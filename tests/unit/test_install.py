"""`servegate install`: its objects validate against Kubernetes' own schemas, its RBAC is what the
operator and the engine need and no more, and servegate's manifests are KServe's (plus the
documented servegate fields, and nothing else)."""

from __future__ import annotations

import copy
import gzip
import hashlib
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from pydantic import BaseModel

from serving import __version__
from serving.cli.main import cli
from serving.engines.kubernetes.names import IMAGE, SERVING_GROUP
from serving.operator import install
from serving.operator.crds import CRD_FILES, crd_schema, load_crds
from serving.spec.graph import InferenceGraph
from serving.spec.isvc import InferenceService
from serving.spec.trained_model import TrainedModel
from tests.kube_schemas import SERVEGATE_EXTENSIONS, validate

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "serving" / "operator" / "crds"
#: the InferenceService CRD is 1.9 MB of YAML: libyaml parses it in a fraction of PyYAML's time.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
CUSTOM = {
    "namespace": "ml-serving",
    "image": "registry.local/sg:dev",
    "gateway_replicas": 3,
    "state_url_secret": "db",
}


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return install.install_objects(**CUSTOM)


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


# -- the objects ----------------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [{}, CUSTOM], ids=["defaults", "custom"])
def test_every_object_validates_strictly(settings: dict[str, Any]) -> None:
    for obj in install.install_objects(**settings):
        assert validate(obj) == []


def test_objects_in_apply_order(objects: list[dict[str, Any]]) -> None:
    kinds = [o["kind"] for o in objects]
    assert kinds[:4] == ["CustomResourceDefinition"] * 3 + ["Namespace"]
    assert [o["metadata"]["name"] for o in objects[:3]] == [
        f"{plural}.{SERVING_GROUP}" for plural in ("inferenceservices", "trainedmodels", "inferencegraphs")
    ]
    assert kinds.index("ServiceAccount") < kinds.index("Deployment")
    assert {
        o["metadata"].get("namespace")
        for o in objects[4:]
        if o["kind"] not in ("ClusterRole", "ClusterRoleBinding")
    } == {"ml-serving"}


def _granted(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (g, r, v)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def _expected_permissions() -> set[tuple[str, str, str]]:
    crud = ("get", "list", "watch", "create", "update", "patch", "delete")
    expected = set()
    for kind in ("inferenceservices", "trainedmodels", "inferencegraphs"):
        expected |= {(SERVING_GROUP, kind, v) for v in ("get", "list", "watch", "update", "patch")}
        expected |= {(SERVING_GROUP, f"{kind}/status", v) for v in ("get", "update", "patch")}
        expected.add((SERVING_GROUP, f"{kind}/finalizers", "update"))
    expected |= {("apps", "deployments", v) for v in crud}
    expected |= {("apps", "deployments/scale", v) for v in ("get", "update", "patch")}
    expected |= {("", resource, v) for resource in ("services", "secrets") for v in crud}
    expected |= {("discovery.k8s.io", "endpointslices", v) for v in ("get", "list", "watch")}
    expected |= {("", "pods", v) for v in ("get", "list", "watch")} | {("", "pods/log", "get")}
    expected |= {(group, "events", v) for group in ("", "events.k8s.io") for v in ("create", "patch")}
    return expected


def test_cluster_role_grants_exactly_what_is_needed(objects: list[dict[str, Any]]) -> None:
    role = _one(objects, "ClusterRole", "servegate")
    assert _granted(role["rules"]) == _expected_permissions()
    for rule in role["rules"]:
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"]
        assert set(rule) == {"apiGroups", "resources", "verbs"}  # no nonResourceURLs, no resourceNames games


def test_leases_only_in_servegates_namespace(objects: list[dict[str, Any]]) -> None:
    role = _one(objects, "Role", "servegate-leader-election")
    assert role["metadata"]["namespace"] == "ml-serving"
    assert _granted(role["rules"]) == {
        ("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")
    }


def test_bindings_give_the_roles_to_the_service_account(objects: list[dict[str, Any]]) -> None:
    subject = {"kind": "ServiceAccount", "name": "servegate", "namespace": "ml-serving"}
    _one(objects, "ServiceAccount", "servegate")
    for kind, role in (("ClusterRoleBinding", "servegate"), ("RoleBinding", "servegate-leader-election")):
        binding = _one(objects, kind, role)
        assert binding["subjects"] == [subject]
        assert binding["roleRef"]["name"] == role
    for name in (install.OPERATOR_NAME, install.GATEWAY_NAME):
        assert (
            _one(objects, "Deployment", name)["spec"]["template"]["spec"]["serviceAccountName"] == "servegate"
        )


@pytest.mark.parametrize("name", [install.OPERATOR_NAME, install.GATEWAY_NAME])
def test_pods_are_hardened(objects: list[dict[str, Any]], name: str) -> None:
    pod = _one(objects, "Deployment", name)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [container] = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]
    assert container["resources"]["requests"].keys() == {"cpu", "memory"}
    assert container["readinessProbe"]["httpGet"] and container["livenessProbe"]["httpGet"]
    assert container["image"] == "registry.local/sg:dev"


def test_operator_runs_two_replicas_with_a_health_port(objects: list[dict[str, Any]]) -> None:
    deployment = _one(objects, "Deployment", install.OPERATOR_NAME)
    assert deployment["spec"]["replicas"] == 2
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert [*container["command"], *container["args"][:3]] == [
        "servegate",
        "operator",
        "--namespace",
        "ml-serving",
    ]
    assert container["ports"] == [
        {"name": "health", "containerPort": install.OPERATOR_HEALTH_PORT, "protocol": "TCP"}
    ]
    assert container["readinessProbe"]["httpGet"]["port"] == "health"


def test_gateway_reads_its_state_url_from_the_secret(objects: list[dict[str, Any]]) -> None:
    deployment = _one(objects, "Deployment", install.GATEWAY_NAME)
    assert deployment["spec"]["replicas"] == 3
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[:8] == [
        "up",
        "--engine",
        "kubernetes",
        "--namespace",
        "ml-serving",
        "--image",
        "registry.local/sg:dev",
        "--host",
    ]
    assert args[args.index("--state-url") + 1] == "$(SERVEGATE_STATE_URL)"
    env = {e["name"]: e for e in container["env"]}
    assert env["SERVEGATE_STATE_URL"]["valueFrom"] == {"secretKeyRef": {"name": "db", "key": "url"}}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}


def test_gateway_without_a_state_secret_keeps_state_in_an_empty_dir() -> None:
    gateway = _one(install.install_objects(), "Deployment", install.GATEWAY_NAME)
    [container] = gateway["spec"]["template"]["spec"]["containers"]
    assert "--state-url" not in container["args"]
    assert "SERVEGATE_STATE_URL" not in {e["name"] for e in container["env"]}
    assert container["image"] == IMAGE


def test_gateway_service_selects_the_gateway_pods(objects: list[dict[str, Any]]) -> None:
    service = _one(objects, "Service", install.GATEWAY_NAME)
    pods = _one(objects, "Deployment", install.GATEWAY_NAME)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= pods.items()
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert (ports["http"]["port"], ports["grpc"]["port"]) == (8080, 8081)
    assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    assert pods["app.kubernetes.io/part-of"] == "servegate"
    assert pods["app.kubernetes.io/managed-by"] == "servegate"


@pytest.mark.parametrize(
    "settings",
    [
        {"namespace": "Bad_NS"},
        {"state_url_secret": "-db"},
        {"gateway_replicas": 0},
        {"image": "a b"},
        {"gateway_replicas": 2},  # several gateways, each with a state of its own
    ],
)
def test_bad_settings_raise(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        install.install_objects(**settings)


# -- the command ----------------------------------------------------------------------------------


def test_install_prints_multi_document_yaml() -> None:
    args = ["install", "-n", "ml-serving", "--gateway-replicas", "3", "--state-url-secret", "state-db"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    first, _, _ = result.stdout.partition("\n")
    assert first.startswith("# servegate ") and __version__ in first
    assert "\n---\n" in result.stdout
    documents = list(yaml.load_all(result.stdout, Loader=_LOADER))
    assert documents == install.install_objects(
        namespace="ml-serving", gateway_replicas=3, state_url_secret="state-db"
    )
    assert "&id" not in result.stdout  # no YAML anchors


def test_install_writes_a_file(tmp_path: Path) -> None:
    target = tmp_path / "servegate.yaml"
    result = CliRunner().invoke(cli, ["install", "--state-url-secret", "db", "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    documents = list(yaml.load_all(target.read_text(), Loader=_LOADER))
    assert [d["kind"] for d in documents] == [o["kind"] for o in install.install_objects()]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--namespace", "Bad_NS"], "Invalid value for '-n' / '--namespace'"),
        (["--state-url-secret", "a/b"], "Invalid value for '--state-url-secret'"),
        (["--gateway-replicas", "0"], "Invalid value for '--gateway-replicas'"),
        (["--image", "my image"], "image: 'my image' is not an image reference"),
    ],
)
def test_bad_arguments_are_click_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["install", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


# -- the vendored CRDs ----------------------------------------------------------------------------


def test_crds_are_kserves_and_match_their_checksums() -> None:
    recorded = (CRDS / "VERSIONS.md").read_text()
    for name in CRD_FILES:
        data = (CRDS / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() in recorded, name
        if name.endswith(".gz"):
            assert hashlib.sha256(gzip.decompress(data)).hexdigest() in recorded, name
    served = {(c["spec"]["names"]["kind"], v["name"]) for c in load_crds() for v in c["spec"]["versions"]}
    assert served == {
        ("InferenceService", "v1beta1"),
        ("TrainedModel", "v1alpha1"),
        ("InferenceGraph", "v1alpha1"),
    }


def test_crd_schema() -> None:
    schema = crd_schema(SERVING_GROUP, "v1beta1", "InferenceService")
    assert "predictor" in schema["properties"]["spec"]["properties"]
    with pytest.raises(KeyError):
        crd_schema(SERVING_GROUP, "v1", "InferenceService")


# -- servegate's manifests are KServe's -----------------------------------------------------------


def _manifest_docs() -> list[tuple[str, dict[str, Any]]]:
    """(file:name, document) of every KServe document in examples/ and tests/manifests/."""
    docs = []
    for path in sorted([*ROOT.glob("examples/*.yaml"), *ROOT.glob("tests/manifests/*.yaml")]):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("apiVersion", "").startswith(f"{SERVING_GROUP}/"):
                docs.append((f"{path.parent.name}/{path.name}:{doc['metadata']['name']}", doc))
    return docs


MANIFESTS = _manifest_docs()


@pytest.mark.parametrize("doc", [doc for _, doc in MANIFESTS], ids=[name for name, _ in MANIFESTS])
def test_manifests_validate_against_kserves_crds(doc: dict[str, Any]) -> None:
    assert validate(doc) == []


def test_transformer_model_is_servegates_only() -> None:
    with_model = [doc for _, doc in MANIFESTS if "model" in doc["spec"].get("transformer", {})]
    assert with_model
    for doc in with_model:
        [problem] = validate(doc, servegate_extensions=False)
        assert problem.endswith(
            "spec.transformer: Additional properties are not allowed ('model' was unexpected)"
        )


def _isvc(**spec: Any) -> dict[str, Any]:
    predictor = {"model": {"modelFormat": {"name": "onnx"}, "storageUri": "s3://models/mlp"}}
    return {
        "apiVersion": f"{SERVING_GROUP}/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "mlp"},
        "spec": {"predictor": predictor, **spec},
    }


@pytest.mark.parametrize("field", ["experiment", "shadow", "rollout"])
def test_servegate_fields_are_accepted_only_by_the_allow_list(field: str) -> None:
    doc = _isvc(**{field: {"percent": 10}})
    assert validate(doc) == []
    assert validate(doc, servegate_extensions=False) == [
        f"InferenceService/mlp: spec: Additional properties are not allowed ('{field}' was unexpected)"
    ]


def test_unknown_fields_are_refused_even_with_the_allow_list() -> None:
    problems = validate(_isvc(rollout={}, rolout={}))
    assert problems == [
        "InferenceService/mlp: spec: Additional properties are not allowed ('rolout' was unexpected)"
    ]


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _models_in(arg)


def _fields_kserve_lacks(model: type[BaseModel], schema: dict[str, Any], path: str) -> Iterator[str]:
    """Paths of `model`'s fields (and its nested models') that `schema` does not name."""
    for node in (schema, schema.get("items") or {}, schema.get("additionalProperties") or {}):
        if isinstance(node, dict) and "properties" in node:
            properties = node["properties"]
            break
    else:
        properties = {}
    for name, field in model.model_fields.items():
        alias = field.alias or name
        where = f"{path}.{alias}".lstrip(".")
        if where in ("metadata", "status"):  # ObjectMeta, checked as Kubernetes'; status: not written
            continue
        if alias not in properties:
            yield where
            continue
        for nested in _models_in(field.annotation):
            yield from _fields_kserve_lacks(nested, properties[alias], where)


@pytest.mark.parametrize(
    ("model", "version", "kind"),
    [
        (InferenceService, "v1beta1", "InferenceService"),
        (TrainedModel, "v1alpha1", "TrainedModel"),
        (InferenceGraph, "v1alpha1", "InferenceGraph"),
    ],
)
def test_allow_list_is_exactly_the_fields_kserve_lacks(
    model: type[BaseModel], version: str, kind: str
) -> None:
    lacking = set(_fields_kserve_lacks(model, crd_schema(SERVING_GROUP, version, kind), ""))
    assert lacking == set(SERVEGATE_EXTENSIONS.get(kind, {}))


# -- the validator catches what an API server refuses ---------------------------------------------


def _deployment() -> dict[str, Any]:
    return copy.deepcopy(_one(install.install_objects(), "Deployment", install.GATEWAY_NAME))


def test_bad_quantity_is_a_readable_problem() -> None:
    deployment = _deployment()
    deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["memory"] = "512 MB"
    assert validate(deployment) == [
        "Deployment/servegate-gateway: spec.template.spec.containers[0].resources.requests.memory: "
        "'512 MB' is not a Kubernetes quantity (such as 500m, 2 or 1Gi)"
    ]


def test_bad_name_is_a_readable_problem() -> None:
    deployment = _deployment()
    deployment["metadata"]["name"] = "Gateway_1"
    [problem] = validate(deployment)
    assert problem.startswith("Deployment/Gateway_1: metadata.name: 'Gateway_1' must be lowercase letters")


def test_unknown_field_and_wrong_type_are_problems() -> None:
    deployment = _deployment()
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "Always"
    deployment["spec"]["template"]["spec"]["containers"][0]["cpu"] = "1"
    [problem] = validate(deployment)
    assert "containers[0]: Additional properties are not allowed ('cpu' was unexpected)" in problem
    deployment = _deployment()
    deployment["spec"]["replicas"] = "two"
    assert "spec.replicas: 'two' is not of type" in validate(deployment)[0]


def test_selector_must_match_the_template() -> None:
    deployment = _deployment()
    deployment["spec"]["selector"]["matchLabels"] = {"app": "other"}
    assert validate(deployment) == [
        "Deployment/servegate-gateway: spec.template.metadata.labels: "
        "`selector` does not match template `labels`"
    ]
