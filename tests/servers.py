"""Shared test helpers: free ports, polling, a real `servegate model serve` process on loopback, the
fakes the storage tests fetch from (a static HTTP server and moto's S3) and a real Prometheus, all on
127.0.0.1."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx

ROOT = Path(__file__).resolve().parent.parent

__all__ = [
    "ROOT",
    "FileServer",
    "GatewayProcess",
    "ReplicaProcess",
    "ServerProcess",
    "free_port",
    "moto_server",
    "processes_using",
    "prometheus_server",
    "serve_files",
    "until",
]


def until(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy, and return that; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class FileServer:
    url: str
    root: Path
    #: the paths of every GET, in order.
    gets: list[str] = field(default_factory=list)


class _FileHandler(http.server.SimpleHTTPRequestHandler):
    gets: list[str]

    def do_GET(self) -> None:
        self.gets.append(self.path)
        if self.path == "/truncated":
            # Promise more than is sent, then hang up: the client sees a broken stream.
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"partial")
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve_files(root: Path) -> Iterator[FileServer]:
    """A static HTTP server for `root` on a free loopback port; `/truncated` answers a broken body."""
    gets: list[str] = []
    handler = type("Handler", (_FileHandler,), {"gets": gets})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=root))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield FileServer(f"http://127.0.0.1:{server.server_address[1]}", root, gets)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 (and the rest of AWS) on a free loopback port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A `servegate` sub-command, its output kept in a file; always stopped by `stop()`."""

    url: str

    def __init__(self, command: list[str], env: dict[str, str] | None = None) -> None:
        # A file, not a pipe: a pipe nobody reads fills up and blocks a chatty server.
        self._log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving", *command],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_live(self, timeout: float = 60.0) -> Self:
        self._wait("/v2/health/live", timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> Self:
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ReplicaProcess(ServerProcess):
    """`servegate model serve ARGS` on 127.0.0.1 and free ports."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, grpc: bool = True) -> None:
        self.http_port = free_port()
        self.grpc_port = free_port() if grpc else None
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        ports = ["--grpc-port", str(self.grpc_port)] if grpc else ["--no-grpc"]
        command = ["model", "serve", "--host", "127.0.0.1", "--http-port", str(self.http_port), *ports, *args]
        super().__init__(command, env)


class GatewayProcess(ServerProcess):
    """`servegate up ARGS` on 127.0.0.1 and free ports, its state under `state_dir`."""

    def __init__(self, state_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        self.state_dir = state_dir
        command = ["up", "--host", "127.0.0.1", "--http-port", str(self.http_port)]
        command += ["--grpc-port", str(self.grpc_port), "--state-dir", str(state_dir), *args]
        super().__init__(command, env)


def processes_using(folder: Path) -> set[int]:
    """Live processes whose command line names `folder` (replicas' --port-file lies under the state dir)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):  # gone meanwhile
            continue
        if str(folder).encode() in cmdline and state != "Z":
            found.add(int(entry.name))
    return found


@contextlib.contextmanager
def prometheus_server(config_text: str, timeout: float = 30.0) -> Iterator[str]:
    """A real Prometheus (`make test-tools` installs it) running `config_text` on a free loopback port,
    its storage in a temporary folder; yields its base URL. Without the binary the test is skipped,
    or fails under CI=true, where a missing tool must not pass as a skip."""
    binary = shutil.which("prometheus")
    if binary is None:
        message = "prometheus is not installed: run make test-tools"
        if os.environ.get("CI") == "true":
            raise RuntimeError(f"{message} (CI=true: a missing test tool fails the run)")
        import pytest

        pytest.skip(message)
    with tempfile.TemporaryDirectory(prefix="prometheus-") as folder, open(f"{folder}/log", "w+") as log:
        config = Path(folder) / "prometheus.yml"
        config.write_text(config_text)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--storage.tsdb.path={folder}/data",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        def output() -> str:
            log.flush()
            log.seek(0)
            return log.read()

        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"prometheus exited with {process.returncode}:\n{output()}")
                try:
                    if httpx.get(f"{url}/-/ready", timeout=1.0, trust_env=False).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"prometheus not ready after {timeout}s:\n{output()}")
                time.sleep(0.05)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(10.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
