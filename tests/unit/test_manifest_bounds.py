"""Parsed documents are bounded, not only their bytes (`serving.bounds`): YAML aliases expanded
("billion laughs"), nesting depth, values, and the bytes a resource takes as JSON. Through
`load_manifests` / `parse_documents` (the CLI's `-f`), the control API's apply (in process, over a
fake controller: a refused apply reaches neither the controller nor the store), the registry API's
JSON bodies and pipeline parameters. No servers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.applications import Starlette
from starlette.testclient import TestClient

from serving.api import api_routes
from serving.auth import Guard
from serving.bounds import MAX_DEPTH, MAX_NODES, Bounds, BoundsError, loads_json, measure
from serving.controller.controller import Controller
from serving.pipelines import PipelineError
from serving.pipelines.compiler import coerce_params
from serving.registry import Registry, RegistryConfig
from serving.registry.api import registry_routes
from serving.spec import ManifestError, load_manifests, parse_documents, read_manifest_paths
from serving.spec.manifests import MAX_RESOURCE_BYTES, ManifestTooLarge
from serving.store import Store
from tests import pipeline_components as pc

ROOT = Path(__file__).resolve().parents[2]

HEADER = """\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: lol}
spec:
  predictor: {model: {modelFormat: {name: onnx}, storageUri: /srv/models/mlp}}
"""
TOO_DEEP = f"the limit of {MAX_DEPTH} levels"
TOO_MANY = f"the limit of {MAX_NODES} values"
TOO_LARGE = f"the limit of {MAX_RESOURCE_BYTES} bytes"


def laughs(levels: int) -> str:
    """A "billion laughs": each level an unknown field listing the one before nine times."""
    lines = ["  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return HEADER + "\n".join(lines) + "\n"


def nested(levels: int) -> str:
    return HEADER + "  deep: " + "[" * levels + "]" * levels + "\n"


def refusal(text: str, kind: type[ManifestError] = ManifestError) -> str:
    with pytest.raises(ManifestError) as caught:
        load_manifests(text, "lol.yaml")
    assert type(caught.value) is kind
    (problem,) = caught.value.problems
    assert problem.path == "lol.yaml"
    return problem.message


# -- measuring --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        {"a": [1, 2.5, None, True, False, 'q"uote\\ and é'], "b": {}, "c": [], 7: "int key", True: "bool"},
        [[[]]],
        "just text",
        -(10**30),
        {"k": [{"a": 1}, "b"]},
    ],
)
def test_measured_bytes_are_json_dumps_bytes(value: Any) -> None:
    size = measure(value)
    assert size.json_bytes == len(json.dumps(value))


def test_a_value_reached_twice_counts_twice() -> None:
    shared = [1, 2]
    value = [shared, shared, {"a": shared}]
    assert measure(value).json_bytes == len(json.dumps(value))
    assert measure(value).nodes == 1 + 3 * 3 + 2  # the list, three copies of [1, 2], the mapping and its key
    assert measure(value).depth == 3


def test_each_bound_is_named() -> None:
    with pytest.raises(BoundsError, match="the limit of 2 levels") as caught:
        measure([[[]]], Bounds(max_depth=2))
    assert caught.value.limit == "max_depth" and not caught.value.too_large
    with pytest.raises(BoundsError, match="the limit of 3 values") as caught:
        measure([1, 2, 3], Bounds(max_nodes=3))
    assert caught.value.limit == "max_nodes" and not caught.value.too_large
    with pytest.raises(BoundsError, match="the limit of 8 bytes as JSON") as caught:
        measure(["abcdefgh"], Bounds(max_bytes=8))
    assert caught.value.limit == "max_bytes" and caught.value.too_large
    assert measure([1, 2], Bounds(max_depth=1, max_nodes=3, max_bytes=6)).json_bytes == 6  # at the bound


def test_json_deeper_than_python_can_parse_is_too_deep() -> None:
    with pytest.raises(BoundsError, match=TOO_DEEP):
        loads_json("[" * 200_000 + "]" * 200_000)
    with pytest.raises(json.JSONDecodeError):
        loads_json("{nope")


# -- manifests --------------------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [7, 40])
def test_billion_laughs_is_refused_without_expanding(levels: int) -> None:
    # 9**40 values: the test finishes only because aliases are sized once, not expanded.
    assert TOO_MANY in refusal(laughs(levels))


def test_a_few_aliases_are_fine() -> None:
    (resource,) = load_manifests(laughs(3))  # 9**4 values: under the bound
    assert resource.metadata.name == "lol"


@pytest.mark.parametrize(
    "text",
    [
        nested(MAX_DEPTH + 1),
        nested(100_000),  # past PyYAML's own recursion
        HEADER + "  deep:\n" + "".join("  " * (i + 2) + f"k{i}:\n" for i in range(MAX_DEPTH + 2)),
        HEADER + "  loop: &loop [*loop]\n",  # contains itself
        HEADER + "  loop: &loop {again: *loop}\n",
        '{"kind": "InferenceService", "deep": ' + "[" * 100 + "]" * 100 + "}",
        '{"kind": "InferenceService", "deep": ' + "[" * 500_000 + "]" * 500_000 + "}",
    ],
    ids=["yaml", "yaml-past-recursion", "yaml-block", "recursive-list", "recursive-map", "json", "json-1MB"],
)
def test_deep_nesting_is_refused(text: str) -> None:
    assert TOO_DEEP in refusal(text)


def test_nesting_at_the_bound_is_fine() -> None:
    # the document's own mapping, `spec`, then the lists: MAX_DEPTH levels in all
    (resource,) = load_manifests(nested(MAX_DEPTH - 2))
    assert resource.metadata.name == "lol"


def test_a_resource_larger_than_the_bound_is_too_large() -> None:
    big = HEADER + f"  junk: {'x' * MAX_RESOURCE_BYTES}\n"
    assert TOO_LARGE in refusal(big, ManifestTooLarge)
    # the same through aliases: 64 KiB written once, kept twenty times
    text = HEADER + f"  s: &s {'x' * (1 << 16)}\n  junk: [{', '.join(['*s'] * 20)}]\n"
    assert TOO_LARGE in refusal(text, ManifestTooLarge)


def test_each_item_of_a_list_is_held_to_the_resource_bound() -> None:
    small = yaml.safe_load(HEADER)
    large = {**small, "metadata": {"name": "big"}, "junk": "x" * MAX_RESOURCE_BYTES}
    text = json.dumps({"apiVersion": "v1", "kind": "List", "items": [small, large]})
    with pytest.raises(ManifestTooLarge) as caught:
        parse_documents(text, "all.json")
    assert [p.path for p in caught.value.problems] == ["all.json: items[1]"]
    assert TOO_LARGE in caught.value.problems[0].message


def test_the_cli_reading_path_refuses_too(tmp_path: Path) -> None:
    """`servegate apply -f` of several files parses them client side with `parse_documents`."""
    (tmp_path / "a.yaml").write_text(HEADER)
    (tmp_path / "b.yaml").write_text(laughs(7))
    (a, a_text), (b, b_text) = read_manifest_paths([str(tmp_path)])
    assert len(parse_documents(a_text, a)) == 1
    with pytest.raises(ManifestError, match=TOO_MANY) as caught:
        parse_documents(b_text, b)
    assert [p.path for p in caught.value.problems] == [b]


def test_shipped_manifests_still_load() -> None:
    sources = read_manifest_paths([str(ROOT / "tests" / "manifests")])
    sources += [(str(p), p.read_text()) for p in sorted((ROOT / "examples").glob("*.yaml"))]
    assert len(sources) >= 5
    for source, text in sources:
        resources = load_manifests(text, source)
        assert resources, source
        for document in parse_documents(text, source):
            size = measure(document)
            assert size.depth < MAX_DEPTH // 4 and size.json_bytes < MAX_RESOURCE_BYTES // 100, source


# -- the control API --------------------------------------------------------------------------------


class FakeController(Controller):
    """A Controller that is never started (no engine, no router), so the API's checks run against
    its real defaults; `apply` records the resources and keeps their manifests as the real one does."""

    def __init__(self, store: Store) -> None:
        super().__init__(store, engine=None, router=None, gateway_url="http://127.0.0.1:1")  # type: ignore[arg-type]
        self.applied: list[Any] = []

    def manifest_problems(self, resources: list[Any]) -> list[Any]:
        return []  # no engine: each engine's own checks are tested with it

    async def apply(self, resources: list[Any], **_: Any) -> list[dict[str, str]]:
        self.applied += resources
        results = []
        for r in resources:
            manifest = r.model_dump(mode="json", by_alias=True, exclude_none=True)
            action = self.store.put_resource(r.kind, r.metadata.name, manifest)
            results.append({"kind": r.kind, "name": r.metadata.name, "action": action})
        return results


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[FakeController]:
    store = Store(tmp_path / "state.db")
    yield FakeController(store)
    store.close()


@pytest.fixture
def control_api(controller: FakeController) -> Iterator[TestClient]:
    app = Starlette(routes=api_routes(controller, Guard(None)))
    with TestClient(app) as client:
        yield client


@pytest.mark.parametrize(
    ("text", "status", "limit"),
    [
        (laughs(7), 400, TOO_MANY),
        (nested(10_000), 400, TOO_DEEP),
        (HEADER + f"  junk: {'x' * MAX_RESOURCE_BYTES}\n", 413, TOO_LARGE),
        (HEADER + f"  s: &s {'x' * (1 << 16)}\n  junk: [{', '.join(['*s'] * 20)}]\n", 413, TOO_LARGE),
    ],
    ids=["billion-laughs", "deep", "large", "large-through-aliases"],
)
def test_apply_refuses_past_a_bound_and_keeps_nothing(
    control_api: TestClient, controller: FakeController, text: str, status: int, limit: str
) -> None:
    response = control_api.post("/api/v1/apply", content=text.encode())
    assert response.status_code == status, response.text
    body = response.json()
    assert "nothing applied" in body["error"]
    assert [limit in p["message"] for p in body["problems"]] == [True]
    assert controller.applied == []
    assert controller.store.resources() == []


def test_apply_of_a_normal_manifest_is_kept(control_api: TestClient, controller: FakeController) -> None:
    response = control_api.post("/api/v1/apply", content=laughs(2).encode())
    assert response.status_code == 200, response.text
    (row,) = controller.store.resources()
    assert len(json.dumps(row.manifest)) < MAX_RESOURCE_BYTES


# -- the registry API and pipeline parameters -------------------------------------------------------


@pytest.fixture
def registry_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("SERVEGATE_CACHE_DIR", str(tmp_path / "cache"))
    config = RegistryConfig(f"sqlite:///{tmp_path / 'registry.db'}", str(tmp_path / "artifacts"))
    registry = Registry(config, cache_dir=tmp_path / "cache")
    try:
        with TestClient(Starlette(routes=registry_routes(registry, Guard(None)))) as client:
            yield client
    finally:
        registry.close()


@pytest.mark.parametrize(
    ("body", "limit"),
    [
        ('{"source": "/x", "tags": ' + "[" * 100 + "]" * 100 + "}", TOO_DEEP),
        ('{"source": "/x", "tags": ' + "[" * 400_000 + "]" * 400_000 + "}", TOO_DEEP),  # 800 KB
        ('{"source": "/x", "tags": [' + ",".join(["0"] * (MAX_NODES + 1)) + "]}", TOO_MANY),
    ],
    ids=["deep", "past-recursion", "wide"],
)
def test_registry_bodies_past_a_bound_are_400(registry_api: TestClient, body: str, limit: str) -> None:
    response = registry_api.post(
        "/api/registry/models/mlp/versions", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert limit in response.json()["error"]
    assert registry_api.get("/api/registry/models").json()["items"] == []


def test_pipeline_parameters_past_a_bound_are_problems() -> None:
    deep = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
    with pytest.raises(PipelineError) as caught:
        coerce_params(pc.fan_out, {"factors": deep})
    (problem,) = caught.value.problems
    assert problem.where == "pipeline parameter 'factors'" and TOO_DEEP in problem.message
    assert coerce_params(pc.fan_out, {"factors": "[0.5, 2]"}) == {"factors": [0.5, 2]}
