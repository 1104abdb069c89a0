"""The example pipeline end to end, through the CLI, into a running gateway: tune, train (2 data-
parallel workers), evaluate, register and deploy; a second run becomes a canary of the first, its
unchanged steps cached; lineage leads from the registry version back to the dataset."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_digits

from serving.client import Client
from tests.gateway_helpers import gateway_process, revision, traffic
from tests.servers import ROOT, GatewayProcess, until

pytestmark = pytest.mark.integration

EXAMPLE = ROOT / "examples" / "digits_pipeline.py"
QUICK = ["--param", "trials=4", "--param", "tune_epochs=5", "--param", "parallel=2"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The module's gateway; it may register what the pipelines make in the session's temporary folders."""
    state = tmp_path_factory.mktemp("digits-gateway") / "state"
    yield from gateway_process(state, storage_root=tmp_path_factory.getbasetemp())


def _pipeline(state: Path, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    """`servegate pipeline ARGS`; its steps call the gateway with `token` (SERVEGATE_TOKEN)."""
    env = {**os.environ, "SERVEGATE_TOKEN": token} if token else None
    return subprocess.run(
        [sys.executable, "-m", "serving", "pipeline", *args, "--state-dir", str(state)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def _accuracy(url: str, headers: dict[str, str]) -> float:
    x, y = load_digits(return_X_y=True)
    body = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [len(x), 64], "data": x.ravel().tolist()}]
    }
    response = httpx.post(f"{url}/v2/models/digits/infer", json=body, timeout=60, headers=headers)
    assert response.status_code == 200, response.text
    logits = np.array(response.json()["outputs"][0]["data"]).reshape(len(x), 10)
    return float((logits.argmax(axis=1) == y).mean())


def test_the_digits_pipeline_registers_and_deploys_a_canary(gateway: GatewayProcess, tmp_path: Path) -> None:
    state = tmp_path / "pipelines"
    first = _pipeline(
        state, "run", str(EXAMPLE), "--param", f"gateway={gateway.url}", *QUICK, token=gateway.token
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert "succeeded (6 succeeded)" in first.stdout

    with Client(gateway.url, token=gateway.token) as client:
        model = client.registry.model("digits")
        assert model.aliases == {"production": 1}
        v1 = client.registry.version("digits", 1)
        assert v1.metrics["accuracy"] > 0.9 and v1.source["run"].startswith("digits-")
        assert v1.signature["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
        client.wait_ready("digits", timeout=120)
    # Raw pixels in: the standardizer fitted in training is part of the served model.
    assert _accuracy(gateway.url, gateway.headers) > 0.9

    second = _pipeline(
        state,
        "run",
        str(EXAMPLE),
        "--param",
        f"gateway={gateway.url}",
        "--param",
        "epochs=21",
        *QUICK,
        token=gateway.token,
    )
    assert second.returncode == 0, second.stdout + second.stderr
    run_id = re.search(r"run (\S+) succeeded", second.stdout)[1]  # type: ignore[index]
    run = json.loads(_pipeline(state, "show", "digits", "-o", "json").stdout)  # the pipeline's latest run
    assert run["run"]["id"] == run_id
    statuses = {s["step_id"]: s["status"] for s in run["steps"]}
    assert statuses == {
        "load_digits": "CACHED",
        "tune_mlp": "CACHED",
        "train_mlp": "SUCCEEDED",
        "evaluate": "SUCCEEDED",
        "register": "SUCCEEDED",
        "deploy": "SUCCEEDED",
    }

    with Client(gateway.url, token=gateway.token) as client:
        assert client.registry.model("digits").aliases == {"production": 1, "canary": 2}

        def split() -> dict[str, int] | None:
            found = traffic(client.get("isvc", "digits")["status"])
            return found if len(found) == 2 else None

        assert until(split, timeout=120, what="the canary to take traffic") == {
            revision("digits", 1): 80,
            revision("digits", 2): 20,
        }
        client.promote("digits")
        assert client.registry.model("digits").aliases == {"production": 2}

    # Lineage: from the registry version back to the dataset it was trained on, and forward again.
    v2 = json.loads(_pipeline(state, "lineage", "registry://digits/2", "-o", "json").stdout)
    text = json.dumps(v2)
    with Client(gateway.url, token=gateway.token) as client:
        dataset = client.registry.version("digits", 2).source["dataset"]
    assert dataset in text and "load_digits" in text and "train_mlp" in text
    forward = _pipeline(state, "lineage", dataset[:16], "--reverse")
    assert forward.returncode == 0, forward.stderr
    assert "registry://digits/1" in forward.stdout and "registry://digits/2" in forward.stdout


def test_a_pipeline_that_cannot_run_is_refused_before_anything_starts(tmp_path: Path) -> None:
    bad_param = _pipeline(tmp_path, "run", str(EXAMPLE), "--param", "trials=many", "--param", "colour=red")
    assert bad_param.returncode == 2
    assert "pipeline parameter 'trials': 'many' is not a int" in bad_param.stderr
    assert "pipeline parameter 'colour': unknown" in bad_param.stderr
    bad_executor = _pipeline(tmp_path, "run", str(EXAMPLE), "--executor", "spark")
    assert bad_executor.returncode == 2 and "unknown executor 'spark'" in bad_executor.stderr
    unreachable = _pipeline(
        tmp_path, "run", str(EXAMPLE), "--executor", "ray", "--ray-address", "127.0.0.1:1"
    )
    assert unreachable.returncode == 1
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in unreachable.stderr
    assert not (tmp_path / "pipelines").exists()  # nothing ran


def test_unknown_runs_and_lineage_targets_are_clear_errors(tmp_path: Path) -> None:
    missing = _pipeline(tmp_path, "show", "no-such-run")
    assert missing.returncode == 1 and missing.stderr.startswith("error:") and "no-such-run" in missing.stderr
    unknown = _pipeline(tmp_path, "lineage", "registry://nothing/1")
    assert unknown.returncode == 1 and "registry://nothing/1" in unknown.stderr
    empty = _pipeline(tmp_path, "runs")
    assert empty.returncode == 0 and "RUN" in empty.stdout
