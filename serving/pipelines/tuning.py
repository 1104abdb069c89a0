"""Hyperparameter tuning (Katib's job, as a library): trials over a search space by grid, random
or TPE search, hopeless trials stopped early (median rule), every trial recorded.

The objective takes `(params, reporter)`, calls `reporter.report(step, value)` along its learning
curve (which raises `TrialPruned` to stop it) and returns the final value. Optuna does the work but
stays an implementation detail.

Parallel trials run in threads (optuna's `n_jobs`): they overlap only where the objective releases
the GIL (torch, numpy, sklearn's compiled code, I/O). A seed makes a study reproducible with
`parallel=1`; with more, what the sampler and pruner see depends on which trial finishes first.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import optuna

__all__ = [
    "Choice",
    "Float",
    "Int",
    "Reporter",
    "Space",
    "Trial",
    "TrialPruned",
    "TuneResult",
    "TuningError",
    "tune",
]

METHODS = ("grid", "random", "tpe")
DIRECTIONS = ("maximize", "minimize")
#: Median rule: no pruning until this many trials have completed...
MEDIAN_STARTUP_TRIALS = 5
#: ...nor at steps below this one (the first reports of a learning curve are noisy).
MEDIAN_WARMUP_STEPS = 2
#: A grid larger than this is refused rather than enumerated.
MAX_GRID_POINTS = 100_000


@dataclass(frozen=True)
class Float:
    """A real in [low, high]. `log`: sample on a log scale (needs low > 0). `step`: only
    low, low + step, ... <= high; grid search needs it to enumerate a Float. Not both."""

    low: float
    high: float
    log: bool = False
    step: float | None = None


@dataclass(frozen=True)
class Int:
    """An integer in [low, high], inclusive, spaced by `step`; grid search takes every one.
    `log`: sample on a log scale (needs low > 0 and step 1)."""

    low: int
    high: int
    log: bool = False
    step: int = 1


@dataclass(frozen=True)
class Choice:
    """One of `values`: any objects, handed to the objective as they are."""

    values: tuple[Any, ...]


Space = Mapping[str, Float | Int | Choice]


class TrialPruned(Exception):
    """Raised by `Reporter.report` when the trial should stop. Let it propagate out of the
    objective (an objective may also raise it itself); the trial is recorded as PRUNED."""


class TuningError(RuntimeError):
    """No trial completed; chained (`__cause__`) to the first failure, if any."""


class Reporter(Protocol):
    """How an objective reports intermediate values (a learning curve), one per step."""

    def report(self, step: int, value: float) -> None:
        """Record `value` at `step` (an int >= 0); raise `TrialPruned` if the trial should stop."""
        ...


@dataclass(frozen=True)
class Trial:
    """One finished trial. `state`: COMPLETE, PRUNED or FAILED; `value` is the objective's
    return, None unless COMPLETE; `intermediate`: the (step, value) reports, by step; `error`:
    "ExceptionType: message" for a FAILED trial; `seconds`: its wall time."""

    number: int
    params: dict[str, Any]
    value: float | None
    state: str
    intermediate: tuple[tuple[int, float], ...] = ()
    error: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class TuneResult:
    """The best completed trial's params and value, and every trial, by number."""

    best_params: dict[str, Any]
    best_value: float
    trials: tuple[Trial, ...]
    method: str
    direction: str

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able copy (tuples for lists; params as JSON-able as the `Choice` values given)."""
        return dataclasses.asdict(self)


def tune(
    objective: Callable[[dict[str, Any], Reporter], float],
    space: Space,
    *,
    method: str = "tpe",
    trials: int = 20,
    parallel: int = 1,
    direction: str = "maximize",
    early_stopping: bool = True,
    seed: int = 0,
    on_trial: Callable[[Trial], None] | None = None,
) -> TuneResult:
    """Run `trials` trials of `objective(params, reporter) -> value`, `parallel` at a time.

    method: "grid" (every combination, whatever `trials` says; a Float needs a `step`), "random"
    or "tpe" (model-based; the first trials, at most half the budget, are random).
    early_stopping: prune a trial whose best value so far is worse than the median of completed
    trials at the same step (once MEDIAN_STARTUP_TRIALS have completed; from step
    MEDIAN_WARMUP_STEPS). An objective that raises makes a FAILED trial, and the study goes on;
    TuningError if none completes. `on_trial` gets each finished trial, one call at a time (from
    worker threads if parallel > 1); what it raises stops the study. ValueError for a bad argument,
    before any trial runs.
    """
    _validate(space, method, trials, parallel, direction)
    grid = _grid(space) if method == "grid" else None
    failures: dict[int, Exception] = {}
    callback_lock = threading.Lock()

    def run(trial: optuna.Trial) -> float:
        try:
            params = {name: _suggest(trial, name, dim) for name, dim in space.items()}
            returned = objective(params, _Reporter(trial, early_stopping))
            try:
                value = float(returned)
            except (TypeError, ValueError):
                raise TypeError(f"objective returned {type(returned).__name__}, not a number") from None
            if math.isnan(value):
                raise ValueError("objective returned NaN")
            return value
        except TrialPruned as exc:
            raise optuna.TrialPruned(str(exc)) from exc
        except Exception as exc:
            failures[trial.number] = exc
            raise

    def finished(_study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        if on_trial is not None:
            with callback_lock:
                on_trial(_record(frozen, space, failures))

    if grid is not None:
        sampler: optuna.samplers.BaseSampler = optuna.samplers.GridSampler(grid, seed=seed)
        n_trials = math.prod(len(axis) for axis in grid.values())
    elif method == "random":
        sampler, n_trials = optuna.samplers.RandomSampler(seed=seed), trials
    else:
        # optuna's default of 10 random start-up trials would leave a small budget nothing to model.
        startup = min(10, max(1, trials // 2))
        sampler, n_trials = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup), trials
    # _Reporter consults the pruner only if early_stopping.
    pruner = optuna.pruners.MedianPruner(MEDIAN_STARTUP_TRIALS, MEDIAN_WARMUP_STEPS)
    with _quiet():
        study = optuna.create_study(direction=direction, sampler=sampler, pruner=pruner)
        study.optimize(run, n_trials=n_trials, n_jobs=parallel, catch=(Exception,), callbacks=[finished])

    records = tuple(sorted((_record(t, space, failures) for t in study.trials), key=lambda t: t.number))
    complete = [t for t in records if t.state == "COMPLETE"]
    if not complete:
        first = min(failures, default=-1)
        why = f"the first failure, trial {first}: {_describe(failures[first])}" if failures else "all pruned"
        raise TuningError(f"none of {len(records)} trials completed; {why}") from failures.get(first)
    best = (max if direction == "maximize" else min)(complete, key=lambda t: t.value)  # earliest of equals
    assert best.value is not None
    return TuneResult(best.params, best.value, records, method, direction)


# -- helpers --------------------------------------------------------------------------------------


class _Reporter:
    def __init__(self, trial: optuna.Trial, prune: bool) -> None:
        self._trial = trial
        self._prune = prune

    def report(self, step: int, value: float) -> None:
        self._trial.report(float(value), step)
        if self._prune and self._trial.should_prune():
            raise TrialPruned(f"step {step}: {float(value):g} is worse than the median of earlier trials")


def _validate(space: Space, method: str, trials: int, parallel: int, direction: str) -> None:
    for field, value, allowed in (("method", method, METHODS), ("direction", direction, DIRECTIONS)):
        if value not in allowed:
            raise ValueError(f"{field}: {value!r} is not one of {', '.join(allowed)}")
    for field, count in (("trials", trials), ("parallel", parallel)):
        if count < 1:
            raise ValueError(f"{field}: must be at least 1, got {count}")
    if not space:
        raise ValueError("space: empty; give at least one parameter")
    for name, dim in space.items():
        where = f"space[{name!r}]"
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: a parameter name must be a non-empty string")
        if isinstance(dim, Choice):
            if not dim.values:
                raise ValueError(f"{where}: Choice needs at least one value")
            continue
        if not isinstance(dim, Float | Int):
            raise ValueError(f"{where}: {type(dim).__name__} is not Float, Int or Choice")
        if isinstance(dim, Int) and not all(type(v) is int for v in (dim.low, dim.high, dim.step)):
            raise ValueError(f"{where}: Int low, high and step must be ints")
        if dim.low > dim.high:
            raise ValueError(f"{where}: low ({dim.low}) > high ({dim.high})")
        if dim.log and dim.low <= 0:
            raise ValueError(f"{where}: log scale needs low > 0, got {dim.low}")
        if dim.step is not None and dim.step <= 0:
            raise ValueError(f"{where}: step must be > 0, got {dim.step}")
        if dim.log and (dim.step != 1 if isinstance(dim, Int) else dim.step is not None):
            raise ValueError(f"{where}: log and step cannot be combined")


def _grid(space: Space) -> dict[str, range | list[float]]:
    """Every parameter's grid axis, as optuna's GridSampler takes it (a Choice by index)."""
    axes: dict[str, range | list[float]] = {}
    for name, dim in space.items():
        if isinstance(dim, Choice):
            axes[name] = range(len(dim.values))
        elif isinstance(dim, Int):
            axes[name] = range(dim.low, dim.high + 1, dim.step)
        elif dim.step is None:
            raise ValueError(
                f"space[{name!r}]: method='grid' needs a Float with a step "
                f"(Float({dim.low}, {dim.high}, step=...)) or a Choice of values"
            )
        else:
            count = math.floor((dim.high - dim.low) / dim.step + 1e-9) + 1
            if count > MAX_GRID_POINTS:
                raise ValueError(f"space[{name!r}]: {count} grid points; at most {MAX_GRID_POINTS}")
            # 15 significant digits drop the float noise of low + i * step (0.30000000000000004).
            axes[name] = [float(f"{dim.low + i * dim.step:.15g}") for i in range(count)]
    size = math.prod(len(axis) for axis in axes.values())
    if size > MAX_GRID_POINTS:
        raise ValueError(f"space: the grid has {size} points; at most {MAX_GRID_POINTS}")
    return axes


def _suggest(trial: optuna.Trial, name: str, dim: Float | Int | Choice) -> Any:
    if isinstance(dim, Choice):
        # By index: optuna's categoricals take only None, bool, int, float and str.
        return dim.values[trial.suggest_categorical(name, range(len(dim.values)))]
    if isinstance(dim, Int):
        return trial.suggest_int(name, dim.low, dim.high, step=dim.step, log=dim.log)
    return trial.suggest_float(name, dim.low, dim.high, step=dim.step, log=dim.log)


def _record(frozen: optuna.trial.FrozenTrial, space: Space, failures: Mapping[int, Exception]) -> Trial:
    state = {"COMPLETE": "COMPLETE", "PRUNED": "PRUNED"}.get(frozen.state.name, "FAILED")
    params = {k: _decode(space[k], v) for k, v in frozen.params.items()}
    failure = failures.get(frozen.number)
    return Trial(
        number=frozen.number,
        params=params,
        value=frozen.value if state == "COMPLETE" else None,
        state=state,
        intermediate=tuple(sorted(frozen.intermediate_values.items())),
        error=_describe(failure) if failure is not None else ("failed" if state == "FAILED" else None),
        seconds=frozen.duration.total_seconds() if frozen.duration is not None else 0.0,
    )


def _decode(dim: Float | Int | Choice, value: Any) -> Any:
    return dim.values[value] if isinstance(dim, Choice) else value


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


@contextmanager
def _quiet() -> Iterator[None]:
    # optuna logs every trial at INFO, and each failure with its traceback at WARNING; we record both.
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)
