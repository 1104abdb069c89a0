"""`--workers 2`: two replica processes behind the same ports, acting as one server.

Which worker answers a request is the kernel's choice; the access log names the process that
served each request, so the tests keep asking until every worker has answered.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from predictors.examples import make_mlp_onnx, mlp_forward
from tests.conftest import MLP_SIZES
from tests.servers import ReplicaProcess, until

pytestmark = pytest.mark.integration

WORKERS = 2
X = np.linspace(-1.0, 1.0, 2 * MLP_SIZES[0], dtype=np.float32).reshape(2, MLP_SIZES[0])
BODY = {"inputs": [{"name": "input", "shape": list(X.shape), "datatype": "FP32", "data": X.ravel().tolist()}]}


def children(pid: int) -> set[int]:
    """Processes whose parent is `pid`, from /proc/<pid>/stat (field 4 is the parent's pid)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # The command name (field 2) is in parentheses and may hold spaces: split after it.
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.add(int(entry.name))
    return found


def worker_pids(server: ReplicaProcess) -> set[int]:
    """The supervisor's worker processes (spawned ones; not multiprocessing's resource tracker)."""
    pids = set()
    for pid in children(server.process.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            pids.add(pid)
    return pids


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class AccessLog:
    """Which process answered which request, from the server's --access-log lines."""

    def __init__(self, server: ReplicaProcess) -> None:
        self.server = server
        self.start = 0

    def mark(self) -> None:
        """Only look at what is logged from now on."""
        self.start = len(self.server.output())

    def answered_by(self, method: str, path: str) -> dict[int, list[int]]:
        """pid -> the statuses it answered `method path` with, since the last mark."""
        line = re.compile(rf'\[(\d+)\] uvicorn\.access: \S+ - "{method} {re.escape(path)} HTTP/1\.1" (\d+)')
        answers: dict[int, list[int]] = {}
        for pid, code in line.findall(self.server.output()[self.start :]):
            answers.setdefault(int(pid), []).append(int(code))
        return answers


def infer(server: ReplicaProcess, model: str = "mlp") -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{model}/infer", json=BODY, timeout=10.0)


def assert_mlp(response: httpx.Response, seed: int = 0) -> None:
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    actual = np.array(output["data"], dtype=np.float32).reshape(output["shape"])
    np.testing.assert_allclose(actual, mlp_forward(X, MLP_SIZES, seed), rtol=1e-5, atol=1e-5)


def requests_total(server: ReplicaProcess, **labels: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=5.0).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "servegate_requests_total" and labels.items() <= sample.labels.items()
    )


def assert_every_worker_answers(
    server: ReplicaProcess, log: AccessLog, path: str, expected: int, workers: set[int]
) -> None:
    """GET `path` on fresh connections, 20 at a time, until every worker has answered; each answer
    must be `expected`."""
    log.mark()
    for _ in range(10):
        statuses = [httpx.get(server.url + path, timeout=5.0).status_code for _ in range(20)]
        answers = log.answered_by("GET", path)
        assert statuses == [expected] * 20, f"GET {path}: pid -> statuses {answers} (workers {workers})"
        if workers <= answers.keys():
            return
    raise AssertionError(f"workers {workers} did not all answer {path}: {log.answered_by('GET', path)}")


def wait_every_worker_ready(server: ReplicaProcess, workers: set[int]) -> None:
    """Until every worker has answered /v2/health/ready with 200 (one may be ready before another)."""
    log = AccessLog(server)

    def all_ready() -> bool:
        httpx.get(f"{server.url}/v2/health/ready", timeout=5.0)
        answers = log.answered_by("GET", "/v2/health/ready")
        return all(200 in answers.get(pid, []) for pid in workers)

    until(all_ready, what=f"workers {workers} to be ready")


def all_workers(server: ReplicaProcess, replacing: int | None = None) -> set[int]:
    """The worker pids once all `WORKERS` run (one of them started in place of `replacing`)."""

    def started() -> set[int] | None:
        pids = worker_pids(server)
        return pids if len(pids) == WORKERS and replacing not in pids else None

    return until(started, what=f"{WORKERS} workers" + (f" without {replacing}" if replacing else ""))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    make_mlp_onnx(tmp_path / "models" / "mlp" / "1" / "model.onnx", MLP_SIZES, seed=0)
    make_mlp_onnx(tmp_path / "models" / "other" / "1" / "model.onnx", MLP_SIZES, seed=1)
    return tmp_path / "models"


@pytest.fixture
def server(repo: Path) -> Iterator[ReplicaProcess]:
    with ReplicaProcess(
        "--model-repository", str(repo), "--workers", str(WORKERS), "--access-log", "--drain-timeout", "5",
        "--model-control", "explicit",
    ) as server:  # fmt: skip
        server.wait_ready()
        wait_every_worker_ready(server, all_workers(server))
        yield server


def test_requests_spread_over_workers_and_metrics_add_up(server: ReplicaProcess) -> None:
    log = AccessLog(server)
    workers = worker_pids(server)
    sent = 0
    with ThreadPoolExecutor(max_workers=8) as pool:
        # Fresh connections each time, until every worker has served some.
        for _ in range(10):
            for response in pool.map(lambda _: infer(server), range(20)):
                assert_mlp(response)
            sent += 20
            if workers <= log.answered_by("POST", "/v2/models/mlp/infer").keys():
                break
    served = log.answered_by("POST", "/v2/models/mlp/infer")
    assert workers <= served.keys(), served
    assert sum(len(codes) for codes in served.values()) == sent
    assert requests_total(server, model="mlp", protocol="v2", status="ok") == sent


def test_repository_changes_reach_every_worker_even_a_restarted_one(server: ReplicaProcess) -> None:
    log = AccessLog(server)
    workers = worker_pids(server)
    ready = "/v2/models/mlp/ready"

    assert httpx.post(f"{server.url}/v2/repository/models/mlp/unload", timeout=30.0).status_code == 200
    assert_every_worker_answers(server, log, ready, 503, workers)
    assert httpx.post(f"{server.url}/v2/repository/models/mlp/load", timeout=30.0).status_code == 200
    assert_every_worker_answers(server, log, ready, 200, workers)

    # Unload again, then kill a worker: the others keep serving, and the replacement replays the unload.
    assert httpx.post(f"{server.url}/v2/repository/models/mlp/unload", timeout=30.0).status_code == 200
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    until(lambda: not alive(victim), what=f"worker {victim} to die")
    for _ in range(10):
        assert_mlp(infer(server, "other"), seed=1)
    assert httpx.get(f"{server.url}/v2/health/live", timeout=5.0).status_code == 200

    replaced = all_workers(server, replacing=victim)
    (newcomer,) = replaced - workers
    # The newcomer loads mlp (503 while LOADING, then 200) before it replays the unload: wait for a
    # 503 it gave after its "model mlp ... ready" line.
    answered_503 = re.compile(rf'\[{newcomer}\] uvicorn\.access: \S+ - "GET {ready} HTTP/1\.1" 503')

    def newcomer_reports_unloaded() -> bool:
        httpx.get(server.url + ready, timeout=5.0)
        output = server.output()
        loaded = output.find(f"[{newcomer}] predictors.model: model mlp version 1 ready")
        return loaded >= 0 and answered_503.search(output, loaded) is not None

    until(newcomer_reports_unloaded, what=f"the restarted worker {newcomer} to report mlp unloaded")
    assert_every_worker_answers(server, log, ready, 503, replaced)
    assert "restarting it" in server.output()

    # And the newcomer takes part in later changes.
    assert httpx.post(f"{server.url}/v2/repository/models/mlp/load", timeout=30.0).status_code == 200
    assert_every_worker_answers(server, log, ready, 200, replaced)
    assert_mlp(infer(server))


def test_sigterm_stops_every_worker_and_exits_0(server: ReplicaProcess) -> None:
    workers = worker_pids(server)
    server.signal(signal.SIGTERM)
    assert server.process.wait(timeout=15) == 0
    assert not any(alive(pid) for pid in workers)
    output = server.output()
    assert output.count("draining in-flight requests") == WORKERS, output
    assert "all workers stopped" in output, output
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/v2/health/live", timeout=5.0)


def test_a_change_made_while_a_worker_restarts_reaches_it(server: ReplicaProcess) -> None:
    log = AccessLog(server)
    workers = worker_pids(server)
    ready = "/v2/models/mlp/ready"
    assert httpx.post(f"{server.url}/v2/repository/models/mlp/unload", timeout=30.0).status_code == 200
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)

    replaced = all_workers(server, replacing=victim)
    # The replacement is still starting (importing, loading): the load must reach it all the same,
    # and win over the older unload it replays.
    assert httpx.post(f"{server.url}/v2/repository/models/mlp/load", timeout=30.0).status_code == 200
    assert_every_worker_answers(server, log, ready, 200, replaced)


def test_an_unload_made_while_a_worker_restarts_reaches_it(server: ReplicaProcess) -> None:
    log = AccessLog(server)
    victim = min(worker_pids(server))
    os.kill(victim, signal.SIGKILL)
    replaced = all_workers(server, replacing=victim)
    # The replacement has not loaded its models yet; the unload must still succeed, and hold there too.
    response = httpx.post(f"{server.url}/v2/repository/models/mlp/unload", timeout=30.0)
    assert response.status_code == 200, response.text
    wait_every_worker_ready(server, replaced)
    assert_every_worker_answers(server, log, "/v2/models/mlp/ready", 503, replaced)
