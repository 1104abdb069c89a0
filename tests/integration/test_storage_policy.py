"""The storage policy in a real `servegate model serve`: load requests stay inside the storage roots
and off internal addresses, the command line's own models do not; a replica given a gateway's policy
in its environment checks every model it serves."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from predictors.examples import make_mlp_onnx
from serving.auth.storage import STORAGE_ROOTS_ENV
from tests.servers import ReplicaProcess, until

SIZES = (4, 8, 2)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """(root, elsewhere): a storage root with a model in it, and a folder outside it with another."""
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    make_mlp_onnx(root / "inside.onnx", SIZES)
    make_mlp_onnx(elsewhere / "mlp.onnx", SIZES)
    return root, elsewhere


def _load(server: ReplicaProcess, name: str, uri: str) -> httpx.Response:
    body = {"parameters": {"storage_uri": uri, "model_format": "onnx"}}
    return httpx.post(f"{server.url}/v2/repository/models/{name}/load", json=body, timeout=30.0)


def _index(server: ReplicaProcess) -> dict[str, dict[str, str]]:
    entries = httpx.post(f"{server.url}/v2/repository/index", json={}, timeout=10.0).json()
    return {e["name"]: e for e in entries}


def test_load_requests_are_refused_outside_the_policy(folders: tuple[Path, Path]) -> None:
    root, elsewhere = folders
    args = ["--model-name", "mlp", "--model-uri", str(elsewhere / "mlp.onnx")]  # the operator's own
    args += ["--model-control", "explicit", "--storage-root", str(root)]
    with ReplicaProcess(*args, grpc=False) as server:
        server.wait_ready()
        for uri in (
            "/etc/passwd",
            f"{root}/../elsewhere/mlp.onnx",
            str(elsewhere / "mlp.onnx"),
            "http://169.254.169.254/latest/meta-data",
            "http://10.0.0.1/model.onnx",
            f"{server.url}/metrics",  # this replica itself, on loopback
        ):
            response = _load(server, "sneaky", uri)
            assert response.status_code == 400, (uri, response.text)
            assert "--storage-root" in response.json()["error"] or "--allow-host" in response.json()["error"]
        assert set(_index(server)) == {"mlp"}  # nothing was registered

        response = _load(server, "inside", str(root / "inside.onnx"))
        assert response.status_code == 200, response.text
        assert _index(server)["inside"]["state"] == "READY"


def test_a_gateway_started_replica_checks_its_command_line_models(folders: tuple[Path, Path]) -> None:
    root, elsewhere = folders
    args = ["--model-name", "inside", "--model-uri", str(root / "inside.onnx")]
    args += ["--model-name", "outside", "--model-uri", str(elsewhere / "mlp.onnx")]
    # A manifest's args cannot widen the gateway's policy: the environment's wins.
    args += ["--storage-root", str(elsewhere)]
    with ReplicaProcess(*args, env={STORAGE_ROOTS_ENV: str(root)}, grpc=False) as server:
        server.wait_live()

        def settled() -> dict[str, dict[str, str]] | None:
            index = _index(server)
            states = {name: entry.get("state") for name, entry in index.items()}
            return index if states == {"inside": "READY", "outside": "FAILED"} else None

        index = until(settled, 60, "inside READY, outside FAILED")
        assert "outside the storage roots" in index["outside"]["reason"]
