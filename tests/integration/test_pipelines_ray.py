"""Pipelines on the shared multi-node Ray cluster with no shared filesystem: steps pinned to nodes by
label, artifacts carried between them through the object store into node-local scratch folders,
the driver's state dir holding what a local run holds; steps no node can hold, and a node that dies
under a step."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from serving.pipelines.backends import LocalBackend, RayBackend
from serving.pipelines.compiler import compile_pipeline
from serving.pipelines.executor import RunOutcome, execute
from serving.pipelines.metadata import MetadataStore
from tests import pipeline_components as pc
from tests.ray_cluster import NODE_LABEL, RayTestCluster
from tests.servers import ROOT

pytestmark = pytest.mark.integration


def _run(pipe: Any, store: MetadataStore, state: Path, backend: Any, **params: Any) -> RunOutcome:
    return asyncio.run(execute(compile_pipeline(pipe, params), store, backend, state))


def _digests(outcome: RunOutcome) -> dict[tuple[str, str], str]:
    return {(s, n): a["sha256"] for s, r in outcome.steps.items() for n, a in r.artifacts.items()}


def test_steps_on_two_nodes_pass_artifacts_through_the_object_store(
    ray_driver: RayTestCluster, store: MetadataStore, state: Path, tmp_path: Path
) -> None:
    outcome = _run(pc.across_nodes, store, state, RayBackend(ray_driver.address))
    assert outcome.status == "SUCCEEDED", {s: r.error for s, r in outcome.steps.items()}
    first, second = (pc.Placed(**outcome.steps[s].params) for s in ("write_table", "total_squares"))

    # Each step ran on the node its selector named, ...
    assert first.node == ray_driver.node_id("a") and second.node == ray_driver.node_id("b")
    # ... worked in a scratch folder of that node (gone since), not in the driver's state dir, ...
    scratch = Path(tempfile.gettempdir()).resolve()
    for path in (first.wrote, second.read, second.wrote):
        assert Path(path).is_relative_to(scratch) and "servegate-step-" in path
        assert not Path(path).is_relative_to(state.resolve()) and not Path(path).exists()
    # ... with the pipeline file written out there rather than read from the driver's path.
    assert "servegate-step-" in first.module and Path(first.module).name == "pipeline_components.py"

    # The driver's state dir holds the artifacts, with the digests a local run gives them.
    table = Path(outcome.steps["write_table"].artifacts["table"]["path"])
    assert table.is_relative_to(state.resolve()) and (table / "part" / "schema.txt").is_file()
    total = json.loads(Path(outcome.steps["total_squares"].artifacts["total"]["path"]).read_text())
    assert total == {"total": 30, "schema": "n,square\n"}
    assert outcome.steps["write_table"].artifacts["table"]["metadata"] == {"rows": 5}
    with MetadataStore(f"sqlite:///{tmp_path / 'local.db'}") as local_store:
        local = _run(pc.across_nodes, local_store, tmp_path / "local", LocalBackend())
    assert local.status == "SUCCEEDED" and pc.Placed(**local.steps["write_table"].params).node == ""
    assert _digests(outcome) == _digests(local)

    # The step's log came back to the driver, saying where it ran.
    log = Path(outcome.steps["total_squares"].log_path).read_text()
    assert f"--- on Ray node {second.node}" in log and "--- step total_squares done" in log

    again = _run(pc.across_nodes, store, state, RayBackend(ray_driver.address))
    assert {r.status for r in again.steps.values()} == {"CACHED"}
    assert _digests(again) == _digests(outcome)


def test_a_step_no_node_can_hold_fails_at_once(
    ray_driver: RayTestCluster, store: MetadataStore, state: Path
) -> None:
    nowhere = _run(pc.across_nodes, store, state, RayBackend(ray_driver.address), first="z")
    assert nowhere.status == "FAILED"
    assert nowhere.steps["write_table"].error == f"no node of the Ray cluster has label {NODE_LABEL}=z"
    assert nowhere.steps["total_squares"].status == "SKIPPED"

    too_big = _run(pc.too_many_gpus, store, state, RayBackend(ray_driver.address))
    assert too_big.steps["write_table"].error == (
        "no node of the Ray cluster has 1 CPU, 4 GPUs (the most any has: 2 CPUs, 1 GPU)"
    )
    assert too_big.steps["write_table"].error in Path(too_big.steps["write_table"].log_path).read_text()


def test_a_step_past_its_timeout_is_cancelled(
    ray_driver: RayTestCluster, store: MetadataStore, state: Path
) -> None:
    outcome = _run(pc.too_slow, store, state, RayBackend(ray_driver.address))
    result = outcome.steps["sleep_for"]
    assert result.status == "FAILED" and result.error == "timed out after 1s"
    assert "timed out after 1s" in Path(result.log_path).read_text()


def test_a_step_whose_node_dies_fails_naming_the_node(
    ray_driver: RayTestCluster, store: MetadataStore, state: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    node_id = ray_driver.node_id("b")

    async def scenario() -> RunOutcome:
        spec = compile_pipeline(pc.pinned_sleep, {"marker": str(marker)})
        run = asyncio.create_task(execute(spec, store, RayBackend(ray_driver.address), state))
        for _ in range(600):  # the step has started on node b
            if marker.exists() or run.done():
                break
            await asyncio.sleep(0.1)
        await asyncio.to_thread(ray_driver.remove_worker, "b")
        return await asyncio.wait_for(run, 60)

    with ray_driver.replace_node("b"):
        outcome = asyncio.run(scenario())
    failed = outcome.steps["mark_and_sleep"]
    assert failed.status == "FAILED"
    assert failed.error == (f"the Ray node running the step died: node {node_id} (127.0.0.1, {NODE_LABEL}=b)")
    assert failed.error in Path(failed.log_path).read_text()


def test_steps_reading_one_artifact_share_one_copy(ray_driver: RayTestCluster, tmp_path: Path) -> None:
    backend = RayBackend(ray_driver.address)
    made: list[int] = []

    def make() -> bytes:
        made.append(1)
        return b"packed"

    async def three_readers() -> list[Any]:
        await backend.start()
        try:
            return await asyncio.gather(*(backend._put(("artifact", "x"), make) for _ in range(3)))
        finally:
            await backend.close()

    refs = asyncio.run(three_readers())
    assert len(made) == 1 and len({ref.hex() for ref in refs}) == 1


def test_the_cli_runs_a_pipeline_on_a_cluster(ray_driver: RayTestCluster, tmp_path: Path) -> None:
    state = tmp_path / "cli-state"
    done = subprocess.run(
        [
            sys.executable, "-m", "serving", "pipeline", "run",
            "tests/pipeline_components.py:across_nodes",
            "--executor", "ray", "--ray-address", ray_driver.address, "--state-dir", str(state),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (table,) = (state / "pipelines" / "artifacts").glob("*/write_table/table/rows.json")
    assert json.loads(table.read_text()) == [[i, i * i] for i in range(5)]
