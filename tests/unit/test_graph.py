"""InferenceGraph: the manifest model, its GJSON conditions, and the executor with fake callers."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import pytest
import yaml
from pydantic import ValidationError

from router.policies import gjson
from router.policies.graph import GraphRunner, StepReply
from serving.spec.common import ManifestError, Problem, problems_from
from serving.spec.graph import InferenceGraph, InferenceStep

# --- manifests -----------------------------------------------------------------------------------


def _graph(text: str) -> InferenceGraph:
    return InferenceGraph.model_validate(yaml.safe_load(text))


def _nodes(nodes: dict[str, Any], **spec: Any) -> InferenceGraph:
    return InferenceGraph.model_validate(
        {
            "apiVersion": "serving.kserve.io/v1alpha1",
            "kind": "InferenceGraph",
            "metadata": {"name": "g"},
            "spec": {"nodes": nodes, **spec},
        }
    )


# The samples of KServe's docs (website: docs/modelserving/inference_graph/overview.md and
# image_pipeline/cat_dog_breed_classifier_seq.yaml).
SEQUENCE = """
apiVersion: serving.kserve.io/v1alpha1
kind: InferenceGraph
metadata:
  name: sequential-processing-pipeline
spec:
  nodes:
    root:
      routerType: Sequence
      steps:
      - serviceName: preprocessor
        name: preprocess_step
      - serviceName: classifier
        name: classify
        data: $response
      - serviceName: text-classifier
        name: classify_text
        condition: "[@this].#(predictions.0.class==\\"news\\")"
      - serviceName: named-entity-recognition
        name: classify_news
        condition: "[@this].#(predictions.0.class==\\"sports\\")"
"""

SWITCH = """
apiVersion: serving.kserve.io/v1alpha1
kind: InferenceGraph
metadata:
  name: conditional-routing-pipeline
spec:
  nodes:
    root:
      routerType: Switch
      steps:
      - serviceName: upper
        condition: "[@this].#(instances.0.data>0.9)"
      - serviceName: lower
        condition: "[@this].#(instances.0.data<=0.5)"
"""

ENSEMBLE = """
apiVersion: serving.kserve.io/v1alpha1
kind: InferenceGraph
metadata:
  name: model-ensemble
spec:
  nodes:
    root:
      routerType: Ensemble
      steps:
      - serviceName: model-a
        name: model_a
      - serviceName: model-b
        name: model_b
      - serviceName: model-c
        name: model_c
"""

SPLITTER = """
apiVersion: serving.kserve.io/v1alpha1
kind: InferenceGraph
metadata:
  name: traffic-splitter
spec:
  nodes:
    root:
      routerType: Splitter
      steps:
      - serviceName: model-a
        name: target_a
        weight: 50
      - serviceName: model-b
        name: target_b
        weight: 30
      - serviceName: model-c
        name: target_c
        weight: 20
"""

DOG_BREED = """
apiVersion: "serving.kserve.io/v1alpha1"
kind: "InferenceGraph"
metadata:
  name: "dog-breed-pipeline"
spec:
  nodes:
    root:
      routerType: Sequence
      steps:
      - serviceName: cat-dog-classifier
        name: cat_dog_classifier
      - serviceName: dog-breed-classifier
        name: dog_breed_classifier
        data: $request
        condition: "[@this].#(predictions.0==\\"dog\\")"
"""


@pytest.mark.parametrize(
    ("text", "services"),
    [
        (SEQUENCE, {"preprocessor", "classifier", "text-classifier", "named-entity-recognition"}),
        (SWITCH, {"upper", "lower"}),
        (ENSEMBLE, {"model-a", "model-b", "model-c"}),
        (SPLITTER, {"model-a", "model-b", "model-c"}),
        (DOG_BREED, {"cat-dog-classifier", "dog-breed-classifier"}),
    ],
    ids=["sequence", "switch", "ensemble", "splitter", "dog-breed"],
)
def test_kserve_samples_are_valid(text: str, services: set[str]) -> None:
    graph = _graph(text)
    assert graph.check() == []
    assert graph.warnings() == []
    assert graph.services() == services


def test_nested_nodes_and_kserve_spec_fields_are_accepted() -> None:
    graph = _nodes(
        {
            "root": {
                "routerType": "Sequence",
                "steps": [
                    {"nodeName": "choose", "name": "split"},
                    {"nodeName": "parallel", "name": "ensemble"},
                ],
            },
            "choose": {
                "routerType": "Splitter",
                "steps": [
                    {"serviceName": "a", "weight": 30},
                    {"serviceUrl": "http://b.default/v1", "weight": 70},
                ],
            },
            "parallel": {"routerType": "Ensemble", "steps": [{"serviceName": "c"}, {"serviceName": "d"}]},
        },
        resources={"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": 1}},
        affinity={"nodeAffinity": {}},
        timeout=30,
        minReplicas=0,
        maxReplicas=3,
    )
    assert graph.check() == []
    assert graph.services() == {"a", "c", "d"}
    assert graph.spec.min_replicas == 0 and graph.spec.timeout == 30


def test_every_problem_is_listed_with_its_path() -> None:
    graph = _nodes(
        {
            "main": {
                "routerType": "Sequence",
                "steps": [
                    {"serviceName": "a", "weight": 10},
                    {"serviceName": "b", "serviceUrl": "http://b"},
                    {"nodeName": "nowhere"},
                    {"serviceName": "c", "data": "$previous"},
                    {"serviceName": "d", "condition": 'predictions.#(label=="dog"'},
                    {"name": "e"},
                ],
            },
            "split": {
                "routerType": "Splitter",
                "steps": [{"serviceName": "a", "weight": 60}, {"serviceName": "b", "weight": 30}],
            },
        }
    )
    assert graph.check() == [
        Problem("spec.nodes", "no node named 'root': every request enters there"),
        Problem("spec.nodes.main.steps[0].weight", "only Splitter steps take a weight, not Sequence"),
        Problem("spec.nodes.main.steps[1]", "sets serviceName and serviceUrl: a step has exactly one target"),
        Problem("spec.nodes.main.steps[2].nodeName", "no node named 'nowhere' in spec.nodes"),
        Problem("spec.nodes.main.steps[3].data", "'$previous' is not one of $request, $response"),
        Problem("spec.nodes.main.steps[4].condition", "not a GJSON path: '(' at position 13 is never closed"),
        Problem("spec.nodes.main.steps[5]", "no target: set one of serviceName, serviceUrl, nodeName"),
        Problem("spec.nodes.split.steps", "Splitter weights sum to 90, not 100"),
    ]


def test_splitter_steps_need_weights_and_unique_names() -> None:
    graph = _nodes(
        {
            "root": {
                "routerType": "Splitter",
                "steps": [
                    {"serviceName": "a", "name": "x", "weight": 100},
                    {"serviceName": "b", "name": "x"},
                ],
            }
        }
    )
    assert graph.check() == [
        Problem("spec.nodes.root.steps[1].weight", "a Splitter step needs a weight"),
        Problem("spec.nodes.root.steps[1].name", "'x' is already the name of steps[0]"),
    ]


@pytest.mark.parametrize(
    ("nodes", "expected"),
    [
        (
            {
                "root": {"routerType": "Sequence", "steps": [{"nodeName": "a"}]},
                "a": {"routerType": "Switch", "steps": [{"nodeName": "root", "condition": "x"}]},
            },
            [Problem("spec.nodes.a.steps[0].nodeName", "cycle: root -> a -> root")],
        ),
        (
            {"root": {"routerType": "Sequence", "steps": [{"serviceName": "s"}, {"nodeName": "root"}]}},
            [Problem("spec.nodes.root.steps[1].nodeName", "cycle: root -> root")],
        ),
        (
            {
                "root": {"routerType": "Ensemble", "steps": [{"nodeName": "a"}, {"nodeName": "b"}]},
                "a": {"routerType": "Sequence", "steps": [{"nodeName": "b"}]},
                "b": {"routerType": "Sequence", "steps": [{"nodeName": "c"}]},
                "c": {"routerType": "Sequence", "steps": [{"nodeName": "a"}]},
            },
            [Problem("spec.nodes.c.steps[0].nodeName", "cycle: a -> b -> c -> a")],
        ),
    ],
    ids=["through-root", "self", "reported-once"],
)
def test_cycles_are_named(nodes: dict[str, Any], expected: list[Problem]) -> None:
    assert _nodes(nodes).check() == expected


def test_a_diamond_is_not_a_cycle() -> None:
    graph = _nodes(
        {
            "root": {"routerType": "Ensemble", "steps": [{"nodeName": "a"}, {"nodeName": "b"}]},
            "a": {"routerType": "Sequence", "steps": [{"nodeName": "c"}]},
            "b": {"routerType": "Sequence", "steps": [{"nodeName": "c"}]},
            "c": {"routerType": "Sequence", "steps": [{"serviceName": "s"}]},
        }
    )
    assert graph.check() == []


def test_a_condition_on_the_first_sequence_step_is_a_problem() -> None:
    # KServe tests it on the previous step's reply; there is none, so every request would fail.
    graph = _nodes({"root": {"routerType": "Sequence", "steps": [{"serviceName": "a", "condition": "x"}]}})
    assert [p.path for p in graph.check()] == ["spec.nodes.root.steps[0].condition"]


def test_kserve_docs_and_condition_is_rejected_with_a_reason() -> None:
    # The overview's third Switch step: GJSON has no &&, KServe compares against the text after '>'.
    graph = _nodes(
        {
            "root": {
                "routerType": "Switch",
                "steps": [
                    {
                        "nodeName": "middle",
                        "condition": "[@this].#(instances.0.data>0.5 && instances.0.data<=0.9)",
                    }
                ],
            },
            "middle": {"routerType": "Sequence", "steps": [{"serviceName": "m"}]},
        }
    )
    (problem,) = graph.check()
    assert problem.path == "spec.nodes.root.steps[0].condition"
    assert "no '&&' or '||'" in problem.message


def test_scaling_fields_are_checked() -> None:
    graph = _nodes(
        {"root": {"routerType": "Sequence", "steps": [{"serviceName": "a"}]}},
        resources={"limits": {"nvidia.com/gpu": "0.5"}},
        minReplicas=4,
        maxReplicas=2,
    )
    assert [p.path for p in graph.check()] == ["spec.resources.limits.nvidia.com/gpu", "spec.maxReplicas"]


def test_type_errors_come_with_document_paths() -> None:
    document = yaml.safe_load(SPLITTER)
    document["apiVersion"] = "serving.kserve.io/v1beta1"
    document["spec"]["nodes"]["root"]["routerType"] = "RoundRobin"
    document["spec"]["nodes"]["root"]["steps"][1]["weight"] = 130
    document["spec"]["nodes"]["root"]["steps"][2]["dependency"] = "Firm"
    document["spec"]["resources"] = {"limits": {"cpu": "lots"}}
    with pytest.raises(ValidationError) as caught:
        InferenceGraph.model_validate(document)
    assert [p.path for p in problems_from(caught.value)] == [
        "apiVersion",
        "spec.nodes.root.routerType",
        "spec.nodes.root.steps[1].weight",
        "spec.nodes.root.steps[2].dependency",
        "spec.resources.limits.cpu",
    ]


def test_warnings_name_unknown_fields_and_settings_that_do_nothing() -> None:
    graph = _nodes(
        {
            "root": {
                "routerType": "Switch",
                "steps": [
                    {"serviceName": "a", "condition": "x", "data": "$response"},
                    {"serviceName": "b", "extra": 1},
                ],
            },
            "spare": {"routerType": "Ensemble", "steps": [{"serviceName": "c", "condition": "x"}]},
        },
        serviceAccountName="robot",
    )
    assert graph.check() == []
    assert graph.warnings() == [
        "spec.serviceAccountName: unknown field, ignored",
        "spec.nodes.root.steps[1].extra: unknown field, ignored",
        "spec.nodes.root.steps[0].data: ignored outside Sequence nodes",
        "spec.nodes.root.steps[1]: a Switch step without a condition never matches",
        "spec.nodes.spare: not reachable from 'root', so it never runs",
        "spec.nodes.spare.steps[0].condition: ignored by Ensemble nodes",
    ]


# --- GJSON -----------------------------------------------------------------------------------------

# The example document of GJSON's SYNTAX.md.
PERSON = {
    "name": {"first": "Tom", "last": "Anderson"},
    "age": 37,
    "children": ["Sara", "Alex", "Jack"],
    "fav.movie": "Deer Hunter",
    "friends": [
        {"first": "Dale", "last": "Murphy", "age": 44, "nets": ["ig", "fb", "tw"]},
        {"first": "Roger", "last": "Craig", "age": 68, "nets": ["fb", "tw"]},
        {"first": "Jane", "last": "Murphy", "age": 47, "nets": ["ig", "tw"]},
    ],
}
DALE = PERSON["friends"][0]
ROGER = PERSON["friends"][1]
JANE = PERSON["friends"][2]
ABSENT = object()


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # Basic, wildcards, escapes
        ("name.last", "Anderson"),
        ("name.first", "Tom"),
        ("age", 37),
        ("children", ["Sara", "Alex", "Jack"]),
        ("children.0", "Sara"),
        ("children.1", "Alex"),
        ("friends.1", ROGER),
        ("friends.1.first", "Roger"),
        ("child*.2", "Jack"),
        ("c?ildren.0", "Sara"),
        ("fav\\.movie", "Deer Hunter"),
        # Arrays
        ("friends.#", 3),
        ("friends.#.age", [44, 68, 47]),
        # Queries
        ('friends.#(last=="Murphy").first', "Dale"),
        ('friends.#(last=="Murphy")#.first', ["Dale", "Jane"]),
        ("friends.#(age>45)#.last", ["Craig", "Murphy"]),
        ('friends.#(first%"D*").last', "Murphy"),
        ('friends.#(first!%"D*").last', "Craig"),
        ('children.#(!%"*a*")', "Alex"),
        ('children.#(%"*a*")#', ["Sara", "Jack"]),
        ('friends.#(nets.#(=="fb"))#.first', ["Dale", "Roger"]),
        # Dot vs pipe
        ("friends.0.first", "Dale"),
        ("friends|0.first", "Dale"),
        ("friends.0|first", "Dale"),
        ("friends|0|first", "Dale"),
        ("friends|#", 3),
        ('friends.#(last="Murphy")#', [DALE, JANE]),
        ('friends.#(last="Murphy")#.first', ["Dale", "Jane"]),
        ('friends.#(last="Murphy")#|first', ABSENT),
        ('friends.#(last="Murphy")#.0', []),
        ('friends.#(last="Murphy")#|0', DALE),
        ('friends.#(last="Murphy")#.#', []),
        ('friends.#(last="Murphy")#|#', 2),
        # @this and multipaths, as KServe's conditions use them
        ("@this.name.last", "Anderson"),
        ("[name.first,age]", ["Tom", 37]),
        ("[@this].#(age==37).name.first", "Tom"),
        ("[@this].#(age>40)", ABSENT),
        # More queries: every operator, quoted numbers, nested paths, existence
        ("friends.#(age==44).first", "Dale"),
        ("friends.#(age!=44)#.first", ["Roger", "Jane"]),
        ("friends.#(age<47)#.first", ["Dale"]),
        ("friends.#(age<=47)#.first", ["Dale", "Jane"]),
        ("friends.#(age>=47)#.first", ["Roger", "Jane"]),
        ('friends.#(age=="68").first', "Roger"),
        ('friends.#(last>"D")#.first', ["Dale", "Jane"]),
        ('friends.#(nets.0=="fb").first', "Roger"),
        ("friends.#(nets.2).first", "Dale"),
        ("friends.#(middle)", ABSENT),
        # Absent values
        ("name.middle", ABSENT),
        ("children.3", ABSENT),
        ("children.first", ABSENT),
        ("age.value", ABSENT),
        ("children.#.x", []),
        ('friends.#(last=="Nope")', ABSENT),
        ('friends.#(last=="Nope")#', []),  # GJSON: an empty array, which exists
    ],
)
def test_gjson_paths(path: str, expected: Any) -> None:
    result = gjson.get(PERSON, path)
    if expected is ABSENT:
        assert result == gjson.Result(False)
    else:
        assert result == gjson.Result(True, expected)


# SYNTAX.md's `~` example.
VALS = {
    "vals": [
        {"a": 1, "b": True},
        {"a": 2, "b": True},
        {"a": 3, "b": False},
        {"a": 4, "b": "0"},
        {"a": 5, "b": 0},
        {"a": 6, "b": "1"},
        {"a": 7, "b": 1},
        {"a": 8, "b": "true"},
        {"a": 9, "b": False},
        {"a": 10, "b": None},
        {"a": 11},
    ]
}


@pytest.mark.parametrize(
    ("document", "path", "expected"),
    [
        (VALS, "vals.#(b==~true)#.a", [1, 2, 6, 7, 8]),
        (VALS, "vals.#(b==~false)#.a", [3, 4, 5, 9, 10, 11]),
        # GJSON's rules, quirks included: strings compare as text, numbers with a non-number as with 0,
        # booleans only with true/false, and null with nothing.
        (VALS, "vals.#(b==true)#.a", [1, 2, 5, 8]),
        (VALS, "vals.#(b!=true)#.a", [3, 4, 6, 7, 9]),
        (VALS, "vals.#(b==null)#.a", [5]),
        ({"v": ["n/a", 0.2]}, "v.#(>0.9)#", ["n/a"]),
        ({"scores": [0.1, 0.7, 0.9]}, "scores.#(@>0.5)", 0.7),
        ({"scores": [0.1, 0.7, 0.9]}, "scores.#(@this>0.5)#", [0.7, 0.9]),
        ({"scores": [0.1, 0.7, 0.9]}, "scores.#(>0.5)#", [0.7, 0.9]),
        ({"labels": ["cat", "dog"]}, "labels.#(==dog)", "dog"),  # unquoted text, as GJSON takes it
        ({"a": None}, "a", None),  # a null that is there exists
        ({"a": {"b.c": {"d": 1}}}, "a.b\\.c.d", 1),
        ({"items": [{"id": "x"}]}, "items.0.id", "x"),
    ],
)
def test_gjson_values(document: Any, path: str, expected: Any) -> None:
    assert gjson.get(document, path) == gjson.Result(True, expected)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("", "empty path"),
        ("a..b", "empty key at position 2"),
        ("a.", "path ends with '.'"),
        ("a\\", "path ends with an escape"),
        ('friends.#(last=="Murphy"', "'(' at position 9 is never closed"),
        ('friends.#(last=="Murphy)', "string at position 16 is never closed"),
        ("friends.#(age>)", "has no value after '>'"),
        ("friends.#(age=>40)", "unknown operator '=>'"),
        ("friends.#(age>4 0)", "bad value '4 0'"),
        ("friends.#(age>40)x", "unexpected 'x' at position 17 after a query"),
        ("friends.#(b==~maybe)", "'~' takes true or false"),
        ("x.#(a>0.5 && a<0.9)", "GJSON has no '&&' or '||'"),
        ("x.#(a==1 || a==2)", "GJSON has no '&&' or '||'"),
        ("friends.#[age>40]", "old query syntax"),
        ("children.@reverse", "modifier '@reverse'"),
        ("{name.first,age}", "object multipaths"),
        ("!true", "literals"),
        ("..0", "JSON Lines"),
    ],
)
def test_gjson_rejects_bad_syntax(path: str, message: str) -> None:
    with pytest.raises(ValueError, match=None) as caught:
        gjson.parse(path)
    assert message in str(caught.value)


def test_gjson_accepts_a_parsed_path() -> None:
    path = gjson.parse("friends.#.first")
    assert str(path) == "friends.#.first"
    assert gjson.get(PERSON, path).value == ["Dale", "Roger", "Jane"]


# --- the executor ----------------------------------------------------------------------------------

Reply = StepReply | Exception | Callable[[Any], Any]


class FakeCaller:
    """Answers each service (by serviceName or serviceUrl) from a table and records every call.

    A table entry is a StepReply, an exception to raise, or a function of the parsed request
    body whose result is answered as JSON with 200.
    """

    def __init__(self, replies: Mapping[str, Reply]) -> None:
        self.replies = replies
        self.calls: list[tuple[str, Any, dict[str, str]]] = []

    async def __call__(self, step: InferenceStep, body: bytes, headers: Mapping[str, str]) -> StepReply:
        target = step.service_name or step.service_url or ""
        request = orjson.loads(body)
        self.calls.append((target, request, dict(headers)))
        reply = self.replies[target]
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, StepReply):
            return reply
        return StepReply(200, orjson.dumps(reply(request)))

    @property
    def targets(self) -> list[str]:
        return [target for target, _, _ in self.calls]


def _json(value: Any, status: int = 200) -> StepReply:
    return StepReply(status, orjson.dumps(value))


def _body(reply: StepReply) -> Any:
    return orjson.loads(reply.body)


async def _run(graph: InferenceGraph, caller: FakeCaller, request: Any, **kwargs: Any) -> StepReply:
    return await GraphRunner(graph, caller, **kwargs).run(
        orjson.dumps(request), {"authorization": "Bearer t"}
    )


def _sequence(*steps: dict[str, Any]) -> InferenceGraph:
    return _nodes({"root": {"routerType": "Sequence", "steps": list(steps)}})


async def test_sequence_feeds_request_or_previous_response() -> None:
    caller = FakeCaller(
        {name: (lambda request, name=name: {"from": name, "got": request}) for name in "abcd"}
    )
    graph = _sequence(
        {"serviceName": "a"},
        {"serviceName": "b", "data": "$response"},
        {"serviceName": "c"},
        {"serviceName": "d", "data": "$request"},
    )
    reply = await _run(graph, caller, {"x": 1})
    assert [(target, request) for target, request, _ in caller.calls] == [
        ("a", {"x": 1}),
        ("b", {"from": "a", "got": {"x": 1}}),
        ("c", {"x": 1}),  # no data: the node's input, as in KServe
        ("d", {"x": 1}),
    ]
    assert reply == StepReply(
        200, orjson.dumps({"from": "d", "got": {"x": 1}}), {"content-type": "application/json"}
    )


async def test_sequence_condition_is_tested_on_the_previous_response() -> None:
    # KServe's TestInferenceGraphWithCondition/TestInferenceGraphSequenceWithUnmetCondition.
    graph = _sequence(
        {"serviceName": "classify"},
        {"serviceName": "dog-breed", "condition": 'predictions.#(label=="dog")', "data": "$response"},
    )
    dog = FakeCaller(
        {"classify": _json({"predictions": [{"label": "dog"}]}), "dog-breed": lambda r: {"breed": "beagle"}}
    )
    assert _body(await _run(graph, dog, {"x": 1})) == {"breed": "beagle"}
    assert dog.calls[1][1] == {"predictions": [{"label": "dog"}]}


async def test_sequence_stops_at_an_unmet_condition_with_the_previous_response() -> None:
    graph = _sequence(
        {"serviceName": "classify"},
        {"serviceName": "dog-breed", "condition": 'predictions.#(label=="dog")'},
        {"serviceName": "after"},
    )
    caller = FakeCaller({"classify": _json({"predictions": [{"label": "cat"}]}, status=201)})
    reply = await _run(graph, caller, {"x": 1})
    assert caller.targets == ["classify"]  # the conditional step and every later one are skipped
    assert (reply.status, _body(reply)) == (200, {"predictions": [{"label": "cat"}]})


async def test_sequence_condition_on_a_non_json_response_is_a_400() -> None:
    graph = _sequence({"serviceName": "a", "name": "first"}, {"serviceName": "b", "condition": "x"})
    reply = await _run(graph, FakeCaller({"a": StepReply(200, b"plain text")}), {"x": 1})
    assert reply.status == 400
    assert _body(reply) == {
        "error": "the reply before step 1 of node 'root' (serviceName 'b') is not JSON: plain text"
    }


SWITCH_NODES = {
    "root": {
        "routerType": "Switch",
        "steps": [
            {"serviceName": "upper", "condition": "[@this].#(instances.0.data>0.9)"},
            {"serviceName": "high", "condition": "[@this].#(instances.0.data>0.5)"},
            {"serviceName": "lower", "condition": "[@this].#(instances.0.data<=0.5)"},
            {"serviceName": "never"},
        ],
    }
}


@pytest.mark.parametrize(("value", "target"), [(0.95, "upper"), (0.7, "high"), (0.2, "lower")])
async def test_switch_takes_the_first_matching_step(value: float, target: str) -> None:
    caller = FakeCaller(
        {name: (lambda r, name=name: {"by": name}) for name in ("upper", "high", "lower", "never")}
    )
    reply = await _run(_nodes(SWITCH_NODES), caller, {"instances": [{"data": value}]})
    assert caller.targets == [target]
    assert _body(reply) == {"by": target}


async def test_switch_without_a_match_is_a_404() -> None:
    caller = FakeCaller({})
    reply = await _run(_nodes(SWITCH_NODES), caller, {"instances": [{"value": 0.7}]})
    assert caller.calls == []
    assert reply.status == 404
    assert _body(reply) == {"error": "no step of Switch node 'root' matched its condition"}


async def test_switch_on_a_non_json_request_is_a_400() -> None:
    reply = await GraphRunner(_nodes(SWITCH_NODES), FakeCaller({})).run(b"<xml/>", {})
    assert reply.status == 400
    assert _body(reply) == {"error": "the input of Switch node 'root' is not JSON: <xml/>"}


async def test_ensemble_combines_replies_by_step_name_or_index() -> None:
    graph = _nodes(
        {
            "root": {
                "routerType": "Ensemble",
                "steps": [
                    {"serviceName": "a", "name": "model_a"},
                    {"serviceName": "b"},
                    {"serviceName": "c", "name": "c"},
                ],
            }
        }
    )
    caller = FakeCaller({"a": _json({"p": 1}), "b": _json([2]), "c": _json({"p": 3})})
    reply = await _run(graph, caller, {"x": 1})
    assert reply.status == 200
    assert _body(reply) == {"model_a": {"p": 1}, "1": [2], "c": {"p": 3}}
    assert [request for _, request, _ in caller.calls] == [{"x": 1}] * 3


async def test_ensemble_steps_run_concurrently() -> None:
    barrier = asyncio.Barrier(3)  # passes only when all three calls are waiting at once

    async def call(step: InferenceStep, body: bytes, headers: Mapping[str, str]) -> StepReply:
        await asyncio.wait_for(barrier.wait(), timeout=2)
        return _json({"by": step.service_name})

    graph = _nodes({"root": {"routerType": "Ensemble", "steps": [{"serviceName": s} for s in "abc"]}})
    reply = await GraphRunner(graph, call).run(b"{}", {})
    assert _body(reply) == {"0": {"by": "a"}, "1": {"by": "b"}, "2": {"by": "c"}}


async def test_splitter_draws_by_weight_with_the_given_rng() -> None:
    graph = _nodes(
        {
            "root": {
                "routerType": "Splitter",
                "steps": [
                    {"serviceName": "a", "weight": 20},
                    {"serviceName": "b", "weight": 80},
                    {"serviceName": "never", "weight": 0},
                ],
            }
        }
    )
    caller = FakeCaller({"a": _json({}), "b": _json({})})
    runner = GraphRunner(graph, caller, rng=random.Random(7))
    for _ in range(4000):
        await runner.run(b"{}", {})
    share = caller.targets.count("a") / len(caller.targets)
    assert abs(share - 0.2) < 0.025
    assert "never" not in caller.targets


async def test_splitter_is_repeatable_with_a_seeded_rng() -> None:
    graph = _graph(SPLITTER)
    picks = []
    for _ in range(2):
        caller = FakeCaller({s: _json({}) for s in ("model-a", "model-b", "model-c")})
        runner = GraphRunner(graph, caller, rng=random.Random(42))
        for _ in range(50):
            await runner.run(b"{}", {})
        picks.append(caller.targets)
    assert picks[0] == picks[1]
    assert set(picks[0]) == {"model-a", "model-b", "model-c"}


async def test_a_failed_hard_step_ends_the_graph_with_its_status() -> None:
    graph = _sequence(
        {"serviceName": "a", "name": "fetch", "dependency": "Hard"},
        {"serviceName": "b"},
    )
    caller = FakeCaller({"a": StepReply(503, b"overloaded")})
    reply = await _run(graph, caller, {})
    assert caller.targets == ["a"]
    assert reply.status == 503
    assert _body(reply) == {
        "error": "step 'fetch' of node 'root' (serviceName 'a') is a Hard dependency and answered 503: "
        "overloaded"
    }


async def test_a_failed_soft_step_is_passed_on_like_any_reply() -> None:
    graph = _sequence({"serviceName": "a", "dependency": "Soft"}, {"serviceName": "b", "data": "$response"})
    caller = FakeCaller({"a": _json({"error": "busy"}, status=503), "b": lambda request: {"saw": request}})
    reply = await _run(graph, caller, {})
    assert caller.calls[1][1] == {"error": "busy"}
    assert (reply.status, _body(reply)) == (200, {"saw": {"error": "busy"}})


async def test_a_failed_last_soft_step_gives_the_sequence_its_status() -> None:
    reply = await _run(
        _sequence({"serviceName": "a"}), FakeCaller({"a": _json({"error": "busy"}, status=503)}), {}
    )
    assert (reply.status, _body(reply)) == (503, {"error": "busy"})


@pytest.mark.parametrize("dependency", ["Soft", "Hard", None])
async def test_a_step_that_raises_ends_the_graph_with_500(dependency: str | None) -> None:
    graph = _sequence({"serviceUrl": "http://a.example/v1", "dependency": dependency}, {"serviceName": "b"})
    caller = FakeCaller({"http://a.example/v1": ConnectionError("refused")})
    reply = await _run(graph, caller, {})
    assert caller.targets == ["http://a.example/v1"]
    assert reply.status == 500
    assert _body(reply) == {
        "error": "step 0 of node 'root' (serviceUrl 'http://a.example/v1') failed: ConnectionError: refused"
    }


async def test_ensemble_keeps_soft_failures_and_stops_at_hard_ones() -> None:
    steps = [{"serviceName": "ok", "name": "ok"}, {"serviceName": "busy", "name": "busy"}]
    caller = FakeCaller({"ok": _json({"p": 1}), "busy": _json({"error": "busy"}, status=503)})
    soft = await _run(_nodes({"root": {"routerType": "Ensemble", "steps": steps}}), caller, {})
    assert (soft.status, _body(soft)) == (200, {"ok": {"p": 1}, "busy": {"error": "busy"}})

    steps[1]["dependency"] = "Hard"
    hard = await _run(_nodes({"root": {"routerType": "Ensemble", "steps": steps}}), caller, {})
    assert hard.status == 503
    assert "step 'busy' of node 'root'" in _body(hard)["error"]


async def test_ensemble_with_a_non_json_reply_is_a_500() -> None:
    graph = _nodes(
        {"root": {"routerType": "Ensemble", "steps": [{"serviceName": "a"}, {"serviceName": "b"}]}}
    )
    reply = await _run(graph, FakeCaller({"a": _json({}), "b": StepReply(502, b"Bad Gateway")}), {})
    assert reply.status == 500
    assert _body(reply) == {
        "error": "the reply of step 1 of node 'root' (serviceName 'b') is not JSON: Bad Gateway"
    }


@pytest.mark.parametrize("router", ["Switch", "Splitter"])
async def test_switch_and_splitter_pass_a_soft_failure_through(router: str) -> None:
    step = (
        {"serviceName": "a", "condition": "x"} if router == "Switch" else {"serviceName": "a", "weight": 100}
    )
    graph = _nodes({"root": {"routerType": router, "steps": [step]}})
    reply = await _run(graph, FakeCaller({"a": StepReply(429, b"slow down")}), {"x": 1})
    assert reply == StepReply(429, b"slow down", {})


async def test_nested_nodes_recurse_and_share_headers() -> None:
    # KServe's TestInferenceGraphWithCondition: Sequence -> Switch, then -> Ensemble on a condition.
    graph = _nodes(
        {
            "root": {
                "routerType": "Sequence",
                "steps": [
                    {"nodeName": "animal-categorize", "name": "step1"},
                    {
                        "nodeName": "breed-categorize",
                        "name": "step2",
                        "condition": 'predictions.#(label=="dog")',
                    },
                ],
            },
            "animal-categorize": {
                "routerType": "Switch",
                "steps": [
                    {"serviceName": "model1", "condition": 'instances.#(modelId=="1")'},
                    {"serviceName": "model2", "condition": 'instances.#(modelId=="2")'},
                ],
            },
            "breed-categorize": {
                "routerType": "Ensemble",
                "steps": [
                    {"serviceName": "model3", "name": "model3"},
                    {"serviceName": "model4", "name": "model4"},
                ],
            },
        }
    )
    caller = FakeCaller(
        {
            "model1": _json({"predictions": [{"label": "cat"}]}),
            "model2": _json({"predictions": [{"label": "dog"}]}),
            "model3": _json({"predictions": [{"label": "beagle"}]}),
            "model4": _json({"predictions": [{"label": "poodle"}]}),
        }
    )
    reply = await _run(graph, caller, {"instances": [{"modelId": "2"}]})
    assert _body(reply) == {
        "model3": {"predictions": [{"label": "beagle"}]},
        "model4": {"predictions": [{"label": "poodle"}]},
    }
    assert caller.targets == ["model2", "model3", "model4"]
    # Without data: $response, the nested Ensemble gets the root's input, as in KServe.
    assert [request for _, request, _ in caller.calls[1:]] == [{"instances": [{"modelId": "2"}]}] * 2
    assert all(headers == {"authorization": "Bearer t"} for _, _, headers in caller.calls)


async def test_a_hard_failure_in_a_nested_node_ends_the_whole_graph() -> None:
    graph = _nodes(
        {
            "root": {"routerType": "Sequence", "steps": [{"nodeName": "inner"}, {"serviceName": "after"}]},
            "inner": {"routerType": "Sequence", "steps": [{"serviceName": "a", "dependency": "Hard"}]},
        }
    )
    caller = FakeCaller({"a": StepReply(500, b"boom")})
    reply = await _run(graph, caller, {})
    assert caller.targets == ["a"]
    assert reply.status == 500
    assert "node 'inner'" in _body(reply)["error"]


async def test_non_json_final_reply_has_no_json_content_type() -> None:
    reply = await _run(_sequence({"serviceName": "a"}), FakeCaller({"a": StepReply(200, b"done")}), {})
    assert reply == StepReply(200, b"done", {})


def test_the_runner_refuses_an_invalid_graph() -> None:
    graph = _nodes({"root": {"routerType": "Sequence", "steps": [{"nodeName": "root"}]}})
    with pytest.raises(ManifestError) as caught:
        GraphRunner(graph, FakeCaller({}))
    assert caught.value.problems == [Problem("spec.nodes.root.steps[0].nodeName", "cycle: root -> root")]
