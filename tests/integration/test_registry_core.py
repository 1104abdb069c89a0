"""The registry over both databases it supports: SQLite (the default) and a real PostgreSQL.

Versions, aliases, gates, archive and the audit log; a failed register leaving nothing behind;
artifacts verified on fetch; concurrent registers from several processes getting gap-free numbers.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from predictors.examples import make_mlp_onnx
from serving.registry import (
    Gate,
    GateFailed,
    InvalidArtifact,
    Registry,
    RegistryConfig,
    RegistryConflict,
    RegistryError,
    RegistryNotFound,
    RegistryUnavailable,
)
from serving.registry import db as registry_db

pytestmark = pytest.mark.integration


@pytest.fixture
def config(database_url: str, tmp_path: Path) -> RegistryConfig:
    return RegistryConfig(url=database_url, artifacts=str(tmp_path / "artifacts"))


@pytest.fixture
def registry(config: RegistryConfig, tmp_path: Path) -> Iterator[Registry]:
    with Registry(config, cache_dir=tmp_path / "cache") as r:
        yield r


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    return make_mlp_onnx(tmp_path / "src" / "model.onnx", (8, 16, 4))


def _stored_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_register_numbers_versions_and_stores_the_artifact_by_its_sha256(
    registry: Registry, onnx_file: Path, tmp_path: Path
) -> None:
    v1 = registry.register(
        "mlp", str(onnx_file), metrics={"accuracy": 0.91}, params={"lr": "0.1"}, tags={"team": "a"}
    )
    v2 = registry.register("mlp", str(onnx_file), description="same bytes", run="run-7", dataset="ab12")

    assert (v1.version, v2.version) == (1, 2)
    digest = hashlib.sha256(onnx_file.read_bytes()).hexdigest()
    assert v1.sha256 == v2.sha256 == digest
    assert (v1.format, v1.artifact_name, v1.artifact_kind, v1.size) == (
        "onnx",
        "model.onnx",
        "file",
        onnx_file.stat().st_size,
    )
    assert v1.signature == {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 8]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 4]}],
    }
    assert (v1.metrics, v1.params, v1.tags) == ({"accuracy": 0.91}, {"lr": "0.1"}, {"team": "a"})
    assert v2.source == {"uri": str(onnx_file), "run": "run-7", "dataset": "ab12"}
    assert v2.description == "same bytes"
    # Content-addressed: the same bytes are kept once.
    assert _stored_files(tmp_path / "artifacts") == [tmp_path / "artifacts" / "sha256" / digest[:2] / digest]
    assert [m.name for m in registry.models()] == ["mlp"]
    assert registry.model("mlp").latest_version == 2
    assert [v.version for v in registry.versions("mlp")] == [1, 2]


def test_a_folder_is_stored_as_a_tree_and_comes_back_whole(registry: Registry, tmp_path: Path) -> None:
    folder = tmp_path / "src" / "mlp"
    make_mlp_onnx(folder / "1" / "model.onnx", (8, 16, 4))
    (folder / "config.pbtxt").write_text('name: "mlp"\n')

    v = registry.register("mlp", str(folder))
    copy = registry.fetch(v.uri)

    assert v.artifact_kind == "tree" and v.format == "onnx"
    assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()) == [
        "1/model.onnx",
        "config.pbtxt",
    ]
    assert (copy / "1" / "model.onnx").read_bytes() == (folder / "1" / "model.onnx").read_bytes()


def test_a_folder_with_a_link_out_of_it_is_refused(registry: Registry, tmp_path: Path) -> None:
    folder = tmp_path / "src" / "linked"
    make_mlp_onnx(folder / "1" / "model.onnx", (8, 16, 4))
    secret = tmp_path / "elsewhere" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("not the model's")
    (folder / "notes.txt").symlink_to(secret)
    # A link inside the folder is fine.
    (folder / "model.onnx").symlink_to(folder / "1" / "model.onnx")

    with pytest.raises(InvalidArtifact, match="links out of the folder"):
        registry.register("linked", str(folder))
    assert registry.models() == []
    (folder / "notes.txt").unlink()
    assert registry.register("linked", str(folder)).artifact_kind == "tree"


@pytest.mark.parametrize(
    ("source", "fmt", "message"),
    [
        ("missing.onnx", None, "missing.onnx"),
        ("model.onnx", "sklearn", "sklearn"),
        ("garbage.onnx", "onnx", "not an ONNX model"),
    ],
)
def test_a_failed_register_leaves_no_version_and_no_artifact(
    registry: Registry, onnx_file: Path, tmp_path: Path, source: str, fmt: str | None, message: str
) -> None:
    (tmp_path / "src" / "garbage.onnx").write_bytes(b"not a model at all")
    with pytest.raises(InvalidArtifact, match=message):
        registry.register("mlp", str(tmp_path / "src" / source), format=fmt)
    with pytest.raises(RegistryNotFound):
        registry.model("mlp")
    assert _stored_files(tmp_path / "artifacts") == []


def test_a_register_failing_in_the_database_takes_its_artifact_and_number_back(
    registry: Registry, onnx_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.register("mlp", str(onnx_file))
    other = make_mlp_onnx(tmp_path / "src2" / "model.onnx", (8, 32, 4))

    def broken_audit(*args: object, **kw: object) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr("serving.registry.registry._audit", broken_audit)
    with pytest.raises(RuntimeError):
        registry.register("mlp", str(other))
    monkeypatch.undo()

    digest = hashlib.sha256(other.read_bytes()).hexdigest()
    assert not any(p.name == digest for p in _stored_files(tmp_path / "artifacts"))
    assert [v.version for v in registry.versions("mlp")] == [1]
    assert registry.register("mlp", str(other)).version == 2  # no gap


def test_bad_names_metrics_and_sources_are_refused(registry: Registry, onnx_file: Path) -> None:
    with pytest.raises(RegistryError, match="bad model name"):
        registry.register("no/slash", str(onnx_file))
    with pytest.raises(RegistryError, match="metric 'accuracy' must be a number"):
        registry.register("mlp", str(onnx_file), metrics={"accuracy": "high"})  # type: ignore[dict-item]
    with pytest.raises(RegistryError, match="must be finite"):
        registry.register("mlp", str(onnx_file), metrics={"loss": float("nan")})
    with pytest.raises(InvalidArtifact, match=r"FILE\.py:Class"):
        registry.register("py", "model_without_class.py", format="python")


def test_aliases_move_and_refuse_what_makes_no_sense(registry: Registry, onnx_file: Path) -> None:
    for _ in range(3):
        registry.register("mlp", str(onnx_file))

    assert registry.set_alias("mlp", "production", 1).aliases == {"production": 1}
    assert registry.set_alias("mlp", "production", 2).aliases == {"production": 2}
    registry.set_alias("mlp", "canary", 3)
    assert registry.resolve("registry://mlp@production").version == 2
    assert registry.resolve("registry://mlp/3").aliases == ("canary",)

    with pytest.raises(RegistryConflict, match="already points at version 2"):
        registry.set_alias("mlp", "production", 2)
    with pytest.raises(RegistryNotFound, match="no version 9"):
        registry.set_alias("mlp", "production", 9)
    with pytest.raises(RegistryError, match="bad alias"):
        registry.set_alias("mlp", "Prod!", 1)
    with pytest.raises(RegistryError, match="bad alias"):
        registry.set_alias("mlp", "latest", 1)
    with pytest.raises(RegistryNotFound, match="not registered"):
        registry.set_alias("nope", "production", 1)

    assert registry.delete_alias("mlp", "canary").aliases == {"production": 2}
    with pytest.raises(RegistryNotFound, match="no alias 'canary'"):
        registry.delete_alias("mlp", "canary")
    with pytest.raises(RegistryNotFound, match="no alias 'canary'"):
        registry.resolve("registry://mlp@canary")


def test_archived_versions_take_no_alias_but_still_resolve(registry: Registry, onnx_file: Path) -> None:
    registry.register("mlp", str(onnx_file))
    registry.register("mlp", str(onnx_file))
    registry.set_alias("mlp", "production", 1)

    with pytest.raises(RegistryConflict, match="aliased as production"):
        registry.archive("mlp", 1)
    assert registry.archive("mlp", 2).status == "ARCHIVED"
    with pytest.raises(RegistryConflict, match="already archived"):
        registry.archive("mlp", 2)
    with pytest.raises(RegistryConflict, match="archived"):
        registry.set_alias("mlp", "production", 2)
    assert registry.resolve("registry://mlp/2").status == "ARCHIVED"
    assert registry.register("mlp", str(onnx_file)).version == 3  # numbers are never reused


def test_promotion_gates_hold_an_alias_to_its_thresholds(registry: Registry, onnx_file: Path) -> None:
    registry.register("mlp", str(onnx_file), metrics={"accuracy": 0.90, "latency_ms": 4})
    registry.register("mlp", str(onnx_file), metrics={"accuracy": 0.97, "latency_ms": 30})
    registry.register("mlp", str(onnx_file), metrics={"accuracy": 0.97, "latency_ms": 5})
    registry.register("mlp", str(onnx_file))
    model = registry.set_gates(
        "mlp", [Gate("production", "accuracy", ">=", 0.95), Gate("production", "latency_ms", "<", 10)]
    )
    assert len(model.gates) == 2

    with pytest.raises(GateFailed, match=r"accuracy >= 0.95 fails: accuracy is 0.9"):
        registry.set_alias("mlp", "production", 1)
    with pytest.raises(GateFailed, match=r"latency_ms < 10 fails"):
        registry.set_alias("mlp", "production", 2)
    with pytest.raises(GateFailed, match="needs metric 'accuracy'"):
        registry.set_alias("mlp", "production", 4)
    registry.set_alias("mlp", "staging", 1)  # gates are per alias
    assert registry.set_alias("mlp", "production", 3).aliases["production"] == 3

    with pytest.raises(RegistryError, match="operator"):
        registry.set_gates("mlp", [Gate("production", "accuracy", "=>", 0.9)])
    with pytest.raises(RegistryError, match="same alias and metric"):
        registry.set_gates("mlp", [Gate("production", "a", ">", 1), Gate("production", "a", "<", 2)])


def test_history_records_who_did_what(registry: Registry, onnx_file: Path) -> None:
    registry.register("mlp", str(onnx_file), actor="trainer")
    registry.register("mlp", str(onnx_file), actor="trainer")
    registry.set_alias("mlp", "production", 1, actor="alice")
    registry.set_alias("mlp", "production", 2, actor="bob")
    registry.delete_alias("mlp", "production", actor="bob")
    registry.archive("mlp", 1, actor="carol")
    mark = registry.change_mark()

    entries = registry.history("mlp")
    assert [(e.actor, e.action) for e in entries] == [
        ("trainer", "registered"),
        ("trainer", "registered"),
        ("alice", "alias-set"),
        ("bob", "alias-set"),
        ("bob", "alias-deleted"),
        ("carol", "archived"),
    ]
    assert entries[3].details == {"alias": "production", "version": 2, "previous": 1}
    assert entries[0].time <= entries[-1].time
    registry.register("mlp", str(onnx_file))
    assert registry.change_mark() > mark


def test_fetch_refuses_an_artifact_that_no_longer_matches_its_sha256(
    registry: Registry, onnx_file: Path, tmp_path: Path
) -> None:
    v = registry.register("mlp", str(onnx_file))
    good = registry.fetch("registry://mlp/1")
    assert good.read_bytes() == onnx_file.read_bytes()

    # A damaged cached copy is noticed and fetched again from the store.
    good.write_bytes(b"damaged")
    assert registry.fetch("registry://mlp/1").read_bytes() == onnx_file.read_bytes()

    # A damaged stored copy fails loudly, and the cache does not hide it from a fresh replica.
    blob = tmp_path / "artifacts" / "sha256" / v.sha256[:2] / v.sha256
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes()[:-10] + b"0123456789")
    with Registry(registry.config, cache_dir=tmp_path / "fresh-cache") as fresh:
        with pytest.raises(InvalidArtifact, match="corrupted"):
            fresh.fetch("registry://mlp/1")
        assert not (tmp_path / "fresh-cache" / "registry" / v.sha256 / "model.onnx").exists()


def _register_many(url: str, artifacts: str, source: str, count: int, queue: multiprocessing.Queue) -> None:
    with Registry(RegistryConfig(url=url, artifacts=artifacts), cache_dir=Path(artifacts) / "cache") as r:
        queue.put([r.register("shared", source, actor=f"worker-{i}").version for i in range(count)])


def test_concurrent_registers_from_several_processes_get_gap_free_numbers(
    config: RegistryConfig, onnx_file: Path
) -> None:
    Registry(config).close()  # migrate once, so the workers race on registers, not on set-up
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue = ctx.Queue()
    workers = [
        ctx.Process(target=_register_many, args=(config.url, config.artifacts, str(onnx_file), 5, queue))
        for _ in range(4)
    ]
    for w in workers:
        w.start()
    results = [queue.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=30)
        assert w.exitcode == 0

    numbers = sorted(n for got in results for n in got)
    assert numbers == list(range(1, 21))
    with Registry(config) as r:
        assert [v.version for v in r.versions("shared")] == numbers


def test_a_database_newer_than_this_code_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    Registry(RegistryConfig(url=url, artifacts=str(tmp_path / "a"))).close()
    with sqlite3.connect(tmp_path / "r.db") as conn:
        conn.execute("INSERT INTO registry_schema_version VALUES (?)", (registry_db.SCHEMA_VERSION + 1,))
    with pytest.raises(RegistryError, match="newer than this servegate"):
        Registry(RegistryConfig(url=url, artifacts=str(tmp_path / "a")))


def test_an_older_database_is_migrated_in_place(tmp_path: Path, onnx_file: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    with engine.begin() as conn:  # what the first release created: schema 1, no gates table
        registry_db.MIGRATIONS.table.create(conn)
        registry_db._v1(conn)
        conn.execute(registry_db.MIGRATIONS.table.insert().values(version=1))
    engine.dispose()

    with Registry(RegistryConfig(url=f"sqlite:///{tmp_path / 'r.db'}", artifacts=str(tmp_path / "a"))) as r:
        r.register("mlp", str(onnx_file), metrics={"accuracy": 1.0})
        assert r.set_gates("mlp", [Gate("production", "accuracy", ">=", 0.5)]).gates
    with sqlite3.connect(tmp_path / "r.db") as conn:
        assert [
            v for (v,) in conn.execute("SELECT version FROM registry_schema_version ORDER BY version")
        ] == [1, 2, 3]


def test_a_bad_database_url_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="bad registry database URL"):
        Registry(RegistryConfig(url="not a url", artifacts=str(tmp_path)))
    with pytest.raises(RegistryError, match="no database driver"):
        Registry(RegistryConfig(url="nosuchdb://x/y", artifacts=str(tmp_path)))


def test_an_s3_bucket_holds_the_artifacts(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, onnx_file: Path
) -> None:
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"registry-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket=bucket)
    config = RegistryConfig(
        url=f"sqlite:///{tmp_path / 'r.db'}", artifacts=f"s3://{bucket}/team-a", s3_endpoint_url=moto_endpoint
    )
    folder = tmp_path / "src" / "tree"
    make_mlp_onnx(folder / "model.onnx", (8, 16, 4), seed=3)

    with Registry(config, cache_dir=tmp_path / "cache") as registry:
        v1 = registry.register("mlp", str(onnx_file))
        v2 = registry.register("mlp", str(folder))
        with pytest.raises(InvalidArtifact):
            registry.register("mlp", str(tmp_path / "src" / "missing.onnx"))

        def keys() -> set[str]:
            return {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}

        tree_blob = hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()
        assert keys() == {
            f"team-a/sha256/{v1.sha256[:2]}/{v1.sha256}",
            f"team-a/sha256/{tree_blob[:2]}/{tree_blob}",
            f"team-a/trees/{v2.sha256}.json",
        }
        assert registry.fetch(v1.uri).read_bytes() == onnx_file.read_bytes()
        assert (registry.fetch(v2.uri) / "model.onnx").read_bytes() == (folder / "model.onnx").read_bytes()

        s3.put_object(Bucket=bucket, Key=f"team-a/sha256/{tree_blob[:2]}/{tree_blob}", Body=b"tampered")
    with (
        Registry(config, cache_dir=tmp_path / "other-cache") as fresh,
        pytest.raises(InvalidArtifact, match="corrupted"),
    ):
        fresh.fetch(v2.uri)


def test_a_database_gone_away_is_reported_as_unavailable(postgres_url: str, tmp_path: Path) -> None:
    name = f"gone_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    url = postgres_url.rsplit("/", 1)[0] + f"/{name}"
    with Registry(RegistryConfig(url=url, artifacts=str(tmp_path / "a"))) as registry:
        assert registry.models() == []
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
        with pytest.raises(RegistryUnavailable, match="unavailable") as caught:
            registry.models()
        assert caught.value.status == 503
    admin.dispose()

    with pytest.raises(RegistryError, match="cannot open the registry database"):
        Registry(RegistryConfig(url=url, artifacts=str(tmp_path / "a")))
