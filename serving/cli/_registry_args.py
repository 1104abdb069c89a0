"""The pure parsing behind `servegate registry`'s arguments: KEY=VALUE pairs, gates, model refs."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serving.registry import Gate, RegistryUri

__all__ = ["parse_gate", "parse_pairs", "parse_ref"]

_GATE = re.compile(r"^\s*(?P<metric>[^<>=!\s]+)\s*(?P<op>[<>=!]+)\s*(?P<threshold>[^<>=!\s]\S*)\s*$")


def parse_pairs(values: Sequence[str], *, numeric: bool = False) -> dict[str, Any]:
    """`KEY=VALUE` items as a dict (values as floats when `numeric`). ValueError names the bad item:
    no `=`, an empty key, a key given twice, or (numeric) a value that is not a finite number."""
    out: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"'{item}' is not KEY=VALUE")
        if key in out:
            raise ValueError(f"'{key}' is given twice")
        if numeric:
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"'{item}': the value of a metric must be a number") from None
            if not math.isfinite(number):
                raise ValueError(f"'{item}': the value of a metric must be a finite number")
            out[key] = number
        else:
            out[key] = value
    return out


def parse_gate(text: str, alias: str) -> Gate:
    """A gate from `METRIC OP THRESHOLD` (`accuracy>=0.95`, `latency_ms < 20`), OP one of the
    registry's GATE_OPS. ValueError says what is wrong with `text`."""
    from serving.registry import Gate
    from serving.registry.types import GATE_OPS

    match = _GATE.match(text)
    ops = " ".join(GATE_OPS)
    if match is None:
        raise ValueError(f"'{text}' is not METRIC OP THRESHOLD (OP one of {ops}), e.g. 'accuracy>=0.95'")
    if match["op"] not in GATE_OPS:
        raise ValueError(f"'{text}': unknown operator '{match['op']}'; use one of {ops}")
    try:
        threshold = float(match["threshold"])
    except ValueError:
        raise ValueError(f"'{text}': the threshold '{match['threshold']}' is not a number") from None
    if not math.isfinite(threshold):
        raise ValueError(f"'{text}': the threshold must be a finite number")
    return Gate(alias, match["metric"], match["op"], threshold)


def parse_ref(text: str) -> RegistryUri:
    """`NAME`, `NAME/VERSION`, `NAME@ALIAS` or a `registry://` URI. A bare NAME gives a RegistryUri
    with neither version nor alias (the model itself). RegistryError says what is wrong."""
    from serving.registry import RegistryError, RegistryUri, is_registry_uri, parse_uri
    from serving.registry.types import NAME_PATTERN

    if is_registry_uri(text):
        return parse_uri(text)
    if "/" in text or "@" in text:
        return parse_uri(f"registry://{text}")
    if not NAME_PATTERN.match(text):
        raise RegistryError(f"bad model name '{text}': letters, digits, '.', '_' and '-'")
    return RegistryUri(text)
