"""Shared test helpers: free ports, and a real `servegate model serve` process on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["ROOT", "ReplicaProcess", "free_port", "wait_for"]


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.05) -> None:
    """Poll `predicate` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ReplicaProcess:
    """`servegate model serve ARGS` on 127.0.0.1 and free ports; always stopped by `stop()`."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, grpc: bool = True) -> None:
        self.http_port = free_port()
        self.grpc_port = free_port() if grpc else None
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        ports = ["--grpc-port", str(self.grpc_port)] if grpc else ["--no-grpc"]
        command = [
            sys.executable,
            "-m",
            "serving",
            "model",
            "serve",
            "--host",
            "127.0.0.1",
            "--http-port",
            str(self.http_port),
            *ports,
            *args,
        ]
        # A file, not a pipe: a pipe nobody reads fills up and blocks a chatty server.
        self._log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_live(self, timeout: float = 60.0) -> ReplicaProcess:
        self._wait("/v2/health/live", timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> ReplicaProcess:
        self._wait("/v2/health/ready", timeout)
        return self

    def _wait(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + path, timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"server not answering 200 on {path} after {timeout}s:\n{self.output()}")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.process.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def output(self) -> str:
        """Everything the server has printed so far."""
        self._log.flush()
        self._log.seek(0)
        return self._log.read()

    def __enter__(self) -> ReplicaProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
