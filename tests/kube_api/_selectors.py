"""Label and field selectors, parsed once into predicates."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from tests.kube_api._errors import bad_request

LabelPredicate = Callable[[Mapping[str, str]], bool]
ObjectPredicate = Callable[[dict], bool]

_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_VALUE = r"[-A-Za-z0-9_.]*"
_EXISTS = re.compile(rf"^(!?)\s*({_KEY})$")
_EQUALS = re.compile(rf"^({_KEY})\s*(==|=|!=)\s*({_VALUE})$")
_SET = re.compile(rf"^({_KEY})\s+(in|notin)\s*\(([^)]*)\)$")


def _split(text: str) -> list[str]:
    """Split on commas that are not inside a `(x,y)` value set."""
    parts, depth, current = [], 0, []
    for char in text:
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


def _requirement(text: str) -> LabelPredicate:
    if match := _SET.match(text):
        key, op, values = match[1], match[2], {v.strip() for v in match[3].split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if match := _EQUALS.match(text):
        key, op, value = match[1], match[2], match[3]
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if match := _EXISTS.match(text):
        negated, key = match[1] == "!", match[2]
        return lambda labels: (key in labels) != negated
    raise bad_request(f"unable to parse requirement: found '{text}', expected: in, notin, =, ==, !=, gt, lt")


def label_selector(text: str | None) -> LabelPredicate:
    """`a=b,c!=d,e in (x,y),f notin (z),g,!h` as a predicate over a labels mapping."""
    requirements = [_requirement(part) for part in _split(text or "")]
    return lambda labels: all(requirement(labels) for requirement in requirements)


def _expression(key: str, operator: str, values: set[str]) -> LabelPredicate:
    if operator == "In":
        return lambda labels: labels.get(key) in values
    if operator == "NotIn":
        return lambda labels: labels.get(key) not in values
    if operator == "Exists":
        return lambda labels: key in labels
    if operator == "DoesNotExist":
        return lambda labels: key not in labels
    raise bad_request(f"{operator!r} is not a valid label selector operator")


def selector_of(spec: Mapping | None) -> LabelPredicate:
    """A `LabelSelector` object (matchLabels + matchExpressions) as a predicate; empty matches all."""
    spec = spec or {}
    requirements = [_expression(k, "In", {v}) for k, v in (spec.get("matchLabels") or {}).items()]
    requirements += [
        _expression(e["key"], e["operator"], set(e.get("values") or ()))
        for e in spec.get("matchExpressions") or ()
    ]
    return lambda labels: all(requirement(labels) for requirement in requirements)


def _field(obj: dict, path: str) -> str | None:
    value: object = obj
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return None if value is None else str(value)


def _field_requirement(path: str, op: str, value: str) -> ObjectPredicate:
    if op == "!=":
        return lambda obj: (_field(obj, path) or "") != value
    return lambda obj: (_field(obj, path) or "") == value


def field_selector(text: str | None) -> ObjectPredicate:
    """`metadata.name=x,metadata.namespace!=y` (any dotted path, compared as strings)."""
    requirements = []
    for part in _split(text or ""):
        match = re.match(r"^([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)$", part)
        if not match:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        requirements.append(_field_requirement(match[1], match[2], match[3].strip()))
    return lambda obj: all(requirement(obj) for requirement in requirements)
