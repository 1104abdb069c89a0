"""Open Inference Protocol datatypes and their numpy / byte forms.

Tensors travel in three forms: JSON lists, raw little-endian bytes (the V2 binary extension and
gRPC `raw_*_contents`), and numpy arrays inside the server. BYTES tensors are numpy object arrays
of `bytes`; BF16 tensors use `ml_dtypes.bfloat16`, which numpy lacks.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import ml_dtypes
import numpy as np

from serving.errors import InvalidInput

__all__ = [
    "DATATYPES",
    "datatype_of",
    "element_count",
    "from_json_data",
    "from_raw",
    "numpy_dtype",
    "to_json_data",
    "to_raw",
    "validate_shape",
]

#: V2 datatype name -> numpy dtype ("BYTES" is an object array of bytes).
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "BYTES": np.dtype(object),
}
_NAMES: dict[np.dtype, str] = {dtype: name for name, dtype in DATATYPES.items()}
# Little-endian forms for the wire; numpy's native order is little-endian on every platform we run on,
# but being explicit keeps a big-endian host correct.
_WIRE: dict[str, np.dtype] = {
    name: dtype.newbyteorder("<") for name, dtype in DATATYPES.items() if name not in ("BYTES", "BF16")
}
_LENGTH = struct.Struct("<I")


def numpy_dtype(datatype: str) -> np.dtype:
    try:
        return DATATYPES[datatype]
    except KeyError:
        raise InvalidInput(
            f"unsupported datatype '{datatype}'; expected one of {', '.join(DATATYPES)}"
        ) from None


def datatype_of(array: np.ndarray) -> str:
    """The V2 datatype of a numpy array; str/bytes arrays are BYTES."""
    dtype = array.dtype
    name = _NAMES.get(dtype)
    if name is not None:
        return name
    if dtype.kind in ("U", "S", "O"):
        return "BYTES"
    raise InvalidInput(f"numpy dtype {dtype} has no V2 datatype")


#: no tensor dimension, nor element count, may reach 2**63 (numpy's and protobuf's int64 limit).
_MAX_ELEMENTS = 2**63 - 1


def validate_shape(shape: object, what: str) -> tuple[int, ...]:
    if not isinstance(shape, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidInput(f"{what}: shape must be a list of non-negative integers, got {shape!r}")
    if math.prod(d for d in shape if d) > _MAX_ELEMENTS:
        raise InvalidInput(f"{what}: shape {list(shape)} is larger than any tensor can be")
    return tuple(shape)


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def _as_bytes(item: object) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode()
    if isinstance(item, bytearray | memoryview):
        return bytes(item)
    # Numbers and booleans in a BYTES tensor are sent as their text, like Triton does.
    return str(item).encode()


def from_json_data(data: object, datatype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A JSON `data` list (flat or nested, row-major) as an array of `shape`.

    Nothing is coerced with loss: null or text in a numeric tensor, a fraction in an integer one, or
    a value outside the datatype's range is refused rather than turned into NaN, truncated or wrapped.
    """
    dtype = numpy_dtype(datatype)
    if not isinstance(data, list):
        raise InvalidInput(f"{what}: data must be a list")
    expected = element_count(shape)
    if datatype == "BYTES":
        flat = np.asarray(data, dtype=object).ravel()
        if any(isinstance(item, list) for item in flat):
            raise InvalidInput(f"{what}: BYTES data is ragged (nested lists of different lengths)")
        if flat.size != expected:
            raise _count_mismatch(what, flat.size, shape)
        out = np.empty(flat.size, dtype=object)
        out[:] = [_as_bytes(x) for x in flat]
        return _reshape(out, shape, what)
    try:
        probe = np.asarray(data)
    except ValueError:
        raise InvalidInput(f"{what}: data is ragged (nested lists of different lengths)") from None
    if probe.size != expected:
        raise _count_mismatch(what, probe.size, shape)
    return _reshape(_json_numbers(data, probe, datatype, dtype, what), shape, what)


#: numpy kinds of JSON-parsed data each datatype family accepts (ints are fine for floats).
_JSON_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}


def _json_numbers(data: list, probe: np.ndarray, datatype: str, dtype: np.dtype, what: str) -> np.ndarray:
    if not probe.size:
        return probe.astype(dtype)
    kind = "f" if datatype == "BF16" else dtype.kind
    if kind in "iu" and probe.dtype.kind in "fO":
        # numpy reads integers past the int64 range as float64, losing digits: look at the values.
        exact = np.asarray(data, dtype=object)
        if all(type(value) is int for value in exact.flat):
            _check_range(min(exact.flat), max(exact.flat), datatype, dtype, what)
            return exact.astype(dtype)
    if probe.dtype.kind not in _JSON_KINDS[kind]:
        found = {"f": "a fraction", "b": "a boolean", "U": "text"}.get(
            probe.dtype.kind, "null or a non-number"
        )
        raise InvalidInput(f"{what}: data does not fit datatype {datatype}: it holds {found}")
    if kind in "iu":
        _check_range(probe.min(), probe.max(), datatype, dtype, what)
    return probe.astype(dtype, copy=False)


def _check_range(low: int, high: int, datatype: str, dtype: np.dtype, what: str) -> None:
    info = np.iinfo(dtype)
    for value in (low, high):
        if not info.min <= value <= info.max:
            raise InvalidInput(f"{what}: data does not fit datatype {datatype}: {value} is out of range")


def _reshape(array: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    try:
        return array.reshape(shape)
    except ValueError as exc:  # dimensions numpy cannot represent, even for zero elements
        raise InvalidInput(f"{what}: cannot make a tensor of shape {list(shape)}: {exc}") from None


def _count_mismatch(what: str, got: int, shape: tuple[int, ...]) -> InvalidInput:
    return InvalidInput(
        f"{what}: data has {got} elements but shape {list(shape)} needs {element_count(shape)}"
    )


def to_json_data(array: np.ndarray) -> object:
    """A flat, JSON-serialisable form of `array` (numpy arrays are left to orjson)."""
    if array.dtype == object or array.dtype.kind in ("U", "S"):
        return [_decode_text(x) for x in array.ravel().tolist()]
    if array.dtype == DATATYPES["BF16"]:
        return array.astype(np.float32).ravel()
    return np.ascontiguousarray(array).ravel()


def _decode_text(item: object) -> str:
    if isinstance(item, bytes):
        try:
            return item.decode()
        except UnicodeDecodeError:
            raise InvalidInput(
                "a BYTES output is not UTF-8 text; request it as binary data instead of JSON"
            ) from None
    return str(item)


def from_raw(buffer: bytes | memoryview, datatype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    """Raw little-endian bytes (V2 binary extension, gRPC raw contents) as an array of `shape`."""
    count = element_count(shape)
    if datatype == "BYTES":
        return _reshape(_deserialize_bytes(buffer, count, what), shape, what)
    dtype = numpy_dtype(datatype)
    expected = count * dtype.itemsize
    if len(buffer) != expected:
        raise InvalidInput(
            f"{what}: got {len(buffer)} bytes of {datatype} data but shape {list(shape)} needs {expected}"
        )
    wire = dtype if datatype == "BF16" else _WIRE[datatype]
    return _reshape(np.frombuffer(buffer, dtype=wire).astype(dtype, copy=False), shape, what)


def to_raw(array: np.ndarray) -> bytes:
    datatype = datatype_of(array)
    if datatype == "BYTES":
        return _serialize_bytes(array)
    if datatype == "BF16":
        return np.ascontiguousarray(array).tobytes()
    return np.ascontiguousarray(array, dtype=_WIRE[datatype]).tobytes()


def _serialize_bytes(array: np.ndarray) -> bytes:
    parts: list[bytes] = []
    for item in array.ravel().tolist():
        raw = _as_bytes(item)
        parts.append(_LENGTH.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _deserialize_bytes(buffer: bytes | memoryview, count: int, what: str) -> np.ndarray:
    view = memoryview(buffer)
    # Collected in a list, not preallocated: a lying shape must not make the server allocate.
    items: list[bytes] = []
    offset = 0
    for i in range(count):
        if offset + 4 > len(view):
            raise InvalidInput(f"{what}: BYTES data ends after {i} of {count} elements")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInput(f"{what}: BYTES element {i} claims {length} bytes past the end of the data")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != len(view):
        raise InvalidInput(f"{what}: {len(view) - offset} bytes left over after {count} BYTES elements")
    out = np.empty(count, dtype=object)
    out[:] = items
    return out
