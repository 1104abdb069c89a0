#!/usr/bin/env python3
"""Benchmark the model registry: registers, alias resolution and verified fetches on SQLite and on
PostgreSQL, and the time from an alias move to the new version answering through the gateway.

    python loadtests/bench_registry.py [--registers 100] [--rounds 3] [--json FILE]

Databases: SQLite in a temp dir, and a throwaway PostgreSQL (Debian's package, started like the
tests start it) when one is installed. For each: `--registers` sequential registers of the ONNX
MLP 64-256-256-10 (330 KB; registers/s, p50/p99), the same again from 4 processes at once (total
registers/s; the numbers must come out 1..N with no gap), and 1,000 alias resolutions (p50/p99).

Artifacts: a 64 MiB ONNX MLP fetched into an empty cache (copy + sha256 of every byte, MB/s) and
again from the cache (sha256 of every byte, MB/s): the cost a replica pays per load.

Rollout: `servegate up` with an InferenceService following `registry://mlp@production`
(`canaryTrafficPercent: 50`) under 4 closed-loop clients; `--rounds` times, move the alias to a new
version and time until the first answer from the new revision, then promote. Every answer is
counted; the issue asks for zero failed requests. (`--seconds`, `--peers` and `--bench-dir`, common
to the benchmarks, are not used here.)
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
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
from serving.registry import Registry, RegistryConfig

SIZES = (64, 256, 256, 10)
BIG_SIZES = (64, 4096, 4096, 10)  # about 64 MiB of weights
PROCESSES = 4


def main() -> int:
    parser = benchmark_arguments(__doc__ or "")
    parser.add_argument("--registers", type=int, default=100, help="registers per database run")
    args = parser.parse_args()
    console = Console(width=120)
    with tempfile.TemporaryDirectory(prefix="servegate-bench-") as tmp:
        work = Path(tmp)
        models = [
            make_mlp_onnx(work / f"src{i}" / "model.onnx", SIZES, seed=i) for i in range(args.rounds + 1)
        ]
        results: dict[str, Any] = {"databases": {}}
        with _databases(work) as databases:
            for name, url in databases.items():
                console.print(
                    f"[bold]{name}[/]: {args.registers} registers, then {PROCESSES} processes at once"
                )
                results["databases"][name] = _database_figures(url, work / name, models[0], args.registers)
        console.print("[bold]artifacts[/]: fetching a 64 MiB model")
        results["fetch"] = _fetch_figures(work)
        console.print(f"[bold]rollout[/]: {args.rounds} alias moves through the gateway under load")
        results["rollout"] = _rollout_figures(work, models, args.rounds)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return _report(console, results)


# -- databases ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _databases(work: Path) -> Iterator[dict[str, str]]:
    found = {"sqlite": f"sqlite:///{work / 'sqlite' / 'registry.db'}"}
    try:
        from tests.servers import postgres_server

        with postgres_server() as url:
            yield found | {"postgresql": url}
    except Exception as exc:
        Console(stderr=True).print(f"PostgreSQL skipped: {exc}")
        yield found


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def _database_figures(url: str, work: Path, source: Path, count: int) -> dict[str, Any]:
    config = RegistryConfig(url=url, artifacts=str(work / "artifacts"))
    times = []
    with Registry(config, cache_dir=work / "cache") as registry:
        started = time.perf_counter()
        for _ in range(count):
            t0 = time.perf_counter()
            registry.register("seq", str(source))
            times.append(time.perf_counter() - t0)
        sequential = count / (time.perf_counter() - started)
        registry.set_alias("seq", "production", count)
        resolves = []
        for _ in range(1000):
            t0 = time.perf_counter()
            registry.resolve("registry://seq@production")
            resolves.append(time.perf_counter() - t0)

    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue = ctx.Queue()
    start = ctx.Barrier(PROCESSES + 1)
    workers = [
        ctx.Process(target=_register_many, args=(config, str(source), count // PROCESSES, start, queue))
        for _ in range(PROCESSES)
    ]
    for w in workers:
        w.start()
    start.wait(timeout=120)  # every worker connected and warmed up: the clock starts now
    started = time.perf_counter()
    got = [queue.get(timeout=600) for _ in workers]
    concurrent = sum(len(timed) for _, timed in got) / (time.perf_counter() - started)
    for w in workers:
        w.join()
    numbers = sorted(n for warm, timed in got for n in (warm, *timed))
    return {
        "sequential_per_s": sequential,
        "register": _percentiles(times),
        "concurrent_per_s": concurrent,
        "gap_free": numbers == list(range(1, len(numbers) + 1)),
        "resolve": _percentiles(resolves),
    }


def _register_many(
    config: RegistryConfig, source: str, count: int, start: Any, queue: multiprocessing.Queue
) -> None:
    with Registry(config, cache_dir=Path(config.artifacts) / "cache") as registry:
        warm = registry.register("concurrent", source).version  # connect before the clock starts
        start.wait(timeout=120)
        queue.put((warm, [registry.register("concurrent", source).version for _ in range(count)]))


# -- artifacts ------------------------------------------------------------------------------------


def _fetch_figures(work: Path) -> dict[str, float]:
    big = make_mlp_onnx(work / "big" / "model.onnx", BIG_SIZES)
    size_mb = big.stat().st_size / 1e6
    config = RegistryConfig(url=f"sqlite:///{work / 'fetch.db'}", artifacts=str(work / "fetch-artifacts"))
    with Registry(config, cache_dir=work / "fetch-cache") as registry:
        version = registry.register("big", str(big))
        t0 = time.perf_counter()
        registry.fetch(version.uri)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        registry.fetch(version.uri)
        warm = time.perf_counter() - t0
    return {"size_mb": size_mb, "cold_mb_per_s": size_mb / cold, "cached_mb_per_s": size_mb / warm}


# -- rollout through the gateway ------------------------------------------------------------------


class _Load:
    """Closed-loop clients recording (time, status, revision) of every answer."""

    def __init__(self, url: str, clients: int = 4, headers: dict[str, str] | None = None) -> None:
        self.url, self.answers = url, []
        self.headers = {"content-type": "application/json", **(headers or {})}
        self.body = v2_json_body("input", np.full((1, SIZES[0]), 0.5, dtype=np.float32))
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        self._lock = threading.Lock()

    def _run(self) -> None:
        with httpx.Client(timeout=30, trust_env=False) as client:
            while not self._stop.is_set():
                try:
                    r = client.post(self.url, content=self.body, headers=self.headers)
                    answer = (time.monotonic(), r.status_code, r.headers.get("x-servegate-revision", ""))
                except httpx.HTTPError:
                    answer = (time.monotonic(), 0, "")
                with self._lock:
                    self.answers.append(answer)

    def first_from(self, revision: str, since: float, timeout: float = 120) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                hit = next((t for t, _, rev in self.answers if rev == revision and t >= since), None)
            if hit is not None:
                return hit - since
            time.sleep(0.02)
        raise TimeoutError(f"no answer from {revision} within {timeout}s")

    def __enter__(self) -> _Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(35)


def _rollout_figures(work: Path, models: list[Path], rounds: int) -> dict[str, Any]:
    state = work / "gateway"
    manifest = work / "follow.json"
    manifest.write_text(json.dumps(_following()))
    config = RegistryConfig(url=f"sqlite:///{state / 'registry.db'}", artifacts=str(state / "artifacts"))
    with Registry(config) as registry:
        for source in models:
            registry.register("mlp", str(source))
        registry.set_alias("mlp", "production", 1)
    http = free_port()
    gateway = Server("gateway", [
        sys.executable, "-m", "serving", "up", "-f", str(manifest), "--host", "127.0.0.1",
        "--http-port", str(http), "--grpc-port", str(free_port()), "--state-dir", str(state),
        "--log-level", "warning",
    ], env={"PYTHONPATH": str(ROOT)})  # fmt: skip
    url = f"http://127.0.0.1:{http}"
    moves = []
    with running(gateway.start(work)):
        headers = admin_headers(state)
        api = httpx.Client(base_url=url, timeout=60, trust_env=False, headers=headers)
        gateway.wait_until_answering(f"{url}/v2/models/mlp/infer", _Load(url).body, 120, headers)
        with api, _Load(f"{url}/v2/models/mlp/infer", headers=headers) as load, Registry(config) as registry:
            time.sleep(2)
            for n in range(2, rounds + 2):
                moved = time.monotonic()
                registry.set_alias("mlp", "production", n, actor="bench")
                moves.append(load.first_from(f"mlp-predictor-{n:05d}", moved))
                time.sleep(1)
                promoted = api.post("/api/v1/inferenceservices/mlp/promote")
                assert promoted.status_code == 200, promoted.text
                time.sleep(2)
            answers = list(load.answers)
    failed = [a for a in answers if a[1] != 200]
    return {
        "alias_move_to_first_answer_s": moves,
        "median_s": statistics.median(moves),
        "requests": len(answers),
        "failed": len(failed),
    }


def _following() -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "mlp"},
        "spec": {
            "predictor": {
                "canaryTrafficPercent": 50,
                "model": {
                    "modelFormat": {"name": "onnx"},
                    "protocolVersion": "v2",
                    "storageUri": "registry://mlp@production",
                },
            }
        },
    }


# -- report ---------------------------------------------------------------------------------------


def _report(console: Console, results: dict[str, Any]) -> int:
    table = Table(title="registry database")
    for column in ("database", "registers/s", "register p50 / p99 ms", f"{PROCESSES} processes: registers/s",
                   "gap-free", "resolve p50 / p99 ms"):  # fmt: skip
        table.add_column(column, justify="right")
    for name, f in results["databases"].items():
        table.add_row(
            name,
            f"{f['sequential_per_s']:.0f}",
            f"{f['register']['p50_ms']:.1f} / {f['register']['p99_ms']:.1f}",
            f"{f['concurrent_per_s']:.0f}",
            "yes" if f["gap_free"] else "NO",
            f"{f['resolve']['p50_ms']:.2f} / {f['resolve']['p99_ms']:.2f}",
        )
    console.print(table)
    fetch = results["fetch"]
    console.print(
        f"fetch of a {fetch['size_mb']:.0f} MB artifact: {fetch['cold_mb_per_s']:.0f} MB/s into an empty "
        f"cache, {fetch['cached_mb_per_s']:.0f} MB/s re-verifying the cached copy"
    )
    rollout = results["rollout"]
    moves = ", ".join(f"{s:.2f}" for s in rollout["alias_move_to_first_answer_s"])
    console.print(
        f"alias move -> first answer from the new version: {moves} s (median {rollout['median_s']:.2f} s); "
        f"{rollout['failed']} failed of {rollout['requests']} requests"
    )
    ok = rollout["failed"] == 0 and all(f["gap_free"] for f in results["databases"].values())
    console.print(
        "targets (no failed request, gap-free versions):", "[green]met[/]" if ok else "[red]NOT met[/]"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
