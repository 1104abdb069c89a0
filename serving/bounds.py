"""Limits on what a parsed document may be: manifests, JSON request bodies, pipeline parameters.

A cap on the bytes of a request is not enough. A YAML alias ("billion laughs") lets a few hundred
bytes stand for millions of values, which only blow up later, when the value is copied, validated
or serialized for the database; and a megabyte of `[[[[` nests past Python's recursion limit. So
every parsed document is also measured: `measure` walks it once, YAML aliases expanded, counting
levels, values and the bytes it would take as JSON, and stops at the first bound it passes, so
refusing costs at most `max_nodes` steps however large the value would expand.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any

__all__ = [
    "MAX_DEPTH",
    "MAX_KEPT_BYTES",
    "MAX_NODES",
    "Bounds",
    "BoundsError",
    "Size",
    "loads_json",
    "measure",
]

MAX_DEPTH = 64
"""Levels of nested containers (mappings / JSON objects, sequences / arrays) in one document."""

MAX_NODES = 100_000
"""Values (containers, keys and scalars) in one document, a YAML alias counted as every value it
stands for each time it is used."""

MAX_KEPT_BYTES = 1 << 20
"""Bytes one kept value (a resource's manifest, a request body, a pipeline parameter) takes as JSON."""

# Integers longer than this many bits are sized by estimate: `str()` of a huge int is slow (and
# refused past 4300 digits), and an estimate that errs large is enough to refuse it.
_EXACT_INT_BITS = 256


@dataclass(frozen=True, slots=True)
class Bounds:
    """How large a parsed document may be; each field's unit is in its name."""

    #: levels of nested containers
    max_depth: int = MAX_DEPTH
    #: values: containers, mapping keys and scalars, aliases expanded
    max_nodes: int = MAX_NODES
    #: bytes as JSON (`json.dumps` with its default separators and ASCII escapes)
    max_bytes: int = MAX_KEPT_BYTES


@dataclass(frozen=True, slots=True)
class Size:
    """What `measure` found: the deepest nesting (levels), values, and bytes as JSON."""

    depth: int
    nodes: int
    json_bytes: int


class BoundsError(ValueError):
    """A parsed value past one of its `Bounds`; the message names the limit (as a predicate:
    callers prefix what was measured, `the request body ...`).

    `limit` is the `Bounds` field that was passed; `too_large` is True for `max_bytes`, which
    HTTP answers with 413 (the others are malformed input: 400).
    """

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit
        self.message = message

    @property
    def too_large(self) -> bool:
        return self.limit == "max_bytes"

    @classmethod
    def too_deep(cls, max_depth: int) -> BoundsError:
        return cls("max_depth", f"nests deeper than the limit of {max_depth} levels")

    @classmethod
    def too_many(cls, max_nodes: int) -> BoundsError:
        return cls(
            "max_nodes",
            f"holds more than the limit of {max_nodes} values "
            "(a YAML alias counts as every value it stands for, each time it is used)",
        )

    @classmethod
    def too_big(cls, max_bytes: int) -> BoundsError:
        return cls("max_bytes", f"is larger than the limit of {max_bytes} bytes as JSON")


def measure(value: Any, bounds: Bounds | None = None) -> Size:
    """The size of a parsed value, YAML aliases expanded; raises BoundsError at the first bound it
    passes (a value that contains itself, a recursive alias, is too deep).

    A container reached again (an alias) is sized once and then added as a whole, so refusing a
    billion laughs takes microseconds; the work is bounded by `max_nodes` whatever the value.
    """
    return _Walk(bounds or Bounds()).run(value)


_CONTAINERS = (dict, list, tuple, set, frozenset)


class _Frame:
    """A container being sized: its children still to visit, and what its visited part adds up to."""

    __slots__ = ("children", "container", "depth", "json_bytes", "nodes")

    def __init__(self, container: Any, children: Any, nodes: int, json_bytes: int) -> None:
        self.container = container
        self.children = children
        self.depth = 0  # of its deepest child seen so far
        self.nodes = nodes
        self.json_bytes = json_bytes


class _Walk:
    """Depth first and iterative (no recursion limit to reach), sizes of containers kept by id."""

    def __init__(self, bounds: Bounds) -> None:
        self.bounds = bounds
        self.nodes = 0  # the whole value's so far, aliases expanded: checked against the bounds
        self.json_bytes = 0
        self.sizes: dict[int, Size] = {}
        self.path: list[_Frame] = []
        self.on_path: set[int] = set()

    def run(self, value: Any) -> Size:
        if not isinstance(value, _CONTAINERS):
            self._add(1, _scalar_bytes(value))
            return Size(0, 1, self.json_bytes)
        self._open(value)
        while True:
            frame = self.path[-1]
            child = next(frame.children, _END)
            if child is _END:
                self.path.pop()
                self.on_path.discard(id(frame.container))
                size = Size(frame.depth + 1, frame.nodes, frame.json_bytes)
                self.sizes[id(frame.container)] = size
                if not self.path:
                    return size
                self._fold(self.path[-1], size)
            elif not isinstance(child, _CONTAINERS):
                nbytes = _scalar_bytes(child)
                frame.nodes += 1
                frame.json_bytes += nbytes
                self._add(1, nbytes)
            elif id(child) in self.sizes:  # seen before: an alias
                size = self.sizes[id(child)]
                if len(self.path) + size.depth > self.bounds.max_depth:
                    raise BoundsError.too_deep(self.bounds.max_depth)
                self._fold(frame, size)
                self._add(size.nodes, size.json_bytes)
            else:
                self._open(child)

    def _open(self, container: Any) -> None:
        if len(self.path) >= self.bounds.max_depth or id(container) in self.on_path:
            raise BoundsError.too_deep(self.bounds.max_depth)
        count = len(container)
        # every child is at least one value: a wide container is refused before it is walked
        if self.nodes + 1 + count > self.bounds.max_nodes:
            raise BoundsError.too_many(self.bounds.max_nodes)
        nbytes = 2 + 2 * max(count - 1, 0)  # brackets and ", " between items
        nodes = 1
        if isinstance(container, dict):
            nodes += count
            # ": " in each pair; JSON keys are strings, a non-string key its JSON in quotes
            nbytes += sum(_scalar_bytes(k) + (0 if isinstance(k, str) else 2) + 2 for k in container)
            children = iter(container.values())
        else:
            children = iter(container)
        self._add(nodes, nbytes)
        self.path.append(_Frame(container, children, nodes, nbytes))
        self.on_path.add(id(container))

    @staticmethod
    def _fold(frame: _Frame, size: Size) -> None:
        frame.depth = max(frame.depth, size.depth)
        frame.nodes += size.nodes
        frame.json_bytes += size.json_bytes

    def _add(self, nodes: int, json_bytes: int) -> None:
        self.nodes += nodes
        self.json_bytes += json_bytes
        if self.nodes > self.bounds.max_nodes:
            raise BoundsError.too_many(self.bounds.max_nodes)
        if self.json_bytes > self.bounds.max_bytes:
            raise BoundsError.too_big(self.bounds.max_bytes)


_END = object()


def _scalar_bytes(value: Any) -> int:
    if isinstance(value, str):
        return len(encode_basestring_ascii(value))
    if value is None or value is True:
        return 4
    if value is False:
        return 5
    if isinstance(value, int):
        bits = value.bit_length()
        return len(str(value)) if bits <= _EXACT_INT_BITS else bits // 3 + 2
    if isinstance(value, float):
        return len(repr(value)) if math.isfinite(value) else len("-Infinity")
    return len(str(value)) + 2  # dates, timestamps, bytes: written as strings


def loads_json(data: str | bytes, bounds: Bounds | None = None) -> Any:
    """`json.loads(data)`, measured; raises json.JSONDecodeError for bad JSON (as json.loads does)
    and BoundsError past a bound, including nesting too deep for the parser itself."""
    try:
        value = json.loads(data)
    except RecursionError:
        # json's C scanner recurses per level: a document this deep is far past any max_depth.
        raise BoundsError.too_deep((bounds or Bounds()).max_depth) from None
    measure(value, bounds)
    return value
