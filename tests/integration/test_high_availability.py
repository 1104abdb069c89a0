"""Two `servegate up --engine kubernetes` on one PostgreSQL state (`--state-url`): both route, the
elected one reconciles and scales (on the traffic through both); when it dies the other takes over,
with no replica restarted and no request through the survivor failed, and scaling goes on. The
cluster is the in-memory Kubernetes API (tests/kube_api) whose kubelet runs each pod as a real
replica process.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway_helpers import ControlApi, Load, python_isvc
from tests.kube_api import KubeApi, kube_api
from tests.kube_kubelet import ProcessKubelet
from tests.servers import GatewayProcess, free_port, fresh_database, until

pytestmark = pytest.mark.integration

NAMESPACE = "models"
BODY = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}]}
LEADS = "leads: it reconciles and scales"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[KubeApi, ProcessKubelet, Path]]:
    kubelet = ProcessKubelet(tmp_path / "pods")
    with kube_api(kubelet=kubelet) as api:
        kubelet.attach(api)
        yield api, kubelet, api.write_kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE)


def _ready_pods(api: KubeApi) -> int:
    pods = api.list("v1", "pods", NAMESPACE, label_selector="serving.kserve.io/inferenceservice=echo")
    ready = [
        p
        for p in pods
        if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
    ]
    return len(ready)


def _echo(max_replicas: int) -> dict[str, object]:
    """A model that takes 50 ms, scaled on requests in flight: one per replica."""
    scaling = {"scaleMetric": "concurrency", "scaleTarget": 1, "minReplicas": 1, "maxReplicas": max_replicas}
    return python_isvc("echo", "Sleeper", env={"SLEEP_SECONDS": "0.05"}, predictor=scaling)


def _serves(gateway: GatewayProcess) -> bool:
    try:
        response = httpx.post(
            f"{gateway.url}/v2/models/echo/infer", json=BODY, headers=gateway.headers, timeout=5
        )
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def test_the_survivor_takes_over_without_a_failed_request_or_a_replica_restart(
    cluster: tuple[KubeApi, ProcessKubelet, Path], postgres_url: str, tmp_path: Path
) -> None:
    api, kubelet, kubeconfig = cluster
    with fresh_database(postgres_url) as state_url:
        common = ("--engine", "kubernetes", "--kubeconfig", str(kubeconfig), "--namespace", NAMESPACE)
        common += ("--pod-ports", f"{free_port()},{free_port()}", "--state-url", state_url)
        common += ("--leader-lease", "3", "--drain-timeout", "5")
        first = GatewayProcess(tmp_path / "first", *common)
        second: GatewayProcess | None = None
        try:
            first.wait_live(timeout=60)
            until(lambda: LEADS in first.output(), 20, "the first gateway to lead")
            second = GatewayProcess(tmp_path / "second", *common)
            second.wait_live(timeout=60)
            assert LEADS not in second.output()

            # Applied through the follower: the state is shared, the leader runs it.
            control = ControlApi(second.url, second.token)
            control.apply(_echo(max_replicas=3))
            until(lambda: _ready_pods(api) == 1, 60, "a ready pod")
            until(lambda: _serves(first) and _serves(second), 60, "both gateways to serve echo")

            with (
                Load(first.url, "echo", BODY, concurrency=2, token=first.token) as through_leader,
                Load(second.url, "echo", BODY, concurrency=6, token=second.token) as load,
            ):
                # The leader scales on the traffic through both: it scrapes every gateway.
                until(lambda: _ready_pods(api) == 3, 90, "the leader to scale to 3 on both gateways' load")
                assert through_leader.failures() == [] and load.failures() == []
                started = list(kubelet.started)
                first.signal(signal.SIGKILL)  # the leader dies without a word
                until(lambda: LEADS in second.output(), 30, "the second gateway to take over")
                load.wait_count(len(load.snapshot()) + 60)
            assert load.failures() == []  # none through the survivor
            assert kubelet.started == started  # no replica was restarted, none scaled away

            # Scaling goes on, by the new leader.
            control.apply(_echo(max_replicas=2))
            until(lambda: _ready_pods(api) == 2, 60, "2 ready pods")
            deployment = api.list("apps/v1", "deployments", NAMESPACE)[0]
            assert deployment["spec"]["replicas"] == 2
            control.close()
        finally:
            if first.process.poll() is None:
                first.stop()
            if second is not None:
                assert second.stop() == 0, second.output()[-5000:]


def test_with_replicas_that_die_with_their_gateway_a_second_gateway_does_not_start(
    postgres_url: str, tmp_path: Path
) -> None:
    """Process replicas are children of their gateway: a second gateway on the state could not take
    them over, so it refuses to start rather than run the same services twice."""
    import subprocess
    import sys

    with fresh_database(postgres_url) as state_url:
        common = ("--state-url", state_url, "--leader-lease", "2")
        first = GatewayProcess(tmp_path / "first", *common)
        try:
            first.wait_live(timeout=60)
            command = [
                sys.executable,
                "-m",
                "serving",
                "up",
                "--state-dir",
                str(tmp_path / "second"),
                *common,
            ]
            command += ["--http-port", str(free_port()), "--grpc-port", str(free_port())]
            done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        finally:
            assert first.stop() == 0, first.output()[-5000:]
    assert done.returncode == 1, done.stderr
    assert "another gateway leads the state at postgresql" in done.stderr, done.stderr
    assert "only with --engine kubernetes" in done.stderr
