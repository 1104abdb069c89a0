"""Finding the artifact a storageUri names: a file, a folder holding it, or a folder of versions."""

from __future__ import annotations

from pathlib import Path

from predictors.runtimes import infer_format, model_file


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_a_file_is_its_own_artifact(tmp_path: Path) -> None:
    artifact = touch(tmp_path / "net.onnx")
    assert model_file(artifact) == artifact


def test_a_folder_prefers_model_dot_something(tmp_path: Path) -> None:
    touch(tmp_path / "a.onnx")
    assert model_file(tmp_path) == tmp_path / "a.onnx"
    touch(tmp_path / "model.onnx")
    assert model_file(tmp_path) == tmp_path / "model.onnx"


def test_a_folder_of_versions_gives_the_newest(tmp_path: Path) -> None:
    touch(tmp_path / "1" / "model.onnx")
    newest = touch(tmp_path / "10" / "model.onnx")
    touch(tmp_path / "2" / "model.onnx")
    (tmp_path / "notes").mkdir()
    assert model_file(tmp_path) == newest
    assert infer_format(str(tmp_path), tmp_path) == "onnx"


def test_a_folder_without_an_artifact_has_none(tmp_path: Path) -> None:
    touch(tmp_path / "README.txt")
    assert model_file(tmp_path) is None
    assert model_file(tmp_path / "missing") is None
