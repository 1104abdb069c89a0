"""What a step asks of its node (KFP's cpu/memory/accelerator limits and node selectors), compiled
and checked; the Ray task options they become; and packed artifacts, refused when they could write
outside their folder."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from serving.pipelines import component, pipeline
from serving.pipelines._ray_artifacts import UnsafeArchive, pack, unpack
from serving.pipelines._ray_placement import task_options
from serving.pipelines.compiler import compile_pipeline
from serving.pipelines.types import PipelineError, Resources
from serving.registry.artifacts import artifact_digest
from tests import pipeline_components as pc


@component
def noop() -> None:
    pass


def test_placement_asks_compile_into_the_step_and_its_task_options() -> None:
    spec = compile_pipeline(pc.across_nodes, {"first": "a"})
    first, second = spec.step("write_table"), spec.step("total_squares")
    assert first.resources == Resources(node_selector={"servegate.io/node": "a"})
    assert second.resources == Resources(
        cpus=0.5, memory_bytes=64 * 2**20, accelerators=1, node_selector={"servegate.io/node": "b"}
    )
    assert task_options(second.resources.as_dict()) == {
        "num_cpus": 0.5,
        "num_gpus": 1,
        "memory": 64 * 2**20,
        "label_selector": {"servegate.io/node": "b"},
    }
    # A step that asks nothing keeps the spec it had: one CPU on Ray, nothing in the Invocation.
    plain = compile_pipeline(pc.skipped).step("make_numbers")
    assert plain.resources.as_dict() == {} and task_options({}) == {"num_cpus": 1}
    assert spec.as_dict()["steps"][0]["resources"]["node_selector"] == {"servegate.io/node": "a"}


@pipeline
def badly_placed():
    (
        noop()
        .set_cpu_limit("lots")
        .set_memory_limit(0)
        .set_accelerator_limit(1.5)  # type: ignore[arg-type]
        .add_node_selector_constraint("servegate.io/node", "in(a,b)")
        .add_node_selector_constraint("/bad", "a")
    )


def test_bad_placement_asks_are_problems_naming_the_step() -> None:
    with pytest.raises(PipelineError) as caught:
        compile_pipeline(badly_placed)
    problems = [str(p) for p in caught.value.problems]
    assert problems == [
        "step noop: cpu limit: 'lots' is not a Kubernetes quantity (e.g. 500m, 2, 1Gi)",
        "step noop: memory limit: must be more than 0, given 0",
        "step noop: accelerator limit: takes a whole number of GPUs, given 1.5",
        "step noop: node selector servegate.io/node: 'in(a,b)' is not a label value "
        "(letters, digits, '-', '_', '.'; up to 63)",
        "step noop: node selector: '/bad' is not a node label name",
    ]


def test_a_packed_folder_unpacks_to_the_same_digest(tmp_path: Path) -> None:
    source = tmp_path / "model"
    (source / "sub").mkdir(parents=True)
    (source / "weights.bin").write_bytes(bytes(range(256)))
    (source / "sub" / "config.json").write_text("{}")
    (source / "empty").mkdir()
    (source / "alias.bin").symlink_to("weights.bin")  # a link inside: packed as the file
    (tmp_path / "file.txt").write_text("one file")

    unpack(pack(source), tmp_path / "out" / "model")
    unpack(pack(tmp_path / "file.txt"), tmp_path / "out" / "file.txt")
    assert artifact_digest(tmp_path / "out" / "model") == artifact_digest(source)
    assert (tmp_path / "out" / "empty").is_dir() is False and (tmp_path / "out" / "model" / "empty").is_dir()
    assert not (tmp_path / "out" / "model" / "alias.bin").is_symlink()
    assert (tmp_path / "out" / "file.txt").read_text() == "one file"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["file.txt", "model"]  # no leftovers


def test_a_link_out_of_the_folder_is_not_packed(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "secret").symlink_to("/etc/passwd")
    with pytest.raises(UnsafeArchive, match="links out of the artifact"):
        pack(tmp_path / "model")


def _archive(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([_member("/etc/cron.d/x")], "outside the artifact"),
        ([_member("artifact", tarfile.DIRTYPE), _member("artifact/../../x")], "outside the artifact"),
        ([_member("elsewhere")], "outside the artifact"),
        ([_member("artifact", tarfile.SYMTYPE, "/etc/passwd")], "not a file or a folder"),
        ([_member("artifact", tarfile.DIRTYPE), _member("artifact/h", tarfile.LNKTYPE, "x")], "not a file"),
        ([_member("artifact", tarfile.CHRTYPE)], "not a file or a folder"),
    ],
)
def test_an_archive_that_could_write_elsewhere_is_refused(
    tmp_path: Path, members: list[tarfile.TarInfo], message: str
) -> None:
    with pytest.raises(UnsafeArchive, match=message):
        unpack(_archive(*((m, b"x" if m.isfile() else b"") for m in members)), tmp_path / "dest" / "a")
    assert list((tmp_path / "dest").iterdir()) == []  # nothing written, no staging left
    with pytest.raises(UnsafeArchive, match="not a packed artifact"):
        unpack(b"not a tar at all" * 100, tmp_path / "dest" / "a")


def test_scratch_folders_of_killed_workers_are_swept(tmp_path: Path) -> None:
    from serving.pipelines._ray_artifacts import _sweep

    dead, alive, other = (
        tmp_path / n for n in ("servegate-step-999999999-x", f"servegate-step-{os.getpid()}-y", "z")
    )
    for folder in (dead, alive, other):
        (folder / "outputs").mkdir(parents=True)
    _sweep(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, other.name])
