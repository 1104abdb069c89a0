"""Fixtures shared by every test tier: models made at test time, a running replica, a fake S3, a
throwaway PostgreSQL and a multi-node Ray cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from predictors.examples import IDENTITY_DATATYPES, make_identity_onnx, make_mlp_onnx
from tests.ray_cluster import RayTestCluster, start_cluster
from tests.servers import ReplicaProcess, fresh_database, moto_server, postgres_server

#: small MLP used by the functional tests (the benchmark uses the issue's sizes).
MLP_SIZES = (8, 16, 4)
#: every datatype the identity model echoes; BF16 lives in its own model because ONNX Runtime
#: cannot take string inputs in the same call that returns bfloat16.
IDENTITY_TYPES = tuple(dt for dt in IDENTITY_DATATYPES if dt != "BF16")

_BATCHED_CONFIG = """
name: "mlp_batched"
platform: "onnxruntime_onnx"
max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 50000 }
"""


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository folder: mlp, identity (all datatypes but BF16), identity_bf16, mlp_batched."""
    root = tmp_path_factory.mktemp("models")
    make_mlp_onnx(root / "mlp" / "1" / "model.onnx", MLP_SIZES)
    make_identity_onnx(root / "identity" / "model.onnx", IDENTITY_TYPES)
    make_identity_onnx(root / "identity_bf16" / "model.onnx", ("BF16", "FP32"))
    make_mlp_onnx(root / "mlp_batched" / "1" / "model.onnx", MLP_SIZES)
    (root / "mlp_batched" / "config.pbtxt").write_text(_BATCHED_CONFIG)
    return root


@pytest.fixture(scope="session")
def replica(model_repo: Path) -> Iterator[ReplicaProcess]:
    """One replica for read-mostly tests: the repository models plus python models by import path."""
    with ReplicaProcess(
        "--model-repository", str(model_repo),
        "--model-name", "doubler", "--model-uri", "tests.python_models:Doubler",
        "--model-name", "echo", "--model-uri", "tests.probe_models:Echo",
        "--max-body-size", "1MiB",
    ) as server:  # fmt: skip
        server.wait_ready()
        yield server


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A fake S3 on loopback for the whole session (tests use buckets of their own)."""
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL on loopback for the whole session; its SQLAlchemy URL (tests use tables or
    databases of their own)."""
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayTestCluster]:
    """A head and two worker nodes (one logical GPU, label `servegate.io/node: a|b` each) on
    127.0.0.1 for the whole session; started by the first test that asks for it."""
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        cluster.cluster.shutdown()


@pytest.fixture(scope="session")
def ray_driver(ray_cluster: RayTestCluster) -> RayTestCluster:
    """This test process connected to the session's cluster as a Ray driver (pipelines, training)."""
    import ray

    if not ray.is_initialized():
        root = str(Path(__file__).resolve().parents[1])
        ray.init(
            address=ray_cluster.address,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": root}},
        )
    return ray_cluster


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of each kind the stores support: SQLite in tmp_path, and a new
    database on the session's PostgreSQL (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    with fresh_database(request.getfixturevalue("postgres_url")) as url:
        yield url
