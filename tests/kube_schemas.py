"""Offline validation of Kubernetes objects, roughly as an API server with strict field validation
(kubectl's default) would see them, for tests: `validate(obj)` lists the problems, [] when valid.

- Built-in kinds: the official OpenAPI schemas bundled by `kubernetes_validate`, strict (an unknown
  field is a problem). It stops at the first schema error.
- KServe's kinds (serving.kserve.io): the vendored CRD's openAPIV3Schema with `jsonschema`, its
  `x-kubernetes-*` extensions translated (`_structural`); CEL rules are not checked (KServe's CRDs
  have none). servegate's own fields (SERVEGATE_EXTENSIONS) are accepted unless told not to.
- Both: what the API server checks in code, not in schemas: names, namespaces, label keys and
  values, resource quantities, container and port names, a Deployment's selector and its template.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from typing import Any

import jsonschema
import kubernetes_validate

from serving.engines.kubernetes.names import SERVING_GROUP
from serving.operator.crds import crd_schema

__all__ = ["SERVEGATE_EXTENSIONS", "validate"]

#: servegate's fields that KServe's CRD schemas lack, by kind: path -> the KServe field whose schema
#: it takes, or None for any object (servegate's own models check it: serving/spec/).
SERVEGATE_EXTENSIONS: dict[str, dict[str, str | None]] = {
    "InferenceService": {
        # A/B experiment: weighted variants, sticky by header or cookie (spec/isvc.py ExperimentSpec).
        "spec.experiment": None,
        # shadow traffic: a copy of some requests to another service or revision (ShadowSpec).
        "spec.shadow": None,
        # progressive delivery: stages, checks, shadow phase (spec/rollout.py RolloutStrategy).
        "spec.rollout": None,
        # a transformer as a servegate `python` model: KServe's transformer takes containers only,
        # so it borrows the predictor's `model` schema.
        "spec.transformer.model": "spec.predictor.model",
    },
}


def validate(
    obj: dict[str, Any], kubernetes_version: str = "1.33", servegate_extensions: bool = True
) -> list[str]:
    """The problems of one Kubernetes object, each `Kind/name: field.path: message`; [] when valid.

    `servegate_extensions=False` holds KServe's kinds to KServe's schema alone.
    Raises kubernetes_validate.VersionNotSupportedError for an unknown Kubernetes version.
    """
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return ["apiVersion and kind must be strings"]
    group, _, version = api_version.rpartition("/")
    if group == SERVING_GROUP:
        problems = _custom_problems(obj, version, kind, servegate_extensions)
        # ObjectMeta is one schema for every kind: checked through a built-in one.
        meta = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj.get("metadata", {})}
        problems += _builtin_problems(meta, kubernetes_version)
    else:
        problems = _builtin_problems(obj, kubernetes_version)
    problems += _code_problems(obj)
    name = (obj.get("metadata") or {}).get("name", "?")
    return [f"{kind}/{name}: {problem}" for problem in problems]


# -- schemas --------------------------------------------------------------------------------------


def _builtin_problems(obj: dict[str, Any], kubernetes_version: str) -> list[str]:
    try:
        kubernetes_validate.validate(obj, kubernetes_version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{_path(exc.path)}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [exc.message]
    return []


def _custom_problems(obj: dict[str, Any], version: str, kind: str, extensions: bool) -> list[str]:
    try:
        validator = _crd_validator(version, kind, extensions)
    except KeyError as exc:
        return [str(exc.args[0])]
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{_path(e.absolute_path)}: {e.message}" for e in errors]


@cache
def _crd_validator(version: str, kind: str, extensions: bool) -> jsonschema.Draft4Validator:
    schema = _structural(crd_schema(SERVING_GROUP, version, kind))
    schema["properties"]["metadata"] = {"type": "object"}  # checked as ObjectMeta (validate)
    for path, borrowed in SERVEGATE_EXTENSIONS.get(kind, {}).items() if extensions else ():
        where, _, field = path.rpartition(".")
        added = _at(schema, borrowed) if borrowed else {"type": "object"}
        _at(schema, where)["properties"][field] = added
    return jsonschema.Draft4Validator(schema)


def _at(schema: dict[str, Any], path: str) -> dict[str, Any]:
    for field in path.split("."):
        schema = schema["properties"][field]
    return schema


def _structural(node: Any) -> Any:
    """A Kubernetes structural schema as plain JSON Schema (draft 4, as OpenAPI v3.0's)."""
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "description"):
            continue
        if key == "properties":
            out[key] = {name: _structural(schema) for name, schema in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = _structural(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [_structural(schema) for schema in value]
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if node.get("nullable") and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
    # Strict field validation: a field the schema does not name is an error, unless the schema
    # keeps unknown fields or is a map (additionalProperties).
    if (
        out.get("type") == "object"
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or "(root)"


# -- what the API server checks in code -----------------------------------------------------------

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_NUMBER = r"[+-]?(\d+(\.\d*)?|\.\d+)"
_QUANTITY = re.compile(rf"^{_NUMBER}(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE]{_NUMBER})?$")
#: kinds whose names are DNS-1123 labels / DNS-1035 labels / path segments (the rest: subdomains).
_LABEL_NAMED = {"Namespace"}
_DNS1035_NAMED = {"Service"}
_SEGMENT_NAMED = {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def _code_problems(obj: dict[str, Any]) -> list[str]:
    problems = _metadata_problems(obj)
    # A CRD's spec is a schema: its `labels` and `sizeLimit` are property names, not values.
    walked = obj if obj.get("kind") != "CustomResourceDefinition" else {}
    for path, key, value in _walk(walked, ()):
        where = _path((*path, key))
        if key in ("limits", "requests") and path[-1:] == ("resources",) and isinstance(value, dict):
            problems += [
                f"{where}.{name}: {problem}" for name, q in value.items() if (problem := _quantity_problem(q))
            ]
        elif key == "sizeLimit":
            problems += [f"{where}: {problem}" for problem in [_quantity_problem(value)] if problem]
        elif key in ("labels", "matchLabels") and isinstance(value, dict):
            problems += [f"{where}: {problem}" for problem in _label_problems(value)]
        elif key in ("containers", "initContainers") and isinstance(value, list):
            problems += _container_problems(value, where)
    if obj.get("kind") == "Deployment":
        problems += _selector_problems(obj.get("spec") or {})
    return problems


def _walk(value: Any, path: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], Any, Any]]:
    """(path of the parent, key, value) of every mapping entry, depth first."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(value, dict):
            yield path, key, item
        yield from _walk(item, (*path, key))


def _metadata_problems(obj: dict[str, Any]) -> list[str]:
    meta = obj.get("metadata") or {}
    kind, name, namespace = obj.get("kind"), meta.get("name"), meta.get("namespace")
    problems = []
    if not isinstance(name, str) or not name:
        if not meta.get("generateName"):
            problems.append("metadata.name: a name is required")
    elif kind == "CustomResourceDefinition":
        spec = obj.get("spec") or {}
        expected = f"{(spec.get('names') or {}).get('plural')}.{spec.get('group')}"
        if name != expected:
            problems.append(f"metadata.name: must be spec.names.plural + '.' + spec.group ('{expected}')")
    elif kind in _SEGMENT_NAMED:
        if name in (".", "..") or "/" in name or "%" in name:
            problems.append(f"metadata.name: '{name}' may not be '.', '..' or contain '/' or '%'")
    elif kind in _DNS1035_NAMED:
        problems += _dns_problems("metadata.name", name, _DNS1035_LABEL, 63, "start with a letter")
    elif kind in _LABEL_NAMED:
        problems += _dns_problems("metadata.name", name, _DNS_LABEL, 63)
    else:
        problems += _dns_problems("metadata.name", name, _DNS_SUBDOMAIN, 253, "may contain '.'")
    if namespace is not None:
        problems += _dns_problems("metadata.namespace", str(namespace), _DNS_LABEL, 63)
    return problems


def _dns_problems(where: str, value: str, pattern: re.Pattern[str], limit: int, more: str = "") -> list[str]:
    if len(value) > limit:
        return [f"{where}: '{value}' is longer than {limit} characters"]
    if not pattern.match(value):
        rule = "lowercase letters, digits and '-', starting and ending alphanumeric"
        return [f"{where}: '{value}' must be {rule}" + (f" ({more})" if more else "")]
    return []


def _quantity_problem(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return f"{value!r} is not a quantity"
    if isinstance(value, str) and not _QUANTITY.match(value):
        return f"'{value}' is not a Kubernetes quantity (such as 500m, 2 or 1Gi)"
    if str(value).startswith("-"):
        return f"'{value}' must not be negative"
    return None


def _label_problems(labels: dict[str, Any]) -> list[str]:
    problems = []
    for key, value in labels.items():
        prefix, _, name = str(key).rpartition("/")
        if (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix))) or (
            len(name) > 63 or not _LABEL_NAME.match(name)
        ):
            problems.append(
                f"'{key}' is not a label key ([prefix/]name, name: 63 alphanumerics, '-', '_', '.')"
            )
        if not isinstance(value, str) or len(value) > 63 or (value and not _LABEL_NAME.match(value)):
            problems.append(f"'{key}': {value!r} is not a label value (63 alphanumerics, '-', '_', '.')")
    return problems


def _container_problems(containers: list[Any], where: str) -> list[str]:
    problems = []
    for i, container in enumerate(containers):
        if not isinstance(container, dict):
            continue
        if isinstance(name := container.get("name"), str):
            problems += _dns_problems(f"{where}[{i}].name", name, _DNS_LABEL, 63)
        for j, port in enumerate(container.get("ports") or []):
            name = port.get("name") if isinstance(port, dict) else None
            if isinstance(name, str) and not _port_name_ok(name):
                problems.append(
                    f"{where}[{i}].ports[{j}].name: '{name}' is not a port name "
                    "(15 lowercase letters, digits and '-', at least one letter)"
                )
    return problems


def _port_name_ok(name: str) -> bool:
    # IANA_SVC_NAME, as Kubernetes checks container port names.
    return (
        0 < len(name) <= 15
        and re.fullmatch(r"[-a-z0-9]+", name) is not None
        and re.search(r"[a-z]", name) is not None
        and "--" not in name
        and not name.startswith("-")
        and not name.endswith("-")
    )


def _selector_problems(spec: dict[str, Any]) -> list[str]:
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    if not selector:
        return ["spec.selector: a Deployment needs a non-empty selector"]
    if any(labels.get(key) != value for key, value in selector.items()):
        return ["spec.template.metadata.labels: `selector` does not match template `labels`"]
    return []
