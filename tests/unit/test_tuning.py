"""Hyperparameter tuning on cheap synthetic objectives, and one small real model."""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
from typing import Any

import pytest

from serving.pipelines.tuning import (
    Choice,
    Float,
    Int,
    Reporter,
    Trial,
    TrialPruned,
    TuningError,
    tune,
)

SPACE = {"x": Float(0.0, 1.0), "y": Float(0.0, 4.0), "c": Choice(("bad", "good"))}


def bowl(params: dict[str, Any], reporter: Reporter) -> float:
    """Maximum 0 at x=0.3, y=2, c="good"."""
    penalty = 0.0 if params["c"] == "good" else 1.0
    return -((params["x"] - 0.3) ** 2) - (params["y"] - 2.0) ** 2 - penalty


def curve(params: dict[str, Any], reporter: Reporter) -> float:
    """A learning curve rising to `q`: a low q is obviously bad from the first steps."""
    value = 0.0
    for step in range(10):
        value = params["q"] * (1 - 0.5 ** (step + 1))
        reporter.report(step, value)
    return value


class NullReporter:
    def report(self, step: int, value: float) -> None:
        pass


# -- the methods ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "tolerance"), [("random", 0.25), ("tpe", 0.03)])
def test_random_and_tpe_find_near_optimal_params(method: str, tolerance: float) -> None:
    result = tune(bowl, SPACE, method=method, trials=40, seed=1)

    assert result.best_params["c"] == "good"
    assert result.best_value > -tolerance
    assert abs(result.best_params["x"] - 0.3) < math.sqrt(tolerance)
    assert abs(result.best_params["y"] - 2.0) < math.sqrt(tolerance)
    assert len(result.trials) == 40
    assert [t.number for t in result.trials] == list(range(40))
    assert all(t.state == "COMPLETE" for t in result.trials)
    assert (result.method, result.direction) == (method, "maximize")


def test_tpe_beats_random_on_the_same_budget() -> None:
    seeds = range(4)
    tpe = [tune(bowl, SPACE, method="tpe", trials=30, seed=s).best_value for s in seeds]
    rand = [tune(bowl, SPACE, method="random", trials=30, seed=s).best_value for s in seeds]
    assert sum(tpe) > sum(rand)


@pytest.mark.parametrize("parallel", [1, 3])
def test_grid_visits_exactly_the_grid_whatever_trials_says(parallel: int) -> None:
    space = {"x": Float(0.0, 1.0, step=0.1), "y": Int(1, 3), "c": Choice(("bad", "good"))}
    result = tune(bowl, space, method="grid", trials=3, parallel=parallel)

    xs = [round(0.1 * i, 1) for i in range(11)]
    visited = sorted((t.params["x"], t.params["y"], t.params["c"]) for t in result.trials)
    assert visited == sorted(itertools.product(xs, [1, 2, 3], ["bad", "good"]))
    assert result.best_params == {"x": 0.3, "y": 2, "c": "good"}
    assert result.best_value == 0.0


def test_grid_refuses_a_float_without_a_step() -> None:
    with pytest.raises(ValueError, match=r"space\['x'\]: method='grid' needs a Float with a step"):
        tune(bowl, SPACE, method="grid")


def test_choice_values_may_be_any_objects() -> None:
    layers = Choice(((16,), (32, 32), None))
    seen = []
    result = tune(
        lambda p, r: seen.append(p["layers"]) or len(p["layers"] or ()), {"layers": layers}, method="grid"
    )
    assert sorted(map(str, seen)) == sorted(map(str, layers.values))
    assert result.best_params == {"layers": (32, 32)}


def test_minimize() -> None:
    result = tune(lambda p, r: (p["x"] - 0.7) ** 2, {"x": Float(0.0, 1.0)}, direction="minimize", trials=30)
    assert result.best_value < 0.01
    assert result.direction == "minimize"


def test_int_and_log_scales_stay_in_range() -> None:
    space = {"n": Int(1, 1000, log=True), "lr": Float(1e-5, 1e-1, log=True), "k": Int(0, 10, step=5)}
    result = tune(lambda p, r: 0.0, space, method="random", trials=50)
    for t in result.trials:
        assert 1 <= t.params["n"] <= 1000 and isinstance(t.params["n"], int)
        assert 1e-5 <= t.params["lr"] <= 1e-1
        assert t.params["k"] in (0, 5, 10)
    # a log scale spends about half the draws below the geometric middle
    assert sum(t.params["lr"] < 1e-3 for t in result.trials) >= 15


@pytest.mark.parametrize("method", ["random", "tpe"])
def test_a_seed_makes_a_serial_study_reproducible(method: str) -> None:
    def run(seed: int) -> list[dict[str, Any]]:
        return [t.params for t in tune(bowl, SPACE, method=method, trials=15, seed=seed).trials]

    assert run(7) == run(7)
    assert run(7) != run(8)


# -- early stopping -------------------------------------------------------------------------------


def test_median_rule_prunes_poor_trials_and_keeps_the_best() -> None:
    result = tune(curve, {"q": Float(0.0, 1.0)}, method="random", trials=30, seed=0)

    pruned = [t for t in result.trials if t.state == "PRUNED"]
    assert len(pruned) >= 5
    for t in pruned:
        assert t.value is None
        assert 0 < len(t.intermediate) < 10
        assert t.intermediate[-1][0] >= 2  # not before the warm-up steps
    assert all(t.state != "PRUNED" for t in result.trials[:5])  # nor the warm-up trials
    complete = [t for t in result.trials if t.state == "COMPLETE"]
    assert [step for step, _ in complete[0].intermediate] == list(range(10))
    best_q = max(t.params["q"] for t in result.trials)
    assert result.best_params["q"] == best_q  # pruning never cost the best configuration
    assert result.best_value > 0.8


def test_without_early_stopping_every_trial_runs_to_the_end() -> None:
    result = tune(curve, {"q": Float(0.0, 1.0)}, method="random", trials=30, early_stopping=False)
    assert all(t.state == "COMPLETE" and len(t.intermediate) == 10 for t in result.trials)


def test_an_objective_may_prune_itself() -> None:
    def objective(params: dict[str, Any], reporter: Reporter) -> float:
        if params["x"] < 0.5:
            raise TrialPruned("not worth it")
        return params["x"]

    result = tune(objective, {"x": Float(0.0, 1.0)}, method="random", trials=20)
    states = {t.state for t in result.trials}
    assert states == {"PRUNED", "COMPLETE"}
    assert result.best_value >= 0.5


# -- parallel trials ------------------------------------------------------------------------------


def test_parallel_trials_overlap() -> None:
    intervals: list[tuple[float, float]] = []
    lock = threading.Lock()

    def sleepy(params: dict[str, Any], reporter: Reporter) -> float:
        start = time.perf_counter()
        time.sleep(0.2)
        with lock:
            intervals.append((start, time.perf_counter()))
        return params["x"]

    started = time.perf_counter()
    result = tune(sleepy, {"x": Float(0.0, 1.0)}, method="random", trials=8, parallel=4)
    wall = time.perf_counter() - started

    assert len(result.trials) == 8
    assert wall < 0.5 * 8 * 0.2
    most = max(sum(s <= t < e for s, e in intervals) for t, _ in intervals)
    assert most >= 2


def test_on_trial_sees_every_trial_one_call_at_a_time() -> None:
    seen: list[Trial] = []
    inside = threading.Lock()

    def record(trial: Trial) -> None:
        assert inside.acquire(blocking=False), "on_trial called concurrently"
        try:
            time.sleep(0.005)
            seen.append(trial)
        finally:
            inside.release()

    result = tune(bowl, SPACE, method="random", trials=12, parallel=4, on_trial=record)
    assert sorted(t.number for t in seen) == list(range(12))
    assert sorted(seen, key=lambda t: t.number) == list(result.trials)


# -- failures -------------------------------------------------------------------------------------


def test_failed_trials_are_recorded_and_the_study_goes_on() -> None:
    def flaky(params: dict[str, Any], reporter: Reporter) -> float:
        if params["c"] == "bad":
            raise RuntimeError("out of memory")
        return bowl(params, reporter)

    result = tune(flaky, SPACE, method="random", trials=20, seed=2)

    failed = [t for t in result.trials if t.state == "FAILED"]
    assert failed and len(failed) < 20
    for t in failed:
        assert t.error == "RuntimeError: out of memory"
        assert t.value is None
        assert t.params["c"] == "bad"
    assert result.best_params["c"] == "good"


def test_a_non_number_return_fails_the_trial() -> None:
    def objective(params: dict[str, Any], reporter: Reporter) -> Any:
        return "high" if params["c"] == "bad" else float("nan") if params["x"] < 0.5 else 1.0

    result = tune(objective, SPACE, method="random", trials=20)
    errors = {t.error for t in result.trials if t.state == "FAILED"}
    assert errors == {"TypeError: objective returned str, not a number", "ValueError: objective returned NaN"}


def test_all_trials_failing_raises_naming_the_first_failure() -> None:
    def broken(params: dict[str, Any], reporter: Reporter) -> float:
        raise KeyError(f"missing column {params['x']:.2f}")

    with pytest.raises(
        TuningError, match=r"none of 4 trials completed; the first failure, trial 0: KeyError"
    ) as info:
        tune(broken, {"x": Float(0.0, 1.0)}, method="random", trials=4)
    assert isinstance(info.value.__cause__, KeyError)


# -- results --------------------------------------------------------------------------------------


def test_the_result_is_json_able() -> None:
    result = tune(curve, {"q": Float(0.0, 1.0), "c": Choice(("a", "b"))}, method="random", trials=8)
    data = json.loads(json.dumps(result.as_dict()))

    assert data["method"] == "random"
    assert data["best_value"] == result.best_value
    assert data["best_params"] == result.best_params
    first = data["trials"][0]
    assert set(first) == {"number", "params", "value", "state", "intermediate", "error", "seconds"}
    assert first["intermediate"][0] == [0, pytest.approx(first["params"]["q"] / 2)]
    assert first["seconds"] >= 0


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("space", "kwargs", "message"),
    [
        ({}, {}, r"space: empty"),
        ({"x": Float(2.0, 1.0)}, {}, r"space\['x'\]: low \(2.0\) > high \(1.0\)"),
        ({"n": Int(5, 1)}, {}, r"space\['n'\]: low \(5\) > high \(1\)"),
        ({"lr": Float(0.0, 1.0, log=True)}, {}, r"space\['lr'\]: log scale needs low > 0"),
        ({"n": Int(0, 8, log=True)}, {}, r"space\['n'\]: log scale needs low > 0"),
        ({"lr": Float(0.1, 1.0, log=True, step=0.1)}, {}, r"space\['lr'\]: log and step"),
        ({"x": Float(0.0, 1.0, step=0.0)}, {}, r"space\['x'\]: step must be > 0"),
        ({"n": Int(0, 1.5)}, {}, r"space\['n'\]: Int low, high and step must be ints"),  # type: ignore[arg-type]
        ({"c": Choice(())}, {}, r"space\['c'\]: Choice needs at least one value"),
        ({"x": (0.0, 1.0)}, {}, r"space\['x'\]: tuple is not Float, Int or Choice"),
        ({"x": Float(0, 1)}, {"method": "bayes"}, r"method: 'bayes' is not one of grid, random, tpe"),
        ({"x": Float(0, 1)}, {"direction": "up"}, r"direction: 'up' is not one of maximize, minimize"),
        ({"x": Float(0, 1)}, {"trials": 0}, r"trials: must be at least 1, got 0"),
        ({"x": Float(0, 1)}, {"parallel": 0}, r"parallel: must be at least 1, got 0"),
        ({"n": Int(0, 10**9)}, {"method": "grid"}, r"space: the grid has 1000000001 points"),
    ],
)
def test_bad_input_is_refused_before_any_trial_runs(space: Any, kwargs: dict[str, Any], message: str) -> None:
    def objective(params: dict[str, Any], reporter: Reporter) -> float:
        raise AssertionError("no trial should run")

    with pytest.raises(ValueError, match=message):
        tune(objective, space, **kwargs)


# -- a real model ---------------------------------------------------------------------------------


def test_tuning_a_small_mlp_beats_a_poor_default() -> None:
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    scaler = StandardScaler().fit(x_train)
    x_train, x_val = scaler.transform(x_train), scaler.transform(x_val)

    def accuracy(params: dict[str, Any], reporter: Reporter) -> float:
        model = MLPClassifier(
            hidden_layer_sizes=(params["hidden"],), learning_rate_init=params["lr"], random_state=0
        )
        score = 0.0
        for epoch in range(20):
            model.partial_fit(x_train, y_train, classes=np.arange(10))
            score = model.score(x_val, y_val)
            reporter.report(epoch, score)
        return score

    default = accuracy({"lr": 1e-5, "hidden": 32}, NullReporter())
    space = {"lr": Float(1e-5, 1e-1, log=True), "hidden": Choice((8, 32, 64))}
    result = tune(accuracy, space, method="tpe", trials=12, parallel=2, seed=0)

    assert default < 0.5
    assert result.best_value > 0.9
    assert result.best_value > default + 0.4
    assert 1e-4 < result.best_params["lr"] <= 1e-1


def test_optuna_stays_quiet_and_its_verbosity_is_restored(capfd: pytest.CaptureFixture[str]) -> None:
    import optuna

    before = optuna.logging.get_verbosity()

    def flaky(params: dict[str, Any], reporter: Reporter) -> float:
        if params["x"] < 0.5:
            raise RuntimeError("boom")
        return params["x"]

    tune(flaky, {"x": Float(0.0, 1.0)}, method="random", trials=10)
    assert capfd.readouterr().err == ""
    assert optuna.logging.get_verbosity() == before


def test_an_error_in_on_trial_stops_the_study() -> None:
    def stop(trial: Trial) -> None:
        if trial.number == 2:
            raise KeyboardInterrupt

    calls = []
    with pytest.raises(KeyboardInterrupt):
        tune(lambda p, r: calls.append(p) or 0.0, {"x": Float(0.0, 1.0)}, trials=10, on_trial=stop)
    assert len(calls) == 3
