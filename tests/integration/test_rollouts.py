"""Progressive delivery under continuous load through a real gateway: a rollout strategy walks a
good canary to promotion with no failed request, rolls back one that fails 5% of its requests (the
error check named), one 3x slower (latency), stops one that disagrees with the stable revision in
its shadow phase before it serves a live request, and leaves a noisy but equal canary alone."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from predictors.examples import make_mlp_onnx
from tests.gateway_helpers import ControlApi, Load, condition, python_isvc, revision, traffic
from tests.servers import GatewayProcess, until

pytestmark = pytest.mark.integration

BODY = {"inputs": [{"name": "x", "shape": [4], "datatype": "FP32", "data": [0.0, 1.0, 2.0, 4.0]}]}
#: short stages, so a rollout takes seconds; 1 s looks; few samples (the load sends hundreds).
FAST = {"interval": "1s", "minSamples": 30}


def _strategy(**fields: Any) -> dict[str, Any]:
    return {**FAST, **fields}


def _events(api: ControlApi, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in api.events(name) if e["reason"] == reason]


def _roll(
    gateway: GatewayProcess, api: ControlApi, name: str, env: dict[str, str], strategy: dict[str, Any]
) -> tuple[Load, str]:
    """`name` at v1 (a plain Scorer), then under load v2 with `env` and the rollout `strategy`;
    returns the load (still running) and the first event that ends the rollout."""
    api.apply(python_isvc(name, "Scorer", rollout=strategy))
    api.wait_ready(name)
    load = Load(gateway.url, name, BODY, concurrency=4, token=gateway.token).__enter__()
    try:
        load.wait_count(50)
        api.apply(python_isvc(name, "Scorer", env=env, rollout=strategy))

        def ended() -> str | None:
            found = [e for e in api.events(name) if e["reason"] in ("RolloutSucceeded", "RolloutAborted")]
            return found[0]["message"] if found else None

        message = until(ended, 90, f"the rollout of {name} to end")
    except BaseException:
        load.__exit__()
        raise
    return load, message


def test_a_good_canary_walks_every_step_and_is_promoted(gateway: GatewayProcess, api: ControlApi) -> None:
    strategy = _strategy(
        shadow={"percent": 100, "hold": "2s"},
        steps=[{"weight": 20, "hold": "2s"}, {"weight": 50, "hold": "2s"}],
        checks=[
            {"metric": "errorRate"},
            {"metric": "latency", "quantile": "p99", "maxRatio": 2},
            {"metric": "agreement", "minShare": 0.95},
        ],
    )
    load, message = _roll(gateway, api, "good", {"VERSION": "2"}, strategy)
    with load:
        load.wait_for(revision("good", 2))
    assert "every step passed" in message
    status = api.status("good")
    assert traffic(status) == {revision("good", 2): 100}
    assert condition(status, "RolloutSucceeded")["status"] == "True"
    stepped = [e["message"] for e in _events(api, "good", "RolloutStepped")]
    assert len(stepped) == 2 and "shadow 100% passed" in stepped[0], stepped
    assert load.failures() == []


def test_a_canary_failing_5_percent_is_rolled_back_at_the_first_step(
    gateway: GatewayProcess, api: ControlApi
) -> None:
    strategy = _strategy(steps=[{"weight": 20, "hold": "20s"}, {"weight": 50, "hold": "20s"}])
    load, message = _roll(gateway, api, "flaky", {"FAIL_SHARE": "0.05"}, strategy)
    with load:
        load.wait_for(revision("flaky", 1))
    assert "errorRate failed at 20% live" in message, message
    assert traffic(api.status("flaky")) == {revision("flaky", 1): 100}
    served = [o for o in load.snapshot() if o.revision == revision("flaky", 2)]
    failed = load.failures()
    # No more failures than the canary's share of a step: it was stopped well inside the first.
    assert 0 < len(failed) <= 0.2 * len(served) + 5, (len(failed), len(served))


def test_a_3x_slower_canary_is_rolled_back_on_latency(gateway: GatewayProcess, api: ControlApi) -> None:
    strategy = _strategy(
        steps=[{"weight": 30, "hold": "20s"}],
        checks=[{"metric": "latency", "quantile": "p50", "maxRatio": 1.5}],
    )
    slow_env = {"SLEEP_MS": "30"}
    api.apply(python_isvc("slow", "Scorer", env={"SLEEP_MS": "10"}, rollout=strategy))
    api.wait_ready("slow")
    with Load(gateway.url, "slow", BODY, concurrency=4, token=gateway.token) as load:
        load.wait_count(50)
        api.apply(python_isvc("slow", "Scorer", env=slow_env, rollout=strategy))
        aborted = until(lambda: _events(api, "slow", "RolloutAborted"), 90, "the slow canary's rollback")
    assert "latency p50 failed" in aborted[0]["message"], aborted[0]["message"]
    assert load.failures() == []


def test_a_disagreeing_canary_stops_in_its_shadow_phase_without_serving(
    gateway: GatewayProcess, api: ControlApi
) -> None:
    strategy = _strategy(
        shadow={"percent": 100, "hold": "20s"},
        steps=[{"weight": 50, "hold": "5s"}],
        checks=[{"metric": "agreement", "minShare": 0.9}],
    )
    load, message = _roll(gateway, api, "shuffled", {"SHUFFLE": "1"}, strategy)
    with load:
        pass
    assert "agreement failed at shadow 100%" in message, message
    assert [o for o in load.snapshot() if o.revision == revision("shuffled", 2)] == []
    assert load.failures() == []
    status = api.http.get("/inferenceservices/shuffled/rollout")
    assert status.status_code == 200 and status.json()["state"] == "aborted", status.text


def test_agreement_between_models_without_comparable_outputs_is_refused_at_apply(
    gateway: GatewayProcess, api: ControlApi, tmp_path: Path
) -> None:
    """A regressor (one number per row) cannot be compared with a model answering other outputs, nor
    with another regressor without a tolerance: both are refused by field path before anything
    runs; with a tolerance the refitted regressor is taken."""
    regressor = make_mlp_onnx(tmp_path / "regressor.onnx", (4, 8, 1))
    renamed = make_mlp_onnx(tmp_path / "renamed.onnx", (4, 8, 1), output_name="value")
    refitted = make_mlp_onnx(tmp_path / "refitted.onnx", (4, 8, 1), seed=1)

    def isvc(model: Path, **check: Any) -> dict[str, Any]:
        strategy = _strategy(
            shadow={"hold": "2s"},
            steps=[{"weight": 50, "hold": "2s"}],
            checks=[{"metric": "agreement", "minShare": 0.9, **check}],
        )
        return _isvc_of("compared", model, rollout=strategy)

    api.apply(isvc(regressor))
    api.wait_ready("compared")
    for model, why in [(renamed, "no output in common"), (refitted, "give the agreement check a tolerance")]:
        response = api.apply_text(json.dumps(isvc(model)))
        assert response.status_code == 400, response.text
        [problem] = response.json()["problems"]
        assert problem["path"] == "InferenceService/compared: spec.rollout.checks[0]", problem
        assert why in problem["message"] and str(regressor) in problem["message"], problem
    assert api.apply_text(json.dumps(isvc(refitted, tolerance=0.5))).status_code == 200
    api.delete("compared")


def _isvc_of(name: str, model: Path, **spec: Any) -> dict[str, Any]:
    predictor = {
        "model": {"modelFormat": {"name": "onnx"}, "protocolVersion": "v2", "storageUri": str(model)}
    }
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {"predictor": predictor, **spec},
    }


def test_noisy_but_equal_canaries_are_not_rolled_back(gateway: GatewayProcess, api: ControlApi) -> None:
    """Three at once: the statistics must not cry wolf on jitter and rare errors at the stable rate."""
    noisy = {"JITTER_MS": "6", "FAIL_SHARE": "0.01"}
    names = [f"noisy-{i}" for i in range(3)]
    strategy = _strategy(
        steps=[{"weight": 50, "hold": "4s"}],
        checks=[{"metric": "errorRate"}, {"metric": "latency", "quantile": "p99", "maxRatio": 1.5}],
    )
    api.apply(*(python_isvc(name, "Scorer", env=noisy, rollout=strategy) for name in names))
    for name in names:
        api.wait_ready(name)
    loads = [Load(gateway.url, name, BODY, concurrency=2, token=gateway.token) for name in names]
    with contextlib.ExitStack() as running:
        for load in loads:
            running.enter_context(load).wait_count(30)
        api.apply(*(python_isvc(n, "Scorer", env={**noisy, "VERSION": "2"}, rollout=strategy) for n in names))

        def ended() -> list[dict[str, Any]] | None:
            found = [_events(api, n, "RolloutSucceeded") + _events(api, n, "RolloutAborted") for n in names]
            return [f[0] for f in found] if all(found) else None

        endings = until(ended, 90, "the noisy rollouts to end")
    assert [e["reason"] for e in endings] == ["RolloutSucceeded"] * 3, [e["message"] for e in endings]


def test_a_person_pauses_resumes_and_aborts_a_rollout(gateway: GatewayProcess, api: ControlApi) -> None:
    strategy = _strategy(steps=[{"weight": 20, "hold": "5m"}])
    api.apply(python_isvc("manual", "Scorer", rollout=strategy))
    api.wait_ready("manual")
    assert api.http.get("/inferenceservices/manual/rollout").json()["state"] == "none"
    api.apply(python_isvc("manual", "Scorer", env={"VERSION": "2"}, rollout=strategy))
    api.wait_traffic("manual", {revision("manual", 1): 80, revision("manual", 2): 20})
    status = api.http.get("/inferenceservices/manual/rollout").json()
    assert (status["state"], status["canary"], status["traffic"]) == (
        "running",
        revision("manual", 2),
        {"live": 20, "shadow": 0},
    )
    for action, state in (("pause", "paused"), ("resume", "running")):
        assert api.http.post(f"/inferenceservices/manual/rollout/{action}").status_code == 200
        assert api.http.get("/inferenceservices/manual/rollout").json()["state"] == state
    assert api.http.post("/inferenceservices/manual/rollout/resume").status_code == 409  # not paused
    assert api.http.post("/inferenceservices/manual/rollout/abort").status_code == 200
    api.wait_traffic("manual", {revision("manual", 1): 100})
    assert "aborted by admin" in _events(api, "manual", "RolloutAborted")[0]["message"]
    assert condition(api.status("manual"), "RolloutSucceeded")["status"] == "False"


@pytest.mark.parametrize(
    ("rollout", "path"),
    [
        (
            {"steps": [{"weight": 50, "hold": "1m"}, {"weight": 20, "hold": "1m"}]},
            "spec.rollout.steps[1].weight",
        ),
        ({"steps": [{"weight": 20, "hold": "0s"}]}, "spec.rollout.steps[0].hold"),
        (
            {"steps": [{"weight": 20, "hold": "1m"}], "checks": [{"metric": "cpu"}]},
            "spec.rollout.checks[0].metric",
        ),
        (
            {
                "steps": [{"weight": 20, "hold": "1m"}],
                "checks": [{"metric": "promql", "query": "up", "max": 1}],
            },
            "spec.rollout.checks[0].query",  # this gateway has no Prometheus to ask
        ),
    ],
)
def test_a_bad_strategy_is_refused_at_apply(api: ControlApi, rollout: dict[str, Any], path: str) -> None:
    refused = api.apply_text(json.dumps(python_isvc("refused", "Scorer", rollout=rollout)))
    assert refused.status_code == 400, refused.text
    assert any(path in p["path"] for p in refused.json()["problems"]), refused.json()
