"""Replica thread pools: the plan for given limits and machine sizes, and how it reaches the runtimes."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from predictors.examples import make_mlp_onnx
from predictors.runtimes.onnx import OnnxRuntime
from predictors.spec import ModelSpec
from predictors.threads import (
    ThreadPlan,
    available_cores,
    cgroup_cpus,
    cores_allowed,
    plan_threads,
    thread_env,
)
from serving.cli._serve import ServeArgs, apply_thread_env
from serving.cli.model import model
from serving.controller.controller import THREADS_ANNOTATION, Controller
from serving.engines._pools import Pool, Replica
from serving.engines._replica_proc import serve_command
from serving.engines.base import ReplicaSpec, ReplicaState, ServedModelRef
from serving.engines.process import ProcessEngine
from serving.spec import Component, InferenceService, ManifestError, load_manifests
from serving.store import RevisionRow

# --- the plan ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cores", "cpus", "requested", "intra_op", "spinning"),
    [
        # The process engine's share: the cores over the gateway and its replicas.
        pytest.param(2, 2 / 2, None, 1, False, id="2 cores, gateway + 1 replica"),
        pytest.param(16, 16 / 2, None, 8, False, id="16 cores, gateway + 1 replica"),
        pytest.param(16, 16 / 4, None, 4, False, id="16 cores, gateway + 3 replicas"),
        pytest.param(2, 2 / 4, None, 1, False, id="2 cores, gateway + 3 replicas"),
        # A CPU limit (resources.limits.cpu, or the CPU Ray holds for the actor).
        pytest.param(8, 0.5, None, 1, False, id="cpu limit 0.5"),
        pytest.param(32, 4.0, None, 4, False, id="cpu limit 4 on 32 cores"),
        pytest.param(32, 2.5, None, 2, False, id="cpu limit 2.5: whole CPUs only"),
        pytest.param(2, 8.0, None, 2, False, id="cpu limit above the cores"),
        pytest.param(8, None, None, 8, False, id="standalone: every core"),
        # --threads N / the annotation win; the pool spins only with a CPU to spare beyond it.
        pytest.param(16, 4.0, 2, 2, True, id="requested 2 on share 4"),
        pytest.param(16, 3.0, 2, 2, True, id="requested 2 on share 3"),
        pytest.param(16, 2.5, 2, 2, False, id="requested 2 on share 2.5"),
        pytest.param(16, 2.0, 8, 8, False, id="requested 8 on share 2"),
        pytest.param(16, 8.0, 1, 1, False, id="requested 1: one thread never spins"),
    ],
)
def test_plan(cores: int, cpus: float | None, requested: int | None, intra_op: int, spinning: bool) -> None:
    plan = plan_threads(cores=cores, cpus=cpus, requested=requested)
    assert (plan.intra_op, plan.spinning) == (intra_op, spinning)
    assert plan.inter_op == 1  # concurrency comes from the replica's executor
    assert plan.why.startswith(f"{intra_op} thread")


def test_plan_refuses_what_no_caller_should_pass() -> None:
    with pytest.raises(ValueError, match="cpus"):
        plan_threads(cores=2, cpus=0)
    with pytest.raises(ValueError, match="threads"):
        plan_threads(cores=2, requested=0)


def test_thread_env_carries_the_plan() -> None:
    spinning = ThreadPlan(intra_op=3, inter_op=1, spinning=True, why="")
    assert thread_env(spinning) == {
        "OMP_NUM_THREADS": "3",
        "MKL_NUM_THREADS": "3",
        "OPENBLAS_NUM_THREADS": "3",
        "OMP_WAIT_POLICY": "ACTIVE",
    }
    assert thread_env(dataclasses.replace(spinning, spinning=False))["OMP_WAIT_POLICY"] == "PASSIVE"


def test_the_users_thread_variables_win() -> None:
    environ = {"OMP_NUM_THREADS": "6", "PATH": "/bin"}
    kept = apply_thread_env(ThreadPlan(1, 1, False, ""), environ)
    assert kept == ["OMP_NUM_THREADS=6"]
    assert environ["OMP_NUM_THREADS"] == "6"
    assert environ["OPENBLAS_NUM_THREADS"] == environ["MKL_NUM_THREADS"] == "1"
    assert environ["OMP_WAIT_POLICY"] == "PASSIVE"


# --- the cores a process may use -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("max 100000\n", None),
        ("200000 100000\n", 2.0),
        ("150000 100000", 1.5),
        ("50000 100000", 0.5),
        ("-1 100000", None),  # cgroup v1: no quota
        ("garbage", None),
        ("", None),
        ("100000", None),
        ("x 100000", None),
        ("100000 0", None),
    ],
)
def test_cgroup_quota(text: str, cpus: float | None) -> None:
    assert cgroup_cpus(text) == (pytest.approx(cpus) if cpus is not None else None)


@pytest.mark.parametrize(
    ("affinity", "quota", "cores"),
    [(8, None, 8), (8, cgroup_cpus("150000 100000"), 2), (2, 8.0, 2), (4, 0.2, 1), (0, None, 1)],
)
def test_cores_are_the_affinity_capped_by_the_quota_rounded_up(
    affinity: int, quota: float | None, cores: int
) -> None:
    assert cores_allowed(affinity, quota) == cores


def test_available_cores_on_this_machine() -> None:
    import os

    assert 1 <= available_cores() <= (os.cpu_count() or 1)


# --- the replica: `servegate model serve` --------------------------------------------------------


def _args(**kw: object) -> ServeArgs:
    return ServeArgs(names=("m",), uris=("m.onnx",), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "cores", "intra_op", "spinning"),
    [
        ({}, 4, 4, False),
        ({"cpus": 1.0}, 4, 1, False),
        ({"cpus": 0.3}, 4, 1, False),
        ({"threads": 2}, 4, 2, True),
        ({"threads": 2, "cpus": 2.0}, 4, 2, False),
        ({"workers": 2}, 4, 2, False),  # each worker gets half
        ({"workers": 2, "cpus": 8.0}, 4, 2, False),  # of what it may use, not of the limit
        ({"workers": 4, "cpus": 2.0}, 16, 1, False),
    ],
)
def test_serve_plans_per_process(kw: dict[str, object], cores: int, intra_op: int, spinning: bool) -> None:
    plan = _args(**kw).thread_plan(cores)
    assert (plan.intra_op, plan.spinning) == (intra_op, spinning)
    [spec] = _args(**kw).specs(plan)
    assert (spec.threads, spec.spinning) == (intra_op, spinning)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--threads", "0"], "neither 'auto' nor a positive integer"),
        (["--threads", "x"], "neither 'auto' nor a positive integer"),
        (["--threads", "-2"], "neither 'auto' nor a positive integer"),
        (["--threads", "1.5"], "neither 'auto' nor a positive integer"),
        (["--cpus", "-1"], "--cpus"),
        (["--cpus", "0"], "--cpus"),
        (["--cpus", "abc"], "--cpus"),
    ],
)
def test_serve_refuses_bad_thread_flags(flags: list[str], message: str) -> None:
    result = CliRunner().invoke(model, ["serve", "--model-name", "m", "--model-uri", "m.onnx", *flags])
    assert result.exit_code == 2
    assert message in result.output


def test_the_cli_loads_no_numpy_before_it_sets_the_thread_variables() -> None:
    # OpenBLAS sizes its pool as numpy loads: `run_serve` sets the variables before importing the
    # replica, and nothing the CLI imports before that may load numpy.
    code = "import sys, serving.cli.main, serving.cli._serve; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("spinning", [True, False])
def test_onnx_runtime_takes_the_plan(tmp_path: Path, spinning: bool) -> None:
    path = make_mlp_onnx(tmp_path / "mlp.onnx", (4, 8, 2))
    runtime = OnnxRuntime(ModelSpec(name="m", uri=str(path), threads=2, spinning=spinning), path)
    runtime.load_blocking()
    options = runtime.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 1)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == str(int(spinning))
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    runtime.unload_blocking()


# --- engines -------------------------------------------------------------------------------------

_MODELS = (ServedModelRef("a", "a.onnx"),)


def _flags(command: list[str], flag: str) -> list[str]:
    return [command[i + 1] for i, arg in enumerate(command) if arg == flag]


@pytest.mark.parametrize(
    ("spec", "cpus", "want_cpus", "want_threads"),
    [
        (ReplicaSpec("r", _MODELS), None, [], []),
        (ReplicaSpec("r", _MODELS), 2 / 3, ["0.6667"], []),
        (ReplicaSpec("r", _MODELS, cpus=2.5), 2.5, ["2.5"], []),
        (ReplicaSpec("r", _MODELS, threads=3), 8.0, ["8"], ["3"]),
        (ReplicaSpec("r", _MODELS, cpus=0.5, threads=2), 0.5, ["0.5"], ["2"]),
    ],
)
def test_serve_command_passes_the_share_and_only_explicit_threads(
    spec: ReplicaSpec, cpus: float | None, want_cpus: list[str], want_threads: list[str]
) -> None:
    command = serve_command("py", spec, Path("p"), 1.0, cpus=cpus)
    assert _flags(command, "--cpus") == want_cpus
    assert _flags(command, "--threads") == want_threads


def test_a_manifests_args_override_the_engines_thread_flags() -> None:
    spec = ReplicaSpec("r", _MODELS, threads=2, args=("--threads", "4"))
    command = serve_command("py", spec, Path("p"), 1.0, cpus=4.0)
    assert _flags(command, "--threads") == ["2", "4"]  # click keeps the last
    assert command[-2:] == ["--threads", "4"]


def _engine_with(tmp_path: Path, cores: int, replicas: dict[str, int]) -> ProcessEngine:
    """A process engine on `cores` cores holding pools of the given sizes (nothing started)."""
    engine = ProcessEngine(tmp_path)
    engine._cores = cores
    for revision, count in replicas.items():
        pool = engine._pools[revision] = Pool(ReplicaSpec(revision), desired=count)
        for _ in range(count):
            engine._new_replica(pool)
    return engine


@pytest.mark.parametrize(
    ("cores", "replicas", "cpus"),
    [
        (2, {"a": 1}, 1.0),  # the plain manifest on the 2-core machine: one thread
        (16, {"a": 1}, 8.0),
        (16, {"a": 2, "b": 1}, 4.0),
        (2, {"a": 3}, 0.5),
    ],
)
def test_process_engine_shares_the_cores_with_the_gateway(
    tmp_path: Path, cores: int, replicas: dict[str, int], cpus: float
) -> None:
    engine = _engine_with(tmp_path, cores, replicas)
    assert engine._cpus(ReplicaSpec("a")) == pytest.approx(cpus)
    # A CPU limit is the replica's whatever else runs.
    assert engine._cpus(ReplicaSpec("a", cpus=1.5)) == 1.5


def test_process_engine_leaves_draining_replicas_out_of_the_count(tmp_path: Path) -> None:
    engine = _engine_with(tmp_path, 16, {"a": 3})
    r: Replica = engine._pools["a"].replicas[0]
    r.state = ReplicaState.DRAINING
    assert engine._cpus(ReplicaSpec("a")) == pytest.approx(16 / 3)


# --- the annotation ------------------------------------------------------------------------------


def _manifest(annotations: dict[str, str] | None = None, transformer: bool = False) -> str:
    lines = [
        "apiVersion: serving.kserve.io/v1beta1",
        "kind: InferenceService",
        "metadata:",
        "  name: mlp",
    ]
    if annotations:
        lines += ["  annotations:", *(f'    {k}: "{v}"' for k, v in annotations.items())]
    lines += ["spec:", "  predictor:", "    model: {modelFormat: {name: onnx}, storageUri: /m.onnx}"]
    if transformer:
        lines += ["  transformer:", "    model: {modelFormat: {name: python}, storageUri: 't.py:T'}"]
    return "\n".join(lines) + "\n"


def _isvc(text: str) -> InferenceService:
    [resource] = load_manifests(text)
    assert isinstance(resource, InferenceService)
    return resource


def test_the_annotation_reaches_the_replica_spec() -> None:
    isvc = _isvc(_manifest({THREADS_ANNOTATION: "3"}, transformer=True))
    components = isvc.components()
    assert components["predictor"].threads == 3
    assert components["transformer"].threads is None  # the model's threads, not the transformer's
    row = RevisionRow(
        "mlp-predictor-00001", "mlp", "predictor", 1, "key", dataclasses.asdict(components["predictor"]), 0.0
    )
    controller = Controller(None, None, None, "http://127.0.0.1:1")  # type: ignore[arg-type]
    assert controller._replica_spec("mlp", row).threads == 3
    plain = _isvc(_manifest()).components()["predictor"]
    row = dataclasses.replace(row, spec=dataclasses.asdict(plain))
    assert controller._replica_spec("mlp", row).threads is None


def test_the_annotation_is_part_of_the_revision_only_when_set() -> None:
    before = Component(kind="predictor", format="onnx", storage_uri="/m")
    # The hash of a component without threads is what it was before the field existed.
    assert before.revision_key() == "3e211e4d7426"
    plain = _isvc(_manifest()).components()["predictor"]
    three = _isvc(_manifest({THREADS_ANNOTATION: "3"})).components()["predictor"]
    four = _isvc(_manifest({THREADS_ANNOTATION: "4"})).components()["predictor"]
    assert len({plain.revision_key(), three.revision_key(), four.revision_key()}) == 3
    assert dataclasses.replace(three, threads=None).revision_key() == plain.revision_key()


@pytest.mark.parametrize("value", ["0", "-1", "x", "1.5", "", "²"])
def test_a_bad_annotation_is_refused_at_apply(value: str) -> None:
    with pytest.raises(ManifestError) as caught:
        load_manifests(_manifest({THREADS_ANNOTATION: value}))
    [problem] = caught.value.problems
    assert problem.path == f'InferenceService/mlp: metadata.annotations["{THREADS_ANNOTATION}"]'
    assert "positive integer" in problem.message
