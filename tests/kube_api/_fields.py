"""Field ownership (`metadata.managedFields`) and server-side apply.

A field is named by its path of fieldsV1 elements: `("f:spec", "f:replicas")`, or through a list of
objects keyed by `name`, `("f:spec", "f:template", "f:spec", "f:containers", 'k:{"name":"web"}',
"f:image")`. Managers own leaves only: scalars, atomic lists (every list not keyed by name) and
empty objects. An update (PUT, merge/JSON/strategic patch, scale) gives its manager the leaves it
changed and takes them from everyone else; an apply owns exactly the leaves it sent, conflicts with
other owners of a leaf it would change, and removes the leaves it sent before and no longer sends
unless another manager owns them too.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tests.kube_api._patch import is_keyed_list

Path = tuple[str, ...]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()

#: metadata a client cannot set; updates keep the live object's
SERVER_METADATA = (
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
)
#: what no field manager owns: the server's metadata and the object's identity
_SYSTEM_METADATA = frozenset({"name", "namespace", *SERVER_METADATA})


class ApplyConflict(Exception):
    """Apply would change fields other managers own: manager -> the fields as `.spec.replicas`."""

    def __init__(self, conflicts: dict[str, list[str]]) -> None:
        super().__init__(conflicts)
        self.conflicts = conflicts


def _item_key(item: dict) -> str:
    return "k:" + json.dumps({"name": item["name"]}, separators=(",", ":"))


def owned_view(obj: dict) -> dict:
    """The part of an object managers can own: no apiVersion/kind, no server-set metadata."""
    view = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
    metadata = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in _SYSTEM_METADATA}
    view.pop("metadata", None)
    if metadata:
        view["metadata"] = metadata
    return view


def leaves(value: Any, prefix: Path = ()) -> dict[Path, Any]:
    """Every owned leaf of `value` and its value."""
    found: dict[Path, Any] = {}
    if isinstance(value, dict) and value:
        for key, item in value.items():
            found.update(leaves(item, (*prefix, f"f:{key}")))
    elif is_keyed_list(value):
        for item in value:
            found.update(leaves(item, (*prefix, _item_key(item))))
    elif prefix:
        found[prefix] = value
    return found


def _step(value: Any, element: str) -> Any:
    if element.startswith("f:") and isinstance(value, dict):
        return value.get(element[2:], MISSING)
    if element.startswith("k:") and isinstance(value, list):
        name = json.loads(element[2:])["name"]
        return next((item for item in value if isinstance(item, dict) and item.get("name") == name), MISSING)
    return MISSING


def lookup(obj: Any, path: Path) -> Any:
    for element in path:
        obj = _step(obj, element)
        if obj is MISSING:
            break
    return obj


def dotted(path: Path) -> str:
    """`.spec.template.spec.containers[name="web"].image`, as Kubernetes prints a field."""
    parts = []
    for element in path:
        if element.startswith("k:"):
            parts.append("".join(f"[{k}={json.dumps(v)}]" for k, v in json.loads(element[2:]).items()))
        else:
            parts.append("." + element[2:])
    return "".join(parts)


def _delete(container: Any, element: str) -> None:
    if element.startswith("f:") and isinstance(container, dict):
        container.pop(element[2:], None)
    elif element.startswith("k:") and isinstance(container, list):
        item = _step(container, element)
        if item is not MISSING:
            container.remove(item)


def _empty(value: Any, element: str) -> bool:
    if element.startswith("k:"):
        return isinstance(value, dict) and set(value) <= {"name"}
    return value in ({}, [])


def remove(obj: dict, path: Path, still_owned: set[Path]) -> None:
    """Remove the leaf at `path`, then every container it leaves empty that nobody owns a field under."""
    chain = [obj]
    for element in path[:-1]:
        chain.append(_step(chain[-1], element))
        if chain[-1] is MISSING:
            return
    _delete(chain[-1], path[-1])
    # never prune a top-level section (metadata, spec, status) itself
    for depth in range(len(path) - 1, 1, -1):
        prefix = path[:depth]
        if not _empty(chain[depth], prefix[-1]) or any(p[:depth] == prefix for p in still_owned):
            return
        _delete(chain[depth - 1], prefix[-1])


def apply_merge(live: Any, applied: Any) -> Any:
    """Apply's merge: objects merge key by key, keyed lists item by item, everything else is replaced."""
    if isinstance(live, dict) and isinstance(applied, dict):
        merged = dict(live)
        for key, value in applied.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = apply_merge(live.get(key, MISSING), value)
        return merged
    if is_keyed_list(live) and is_keyed_list(applied):
        sent = {item["name"]: item for item in applied}
        merged_list = [
            apply_merge(item, sent.pop(item["name"])) if item["name"] in sent else item for item in live
        ]
        return merged_list + [copy.deepcopy(item) for item in sent.values()]
    return copy.deepcopy(applied)


def _tree(paths: Iterable[Path]) -> dict:
    root: dict = {}
    for path in paths:
        node = root
        for element in path:
            node = node.setdefault(element, {})
            if element.startswith("k:"):
                node.setdefault(".", {})
    return root


def _paths(tree: dict, prefix: Path = ()) -> set[Path]:
    found: set[Path] = set()
    children = {k: v for k, v in tree.items() if k != "."}
    if not children and prefix and "." not in tree:
        found.add(prefix)
    for element, child in children.items():
        found |= _paths(child, (*prefix, element))
    return found


@dataclass
class Entry:
    """One `managedFields` entry, its fieldsV1 read into leaf paths."""

    manager: str
    operation: str
    api_version: str
    time: str
    subresource: str = ""
    paths: set[Path] = field(default_factory=set)

    @classmethod
    def from_json(cls, raw: dict) -> Entry:
        return cls(
            raw.get("manager", ""),
            raw.get("operation", "Update"),
            raw.get("apiVersion", ""),
            raw.get("time", ""),
            raw.get("subresource", ""),
            _paths(raw.get("fieldsV1") or {}),
        )

    def to_json(self) -> dict:
        entry = {
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": _tree(sorted(self.paths)),
        }
        if self.subresource:
            entry["subresource"] = self.subresource
        return entry


def _entries(obj: dict | None) -> list[Entry]:
    return [Entry.from_json(raw) for raw in ((obj or {}).get("metadata") or {}).get("managedFields") or ()]


def _store(obj: dict, entries: list[Entry]) -> None:
    kept = [entry.to_json() for entry in entries if entry.paths]
    if kept:
        obj.setdefault("metadata", {})["managedFields"] = kept
    else:
        (obj.get("metadata") or {}).pop("managedFields", None)


def _entry(entries: list[Entry], manager: str, operation: str, subresource: str, api_version: str) -> Entry:
    for entry in entries:
        if (entry.manager, entry.operation, entry.subresource) == (manager, operation, subresource):
            entry.api_version = api_version
            return entry
    entries.append(Entry(manager, operation, api_version, "", subresource))
    return entries[-1]


def record_update(
    old: dict | None, new: dict, *, manager: str, api_version: str, subresource: str, now: str
) -> None:
    """Give `manager` the leaves `new` changes from `old` (in `new`'s managedFields), taking them
    from every other manager."""
    entries = _entries(old)
    before = leaves(owned_view(old)) if old else {}
    after = leaves(owned_view(new))
    changed = {path for path, value in after.items() if before.get(path, MISSING) != value}
    gone = set(before) - set(after)
    for entry in entries:
        entry.paths -= changed | gone
    if changed:
        mine = _entry(entries, manager, "Update", subresource, api_version)
        mine.paths |= changed
        mine.time = now
    _store(new, entries)


def _same(live: Any, applied: Any) -> bool:
    if applied == {}:
        return isinstance(live, dict)
    return live == applied


def server_side_apply(
    live: dict | None,
    applied: dict,
    *,
    manager: str,
    api_version: str,
    subresource: str,
    force: bool,
    now: str,
) -> dict:
    """The object after `manager` applies `applied` to `live` (None: a create); raises `ApplyConflict`."""
    live = live or {}
    entries = _entries(live)
    sent = leaves(owned_view(applied))
    conflicts: dict[str, list[Path]] = {}
    for path, value in sent.items():
        current = lookup(live, path)
        if current is MISSING or _same(current, value):
            continue
        for entry in entries:
            if entry.manager != manager and path in entry.paths:
                conflicts.setdefault(entry.manager, []).append(path)
    if conflicts and not force:
        raise ApplyConflict({m: [dotted(p) for p in paths] for m, paths in conflicts.items()})

    mine = _entry(entries, manager, "Apply", subresource, api_version)
    before = mine.paths
    mine.paths = set(sent)
    mine.time = now
    taken = {path for paths in conflicts.values() for path in paths}
    others: set[Path] = set()
    for entry in entries:
        if entry is not mine:
            entry.paths -= taken
            others |= entry.paths
    result = copy.deepcopy(live)
    for path in sorted(before - mine.paths - others, key=len, reverse=True):
        remove(result, path, others | mine.paths)
    result = apply_merge(result, applied)
    _store(result, entries)
    return result
