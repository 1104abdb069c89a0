"""Shared helpers for the gateway tests: manifests, a control-API client, status readers, a load
generator that records every answer, and a scan for processes left behind.

Everything here talks to a `servegate up` process over loopback (see `tests.servers.GatewayProcess`).
"""

from __future__ import annotations

import copy
import http.server
import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx
import numpy as np
import pytest

from tests.conftest import MLP_SIZES
from tests.servers import GatewayProcess, until

__all__ = [
    "MLP_X",
    "REVISION",
    "VARIANT",
    "X_BODY",
    "ControlApi",
    "Load",
    "Outcome",
    "condition",
    "gateway_process",
    "metric_total",
    "mlp_body",
    "mlp_isvc",
    "python_isvc",
    "revision",
    "storage_roots",
    "traffic",
]

REVISION = "x-servegate-revision"
VARIANT = "x-servegate-variant"

#: two rows of MLP input.
MLP_X = np.linspace(-1.0, 1.0, 2 * MLP_SIZES[0], dtype=np.float32).reshape(2, MLP_SIZES[0])
#: a request for the python models of `tests.gateway_models` (input `x`, FP32 [-1]).
X_BODY = {"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]}


def mlp_body(x: np.ndarray = MLP_X) -> dict[str, Any]:
    """A V2 JSON request for the MLP."""
    return {
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]
    }


# -- manifests -------------------------------------------------------------------------------------


def _isvc(
    name: str,
    model: dict[str, Any],
    env: dict[str, str] | None,
    extra: dict[str, Any] | None,
    spec: dict[str, Any],
) -> dict[str, Any]:
    model = {**copy.deepcopy(model), **copy.deepcopy(extra or {})}
    if env:
        model["env"] = [{"name": k, "value": v} for k, v in env.items()]
    predictor = {"model": model, **spec.pop("predictor", {})}
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {"predictor": predictor, **spec},
    }


def mlp_isvc(
    name: str,
    model_repo: Path,
    env: dict[str, str] | None = None,
    model: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """An InferenceService serving the session's ONNX MLP (V2).

    `env` sets the model's environment (a different value makes a new revision), `model` adds fields
    to `predictor.model` (resources, ...), `predictor={...}` adds predictor fields
    (canaryTrafficPercent, containerConcurrency, ...), other keywords add spec fields (experiment, shadow).
    """
    onnx = {
        "modelFormat": {"name": "onnx"},
        "protocolVersion": "v2",
        "storageUri": str(model_repo / "mlp" / "1"),
    }
    return _isvc(name, onnx, env, model, spec)


def python_isvc(
    name: str,
    cls: str,
    env: dict[str, str] | None = None,
    model: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """An InferenceService serving `tests.gateway_models:<cls>`; the rest as for `mlp_isvc`."""
    python = {
        "modelFormat": {"name": "python"},
        "protocolVersion": "v2",
        "storageUri": f"tests.gateway_models:{cls}",
    }
    return _isvc(name, python, env, model, spec)


def revision(service: str, number: int) -> str:
    return f"{service}-predictor-{number:05d}"


# -- status ----------------------------------------------------------------------------------------


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def traffic(status: dict[str, Any]) -> dict[str, int]:
    """The predictor's configured traffic, revision -> percent."""
    return {t["revisionName"]: t["percent"] for t in status["components"]["predictor"]["traffic"]}


class ControlApi:
    """The gateway's `/api/v1`, with waits on an InferenceService's status."""

    def __init__(self, url: str, token: str | None = None) -> None:
        headers = {"authorization": f"Bearer {token}"} if token else None
        self.http = httpx.Client(base_url=url + "/api/v1", timeout=60.0, trust_env=False, headers=headers)

    def close(self) -> None:
        self.http.close()

    def apply_text(self, text: str) -> httpx.Response:
        return self.http.post("/apply", content=text.encode())

    def apply(self, *manifests: dict[str, Any]) -> dict[str, Any]:
        """Apply `manifests` in one request (a `kind: List` document); fail unless accepted."""
        text = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(manifests)})
        response = self.apply_text(text)
        assert response.status_code == 200, response.text
        return response.json()

    def get(self, name: str) -> dict[str, Any]:
        response = self.http.get(f"/inferenceservices/{name}")
        assert response.status_code == 200, response.text
        return response.json()

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name)["status"]

    def delete(self, name: str) -> httpx.Response:
        return self.http.delete(f"/inferenceservices/{name}")

    def promote(self, name: str) -> httpx.Response:
        return self.http.post(f"/inferenceservices/{name}/promote")

    def rollback(self, name: str) -> httpx.Response:
        return self.http.post(f"/inferenceservices/{name}/rollback")

    def events(self, name: str) -> list[dict[str, Any]]:
        response = self.http.get(f"/inferenceservices/{name}/events")
        assert response.status_code == 200, response.text
        return response.json()["items"]

    def wait_ready(self, name: str, timeout: float = 60.0) -> dict[str, Any]:
        """The status once the Ready condition is True."""

        def ready() -> dict[str, Any] | None:
            status = self.status(name)
            return status if condition(status, "Ready")["status"] == "True" else None

        return until(ready, timeout, f"InferenceService {name} to be Ready")

    def wait_traffic(self, name: str, expected: dict[str, int], timeout: float = 60.0) -> dict[str, Any]:
        """The status once the predictor's traffic is `expected` (revision -> percent)."""

        def reached() -> dict[str, Any] | None:
            status = self.status(name)
            return status if traffic(status) == expected else None

        return until(reached, timeout, f"{name} traffic {expected}")


# -- load ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request's answer: HTTP status (0: no answer at all), the revision that answered, and for
    a failure what came back."""

    status: int
    revision: str
    detail: str = ""


class Load:
    """`concurrency` threads sending the same V2 request to `model` in a loop, each answer recorded.

    Used as a context manager: the load runs inside the `with` block.
    """

    def __init__(
        self,
        url: str,
        model: str,
        body: dict[str, Any],
        concurrency: int = 8,
        timeout: float = 10.0,
        *,
        token: str | None = None,
    ) -> None:
        self.url = f"{url}/v2/models/{model}/infer"
        self.token = token
        self.body = json.dumps(body).encode()
        self.concurrency = concurrency
        self.timeout = timeout
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Self:
        for i in range(self.concurrency):
            thread = threading.Thread(target=self._run, name=f"load-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)

    def _run(self) -> None:
        headers = {"content-type": "application/json"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        with httpx.Client(timeout=self.timeout, trust_env=False) as client:
            while not self._stop.is_set():
                try:
                    response = client.post(self.url, content=self.body, headers=headers)
                    detail = "" if response.status_code == 200 else response.text[:300]
                    outcome = Outcome(response.status_code, response.headers.get(REVISION, ""), detail)
                except httpx.HTTPError as exc:
                    outcome = Outcome(0, "", f"{type(exc).__name__}: {exc}")
                with self._lock:
                    self.outcomes.append(outcome)

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def failures(self) -> list[Outcome]:
        return [o for o in self.snapshot() if o.status != 200]

    def mark(self) -> int:
        """How many answers so far: pass to `since` to look only at later ones."""
        with self._lock:
            return len(self.outcomes)

    def since(self, mark: int) -> list[Outcome]:
        with self._lock:
            return self.outcomes[mark:]

    def wait_for(self, revision: str, count: int = 40, timeout: float = 30.0) -> int:
        """Wait until the last `count` answers all came from `revision`; returns the mark there."""

        def moved() -> int | None:
            with self._lock:
                tail = self.outcomes[-count:]
                if len(tail) == count and all(o.revision == revision for o in tail):
                    return len(self.outcomes)
            return None

        return until(moved, timeout, f"traffic to move to {revision}")

    def wait_count(self, count: int, timeout: float = 30.0) -> None:
        """Wait until at least `count` more answers than now have been recorded."""
        target = self.mark() + count
        until(lambda: self.mark() >= target, timeout, f"{count} more answers")


# -- processes and metrics -------------------------------------------------------------------------


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric_total(text: str, name: str, **labels: str) -> float:
    """The sum of every sample of `name` in Prometheus `text` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match["name"] != name:
            continue
        found = dict(_LABEL.findall(match["labels"] or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match["value"])
    return total


# -- fixtures --------------------------------------------------------------------------------------


def storage_roots(state_dir: Path, *folders: Path) -> list[str]:
    """`servegate up` flags letting a gateway on `state_dir` read models from `folders` too: the
    working directory and the state dir it reads from by default stay allowed (a `--storage-root`
    replaces the defaults)."""
    roots = [*folders, Path.cwd(), state_dir]
    return [arg for root in roots for arg in ("--storage-root", str(root))]


def gateway_process(
    state_dir: Path, *args: str, storage_root: Path | None = None
) -> Iterator[GatewayProcess]:
    """A started `servegate up ARGS` on `state_dir`, stopped afterwards (body of a module fixture).

    `storage_root`: a folder the tests' manifests may read models from (their pytest temporary root,
    where `model_repo` lies), besides the working directory and the state dir a gateway reads from
    by default. A failed start shows the gateway's output in the error.
    """
    roots = [] if storage_root is None else storage_roots(state_dir, storage_root)
    gateway = GatewayProcess(state_dir, "--drain-timeout", "5", *roots, *args)
    try:
        gateway.wait_live()
        yield gateway
    finally:
        if gateway.stop() != 0:
            pytest.fail(f"the gateway did not stop cleanly:\n{gateway.output()[-5000:]}")


# -- replicas and HTTP sinks -----------------------------------------------------------------------

__all__ += ["HttpSink", "Received", "metrics_token", "replica_metrics", "replica_models", "replica_urls"]


def replica_urls(api: ControlApi, state_dir: Path, service: str, component: str = "predictor") -> list[str]:
    """The HTTP addresses of `service`'s ready `component` replicas, from their port files."""
    urls = []
    pools = api.status(service)["components"][component]["replicas"]
    for pool in pools.values():
        for replica in pool["replicas"]:
            if replica["state"] == "Ready":
                ports = json.loads((state_dir / "replicas" / replica["id"] / "ports.json").read_text())
                urls.append(f"http://127.0.0.1:{ports['http']}")
    return urls


def metrics_token(state_dir: Path) -> str:
    """The token for `/metrics` (Prometheus' own) that the gateway on `state_dir` wrote there; the
    gateway and every replica it started accept it, for `/metrics` only."""
    return (state_dir / "metrics.token").read_text().strip()


def replica_metrics(state_dir: Path, replica: str) -> str:
    """A replica's `/metrics`, read with the metrics token of its gateway (on `state_dir`).

    Replicas started by a gateway answer nothing but health without the pool's internal token, which
    never leaves the gateway; the metrics token is the one way in for a test.
    """
    headers = {"authorization": f"Bearer {metrics_token(state_dir)}"}
    response = httpx.get(f"{replica}/metrics", headers=headers, timeout=10.0, trust_env=False)
    assert response.status_code == 200, response.text
    return response.text


def replica_models(state_dir: Path, replica: str, state: str = "READY") -> set[str]:
    """The models a replica's repository reports in `state`, from its `servegate_model_state` gauge
    (the repository's own view, read at scrape time)."""
    found = set()
    for line in replica_metrics(state_dir, replica).splitlines():
        match = _SAMPLE.match(line)
        if match is None or match["name"] != "servegate_model_state":
            continue
        labels = dict(_LABEL.findall(match["labels"] or ""))
        if labels.get("state") == state and float(match["value"]) == 1.0:
            found.add(labels["model"])
    return found


@dataclass(frozen=True, slots=True)
class Received:
    """One POST a sink took: its path, headers (lower-case names) and body."""

    path: str
    headers: dict[str, str]
    body: bytes


class HttpSink:
    """A loopback HTTP server recording every POST, answering `reply(received)` -> (status, JSON body);
    by default 200 with an empty object. Used as a context manager: it serves inside the `with` block.
    """

    def __init__(self, reply: Callable[[Received], tuple[int, Any]] | None = None) -> None:
        self._reply = reply or (lambda _received: (200, {}))
        self._lock = threading.Lock()
        self._received: list[Received] = []
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                received = Received(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length)
                )
                with sink._lock:
                    sink._received.append(received)
                status, answer = sink._reply(received)
                body = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        """Everything received once at least `count` POSTs have arrived."""
        until(lambda: len(self.received()) >= count, timeout, f"{count} POSTs at {self.url}")
        return self.received()
