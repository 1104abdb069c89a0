"""The pipeline DSL and compiler, no processes: the DAG a pipeline records, its order, and every kind
of bad pipeline refused before anything runs, naming the step and field."""

from __future__ import annotations

from typing import Any

import pytest

from serving.pipelines import Dataset, Input, Model, Output, PipelineError, component, pipeline
from serving.pipelines.compiler import coerce_params, compile_pipeline
from serving.pipelines.types import ArtifactRef, Const, OutputRef, Predicate
from tests import pipeline_components as pc


def _problems(pipe: Any, params: dict[str, Any] | None = None) -> list[str]:
    with pytest.raises(PipelineError) as caught:
        compile_pipeline(pipe, params)
    return [str(p) for p in caught.value.problems]


def test_a_fan_out_and_fan_in_compiles_in_dependency_order() -> None:
    spec = compile_pipeline(pc.fan_out, {"factors": [1.0, 2.0]})
    ids = [s.id for s in spec.steps]
    assert ids == ["make_numbers", "scale", "scale-2", "summarize", "fit"]
    assert spec.params == {"count": 5, "factors": [1.0, 2.0]}

    scale2 = spec.step("scale-2")
    assert scale2.params == {"factor": Const(2.0)}
    assert scale2.artifacts == {"numbers": ArtifactRef("make_numbers", "numbers")}
    assert scale2.outputs == {"scaled": "Dataset"}
    summarize = spec.step("summarize")
    assert summarize.params["totals"] == [OutputRef("scale", "output"), OutputRef("scale-2", "output")]
    assert summarize.upstream() == {"scale", "scale-2"}
    fit = spec.step("fit")
    assert fit.conditions == (Predicate(OutputRef("summarize", "total"), ">", 10),)
    assert fit.upstream() == {"make_numbers", "summarize"}
    assert fit.module_file.endswith("tests/pipeline_components.py") and fit.function == "fit"
    assert len(fit.code_hash) == 64


def test_after_orders_steps_that_share_nothing() -> None:
    spec = compile_pipeline(pc.branches)
    assert spec.step("echo").after == ("fail",)
    assert spec.step("echo").upstream() == {"fail"}
    assert spec.step("echo-2").upstream() == set()


def test_step_settings_come_from_the_component_and_the_task() -> None:
    assert compile_pipeline(pc.retried, {"marker": "/tmp/x"}).steps[0].retries == 1
    assert compile_pipeline(pc.too_slow).steps[0].timeout_s == 1.0


@component
def wants_model(model: Input[Model], n: int) -> None: ...


@component
def makes_dataset(data: Output[Dataset]) -> str:
    return "text"


@pipeline
def mismatched():
    made = makes_dataset()
    wants_model(model=made.outputs["data"], n=made.output)


def test_type_mismatches_name_the_step_and_field() -> None:
    assert _problems(mismatched) == [
        "step wants_model: input 'model': takes Model, but step makes_dataset output 'data' is Dataset",
        "step wants_model: parameter 'n': takes int, but step makes_dataset output 'output' is str",
    ]


@pipeline
def missing_and_unknown():
    wants_model(n="three", colour="red")


def test_missing_unknown_and_wrong_literal_arguments() -> None:
    assert _problems(missing_and_unknown) == [
        "step wants_model: parameter 'n': takes int, given 'three'",
        "step wants_model: 'colour': unknown argument; wants_model takes n, model",
        "step wants_model: input 'model': missing: pass an upstream step's output artifact",
    ]


@pipeline
def cyclic():
    a = pc.echo(text="a")
    b = pc.echo(text="b")
    a.after(b)
    b.after(a)


def test_a_cycle_is_refused() -> None:
    assert _problems(cyclic) == ["steps echo, echo-2: form a cycle: each waits for another"]


def test_pipeline_parameters_are_checked_and_coerced() -> None:
    assert _problems(pc.retried) == ["pipeline parameter 'marker': missing (no default): pass --param"]
    assert _problems(pc.fan_out, {"cout": 3}) == [
        "pipeline parameter 'cout': unknown; fan_out takes count, factors"
    ]
    assert coerce_params(pc.fan_out, {"count": "7", "factors": "[0.5, 2]"}) == {
        "count": 7,
        "factors": [0.5, 2],
    }
    assert coerce_params(pc.two_sleeps, {"seconds": "2"}) == {"seconds": 2.0}
    with pytest.raises(PipelineError, match="'seven' is not a int"):
        coerce_params(pc.fan_out, {"count": "seven"})


def test_a_component_is_called_only_inside_a_pipeline() -> None:
    with pytest.raises(RuntimeError, match="outside a pipeline"):
        pc.echo(text="x")
    assert pc.echo.python_func(text="direct") == "direct"


def test_components_need_typed_parameters() -> None:
    with pytest.raises(TypeError, match="parameter 'x' needs a type annotation"):

        @component
        def untyped(x) -> None: ...  # type: ignore[no-untyped-def]

    with pytest.raises(TypeError, match="parameter 'x' has type"):

        @component
        def odd(x: set) -> None: ...


def test_a_component_defined_in_a_function_is_refused() -> None:
    @component
    def local_step(x: int) -> int:
        return x

    @pipeline
    def uses_local():
        local_step(x=1)

    assert _problems(uses_local) == [
        "step local_step: component local_step must be defined at module level (a worker imports it)"
    ]


def test_a_condition_compares_with_a_constant() -> None:
    @pipeline
    def compares_outputs():
        a = pc.make_numbers(count=1)
        b = pc.make_numbers(count=2)
        with pc.Condition(a.output > b.output):
            pc.echo(text="x")

    with pytest.raises(TypeError, match="with a constant"):
        compile_pipeline(compares_outputs)
