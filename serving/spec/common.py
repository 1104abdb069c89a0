"""What every manifest shares: Kubernetes-style metadata, camelCase fields, and problems by field path.

Manifests are validated in two passes. pydantic checks types and ranges; each resource's own
`check()` then adds cross-field problems. Either way the user gets every problem at once, each
named by its field path (`spec.predictor.canaryTrafficPercent: ...`), and nothing is applied.
Fields servegate does not model are kept (a KServe manifest with `serviceAccountName` or
`tolerations` applies unchanged) and reported back as warnings, like `kubectl apply` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

__all__ = [
    "API_GROUP",
    "KModel",
    "ManifestError",
    "ObjectMeta",
    "Problem",
    "parse_quantity",
    "problems_from",
    "unknown_fields",
]

API_GROUP = "serving.kserve.io"

#: Kubernetes object names: DNS-1123 labels.
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def dns_label_problem(value: str) -> str | None:
    """Why `value` is not a DNS-1123 label (a namespace or an object's name), else None."""
    if len(value) > 63:
        return f"'{value}' is longer than 63 characters"
    if not re.match(NAME_PATTERN, value):
        return f"'{value}' must be lowercase letters, digits and '-', starting and ending alphanumeric"
    return None


#: Kubernetes' label syntax, which Ray's node labels share: a name (also a non-empty value), and a
#: key's optional DNS-subdomain prefix.
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def is_dns_subdomain(value: object) -> bool:
    """Whether `value` is a DNS-1123 subdomain (a service account's or a label prefix's name)."""
    return isinstance(value, str) and len(value) <= 253 and bool(_SUBDOMAIN.fullmatch(value))


def is_label_key(key: object) -> bool:
    """Whether `key` is a label (or annotation) key: NAME or PREFIX/NAME."""
    if not isinstance(key, str):
        return False
    prefix, slash, name = key.rpartition("/")
    return bool(_LABEL_NAME.fullmatch(name)) and (not slash or is_dns_subdomain(prefix))


def is_label_value(value: object) -> bool:
    """Whether `value` is a non-empty label value (Kubernetes takes "" too: callers that do say so)."""
    return isinstance(value, str) and bool(_LABEL_NAME.fullmatch(value))


class KModel(BaseModel):
    """Base of every manifest model: camelCase on the wire, snake_case in Python, extras kept."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True, serialize_by_alias=True
    )


class ObjectMeta(KModel):
    name: str = Field(max_length=63, pattern=NAME_PATTERN)
    namespace: str = Field("default", max_length=63, pattern=NAME_PATTERN)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a manifest: where (a dotted field path) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ManifestError(ValueError):
    """A manifest (or several) that cannot be applied; `problems` lists every reason."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(map(str, problems)))


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_UNION_MEMBERS = frozenset({"int", "str", "float", "bool", "none", "list", "dict", "bytes"})


def _not_a_field(part: int | str) -> bool:
    return isinstance(part, str) and ("[" in part or part.startswith("function") or part in _UNION_MEMBERS)


def problems_from(exc: ValidationError, prefix: str = "") -> list[Problem]:
    """pydantic's errors as problems, with the manifest's own (camelCase) field paths."""
    problems = []
    for error in exc.errors():
        # Union members and validators add locations that are not fields: drop them.
        loc = tuple(p for p in error["loc"] if not _not_a_field(p))
        path = _path(loc)
        message = error["msg"].removeprefix("Value error, ")
        problem = Problem(f"{prefix}.{path}" if prefix and path else prefix or path, message)
        if problem not in problems:  # each member of a union reports the same place
            problems.append(problem)
    return problems


def unknown_fields(model: BaseModel, prefix: str = "") -> list[str]:
    """Dotted paths of every field under `model` that servegate does not model (kept, but unused)."""
    found: list[str] = []
    for key in model.model_extra or {}:
        found.append(f"{prefix}.{key}" if prefix else key)
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        path = f"{prefix}.{field.alias or name}" if prefix else (field.alias or name)
        found.extend(_unknown_in(value, path))
    return found


def _unknown_in(value: Any, path: str) -> list[str]:
    if isinstance(value, BaseModel):
        return unknown_fields(value, path)
    if isinstance(value, list | tuple):
        return [p for i, item in enumerate(value) for p in _unknown_in(item, f"{path}[{i}]")]
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in _unknown_in(item, f"{path}.{key}")]
    return []


_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_FACTORS = {
    None: 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def parse_quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity (`500m`, `2`, `1.5Gi`, `512M`) as a plain number."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"quantity {value} is negative")
        return float(value)
    match = _QUANTITY.match(str(value).strip())
    if not match:
        raise ValueError(f"'{value}' is not a Kubernetes quantity (e.g. 500m, 2, 1Gi)")
    number, suffix = match.groups()
    return float(number) * _FACTORS[suffix]
