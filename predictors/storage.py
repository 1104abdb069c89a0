"""Turn a model's storage URI into a local path.

Supported: local paths and `file://` URIs (used in place), `http(s)://` (one file), `s3://`
(one object or every object under a prefix) and `registry://` (the model registry's artifact store,
verified against the registered sha256). Remote artifacts land in a cache under
`StorageConfig.cache_dir`; each downloaded file keeps its sha256 in a `<file>.sha256` sidecar so a
corrupted cache is noticed and fetched again.

With a `StoragePolicy` in the config, every URI is checked before anything is read or fetched, and
http(s) downloads follow redirects by hand (at most 5), checking each hop, and connect only to the
addresses the policy allowed (see `_PolicyBackend`).

This runs in a worker thread while a model loads, so it is synchronous. Downloads go to a temporary
file in the target's directory and are moved into place with `os.replace`, under an fcntl lock per
target file, so threads and processes sharing a cache never see (or leave) a partial file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import httpcore
import httpx

from serving.auth.storage import Address, Resolver, StoragePolicy, resolve_host
from serving.errors import ModelFailure

__all__ = [
    "ChecksumMismatch",
    "StorageConfig",
    "StorageError",
    "cache_lock",
    "fetch",
    "s3_endpoint_from_env",
    "sha256_file",
    "write_atomically",
]

_CHUNK = 1 << 20
#: redirects one http(s) download may follow.
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_SUPPORTED = "a local path, file://, http://, https://, s3:// or registry://"


class StorageError(ModelFailure):
    """The artifact named by a storage URI could not be made available locally."""


def _default_cache_dir() -> Path:
    configured = os.environ.get("SERVEGATE_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "servegate" / "models"


def s3_endpoint_from_env() -> str | None:
    if url := os.environ.get("AWS_ENDPOINT_URL"):
        return url
    endpoint = os.environ.get("S3_ENDPOINT")
    if not endpoint:
        return None
    if "://" in endpoint:
        return endpoint
    # KServe's convention: S3_ENDPOINT is host[:port], S3_USE_HTTPS=0 selects plain http.
    scheme = "http" if os.environ.get("S3_USE_HTTPS", "1") == "0" else "https"
    return f"{scheme}://{endpoint}"


@dataclass(frozen=True)
class StorageConfig:
    """Where remote artifacts are cached and how they are reached.

    cache_dir: root of the download cache. s3_endpoint_url: S3 API endpoint; None falls back to
    $AWS_ENDPOINT_URL, then $S3_ENDPOINT (+ $S3_USE_HTTPS), then boto3's default (AWS).
    http_timeout_s: connect/read timeout for http(s) downloads, in seconds.
    policy: what may be read and fetched (every URI is checked before it is); None: anything (the
    operator's own URIs, e.g. on `servegate model serve`'s command line).
    """

    cache_dir: Path = field(default_factory=_default_cache_dir)
    s3_endpoint_url: str | None = None
    http_timeout_s: float = 60.0
    policy: StoragePolicy | None = None

    @classmethod
    def from_env(cls) -> StorageConfig:
        """Config from $SERVEGATE_CACHE_DIR and the S3 endpoint variables, resolved now."""
        return cls(cache_dir=_default_cache_dir(), s3_endpoint_url=s3_endpoint_from_env())


def fetch(uri: str, config: StorageConfig) -> Path:
    """Local path (file or directory) holding the artifact named by `uri`.

    Raises StorageError when the artifact is missing, cannot be downloaded, fails its checksum or
    the scheme is not supported; StorageRefused when the config's policy does not allow `uri`.
    """
    if config.policy is not None:
        # Before the cache too: what someone else fetched is not ours to read unless allowed.
        config.policy.check_uri(uri)
    if "://" not in uri and not uri.startswith("file:"):
        return _local(Path(uri).expanduser())
    scheme = urlsplit(uri).scheme.lower()
    if scheme == "file":
        return _local(_file_uri_path(uri))
    if scheme in ("http", "https"):
        return _fetch_http(uri, config)
    if scheme == "s3":
        return _fetch_s3(uri, config)
    if scheme == "registry":
        return _fetch_registry(uri, config)
    raise StorageError(f"unsupported storage URI {uri!r}: use {_SUPPORTED}")


# -- registry ----------------------------------------------------------------------------------------


def _fetch_registry(uri: str, config: StorageConfig) -> Path:
    from serving.registry.local import materialize  # SQLAlchemy only for registry URIs
    from serving.registry.types import RegistryError

    try:
        return materialize(uri, config.cache_dir).path
    except RegistryError as exc:
        raise StorageError(exc.message) from None


# -- local -------------------------------------------------------------------------------------------


def _file_uri_path(uri: str) -> Path:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        # file://models/x would silently mean host "models"; say so instead of guessing.
        raise StorageError(f"file URI {uri!r} names host {parts.netloc!r}; use file:///absolute/path")
    return Path(url2pathname(parts.path))


def _local(path: Path) -> Path:
    resolved = path.resolve()
    if not resolved.exists():
        raise StorageError(f"model artifact not found: {resolved}")
    return resolved


# -- cache plumbing ----------------------------------------------------------------------------------


def _sidecar(target: Path, suffix: str) -> Path:
    return target.with_name(target.name + suffix)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _is_cached(target: Path) -> bool:
    """Whether `target` exists and still hashes to the digest kept beside it."""
    kept = _read_text(_sidecar(target, ".sha256"))
    try:
        return kept is not None and sha256_file(target) == kept
    except OSError:
        return False


@contextlib.contextmanager
def cache_lock(cache_dir: Path, target: Path) -> Iterator[None]:
    """Hold an exclusive fcntl lock for `target`; it excludes other threads and processes alike.

    Lock files live in `cache_dir/.locks` so they never show up inside a returned model directory.
    """
    lock_dir = cache_dir / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(str(target).encode()).hexdigest()[:32]
    # Each open() is its own open file description, so flock also excludes threads of this process.
    with (lock_dir / f"{name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class ChecksumMismatch(StorageError):
    """Downloaded or copied bytes do not hash to the sha256 they must have."""

    def __init__(self, source: str, expected: str, actual: str) -> None:
        super().__init__(f"checksum mismatch for {source}: expected {expected}, got {actual}")
        self.expected, self.actual = expected, actual


def write_atomically(
    target: Path, chunks: Iterable[bytes], source: str, expected_sha256: str | None = None
) -> str:
    """Write `chunks` to `target` through a temporary file beside it and `os.replace`; returns their
    sha256. Nothing is left behind if the stream fails or the content does not match
    `expected_sha256` (ChecksumMismatch)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                digest.update(chunk)
                out.write(chunk)
        actual = digest.hexdigest()
        if expected_sha256 is not None and actual != expected_sha256:
            raise ChecksumMismatch(source, expected_sha256, actual)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return actual


def _store(target: Path, chunks: Iterable[bytes], source: str, expected_sha256: str | None = None) -> None:
    """Write `chunks` to `target` atomically and keep their sha256 in `<target>.sha256`."""
    actual = write_atomically(target, chunks, source, expected_sha256)
    # Written after the file: a crash in between leaves a stale sidecar, which only forces a refetch.
    _sidecar(target, ".sha256").write_text(actual)


# -- http(s) -----------------------------------------------------------------------------------------


def _expected_sha256(uri: str, fragment: str) -> str | None:
    if not fragment:
        return None
    algorithm, _, value = fragment.partition("=")
    value = value.strip().lower()
    if algorithm != "sha256" or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise StorageError(f"bad checksum fragment in {uri!r}: expected #sha256=<64 hex digits>")
    return value


def _fetch_http(uri: str, config: StorageConfig) -> Path:
    url, _, fragment = uri.partition("#")
    expected = _expected_sha256(uri, fragment)
    name = PurePosixPath(unquote(urlsplit(url).path)).name
    if name in ("", ".", ".."):
        name = "model"
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    target = config.cache_dir / "http" / key / name

    with cache_lock(config.cache_dir, target):
        if _is_cached(target):
            return target
        transport = _PinnedTransport(config.policy) if config.policy is not None else None
        try:
            with httpx.Client(timeout=config.http_timeout_s, transport=transport) as client:
                _download(client, url, config.policy, target, uri, expected)
        except httpx.TimeoutException as exc:
            raise StorageError(f"timed out after {config.http_timeout_s}s fetching {url}") from exc
        except httpx.HTTPError as exc:
            raise StorageError(f"cannot fetch {url}: {type(exc).__name__}: {exc}") from exc
    return target


def _download(
    client: httpx.Client, url: str, policy: StoragePolicy | None, target: Path, uri: str, expected: str | None
) -> None:
    """GET `url` into `target`, following redirects by hand: every hop is checked against `policy`
    before it is connected to (fetch() checked the first)."""
    for _ in range(MAX_REDIRECTS + 1):
        with client.stream("GET", url) as response:
            location = response.headers.get("location")
            if response.status_code in _REDIRECTS and location:
                url = str(response.url.join(location).copy_with(fragment=None))
                if urlsplit(url).scheme.lower() not in ("http", "https"):
                    raise StorageError(f"{uri} redirects to {url}: only http(s) redirects are followed")
                if policy is not None:
                    policy.check_url(url)
                continue
            if response.status_code >= 400:
                raise StorageError(f"HTTP {response.status_code} fetching {url}")
            _store(target, response.iter_bytes(_CHUNK), source=uri, expected_sha256=expected)
            return
    raise StorageError(f"more than {MAX_REDIRECTS} redirects fetching {uri}")


class _PolicyBackend(httpcore.SyncBackend):
    """Connects only to addresses the policy allows, resolving the name itself: a name cannot
    resolve to a public address for the check and to a private one for the connection (DNS
    rebinding). TLS still verifies the name (httpcore sends the URL's host as SNI)."""

    def __init__(self, policy: StoragePolicy, resolve: Resolver = resolve_host) -> None:
        self._policy = policy
        self._resolve = resolve

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        addresses: list[Address] = self._policy.addresses(host, port, self._resolve)
        failure: Exception | None = None
        for ip in addresses:
            try:
                return super().connect_tcp(str(ip), port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                failure = exc
        assert failure is not None  # addresses() never returns an empty list
        raise failure


class _PinnedTransport(httpx.HTTPTransport):
    """httpx's own transport, its connections made through `_PolicyBackend`. (A proxy from the
    environment, where one is set, connects instead; the per-hop URL checks still apply.)"""

    def __init__(self, policy: StoragePolicy) -> None:
        super().__init__()
        # HTTPTransport keeps its httpcore pool in `_pool` and takes no network backend: swap it.
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(), network_backend=_PolicyBackend(policy)
        )


# -- s3 ----------------------------------------------------------------------------------------------


def _s3_reason(exc: Exception) -> str:
    error = getattr(exc, "response", {}).get("Error", {})
    code, message = error.get("Code"), error.get("Message")
    if code:
        return f"{code}: {message}" if message else str(code)
    return f"{type(exc).__name__}: {exc}"


def _s3_cache_path(root: Path, key: str) -> Path:
    parts = PurePosixPath(key).parts
    # Keys are arbitrary strings; never let one write outside the cache.
    if not parts or key.startswith("/") or ".." in parts:
        raise StorageError(f"refusing to cache S3 key {key!r}: not a safe relative path")
    return root.joinpath(*parts)


def _fetch_s3(uri: str, config: StorageConfig) -> Path:
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise StorageError("s3:// URIs need boto3: pip install 'servegate[s3]'") from None

    parts = urlsplit(uri)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if bucket in ("", ".", ".."):
        raise StorageError(f"no bucket in {uri!r}: use s3://bucket/key")
    root = config.cache_dir / "s3" / bucket
    endpoint = config.s3_endpoint_url or s3_endpoint_from_env()
    try:
        client = boto3.client("s3", endpoint_url=endpoint)
    except (BotoCoreError, ValueError) as exc:  # ValueError: a malformed endpoint URL
        raise StorageError(f"cannot reach S3 at {endpoint or 'the default endpoint'}: {exc}") from exc
    try:
        if key and not key.endswith("/"):
            try:
                head = client.head_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                    raise
            else:
                target = _s3_cache_path(root, key)
                _sync_object(client, bucket, key, head["ETag"], head["ContentLength"], target, config)
                return target

        prefix = key if not key or key.endswith("/") else key + "/"
        objects = [
            obj
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for obj in page.get("Contents", [])
            if not obj["Key"].endswith("/")  # "folder" placeholder objects hold nothing
        ]
        if not objects:
            raise StorageError(f"no object at s3://{bucket}/{key}")
        for obj in objects:
            target = _s3_cache_path(root, obj["Key"])
            _sync_object(client, bucket, obj["Key"], obj["ETag"], obj["Size"], target, config)
    except (BotoCoreError, ClientError) as exc:
        raise StorageError(f"cannot fetch s3://{bucket}/{key}: {_s3_reason(exc)}") from exc
    return _s3_cache_path(root, prefix) if prefix else root


def _sync_object(
    client: Any, bucket: str, key: str, etag: str, size: int, target: Path, config: StorageConfig
) -> None:
    """Download one object unless the cached copy has the same ETag and size and is intact."""
    with cache_lock(config.cache_dir, target):
        etag_file = _sidecar(target, ".etag")
        fresh = _read_text(etag_file) == etag and target.is_file() and target.stat().st_size == size
        if fresh and _is_cached(target):
            return
        response = client.get_object(Bucket=bucket, Key=key)
        with contextlib.closing(response["Body"]) as body:
            _store(target, body.iter_chunks(_CHUNK), source=f"s3://{bucket}/{key}")
        # Ours from GET, not the listing's: the object may have changed in between.
        etag_file.write_text(response["ETag"])
