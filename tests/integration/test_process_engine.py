"""ProcessEngine with real `servegate model serve` processes on loopback: start, serve, scale, crash
and restart, GPU placement, a failing model, and a close that leaves nothing behind.

Each test gets its own engine (and state folder); the fixture always closes it, and then checks
that no process of that state folder is left.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from predictors.examples import mlp_forward
from serving.engines import PoolStatus, ProcessEngine, ReplicaSpec, ReplicaState, ServedModelRef
from tests.conftest import MLP_SIZES
from tests.servers import ROOT, processes_using, until

pytestmark = pytest.mark.integration

# The model's version folder: a model URI names the folder holding the artifact (model.onnx).
X = np.linspace(-1.0, 1.0, 2 * MLP_SIZES[0], dtype=np.float32).reshape(2, MLP_SIZES[0])
BODY = {"inputs": [{"name": "input", "shape": list(X.shape), "datatype": "FP32", "data": X.ravel().tolist()}]}


async def eventually(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """`until` for the engine's own event loop: poll without blocking it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def replica_pid(engine: ProcessEngine, replica_id: str) -> int:
    return json.loads((engine.state_dir / "replicas" / replica_id / "ports.json").read_text())["pid"]


def mlp_spec(model_repo: Path, revision: str = "mlp-00001", **fields: Any) -> ReplicaSpec:
    return ReplicaSpec(
        revision=revision, models=(ServedModelRef("mlp", str(model_repo / "mlp" / "1")),), **fields
    )


def ready(engine: ProcessEngine, revision: str, count: int) -> PoolStatus | None:
    status = engine.status(revision)
    return status if status is not None and status.ready == count and len(status.replicas) == count else None


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[ProcessEngine]:
    state = tmp_path / "state"
    engine = ProcessEngine(
        state, health_interval_s=0.2, backoff_initial_s=0.2, backoff_max_s=1.0, drain_timeout_s=2.0, gpus=[]
    )
    await engine.start()
    try:
        yield engine
    finally:
        await engine.close()
        assert processes_using(state) == set()


# -- `servegate model serve --port-file` ------------------------------------------------------------


def test_port_file_reports_the_bound_ports(model_repo: Path, tmp_path: Path) -> None:
    port_file = tmp_path / "ports.json"
    command = [sys.executable, "-m", "serving", "model", "serve", "--host", "127.0.0.1"]
    command += ["--http-port", "0", "--grpc-port", "0", "--port-file", str(port_file)]
    command += ["--model-name", "mlp", "--model-uri", str(model_repo / "mlp" / "1"), "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        until(port_file.exists, 30, "the port file")
        ports = json.loads(port_file.read_text())
        assert set(ports) == {"http", "grpc", "pid"}
        assert ports["pid"] == process.pid
        assert ports["http"] > 0 and ports["grpc"] > 0 and ports["http"] != ports["grpc"]
        url = f"http://127.0.0.1:{ports['http']}/v2/health/ready"
        until(lambda: httpx.get(url, timeout=2).status_code == 200, 30, "readiness")
        assert list(tmp_path.iterdir()) == [port_file]  # no temp file left beside it
    finally:
        process.terminate()
        process.wait(30)


def test_port_file_needs_one_worker(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "serving",
        "model",
        "serve",
        "--model-name",
        "a",
        "--model-uri",
        "a.onnx",
    ]
    command += ["--workers", "2", "--port-file", str(tmp_path / "ports.json")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "--port-file needs --workers 1" in result.stderr


# -- the engine ------------------------------------------------------------------------------------


async def test_pool_serves_then_scales_down_draining_first(engine: ProcessEngine, model_repo: Path) -> None:
    seen: list[tuple[str, ReplicaState, bool]] = []  # (replica, state, process alive) per notification

    def listener(revision: str) -> None:
        for r in engine.status(revision).replicas:  # type: ignore[union-attr]
            port_file = engine.state_dir / "replicas" / r.id / "ports.json"
            seen.append((r.id, r.state, port_file.exists() and alive(replica_pid(engine, r.id))))

    engine.watch(listener)
    await engine.scale(mlp_spec(model_repo), 2)
    status = await eventually(lambda: ready(engine, "mlp-00001", 2), what="2 ready replicas")
    assert status.desired == 2 and status.schedulable
    assert len({r.id for r in status.replicas}) == 2
    assert all(r.id.startswith("mlp-00001-") and len(r.id) == len("mlp-00001-") + 5 for r in status.replicas)
    async with httpx.AsyncClient(timeout=10) as client:
        for r in status.replicas:
            assert r.grpc_target is not None and r.restarts == 0 and r.reason == ""
            response = await client.post(f"{r.http_url}/v2/models/mlp/infer", json=BODY)
            assert response.status_code == 200, response.text
            (output,) = response.json()["outputs"]
            actual = np.array(output["data"], dtype=np.float32).reshape(output["shape"])
            np.testing.assert_allclose(actual, mlp_forward(X, MLP_SIZES), rtol=1e-5, atol=1e-5)

    pids = {r.id: replica_pid(engine, r.id) for r in status.replicas}
    await engine.scale(mlp_spec(model_repo), 1)
    drained = [rid for rid, state, _ in seen if state is ReplicaState.DRAINING]
    assert len(set(drained)) == 1, seen  # announced before scale() returned
    assert (drained[0], ReplicaState.DRAINING, True) in seen  # ...while its process still ran
    await eventually(lambda: not alive(pids[drained[0]]), what="the drained replica to exit")
    status = await eventually(lambda: ready(engine, "mlp-00001", 1), what="1 replica left")
    (kept,) = status.replicas
    assert kept.id != drained[0] and alive(pids[kept.id])

    await engine.scale(mlp_spec(model_repo), 0)
    await eventually(lambda: engine.status("mlp-00001").replicas == (), what="no replica left")  # type: ignore[union-attr]
    assert not alive(pids[kept.id])
    assert engine.status("mlp-00001").desired == 0  # type: ignore[union-attr]


async def test_killed_replica_fails_and_restarts(engine: ProcessEngine, model_repo: Path) -> None:
    states: list[tuple[str, ReplicaState]] = []
    engine.watch(lambda rev: states.extend((r.id, r.state) for r in engine.status(rev).replicas))  # type: ignore[union-attr]
    await engine.scale(mlp_spec(model_repo), 1)
    (replica,) = (await eventually(lambda: ready(engine, "mlp-00001", 1), what="ready")).replicas
    old_pid = replica_pid(engine, replica.id)

    os.kill(old_pid, signal.SIGKILL)
    await eventually(lambda: (replica.id, ReplicaState.FAILED) in states, what="FAILED")
    status = await eventually(
        lambda: (s := ready(engine, "mlp-00001", 1)) and s.replicas[0].restarts >= 1 and s, what="restarted"
    )
    (restarted,) = status.replicas
    assert restarted.id == replica.id and replica_pid(engine, replica.id) != old_pid
    events = "\n".join(status.events)
    assert f"replica {replica.id} exited with code -9 (SIGKILL)" in events
    assert "restarting in 0.2s" in events
    assert f"replica {replica.id} starting (restart 1)" in events


async def test_hung_replica_turns_unhealthy_and_is_replaced(tmp_path: Path, model_repo: Path) -> None:
    # SIGSTOP: the port stays open but nothing answers, so checks time out (2 s each).
    engine = ProcessEngine(
        tmp_path / "state", health_interval_s=0.2, failure_threshold=2, backoff_initial_s=0.2, gpus=[]
    )
    await engine.start()
    states: list[tuple[str, ReplicaState]] = []
    engine.watch(lambda rev: states.extend((r.id, r.state) for r in engine.status(rev).replicas))  # type: ignore[union-attr]
    try:
        await engine.scale(mlp_spec(model_repo), 1)
        (replica,) = (await eventually(lambda: ready(engine, "mlp-00001", 1), what="ready")).replicas
        hung = replica_pid(engine, replica.id)
        os.kill(hung, signal.SIGSTOP)
        await eventually(lambda: (replica.id, ReplicaState.UNHEALTHY) in states, what="UNHEALTHY")
        assert "readiness checks failed in a row" in engine.status("mlp-00001").replicas[0].reason  # type: ignore[union-attr]
        status = await eventually(
            lambda: (s := ready(engine, "mlp-00001", 1)) and s.replicas[0].restarts == 1 and s, 20, "replaced"
        )
        assert not alive(hung) and replica_pid(engine, replica.id) != hung
        assert any(f"replica {replica.id} unhealthy: 2 readiness checks" in event for event in status.events)
    finally:
        await engine.close()
    assert processes_using(tmp_path / "state") == set()


async def test_gpu_pool_on_a_machine_without_gpus_is_not_schedulable(
    engine: ProcessEngine, model_repo: Path
) -> None:
    await engine.scale(mlp_spec(model_repo, "gpu-00001", gpus=1), 1)
    await engine.scale(mlp_spec(model_repo, "gpu-00001", gpus=1), 1)  # no retry, no second event
    status = engine.status("gpu-00001")
    assert status is not None and not status.schedulable
    assert status.reason == (
        "not schedulable: each replica needs 1 GPU (nvidia.com/gpu); this machine has 0 GPUs, 0 free"
    )
    assert status.replicas == () and status.desired == 1 and status.ready == 0
    assert sum(status.reason in event for event in status.events) == 1
    assert processes_using(engine.state_dir) == set()


async def test_gpus_are_given_out_distinct_and_released(tmp_path: Path, model_repo: Path) -> None:
    engine = ProcessEngine(tmp_path / "state", health_interval_s=0.2, drain_timeout_s=2.0, gpus=[0, 1])
    await engine.start()
    try:
        spec = mlp_spec(model_repo, "fake-gpu-00001", gpus=1)
        await engine.scale(spec, 2)
        status = await eventually(lambda: ready(engine, "fake-gpu-00001", 2), what="2 ready replicas")
        assert sorted(r.gpu_ids for r in status.replicas) == [(0,), (1,)]
        for r in status.replicas:
            environ = Path(f"/proc/{replica_pid(engine, r.id)}/environ").read_bytes().split(b"\0")
            assert f"CUDA_VISIBLE_DEVICES={r.gpu_ids[0]}".encode() in environ
            assert f"SERVEGATE_GPU_IDS={r.gpu_ids[0]}".encode() in environ

        await engine.scale(spec, 3)  # a third replica finds no free GPU
        status = engine.status("fake-gpu-00001")
        assert status is not None and not status.schedulable and len(status.replicas) == 2
        assert status.reason.endswith("this machine has 2 GPUs, 0 free; 2 of 3 replicas placed")

        cpu = ReplicaSpec("cpu-00001", models=(ServedModelRef("mlp", str(model_repo / "mlp" / "1")),))
        await engine.scale(cpu, 1)
        (r,) = (await eventually(lambda: ready(engine, "cpu-00001", 1), what="a CPU replica")).replicas
        environ = Path(f"/proc/{replica_pid(engine, r.id)}/environ").read_bytes().split(b"\0")
        assert b"CUDA_VISIBLE_DEVICES=" in environ and r.gpu_ids == ()

        await engine.scale(spec, 1)  # drains one, which frees its GPU
        await eventually(lambda: len(engine.status("fake-gpu-00001").replicas) == 1, what="scale to 1")  # type: ignore[union-attr]
        assert engine.status("fake-gpu-00001").schedulable  # type: ignore[union-attr]
    finally:
        await engine.close()
    assert processes_using(tmp_path / "state") == set()


async def test_model_that_fails_to_load_keeps_the_replica_unready_with_its_reason(
    engine: ProcessEngine, tmp_path: Path
) -> None:
    spec = ReplicaSpec("bad-00001", models=(ServedModelRef("mlp", str(tmp_path / "missing.onnx")),))
    await engine.scale(spec, 1)

    def reported() -> str:
        (r,) = engine.status("bad-00001").replicas  # type: ignore[union-attr]
        return r.reason if r.reason.startswith("model mlp: FAILED: ") else ""

    reason = await eventually(reported, what="the model's failure in the replica's reason")
    assert "missing.onnx" in reason
    status = engine.status("bad-00001")
    assert status is not None and status.ready == 0
    assert status.replicas[0].state is ReplicaState.STARTING and status.replicas[0].restarts == 0


async def test_replica_that_exits_reports_its_last_log_lines(engine: ProcessEngine, model_repo: Path) -> None:
    engine.watch(lambda revision: 1 / 0)  # a failing listener is logged, and the others still hear
    heard: list[str] = []
    engine.watch(heard.append)
    await engine.scale(mlp_spec(model_repo, "args-00001", args=("--bogus",)), 1)

    def failed() -> str:
        (r,) = engine.status("args-00001").replicas  # type: ignore[union-attr]
        return r.reason if r.state is ReplicaState.FAILED else ""

    reason = await eventually(failed, what="FAILED")
    assert reason.startswith("exited with code 2: ") and "No such option '--bogus'" in reason
    assert reason.count("--bogus") == 1  # this run's output only, not every earlier run's
    assert "args-00001" in heard


async def test_replica_not_ready_in_time_is_restarted(tmp_path: Path) -> None:
    engine = ProcessEngine(
        tmp_path / "state", health_interval_s=0.2, start_timeout_s=1.0, backoff_initial_s=0.2, gpus=[]
    )
    await engine.start()
    try:
        spec = ReplicaSpec("bad-00001", models=(ServedModelRef("mlp", str(tmp_path / "missing.onnx")),))
        await engine.scale(spec, 1)
        status = await eventually(
            lambda: (s := engine.status("bad-00001")) and s.replicas[0].restarts >= 1 and s, what="a restart"
        )
        timed_out = [event for event in status.events if "not ready after 1s" in event]
        assert timed_out and "restarting in 0.2s" in timed_out[0]
    finally:
        await engine.close()
    assert processes_using(tmp_path / "state") == set()


async def test_pool_without_models_serves_an_empty_repository(engine: ProcessEngine) -> None:
    await engine.scale(ReplicaSpec("multi-00001"), 1)
    (r,) = (await eventually(lambda: ready(engine, "multi-00001", 1), what="ready")).replicas
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.post(f"{r.http_url}/v2/repository/index", json={})).json() == []
    assert (engine.state_dir / "replicas" / r.id / "models").is_dir()


async def test_close_stops_every_replica(tmp_path: Path, model_repo: Path) -> None:
    engine = ProcessEngine(tmp_path / "state", health_interval_s=0.2, drain_timeout_s=2.0, gpus=[])
    await engine.start()
    try:
        await engine.scale(mlp_spec(model_repo, "a-00001"), 1)
        await engine.scale(mlp_spec(model_repo, "b-00001"), 1)
        await eventually(lambda: ready(engine, "a-00001", 1) and ready(engine, "b-00001", 1), what="ready")
        assert len(processes_using(tmp_path / "state")) == 2
    finally:
        await engine.close()
    assert processes_using(tmp_path / "state") == set()
    assert engine.status("a-00001") is None and engine.status("b-00001") is None
    with pytest.raises(RuntimeError):
        await engine.scale(mlp_spec(model_repo, "a-00001"), 1)
