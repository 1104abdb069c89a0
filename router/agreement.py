"""Whether two revisions answered one request alike: the canary's answer to a mirrored request
against the answer the client got from the stable revision (the rollout's agreement check)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from router.forward import HttpReply
from serving.protocol import grpc_codec, v2
from serving.protocol.grpc_http import unframe

__all__ = ["NotComparable", "agreeing_rows", "answers_agree", "outputs_of", "signatures_problem"]

#: V2 datatypes whose values a tolerance can compare, and those that hold class scores.
_NUMBERS = frozenset({"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"})
_FLOATS = frozenset({"FP16", "FP32", "FP64", "BF16"})


class NotComparable(ValueError):
    """Two revisions' answers that cannot be compared (different shapes, labels without a tolerance)."""


def agreeing_rows(stable: np.ndarray, canary: np.ndarray, tolerance: float | None) -> tuple[int, int]:
    """(rows that agree, rows compared) between two answers to the same request."""
    rows = _row_agreement(stable, canary, tolerance)
    return int(rows.sum()), int(rows.size)


def _row_agreement(stable: np.ndarray, canary: np.ndarray, tolerance: float | None) -> np.ndarray:
    """Per row (the first axis), whether the two answers agree.

    Without a tolerance the answers are a classifier's: class scores (rows of two or more) agree on
    their argmax, labels (integers, strings) must be equal. With one, numbers agree within it
    (absolute, or relative to the stable answer's size, whichever is larger), every value of a row.
    """
    if stable.shape != canary.shape:
        raise NotComparable(f"answers of different shapes: {list(stable.shape)} and {list(canary.shape)}")
    rows = stable.shape[0] if stable.ndim else 1
    s = stable.reshape(rows, -1)
    c = canary.reshape(rows, -1)
    if tolerance is not None:
        if not (np.issubdtype(s.dtype, np.number) and np.issubdtype(c.dtype, np.number)):
            raise NotComparable(f"a tolerance compares numbers, not {s.dtype} and {c.dtype}")
        sf, cf = s.astype(float), c.astype(float)
        bound = np.maximum(tolerance, tolerance * np.abs(sf))
        return np.all(np.abs(sf - cf) <= bound, axis=1)
    if s.shape[1] >= 2 and np.issubdtype(s.dtype, np.floating):
        return s.argmax(axis=1) == c.argmax(axis=1)
    if np.issubdtype(s.dtype, np.integer) or s.dtype.kind in "OUSb":
        return np.all(s == c, axis=1)
    raise NotComparable("one number per row is a regressor's answer: give the agreement check a tolerance")


def answers_agree(
    stable: Mapping[str, np.ndarray], canary: Mapping[str, np.ndarray], tolerance: float | None
) -> tuple[int, int]:
    """(rows that agree on every output both answers have, rows compared)."""
    names = sorted(set(stable) & set(canary))
    if not names:
        raise NotComparable(f"no output in common: {sorted(stable)} and {sorted(canary)}")
    agree: np.ndarray | None = None
    for name in names:
        s, c = np.asarray(stable[name]), np.asarray(canary[name])
        rows = _row_agreement(s, c, tolerance)
        agree = rows if agree is None else agree & rows
    assert agree is not None
    return int(agree.sum()), int(agree.size)


def signatures_problem(
    stable: Sequence[Mapping[str, Any]], canary: Sequence[Mapping[str, Any]], tolerance: float | None
) -> str | None:
    """Why `answers_agree` could never compare the answers of two models with these outputs (their
    signatures: `{"name", "datatype", "shape"}` each, -1 for a dimension known only at run time), or
    None when it can, or when only their answers can tell. The same rules as `_row_agreement`,
    judged before either model answers."""
    s = {o["name"]: o for o in stable}
    c = {o["name"]: o for o in canary}
    names = sorted(set(s) & set(c))
    if not names:
        return f"the models have no output in common: {sorted(s)} and {sorted(c)}"
    for name in names:
        a, b = s[name], c[name]
        types = {a["datatype"], b["datatype"]}
        if not _shapes_may_match(a["shape"], b["shape"]):
            shapes = f"{list(a['shape'])} in one model and {list(b['shape'])} in the other"
            return f"output '{name}' has shape {shapes}"
        if tolerance is not None:
            if not types <= _NUMBERS | _FLOATS:
                return f"a tolerance compares numbers, and output '{name}' is {' and '.join(sorted(types))}"
        elif "BYTES" in types and len(types) > 1:
            return f"output '{name}' is labels of different types: {' and '.join(sorted(types))}"
        elif types <= _FLOATS and _row_size(a["shape"]) == 1 == _row_size(b["shape"]):
            return (
                f"output '{name}' is one number per row, a regressor's answer: "
                "give the agreement check a tolerance"
            )
    return None


def _shapes_may_match(a: Sequence[int], b: Sequence[int]) -> bool:
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b, strict=True))


def _row_size(shape: Sequence[int]) -> int | None:
    """Values per row (the first axis), None when a dimension is known only at run time."""
    rest = shape[1:]
    return None if any(d < 0 for d in rest) else int(np.prod(rest, dtype=np.int64))


def outputs_of(reply: HttpReply, protocol: str) -> dict[str, np.ndarray]:
    """An answer's outputs by name, in the protocol it came back in (`v1`: its `predictions`)."""
    if protocol == "grpc":
        message = pb.ModelInferResponse.FromString(unframe(reply.body, reply.headers.get("grpc-encoding")))
        return grpc_codec.decode_response(message)
    if protocol == "v1":
        predictions = v2.loads_object(reply.body, "V1 answer").get("predictions")
        if predictions is None:
            raise NotComparable("a V1 answer without 'predictions'")
        return {"predictions": np.asarray(predictions)}
    length = reply.headers.get(v2.HEADER_LENGTH)
    return v2.decode_response(reply.body, int(length) if length is not None else None)
