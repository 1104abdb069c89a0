"""Agreement checks between models whose answers could never be compared are refused at apply: the
rules on output signatures (router/agreement.py) and reading the signatures (comparable.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from predictors.examples import make_mlp_onnx
from router.agreement import signatures_problem
from serving.auth.storage import StoragePolicy
from serving.controller.comparable import agreement_problems, output_signature
from serving.spec.isvc import Component, InferenceService


def out(name: str, datatype: str, *shape: int) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": list(shape)}


SCORES = out("output", "FP32", -1, 3)


@pytest.mark.parametrize(
    ("stable", "canary", "tolerance", "why"),
    [
        ([SCORES], [SCORES], None, None),
        ([SCORES], [out("output", "FP16", -1, 3)], None, None),  # argmax of either
        ([SCORES], [out("output", "FP32", 8, 3)], None, None),  # a fixed batch fits a dynamic one
        ([SCORES], [out("scores", "FP32", -1, 3)], None, "no output in common"),
        ([SCORES, out("label", "INT64", -1)], [SCORES], None, None),  # compared on what both have
        ([SCORES], [out("output", "FP32", -1, 4)], None, "has shape [-1, 3] in one model and [-1, 4]"),
        ([SCORES], [out("output", "FP32", -1, 3, 1)], None, "has shape"),
        ([out("y", "FP32", -1, 1)], [out("y", "FP32", -1, 1)], None, "give the agreement check a tolerance"),
        ([out("y", "FP64", -1)], [out("y", "FP32", -1)], None, "one number per row"),
        ([out("y", "FP32", -1, 1)], [out("y", "FP32", -1, 1)], 0.1, None),
        ([out("y", "FP32", -1, -1)], [out("y", "FP32", -1, -1)], None, None),  # only answers can tell
        ([out("label", "INT64", -1)], [out("label", "INT64", -1)], None, None),
        ([out("label", "BYTES", -1)], [out("label", "BYTES", -1)], None, None),
        ([out("label", "BYTES", -1)], [out("label", "INT64", -1)], None, "labels of different types"),
        ([out("label", "BYTES", -1)], [out("label", "BYTES", -1)], 0.1, "a tolerance compares numbers"),
        ([out("ok", "BOOL", -1)], [out("ok", "BOOL", -1)], 0.1, "BOOL"),
    ],
)
def test_signatures_problem(
    stable: list[dict[str, Any]], canary: list[dict[str, Any]], tolerance: float | None, why: str | None
) -> None:
    problem = signatures_problem(stable, canary, tolerance)
    if why is None:
        assert problem is None
    else:
        assert problem is not None and why in problem, problem


def _isvc(model: Path, tolerance: float | None = None, metric: str = "agreement") -> InferenceService:
    check: dict[str, Any] = {"metric": metric}
    if metric == "agreement":
        check |= {"minShare": 0.9} | ({"tolerance": tolerance} if tolerance is not None else {})
    return InferenceService.model_validate(
        {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {"name": "svc"},
            "spec": {
                "predictor": {"model": {"modelFormat": {"name": "onnx"}, "storageUri": str(model)}},
                "rollout": {"shadow": {"hold": "1m"}, "checks": [check]},
            },
        }
    )


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    return {
        "classifier": make_mlp_onnx(tmp_path / "classifier.onnx", (4, 8, 3)),
        "retrained": make_mlp_onnx(tmp_path / "retrained.onnx", (4, 8, 3), seed=1),
        "renamed": make_mlp_onnx(tmp_path / "renamed.onnx", (4, 8, 3), output_name="scores"),
        "regressor": make_mlp_onnx(tmp_path / "regressor.onnx", (4, 8, 1)),
        "refitted": make_mlp_onnx(tmp_path / "refitted.onnx", (4, 8, 1), seed=1),
    }


def _problems(stable: Path | None, isvc: InferenceService, policy: StoragePolicy | None = None) -> list[str]:
    serving = Component("predictor", format="onnx", storage_uri=str(stable)) if stable else None
    problems = agreement_problems([isvc], lambda name: serving, None, policy)
    return [f"{p.path}: {p.message}" for p in problems]


def test_models_with_comparable_outputs_pass(models: dict[str, Path]) -> None:
    assert _problems(models["classifier"], _isvc(models["retrained"])) == []
    assert _problems(models["classifier"], _isvc(models["classifier"])) == []  # no new model
    assert _problems(None, _isvc(models["renamed"])) == []  # a new service has no canary
    assert _problems(models["classifier"], _isvc(models["renamed"], metric="errorRate")) == []


def test_models_without_comparable_outputs_are_refused_by_field_path(models: dict[str, Path]) -> None:
    [problem] = _problems(models["classifier"], _isvc(models["renamed"]))
    assert problem.startswith("InferenceService/svc: spec.rollout.checks[0]: ")
    assert "no output in common: ['output'] and ['scores']" in problem
    [problem] = _problems(models["classifier"], _isvc(models["regressor"]))
    assert "has shape [-1, 3] in one model and [-1, 1] in the other" in problem
    [problem] = _problems(models["regressor"], _isvc(models["refitted"]))
    assert "one number per row, a regressor's answer: give the agreement check a tolerance" in problem
    assert _problems(models["regressor"], _isvc(models["refitted"], tolerance=0.1)) == []


def test_what_cannot_be_read_is_left_to_the_answers(models: dict[str, Path], tmp_path: Path) -> None:
    elsewhere = StoragePolicy(roots=(tmp_path / "nowhere",))
    assert _problems(models["classifier"], _isvc(models["renamed"]), elsewhere) == []
    assert _problems(models["classifier"], _isvc(tmp_path / "missing.onnx")) == []
    assert output_signature("https://models.example.com/m.onnx", "onnx", None, None) is None
    assert output_signature("registry://m/1", "onnx", None, None) is None  # no registry here
    assert output_signature(str(models["classifier"]), "onnx", None, None) == [
        {"name": "output", "datatype": "FP32", "shape": [-1, 3]}
    ]
