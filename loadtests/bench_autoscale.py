#!/usr/bin/env python3
"""Benchmark autoscaling on `servegate up`: a load step from one replica's capacity to eight times
it, the way back down, and the cold start of the ONNX MLP from zero replicas.

    python loadtests/bench_autoscale.py [--seconds 10] [--rounds 3] [--json FILE]

Load step: a python model that sleeps 50 ms per request, one request at a time per replica (about
20 requests/s each, almost no CPU, so a 2-core machine hosts ten), scaled by Knative's KPA on
concurrency with `scaleTarget: 1`, 1..10 replicas and a 10 s stable window. Closed-loop asyncio
clients send V2 JSON through the gateway: 1 client for `--seconds`, then 8; once 8 replicas are
ready the 8 clients go on for `--seconds` more, then stop. Every answer is kept (latency, status).

Cold start: the ONNX MLP 64-256-256-10 with `minReplicas: 0` and a 2 s scale-to-zero grace period;
`--rounds` times, wait until it has no replica, then time one request until its answer.

Prints the time from the step until 8 replicas are ready, requests/s and p50/p99 before the step,
during the transition and after it, the errors (non-200 answers and failed requests), the most
replicas reached, the time back down to 1 replica, each cold start and their median, and whether
the issue's targets are met: no error, a median cold start under 3 s. (`--peers` and `--bench-dir`,
common to the benchmarks, are not used here.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests.harness import (
    ROOT,
    Server,
    admin_headers,
    benchmark_arguments,
    free_port,
    running,
    v2_json_body,
)
from predictors.examples import make_mlp_onnx

SIZES = (64, 256, 256, 10)
#: seconds the step model sleeps per request: one replica's capacity is 1 / SLEEP requests/s.
SLEEP = 0.05
#: clients after the step: 8 times one replica's capacity, so 8 replicas are enough.
STEP = 8
#: at most this long from the step until 8 replicas are ready, and from the end of the load
#: until 1 replica is left.
SCALE_TIMEOUT = 90.0
#: cold-start target, seconds (the issue's, on a 2-core machine).
COLD_TARGET = 3.0
WINDOW = {"autoscaling.knative.dev/window": "10s"}
X_BODY = json.dumps({"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]})
JSON = {"content-type": "application/json"}

console = Console(width=None if sys.stdout.isatty() else 120)


def isvc(name: str, model: dict[str, Any], annotations: dict[str, str], **predictor: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"predictor": {"model": {"protocolVersion": "v2", **model}, **predictor}},
    }


def step_service() -> dict[str, Any]:
    model = {
        "modelFormat": {"name": "python"},
        "storageUri": "loadtests.bench_models:FixedLatency",
        "env": [{"name": "BENCH_SLEEP_SECONDS", "value": str(SLEEP)}],
    }
    return isvc("step", model, WINDOW, minReplicas=1, maxReplicas=10, scaleTarget=1)


def cold_service(onnx: Path) -> dict[str, Any]:
    model = {"modelFormat": {"name": "onnx"}, "storageUri": str(onnx)}
    annotations = {**WINDOW, "serving.servegate.io/scale-to-zero-grace-period": "2s"}
    return isvc("mlp", model, annotations, minReplicas=0, maxReplicas=1)


def main() -> int:
    parser = benchmark_arguments(__doc__ or "")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    json_path = args.json.resolve() if args.json else None
    # Replicas import `loadtests.bench_models` from the gateway's working directory and PYTHONPATH.
    os.chdir(ROOT)

    with tempfile.TemporaryDirectory(prefix="servegate-bench-") as tmp:
        results = run(Path(tmp), args)
    if json_path:
        json_path.write_text(json.dumps(results, indent=2))
    return report(results)


def run(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    manifest = work / "step.json"
    manifest.write_text(json.dumps(step_service()))
    http = free_port()
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    gateway = Server("gateway", [
        sys.executable, "-m", "serving", "up", "-f", str(manifest), "--host", "127.0.0.1",
        "--http-port", str(http), "--grpc-port", str(free_port()), "--state-dir", str(work / "state"),
        "--log-level", "warning", "--autoscale-interval", "1", "--storage-root", str(work),
    ], env={"PYTHONPATH": pythonpath})  # fmt: skip
    url = f"http://127.0.0.1:{http}"
    with running(gateway):
        with console.status("starting servegate up with the step model"):
            gateway.start(work)
            headers = admin_headers(work / "state")
            gateway.wait_until_answering(f"{url}/v2/models/step/infer", X_BODY.encode(), 120, headers)
        try:
            return asyncio.run(scenarios(url, work, args, headers))
        except Exception:
            console.print(f"[red]the gateway's log, last lines:[/]\n{gateway.tail(60)}")
            raise


async def scenarios(
    url: str, work: Path, args: argparse.Namespace, headers: dict[str, str]
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with (
        httpx.AsyncClient(base_url=url, timeout=60, limits=limits, trust_env=False, headers=headers) as data,
        httpx.AsyncClient(base_url=url + "/api/v1", timeout=30, trust_env=False, headers=headers) as api,
    ):
        with console.status(f"load step: 1 client for {args.seconds}s, then {STEP} until scaled"):
            step = await load_step(data, api, args.seconds)
        with console.status(f"cold starts of the ONNX MLP from zero, {args.rounds} rounds"):
            cold = await cold_starts(data, api, work, args.rounds)
    return {"step": step, "cold_start": cold}


# -- load step ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """One request: when it started (monotonic), how long it took, its HTTP status (0: no answer)."""

    start: float
    seconds: float
    status: int
    detail: str = ""


@dataclass
class ClosedLoop:
    """Clients that each send the next request as soon as the last one is answered."""

    client: httpx.AsyncClient
    path: str
    body: bytes
    answers: list[Answer] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stopping: bool = False

    def add(self, clients: int) -> None:
        self._tasks += [asyncio.create_task(self._loop()) for _ in range(clients)]

    async def stop(self) -> None:
        """Let every client finish its request in flight, then return."""
        self._stopping = True
        await asyncio.gather(*self._tasks)

    async def _loop(self) -> None:
        while not self._stopping:
            start = time.monotonic()
            try:
                response = await self.client.post(self.path, content=self.body, headers=JSON)
                status, detail = response.status_code, "" if response.is_success else response.text[:200]
            except httpx.HTTPError as exc:
                status, detail = 0, f"{type(exc).__name__}: {exc}"
            self.answers.append(Answer(start, time.monotonic() - start, status, detail))


@dataclass(frozen=True, slots=True)
class Pool:
    """A revision's replicas as the status showed them at `at` (monotonic)."""

    at: float
    desired: int
    ready: int
    panic: bool


@dataclass
class PoolWatch:
    """Reads a service's latest revision from its status every `every` seconds, keeping each reading.

    Used as an async context manager: it reads in the background inside the `async with` block.
    """

    api: httpx.AsyncClient
    service: str
    every: float = 0.25
    seen: list[Pool] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> PoolWatch:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    async def read(self) -> Pool | None:
        """The latest revision's replicas now; None before the service has a revision."""
        response = (await self.api.get(f"/inferenceservices/{self.service}")).raise_for_status()
        predictor = response.json()["status"].get("components", {}).get("predictor", {})
        if not predictor.get("latestCreatedRevision"):
            return None
        # A revision at zero has no pool: no entry at all.
        pool = predictor["replicas"].get(predictor["latestCreatedRevision"], {})
        panic = bool(pool.get("autoscaler", {}).get("panic"))
        return Pool(time.monotonic(), pool.get("desired", 0), pool.get("ready", 0), panic)

    async def _run(self) -> None:
        while True:
            if pool := await self.read():
                self.seen.append(pool)
            await asyncio.sleep(self.every)

    async def until(self, check: Callable[[Pool], bool], timeout: float) -> float | None:
        """When (monotonic) a reading after now first passes `check`; None after `timeout` seconds."""
        assert self._task is not None
        index, deadline = len(self.seen), time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pool in self.seen[index:]:
                if check(pool):
                    return pool.at
            index = len(self.seen)
            if self._task.done():
                self._task.result()  # raises what stopped the readings
                raise RuntimeError("the status readings stopped")
            await asyncio.sleep(0.05)
        return None


async def load_step(data: httpx.AsyncClient, api: httpx.AsyncClient, seconds: float) -> dict[str, Any]:
    load = ClosedLoop(data, "/v2/models/step/infer", X_BODY.encode())
    async with PoolWatch(api, "step") as watch:
        try:
            await watch.until(lambda pool: pool.ready >= 1, SCALE_TIMEOUT)
            begin = time.monotonic()
            load.add(1)
            await asyncio.sleep(seconds)
            step = time.monotonic()
            at_step = watch.seen[-1]
            load.add(STEP - 1)
            enough = await watch.until(lambda pool: pool.ready >= STEP, SCALE_TIMEOUT)
            after = enough if enough is not None else time.monotonic()
            if enough is not None:
                await asyncio.sleep(seconds)
            await load.stop()
            stopped = time.monotonic()
            down = await watch.until(lambda pool: pool.desired == 1 and pool.ready == 1, SCALE_TIMEOUT)
        finally:
            await load.stop()

    bounds = {"before": (begin, step, 1), "transition": (step, after, STEP), "after": (after, stopped, STEP)}
    phases = {
        name: phase_figures([a for a in load.answers if start <= a.start < end], end - start, clients)
        for name, (start, end, clients) in bounds.items()
    }
    failed = [a for a in load.answers if a.status != 200]
    return {
        "phases": phases,
        "replicas_at_step": {"desired": at_step.desired, "ready": at_step.ready},
        "time_to_enough_s": None if enough is None else enough - step,
        "max_desired": max(p.desired for p in watch.seen),
        "max_ready": max(p.ready for p in watch.seen),
        "panicked": any(p.panic for p in watch.seen),
        "requests": len(load.answers),
        "errors": len(failed),
        "error_samples": [f"{a.status} after {a.start - step:+.2f}s: {a.detail}" for a in failed[:5]],
        "scale_down_s": None if down is None else down - stopped,
        "timeline": changes(watch.seen, step),
    }


def phase_figures(answers: list[Answer], seconds: float, clients: int) -> dict[str, float]:
    latencies = np.array([a.seconds for a in answers]) * 1000.0
    quantile = (lambda q: float(np.percentile(latencies, q))) if len(latencies) else (lambda q: float("nan"))
    return {
        "clients": clients,
        "seconds": seconds,
        "requests": len(answers),
        "rps": len(answers) / seconds if seconds > 0 else float("nan"),
        "p50_ms": quantile(50),
        "p99_ms": quantile(99),
        "max_ms": quantile(100),
        "errors": sum(1 for a in answers if a.status != 200),
    }


def changes(seen: list[Pool], origin: float) -> list[list[Any]]:
    """[seconds from `origin`, desired, ready, panic] at every reading that differs from the last."""
    out: list[list[Any]] = []
    for pool in seen:
        row = [pool.desired, pool.ready, pool.panic]
        if not out or out[-1][1:] != row:
            out.append([round(pool.at - origin, 2), *row])
    return out


# -- cold start ---------------------------------------------------------------------------------------


async def cold_starts(
    data: httpx.AsyncClient, api: httpx.AsyncClient, work: Path, rounds: int
) -> dict[str, Any]:
    onnx = make_mlp_onnx(work / "mlp.onnx", SIZES)
    text = json.dumps({"apiVersion": "v1", "kind": "List", "items": [cold_service(onnx)]})
    (await api.post("/apply", content=text.encode())).raise_for_status()
    x = np.random.default_rng(0).normal(size=(1, SIZES[0])).astype(np.float32)
    body = v2_json_body("input", x)
    latencies, to_zero, statuses, failures = [], [], [], []
    async with PoolWatch(api, "mlp") as watch:
        if await watch.until(lambda pool: pool.ready >= 1, SCALE_TIMEOUT) is None:
            raise TimeoutError(f"the MLP had no ready replica within {SCALE_TIMEOUT:.0f}s")
        idle_since = time.monotonic()
        for _ in range(rounds):
            zero = await watch.until(lambda pool: pool.desired == 0 and pool.ready == 0, SCALE_TIMEOUT)
            if zero is None:
                raise TimeoutError(f"the MLP did not scale to zero within {SCALE_TIMEOUT:.0f}s")
            to_zero.append(zero - idle_since)
            start = time.monotonic()
            try:
                response = await data.post("/v2/models/mlp/infer", content=body, headers=JSON)
                statuses.append(response.status_code)
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text[:200]}")
            except httpx.HTTPError as exc:
                statuses.append(0)
                failures.append(f"{type(exc).__name__}: {exc}")
            idle_since = time.monotonic()
            latencies.append(idle_since - start)
    return {
        "rounds_s": latencies,
        "median_s": statistics.median(latencies),
        # from the first replica's readiness, then from each answer
        "idle_to_zero_s": to_zero,
        "statuses": statuses,
        "errors": len(failures),
        "error_samples": failures[:5],
    }


# -- report -------------------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> int:
    step, cold = results["step"], results["cold_start"]
    table = Table(title=f"autoscaling: load step 1 -> {STEP} clients, {SLEEP * 1000:.0f} ms per request")
    columns = ("phase", "clients", "seconds", "requests", "requests/s", "p50 ms", "p99 ms", "max ms")
    for column in (*columns, "errors"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for name, row in step["phases"].items():
        table.add_row(
            name,
            str(row["clients"]),
            f"{row['seconds']:.1f}",
            str(row["requests"]),
            f"{row['rps']:.1f}",
            f"{row['p50_ms']:.1f}",
            f"{row['p99_ms']:.1f}",
            f"{row['max_ms']:.1f}",
            str(row["errors"]),
        )
    console.print(table)

    enough, down = step["time_to_enough_s"], step["scale_down_s"]
    at_step = step["replicas_at_step"]
    console.print(
        f"replicas at the step: {at_step['ready']} ready ({at_step['desired']} desired); "
        f"step -> {STEP} ready: {_seconds(enough)}; most replicas: {step['max_ready']} ready, "
        f"{step['max_desired']} desired; panic mode: {'yes' if step['panicked'] else 'no'}"
    )
    console.print(f"load stopped -> 1 replica: {_seconds(down)}")
    timeline = ", ".join(f"{t:+.2f}s {d}/{r}{' panic' if p else ''}" for t, d, r, p in step["timeline"])
    console.print(f"replicas desired/ready, seconds from the step: {timeline}")
    console.print(f"errors: {step['errors']} of {step['requests']} requests")
    for sample in step["error_samples"]:
        console.print(f"  {sample}")

    table = Table(title="cold start: ONNX MLP 64-256-256-10 at zero replicas, one request")
    for column in ("round", "idle until zero replicas, s", "request until answer, s", "HTTP status"):
        table.add_column(column, justify="right")
    rows = zip(cold["idle_to_zero_s"], cold["rounds_s"], cold["statuses"], strict=True)
    for index, (idle, seconds, status) in enumerate(rows, 1):
        table.add_row(str(index), f"{idle:.1f}", f"{seconds:.2f}", str(status or "no answer"))
    table.add_section()
    table.add_row("median", "", f"{cold['median_s']:.2f}", "")
    console.print(table)
    for sample in cold["error_samples"]:
        console.print(f"  cold start failed: {sample}")

    median = cold["median_s"]
    checks = [
        (f"{STEP} replicas ready after the step (within {SCALE_TIMEOUT:.0f}s)", enough is not None),
        ("no failed request during the load step", step["errors"] == 0),
        ("no failed cold-start request", cold["errors"] == 0),
        (f"median cold start under {COLD_TARGET:.0f} s ({median:.2f} s)", median < COLD_TARGET),
    ]
    for label, ok in checks:
        console.print(f"[{'green' if ok else 'red'}]{'met' if ok else 'MISSED'}[/]: {label}")
    return 0 if all(ok for _, ok in checks) else 1


def _seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.2f} s"


if __name__ == "__main__":
    raise SystemExit(main())
