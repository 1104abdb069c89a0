"""One replica as an OS process: its command line, environment, start, stop, port file and log tail."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from serving.engines.base import ReplicaSpec

__all__ = [
    "Ports",
    "log_size",
    "log_tail",
    "read_port_file",
    "replica_env",
    "serve_args",
    "serve_command",
    "spawn",
    "stop_process",
    "tail_lines",
]


@dataclass(frozen=True, slots=True)
class Ports:
    """What `servegate model serve --port-file` writes once both servers listen."""

    http: int
    grpc: int | None
    pid: int


def serve_command(
    python: str,
    spec: ReplicaSpec,
    port_file: Path,
    drain_timeout_s: float,
    model_repository: Path | None = None,
    host: str = "127.0.0.1",
    cpus: float | None = None,
) -> list[str]:
    """The `servegate model serve` command line of one replica of `spec`, on free ports of `host`
    (loopback unless the gateway reaches it from another machine), that may use `cpus` CPUs (its
    limit or its engine's share of the machine; None: the replica assumes every core)."""
    ports = ["--http-port", "0", "--grpc-port", "0", "--port-file", str(port_file)]
    serving = serve_args(spec, drain_timeout_s, model_repository, cpus)
    return [python, "-m", "serving", "model", "serve", "--host", host, *ports, *serving]


def serve_args(
    spec: ReplicaSpec, drain_timeout_s: float, model_repository: Path | None = None, cpus: float | None = None
) -> list[str]:
    """What `servegate model serve` runs for `spec`, after where it listens (every engine's replicas).

    The replica sizes its thread pools from `--cpus`; `--threads` is passed only for an explicit
    count (`spec.threads`). The manifest's `args` come last, so they override either.

    The CLI takes no `--model-format`, one for all, or one per model; a format is passed for every
    model only when every model has one (otherwise the replica infers each from its artifact).
    """
    # The gateway loads TrainedModels onto replicas; only it holds the pool token that may.
    command = ["--model-control", "explicit"]
    with_formats = bool(spec.models) and all(m.format for m in spec.models)
    for m in spec.models:
        command += ["--model-name", m.name, "--model-uri", m.uri]
        if with_formats:
            command += ["--model-format", str(m.format)]
    if model_repository is not None:
        command += ["--model-repository", str(model_repository)]
    command += ["--max-batch-size", str(spec.max_batch_size), "--max-latency-ms", str(spec.max_latency_ms)]
    if cpus:
        command += ["--cpus", f"{cpus:.4g}"]
    if spec.threads:
        command += ["--threads", str(spec.threads)]
    command += ["--drain-timeout", str(drain_timeout_s), "--log-level", "warning", *spec.args]
    return command


def replica_env(base: Mapping[str, str], spec: ReplicaSpec, gpu_ids: tuple[int, ...]) -> dict[str, str]:
    """`base` + the spec's variables + the GPUs the replica may see ("": none, so a CPU replica
    never grabs a GPU). Ids are in PCI bus order, as `nvidia-smi` and NVML number them."""
    ids = ",".join(str(i) for i in gpu_ids)
    return {
        **base,
        **dict(spec.env),
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": ids,
        "SERVEGATE_GPU_IDS": ids,
    }


async def spawn(command: list[str], env: dict[str, str], log_path: Path) -> asyncio.subprocess.Process:
    """Start `command` with stdout and stderr appended to `log_path`, in a session of its own, so a
    Ctrl-C in the controller's terminal does not reach it: the engine drains replicas itself."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


async def stop_process(process: asyncio.subprocess.Process, grace_s: float) -> int:
    """SIGTERM, up to `grace_s` seconds to exit, then SIGKILL; anything left in its process group
    (processes it started) is killed once it has gone. Returns the exit code."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace_s)
        except TimeoutError:
            _kill_group(process.pid)
            await process.wait()
    _kill_group(process.pid)
    return process.returncode  # type: ignore[return-value] - set once wait() returned


def _kill_group(pgid: int) -> None:
    # The replica leads its own session (start_new_session), so its group id is its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def read_port_file(path: Path) -> Ports | None:
    """The ports a replica wrote, or None while the file is not there (it is written atomically)."""
    try:
        data = json.loads(path.read_text())
        return Ports(http=int(data["http"]), grpc=data.get("grpc"), pid=int(data["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def log_size(path: Path) -> int:
    """Bytes in a log so far (0 when there is none yet): where the next run's output starts."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def log_tail(path: Path, lines: int = 5, start: int = 0, max_bytes: int = 16384) -> str:
    """The last `lines` non-empty lines of a log after byte `start` (so one run's output, not an
    earlier run's), joined with " | " ("" when there is none)."""
    return " | ".join(line.strip() for line in tail_lines(path, lines, start, max_bytes) if line.strip())


def tail_lines(path: Path, lines: int, start: int = 0, max_bytes: int = 262144) -> list[str]:
    """The last `lines` lines of a log after byte `start`, reading at most `max_bytes` ([] when the
    file cannot be read)."""
    try:
        with path.open("rb") as f:
            f.seek(max(start, f.seek(0, os.SEEK_END) - max_bytes))
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]
