"""The three client-side patch types: JSON merge patch, (simplified) strategic merge patch, JSON patch.

Strategic merge patch here is a JSON merge patch that merges lists of objects keyed by `name`
(containers, ports, env, volumes) item by item, honouring `$patch: delete` on such an item; every
other list is replaced whole, and the other directives (`$retainKeys`, `$setElementOrder/...`,
`$deleteFromPrimitiveList/...`) are dropped.
"""

from __future__ import annotations

import copy
from typing import Any

from tests.kube_api._errors import KubeError


def is_keyed_list(value: Any) -> bool:
    """A non-empty list of objects that each have a distinct `name`: merged item by item."""
    if not isinstance(value, list) or not value:
        return False
    if not all(isinstance(item, dict) and isinstance(item.get("name"), str) for item in value):
        return False
    return len({item["name"] for item in value}) == len(value)


def _is_directive(key: str) -> bool:
    return key.startswith("$")


def merge_patch(target: Any, patch: Any, *, strategic: bool = False) -> Any:
    """RFC 7386 merge patch of `patch` onto `target` (neither is changed); `strategic` merges keyed lists."""
    if not isinstance(patch, dict):
        if strategic and is_keyed_list(target) and _names_items(patch):
            return _merge_keyed(target, patch)
        return copy.deepcopy(_strip(patch) if strategic else patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if strategic and _is_directive(key):
            continue
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value, strategic=strategic)
    return result


def _names_items(patch: Any) -> bool:
    return isinstance(patch, list) and bool(patch) and all(isinstance(i, dict) and "name" in i for i in patch)


def _merge_keyed(target: list, patch: list) -> list:
    result = copy.deepcopy(target)
    index = {item["name"]: i for i, item in enumerate(result)}
    deleted = set()
    for item in patch:
        name = item["name"]
        if item.get("$patch") == "delete":
            deleted.add(name)
        elif name in index:
            result[index[name]] = merge_patch(result[index[name]], item, strategic=True)
        else:
            index[name] = len(result)
            result.append(_strip(item))
    return [item for item in result if item["name"] not in deleted]


def _strip(value: Any) -> Any:
    """Drop strategic-merge directives from a value that is set rather than merged."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not _is_directive(k) and v is not None}
    if isinstance(value, list):
        return [_strip(item) for item in value]
    return value


def _invalid(message: str) -> KubeError:
    return KubeError(
        422, "Invalid", f"the server rejected our request due to an error in our request: {message}"
    )


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise _invalid(f"invalid JSON pointer {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _container(doc: Any, parts: list[str], path: str) -> Any:
    for part in parts:
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            raise _invalid(f"doc is missing path: {path!r}")
    return doc


def _read(doc: Any, path: str) -> Any:
    return _container(doc, _pointer(path), path)


def _remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        raise _invalid("cannot remove the whole document")
    parent = _container(doc, parts[:-1], path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise _invalid(f"unable to remove nonexistent key: {last}: missing value")


def _add(doc: Any, path: str, value: Any, *, replace: bool = False) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent = _container(doc, parts[:-1], path)
    last = parts[-1]
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise _invalid(f"replace operation does not apply: doc is missing key: {path}")
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-" and not replace:
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent) - (1 if replace else 0):
            if replace:
                parent[int(last)] = value
            else:
                parent.insert(int(last), value)
        else:
            raise _invalid(f"index out of bounds in {path!r}")
    else:
        raise _invalid(f"doc is missing path: {path!r}")
    return doc


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch: add, remove, replace, move, copy, test."""
    if not isinstance(operations, list):
        raise KubeError(
            400, "BadRequest", "json: cannot unmarshal object into Go value of type jsonpatch.Patch"
        )
    doc = copy.deepcopy(target)
    for operation in operations:
        op, path = operation.get("op"), operation.get("path", "")
        if op == "add":
            doc = _add(doc, path, copy.deepcopy(operation.get("value")))
        elif op == "remove":
            _remove(doc, path)
        elif op == "replace":
            doc = _add(doc, path, copy.deepcopy(operation.get("value")), replace=True)
        elif op == "move":
            doc = _add(doc, path, _remove(doc, operation["from"]))
        elif op == "copy":
            doc = _add(doc, path, copy.deepcopy(_read(doc, operation["from"])))
        elif op == "test":
            if _read(doc, path) != operation.get("value"):
                raise _invalid(f"testing value {path} failed")
        else:
            raise _invalid(f"Unexpected kind: {op}")
    return doc
