"""`servegate up --engine ray` on a real multi-node Ray cluster (the session's: a head and two
worker nodes with one logical GPU each, all on 127.0.0.1).

Replicas are Ray actors running the replica server on their node; the gateway routes to them
directly. Covered: spreading over nodes and every protocol through the gateway (tritonclient
unchanged), a GPU replica no node can take that starts once a node joins, a nodeSelector nobody
matches, a SIGKILLed replica process and a lost node replaced under load, a canary rollout and
promote, scale from zero, a replica that cannot start, and a gateway restart that re-attaches to
its replicas (no restart) and stops the actors nothing owns.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from predictors.examples import mlp_forward
from tests.conftest import MLP_SIZES
from tests.gateway_helpers import (
    MLP_X,
    X_BODY,
    ControlApi,
    Load,
    condition,
    mlp_body,
    mlp_isvc,
    python_isvc,
    revision,
    storage_roots,
    traffic,
)
from tests.ray_cluster import NODE_LABEL, RayTestCluster
from tests.servers import GatewayProcess, until

pytestmark = pytest.mark.integration

GPU = {"resources": {"limits": {"nvidia.com/gpu": "1"}}}


class RayGateway:
    """The module's `servegate up --engine ray`, which one test restarts on the same state dir."""

    def __init__(self, state_dir: Path, cluster: RayTestCluster, model_root: Path) -> None:
        self.state_dir, self.cluster, self.model_root = state_dir, cluster, model_root
        self.process = self._start()
        self.api = ControlApi(self.process.url, self.process.token)

    def _start(self) -> GatewayProcess:
        roots = storage_roots(self.state_dir, self.model_root)
        args = ("--engine", "ray", "--ray-address", self.cluster.address, "--drain-timeout", "5", *roots)
        gateway = GatewayProcess(self.state_dir, *args)
        gateway.wait_live(timeout=120)
        return gateway

    def restart(self) -> None:
        self.api.close()
        assert self.process.stop() == 0, self.process.output()[-5000:]
        self.process = self._start()
        self.api = ControlApi(self.process.url, self.process.token)

    def stop(self) -> None:
        self.api.close()
        code = self.process.stop()
        assert code == 0, self.process.output()[-5000:]


@pytest.fixture(scope="module")
def ray_gateway(
    ray_driver: RayTestCluster, tmp_path_factory: pytest.TempPathFactory, model_repo: Path
) -> Iterator[RayGateway]:
    gateway = RayGateway(tmp_path_factory.mktemp("ray-gateway"), ray_driver, model_repo.parent)
    try:
        yield gateway
    finally:
        with contextlib.suppress(Exception):
            for item in gateway.api.http.get("/inferenceservices").json()["items"]:
                gateway.api.delete(item["metadata"]["name"])
        gateway.stop()
        _kill_owned_actors(gateway.state_dir)


def _kill_owned_actors(state_dir: Path) -> None:
    """Whatever this module's gateway left on the shared cluster goes (the next module needs the GPUs)."""
    import json

    import ray

    owner = json.loads((state_dir / "ray-engine.json").read_text())["owner"]
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["name"].startswith(f"{owner}:"):
            with contextlib.suppress(ValueError):
                ray.kill(ray.get_actor(entry["name"], namespace=entry["namespace"]))


def pool(api: ControlApi, service: str, rev: str) -> dict[str, Any]:
    return api.status(service)["components"]["predictor"]["replicas"].get(rev, {})


def predictor_ready(api: ControlApi, service: str) -> dict[str, Any]:
    """The PredictorReady condition ({} before the controller has set it)."""
    return next((c for c in api.status(service).get("conditions", []) if c["type"] == "PredictorReady"), {})


def ready_replicas(api: ControlApi, service: str, rev: str) -> list[dict[str, Any]]:
    return [r for r in pool(api, service, rev).get("replicas", []) if r["state"] == "Ready"]


def node_label(cluster: RayTestCluster, node_text: str) -> str:
    """The label (a, b, ...) of the worker a replica's `node` ("IP (node-id prefix)") names; "head" else."""
    for label, node in cluster.workers.items():
        if f"({node.node_id[:8]})" in node_text:
            return label
    return "head"


def replica_pid(replica_id: str) -> int:
    """The pid of a replica's `servegate model serve` process (its scratch folder is named after it)."""
    marker = f"servegate-{replica_id}-".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes()
                if marker in cmdline and b"serve" in cmdline:
                    return int(entry.name)
    raise AssertionError(f"no process for replica {replica_id}")


def wait_pool(api: ControlApi, service: str, rev: str, ready: int, desired: int, timeout: float = 90) -> None:
    def reached() -> bool:
        p = pool(api, service, rev)
        return (p.get("ready"), p.get("desired")) == (ready, desired)

    until(reached, timeout, f"{service}: {ready}/{desired} replicas ready")


def assert_few_failures(load: Load) -> None:
    outcomes, failures = load.snapshot(), load.failures()
    print(f"{len(failures)} failed of {len(outcomes)} requests")
    assert len(outcomes) > 100
    assert len(failures) <= len(outcomes) * 0.001, failures[:3]


# -- placement and protocols ------------------------------------------------------------------------


def test_gpu_replicas_land_on_two_nodes_and_answer_every_protocol(
    ray_gateway: RayGateway, model_repo: Path
) -> None:
    api, gateway = ray_gateway.api, ray_gateway.process
    api.apply(mlp_isvc("gpu", model_repo, model=GPU, predictor={"minReplicas": 2, "maxReplicas": 2}))
    status = api.wait_ready("gpu", timeout=120)
    rev = revision("gpu", 1)
    wait_pool(api, "gpu", rev, ready=2, desired=2)  # Ready needs one replica; this test wants both
    replicas = ready_replicas(api, "gpu", rev)
    assert len(replicas) == 2
    assert {node_label(ray_gateway.cluster, r["node"]) for r in replicas} == {"a", "b"}
    assert all(r["url"].startswith("http://127.0.0.1:") for r in replicas)
    assert condition(status, "Ready")["status"] == "True"

    expected = mlp_forward(MLP_X, MLP_SIZES)
    response = httpx.post(
        f"{gateway.url}/v2/models/gpu/infer", json=mlp_body(), headers=gateway.headers, trust_env=False
    )
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    np.testing.assert_allclose(
        np.asarray(output["data"]).reshape(output["shape"]), expected, rtol=1e-4, atol=1e-5
    )

    http = httpclient.InferenceServerClient(gateway.url.removeprefix("http://"))
    binary = httpclient.InferInput("input", list(MLP_X.shape), "FP32")
    binary.set_data_from_numpy(MLP_X, binary_data=True)
    out = httpclient.InferRequestedOutput("output", binary_data=True)
    result = http.infer("gpu", [binary], outputs=[out], headers=gateway.headers).as_numpy("output")
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-5)

    grpc = grpcclient.InferenceServerClient(gateway.grpc_url)
    tensor = grpcclient.InferInput("input", list(MLP_X.shape), "FP32")
    tensor.set_data_from_numpy(MLP_X)
    result = grpc.infer("gpu", [tensor], headers=gateway.headers).as_numpy("output")
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-5)
    grpc.close()
    http.close()

    # The CLI shows where each replica runs.
    env = {**os.environ, "SERVEGATE_TOKEN": gateway.token or ""}
    wide = _cli(env, "get", "isvc", "gpu", "-o", "wide", "--url", gateway.url)
    assert "NODES" in wide and "2/2" in wide
    described = _cli(env, "describe", "isvc", "gpu", "--url", gateway.url)
    assert "Replicas (predictor):" in described and replicas[0]["node"] in described

    # The dashboard reads a replica's log tail from its actor, on whichever node it runs.
    log_url = f"{gateway.url}/api/v1/inferenceservices/gpu/replicas/{replicas[0]['id']}/log?lines=50"
    tail = httpx.get(log_url, headers=gateway.headers, trust_env=False, timeout=30)
    assert tail.status_code == 200, tail.text
    assert tail.json()["revision"] == rev and 0 < len(tail.json()["lines"]) <= 50


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "serving", *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_third_gpu_replica_waits_for_a_node_and_starts_when_one_joins(
    ray_gateway: RayGateway, model_repo: Path
) -> None:
    api, cluster = ray_gateway.api, ray_gateway.cluster
    rev = revision("gpu", 1)
    api.apply(mlp_isvc("gpu", model_repo, model=GPU, predictor={"minReplicas": 3, "maxReplicas": 3}))

    # Two of three ready: the service serves, and its pool says why the third waits.
    waiting = until(lambda: (p := pool(api, "gpu", rev)) and not p["schedulable"] and p, 60, "NotSchedulable")
    assert "1 of 3 replicas wait" in waiting["reason"] and "1 GPU" in waiting["reason"], waiting
    assert "in use" in waiting["reason"], waiting
    assert [r["state"] for r in waiting["replicas"]].count("Pending") == 1
    wide = _cli(
        {**os.environ, "SERVEGATE_TOKEN": ray_gateway.process.token or ""},
        "describe",
        "isvc",
        "gpu",
        "--url",
        ray_gateway.process.url,
    )
    assert "not schedulable" in wide and "Pending" in wide

    with cluster.extra_node("c"):
        wait_pool(api, "gpu", rev, 3, 3)
        nodes = {node_label(cluster, r["node"]) for r in ready_replicas(api, "gpu", rev)}
        assert nodes == {"a", "b", "c"}
        assert condition(api.status("gpu"), "PredictorReady")["status"] == "True"
        # Back to two before the node leaves (the newest replica, the one on c, goes).
        api.apply(mlp_isvc("gpu", model_repo, model=GPU, predictor={"minReplicas": 2, "maxReplicas": 2}))
        until(lambda: len(pool(api, "gpu", rev)["replicas"]) == 2, 60, "the third replica to go")
    api.delete("gpu")


def test_a_node_selector_nobody_matches_says_so(ray_gateway: RayGateway, model_repo: Path) -> None:
    api = ray_gateway.api
    manifest = mlp_isvc("picky", model_repo, predictor={"nodeSelector": {NODE_LABEL: "z"}})
    api.apply(manifest)

    def not_schedulable() -> dict[str, Any] | None:
        ready = predictor_ready(api, "picky")
        return ready if ready.get("reason") == "NotSchedulable" else None

    waiting = until(not_schedulable, 60, "NotSchedulable")
    assert f"label {NODE_LABEL}=z" in waiting["message"] and "no node" in waiting["message"], waiting
    api.delete("picky")


# -- failures ---------------------------------------------------------------------------------------


def test_a_killed_replica_process_and_a_lost_node_are_replaced_under_load(
    ray_gateway: RayGateway, model_repo: Path
) -> None:
    api, gateway, cluster = ray_gateway.api, ray_gateway.process, ray_gateway.cluster
    rev = revision("sturdy", 1)
    api.apply(mlp_isvc("sturdy", model_repo, predictor={"minReplicas": 2, "maxReplicas": 2}))
    api.wait_ready("sturdy", timeout=120)
    wait_pool(api, "sturdy", rev, 2, 2)

    with Load(gateway.url, "sturdy", mlp_body(), concurrency=4, token=gateway.token) as load:
        load.wait_count(50)
        victim = ready_replicas(api, "sturdy", rev)[0]
        os.kill(replica_pid(victim["id"]), signal.SIGKILL)
        until(
            lambda: any(
                r["id"] == victim["id"] and r["restarts"] >= 1 for r in ready_replicas(api, "sturdy", rev)
            ),
            60,
            "the killed replica to be replaced",
        )
        load.wait_count(50)

        # A worker node goes away with its replicas; the pool comes back to two elsewhere.
        on_worker = [
            r for r in ready_replicas(api, "sturdy", rev) if node_label(cluster, r["node"]) != "head"
        ]
        label = node_label(cluster, on_worker[0]["node"])
        with cluster.replace_node(label):
            cluster.remove_worker(label)
            until(
                lambda: (
                    len(ready_replicas(api, "sturdy", rev)) == 2
                    and all(
                        node_label(cluster, r["node"]) != label for r in ready_replicas(api, "sturdy", rev)
                    )
                ),
                120,
                "the lost node's replica to be re-created elsewhere",
            )
            load.wait_count(50)
    assert_few_failures(load)
    assert pool(api, "sturdy", rev)["restarts"] >= 2  # the killed process, and the lost node's replica
    api.delete("sturdy")


def test_a_replica_that_cannot_start_is_failed_with_its_node_and_reason(
    ray_gateway: RayGateway, model_repo: Path
) -> None:
    api = ray_gateway.api
    manifest = mlp_isvc("broken", model_repo)
    manifest["spec"]["predictor"]["model"]["storageUri"] = str(model_repo / "missing" / "1")
    api.apply(manifest)

    def failed() -> dict[str, Any] | None:
        ready = predictor_ready(api, "broken")
        return ready if ready.get("reason") == "RevisionFailed" else None

    reason = until(failed, 60, "the replica to fail")["message"]
    assert "(on node 127.0.0.1 (" in reason and "model artifact not found" in reason, reason
    api.delete("broken")


# -- rollouts and scaling ---------------------------------------------------------------------------


def test_canary_rollout_and_promote_on_ray_pools_fail_no_request(
    ray_gateway: RayGateway, model_repo: Path
) -> None:
    api, gateway = ray_gateway.api, ray_gateway.process
    r1, r2 = revision("flip", 1), revision("flip", 2)
    api.apply(mlp_isvc("flip", model_repo))
    api.wait_ready("flip", timeout=120)
    with Load(gateway.url, "flip", mlp_body(), concurrency=4, token=gateway.token) as load:
        load.wait_count(50)
        api.apply(mlp_isvc("flip", model_repo, env={"MARK": "2"}, predictor={"canaryTrafficPercent": 20}))
        api.wait_traffic("flip", {r1: 80, r2: 20}, timeout=120)
        load.wait_count(100)
        response = api.promote("flip")
        assert response.status_code == 200, response.text
        load.wait_for(r2)
        assert traffic(api.status("flip")) == {r2: 100}
    assert load.failures() == [], load.failures()[:3]
    assert {o.revision for o in load.snapshot()} == {r1, r2}
    api.delete("flip")


def test_scale_from_zero_on_ray(ray_gateway: RayGateway) -> None:
    api, gateway = ray_gateway.api, ray_gateway.process
    manifest = python_isvc("sleepy", "Sleeper", env={"SLEEP_SECONDS": "0"}, predictor={"minReplicas": 0})
    manifest["metadata"]["annotations"] = {"serving.servegate.io/scale-to-zero-grace-period": "2s"}
    api.apply(manifest)
    rev = revision("sleepy", 1)
    api.wait_ready("sleepy", timeout=120)
    until(lambda: pool(api, "sleepy", rev).get("desired", 0) == 0, 60, "scale to zero")
    with httpx.Client(base_url=gateway.url, timeout=120, trust_env=False, headers=gateway.headers) as client:
        answer = client.post("/v2/models/sleepy/infer", json=X_BODY)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0]
    api.delete("sleepy")


# -- restarts ---------------------------------------------------------------------------------------


def test_a_gateway_restart_reattaches_without_restarting_replicas(
    ray_gateway: RayGateway, model_repo: Path
) -> None:
    import json

    import ray

    api = ray_gateway.api
    rev = revision("steady", 1)
    api.apply(mlp_isvc("steady", model_repo, predictor={"minReplicas": 2, "maxReplicas": 2}))
    api.wait_ready("steady", timeout=120)
    wait_pool(api, "steady", rev, 2, 2)
    before = {r["id"]: replica_pid(r["id"]) for r in ready_replicas(api, "steady", rev)}
    # An actor of this gateway's that no revision owns (as a crash between two steps would leave).
    owner = json.loads((ray_gateway.state_dir / "ray-engine.json").read_text())["owner"]
    stray_name = f"{owner}:gone-predictor-00001-zzzzz:000000"
    stray = (
        ray.remote(_Stray)
        .options(name=stray_name, namespace="servegate", lifetime="detached", num_cpus=0)
        .remote()
    )
    ray.get(stray.ping.remote())

    ray_gateway.restart()
    api = ray_gateway.api
    api.wait_ready("steady", timeout=60)
    wait_pool(api, "steady", rev, 2, 2, timeout=60)
    after = {r["id"]: (replica_pid(r["id"]), r["restarts"]) for r in ready_replicas(api, "steady", rev)}
    assert after == {rid: (pid, 0) for rid, pid in before.items()}
    events = " ".join(pool(api, "steady", rev)["events"])
    assert "re-attached" in events, events
    response = httpx.post(
        f"{ray_gateway.process.url}/v2/models/steady/infer",
        json=mlp_body(),
        headers=ray_gateway.process.headers,
        trust_env=False,
    )
    assert response.status_code == 200, response.text
    until(
        lambda: stray_name not in ray.util.list_named_actors(all_namespaces=False) and not _alive(stray),
        30,
        "the stray actor to go",
    )
    api.delete("steady")


class _Stray:
    def ping(self) -> bool:
        return True


def _alive(actor: Any) -> bool:
    import ray

    try:
        ray.get(actor.ping.remote(), timeout=5)
    except (ray.exceptions.RayError, TimeoutError):
        return False
    return True


def test_a_bad_ray_address_fails_fast(tmp_path: Path) -> None:
    for address, message in (
        ("not-an-address", "bad Ray address"),
        ("127.0.0.1:1", "cannot reach the Ray cluster at 127.0.0.1:1"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "serving", "up", "--engine", "ray", "--ray-address", address,
             "--state-dir", str(tmp_path), "--http-port", "0", "--grpc-port", "0"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 1, done.stderr
        assert message in done.stderr, done.stderr
