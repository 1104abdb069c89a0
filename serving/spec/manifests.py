"""From text to resources: YAML or JSON documents, validated, with every problem reported at once.

`load_manifests` is all-or-nothing: if any document has a problem, it raises one `ManifestError`
listing every problem of every document, each prefixed with the resource it belongs to
(`InferenceService/iris: spec.predictor.canaryTrafficPercent: ...`), and nothing is applied.

Documents are bounded once parsed, not only as bytes (`serving.bounds`): nesting, values with YAML
aliases expanded, and bytes as JSON, per document and per resource (what the state database keeps).
A document past a bound is refused at once, alone: looking for its other problems could cost what
the bound is there to prevent.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ValidationError

from serving.bounds import MAX_DEPTH, MAX_KEPT_BYTES, MAX_NODES, Bounds, BoundsError, loads_json, measure
from serving.spec.common import API_GROUP, ManifestError, Problem, problems_from
from serving.spec.isvc import InferenceService
from serving.spec.trained_model import TrainedModel

if TYPE_CHECKING:
    from typing import TypeAlias

    from serving.spec.graph import InferenceGraph

    Resource: TypeAlias = InferenceService | TrainedModel | InferenceGraph

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "MAX_RESOURCE_BYTES",
    "ManifestTooLarge",
    "Resource",
    "load_manifests",
    "parse_documents",
    "parse_resource",
    "read_manifest_paths",
]

#: the apiVersion each kind servegate applies is served at.
KINDS = {
    "InferenceService": f"{API_GROUP}/v1beta1",
    "TrainedModel": f"{API_GROUP}/v1alpha1",
    "InferenceGraph": f"{API_GROUP}/v1alpha1",
}
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")

MAX_DOCUMENT_BYTES = 4 << 20
"""Bytes one parsed document may take as JSON, YAML aliases expanded: as much as one apply request
may carry (a `kind: List` holds several resources, each held to MAX_RESOURCE_BYTES)."""

MAX_RESOURCE_BYTES = MAX_KEPT_BYTES
"""Bytes one resource's manifest may take as JSON: what the state database keeps for it (the stored
copy differs from what was written only by a few defaults)."""

_DOCUMENT = Bounds(MAX_DEPTH, MAX_NODES, MAX_DOCUMENT_BYTES)
_RESOURCE = Bounds(MAX_DEPTH, MAX_NODES, MAX_RESOURCE_BYTES)


class ManifestTooLarge(ManifestError):
    """A manifest past a size bound (MAX_RESOURCE_BYTES, MAX_DOCUMENT_BYTES): HTTP 413, not 400."""


def __getattr__(name: str) -> Any:
    # `Resource` names InferenceGraph, whose module is imported only when first needed.
    if name == "Resource":
        from serving.spec.graph import InferenceGraph

        return InferenceService | TrainedModel | InferenceGraph
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def parse_documents(text: str, source: str = "<input>") -> list[dict[str, Any]]:
    """The objects in YAML (multi-document) or JSON `text`; empty documents skipped, `kind: List` expanded.

    Raises ManifestError for a syntax error, or for documents that are not mappings (all of them).
    """
    documents = _load(text, source)
    found: list[dict[str, Any]] = []
    problems: list[Problem] = []
    for number, document in enumerate(documents, 1):
        if document is None:
            continue  # empty documents (`---` twice, comments only) are allowed
        where = f"{source}: document {number}" if len(documents) > 1 else source
        _check(document, where, _DOCUMENT)
        _expand(document, where, found, problems)
    if problems:
        raise ManifestError(problems)
    return found


def _check(document: Any, where: str, bounds: Bounds) -> None:
    try:
        measure(document, bounds)
    except BoundsError as exc:
        raise _refused(where, exc) from None


def _refused(where: str, exc: BoundsError) -> ManifestError:
    return (ManifestTooLarge if exc.too_large else ManifestError)([Problem(where, exc.message)])


class _Loader(yaml.SafeLoader):
    """SafeLoader refusing nesting past MAX_DEPTH while it composes: PyYAML's composer recurses per
    level, so a deep enough document would end in RecursionError rather than a problem. Aliases
    are bounded afterwards, by measuring what was built (`_check`)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_sequence_node(self, anchor: str | None) -> yaml.SequenceNode:
        self._enter()
        try:
            return super().compose_sequence_node(anchor)
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:
        self._enter()
        try:
            return super().compose_mapping_node(anchor)
        finally:
            self._depth -= 1

    def _enter(self) -> None:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise BoundsError.too_deep(MAX_DEPTH)


def _load(text: str, source: str) -> list[Any]:
    json_error = None
    if text.lstrip().startswith(("{", "[")):
        # JSON first: PyYAML rejects some valid JSON (tabs for indentation).
        try:
            return [loads_json(text, _DOCUMENT)]
        except json.JSONDecodeError as exc:
            json_error = f"invalid JSON at line {exc.lineno}: {exc.msg}"
        except BoundsError as exc:
            raise _refused(source, exc) from None
    try:
        return list(yaml.load_all(text, Loader=_Loader))
    except BoundsError as exc:
        raise _refused(source, exc) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        what = getattr(exc, "problem", None) or str(exc)
        message = f"invalid YAML at line {mark.line + 1}: {what}" if mark else f"invalid YAML: {what}"
        raise ManifestError([Problem(source, json_error or message)]) from None


def _expand(document: Any, where: str, found: list[dict[str, Any]], problems: list[Problem]) -> None:
    if not isinstance(document, dict):
        kind = type(document).__name__
        problems.append(Problem(where, f"expected a Kubernetes object (a mapping), got {kind}"))
    elif document.get("kind") == "List":
        items = document.get("items")
        if not isinstance(items, list):
            problems.append(Problem(f"{where}: items", "a List needs a list of items"))
            return
        for i, item in enumerate(items):
            _expand(item, f"{where}: items[{i}]", found, problems)
    else:
        _check(document, where, _RESOURCE)
        found.append(document)


def parse_resource(doc: dict[str, Any]) -> Resource:
    """One validated resource, chosen by apiVersion and kind.

    Raises ManifestError with every problem, type errors and cross-field ones alike, each prefixed
    with the resource's identity (`InferenceService/iris: spec...`).
    """
    identity = _identity(doc)
    model = _model_for(doc.get("apiVersion"), doc.get("kind"), identity)
    try:
        resource = model.model_validate(doc)
    except ValidationError as exc:
        problems = problems_from(exc)
        problems += _checks_beside(model, doc, exc)
    else:
        problems = resource.check()
    if problems:
        raise ManifestError([_prefixed(identity, p) for p in problems])
    return resource


def _prefixed(identity: str, problem: Problem) -> Problem:
    return Problem(f"{identity}: {problem.path}" if problem.path else identity, problem.message)


def _kind_and_name(doc: dict[str, Any]) -> tuple[str | None, str | None]:
    kind = doc.get("kind")
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return (kind if isinstance(kind, str) else None), (name if isinstance(name, str) else None)


def _identity(doc: dict[str, Any]) -> str:
    kind, name = _kind_and_name(doc)
    return f"{kind or '<no kind>'}/{name or '<no name>'}"


def _model_for(api_version: Any, kind: Any, identity: str) -> Any:
    """The model class for (apiVersion, kind); InferenceGraph's module is imported only here."""
    problems = []
    if not isinstance(kind, str) or kind not in KINDS:
        shown = f"unknown kind '{kind}'" if kind is not None else "kind is missing"
        problems.append(Problem(f"{identity}: kind", f"{shown}: servegate applies {', '.join(KINDS)}"))
        if api_version not in KINDS.values():
            versions = " and ".join(sorted(set(KINDS.values()), reverse=True))
            shown = (
                f"unknown apiVersion '{api_version}'" if api_version is not None else "apiVersion is missing"
            )
            problems.append(Problem(f"{identity}: apiVersion", f"{shown}: servegate applies {versions}"))
    elif api_version != KINDS[kind]:
        shown = f"got '{api_version}'" if api_version is not None else "apiVersion is missing"
        problems.append(Problem(f"{identity}: apiVersion", f"{kind} is {KINDS[kind]}, {shown}"))
    if problems:
        raise ManifestError(problems)
    if kind == "InferenceGraph":
        from serving.spec.graph import InferenceGraph

        return InferenceGraph
    return InferenceService if kind == "InferenceService" else TrainedModel


def _checks_beside(model: type[BaseModel], doc: dict[str, Any], exc: ValidationError) -> list[Problem]:
    """Cross-field problems of the rest of a document that failed type checks.

    The invalid fields are cut out and the remainder validated again; if it validates, its
    `check()` problems are reported too, except those at or inside a cut field or at its parent:
    a cut field looks absent to its parent's checks, and absent is not what the user wrote.
    """
    pruned = copy.deepcopy(doc)
    parents: set[str] = set()
    cut: list[str] = []
    for error in exc.errors():
        if error["type"] == "missing":
            return []  # a required field is absent: the document cannot validate, however cut
        paths = _cut(pruned, error["loc"])
        if paths is None:
            return []
        parents.add(paths[0])
        cut.append(paths[1])
    try:
        partial = model.model_validate(pruned)
    except ValidationError:
        return []
    return [p for p in partial.check() if p.path not in parents and not any(_within(p.path, c) for c in cut)]


def _within(path: str, field: str) -> bool:
    return path == field or path.startswith((f"{field}.", f"{field}["))


def _cut(doc: dict[str, Any], loc: tuple[int | str, ...]) -> tuple[str, str] | None:
    """Delete the deepest mapping key on `loc` (a list item takes its whole list).

    Returns the paths of the key's parent and of the key itself; None if `loc` names no key.
    """
    node: Any = doc
    path = ""
    target = None
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            parent, path = path, f"{path}.{part}" if path else part
            target = (node, part, parent, path)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path += f"[{part}]"
            node = node[part]
        else:
            break  # union and validator names in `loc` are not keys
    if target is None:
        return None
    container, key, parent, path = target
    del container[key]
    return parent, path


def load_manifests(text: str, source: str = "<input>") -> list[Resource]:
    """Every resource in `text`, validated; raises one ManifestError listing every problem.

    Two documents with the same kind and name are a problem too.
    """
    resources = []
    problems: list[Problem] = []
    seen: set[tuple[str | None, str | None]] = set()
    for doc in parse_documents(text, source):
        key = _kind_and_name(doc)
        if None not in key and key in seen:
            problems.append(Problem(_identity(doc), f"defined more than once in {source}"))
        seen.add(key)
        try:
            resources.append(parse_resource(doc))
        except ManifestError as exc:
            problems += exc.problems
    if problems:
        raise ManifestError(problems)
    return resources


def read_manifest_paths(paths: list[str]) -> list[tuple[str, str]]:
    """(source, text) for each manifest file: a file, a directory's *.yaml/*.yml/*.json (sorted, not
    recursive), or `-` for stdin. Raises one ManifestError naming every path that cannot be read."""
    found: list[tuple[str, str]] = []
    problems: list[Problem] = []
    for raw in paths:
        if raw == "-":
            found.append(("<stdin>", sys.stdin.read()))
            continue
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in MANIFEST_SUFFIXES and p.is_file())
            if not files:
                problems.append(Problem(raw, "no manifests (*.yaml, *.yml, *.json) in this directory"))
        elif path.exists():
            files = [path]
        else:
            problems.append(Problem(raw, "no such file or directory"))
            continue
        for file in files:
            try:
                found.append((str(file), file.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(Problem(str(file), f"cannot read: {exc}"))
    if problems:
        raise ManifestError(problems)
    return found
