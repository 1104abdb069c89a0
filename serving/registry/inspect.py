"""What an artifact being registered is: its format, checked (or inferred), and its signature.

Nothing here runs the model or unpickles anything: an artifact is untrusted until someone deploys
it, and a pickle runs code from its author as it loads (joblib and .pkl files, torch.save files, and
the pickled parts of a torch.export archive alike). So ONNX is parsed as protobuf, torch archives are
read as zip files (torch.export keeps its graph as JSON in `models/model.json`), scikit-learn files
are recognized by their leading bytes, and python files are parsed with `ast`.
"""

from __future__ import annotations

import ast
import bz2
import contextlib
import json
import lzma
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from predictors.runtimes import FORMATS, SUFFIXES, model_file, normalize_format
from serving.errors import InvalidInput, ModelFailure
from serving.protocol.datatypes import datatype_of
from serving.protocol.types import TensorSpec
from serving.registry.types import InvalidArtifact

__all__ = ["SUPPORTED_FORMATS", "Inspection", "inspect_artifact"]

#: what the registry takes; triton models live in a Triton server, not in an artifact.
SUPPORTED_FORMATS = tuple(fmt for fmt in FORMATS if fmt != "triton")
_WHAT = {
    "onnx": "an ONNX model",
    "pytorch": "a TorchScript or torch.export model",
    "sklearn": "a scikit-learn model",
}
#: how joblib.dump(compress=...) starts its files (joblib/compressor.py), and how to peek inside.
_JOBLIB_CODECS = (
    ("zlib", b"\x78", zlib.decompressobj),
    ("gzip", b"\x1f\x8b", lambda: zlib.decompressobj(wbits=31)),
    ("bz2", b"BZ", bz2.BZ2Decompressor),
    ("xz", b"\xfd7zXZ", lzma.LZMADecompressor),
    ("lzma", b"\x5d\x00", lzma.LZMADecompressor),
    ("lz4", b"\x04\x22\x4d\x18", None),  # reading it needs the lz4 package: the magic number has to do
)
#: torch.export's serialized ScalarType (torch/_export/serde/schema.py) -> V2 datatype; the same
#: torch dtypes as the pytorch runtime's table (a test checks that they agree).
_EXPORT_TYPES = {
    1: "UINT8", 2: "INT8", 3: "INT16", 4: "INT32", 5: "INT64", 6: "FP16", 7: "FP32", 8: "FP64",
    12: "BOOL", 13: "BF16", 28: "UINT16", 34: "UINT32", 35: "UINT64",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Inspection:
    format: str  # normalized: onnx | pytorch | sklearn | python
    #: {"inputs": [{"name", "datatype", "shape"}], "outputs": [...]}; -1 for dynamic dims.
    signature: dict[str, Any] | None
    entry: str | None = None  # python format: the class name


class _Mismatch(Exception):
    """The file is not of the format it was checked against; the message says why."""


class _Unservable(Exception):
    """The file is of its format, but holds what no runtime here can serve."""


def inspect_artifact(path: Path, fmt: str | None = None, entry: str | None = None) -> Inspection:
    """Check that `path` (a file, or a directory holding one) is a model of format `fmt`, inferred
    from the file when None, and read its signature where the format records one."""
    path = Path(path)
    wanted = _normalize(fmt) if fmt is not None else None
    if wanted == "python" or (wanted is None and path.suffix.lower() == ".py"):
        return Inspection("python", None, _python_entry(path, entry))
    if entry is not None:
        raise InvalidArtifact(f"an entry class ({entry}) goes only with python models (FILE.py:Class)")
    artifact = _artifact(path)
    how = f"--format {fmt}"
    if wanted is None:
        wanted, how = SUFFIXES.get(artifact.suffix.lower()), "format inferred from its name"
    try:
        return Inspection(wanted, _CHECKS[wanted](artifact)) if wanted else _sniff(artifact)
    except _Mismatch as exc:
        raise InvalidArtifact(f"{artifact.name} is not {_WHAT[wanted]} ({how}): {exc}") from None
    except _Unservable as exc:
        raise InvalidArtifact(f"{artifact.name} cannot be served: {exc}") from None


def _normalize(fmt: str) -> str:
    try:
        name = normalize_format(fmt)
    except InvalidInput:
        name = None
    if name == "triton":
        raise InvalidArtifact(
            "triton models are served by a Triton server; register the model files "
            "(onnx, pytorch, ...) instead"
        )
    if name not in SUPPORTED_FORMATS:
        raise InvalidArtifact(f"unknown model format '{fmt}'; supported: {', '.join(SUPPORTED_FORMATS)}")
    return name


def _artifact(path: Path) -> Path:
    if not path.exists():
        raise InvalidArtifact(f"{path} does not exist")
    artifact = model_file(path)
    if artifact is None and path.is_dir() and not any(path.iterdir()):
        raise InvalidArtifact(f"directory {path} is empty")
    if artifact is None:
        raise InvalidArtifact(
            f"no model file in {path}: expected a file named *{', *'.join(SUFFIXES)} "
            "(or version folders 1/, 2/, ... holding one)"
        )
    if artifact.stat().st_size == 0:
        raise InvalidArtifact(f"{artifact} is empty")
    return artifact


def _sniff(artifact: Path) -> Inspection:
    """The format of a file whose name does not say, among those whose runtimes take any name."""
    for fmt in ("pytorch", "onnx"):
        with contextlib.suppress(_Mismatch):
            return Inspection(fmt, _CHECKS[fmt](artifact))
    raise InvalidArtifact(
        f"cannot tell the model format of {artifact.name} from its name or content; "
        f"pass --format (one of {', '.join(SUPPORTED_FORMATS)})"
    )


def _onnx(artifact: Path) -> dict[str, Any]:
    import onnx

    try:
        model = onnx.load(artifact, format="protobuf", load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError, or whatever onnx's readers hit
        raise _Mismatch(f"{type(exc).__name__}: {exc}") from None
    if not model.ir_version or not model.graph.output:
        raise _Mismatch("it parses as protobuf, but has no IR version or no graph outputs")
    initializers = {tensor.name for tensor in model.graph.initializer}  # old exporters list them as inputs
    inputs = [_onnx_spec(v, "input") for v in model.graph.input if v.name not in initializers]
    return _signature(inputs, [_onnx_spec(v, "output") for v in model.graph.output])


def _onnx_spec(value: Any, what: str) -> TensorSpec:
    import onnx

    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        raise _Unservable(f"{what} '{value.name}' is a {kind}, not a tensor")
    elem_type = value.type.tensor_type.elem_type
    try:
        datatype = datatype_of(np.empty(0, onnx.helper.tensor_dtype_to_np_dtype(elem_type)))
    except (KeyError, InvalidInput):
        type_name = onnx.TensorProto.DataType.Name(elem_type) if elem_type else "UNDEFINED"
        raise _Unservable(f"{what} '{value.name}' has type {type_name}, which V2 cannot carry") from None
    dims = value.type.tensor_type.shape.dim  # symbolic (dim_param) or unknown dimensions are variable
    shape = tuple(d.dim_value if d.WhichOneof("value") == "dim_value" else -1 for d in dims)
    return TensorSpec(value.name, datatype, shape)


def _pytorch(artifact: Path) -> dict[str, Any] | None:
    """Which archive this is by its zip layout, as the pytorch runtime tells them apart."""
    try:
        with zipfile.ZipFile(artifact) as archive:
            # Records live under one top-level folder whose name is arbitrary.
            records = {name.partition("/")[2]: name for name in archive.namelist()}
            if "archive_format" in records:
                if "models/model.json" not in records:
                    raise _Mismatch("a PT2 archive without models/model.json (an AOTInductor package?)")
                return _export_signature(archive.read(records["models/model.json"]))
            if "constants.pkl" in records or any(record.startswith("code/") for record in records):
                embedded = records.get("extra/servegate.json")
                return _torchscript_signature(archive.read(embedded)) if embedded else None
    except (OSError, zipfile.BadZipFile) as exc:
        raise _Mismatch(
            f"it is not a zip archive, as torch.export.save and torch.jit.save write: {exc}"
        ) from None
    if "data.pkl" in records:
        raise _Mismatch(
            "it is a torch.save() pickle (a state_dict or a pickled module), which cannot be served; "
            "save the model with torch.export.save (a .pt2 file) or torch.jit.save"
        )
    raise _Mismatch(
        "it is a zip archive, but has neither torch.export's archive_format nor TorchScript's code/"
    )


def _export_signature(model_json: bytes) -> dict[str, Any]:
    """Inputs and outputs as the pytorch runtime names them, read from the program's JSON graph."""
    try:
        program = json.loads(model_json)["graph_module"]
        tensors = program["graph"]["tensor_values"]
        inputs = []
        for spec in program["signature"]["input_specs"]:
            if "constant_input" in spec:
                name = spec["constant_input"]["name"]
                raise _Unservable(f"input '{name}' was exported as a constant; only tensors can be served")
            if "user_input" in spec:
                inputs.append(_export_spec(spec["user_input"]["arg"], tensors, "input"))
        outputs = [
            _export_spec(spec["user_output"]["arg"], tensors, "output")
            for spec in program["signature"]["output_specs"]
            if "user_output" in spec
        ]
        # Named after the keys of a flat dict the program returns, else output__0, ... (Triton's way).
        calls = [call["signature"] for call in program.get("module_call_graph", []) if call["fqn"] == ""]
        out_spec = json.loads(calls[0]["out_spec"])[1] if calls and calls[0] else None
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise _Mismatch(
            f"its models/model.json is not a torch.export program ({type(exc).__name__}: {exc})"
        ) from None
    names = [f"output__{i}" for i in range(len(outputs))]
    flat = out_spec and all(child["type"] is None for child in out_spec["children_spec"])
    if flat and out_spec["type"] == "builtins.dict":
        names = [str(key) for key in json.loads(out_spec["context"])]
    if len(names) != len(outputs):
        raise _Unservable("cannot match the program's outputs to its output structure")
    return _signature(
        inputs, [TensorSpec(n, s.datatype, s.shape) for n, s in zip(names, outputs, strict=True)]
    )


def _export_spec(arg: dict[str, Any], tensors: dict[str, Any], what: str) -> TensorSpec:
    if "as_tensor" not in arg:
        kind = next(iter(arg), "none").removeprefix("as_")
        raise _Unservable(f"an {what} is a {kind} value, not a tensor; only tensors can be served")
    name = arg["as_tensor"]["name"]
    meta = tensors[name]
    datatype = _EXPORT_TYPES.get(meta["dtype"])
    if datatype is None:
        raise _Unservable(
            f"{what} '{name}' has a dtype the V2 protocol cannot carry (ScalarType {meta['dtype']})"
        )
    shape = tuple(size.get("as_int", -1) for size in meta["sizes"])  # else symbolic
    return TensorSpec(name, datatype, shape)


def _torchscript_signature(embedded: bytes) -> dict[str, Any] | None:
    """TorchScript records only forward()'s argument names, and loading it runs its code; but a
    signature embedded as servegate.json (see the pytorch runtime) reads as JSON."""
    from predictors.runtimes.pytorch import parse_specs  # imports torch

    try:
        declared = json.loads(embedded)
        if not (isinstance(declared, dict) and "inputs" in declared and "outputs" in declared):
            return None  # the runtime completes a partial one from forward(), which only loading shows
        inputs = parse_specs(declared["inputs"], "servegate.json: inputs")
        return _signature(inputs, parse_specs(declared["outputs"], "servegate.json: outputs"))
    except ValueError as exc:
        raise _Unservable(f"its servegate.json is not valid JSON: {exc}") from None
    except ModelFailure as exc:
        raise _Unservable(str(exc)) from None


def _sklearn(artifact: Path) -> None:
    """Only recognized, never loaded: its signature comes from the estimator, which takes unpickling
    (or, for skops, loading) to read; the sklearn runtime reads it when it loads a trusted file."""
    suffix = artifact.suffix.lower()
    if suffix == ".skops":
        try:
            with zipfile.ZipFile(artifact) as archive:
                schema = json.loads(archive.read("schema.json"))
        except (OSError, zipfile.BadZipFile, KeyError, ValueError) as exc:
            raise _Mismatch(f"not a skops archive (a zip with skops' schema.json): {exc}") from None
        if not (isinstance(schema, dict) and "protocol" in schema):
            raise _Mismatch("its schema.json is not a skops schema")
    elif suffix in (".joblib", ".pkl", ".pickle"):
        _check_pickle(artifact)
    else:
        raise _Mismatch("the sklearn runtime reads only .skops, .joblib, .pkl and .pickle files")


def _is_pickle(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5  # the PROTO opcode of protocol 2+


def _check_pickle(artifact: Path) -> None:
    with artifact.open("rb") as f:
        head = f.read(1 << 20)
    if _is_pickle(head):
        return
    for codec, magic, decompressor in _JOBLIB_CODECS:
        if not head.startswith(magic):
            continue
        if decompressor is None:
            return
        try:
            start = decompressor().decompress(head, 2)
        except (zlib.error, OSError, lzma.LZMAError, EOFError) as exc:
            raise _Mismatch(f"it starts like a {codec} stream, but does not decompress: {exc}") from None
        if len(start) == 2 and not _is_pickle(start):  # shorter: the codec needs more input to tell
            raise _Mismatch(f"it is {codec}-compressed, but what it holds is not a pickle")
        return
    raise _Mismatch("it starts like neither a pickle (protocol 2+) nor a joblib-compressed stream")


def _python_entry(path: Path, entry: str | None) -> str:
    usage = "a python model is one .py file and the class in it (FILE.py:Class)"
    if not path.exists():
        raise InvalidArtifact(f"{path} does not exist")
    if not path.is_file() or path.suffix.lower() != ".py":
        raise InvalidArtifact(f"{path} is not a .py file; {usage}")
    if not entry:
        raise InvalidArtifact(f"name the model class in {path.name}: {usage}")
    try:
        tree = ast.parse(path.read_bytes(), filename=path.name)
    except SyntaxError as exc:
        raise InvalidArtifact(f"{path.name} is not valid Python: {exc.msg} (line {exc.lineno})") from None
    except ValueError as exc:  # null bytes, undecodable text
        raise InvalidArtifact(f"{path.name} is not valid Python: {exc}") from None
    classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
    if entry not in classes:
        found = f"it defines {', '.join(classes)}" if classes else "it defines none"
        raise InvalidArtifact(f"{path.name} defines no top-level class '{entry}'; {found}")
    return entry


def _signature(inputs: list[TensorSpec], outputs: list[TensorSpec]) -> dict[str, Any]:
    return {"inputs": [s.as_dict() for s in inputs], "outputs": [s.as_dict() for s in outputs]}


_CHECKS = {"onnx": _onnx, "pytorch": _pytorch, "sklearn": _sklearn}
