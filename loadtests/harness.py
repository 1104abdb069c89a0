"""Benchmark plumbing: servers in the background, request bodies, and load generators that print figures.

HTTP load comes from `../shared/bench/compare` (wrk in alternating rounds, medians); gRPC load from
h2load (nghttp2-client), which speaks HTTP/2 and so can send length-prefixed protobuf messages as
gRPC unary calls; its per-request log gives the percentiles.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb

__all__ = [
    "Server",
    "benchmark_arguments",
    "check_grpc",
    "chosen_peers",
    "compare",
    "free_port",
    "grpc_body",
    "h2load_compare",
    "h2load_grpc",
    "running",
    "v2_binary_body",
    "v2_json_body",
]

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A server process started in the background, its output kept in a file."""

    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self, log_dir: Path) -> Server:
        self.log_path = log_dir / f"{self.name}.log"
        self.process = subprocess.Popen(
            self.command,
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,  # stop() signals the whole group (peers start children)
        )
        return self

    def wait_until_answering(
        self, url: str, body: bytes, timeout: float, headers: dict[str, str] | None = None
    ) -> None:
        """Until `POST url` with the JSON `body` (and `headers`) answers 200; raise with the server's
        log tail otherwise."""
        # KServe reads a body without a JSON content type as binary tensors.
        headers = {"content-type": "application/json", **(headers or {})}
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")
            try:
                if httpx.post(url, content=body, headers=headers, timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} did not answer {url} within {timeout:.0f}s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@contextlib.contextmanager
def running(*servers: Server) -> Iterator[None]:
    """Stop every server on the way out, whatever happened."""
    try:
        yield
    finally:
        for server in servers:
            server.stop()


def benchmark_arguments(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: run length, rounds, peers, the peers' folder, a JSON file."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10, help="length of each load run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    parser.add_argument("--peers", default="kserve,rayserve", help="comma-separated peers, or 'none'")
    parser.add_argument("--bench-dir", type=Path, default=ROOT.parent / "shared" / "bench")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    return parser


def chosen_peers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The peers asked for, checked; also makes SIGTERM end the run like Ctrl-C (servers stopped)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    peers = [] if args.peers == "none" else [p.strip() for p in args.peers.split(",") if p.strip()]
    if peers and not (args.bench_dir / "peer-serve").exists():
        parser.error(f"{args.bench_dir} has no peer-serve; pass --bench-dir or --peers none")
    unknown = set(peers) - {"kserve", "rayserve"}
    if unknown:
        parser.error(f"unknown peers: {', '.join(sorted(unknown))} (kserve, rayserve)")
    return peers


def servegate_command(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "serving",
        "model",
        "serve",
        "--host",
        "127.0.0.1",
        "--log-level",
        "warning",
        *args,
    ]


# -- request bodies ------------------------------------------------------------------------------------


def v2_json_body(name: str, x: np.ndarray) -> bytes:
    tensor = {"name": name, "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def v2_binary_body(name: str, x: np.ndarray, output: str) -> tuple[bytes, int]:
    """(body, Inference-Header-Content-Length) for a binary-extension request with a binary output."""
    raw = np.ascontiguousarray(x, dtype=np.float32).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": output, "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header + raw, len(header)


def grpc_body(model: str, name: str, x: np.ndarray) -> bytes:
    """A ModelInferRequest framed as one gRPC message (flag byte, big-endian length, protobuf)."""
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    message = request.SerializeToString()
    return b"\x00" + struct.pack(">I", len(message)) + message


def check_grpc(address: str, x: np.ndarray, headers: dict[str, str] | None = None) -> None:
    """One real ModelInfer call on model "mlp" through tritonclient, so that h2load's HTTP-level
    success also means the calls answer OK (a gRPC error is an HTTP 200 too)."""
    with grpcclient.InferenceServerClient(address) as client:
        tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        client.infer("mlp", [tensor], headers=headers)


def admin_headers(state_dir: Path, timeout: float = 60.0) -> dict[str, str]:
    """The `Authorization` header of the admin token `servegate up` writes into its state dir at start
    (waited for): what the benchmarks send, as a user on the gateway's machine would."""
    path = state_dir / "admin.token"
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no admin token at {path} after {timeout:.0f}s")
        time.sleep(0.2)
    return {"authorization": f"Bearer {path.read_text().strip()}"}


# -- load generators -----------------------------------------------------------------------------------


def compare(
    bench_dir: Path,
    body: bytes,
    targets: dict[str, str],
    connections: int,
    seconds: int,
    rounds: int,
    content_type: str = "application/json",
    header: str | None = None,
) -> dict[str, dict[str, float]]:
    """Medians per endpoint from the shared `compare` tool: rps, p50_ms, p99_ms, bad (share non-2xx)."""
    with tempfile.NamedTemporaryFile(suffix=".body", delete=False) as f:
        f.write(body)
    command = [
        sys.executable, str(bench_dir / "compare"), "--json", "--body", f.name,
        "--content-type", content_type,
        "--connections", str(connections), "--seconds", str(seconds), "--rounds", str(rounds),
        *(["--header", header] if header else []),
        *(f"{name}={url}" for name, url in targets.items()),
    ]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if not result.stdout.strip():
        raise RuntimeError(f"compare failed:\n{result.stderr}")
    return json.loads(result.stdout)


def h2load_grpc(
    address: str, body: bytes, connections: int, seconds: int, rounds: int, header: str | None = None
) -> dict[str, float]:
    """Unary ModelInfer calls at `address` (host:port) with h2load; medians over rounds."""
    return h2load_compare({"target": address}, body, connections, seconds, rounds, header)["target"]


def h2load_compare(
    targets: dict[str, str],
    body: bytes,
    connections: int,
    seconds: int,
    rounds: int,
    header: str | None = None,
) -> dict[str, dict[str, float]]:
    """Unary ModelInfer calls at each target (name -> host:port) with h2load, in alternating rounds
    (so a slow minute of the machine does not land on one target); medians per target."""
    if not shutil.which("h2load"):
        raise RuntimeError("h2load is not installed (apt-get install -y nghttp2-client)")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    with tempfile.TemporaryDirectory() as tmp:
        body_path = Path(tmp) / "body"
        body_path.write_bytes(body)
        for index in range(rounds):
            for name, address in targets.items():
                log = Path(tmp) / f"{name}-{index}"
                command = [
                    "h2load", "-c", str(connections), "-m", "1", "-D", str(seconds), "--warm-up-time", "1",
                    "-H", "content-type: application/grpc", "-H", "te: trailers",
                    *(["-H", header] if header else []),
                    "-d", str(body_path), "--log-file", str(log),
                    f"http://{address}/inference.GRPCInferenceService/ModelInfer",
                ]  # fmt: skip
                result = subprocess.run(command, capture_output=True, text=True, check=True)
                runs[name].append(_h2load_figures(result.stdout, log))
    return {
        name: {key: statistics.median(run[key] for run in results) for key in results[0]}
        for name, results in runs.items()
    }


def _h2load_figures(stdout: str, log: Path) -> dict[str, float]:
    match = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", stdout)
    if match is None:
        raise RuntimeError(f"h2load printed no throughput:\n{stdout}")
    # Log lines: start time (us), HTTP status, duration (us). A gRPC error also answers HTTP 200;
    # the benchmark rules that out by checking one call with tritonclient before loading.
    rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    durations = np.array([int(r[2]) for r in rows], dtype=np.float64) / 1000.0
    bad = sum(1 for r in rows if not r[1].startswith("2"))
    return {
        "rps": float(match.group(1)),
        "p50_ms": float(np.percentile(durations, 50)),
        "p99_ms": float(np.percentile(durations, 99)),
        "bad": bad / max(len(rows), 1),
    }
