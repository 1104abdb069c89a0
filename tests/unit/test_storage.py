"""predictors.storage against real servers on loopback: an http.server and moto's S3 server."""

from __future__ import annotations

import hashlib
import re
import socket
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from predictors.storage import StorageConfig, StorageError, fetch
from serving.errors import ModelFailure
from tests.servers import FileServer, serve_files

MODEL = b"onnx-bytes-" * 1000


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def config(tmp_path: Path) -> StorageConfig:
    return StorageConfig(cache_dir=tmp_path / "cache", http_timeout_s=5.0)


# -- local -------------------------------------------------------------------------------------------


def test_local_path_is_returned_resolved(tmp_path: Path, config: StorageConfig, monkeypatch) -> None:
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(MODEL)
    monkeypatch.chdir(tmp_path)
    assert fetch("model.onnx", config) == artifact.resolve()
    assert fetch(str(artifact), config) == artifact.resolve()
    assert fetch(str(tmp_path), config) == tmp_path.resolve()
    assert not config.cache_dir.exists()


def test_file_uri(tmp_path: Path, config: StorageConfig) -> None:
    artifact = tmp_path / "my model.onnx"
    artifact.write_bytes(MODEL)
    assert fetch(artifact.as_uri(), config) == artifact.resolve()
    assert fetch(f"file://localhost{artifact}", config) == artifact.resolve()


def test_missing_local_path(tmp_path: Path, config: StorageConfig) -> None:
    missing = tmp_path / "nope" / "model.onnx"
    with pytest.raises(StorageError, match=re.escape(f"model artifact not found: {missing}")):
        fetch(str(missing), config)
    with pytest.raises(StorageError, match="model artifact not found"):
        fetch(missing.as_uri(), config)


def test_file_uri_with_a_host_is_rejected(config: StorageConfig) -> None:
    with pytest.raises(StorageError, match="file:///"):
        fetch("file://models/model.onnx", config)


@pytest.mark.parametrize("uri", ["gs://bucket/model.onnx", "hdfs://namenode/model", "pvc://claim/model"])
def test_unsupported_scheme(uri: str, config: StorageConfig) -> None:
    with pytest.raises(StorageError, match="s3://") as info:
        fetch(uri, config)
    assert isinstance(info.value, ModelFailure)
    assert info.value.http_status == 500


def test_config_from_env(tmp_path: Path, monkeypatch) -> None:
    for name in ("AWS_ENDPOINT_URL", "S3_ENDPOINT", "S3_USE_HTTPS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SERVEGATE_CACHE_DIR", str(tmp_path / "c"))
    assert StorageConfig.from_env() == StorageConfig(cache_dir=tmp_path / "c")
    assert StorageConfig().cache_dir == tmp_path / "c"

    monkeypatch.setenv("S3_ENDPOINT", "minio.local:9000")
    assert StorageConfig.from_env().s3_endpoint_url == "https://minio.local:9000"
    monkeypatch.setenv("S3_USE_HTTPS", "0")
    assert StorageConfig.from_env().s3_endpoint_url == "http://minio.local:9000"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://aws.local:4566")
    assert StorageConfig.from_env().s3_endpoint_url == "http://aws.local:4566"


# -- http --------------------------------------------------------------------------------------------


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[FileServer]:
    root = tmp_path / "www"
    (root / "models").mkdir(parents=True)
    (root / "models" / "model.onnx").write_bytes(MODEL)
    with serve_files(root) as server:
        yield server


def test_http_download_and_cache_reuse(http_server: FileServer, config: StorageConfig) -> None:
    uri = f"{http_server.url}/models/model.onnx"
    path = fetch(uri, config)
    key = _sha256(uri.encode())[:16]
    assert path == config.cache_dir / "http" / key / "model.onnx"
    assert path.read_bytes() == MODEL
    assert Path(f"{path}.sha256").read_text() == _sha256(MODEL)

    assert fetch(uri, config) == path
    assert http_server.gets == ["/models/model.onnx"]
    assert not [p for p in _files(path.parent) if p.name.endswith(".part")]


def test_http_corrupted_cache_is_downloaded_again(http_server: FileServer, config: StorageConfig) -> None:
    uri = f"{http_server.url}/models/model.onnx"
    path = fetch(uri, config)
    path.write_bytes(b"bit rot")
    assert fetch(uri, config).read_bytes() == MODEL
    assert len(http_server.gets) == 2


def test_http_empty_basename_is_named_model(http_server: FileServer, config: StorageConfig) -> None:
    (http_server.root / "index.html").write_bytes(MODEL)
    assert fetch(f"{http_server.url}/", config).name == "model"


def test_http_expected_checksum(http_server: FileServer, config: StorageConfig) -> None:
    uri = f"{http_server.url}/models/model.onnx#sha256={_sha256(MODEL)}"
    assert fetch(uri, config).read_bytes() == MODEL
    assert http_server.gets == ["/models/model.onnx"]  # the fragment is not sent


def test_http_checksum_mismatch_leaves_nothing(http_server: FileServer, config: StorageConfig) -> None:
    wrong = _sha256(b"something else")
    uri = f"{http_server.url}/models/model.onnx#sha256={wrong}"
    with pytest.raises(StorageError, match=f"checksum mismatch for .*expected {wrong}, got {_sha256(MODEL)}"):
        fetch(uri, config)
    assert _files(config.cache_dir / "http") == []


def test_http_bad_checksum_fragment(http_server: FileServer, config: StorageConfig) -> None:
    with pytest.raises(StorageError, match="sha256=<64 hex digits>"):
        fetch(f"{http_server.url}/models/model.onnx#md5=abc", config)


def test_http_404(http_server: FileServer, config: StorageConfig) -> None:
    url = f"{http_server.url}/models/missing.onnx"
    with pytest.raises(StorageError, match=re.escape(f"HTTP 404 fetching {url}")):
        fetch(url, config)
    assert _files(config.cache_dir / "http") == []


def test_http_broken_stream_leaves_nothing(http_server: FileServer, config: StorageConfig) -> None:
    with pytest.raises(StorageError, match="cannot fetch"):
        fetch(f"{http_server.url}/truncated", config)
    assert _files(config.cache_dir / "http") == []


def test_http_connection_refused(config: StorageConfig) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/model.onnx"
    with pytest.raises(StorageError, match=re.escape(f"cannot fetch {url}: ConnectError")):
        fetch(url, config)


def test_http_timeout(tmp_path: Path) -> None:
    # A listening socket that never answers: the TCP handshake completes, the response never comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/model.onnx"
        config = StorageConfig(cache_dir=tmp_path / "cache", http_timeout_s=0.2)
        with pytest.raises(StorageError, match=re.escape("timed out after 0.2s")):
            fetch(url, config)


def test_http_concurrent_fetches_download_once(http_server: FileServer, config: StorageConfig) -> None:
    uri = f"{http_server.url}/models/model.onnx"
    with ThreadPoolExecutor(max_workers=8) as pool:
        paths = list(pool.map(lambda _: fetch(uri, config), range(8)))
    assert len(set(paths)) == 1
    assert paths[0].read_bytes() == MODEL
    assert http_server.gets == ["/models/model.onnx"]
    assert [p.name for p in _files(config.cache_dir / "http")] == ["model.onnx", "model.onnx.sha256"]


# -- s3 ----------------------------------------------------------------------------------------------


@dataclass
class S3:
    endpoint: str
    bucket: str
    client: object


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch) -> S3:
    import boto3

    for name in ("AWS_ENDPOINT_URL", "S3_ENDPOINT", "S3_USE_HTTPS", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # moto keeps buckets for the life of the process; a fresh name keeps tests independent.
    bucket = f"models-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=moto_endpoint)
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="single/model.onnx", Body=MODEL)
    client.put_object(Bucket=bucket, Key="resnet/config.json", Body=b'{"layers": 50}')
    client.put_object(Bucket=bucket, Key="resnet/weights/part-0.bin", Body=b"\x00\x01" * 500)
    client.put_object(Bucket=bucket, Key="resnet-v2/other.bin", Body=b"not under resnet/")
    return S3(moto_endpoint, bucket, client)


def _s3_config(tmp_path: Path, s3: S3) -> StorageConfig:
    return StorageConfig(cache_dir=tmp_path / "cache", s3_endpoint_url=s3.endpoint)


def test_s3_single_object(tmp_path: Path, s3: S3) -> None:
    config = _s3_config(tmp_path, s3)
    path = fetch(f"s3://{s3.bucket}/single/model.onnx", config)
    assert path == config.cache_dir / "s3" / s3.bucket / "single" / "model.onnx"
    assert path.read_bytes() == MODEL
    assert Path(f"{path}.sha256").read_text() == _sha256(MODEL)
    assert Path(f"{path}.etag").read_text() == f'"{hashlib.md5(MODEL).hexdigest()}"'

    # A cache hit keeps the same file; a corrupted one is replaced (os.replace: a new inode).
    inode = path.stat().st_ino
    assert fetch(f"s3://{s3.bucket}/single/model.onnx", config).stat().st_ino == inode
    path.write_bytes(b"bit rot!")
    assert fetch(f"s3://{s3.bucket}/single/model.onnx", config).read_bytes() == MODEL


@pytest.mark.parametrize("suffix", ["resnet", "resnet/"])
def test_s3_prefix_directory(tmp_path: Path, s3: S3, suffix: str) -> None:
    config = _s3_config(tmp_path, s3)
    path = fetch(f"s3://{s3.bucket}/{suffix}", config)
    assert path == config.cache_dir / "s3" / s3.bucket / "resnet"
    assert (path / "config.json").read_bytes() == b'{"layers": 50}'
    assert (path / "weights" / "part-0.bin").read_bytes() == b"\x00\x01" * 500
    assert (path / "weights" / "part-0.bin.sha256").read_text() == _sha256(b"\x00\x01" * 500)
    assert not (config.cache_dir / "s3" / s3.bucket / "resnet-v2").exists()

    inode = (path / "config.json").stat().st_ino
    fetch(f"s3://{s3.bucket}/{suffix}", config)
    assert (path / "config.json").stat().st_ino == inode


def test_s3_changed_object_is_downloaded_again(tmp_path: Path, s3: S3) -> None:
    config = _s3_config(tmp_path, s3)
    uri = f"s3://{s3.bucket}/single/model.onnx"
    fetch(uri, config)
    s3.client.put_object(Bucket=s3.bucket, Key="single/model.onnx", Body=b"retrained")
    assert fetch(uri, config).read_bytes() == b"retrained"


def test_s3_missing_key(tmp_path: Path, s3: S3) -> None:
    with pytest.raises(StorageError, match=re.escape(f"no object at s3://{s3.bucket}/nothing/here")):
        fetch(f"s3://{s3.bucket}/nothing/here", _s3_config(tmp_path, s3))


def test_s3_missing_bucket(tmp_path: Path, s3: S3) -> None:
    with pytest.raises(StorageError, match=re.escape("s3://no-such-bucket-here/model.onnx: NoSuchBucket")):
        fetch("s3://no-such-bucket-here/model.onnx", _s3_config(tmp_path, s3))


def test_s3_endpoint_unreachable(tmp_path: Path, s3: S3) -> None:
    config = StorageConfig(cache_dir=tmp_path / "cache", s3_endpoint_url=f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(StorageError, match=f"s3://{s3.bucket}/single/model.onnx: .*connect"):
        fetch(f"s3://{s3.bucket}/single/model.onnx", config)


def test_s3_endpoint_from_aws_endpoint_url(tmp_path: Path, s3: S3, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    path = fetch(f"s3://{s3.bucket}/single/model.onnx", StorageConfig(cache_dir=tmp_path / "cache"))
    assert path.read_bytes() == MODEL


def test_s3_endpoint_from_kserve_variables(tmp_path: Path, s3: S3, monkeypatch) -> None:
    monkeypatch.setenv("S3_ENDPOINT", s3.endpoint.removeprefix("http://"))
    monkeypatch.setenv("S3_USE_HTTPS", "0")
    path = fetch(f"s3://{s3.bucket}/single/model.onnx", StorageConfig(cache_dir=tmp_path / "cache"))
    assert path.read_bytes() == MODEL


def test_s3_without_boto3(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # makes `import boto3` raise ImportError
    with pytest.raises(StorageError, match=re.escape("pip install 'servegate[s3]'")):
        fetch("s3://bucket/model.onnx", StorageConfig(cache_dir=tmp_path / "cache"))
