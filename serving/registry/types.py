"""What the registry holds and says: models, versions, aliases, gates, the audit log, and its errors.

Plain frozen dataclasses; `as_dict()` gives the JSON shape the control API, the CLI's `-o json` and
`serving.Client` share.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any

from serving.comparisons import COMPARISONS

__all__ = [
    "ALIAS_PATTERN",
    "GATE_OPS",
    "AuditEntry",
    "Gate",
    "GateFailed",
    "InvalidArtifact",
    "ModelVersion",
    "RegisteredModel",
    "RegistryConflict",
    "RegistryError",
    "RegistryNotFound",
    "RegistryUnavailable",
    "VersionStatus",
    "default_actor",
]

#: the operators a promotion gate may use.
GATE_OPS = (">=", ">", "<=", "<", "==")
#: alias names: lower-case words; never a number (that would read as a version) nor "latest".
ALIAS_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
#: model names: what a URI, a URL path and an InferenceService name can all carry.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def default_actor() -> str:
    """Who a change is by when nobody says: $SERVEGATE_USER, else user@host."""
    if who := os.environ.get("SERVEGATE_USER"):
        return who
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class RegistryError(Exception):
    """Bad input to the registry (400 on the control API); subclasses say what else went wrong."""

    #: HTTP status on the control API.
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArtifact(RegistryError):
    """The artifact is missing, unreadable, or not of the format it was registered as."""


class RegistryNotFound(RegistryError):
    status = 404


class RegistryConflict(RegistryError):
    """The change contradicts the registry's state (an alias on an archived version, ...)."""

    status = 409


class RegistryUnavailable(RegistryError):
    """The registry's database cannot be reached (or stays locked): try again later."""

    status = 503


class GateFailed(RegistryConflict):
    """A version's metrics do not meet the thresholds an alias demands."""


class VersionStatus:
    READY = "READY"
    ARCHIVED = "ARCHIVED"


@dataclass(frozen=True, slots=True)
class Gate:
    """A promotion gate: `alias` may only point at a version whose `metric` `op` `threshold` holds."""

    alias: str
    metric: str
    op: str  # one of >=, >, <=, <, ==
    threshold: float

    def holds(self, value: float) -> bool:
        return COMPARISONS[self.op](value, self.threshold)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Gate:
        """The inverse of `dataclasses.asdict` (what `RegisteredModel.as_dict` holds under "gates")."""
        return cls(str(data["alias"]), str(data["metric"]), str(data["op"]), float(data["threshold"]))


@dataclass(frozen=True, slots=True)
class ModelVersion:
    model: str
    version: int
    format: str
    #: sha256 of the file, or of the canonical file list of a directory (see ArtifactStore).
    sha256: str
    #: the file or folder name the artifact had; the runtime finds it under this name.
    artifact_name: str
    #: "file" or "tree" (a directory).
    artifact_kind: str
    size: int
    status: str
    created: float
    created_by: str
    description: str = ""
    #: {"inputs": [{"name", "datatype", "shape"}], "outputs": [...]} when the format carries one.
    signature: dict[str, Any] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    #: where it came from: {"uri": what was registered, "run": pipeline run, "dataset": dataset hash}.
    source: dict[str, str] = field(default_factory=dict)
    #: aliases pointing at this version.
    aliases: tuple[str, ...] = ()
    #: python format: the class inside the artifact ("Class" of "model.py:Class").
    entry: str | None = None
    #: an admin vouched for its author (`Registry.trust`): a version that runs code as it loads (a
    #: python model, a pickle, a torch.export archive) is served only when set.
    trusted: bool = False

    @property
    def uri(self) -> str:
        return f"registry://{self.model}/{self.version}"

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["aliases"] = list(self.aliases)
        out["uri"] = self.uri
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelVersion:
        """The inverse of `as_dict` (keys it does not know, like "uri", are ignored)."""
        known = _known(cls, data)
        known["metrics"] = {k: float(v) for k, v in (data.get("metrics") or {}).items()}
        known["aliases"] = tuple(data.get("aliases") or ())
        return cls(**known)


@dataclass(frozen=True, slots=True)
class RegisteredModel:
    name: str
    description: str
    created: float
    updated: float
    #: the highest version number ever given (archived ones included).
    latest_version: int
    aliases: dict[str, int] = field(default_factory=dict)
    gates: tuple[Gate, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["gates"] = [dataclasses.asdict(g) for g in self.gates]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegisteredModel:
        """The inverse of `as_dict` (keys it does not know, like "versions", are ignored)."""
        known = _known(cls, data)
        known["aliases"] = {str(k): int(v) for k, v in (data.get("aliases") or {}).items()}
        known["gates"] = tuple(Gate.from_dict(g) for g in data.get("gates") or ())
        return cls(**known)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    model: str
    time: float
    actor: str
    #: registered | alias-set | alias-deleted | archived | gates-set | trusted | untrusted
    action: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditEntry:
        """The inverse of `as_dict`."""
        return cls(**_known(cls, data))


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The items of `data` that are fields of the dataclass `cls` (a newer server may send more)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}
