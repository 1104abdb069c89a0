"""Code trust: which models run code from their author as they load, and which sources may hold them.

Importing a python model's file runs it; unpickling a joblib/pickle file runs whatever its author
put in it; `torch.export.load` unpickles parts of a `.pt2` archive. Such a model loads only from a
source the operator trusts: a `--trust-source` prefix (`servegate up`, `servegate model serve`, or
SERVEGATE_TRUSTED_SOURCES), or a registry version an admin marked trusted (`servegate registry trust
NAME/VERSION`). ONNX, TorchScript and skops files run no code as they load and need no trust.

`needs_trust` is the rule on names (what a manifest or a registry record says);
`local_needs_trust` also looks inside local artifacts, as the runtimes would (reading a zip's
directory runs nothing). The runtimes decide again on the artifact itself when they load it, so a
name that says nothing never lets code through.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from serving.errors import InvalidInput, ModelFailure

if TYPE_CHECKING:
    from predictors.spec import ModelSpec

__all__ = [
    "TRUSTED_SOURCES_ENV",
    "RegistryOrigin",
    "TrustPolicy",
    "is_python_file",
    "local_needs_trust",
    "local_path",
    "needs_trust",
    "require_trust",
    "source_of",
    "torch_archive_kind",
    "trust_hint",
    "why_code_runs",
]

#: comma-separated trusted sources, read by `servegate up` and `servegate model serve`; the gateway
#: hands its own to the replicas it starts through it.
TRUSTED_SOURCES_ENV = "SERVEGATE_TRUSTED_SOURCES"

#: file suffixes whose loading runs code, per format; other names run none, or cannot tell.
_CODE_SUFFIXES = {"sklearn": (".joblib", ".pkl", ".pickle"), "pytorch": (".pt2",)}
_WHY = {
    "python": "a python model runs its file's code as it loads",
    "sklearn": "a pickle (joblib, .pkl) runs code from its author as it loads",
    "pytorch": "torch.export.load unpickles parts of a .pt2 archive, which runs code from its author",
}
# the `:ClassName` that ends a python model's URI
_CLASS = re.compile(r":[A-Za-z_]\w*$")


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    """Which sources may hold models that run code as they load.

    `sources` are folders or files, as paths, file://, s3:// or http(s):// URIs. A source is trusted
    when it is one of them or lies under one, compared after normalising both: local paths are
    resolved (`~`, `..`, symlinks, relative to the working directory) and file:// URIs are paths
    too; other URIs compare by scheme, host and whole path segments, `.` and `..` removed. So
    `/srv/models/../evil.py` is not under `/srv/models/`, and neither is `/srv/models-old/x.py`.
    `registry://` URIs never match: a registry version's own record says whether an admin trusted
    it. `trust_all` trusts every source (tests; a machine nobody else can reach).
    """

    sources: tuple[str, ...] = ()
    trust_all: bool = False

    @classmethod
    def from_env(cls, sources: Iterable[str] = ()) -> TrustPolicy:
        """`sources` and those in $SERVEGATE_TRUSTED_SOURCES (comma-separated)."""
        from_env = (s.strip() for s in os.environ.get(TRUSTED_SOURCES_ENV, "").split(","))
        return cls(sources=tuple(dict.fromkeys([*sources, *(s for s in from_env if s)])))

    def trusts(self, uri: str) -> bool:
        """Whether `uri` (a storage URI or local path) is, or lies under, a trusted source."""
        if self.trust_all:
            return True
        key = _key(uri)
        if key is None:
            return False
        for source in self.sources:
            prefix = _key(source)
            if prefix is not None and key[: len(prefix)] == prefix:
                return True
        return False

    def env(self) -> dict[str, str]:
        """The environment that gives a replica process the same sources (`trust_all` is not passed on)."""
        return {TRUSTED_SOURCES_ENV: ",".join(self.sources)}


@dataclass(frozen=True, slots=True)
class RegistryOrigin:
    """The registry version a model's local copy was materialized from. For such a model the
    version's record decides trust, not the policy's prefixes (which name where artifacts come
    from, not the registry's cache)."""

    #: `registry://NAME/VERSION`, resolved (never an alias).
    uri: str
    #: the version record's flag: an admin trusted it (`servegate registry trust NAME/VERSION`).
    trusted: bool


# -- the rule -------------------------------------------------------------------------------------


def is_python_file(target: str) -> bool:
    """Whether a python model's import target (its URI without `:ClassName`) names a file, rather
    than a module importable where the server runs."""
    return target.endswith(".py") or "/" in target or "\\" in target


def needs_trust(fmt: str | None, artifact: str) -> bool:
    """Whether loading a model of format `fmt` (None: inferred from the name) from `artifact` runs
    code from its author, as far as its name tells. `artifact` is a file name, path or URI; for the
    python format, the import target with or without `:ClassName`.

    python: a file (`path/to/file.py:Class`) yes; a module (`package.module:Class`) no, since its
    code is already installed where the server runs, by the operator. sklearn: .joblib, .pkl and
    .pickle yes, .skops no. pytorch: .pt2 (torch.export) yes, TorchScript no. Everything else no,
    including a name that says nothing (a folder): the runtime looks at the artifact when it loads.
    """
    fmt = _format(fmt, artifact)
    if fmt == "python":
        return "://" in artifact or is_python_file(_CLASS.sub("", artifact))
    return _suffix(artifact) in _CODE_SUFFIXES.get(fmt or "", ())


def local_needs_trust(fmt: str | None, uri: str) -> bool:
    """`needs_trust`, and for a local path or file:// URI, what the runtime would find there: the
    artifact inside a folder, and a torch archive's layout whatever its suffix. Reads file names and
    zip directories only; a missing or unreadable artifact is left to the runtime."""
    if needs_trust(fmt, uri):
        return True
    path = local_path(uri)
    if path is None or _format(fmt, uri) == "python":
        return False
    from predictors.runtimes import model_file  # imported here: see _format

    try:
        artifact = model_file(path)
        if artifact is None:
            return False
        if _format(fmt, artifact.name) == "pytorch":
            return torch_archive_kind(artifact) == "export"
    except (OSError, zipfile.BadZipFile):
        return False
    return needs_trust(fmt, artifact.name)


def torch_archive_kind(artifact: Path) -> str:
    """Which kind of torch archive `artifact` is, by its zip layout, then its suffix: "export"
    (torch.export: an `archive_format` record), "torchscript" (`constants.pkl`, `code/`) or "pickle"
    (a torch.save() file: `data.pkl`). Raises OSError or zipfile.BadZipFile when it is no zip."""
    with zipfile.ZipFile(artifact) as archive:
        # Records live under one top-level folder whose name is arbitrary.
        records = {name.partition("/")[2] for name in archive.namelist()}
    if "archive_format" in records:
        return "export"
    if "constants.pkl" in records or any(name.startswith("code/") for name in records):
        return "torchscript"
    if "data.pkl" in records:
        return "pickle"
    return "export" if artifact.suffix.lower() == ".pt2" else "torchscript"


def why_code_runs(fmt: str | None, artifact: str = "") -> str:
    """Why loading a model of format `fmt` (None: inferred from `artifact`) runs code, for refusals."""
    fmt = _format(fmt, artifact)
    return _WHY.get(fmt or "", f"loading {f'a {fmt} model' if fmt else 'it'} runs code from its author")


def source_of(fmt: str | None, uri: str) -> str:
    """What a trust decision on a model's storage URI is about: for a python model its file (the
    URI without `:ClassName`), else the URI itself."""
    return _CLASS.sub("", uri) if _format(fmt, uri) == "python" else uri


def trust_hint(source: str) -> str:
    """How to trust `source` (a storage URI, path, or `registry://NAME/VERSION`), for refusals."""
    if source.lower().startswith("registry://"):
        return (
            f"an admin can trust this version with `servegate registry trust {source[len('registry://') :]}`"
        )
    return (
        f"trust this source with --trust-source {source} (or a folder above it) on `servegate up` or "
        f"`servegate model serve`, or in {TRUSTED_SOURCES_ENV}"
    )


def require_trust(
    spec: ModelSpec, refusing: str, why: str, source: str | None = None, instead: str = ""
) -> None:
    """Raise ModelFailure unless `spec`'s model may run code as it loads: the policy trusts
    everything, or the registry version it came from is trusted, or the policy trusts `source`
    (default `spec.uri`; the python runtime passes its file).

    The message: `refusing to <refusing>: <why>; <instead>, or <how to trust it>`.
    """
    if spec.trust.trust_all:
        return
    if spec.origin is not None:
        if spec.origin.trusted:
            return
        source = spec.origin.uri
    else:
        source = source or spec.uri
        if spec.trust.trusts(source):
            return
    hint = trust_hint(source)
    advice = f"{instead}, or {hint}" if instead else f"if you trust its author, {hint}"
    raise ModelFailure(f"refusing to {refusing}: {why}; {advice}")


# -- helpers --------------------------------------------------------------------------------------


def _format(fmt: str | None, artifact: str) -> str | None:
    """`fmt` normalized (an unknown name lower-cased), or inferred from `artifact` when None."""
    # Imported here: predictors.runtimes imports predictors.spec, which imports this module.
    from predictors.runtimes import SUFFIXES, is_import_path, normalize_format

    if fmt is None:
        return "python" if is_import_path(artifact) else SUFFIXES.get(_suffix(artifact))
    try:
        return normalize_format(fmt)
    except InvalidInput:
        return fmt.lower()


def _suffix(artifact: str) -> str:
    path = urlsplit(artifact).path if "://" in artifact else artifact
    return PurePosixPath(path).suffix.lower()


def local_path(uri: str) -> Path | None:
    """The local path `uri` names (a plain path or file:// URI), else None."""
    if "://" not in uri and not uri.startswith("file:"):
        return Path(uri).expanduser()
    parts = urlsplit(uri)
    if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost"):
        return None
    return Path(url2pathname(parts.path))


def _key(uri: str) -> tuple[str, ...] | None:
    """`uri` as (scheme, host, *path segments), normalised for prefix comparison; None for what no
    prefix may match (registry URIs, an empty string)."""
    uri = uri.strip()
    if not uri:
        return None
    local = local_path(uri)
    if local is not None:
        # resolve(): `..` and symlinks as the loader will meet them, relative paths from the cwd.
        return ("file", "", *local.resolve().parts[1:])
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "registry" or not scheme:
        return None
    segments: list[str] = []
    for segment in unquote(parts.path).split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment not in ("", "."):
            segments.append(segment)
    key = (scheme, parts.netloc.lower(), *segments)
    # `s3://` alone: every bucket (an empty host is no host to compare).
    return key if key[1] or segments else key[:1]
