"""Registry models served: `servegate model serve` on registry URIs, an InferenceService following an
alias through the gateway (an alias move is a canary revision; promote and rollback keep the
registry's aliases in step; gates hold a promote), and a corrupted artifact refused at load."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from predictors.examples import make_mlp_onnx
from serving.client import Client
from serving.registry import Gate, Registry, RegistryConfig
from serving.registry.client import RegistryClient
from tests.conftest import MLP_SIZES
from tests.gateway_helpers import (
    ControlApi,
    Load,
    gateway_process,
    mlp_body,
    revision,
    storage_roots,
    traffic,
)
from tests.servers import ROOT, GatewayProcess, ReplicaProcess, fresh_database, until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four MLPs with the same signature and different weights."""
    root = tmp_path_factory.mktemp("sources")
    return [make_mlp_onnx(root / f"v{i}" / "model.onnx", MLP_SIZES, seed=i) for i in range(4)]


# -- servegate model serve ------------------------------------------------------------------------


def _env(state: Path, cache: Path) -> dict[str, str]:
    return {
        "SERVEGATE_REGISTRY_URL": f"sqlite:///{state / 'registry.db'}",
        "SERVEGATE_ARTIFACTS": str(state / "artifacts"),
        "SERVEGATE_CACHE_DIR": str(cache),
    }


def test_model_serve_serves_registry_uris(tmp_path: Path, sources: list[Path]) -> None:
    env = _env(tmp_path / "state", tmp_path / "cache")
    with Registry(RegistryConfig(env["SERVEGATE_REGISTRY_URL"], env["SERVEGATE_ARTIFACTS"])) as registry:
        registry.register("mlp", str(sources[0]))
        registry.register("mlp", str(sources[1]))
        registry.set_alias("mlp", "production", 2)

    # The registry by option; the cache by environment.
    with ReplicaProcess(
        "--model-name", "pinned", "--model-uri", "registry://mlp/1",
        "--model-name", "prod", "--model-uri", "registry://mlp@production",
        "--registry-url", env.pop("SERVEGATE_REGISTRY_URL"), "--artifacts", env.pop("SERVEGATE_ARTIFACTS"),
        env=env,
    ) as server:  # fmt: skip
        server.wait_ready()
        answers = {}
        for name in ("pinned", "prod"):
            response = httpx.post(f"{server.url}/v2/models/{name}/infer", json=mlp_body(), timeout=10)
            assert response.status_code == 200, response.text
            answers[name] = response.json()["outputs"][0]["data"]
        assert answers["pinned"] != answers["prod"]  # different versions, different weights


def test_a_corrupted_artifact_fails_the_load_loudly(tmp_path: Path, sources: list[Path]) -> None:
    env = _env(tmp_path / "state", tmp_path / "cache")
    with Registry(RegistryConfig(env["SERVEGATE_REGISTRY_URL"], env["SERVEGATE_ARTIFACTS"])) as registry:
        v = registry.register("mlp", str(sources[0]))
    blob = tmp_path / "state" / "artifacts" / "sha256" / v.sha256[:2] / v.sha256
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes().replace(b"w0", b"w9"))

    with ReplicaProcess("--model-name", "mlp", "--model-uri", "registry://mlp/1", env=env) as server:
        server.wait_live()
        # A load in progress says LOADING: wait for where it ends (a loaded machine takes its time).
        index = until(
            lambda: [
                m
                for m in httpx.post(f"{server.url}/v2/repository/index").json()
                if m.get("state") not in (None, "", "LOADING")
            ],
            what="the load to finish",
        )
        assert index[0]["state"] == "UNAVAILABLE" or index[0]["state"] == "FAILED", index
        assert "corrupted" in index[0]["reason"] and v.sha256 in index[0]["reason"]
        assert httpx.get(f"{server.url}/v2/models/mlp/ready").status_code != 200
        assert "corrupted" in server.output()


# -- through the gateway --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The module's gateway; it may register models from the session's temporary folders (`sources`)."""
    state = tmp_path_factory.mktemp("registry-gateway") / "state"
    yield from gateway_process(state, storage_root=tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def models(gateway: GatewayProcess) -> Iterator[RegistryClient]:
    """The gateway's registry through the SDK (`serving.Client(...).registry`)."""
    with Client(gateway.url, token=gateway.token) as client:
        yield client.registry


@pytest.fixture(scope="module")
def api(gateway: GatewayProcess) -> Iterator[ControlApi]:
    client = ControlApi(gateway.url, gateway.token)
    yield client
    client.close()


def _following(name: str, uri: str, canary: int | None = None) -> dict:
    predictor = {
        "model": {"modelFormat": {"name": "onnx"}, "protocolVersion": "v2", "storageUri": uri},
        **({"canaryTrafficPercent": canary} if canary is not None else {}),
    }
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {"predictor": predictor},
    }


def _uris(status: dict) -> dict[str, str]:
    return {t["revisionName"]: t["storageUri"] for t in status["components"]["predictor"]["traffic"]}


def test_an_alias_move_rolls_out_as_a_canary_and_promote_keeps_the_registry_in_step(
    gateway: GatewayProcess, models: RegistryClient, api: ControlApi, sources: list[Path]
) -> None:
    for i, source in enumerate(sources[:3]):
        models.register("fraud", str(source), metrics={"accuracy": 0.9 + i / 100})
    models.set_alias("fraud", "production", 1)
    api.apply(_following("fraud", "registry://fraud@production", canary=25))
    status = api.wait_ready("fraud")
    r1, r2, r3 = (revision("fraud", n) for n in (1, 2, 3))
    assert _uris(status) == {r1: "registry://fraud/1"}

    with Load(gateway.url, "fraud", mlp_body(), concurrency=6, token=gateway.token) as load:
        load.wait_count(50)
        # Moving the alias (here straight in the registry, as a training job would) is a canary.
        models.set_alias("fraud", "production", 2)
        status = api.wait_traffic("fraud", {r1: 75, r2: 25})
        assert _uris(status) == {r1: "registry://fraud/1", r2: "registry://fraud/2"}
        load.wait_count(100)
        assert {o.revision for o in load.snapshot()[-60:]} == {r1, r2}

        assert api.promote("fraud").status_code == 200
        api.wait_traffic("fraud", {r2: 100})
        assert models.model("fraud").aliases == {"production": 2}

        # A canary alias canaries its version; rollback withdraws it and deletes the alias.
        models.set_alias("fraud", "canary", 3)
        api.wait_traffic("fraud", {r2: 75, r3: 25})
        assert api.rollback("fraud").status_code == 200
        api.wait_traffic("fraud", {r2: 100})
        assert models.model("fraud").aliases == {"production": 2}
        load.wait_count(100)
    assert load.failures() == []
    assert len(load.snapshot()) > 300

    history = [(e.actor, e.action, e.details.get("alias")) for e in models.history("fraud")]
    # The actor: the token that asked (the admin's), and what it asked.
    assert ("admin (servegate rollback inferenceservice/fraud)", "alias-deleted", "canary") in history
    # Withdrawing the canary went back to a running revision: no new one was made.
    assert api.status("fraud")["components"]["predictor"]["latestCreatedRevision"] == r3


def test_promotion_gates_refuse_a_promote_and_leave_traffic_alone(
    models: RegistryClient, api: ControlApi, sources: list[Path]
) -> None:
    models.register("gated", str(sources[0]), metrics={"accuracy": 0.97})
    models.register("gated", str(sources[1]), metrics={"accuracy": 0.80})
    models.set_gates("gated", [Gate("production", "accuracy", ">=", 0.95)])
    models.set_alias("gated", "production", 1)
    api.apply(_following("gated", "registry://gated@production", canary=50))
    api.wait_ready("gated")
    g1, g2 = revision("gated", 1), revision("gated", 2)

    models.set_alias("gated", "canary", 2)
    api.wait_traffic("gated", {g1: 50, g2: 50})
    response = api.promote("gated")
    assert response.status_code == 409
    assert "accuracy >= 0.95 fails" in response.json()["error"]
    assert traffic(api.status("gated")) == {g1: 50, g2: 50}
    assert models.model("gated").aliases == {"production": 1, "canary": 2}


def test_registry_uris_are_checked_when_applied(
    api: ControlApi, models: RegistryClient, sources: list[Path]
) -> None:
    models.register("checked", str(sources[0]))
    bad = [
        ("registry://checked@production", "no alias 'production'"),
        ("registry://checked/7", "no version 7"),
        ("registry://missing/1", "'missing' is not registered"),
        ("registry://checked", "names no version"),
    ]
    for uri, message in bad:
        response = api.apply_text(json.dumps(_following("checked", uri)))
        assert response.status_code == 400, response.text
        assert message in response.json()["problems"][0]["message"], response.text
        assert response.json()["problems"][0]["path"].endswith("spec.predictor.storageUri")

    wrong_format = _following("checked", "registry://checked/1")
    wrong_format["spec"]["predictor"]["model"]["modelFormat"]["name"] = "sklearn"
    response = api.apply_text(json.dumps(wrong_format))
    assert response.status_code == 400
    assert "is a onnx model, not sklearn" in response.text


def test_the_cli_manages_the_registry_through_the_gateway(
    gateway: GatewayProcess, api: ControlApi, sources: list[Path]
) -> None:
    token = gateway.token
    assert token is not None

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "serving", "registry", "--registry", gateway.url, "--token", token, *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    done = cli("register", "cli-mlp", str(sources[0]), "--metric", "accuracy=0.99", "--tag", "team=fraud")
    assert done.returncode == 0, done.stderr
    assert "registered cli-mlp version 1" in done.stdout
    assert cli("alias", "cli-mlp", "production", "1").returncode == 0
    api.apply(_following("cli-mlp", "registry://cli-mlp@production"))
    api.wait_ready("cli-mlp")

    shown = json.loads(cli("show", "cli-mlp/1", "-o", "json").stdout)
    assert shown["aliases"] == ["production"] and shown["metrics"] == {"accuracy": 0.99}
    listed = cli("list")
    assert "cli-mlp" in listed.stdout and "production=1" in listed.stdout
    missing = cli("alias", "cli-mlp", "production", "5")
    assert missing.returncode == 1 and "error:" in missing.stderr and "no version 5" in missing.stderr


def test_a_trained_model_loads_its_alias_and_reloads_when_it_moves(
    gateway: GatewayProcess, models: RegistryClient, api: ControlApi, sources: list[Path]
) -> None:
    models.register("tm-mlp", str(sources[0]))
    models.register("tm-mlp", str(sources[1]))
    models.set_alias("tm-mlp", "production", 1)
    host = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "tm-host"},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"}, "protocolVersion": "v2"}}},
    }
    tm = {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "TrainedModel",
        "metadata": {"name": "tm-mlp"},
        "spec": {
            "inferenceService": "tm-host",
            "model": {"storageUri": "registry://tm-mlp@production", "framework": "onnx", "memory": "64Mi"},
        },
    }
    api.apply(host, tm)
    api.wait_ready("tm-host")

    def answer() -> list[float]:
        response = httpx.post(
            f"{gateway.url}/v2/models/tm-mlp/infer", json=mlp_body(), timeout=30, headers=gateway.headers
        )
        assert response.status_code == 200, response.text
        return response.json()["outputs"][0]["data"]

    first = answer()
    assert api.http.get("/trainedmodels/tm-mlp").json()["status"]["storageUri"] == "registry://tm-mlp/1"
    models.set_alias("tm-mlp", "production", 2)
    second = until(lambda: (a := answer()) != first and a, timeout=30, what="the TrainedModel to reload")
    assert second != first
    assert api.http.get("/trainedmodels/tm-mlp").json()["status"]["storageUri"] == "registry://tm-mlp/2"


def test_a_gateway_on_a_postgresql_registry_serves_from_it(
    postgres_url: str, tmp_path: Path, sources: list[Path]
) -> None:
    """The shared-registry set-up: registry rows in PostgreSQL; the replicas resolve there too."""
    with fresh_database(postgres_url) as url:
        state = tmp_path / "state"
        gateway = GatewayProcess(
            state,
            "--registry-url",
            url,
            "--artifacts",
            str(tmp_path / "shared-artifacts"),
            *storage_roots(state, sources[2].parent),
        )
        try:
            gateway.wait_live()
            with Client(gateway.url, token=gateway.token) as client:
                client.registry.register("pg-mlp", str(sources[2]))
                client.registry.set_alias("pg-mlp", "production", 1)
                client.apply(_following("pg-mlp", "registry://pg-mlp@production"))
                client.wait_ready("pg-mlp", timeout=60)
                response = httpx.post(
                    f"{gateway.url}/v2/models/pg-mlp/infer",
                    json=mlp_body(),
                    timeout=30,
                    headers=gateway.headers,
                )
                assert response.status_code == 200, response.text
            # Another process on the same database sees the same registry.
            with Registry(RegistryConfig(url=url, artifacts=str(tmp_path / "shared-artifacts"))) as direct:
                assert direct.resolve("registry://pg-mlp@production").version == 1
        finally:
            assert gateway.stop() == 0, gateway.output()[-3000:]
