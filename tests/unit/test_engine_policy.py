"""The process engine's pure decisions (restart backoff, scale-down order, GPU placement, command
line and environment of a replica), without starting any process."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from serving.engines import gpus
from serving.engines._replica_proc import log_size, log_tail, read_port_file, replica_env, serve_command
from serving.engines.base import ReplicaSpec, ServedModelRef
from serving.engines.gpus import GpuInfo, allocate, parse_nvidia_smi
from serving.engines.process import backoff_delay, pick_removals, unschedulable_reason


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(0, 1.0), (1, 2.0), (2, 4.0), (4, 16.0), (5, 30.0), (6, 30.0), (10_000, 30.0)],
)
def test_backoff_doubles_up_to_the_maximum(attempt: int, expected: float) -> None:
    assert backoff_delay(attempt, initial_s=1.0, max_s=30.0) == expected


def test_backoff_with_fractional_initial_delay() -> None:
    assert [backoff_delay(n, 0.25, 1.0) for n in range(5)] == [0.25, 0.5, 1.0, 1.0, 1.0]


# (id, ready, created)
_POOL = [("old-ready", True, 1.0), ("new-ready", True, 3.0), ("starting", False, 2.0), ("failed", False, 0.5)]


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (0, []),
        (1, ["starting"]),  # not ready first, newest first among them
        (2, ["starting", "failed"]),
        (3, ["starting", "failed", "new-ready"]),  # then the newest ready one
        (4, ["starting", "failed", "new-ready", "old-ready"]),
        (9, ["starting", "failed", "new-ready", "old-ready"]),
        (-1, []),
    ],
)
def test_scale_down_removes_not_ready_then_newest(count: int, expected: list[str]) -> None:
    assert pick_removals(_POOL, count) == expected


@pytest.mark.parametrize(
    ("free", "count", "expected"),
    [
        (set(), 1, None),
        ({0, 1}, 1, (0,)),
        ({3, 1, 2}, 2, (1, 2)),
        ({5}, 2, None),
        ({0, 1}, 2, (0, 1)),
        ({0}, 0, ()),
    ],
)
def test_allocate_takes_the_lowest_free_ids(
    free: set[int], count: int, expected: tuple[int, ...] | None
) -> None:
    assert allocate(free, count) == expected


def test_allocate_does_not_change_the_free_set() -> None:
    free = {0, 1}
    allocate(free, 1)
    assert free == {0, 1}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            (1, 0, 0, 0, 1),
            "not schedulable: each replica needs 1 GPU (nvidia.com/gpu); this machine has 0 GPUs, 0 free",
        ),
        (
            (2, 4, 1, 1, 3),
            "not schedulable: each replica needs 2 GPUs (nvidia.com/gpu); this machine has 4 GPUs, 1 free; "
            "1 of 3 replicas placed",
        ),
        (
            (1, 1, 0, 1, 2),
            "not schedulable: each replica needs 1 GPU (nvidia.com/gpu); this machine has 1 GPU, 0 free; "
            "1 of 2 replicas placed",
        ),
    ],
)
def test_unschedulable_reason(args: tuple[int, int, int, int, int], expected: str) -> None:
    assert unschedulable_reason(*args) == expected


def test_parse_nvidia_smi_rows() -> None:
    text = "0, NVIDIA H100 80GB HBM3, 81559\n1, Tesla T4, 15360\n\ngarbage\n"
    assert parse_nvidia_smi(text) == [
        GpuInfo(0, "NVIDIA H100 80GB HBM3", 81559 * 1024 * 1024),
        GpuInfo(1, "Tesla T4", 15360 * 1024 * 1024),
    ]


def test_detect_gpus_without_nvml_or_nvidia_smi_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpus, "_from_nvml", lambda: None)

    def missing(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError("nvidia-smi")

    monkeypatch.setattr(subprocess, "run", missing)
    assert gpus.detect_gpus() == []


def test_detect_gpus_when_nvidia_smi_fails_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpus, "_from_nvml", lambda: None)

    def fails(*args: object, **kwargs: object) -> None:
        raise subprocess.CalledProcessError(9, "nvidia-smi", "", "NVIDIA-SMI has failed")

    monkeypatch.setattr(subprocess, "run", fails)
    assert gpus.detect_gpus() == []


def _flags(command: list[str], flag: str) -> list[str]:
    return [command[i + 1] for i, arg in enumerate(command) if arg == flag]


def test_serve_command_for_a_model_pool() -> None:
    spec = ReplicaSpec(
        revision="iris-00001",
        models=(ServedModelRef("a", "/m/a", "onnx"), ServedModelRef("b", "s3://b/", "sklearn")),
        max_batch_size=8,
        max_latency_ms=2.5,
        cpus=2.5,
        args=("--instances", "2"),
    )
    command = serve_command("/py", spec, Path("/s/ports.json"), 10.0, cpus=spec.cpus)
    assert command[:5] == ["/py", "-m", "serving", "model", "serve"]
    assert _flags(command, "--host") == ["127.0.0.1"]
    assert _flags(command, "--http-port") == _flags(command, "--grpc-port") == ["0"]
    assert _flags(command, "--port-file") == ["/s/ports.json"]
    assert _flags(command, "--model-name") == ["a", "b"]
    assert _flags(command, "--model-uri") == ["/m/a", "s3://b/"]
    assert _flags(command, "--model-format") == ["onnx", "sklearn"]
    assert _flags(command, "--max-batch-size") == ["8"]
    assert _flags(command, "--max-latency-ms") == ["2.5"]
    assert _flags(command, "--cpus") == ["2.5"]
    assert "--threads" not in command  # the replica sizes its threads from --cpus
    assert _flags(command, "--drain-timeout") == ["10.0"]
    assert _flags(command, "--log-level") == ["warning"]
    assert _flags(command, "--model-control") == ["explicit"]
    assert "--model-repository" not in command
    assert command[-2:] == ["--instances", "2"]


def test_serve_command_passes_formats_only_when_every_model_has_one() -> None:
    # The CLI takes no format, one for all, or one per model: a partial list would be refused.
    spec = ReplicaSpec(
        revision="r", models=(ServedModelRef("a", "a.onnx", "onnx"), ServedModelRef("b", "b.pt"))
    )
    assert "--model-format" not in serve_command("py", spec, Path("p"), 1.0)


def test_serve_command_passes_threads_only_when_the_spec_names_them() -> None:
    models = (ServedModelRef("a", "a.onnx"),)
    command = serve_command("py", ReplicaSpec("r", models, cpus=0.5), Path("p"), 1.0, cpus=0.5)
    assert (_flags(command, "--cpus"), _flags(command, "--threads")) == (["0.5"], [])
    command = serve_command("py", ReplicaSpec("r", models, threads=3), Path("p"), 1.0)
    assert (_flags(command, "--cpus"), _flags(command, "--threads")) == ([], ["3"])


def test_serve_command_for_a_pool_without_models_serves_a_repository() -> None:
    command = serve_command("py", ReplicaSpec("r"), Path("p"), 1.0, Path("/s/models"))
    assert _flags(command, "--model-repository") == ["/s/models"]
    assert "--model-name" not in command


def test_replica_env_hides_gpus_from_cpu_replicas_and_lists_assigned_ones() -> None:
    base = {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    spec = ReplicaSpec("r", env=(("OMP_NUM_THREADS", "2"), ("PATH", "/opt/bin")))
    cpu = replica_env(base, spec, ())
    assert cpu["CUDA_VISIBLE_DEVICES"] == "" and cpu["SERVEGATE_GPU_IDS"] == ""
    assert cpu["OMP_NUM_THREADS"] == "2" and cpu["PATH"] == "/opt/bin"
    gpu = replica_env(base, spec, (1, 3))
    assert gpu["CUDA_VISIBLE_DEVICES"] == gpu["SERVEGATE_GPU_IDS"] == "1,3"
    assert gpu["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_read_port_file(tmp_path: Path) -> None:
    path = tmp_path / "ports.json"
    assert read_port_file(path) is None
    path.write_text('{"http": 81, "grpc": null, "pid": 7}')
    ports = read_port_file(path)
    assert ports is not None and (ports.http, ports.grpc, ports.pid) == (81, None, 7)
    path.write_text('{"http": 8')
    assert read_port_file(path) is None


def test_log_tail_keeps_the_last_non_empty_lines(tmp_path: Path) -> None:
    path = tmp_path / "r.log"
    assert log_tail(path) == ""
    path.write_text("".join(f"line {i}\n\n" for i in range(10)))
    assert log_tail(path) == "line 5 | line 6 | line 7 | line 8 | line 9"


def test_log_tail_from_an_offset_leaves_out_earlier_runs(tmp_path: Path) -> None:
    path = tmp_path / "r.log"
    assert log_size(path) == 0
    path.write_text("first run\nError: old\n")
    start = log_size(path)
    with path.open("a") as f:
        f.write("Error: new\n")
    assert log_tail(path, start=start) == "Error: new"
