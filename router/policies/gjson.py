"""GJSON paths, the subset KServe's InferenceGraph conditions use.

Follows https://github.com/tidwall/gjson/blob/master/SYNTAX.md, and GJSON's `Get` for what the
document leaves open. A KServe condition matches when its path *exists* in the JSON body, so
existence is the part that must agree with GJSON exactly:

- `name.last`, `children.0`, `fav\\.movie` (escaped dot), `child*.2` / `c?ildren` (wildcards);
- `friends.#` (length), `friends.#.age` (each element's `age`, missing ones left out);
- `friends.#(last=="Murphy").first` (first match; no match does not exist) and
  `friends.#(age>45)#.last` (all matches; no match is `[]`, which *exists*, as in GJSON);
- operators `==` (or `=`), `!=`, `<`, `<=`, `>`, `>=`, `%` (like), `!%` (not like), and `~true` /
  `~false` values; a query with no operator tests existence (`#(nets.#(=="fb"))`);
- `|` pipes, `@this`, and `[path,...]` multipaths, so KServe's `[@this].#(instances.0.x>0.5)` works.

One extension: `@` and `@this` on the left of a query name the element itself, so
`scores.#(@>0.5)` works like GJSON's own `scores.#(>0.5)`.

Anything else (other modifiers, `{...}` multipaths, `!` literals, `#[...]`) is rejected by `parse`
with a ValueError, as are `&&` and `||`: GJSON has no such operators, and KServe would quietly
compare against the text after the operator instead.

Values compare as GJSON compares them: a string element against the query value as text, a number
against the value as a number (0 when it is not one), true/false only in the few ways GJSON allows,
and null, objects and arrays never.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = ["Path", "Result", "get", "parse"]


@dataclass(frozen=True, slots=True)
class Result:
    """What a path found: `exists` is GJSON's `Exists()`; `value` is the JSON value (None if absent)."""

    exists: bool
    value: Any = None


_MISSING = Result(False)


@dataclass(frozen=True, slots=True)
class _Key:
    name: str
    glob: re.Pattern[str] | None  # set when the key has an unescaped `*` or `?`


@dataclass(frozen=True, slots=True)
class _Count:
    """`#`: the length of an array, or each element's rest-of-path when more follows."""


@dataclass(frozen=True, slots=True)
class _This:
    """`@this`: the current value."""


@dataclass(frozen=True, slots=True)
class _Multi:
    paths: tuple[Path, ...]


@dataclass(frozen=True, slots=True)
class _Query:
    left: Path | None  # None: the element itself
    op: str | None  # None: the left side only has to exist
    value: str  # the right side, unquoted: GJSON compares with its text
    tilde: bool  # `~true` / `~false`: the left side is converted to a boolean first
    all: bool  # `#(...)#`


_Component = _Key | _Count | _This | _Multi | _Query


@dataclass(frozen=True, slots=True)
class Path:
    """A parsed path: groups of components; a group applies to the result of the one before (`|`)."""

    text: str
    groups: tuple[tuple[_Component, ...], ...]

    def __str__(self) -> str:
        return self.text


def parse(path: str) -> Path:
    """Compile a GJSON path; a ValueError says what is wrong and where."""
    return _parse(path)


def get(document: Any, path: str | Path) -> Result:
    """Look `path` up in a parsed JSON document (dicts, lists, str, int, float, bool, None)."""
    compiled = path if isinstance(path, Path) else parse(path)
    result = Result(True, document)
    for group in compiled.groups:
        result = _walk(result.value, group, 0)
        if not result.exists:
            return _MISSING
    return result


# --- parsing -------------------------------------------------------------------------------------

_OPERATORS = ("==", "!=", "<=", ">=", "!%", "=", "<", ">", "%")
_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_BARE_WORD = re.compile(r"[\w*?.\-]+")  # GJSON also takes unquoted text: `#(first%D*)`


@lru_cache(maxsize=512)
def _parse(path: str) -> Path:
    if not path:
        raise ValueError("empty path")
    if path.startswith(".."):
        raise ValueError("JSON Lines paths ('..') are not supported")
    groups: list[tuple[_Component, ...]] = []
    components: list[_Component] = []
    i = 0
    while True:
        component, i = _component(path, i)
        components.append(component)
        if i == len(path):
            break
        separator = path[i]
        i += 1
        if i == len(path):
            raise ValueError(f"path ends with '{separator}'")
        # GJSON treats a '.' before a modifier or a multipath as a pipe.
        if separator == "|" or path[i] in "@[":
            groups.append(tuple(components))
            components = []
    groups.append(tuple(components))
    return Path(path, tuple(groups))


def _component(path: str, i: int) -> tuple[_Component, int]:
    """The component starting at `i`, and the index of the '.' or '|' (or the end) after it."""
    char = path[i]
    if char in ".|":
        raise ValueError(f"empty key at position {i}")
    if char == "#":
        if path.startswith("#(", i):
            return _query(path, i)
        if path.startswith("#[", i):
            raise ValueError(f"'#[...]' at position {i} is GJSON's old query syntax: write '#(...)'")
        return _Count(), _end_of_component(path, i + 1, "'#'")
    if char == "@":
        end = _plain_end(path, i)
        if path[i:end] != "@this":
            raise ValueError(f"modifier '{path[i:end]}' at position {i} is not supported (only @this)")
        return _This(), end
    if char == "[":
        close = _closing(path, i)
        paths = tuple(parse(part.strip()) for part in _split_top_level(path[i + 1 : close]))
        return _Multi(paths), _end_of_component(path, close + 1, "a multipath")
    if char == "{":
        raise ValueError(f"object multipaths ('{{...}}') at position {i} are not supported")
    if char == "!":
        raise ValueError(f"literals ('!...') at position {i} are not supported")
    return _key(path, i)


def _key(path: str, i: int) -> tuple[_Key, int]:
    name: list[str] = []
    pattern: list[str] = []
    wild = False
    while i < len(path) and path[i] not in ".|":
        char = path[i]
        if char == "\\":
            i += 1
            if i == len(path):
                raise ValueError("path ends with an escape ('\\')")
            char = path[i]
            pattern.append(re.escape(char))
        elif char in "*?":
            wild = True
            pattern.append(".*" if char == "*" else ".")
        else:
            pattern.append(re.escape(char))
        name.append(char)
        i += 1
    return _Key("".join(name), re.compile("".join(pattern), re.DOTALL) if wild else None), i


def _query(path: str, start: int) -> tuple[_Query, int]:
    close = _closing(path, start + 1)
    inner = path[start + 2 : close]
    end = close + 1
    every = end < len(path) and path[end] == "#"
    end = _end_of_component(path, end + 1 if every else end, "a query")

    op_at = _operator_start(inner)
    left_text = (inner if op_at is None else inner[:op_at]).strip()
    left = None if left_text in ("", "@", "@this") else _sub_path(left_text, inner)
    if op_at is None:
        return _Query(left, None, "", tilde=False, all=every), end

    rest = inner[op_at:]
    op = next((o for o in _OPERATORS if rest.startswith(o)), None)
    if op is None:
        raise ValueError(f"query '#({inner})' has an unknown operator at '{rest}'")
    value, tilde = _query_value(rest[len(op) :].strip(), op, inner)
    return _Query(left, "==" if op == "=" else op, value, tilde, every), end


def _sub_path(text: str, inner: str) -> Path:
    try:
        return parse(text)
    except ValueError as exc:
        raise ValueError(f"query '#({inner})': {exc}") from None


def _query_value(text: str, op: str, inner: str) -> tuple[str, bool]:
    if not text:
        raise ValueError(f"query '#({inner})' has no value after '{op}'")
    if not text.startswith('"') and ("&&" in text or "||" in text):
        raise ValueError(
            f"query '#({inner})': GJSON has no '&&' or '||' (KServe would compare against the text "
            f"'{text}'); chain queries with '|' instead"
        )
    if text[0] in "!=<>%":
        raise ValueError(f"query '#({inner})' has an unknown operator '{op}{text[0]}'")
    if text.startswith("~"):
        if text not in ("~true", "~false"):
            raise ValueError(f"query '#({inner})': '~' takes true or false, not '{text[1:]}'")
        return text[1:], True
    if text.startswith('"'):
        try:
            decoded = json.loads(text)
        except ValueError:
            raise ValueError(f"query '#({inner})' has a bad string {text}") from None
        if not isinstance(decoded, str):
            raise ValueError(f"query '#({inner})' has a bad string {text}")
        return decoded, False
    if _NUMBER.fullmatch(text) or text in ("true", "false", "null") or _BARE_WORD.fullmatch(text):
        return text, False
    raise ValueError(
        f"query '#({inner})' has a bad value '{text}': use a number, a quoted string, true, false or null"
    )


def _structure(
    text: str, start: int = 0, opening: str = "([", closing: str = ")]"
) -> Iterator[tuple[int, str, int]]:
    """(index, character, bracket depth after it) for every character of `text` from `start` that
    is outside a string and not escaped: the one scan the parsers below share."""
    depth = 0
    i = start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == '"':
            i = _string_end(text, i) + 1
            continue
        if char in opening:
            depth += 1
        elif char in closing:
            depth -= 1
        yield i, char, depth
        i += 1


def _operator_start(inner: str) -> int | None:
    """Where the operator of a query's inside begins, skipping nested queries and strings."""
    return next((i for i, char, depth in _structure(inner) if depth == 0 and char in "!=<>%"), None)


def _closing(path: str, start: int) -> int:
    """The index of the bracket that closes the one at `start`."""
    for i, char, depth in _structure(path, start):
        if depth == 0 and char in ")]":
            return i
    raise ValueError(f"'{path[start]}' at position {start} is never closed")


def _string_end(text: str, start: int) -> int:
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i
        i += 1
    raise ValueError(f"string at position {start} is never closed")


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    start = 0
    for i, char, depth in _structure(text, opening="([{", closing=")]}"):
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _plain_end(path: str, i: int) -> int:
    while i < len(path) and path[i] not in ".|":
        i += 1
    return i


def _end_of_component(path: str, i: int, what: str) -> int:
    if i < len(path) and path[i] not in ".|":
        raise ValueError(f"unexpected '{path[i]}' at position {i} after {what}")
    return i


# --- evaluation ----------------------------------------------------------------------------------


def _walk(value: Any, components: tuple[_Component, ...], i: int) -> Result:
    if i == len(components):
        return Result(True, value)
    component = components[i]
    match component:
        case _Key():
            found = _child(value, component)
            return _MISSING if found is _MISSING else _walk(found.value, components, i + 1)
        case _Count():
            if isinstance(value, dict):
                return _walk(value["#"], components, i + 1) if "#" in value else _MISSING
            if not isinstance(value, list):
                return _MISSING
            if i + 1 == len(components):
                return Result(True, len(value))
            return Result(True, _each(value, components, i + 1))
        case _This():
            return _walk(value, components, i + 1)
        case _Multi():
            found = [r.value for r in (get(value, p) for p in component.paths) if r.exists]
            return _walk(found, components, i + 1)
        case _Query():
            if not isinstance(value, list):
                return _MISSING
            matches = [element for element in value if _matches(component, element)]
            if component.all:
                return Result(True, _each(matches, components, i + 1))
            return _walk(matches[0], components, i + 1) if matches else _MISSING
    raise AssertionError(component)


def _each(elements: list[Any], components: tuple[_Component, ...], i: int) -> list[Any]:
    """The rest of the path on every element; elements where it does not exist are left out."""
    return [r.value for r in (_walk(e, components, i) for e in elements) if r.exists]


def _child(value: Any, key: _Key) -> Result:
    if isinstance(value, dict):
        if key.glob is None:
            return Result(True, value[key.name]) if key.name in value else _MISSING
        for name, child in value.items():
            if key.glob.fullmatch(name):
                return Result(True, child)
        return _MISSING
    if isinstance(value, list) and key.glob is None and key.name.isascii() and key.name.isdigit():
        index = int(key.name)
        return Result(True, value[index]) if index < len(value) else _MISSING
    return _MISSING


def _matches(query: _Query, element: Any) -> bool:
    found = Result(True, element) if query.left is None else get(element, query.left)
    exists, value = found.exists, found.value
    if query.tilde:
        # GJSON turns the left side into a boolean first; a missing one counts as false.
        exists, value = True, exists and _truthy(value)
    if not exists:
        return False
    if query.op is None:
        return True
    return _compare(value, query.op, query.value)


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.lower() in ("1", "t", "true")
    if isinstance(value, int | float):
        return value != 0
    return False


def _compare(value: Any, op: str, text: str) -> bool:
    if isinstance(value, bool):
        if value:
            return {"==": text == "true", "!=": text != "true", ">": text == "false", ">=": True}.get(
                op, False
            )
        return {"==": text == "false", "!=": text != "false", "<": text == "true", "<=": True}.get(op, False)
    if isinstance(value, str):
        if op in ("%", "!%"):
            return bool(_glob(text).fullmatch(value)) == (op == "%")
        return _ordered(value, op, text)
    if isinstance(value, int | float):
        try:
            number = float(text)
        except ValueError:
            number = 0.0  # GJSON's ParseFloat error leaves 0
        return _ordered(value, op, number)
    return False  # null, objects and arrays match no comparison


def _ordered(left: Any, op: str, right: Any) -> bool:
    match op:
        case "==":
            return left == right
        case "!=":
            return left != right
        case "<":
            return left < right
        case "<=":
            return left <= right
        case ">":
            return left > right
        case ">=":
            return left >= right
    return False


@lru_cache(maxsize=256)
def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.DOTALL
    )
