"""`servegate up` over its lifetime: a stop that leaves no replica behind and a restart that brings
every service back as it was, and a replica killed under load that is replaced without a failed
request.

Each test runs its own gateway on its own state folder (a stop is part of what is tested).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway_helpers import (
    REVISION,
    ControlApi,
    Load,
    condition,
    mlp_body,
    mlp_isvc,
    revision,
    storage_roots,
    traffic,
)
from tests.servers import GatewayProcess, fresh_database, processes_using, until

pytestmark = pytest.mark.integration


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    yield state
    # Whatever a test did, nothing of its gateway may outlive it.
    leftovers = processes_using(state)
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    assert leftovers == set(), "processes of the test's state folder were left running"


def start_gateway(state_dir: Path, model_repo: Path) -> GatewayProcess:
    """A gateway on `state_dir` that may serve models from `model_repo`."""
    roots = storage_roots(state_dir, model_repo)
    return GatewayProcess(state_dir, "--drain-timeout", "5", *roots).wait_live()


def predictor_view(status: dict[str, Any]) -> dict[str, Any]:
    """What a restart must keep: revisions, rollout pointers and traffic."""
    predictor = status["components"]["predictor"]
    keys = ("latestCreatedRevision", "latestRolledoutRevision", "previousRolledoutRevision")
    return {**{k: predictor[k] for k in keys}, "traffic": traffic(status)}


def test_restart_restores_every_service(state_dir: Path, model_repo: Path) -> None:
    plain, split = "plain", "split"
    s1, s2 = revision(split, 1), revision(split, 2)

    gateway = start_gateway(state_dir, model_repo)
    try:
        api = ControlApi(gateway.url, gateway.token)
        api.apply(mlp_isvc(plain, model_repo), mlp_isvc(split, model_repo))
        api.wait_ready(plain)
        api.wait_ready(split)
        api.apply(mlp_isvc(split, model_repo, env={"MARK": "2"}, predictor={"canaryTrafficPercent": 30}))
        api.wait_traffic(split, {s1: 70, s2: 30})
        before = {name: predictor_view(api.status(name)) for name in (plain, split)}
        api.close()
        replicas = processes_using(state_dir) - {gateway.process.pid}
        assert len(replicas) == 3  # plain, and both revisions of split
    finally:
        code = gateway.stop()
    assert code == 0, gateway.output()[-5000:]
    assert processes_using(state_dir) == set(), "replicas outlived the gateway"

    gateway = start_gateway(state_dir, model_repo)
    try:
        api = ControlApi(gateway.url, gateway.token)
        api.wait_ready(plain)
        api.wait_traffic(split, {s1: 70, s2: 30})
        after = {name: predictor_view(api.wait_ready(name)) for name in (plain, split)}
        assert after == before
        with httpx.Client(
            base_url=gateway.url, timeout=30.0, trust_env=False, headers=gateway.headers
        ) as http:
            response = http.post(f"/v2/models/{plain}/infer", json=mlp_body())
            assert response.status_code == 200, response.text
            assert response.headers[REVISION] == revision(plain, 1)
            answered = set()
            for _ in range(40):
                response = http.post(f"/v2/models/{split}/infer", json=mlp_body())
                assert response.status_code == 200, response.text
                answered.add(response.headers[REVISION])
            assert answered == {s1, s2}
        api.close()
    finally:
        code = gateway.stop()
    assert code == 0, gateway.output()[-5000:]


def test_state_on_postgresql_outlives_the_state_dir(
    tmp_path: Path, model_repo: Path, postgres_url: str
) -> None:
    """--state-url: a gateway started on another state dir, same database, brings the service back."""
    name = "pg"
    with fresh_database(postgres_url) as url:
        folders = [tmp_path / "first", tmp_path / "second"]
        for i, folder in enumerate(folders):
            roots = storage_roots(folder, model_repo)
            gateway = GatewayProcess(folder, "--drain-timeout", "5", "--state-url", url, *roots).wait_live()
            try:
                api = ControlApi(gateway.url, gateway.token)
                if i == 0:
                    api.apply(mlp_isvc(name, model_repo))
                    api.apply(mlp_isvc(name, model_repo, env={"MARK": "2"}))
                view = predictor_view(api.wait_ready(name))
                assert view["latestRolledoutRevision"] == revision(name, 2), view
                api.close()
            finally:
                code = gateway.stop()
            assert code == 0, gateway.output()[-5000:]
            assert processes_using(folder) == set(), "replicas outlived the gateway"


def replica_pids(state_dir: Path, rev: str) -> dict[str, int]:
    """Replica id -> pid of the live replicas of `rev`, from their port files."""
    found = {}
    for port_file in (state_dir / "replicas").glob(f"{rev}-*/ports.json"):
        try:
            pid = json.loads(port_file.read_text())["pid"]
        except (OSError, ValueError, KeyError):
            continue
        if pid in processes_using(state_dir):
            found[port_file.parent.name] = pid
    return found


def restart_counts(value: Any) -> list[int]:
    """Every `restarts` / `restartCount` number anywhere in a status document."""
    if isinstance(value, dict):
        own = [v for k, v in value.items() if k in ("restarts", "restartCount") and isinstance(v, int)]
        return own + [n for v in value.values() for n in restart_counts(v)]
    if isinstance(value, list):
        return [n for v in value for n in restart_counts(v)]
    return []


def test_killed_replica_is_replaced_without_failing_requests(state_dir: Path, model_repo: Path) -> None:
    name = "victim"
    rev = revision(name, 1)
    gateway = start_gateway(state_dir, model_repo)
    try:
        api = ControlApi(gateway.url, gateway.token)
        api.apply(mlp_isvc(name, model_repo))
        api.wait_ready(name)
        ((replica_id, pid),) = replica_pids(state_dir, rev).items()

        with Load(gateway.url, name, mlp_body(), concurrency=4, token=gateway.token) as load:
            load.wait_count(50)
            os.kill(pid, signal.SIGKILL)
            replacement = until(
                lambda: (p := replica_pids(state_dir, rev).get(replica_id)) and p != pid and p,
                30,
                "a replacement replica process",
            )
            status = api.wait_ready(name, 30)
            mark = load.mark()
            load.wait_count(100)

        assert load.failures() == []
        assert len(load.snapshot()) > 150
        assert {o.revision for o in load.since(mark)} == {rev}
        assert replica_pids(state_dir, rev) == {replica_id: replacement}
        assert condition(status, "PredictorReady")["status"] == "True"
        assert status["components"]["predictor"]["replicas"][rev]["ready"] == 1
        assert any(n >= 1 for n in restart_counts(status)), (
            "the status does not show the replica's restart: "
            + json.dumps(status["components"]["predictor"]["replicas"])
        )
        api.close()
    finally:
        code = gateway.stop()
    assert code == 0, gateway.output()[-5000:]
