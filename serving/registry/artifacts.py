"""The content-addressed artifact store: a folder or an S3-compatible bucket.

Every file is kept once, under its sha256 (`sha256/ab/abcdef...`). A file artifact's digest is the
file's own sha256 (what `sha256sum` prints); a directory's is the sha256 of its canonical file list
(`trees/<digest>.json`: every file's relative path, sha256 and size), so identical content is
stored once whatever it was called.

`materialize` copies an artifact into a local cache while hashing every byte: a file whose hash
no longer matches its digest fails loudly (InvalidArtifact) instead of being served.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from predictors.storage import (
    ChecksumMismatch,
    cache_lock,
    s3_endpoint_from_env,
    sha256_file,
    write_atomically,
)
from serving.registry.types import InvalidArtifact, RegistryError

__all__ = [
    "ArtifactStore",
    "LocalArtifactStore",
    "S3ArtifactStore",
    "StoredArtifact",
    "artifact_digest",
    "open_store",
]

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class StoredArtifact:
    sha256: str
    #: the file or folder name it was registered under.
    name: str
    kind: str  # "file" | "tree"
    size: int
    #: keys this put wrote (not already stored): what to remove if the register fails.
    written: tuple[str, ...] = ()


def _manifest(entries: list[dict[str, Any]]) -> bytes:
    """A folder's canonical file list; its sha256 is the folder's digest."""
    return json.dumps({"files": entries}, sort_keys=True, separators=(",", ":")).encode()


def _folder_files(path: Path) -> list[Path]:
    """The files of a folder artifact, in order; InvalidArtifact for a link out of the folder (the
    store copies what a link points at, and a registration must not copy what lies elsewhere)."""
    root = path.resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if not file.resolve().is_relative_to(root):
            raise InvalidArtifact(f"{file} links out of the folder {path}; copy the file in instead")
    return files


def artifact_digest(path: Path) -> tuple[str, int]:
    """(sha256, size in bytes) of a file, or of a folder as the store names it (its file list's)."""
    if path.is_file():
        return sha256_file(path), path.stat().st_size
    entries = [
        {"path": f.relative_to(path).as_posix(), "sha256": sha256_file(f), "size": f.stat().st_size}
        for f in _folder_files(path)
    ]
    return hashlib.sha256(_manifest(entries)).hexdigest(), sum(e["size"] for e in entries)


def _blob_key(digest: str) -> str:
    return f"sha256/{digest[:2]}/{digest}"


def _tree_key(digest: str) -> str:
    return f"trees/{digest}.json"


class ArtifactStore(ABC):
    """Objects by key; subclasses say how to test, write, read and remove one."""

    @abstractmethod
    def _has(self, key: str) -> bool: ...

    @abstractmethod
    def _write(self, key: str, source: Path) -> None:
        """Store `source` under `key` atomically (readers never see a partial object)."""

    @abstractmethod
    def _read(self, key: str) -> Iterator[bytes]:
        """The object's bytes; raise FileNotFoundError when there is none."""

    @abstractmethod
    def _remove(self, key: str) -> None: ...

    @abstractmethod
    def describe(self) -> str:
        """Where the store is, for messages."""

    # -- put --------------------------------------------------------------------------------------

    def put(self, path: Path) -> StoredArtifact:
        """Store the file or directory at `path`; returns its digest and what was newly written."""
        if path.is_file():
            digest, size = sha256_file(path), path.stat().st_size
            written = self._put_blob(digest, path)
            return StoredArtifact(digest, path.name, "file", size, written)
        files = _folder_files(path)
        if not files:
            raise InvalidArtifact(f"{path} holds no files")
        written: list[str] = []
        entries = []
        try:
            for file in files:
                digest = sha256_file(file)
                written += self._put_blob(digest, file)
                rel = file.relative_to(path).as_posix()
                entries.append({"path": rel, "sha256": digest, "size": file.stat().st_size})
            manifest = _manifest(entries)
            digest = hashlib.sha256(manifest).hexdigest()
            if not self._has(_tree_key(digest)):
                with _temp_file(manifest) as tmp:
                    self._write(_tree_key(digest), tmp)
                written.append(_tree_key(digest))
        except BaseException:
            self.remove(tuple(written))
            raise
        return StoredArtifact(digest, path.name, "tree", sum(e["size"] for e in entries), tuple(written))

    def _put_blob(self, digest: str, source: Path) -> list[str]:
        key = _blob_key(digest)
        if self._has(key):
            return []
        self._write(key, source)
        return [key]

    def remove(self, keys: tuple[str, ...]) -> None:
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                self._remove(key)

    def holds(self, digest: str, kind: str) -> bool:
        return self._has(_tree_key(digest) if kind == "tree" else _blob_key(digest))

    def keys_of(self, digest: str, kind: str) -> tuple[str, ...]:
        """The objects an artifact owns alone enough to delete with it: its blob or tree manifest."""
        return (_tree_key(digest) if kind == "tree" else _blob_key(digest),)

    # -- materialize ------------------------------------------------------------------------------

    def materialize(self, digest: str, kind: str, name: str, cache_dir: Path, what: str) -> Path:
        """A verified local copy under `cache_dir`; `what` names the artifact in errors."""
        root = cache_dir / "registry" / digest
        if kind == "file":
            target = root / name
            self._copy_verified(_blob_key(digest), digest, target, cache_dir, what)
            return target
        manifest = b"".join(self._read_or_fail(_tree_key(digest), what))
        if hashlib.sha256(manifest).hexdigest() != digest:
            raise InvalidArtifact(
                f"{what}: the stored file list does not match sha256 {digest}; refusing to load"
            )
        target = root / name
        for entry in json.loads(manifest)["files"]:
            rel = PurePosixPath(entry["path"])
            if rel.is_absolute() or ".." in rel.parts:
                raise InvalidArtifact(f"{what}: unsafe path {entry['path']!r} in its file list")
            self._copy_verified(
                _blob_key(entry["sha256"]), entry["sha256"], target.joinpath(*rel.parts), cache_dir, what
            )
        return target

    def _copy_verified(self, key: str, digest: str, target: Path, cache_dir: Path, what: str) -> None:
        with cache_lock(cache_dir, target):
            if target.is_file() and sha256_file(target) == digest:
                return  # a good cached copy (checked now, so a damaged cache is fetched again)
            try:
                write_atomically(target, self._read_or_fail(key, what), what, expected_sha256=digest)
            except ChecksumMismatch as exc:
                raise InvalidArtifact(
                    f"{what}: {target.name} in the artifact store ({self.describe()}) has sha256 "
                    f"{exc.actual}, not the registered {digest}: the artifact is corrupted; "
                    "refusing to load it"
                ) from None

    def _read_or_fail(self, key: str, what: str) -> Iterator[bytes]:
        try:
            yield from self._read(key)
        except FileNotFoundError:
            raise InvalidArtifact(
                f"{what}: {key} is missing from the artifact store ({self.describe()})"
            ) from None


class LocalArtifactStore(ArtifactStore):
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def describe(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    def _has(self, key: str) -> bool:
        return self._path(key).is_file()

    def _write(self, key: str, source: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".put.", suffix=".part")
        os.close(fd)
        try:
            shutil.copyfile(source, tmp_name)
            os.chmod(tmp_name, 0o444)  # content-addressed: never rewritten in place
            os.replace(tmp_name, target)
        finally:
            Path(tmp_name).unlink(missing_ok=True)

    def _read(self, key: str) -> Iterator[bytes]:
        with self._path(key).open("rb") as f:
            while chunk := f.read(_CHUNK):
                yield chunk

    def _remove(self, key: str) -> None:
        self._path(key).unlink()


class S3ArtifactStore(ArtifactStore):
    """Objects under `s3://bucket/prefix/` of any S3-compatible service."""

    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None = None) -> None:
        try:
            import boto3
            from botocore.exceptions import ClientError
        except ImportError:
            raise RegistryError("an s3:// artifact store needs boto3: pip install 'servegate[s3]'") from None
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self._client_error = ClientError
        self._client: Any = boto3.client("s3", endpoint_url=endpoint_url or s3_endpoint_from_env())

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _has(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except self._client_error as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def _write(self, key: str, source: Path) -> None:
        self._client.upload_file(str(source), self.bucket, self._key(key))

    def _read(self, key: str) -> Iterator[bytes]:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self._client_error as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(key) from None
            raise
        with contextlib.closing(response["Body"]) as body:
            yield from body.iter_chunks(_CHUNK)

    def _remove(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self._key(key))


def open_store(location: str, s3_endpoint_url: str | None = None) -> ArtifactStore:
    """The store at `location`: a folder path, or `s3://bucket/prefix`."""
    if location.lower().startswith("s3://"):
        parts = urlsplit(location)
        if not parts.netloc:
            raise RegistryError(f"no bucket in artifact store '{location}': use s3://bucket/prefix")
        return S3ArtifactStore(parts.netloc, parts.path, s3_endpoint_url)
    if "://" in location:
        raise RegistryError(f"unsupported artifact store '{location}': use a folder or s3://bucket/prefix")
    return LocalArtifactStore(Path(location))


@contextlib.contextmanager
def _temp_file(data: bytes) -> Iterator[Path]:
    fd, name = tempfile.mkstemp(prefix="servegate-tree-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)
