"""How a step runs on a Ray node that shares no filesystem with the driver: its input artifacts,
its pipeline file and its log travel through Ray's object store, and it works in a scratch folder
of that node, removed afterwards.

The driver packs each input artifact (a tar of its file or folder) and puts it in the object store
once (`RayBackend`); the task (`run_on_node`) unpacks the inputs into its scratch folder, writes the
pipeline file out, runs the step there with the Invocation's paths pointing into the folder, and
returns its outputs packed, with its log. The driver unpacks the outputs where the executor expects
them (`receive`), so digests, caching and lineage are the same as for a local run.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tarfile
import tempfile
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

from serving.pipelines.worker import Invocation, outcome

__all__ = ["UnsafeArchive", "pack", "receive", "run_on_node", "unpack"]

#: every archive holds one top-level entry under this name: the artifact (a file or a folder).
_ROOT = "artifact"


class UnsafeArchive(ValueError):
    """A packed artifact holds something that could write outside its folder (or is no archive)."""


# -- packing --------------------------------------------------------------------------------------


def pack(path: Path) -> bytes:
    """The artifact at `path` (a file, or a folder with its files and subfolders) as tar bytes.
    A link is packed as what it points at when that is a file inside the artifact (as the artifact's
    digest counts it); a link out of the folder is refused, and links to folders are left out."""
    root = path.resolve()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        if path.is_file():
            tar.add(root, arcname=_ROOT, recursive=False)
        elif path.is_dir():
            tar.add(root, arcname=_ROOT, recursive=False)
            for entry in sorted(path.rglob("*")):
                name = f"{_ROOT}/{entry.relative_to(path).as_posix()}"
                target = entry.resolve()
                if entry.is_symlink() and not target.is_relative_to(root):
                    raise UnsafeArchive(f"{entry} links out of the artifact {path}")
                if entry.is_file():
                    tar.add(target, arcname=name, recursive=False)
                elif entry.is_dir() and not entry.is_symlink():
                    tar.add(entry, arcname=name, recursive=False)
        else:
            raise FileNotFoundError(f"no artifact at {path}")
    return buffer.getvalue()


def unpack(data: bytes, dest: Path) -> None:
    """Write the artifact packed in `data` at `dest` (replacing what is there). Refuses (UnsafeArchive)
    an archive with an absolute name, a `..`, a link, a device or anything outside its one entry."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=dest.parent))
    try:
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                members = tar.getmembers()
                for member in members:
                    _check(member)
                if _ROOT not in {m.name for m in members}:
                    raise UnsafeArchive("the archive holds no artifact")
                tar.extractall(staging, members=members, filter="data")
        except tarfile.TarError as exc:
            raise UnsafeArchive(f"not a packed artifact: {exc}") from None
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        elif dest.exists() or dest.is_symlink():
            dest.unlink()
        os.replace(staging / _ROOT, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check(member: tarfile.TarInfo) -> None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts or "\\" in member.name:
        raise UnsafeArchive(f"the archive names {member.name!r}, outside the artifact")
    if name.parts[:1] != (_ROOT,):
        raise UnsafeArchive(f"the archive holds {member.name!r}, outside the artifact")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchive(f"the archive holds {member.name!r}, which is not a file or a folder")


# -- on the node ----------------------------------------------------------------------------------


def run_on_node(invocation_json: str, module: tuple[str, bytes], *inputs: bytes) -> dict[str, Any]:
    """The Ray task. `module`: the pipeline file's name and source. `inputs`: the packed input
    artifacts, each named by index in the Invocation's input specs (`"packed": i`). Returns the
    step's result with its outputs packed (`"packed": {name: bytes}`) and its log (`"log"`)."""
    import ray

    inv = Invocation.from_json(invocation_json)
    _sweep(Path(tempfile.gettempdir()))
    scratch = Path(tempfile.mkdtemp(prefix=f"{_SCRATCH}{os.getpid()}-")).resolve()
    log = scratch / "step.log"
    node = ray.get_runtime_context().get_node_id()
    log.write_text(f"--- on Ray node {node} ({ray.util.get_node_ip_address()}), in {scratch}\n")
    try:
        try:
            local = replace(
                inv,
                module_file=str(_module_file(scratch / "code", *module)),
                inputs={
                    name: _unpacked(spec, inputs, scratch / "inputs" / name)
                    for name, spec in inv.inputs.items()
                },
                outputs={n: {**s, "path": str(scratch / "outputs" / n)} for n, s in inv.outputs.items()},
                log_path=str(log),
            )
        except (OSError, UnsafeArchive) as exc:
            result = {"ok": False, "error": f"cannot unpack the step's inputs: {exc}", "details": ""}
        else:
            result = outcome(local)
        if result["ok"]:
            written = {n: Path(a["path"]) for n, a in result["artifacts"].items()}
            try:  # one not written is left to the executor, which says so
                result["packed"] = {n: pack(p) for n, p in written.items() if p.exists()}
            except (OSError, UnsafeArchive) as exc:
                result = {"ok": False, "error": f"cannot send the step's outputs: {exc}", "details": ""}
        result["log"] = log.read_bytes()
        return result
    finally:
        _forget(scratch / "code")
        shutil.rmtree(scratch, ignore_errors=True)


#: a step's scratch folder is SCRATCH + the Ray worker's pid + "-" + a random part.
_SCRATCH = "servegate-step-"


def _sweep(root: Path) -> None:
    """Remove the scratch folders of steps whose Ray worker was killed before cleaning up (a timeout
    or a cancelled run stops the worker at once): the next step on the node does it."""
    for folder in root.glob(f"{_SCRATCH}*-*"):
        pid = folder.name.removeprefix(_SCRATCH).partition("-")[0]
        try:
            if not pid.isdigit() or folder.stat().st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # alive under another user, or gone meanwhile
            continue


def _unpacked(spec: Any, inputs: tuple[bytes, ...], folder: Path) -> Any:
    """An input spec (or a fan-in list of them) with its artifact unpacked under `folder`, keeping
    the artifact's file name."""
    if isinstance(spec, list):
        return [_unpacked(s, inputs, folder / str(i)) for i, s in enumerate(spec)]
    path = folder / PurePosixPath(spec["path"]).name
    unpack(inputs[spec["packed"]], path)
    return {k: v for k, v in spec.items() if k != "packed"} | {"path": str(path)}


def _module_file(code: Path, name: str, source: bytes) -> Path:
    """The pipeline file written out in `code`, which `import_file` then imports under the name a
    local worker gives it (its stem) and puts on sys.path for the processes the step starts."""
    code.mkdir()
    path = code / Path(name).name
    path.write_bytes(source)
    return path


def _forget(code: Path) -> None:
    """Take the step's pipeline module out of this Ray worker, which runs other steps next (a local
    worker process imports it afresh for each step, under the same name)."""
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and Path(file).parent == code:
            del sys.modules[name]
    while str(code) in sys.path:
        sys.path.remove(str(code))


# -- back on the driver ---------------------------------------------------------------------------


def receive(inv: Invocation, result: dict[str, Any]) -> dict[str, Any]:
    """The task's result as the executor expects it: its log appended to the step's log, its
    outputs unpacked at the paths the Invocation gave them (and named by those paths)."""
    log, packed = result.pop("log", b""), result.pop("packed", {})
    Path(inv.log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(inv.log_path, "ab") as out:
        out.write(log)
    if not result["ok"]:
        return result
    for name, artifact in result["artifacts"].items():
        dest = inv.outputs[name]["path"]
        artifact["path"] = dest
        if name in packed:
            try:
                unpack(packed[name], Path(dest))
            except UnsafeArchive as exc:
                return {"ok": False, "error": f"output artifact '{name}': {exc}", "details": ""}
    return result
