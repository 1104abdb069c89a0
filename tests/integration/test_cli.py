"""End to end through the console entry: `python -m serving ...` in a subprocess, as a user runs it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

from serving import __version__
from tests.servers import ROOT, free_port

pytestmark = pytest.mark.integration

# Arguments that keep a wrongly accepted `serve` on loopback and off the default ports.
_LOOPBACK = "--host 127.0.0.1 --http-port 0 --no-grpc"
_ONE_MODEL = "--model-name a --model-uri a.onnx"


def servegate(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("args", [("--help",), ("-h",), ("model", "serve", "--help"), ("model", "--help")])
def test_help_exits_0(args: tuple[str, ...]) -> None:
    result = servegate(*args)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


def test_version_prints_the_version() -> None:
    result = servegate("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"servegate, version {__version__}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            f"--model-name a {_LOOPBACK}",
            "give --model-name and --model-uri in pairs (got 1 names, 0 URIs)",
            id="unpaired",
        ),
        pytest.param(
            _LOOPBACK,
            "nothing to serve: give --model-name/--model-uri or --model-repository",
            id="nothing-to-serve",
        ),
        pytest.param(
            f"{_ONE_MODEL} --model-name a --model-uri b.onnx {_LOOPBACK}",
            "each --model-name must be different",
            id="duplicate-names",
        ),
        pytest.param(
            f"{_ONE_MODEL} --model-name b --model-uri b.onnx --model-name c --model-uri c.onnx "
            f"--model-format onnx --model-format onnx {_LOOPBACK}",
            "give no --model-format, one for every model, or one per --model-name",
            id="format-count",
        ),
        pytest.param(
            f"--model-repository no/such/folder {_LOOPBACK}",
            "--model-repository no/such/folder is not a directory",
            id="repository-missing",
        ),
        pytest.param(
            f"--model-repository pyproject.toml {_LOOPBACK}",
            "Invalid value for '--model-repository': Directory 'pyproject.toml' is a file",
            id="repository-is-a-file",
        ),
        pytest.param(
            f"{_ONE_MODEL} --max-batch-size 0 {_LOOPBACK}",
            "Invalid value for '--max-batch-size': 0 is not in the range x>=1",
            id="max-batch-size-0",
        ),
        pytest.param(
            f"{_ONE_MODEL} --host 127.0.0.1 --no-grpc --http-port 70000",
            "Invalid value for '--http-port': 70000 is not in the range 0<=x<=65535",
            id="http-port-70000",
        ),
        pytest.param(
            f"{_ONE_MODEL} --max-body-size 12XB {_LOOPBACK}",
            "Invalid value for '--max-body-size': '12XB' is not a size",
            id="max-body-size-12XB",
        ),
        pytest.param(
            f"{_ONE_MODEL} --model-format keras {_LOOPBACK}",
            "Invalid value for '--model-format': 'keras' is not one of 'onnx', 'pytorch'",
            id="unknown-format",
        ),
        pytest.param(
            f"{_ONE_MODEL} --workers 2 --host 127.0.0.1 --no-grpc --http-port 0",
            "--workers > 1 needs fixed ports (the workers share them)",
            id="workers-with-port-0",
        ),
    ],
)
def test_usage_errors_exit_2_with_a_clear_message(args: str, message: str) -> None:
    result = servegate("model", "serve", *args.split())
    assert result.returncode == 2, result.stderr
    # The message is what click prints after "Error: ", not a library's wrapping of it.
    assert f"Error: {message}" in result.stderr
    assert "pydantic" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("busy_port", ["http", "grpc"])
def test_a_busy_port_fails_fast_with_the_address(busy_port: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        ports = ["--http-port", port, "--no-grpc"] if busy_port == "http" else [
            "--http-port", str(free_port()), "--grpc-port", port]  # fmt: skip
        result = servegate(
            "model", "serve", "--model-name", "doubler", "--model-uri", "tests.python_models:Doubler",
            "--host", "127.0.0.1", *ports, timeout=20,
        )  # fmt: skip
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stdout + result.stderr


def _io_shapes(path: Path) -> tuple[list[object], list[object]]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.get_inputs()[0].shape, session.get_outputs()[0].shape


def test_example_writes_a_loadable_mlp(tmp_path: Path) -> None:
    result = servegate("model", "example", str(tmp_path))
    assert result.returncode == 0, result.stderr
    path = tmp_path / "mlp" / "1" / "model.onnx"
    assert str(path) in result.stdout
    inputs, outputs = _io_shapes(path)
    assert inputs == ["batch", 64]
    assert outputs == ["batch", 10]


def test_example_sizes_and_name(tmp_path: Path) -> None:
    result = servegate("model", "example", str(tmp_path), "--name", "tiny", "--sizes", "4,2")
    assert result.returncode == 0, result.stderr
    assert _io_shapes(tmp_path / "tiny" / "1" / "model.onnx") == (["batch", 4], ["batch", 2])


@pytest.mark.parametrize(
    ("sizes", "message"),
    [("x", "'x' is not a comma-separated list of integers"), ("4", "give at least two positive widths")],
)
def test_example_rejects_bad_sizes(tmp_path: Path, sizes: str, message: str) -> None:
    result = servegate("model", "example", str(tmp_path), "--sizes", sizes)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "mlp").exists()
