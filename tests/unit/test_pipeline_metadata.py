"""The pipeline metadata store, driven as the executor drives it: a 3-step pipeline (load -> train ->
register) recorded run by run; listings and views; metrics; the step cache verified against the
files; lineage upstream from a registry version and downstream from a dataset, through cached
steps; clear errors; the cache key.

SQLite in tmp_path; the lifecycle and lineage tests also run on a throwaway PostgreSQL
(`-m integration`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from serving.pipelines.metadata import (
    Ambiguous,
    MetadataError,
    MetadataStore,
    NotFound,
    RunNotFound,
    cache_key,
    default_url,
)
from serving.pipelines.types import (
    ArtifactRef,
    Const,
    OutputRef,
    PipelineSpec,
    StepResult,
    StepSpec,
    StepStatus,
)
from serving.registry.artifacts import artifact_digest

#: 2025-01-02 03:04:05 UTC.
T0 = 1_735_787_045.0


class Clock:
    """A clock that moves one second each time it is read."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        self.now += 1.0
        return self.now - 1.0


def fraud_pipeline(lr: float = 0.1) -> PipelineSpec:
    load = StepSpec(
        "load", "load", "components.py", "load", params={"rows": Const(100)}, outputs={"data": "Dataset"},
        code_hash="code-load",
    )  # fmt: skip
    train = StepSpec(
        "train", "train", "components.py", "train",
        params={"lr": Const(lr)}, artifacts={"data": ArtifactRef("load", "data")},
        outputs={"model": "Model", "metrics": "Metrics"}, code_hash="code-train",
    )  # fmt: skip
    register = StepSpec(
        "register", "register", "components.py", "register",
        params={"name": Const("fraud"), "epochs": OutputRef("train")},
        artifacts={"model": ArtifactRef("train", "model")}, cache=False, code_hash="code-register",
    )  # fmt: skip
    return PipelineSpec("fraud", {"rows": 100, "lr": lr}, (load, train, register))


class Out(NamedTuple):
    id: int
    sha256: str


class Driver:
    """Records runs of the fraud pipeline as the executor would: cache lookups, attempts, artifact
    files hashed and recorded, inputs, metrics, registrations."""

    def __init__(self, store: MetadataStore, clock: Clock, root: Path) -> None:
        self.store, self.clock, self.root = store, clock, root

    def step(
        self,
        run_id: str,
        step: StepSpec,
        *,
        inputs: dict[str, list[Out]] | None = None,
        files: dict[str, tuple[str, dict[str, Any]]] | None = None,
        outputs: dict[str, Any] | None = None,
        resolved: dict[str, Any] | None = None,
        use_cache: bool = True,
        attempts: int = 1,
    ) -> dict[str, Out]:
        inputs, resolved = inputs or {}, resolved or {}
        params = {n: p.value if isinstance(p, Const) else resolved[n] for n, p in step.params.items()}
        consumed = {name: [o.id for o in outs] for name, outs in inputs.items()}
        key = None
        if step.cache:
            shas = {name: [o.sha256 for o in outs] for name, outs in inputs.items()}
            key = cache_key(step.code_hash, step.component, params, shas)
        if use_cache and key and (hit := self.store.cached(key)):
            source, earlier = hit
            now = self.clock()
            result = replace(earlier, step=step.id, started=now, finished=now, attempts=0)
            self.store.step_finished(run_id, result, consumed, key, cached_from=source)
            return {name: Out(a["id"], a["sha256"]) for name, a in earlier.artifacts.items()}
        started = self.clock()
        for attempt in range(1, attempts + 1):
            self.store.step_started(run_id, step, attempt, key, params=params)
        produced = {}
        for name, (text, metadata) in (files or {}).items():
            path = self.root / run_id / step.id / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            sha, size = artifact_digest(path)
            artifact_id = self.store.record_artifact(
                run_id, step.id, name, step.outputs[name], str(path), sha, size, metadata
            )
            produced[name] = Out(artifact_id, sha)
        result = StepResult(
            step.id, StepStatus.SUCCEEDED, params=outputs or {}, attempts=attempts, started=started,
            finished=self.clock(), log_path=f"/logs/{run_id}/{step.id}.log",
        )  # fmt: skip
        self.store.step_finished(run_id, result, consumed, key)
        return produced

    def run(self, lr: float = 0.1, version: int = 1, use_cache: bool = True) -> str:
        spec = fraud_pipeline(lr)
        run_id = self.store.start_run(spec, "local")
        load = self.step(
            run_id, spec.step("load"), files={"data": ("x,y\n1,2\n", {"rows": 1})}, use_cache=use_cache
        )
        train = self.step(
            run_id, spec.step("train"), inputs={"data": [load["data"]]},
            files={
                "model": (f"weights for lr={lr}", {"framework": "sklearn"}),
                "metrics": ("{}", {"accuracy": 0.9, "loss": 0.25, "note": "fine"}),
            },
            outputs={"output": 3}, use_cache=use_cache,
        )  # fmt: skip
        self.step(run_id, spec.step("register"), inputs={"model": [train["model"]]}, resolved={"epochs": 3})
        self.store.record_registration(run_id, "register", train["model"].id, f"registry://fraud/{version}")
        self.store.finish_run(run_id, "SUCCEEDED")
        return run_id


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(database_url: str, clock: Clock) -> Iterator[MetadataStore]:
    """A store on each kind of database (for the lifecycle and lineage tests)."""
    with MetadataStore(database_url, clock=clock) as s:
        yield s


@pytest.fixture
def local(tmp_path: Path, clock: Clock) -> Iterator[MetadataStore]:
    """A store on SQLite only."""
    with MetadataStore(f"sqlite:///{tmp_path / 'pipelines.db'}", clock=clock) as s:
        yield s


def driver_for(store: MetadataStore, clock: Clock, tmp_path: Path) -> Driver:
    return Driver(store, clock, tmp_path / "artifacts")


# -- the run lifecycle ----------------------------------------------------------------------------


def test_a_run_is_recorded_from_start_to_finish(store: MetadataStore, clock: Clock, tmp_path: Path) -> None:
    spec = fraud_pipeline()
    run_id = store.start_run(spec, "local")
    assert re.fullmatch(r"fraud-20250102-030405-[0-9a-f]{6}", run_id)
    [started] = store.runs()
    assert (started.id, started.status, started.executor, started.steps) == (
        run_id, "RUNNING", "local", {"PENDING": 3},
    )  # fmt: skip
    assert started.finished is None
    # Before it runs, a step shows the spec's parameters: constants, and references to outputs.
    assert store.run(run_id).step("register").params == {"name": "fraud", "epochs": {"ref": "train.output"}}

    d = driver_for(store, clock, tmp_path)
    load = d.step(run_id, spec.step("load"), files={"data": ("x,y\n1,2\n", {"rows": 1})})
    train = d.step(
        run_id, spec.step("train"), inputs={"data": [load["data"]]},
        files={"model": ("w", {"framework": "sklearn"}), "metrics": ("{}", {"accuracy": 0.9, "note": "x"})},
        outputs={"output": 3}, attempts=2,
    )  # fmt: skip
    d.step(run_id, spec.step("register"), inputs={"model": [train["model"]]}, resolved={"epochs": 3})
    store.record_registration(run_id, "register", train["model"].id, "registry://fraud/1")
    store.finish_run(run_id, "SUCCEEDED")

    view = store.run(run_id)
    assert view.run.status == "SUCCEEDED" and view.run.steps == {"SUCCEEDED": 3}
    assert view.run.started == T0 and view.run.finished is not None and view.run.duration > 0
    assert view.params == {"rows": 100, "lr": 0.1}
    assert view.spec == json.loads(json.dumps(spec.as_dict()))
    assert [s.step_id for s in view.steps] == ["load", "train", "register"]
    load_row, train_row, register_row = view.steps
    assert load_row.params == {"rows": 100} and load_row.attempts == 1
    assert load_row.cache_key == cache_key("code-load", "load", {"rows": 100}, {})
    assert load_row.artifacts == {"data": load["data"].id} and load_row.inputs == {}
    assert load_row.log_path == f"/logs/{run_id}/load.log" and load_row.duration > 0
    assert train_row.attempts == 2 and train_row.outputs == {"output": 3} and train_row.error is None
    assert train_row.inputs == {"data": (load["data"].id,)}
    assert set(train_row.artifacts) == {"model", "metrics"}
    assert register_row.params == {"name": "fraud", "epochs": 3} and register_row.cache_key is None
    assert register_row.inputs == {"model": (train["model"].id,)} and register_row.cached_from is None

    data = next(a for a in view.artifacts if a.name == "data")
    assert (data.run_id, data.step_id, data.type, data.metadata) == (run_id, "load", "Dataset", {"rows": 1})
    assert (data.sha256, data.size) == (load["data"].sha256, 8)
    assert data == store.artifact(data.id) and store.artifacts_by_sha256(data.sha256) == [data]
    assert {(m.step_id, m.name, m.value) for m in view.metrics} == {
        ("train", "output", 3.0),
        ("train", "accuracy", 0.9),
    }
    [registration] = view.registrations
    assert (registration.registry_uri, registration.step_id, registration.artifact_id) == (
        "registry://fraud/1", "register", train["model"].id,
    )  # fmt: skip
    json.dumps(view.as_dict())


def test_a_failed_step_and_its_skipped_dependants(local: MetadataStore, clock: Clock, tmp_path: Path) -> None:
    spec = fraud_pipeline()
    run_id = local.start_run(spec, "ray")
    driver_for(local, clock, tmp_path).step(run_id, spec.step("load"), files={"data": ("d", {})})
    for attempt in (1, 2):
        local.step_started(run_id, spec.step("train"), attempt, "k")
    assert local.run(run_id).run.steps == {"PENDING": 1, "RUNNING": 1, "SUCCEEDED": 1}
    failed = StepResult(
        "train", StepStatus.FAILED, error="ValueError: boom", attempts=2, started=T0, finished=T0 + 5
    )
    local.step_finished(run_id, failed, {"data": [1]}, "k")
    local.step_finished(
        run_id, StepResult("register", StepStatus.SKIPPED, error="upstream step train failed"), {}, None
    )
    local.finish_run(run_id, "FAILED")

    view = local.run(run_id)
    assert view.run.status == "FAILED" and view.run.steps == {"FAILED": 1, "SKIPPED": 1, "SUCCEEDED": 1}
    train, register = view.step("train"), view.step("register")
    assert (train.status, train.attempts, train.duration) == ("FAILED", 2, 5.0)
    assert train.error == "ValueError: boom" and train.inputs == {"data": (1,)}
    assert train.started == T0  # the first attempt's start, given by the executor
    assert (register.status, register.started, register.attempts) == ("SKIPPED", None, 0)
    assert register.finished is not None and register.error == "upstream step train failed"
    assert local.cached("k") is None  # a failed execution is never reused


def test_a_step_the_spec_did_not_list_is_added_when_it_starts(local: MetadataStore) -> None:
    spec = fraud_pipeline()
    run_id = local.start_run(spec, "local")
    extra = replace(spec.step("train"), id="train-3")  # e.g. a fan-out iteration
    local.step_started(run_id, extra, 1, None)
    local.step_finished(run_id, StepResult("train-3", StepStatus.SUCCEEDED, params={"output": 1.5}), {}, None)
    view = local.run(run_id)
    assert [s.step_id for s in view.steps] == ["load", "train", "register", "train-3"]
    assert view.step("train-3").component == "train" and view.metrics[0].value == 1.5
    with pytest.raises(NotFound, match="no step train-4 in run"):
        local.step_finished(run_id, StepResult("train-4", StepStatus.SUCCEEDED), {}, None)


def test_runs_are_listed_newest_first_with_a_limit_and_a_pipeline_filter(local: MetadataStore) -> None:
    ids = [local.start_run(fraud_pipeline(), "local") for _ in range(3)]
    other = local.start_run(PipelineSpec("churn model", {}, ()), "local")
    assert other.startswith("churn-model-")  # a run id is safe in paths and URLs
    assert [r.id for r in local.runs()] == [other, *ids[::-1]]
    assert [r.id for r in local.runs(limit=2)] == [other, ids[2]]
    assert [r.id for r in local.runs(pipeline="fraud")] == ids[::-1]
    assert [r.pipeline for r in local.runs(pipeline="churn model")] == ["churn model"]
    assert local.runs(pipeline="nothing") == []


def test_metrics_come_from_metrics_artifacts_and_numeric_outputs(
    local: MetadataStore, clock: Clock, tmp_path: Path
) -> None:
    spec = fraud_pipeline()
    run_id = local.start_run(spec, "local")
    logged = {"accuracy": 0.97, "auc": 1, "nan": float("nan"), "flag": True, "note": "text"}
    driver_for(local, clock, tmp_path).step(
        run_id, spec.step("train"), inputs={},
        files={"model": ("w", {"accuracy": 0.1}), "metrics": ("{}", logged)},
        outputs={"accuracy": 0.5, "epochs": 4, "ok": False, "name": "m", "output": [1, 2]},
    )  # fmt: skip
    metrics = {m.name: m.value for m in local.run(run_id).metrics}
    # A Metrics artifact wins a clash with a parameter output; a Model's metadata is no metric.
    assert metrics == {"accuracy": 0.97, "auc": 1.0, "epochs": 4.0}
    metrics_artifact = next(a for a in local.run(run_id).artifacts if a.type == "Metrics")
    assert metrics_artifact.metadata["nan"] == "nan"  # kept, as JSON can hold it


# -- the step cache -------------------------------------------------------------------------------


def test_the_cache_reuses_an_intact_earlier_execution(
    local: MetadataStore, clock: Clock, tmp_path: Path
) -> None:
    first = driver_for(local, clock, tmp_path).run()
    key = cache_key("code-load", "load", {"rows": 100}, {})
    hit = local.cached(key)
    assert hit is not None
    source, result = hit
    assert source == (first, "load")
    data = local.run(first).step("load").artifacts["data"]
    assert result.status == "CACHED" and result.step == "load"
    assert result.artifacts["data"]["id"] == data
    assert result.artifacts["data"] == {
        k: v
        for k, v in local.artifact(data).as_dict().items()
        if k in ("id", "path", "type", "sha256", "size", "metadata")
    }
    assert local.cached("0" * 64) is None

    # Parameter outputs come back too.
    train_key = local.run(first).step("train").cache_key
    assert local.cached(train_key).result.params == {"output": 3}


def test_a_changed_or_deleted_artifact_is_a_cache_miss(
    local: MetadataStore, clock: Clock, tmp_path: Path
) -> None:
    driver = driver_for(local, clock, tmp_path)
    first = driver.run()
    key = cache_key("code-load", "load", {"rows": 100}, {})
    path = Path(local.artifact(local.run(first).step("load").artifacts["data"]).path)

    path.write_text("x,y\n1,3\n")  # same size, other bytes
    assert local.cached(key) is None
    path.write_text("x,y\n1,2\n")
    assert local.cached(key).source == (first, "load")
    path.unlink()
    assert local.cached(key) is None

    # A newer execution with the same key is preferred; an older intact one is the fallback.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x,y\n1,2\n")
    second = driver.run(use_cache=False)
    assert local.cached(key).source == (second, "load")
    Path(local.artifact(local.run(second).step("load").artifacts["data"]).path).unlink()
    assert local.cached(key).source == (first, "load")


def test_a_cached_step_is_never_a_source_itself(local: MetadataStore, clock: Clock, tmp_path: Path) -> None:
    driver = driver_for(local, clock, tmp_path)
    first = driver.run()
    second = driver.run(version=2)
    load = local.run(second).step("load")
    assert (load.status, load.cached_from, load.attempts) == ("CACHED", (first, "load"), 0)
    # The reused execution's artifacts are the cached step's outputs, and its metrics too.
    assert load.artifacts == local.run(first).step("load").artifacts
    assert {m.name for m in local.run(second).metrics if m.step_id == "train"} == {
        "output",
        "accuracy",
        "loss",
    }
    assert local.cached(load.cache_key).source == (first, "load")


# -- lineage --------------------------------------------------------------------------------------


def test_lineage_runs_from_a_registry_version_back_to_the_dataset_and_its_run(
    store: MetadataStore, clock: Clock, tmp_path: Path
) -> None:
    run_id = driver_for(store, clock, tmp_path).run()
    view = store.run(run_id)
    ids = {a.name: a.id for a in view.artifacts}
    lineage = store.lineage("registry://fraud/1")

    [registration] = lineage.registrations
    assert lineage.roots == (registration.key,) and lineage.direction == "upstream"
    edges = {(e.source, e.kind, e.target) for e in lineage.edges}
    assert edges == {
        (f"step:{run_id}/register", "registered", registration.key),
        (f"artifact:{ids['model']}", "consumed", f"step:{run_id}/register"),
        (f"step:{run_id}/train", "produced", f"artifact:{ids['model']}"),
        (f"artifact:{ids['data']}", "consumed", f"step:{run_id}/train"),
        (f"step:{run_id}/load", "produced", f"artifact:{ids['data']}"),
    }
    datasets = [a for a in lineage.artifacts if a.type == "Dataset"]
    assert [(a.id, a.run_id, a.step_id) for a in datasets] == [(ids["data"], run_id, "load")]
    assert [r.id for r in lineage.runs] == [run_id]
    assert ids["metrics"] not in {a.id for a in lineage.artifacts}  # not upstream of the model

    tree = lineage.tree()
    assert tree[0] == "upstream of registry://fraud/1:"
    assert tree[1].startswith("registry://fraud/1 (registered by")
    assert tree[2] == f"└── registered from step register (register) SUCCEEDED in run {run_id}"
    assert tree[3].startswith(f"    └── input Model model #{ids['model']} sha256:")
    assert tree[4] == f"        └── written by step train (train) SUCCEEDED in run {run_id}"
    assert tree[6] == f"                └── written by step load (load) SUCCEEDED in run {run_id}"
    assert tree[7] == "runs:" and tree[8].startswith(f"  {run_id}  fraud  SUCCEEDED")
    json.dumps(lineage.as_dict())

    # By the dataset's sha256 (or a prefix of it), or by the run: the same producers.
    by_sha = store.lineage(datasets[0].sha256[:12])
    assert by_sha.roots == (f"artifact:{ids['data']}",)
    assert {s.key for s in by_sha.steps} == {f"step:{run_id}/load"}
    by_run = store.lineage(run_id)
    assert by_run.roots[0] == registration.key
    assert {s.step_id for s in by_run.steps} == {"load", "train", "register"}
    # What the run read, and where that came from; not what it wrote (its metrics).
    assert {a.name for a in by_run.artifacts} == {"data", "model"}


def test_descendants_run_from_a_dataset_to_every_registry_version(
    store: MetadataStore, clock: Clock, tmp_path: Path
) -> None:
    driver = driver_for(store, clock, tmp_path)
    first = driver.run(lr=0.1, version=1)
    second = driver.run(lr=0.2, version=2)  # load is cached: the same dataset artifact
    data = store.artifact(store.run(first).step("load").artifacts["data"])

    down = store.descendants(data.sha256)
    assert down.direction == "downstream" and down.roots == (data.key,)
    assert sorted(r.registry_uri for r in down.registrations) == ["registry://fraud/1", "registry://fraud/2"]
    assert {(s.run_id, s.step_id) for s in down.steps} == {
        (first, "train"), (first, "register"), (second, "train"), (second, "register"),
    }  # fmt: skip
    assert {r.id for r in down.runs} == {first, second}
    tree = down.tree()
    assert tree[1].startswith(f"Dataset data #{data.id} sha256:{data.sha256[:12]}")
    assert any("registered as registry://fraud/2" in line for line in tree)

    # From the first run: its steps, everything they led to, and the step that reused its load.
    from_run = store.descendants(first[:-2])
    assert (second, "load") in {(s.run_id, s.step_id) for s in from_run.steps}
    assert ("step:" + first + "/load", "cached", f"step:{second}/load") in {
        (e.source, e.kind, e.target) for e in from_run.edges
    }
    assert store.descendants("registry://fraud/2").edges == ()


def test_lineage_through_cached_steps_reaches_the_original_producer(
    store: MetadataStore, clock: Clock, tmp_path: Path
) -> None:
    driver = driver_for(store, clock, tmp_path)
    first = driver.run(lr=0.1, version=1)
    second = driver.run(lr=0.1, version=2)  # load and train both cached from the first run
    assert {s.step_id: s.status for s in store.run(second).steps} == {
        "load": "CACHED", "train": "CACHED", "register": "SUCCEEDED",
    }  # fmt: skip
    model = store.run(first).step("train").artifacts["model"]

    lineage = store.lineage("registry://fraud/2")
    edges = {(e.source, e.kind, e.target) for e in lineage.edges}
    assert (f"artifact:{model}", "consumed", f"step:{second}/register") in edges
    # The model came to this run through its cached train, which reused the first run's...
    assert (f"step:{second}/train", "produced", f"artifact:{model}") in edges
    assert (f"step:{first}/train", "cached", f"step:{second}/train") in edges
    # ...which wrote it, from the first run's dataset.
    assert (f"step:{first}/train", "produced", f"artifact:{model}") in edges
    assert (
        f"step:{first}/load",
        "produced",
        f"artifact:{store.run(first).step('load').artifacts['data']}",
    ) in edges
    assert {r.id for r in lineage.runs} == {first, second}
    assert any(f"reused from step train (train) SUCCEEDED in run {first}" in line for line in lineage.tree())
    assert any("(see above)" in line for line in lineage.tree())


def test_a_registered_output_is_traced_through_the_step_that_wrote_it(
    local: MetadataStore, clock: Clock, tmp_path: Path
) -> None:
    spec = fraud_pipeline()
    run_id = local.start_run(spec, "local")
    train = driver_for(local, clock, tmp_path).step(run_id, spec.step("train"), files={"model": ("w", {})})
    local.record_registration(run_id, "train", train["model"].id, "registry://fraud/7/")
    lineage = local.lineage("registry://fraud/7")
    [registration] = lineage.registrations
    assert {(e.source, e.kind, e.target) for e in lineage.edges} == {
        (f"step:{run_id}/train", "registered", registration.key),
        (f"artifact:{train['model'].id}", "registered", registration.key),
        (f"step:{run_id}/train", "produced", f"artifact:{train['model'].id}"),
    }
    down = local.descendants(train["model"].sha256)
    assert [r.registry_uri for r in down.registrations] == ["registry://fraud/7"]


# -- errors and lookups ---------------------------------------------------------------------------


def test_unknown_runs_uris_and_artifacts_are_clear_errors(
    local: MetadataStore, clock: Clock, tmp_path: Path
) -> None:
    run_id = driver_for(local, clock, tmp_path).run()
    with pytest.raises(RunNotFound, match="no run 'nope'") as caught:
        local.run("nope")
    assert isinstance(caught.value, LookupError)
    with pytest.raises(NotFound, match="no pipeline step registered registry://fraud/9"):
        local.lineage("registry://fraud/9")
    with pytest.raises(NotFound, match="no run, artifact sha256 or registry version 'f00d"):
        local.descendants("f00d" * 16)
    with pytest.raises(NotFound, match="no artifact 999"):
        local.artifact(999)
    assert local.artifacts_by_sha256("f00d" * 16) == []
    with pytest.raises(MetadataError, match="alias, which moves"):
        local.lineage("registry://fraud@production")
    with pytest.raises(MetadataError, match="names no version"):
        local.record_registration(run_id, "register", None, "registry://fraud")
    with pytest.raises(NotFound, match="no step nope in run"):
        local.record_artifact(run_id, "nope", "x", "Dataset", "/x", "ab" * 32, 1, {})
    with pytest.raises(RunNotFound):
        local.step_finished("nope", StepResult("load", StepStatus.SUCCEEDED), {}, None)
    with pytest.raises(RunNotFound):
        local.finish_run("nope", "FAILED")
    with pytest.raises(RunNotFound):  # a write names a run by its whole id
        local.step_started(run_id[:-1], replace(fraud_pipeline().step("load"), id="other"), 1, None)
    with pytest.raises(MetadataError, match="SUCCEEDED or FAILED"):
        local.finish_run(run_id, "DONE")
    with pytest.raises(MetadataError, match="bad pipelines database URL"):
        MetadataStore("not a url")


def test_a_run_is_found_by_a_unique_prefix_of_its_id(local: MetadataStore, clock: Clock) -> None:
    first = local.start_run(fraud_pipeline(), "local")
    second = local.start_run(fraud_pipeline(), "local")
    assert local.run(first[:-3]).run.id == first  # the date differs by a second
    assert local.run(second).run.id == second
    with pytest.raises(Ambiguous, match="matches more than one run") as caught:
        local.run("fraud-2025")
    assert first in str(caught.value) and second in str(caught.value)
    with pytest.raises(RunNotFound):
        local.run("")
    with pytest.raises(RunNotFound):
        local.run("fraud%")  # LIKE's wildcards are plain characters here


def test_an_ambiguous_sha256_prefix_is_an_error(local: MetadataStore) -> None:
    spec = fraud_pipeline()
    run_id = local.start_run(spec, "local")
    local.record_artifact(run_id, "load", "a", "Dataset", "/a", "ab" * 32, 1, {})
    local.record_artifact(run_id, "load", "b", "Dataset", "/b", "ab" * 31 + "cd", 1, {})
    with pytest.raises(Ambiguous, match="sha256 prefix abababababab matches more than one"):
        local.lineage("ab" * 6)
    assert [a.name for a in local.lineage("AB" * 31 + "CD").artifacts] == ["b"]
    assert local.lineage("sha256:" + "ab" * 32).roots == (
        f"artifact:{local.artifacts_by_sha256('ab' * 32)[0].id}",
    )


def test_the_default_database_lives_under_the_state_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("SERVEGATE_METADATA_URL", raising=False)
    monkeypatch.setenv("SERVEGATE_STATE_DIR", str(tmp_path / "state"))
    assert default_url() == f"sqlite:///{tmp_path / 'state' / 'pipelines.db'}"
    assert default_url(tmp_path / "other") == f"sqlite:///{tmp_path / 'other' / 'pipelines.db'}"
    monkeypatch.setenv("SERVEGATE_METADATA_URL", "postgresql+psycopg://db/pipelines")
    assert default_url() == "postgresql+psycopg://db/pipelines"


# -- the cache key --------------------------------------------------------------------------------


def test_the_cache_key_is_a_function_of_code_component_params_and_inputs() -> None:
    base = cache_key("code", "train", {"lr": 0.1, "epochs": 3}, {"data": ["a" * 64], "labels": ["b" * 64]})
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    # Names are unordered.
    assert base == cache_key(
        "code", "train", {"epochs": 3, "lr": 0.1}, {"labels": ["b" * 64], "data": ["a" * 64]}
    )
    changed = [
        cache_key("code2", "train", {"lr": 0.1, "epochs": 3}, {"data": ["a" * 64], "labels": ["b" * 64]}),
        cache_key("code", "train-2", {"lr": 0.1, "epochs": 3}, {"data": ["a" * 64], "labels": ["b" * 64]}),
        cache_key("code", "train", {"lr": 0.2, "epochs": 3}, {"data": ["a" * 64], "labels": ["b" * 64]}),
        cache_key("code", "train", {"lr": 0.1, "epochs": "3"}, {"data": ["a" * 64], "labels": ["b" * 64]}),
        cache_key("code", "train", {"lr": 0.1}, {"data": ["a" * 64], "labels": ["b" * 64]}),
        cache_key("code", "train", {"lr": 0.1, "epochs": 3}, {"data": ["c" * 64], "labels": ["b" * 64]}),
        cache_key("code", "train", {"lr": 0.1, "epochs": 3}, {"data": ["a" * 64]}),
        cache_key("code", "train", {"lr": 0.1, "epochs": 3}, {"data": ["b" * 64], "labels": ["a" * 64]}),
    ]
    assert len({base, *changed}) == len(changed) + 1
    # A fan-in list keeps its order: the component sees it.
    assert cache_key("c", "m", {}, {"xs": ["a", "b"]}) != cache_key("c", "m", {}, {"xs": ["b", "a"]})
    with pytest.raises(MetadataError, match="cannot make a cache key"):
        cache_key("c", "m", {"x": object()}, {})
