#!/usr/bin/env python3
"""Benchmark the ray engine: `servegate up --engine ray` on a local Ray cluster, beside the same gateway
on the process engine and Ray Serve serving the model through its own HTTP proxy.

    python loadtests/bench_ray.py [--seconds 10] [--rounds 3] [--peers rayserve] [--no-tuned]
                                  [--ray-cpus N] [--json FILE]

A Ray cluster is started the way a user starts one (`ray start --head --node-ip-address 127.0.0.1
--num-cpus N`, this venv's Ray CLI, on free loopback ports, in a temporary folder) and stopped at
the end whatever happens. The ONNX MLP 64-256-256-10 is deployed with a plain InferenceService
manifest (modelFormat onnx, protocolVersion v2, a model folder, no resources: what a KServe user
writes) on `servegate up --engine ray --ray-address ADDR` and on `servegate up` (the process engine);
Ray Serve serves the same file (`../shared/bench/peer-serve rayserve`, one ONNX Runtime thread, its
default). A tuned variant stands beside them, labelled: the same manifest with `limits: {cpu: "1"}`
(the replica then runs one ONNX Runtime thread) on both engines (`--no-tuned` leaves it out). All
take V2 JSON with 16 connections in alternating rounds (`../shared/bench/compare`, one endpoint at a
time: each gateway accepts only its own admin token).

Ray Serve joins the benchmark's cluster when that cluster's Python (this venv: Ray runs workers with
the Python of `ray start`) can import Ray Serve; otherwise it runs on a local Ray of its own, as the
peer script does by itself, and the output says so. Ray 2.60's `ray start` turns token authentication
on: the head and every process that joins it get `RAY_AUTH_MODE=token` and this run's token
(`RAY_AUTH_TOKEN`), as Ray's documentation tells a user to do.

Replica start: a service with `minReplicas: 0`, a 2 s scale-to-zero grace period and a 10 s
autoscaling window on each gateway (first applied with `minReplicas: 1` until it is ready, see
`replica_starts`); `--rounds` times, wait until both are at zero replicas, then time one request on
each, one engine after the other (the gateway holds it until a replica is ready), until its answer.

Prints requests/s, p50 and p99 for each server with its ratio to the ray engine, whether the issue's
targets are met on the plain manifest (>= 5x Ray Serve's throughput with a lower p99, >= 0.9x the
process engine) and on the tuned one, and the replica start times on Ray and on the process engine
side by side. Figures, not assertions: the exit status is 0 whatever they are. Needs wrk (Debian:
wrk); the peer installs itself on first use (minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests.harness import (
    Server,
    admin_headers,
    benchmark_arguments,
    chosen_peers,
    compare,
    free_port,
    v2_json_body,
)
from predictors.examples import make_mlp_onnx

SIZES = (64, 256, 256, 10)
RAY, PROCESS = "gateway-ray", "gateway-process"
#: the tuned variant: the same model under another name, with a CPU limit.
TUNED, TUNED_LABEL = "mlp-cpu1", " (cpu: 1)"
#: seconds to wait for a server to answer, for a revision to reach zero replicas, for one cold request.
START_TIMEOUT, ZERO_TIMEOUT, COLD_TIMEOUT = 180.0, 180.0, 120.0
JSON = {"content-type": "application/json"}

console = Console(width=None if sys.stdout.isatty() else 120)

MANIFEST = """\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: {name}
spec:
  predictor:
    model:
      modelFormat: {{name: onnx}}
      protocolVersion: v2
      storageUri: {uri}
"""
CPU_LIMIT = """\
      resources:
        limits: {cpu: "1"}
"""


def cold_service(uri: Path, min_replicas: int) -> dict[str, Any]:
    """The same model, at zero replicas when idle with `min_replicas` 0: 2 s grace period, 10 s window."""
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": "cold",
            "annotations": {
                "serving.servegate.io/scale-to-zero-grace-period": "2s",
                "autoscaling.knative.dev/window": "10s",
            },
        },
        "spec": {
            "predictor": {
                "minReplicas": min_replicas,
                "maxReplicas": 1,
                "model": {"modelFormat": {"name": "onnx"}, "protocolVersion": "v2", "storageUri": str(uri)},
            }
        },
    }


def main() -> int:
    parser = benchmark_arguments(__doc__ or "")
    parser.set_defaults(peers="rayserve")
    parser.add_argument(
        "--tuned",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also load both engines with a cpu: 1 limit (one ONNX Runtime thread), labelled",
    )
    parser.add_argument(
        "--ray-cpus",
        type=int,
        help="--num-cpus of the Ray head [default: this machine's cores, at least what the run places]",
    )
    args = parser.parse_args()
    peers = chosen_peers(parser, args)
    # Every Ray node on 127.0.0.1; inherited by the Ray CLI, the gateways and the peers.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

    with tempfile.TemporaryDirectory(prefix="servegate-bench-") as tmp:
        results = run(Path(tmp), args, peers)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    report(results)
    return 0


# -- processes ------------------------------------------------------------------------------------------


def session_members(session: int) -> list[int]:
    """Live processes of session `session` (Linux: read from /proc)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            members.append(int(entry))
    return members


def stop_session(server: Server, grace_s: float = 15.0) -> None:
    """Stop `server`, then whatever is left of its session: `grace_s` seconds to go, then SIGKILL.
    Ray's daemons outlive the command that started them, and its workers lead process groups of
    their own within that session."""
    if server.process is None:
        return
    session = server.process.pid  # started in a session of its own, which it leads
    server.stop()
    deadline = time.monotonic() + grace_s
    while (left := session_members(session)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def stopped_at_exit() -> Iterator[list[Server]]:
    """Servers appended to the list are stopped on the way out, last started first, whatever happened
    (after an error, with the end of each one's log)."""
    servers: list[Server] = []
    try:
        yield servers
    except Exception:
        for server in servers:
            console.print(f"[red]{server.name}, last lines of its log:[/]\n{escape(server.tail(20))}")
        raise
    finally:
        for server in reversed(servers):
            stop_session(server)


def ray_environment() -> dict[str, str]:
    """Token authentication with a token of this run, for the head and everything that joins it."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


@contextlib.contextmanager
def ray_head(log_dir: Path, cpus: int, env: dict[str, str]) -> Iterator[str]:
    """A Ray head, `ray start --head --block` (stopping that command stops the cluster), on free
    loopback ports in a temporary folder of its own; yields its GCS address once it serves, and stops
    it (and removes the folder) on the way out, whatever happened."""
    # Short: Ray's socket paths under it must fit in 107 bytes.
    temp = Path(tempfile.mkdtemp(prefix="sg-ray-", dir="/tmp"))
    port = free_port()
    ray_cli = str(Path(sys.executable).with_name("ray"))
    head = Server("ray-head", [
        ray_cli, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
        "--num-cpus", str(cpus), "--disable-usage-stats", "--temp-dir", str(temp),
        # Other Ray clusters on this machine may hold the fixed default ports.
        "--dashboard-port", str(free_port()), "--ray-client-server-port", str(free_port()),
        "--dashboard-agent-listen-port", str(free_port()),
    ], env=env)  # fmt: skip
    try:
        head.start(log_dir)
        assert head.process is not None
        # `ray start` writes the address file once the head node is up, before it blocks.
        deadline = time.monotonic() + START_TIMEOUT
        while not (temp / "ray_current_cluster").exists():
            if head.process.poll() is not None:
                raise RuntimeError(f"ray start exited with {head.process.returncode}:\n{head.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Ray head did not start within {START_TIMEOUT:.0f}s:\n{head.tail()}")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        stop_session(head)
        shutil.rmtree(temp, ignore_errors=True)


def serve_on_cluster_problem() -> str | None:
    """Why Ray Serve cannot run on the benchmark's cluster (its workers run this Python), or None."""
    result = subprocess.run([sys.executable, "-c", "import ray.serve"], capture_output=True, text=True)
    if result.returncode == 0:
        return None
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    # The error's first sentence: "ModuleNotFoundError: No module named 'fastapi'".
    return lines[-1].split(". ")[0] if lines else f"import ray.serve exited with {result.returncode}"


# -- replica start ----------------------------------------------------------------------------------------


def latest_pool(client: httpx.Client, service: str) -> dict[str, Any] | None:
    """The latest revision's replicas from the service's status: {} at zero (no pool at all), None
    before the service has a revision."""
    status = client.get(f"/api/v1/inferenceservices/{service}").raise_for_status().json()["status"]
    predictor = status.get("components", {}).get("predictor", {})
    latest = predictor.get("latestCreatedRevision")
    return None if not latest else predictor.get("replicas", {}).get(latest, {})


def diagnosis(client: httpx.Client, service: str) -> str:
    """The latest revision's replicas and the service's last events, for an error message."""
    events = client.get(f"/api/v1/inferenceservices/{service}/events").text
    return f"replicas {latest_pool(client, service)}; events {events[-1500:]}"


def wait_until_ready(clients: dict[str, httpx.Client], service: str, timeout: float) -> None:
    """Until each gateway's latest revision of `service` has a ready replica."""
    waiting = set(clients)
    deadline = time.monotonic() + timeout
    while waiting:
        if time.monotonic() > deadline:
            late = "; ".join(f"{name}: {diagnosis(clients[name], service)}" for name in sorted(waiting))
            raise TimeoutError(f"{service} has no ready replica after {timeout:.0f}s: {late}")
        for name in list(waiting):
            pool = latest_pool(clients[name], service)
            if pool and pool.get("ready", 0) >= 1:
                waiting.discard(name)
        time.sleep(0.2)


def wait_at_zero(clients: dict[str, httpx.Client], service: str, timeout: float) -> None:
    """Until each gateway's latest revision of `service`, once seen with replicas, is at zero."""
    up, down = dict.fromkeys(clients, False), set()
    pools: dict[str, dict[str, Any] | None] = {}
    deadline = time.monotonic() + timeout
    while len(down) < len(clients):
        if time.monotonic() > deadline:
            late = "; ".join(
                f"{name}: {diagnosis(clients[name], service)}" for name in clients if name not in down
            )
            raise TimeoutError(f"{service} not at zero replicas after {timeout:.0f}s: {late}")
        for name, client in clients.items():
            pools[name] = pool = latest_pool(client, service)
            if name in down or pool is None:
                continue
            if pool.get("desired", 0) or pool.get("ready", 0):
                up[name] = True
            elif up[name]:
                down.add(name)
        time.sleep(0.2)


def replica_starts(
    urls: dict[str, str], authorization: dict[str, dict[str, str]], folder: Path, body: bytes, rounds: int
) -> dict[str, dict[str, list[float | int]]]:
    """Per gateway and round: seconds from one request at zero replicas to its answer, HTTP status."""

    def manifest(min_replicas: int) -> bytes:
        items = [cold_service(folder, min_replicas)]
        return json.dumps({"apiVersion": "v1", "kind": "List", "items": items}).encode()

    results: dict[str, dict[str, list[float | int]]] = {name: {"seconds": [], "status": []} for name in urls}
    with contextlib.ExitStack() as stack:
        clients = {
            name: stack.enter_context(
                httpx.Client(base_url=url, headers=authorization[name], timeout=COLD_TIMEOUT, trust_env=False)
            )
            for name, url in urls.items()
        }
        # Ready once with one replica kept, then allowed to zero (minReplicas is not part of the
        # revision): a new minReplicas-0 revision whose first replica is not ready by the
        # autoscaler's first decision goes to zero before it was ever ready, and then refuses
        # every request (503 "no ready revision") instead of starting a replica.
        for client in clients.values():
            client.post("/api/v1/apply", content=manifest(1)).raise_for_status()
        wait_until_ready(clients, "cold", START_TIMEOUT)
        for client in clients.values():
            client.post("/api/v1/apply", content=manifest(0)).raise_for_status()
        for index in range(rounds):
            wait_at_zero(clients, "cold", ZERO_TIMEOUT)
            # One engine at a time (a start is CPU-bound), in turns so that neither always goes first.
            for name in list(clients)[:: 1 if index % 2 == 0 else -1]:
                start = time.monotonic()
                response = clients[name].post("/v2/models/cold/infer", content=body, headers=JSON)
                results[name]["seconds"].append(time.monotonic() - start)
                results[name]["status"].append(response.status_code)
    return results


def replica_nodes(url: str, authorization: dict[str, str]) -> list[str]:
    """Where the ray engine placed the mlp's replicas (as `servegate describe` shows them)."""
    with httpx.Client(base_url=url, headers=authorization, timeout=30, trust_env=False) as client:
        pool = latest_pool(client, "mlp") or {}
    return [r.get("node", "?") for r in pool.get("replicas", [])]


def gateway(
    name: str, work: Path, manifests: list[Path], port: int, flags: list[str], env: dict[str, str]
) -> Server:
    files = [arg for path in manifests for arg in ("-f", str(path))]
    return Server(name, [
        sys.executable, "-m", "serving", "up", *files, "--host", "127.0.0.1",
        "--http-port", str(port), "--grpc-port", str(free_port()), "--state-dir", str(work / name),
        "--log-level", "warning", "--storage-root", str(work), *flags,
    ], env=env)  # fmt: skip


# -- the run ----------------------------------------------------------------------------------------------


def run(work: Path, args: argparse.Namespace, peers: list[str]) -> dict[str, Any]:
    folder = work / "models" / "mlp" / "1"
    folder.mkdir(parents=True)
    model = make_mlp_onnx(folder / "model.onnx", SIZES)
    manifests = [work / "mlp.yaml"]
    manifests[0].write_text(MANIFEST.format(name="mlp", uri=folder))
    if args.tuned:
        manifests.append(work / f"{TUNED}.yaml")
        manifests[1].write_text(MANIFEST.format(name=TUNED, uri=folder) + CPU_LIMIT)
    x = np.random.default_rng(0).normal(size=(1, SIZES[0])).astype(np.float32)
    body = v2_json_body("input", x)
    ray_env = ray_environment()

    problem = serve_on_cluster_problem() if "rayserve" in peers else None
    joins = "rayserve" in peers and problem is None
    # One CPU per replica (Ray's default): the plain and the tuned mlp at load, the plain mlp and
    # the cold service after; Ray Serve's replica as well when it joins (its app outlives its driver).
    cpus = args.ray_cpus or max(os.cpu_count() or 1, 2 + joins)
    results: dict[str, Any] = {"ray_cpus": cpus, "peers_on": {}, "tuned": args.tuned}
    peer_envs: dict[str, dict[str, str]] = {}
    for peer in peers:
        if peer == "rayserve" and joins:
            results["peers_on"][peer] = "the benchmark's Ray cluster"
        elif peer == "rayserve":
            results["peers_on"][peer] = "its own local Ray"
            results["peer_note"] = f"the cluster's Python cannot run Ray Serve ({problem})"
        else:
            results["peers_on"][peer] = "no Ray"
        # "local": a Ray of its own, never a cluster another program named in /tmp/ray.
        peer_envs[peer] = {} if peer != "rayserve" else {"RAY_ADDRESS": "local"}

    ports = {name: free_port() for name in (RAY, PROCESS, *peers)}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    with contextlib.ExitStack() as stack:
        with console.status(f"starting a Ray head ({cpus} CPUs)"):
            address = stack.enter_context(ray_head(work, cpus, ray_env))
        servers = stack.enter_context(stopped_at_exit())  # stopped before the head
        results["ray_address"] = address
        if joins:
            peer_envs["rayserve"] = {**ray_env, "RAY_ADDRESS": address}
        ray_flags = ["--engine", "ray", "--ray-address", address]
        gateways = {
            RAY: gateway(RAY, work, manifests, ports[RAY], ray_flags, ray_env),
            PROCESS: gateway(PROCESS, work, manifests, ports[PROCESS], [], {}),
        }
        serve = args.bench_dir / "peer-serve"
        peer_servers = {
            peer: Server(peer, [str(serve), peer, str(model), "mlp", str(ports[peer])], env=peer_envs[peer])
            for peer in peers
        }
        with console.status("starting both gateways and the peers (a peer's first use installs it: minutes)"):
            for server in (*gateways.values(), *peer_servers.values()):
                servers.append(server.start(work))
            authorization = {name: admin_headers(work / name, timeout=START_TIMEOUT) for name in gateways}
            services = ["mlp", TUNED] if args.tuned else ["mlp"]
            for name, server in gateways.items():
                for service in services:
                    url = f"{urls[name]}/v2/models/{service}/infer"
                    server.wait_until_answering(url, body, START_TIMEOUT, authorization[name])
            for name, server in peer_servers.items():
                server.wait_until_answering(f"{urls[name]}/v2/models/mlp/infer", body, timeout=900)

        # name -> (URL, the Authorization header it is sent; the peers get the ray gateway's)
        endpoints = {
            name: (f"{url}/v2/models/mlp/infer", authorization.get(name, authorization[RAY])["authorization"])
            for name, url in urls.items()
        }
        if args.tuned:
            for name in gateways:
                url = f"{urls[name]}/v2/models/{TUNED}/infer"
                endpoints[name + TUNED_LABEL] = (url, authorization[name]["authorization"])
        with console.status(
            f"V2 JSON, 16 connections, {args.rounds} alternating rounds: {', '.join(endpoints)}"
        ):
            results["v2_json_16"] = alternating(args, body, endpoints)
        results["replica_nodes"] = replica_nodes(urls[RAY], authorization[RAY])

        for peer in peers:  # the start times get the CPUs to themselves
            stop_session(peer_servers[peer])
        if args.tuned:  # and the Ray CPUs the tuned replicas hold
            for name in gateways:
                delete_service(urls[name], authorization[name], TUNED)
        with console.status(f"replica start, scale 0 -> 1, {args.rounds} rounds on each engine"):
            results["replica_start"] = replica_starts(
                {name: urls[name] for name in gateways}, authorization, folder, body, args.rounds
            )
    return results


def alternating(
    args: argparse.Namespace, body: bytes, endpoints: dict[str, tuple[str, str]]
) -> dict[str, dict[str, float]]:
    """`compare`'s alternating rounds, one endpoint per call (`compare` sends one header to all, and
    each gateway accepts only its own token). Medians over rounds, as `compare` reports them."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in endpoints}
    for _ in range(args.rounds):
        for name, (url, authorization) in endpoints.items():
            header = f"Authorization: {authorization}"
            figures = compare(args.bench_dir, body, {name: url}, 16, args.seconds, 1, header=header)
            runs[name].append(figures[name])
    keys = ("rps", "p50_ms", "p99_ms", "bad")
    return {name: {k: statistics.median(r[k] for r in rs) for k in keys} for name, rs in runs.items()}


def delete_service(url: str, authorization: dict[str, str], service: str) -> None:
    with httpx.Client(base_url=url, headers=authorization, timeout=60, trust_env=False) as client:
        client.delete(f"/api/v1/inferenceservices/{service}").raise_for_status()


# -- report -----------------------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> None:
    loaded = results["v2_json_16"]
    on_ray = f"Ray actor on {', '.join(results['replica_nodes']) or '?'}"
    where = {RAY: on_ray, PROCESS: "local process", **results["peers_on"]}
    where |= {RAY + TUNED_LABEL: on_ray, PROCESS + TUNED_LABEL: "local process"}
    table = Table(title="ray engine: ONNX MLP 64-256-256-10, V2 JSON, 16 connections (medians over rounds)")
    for column in ("server", "replica", "requests/s", "p50 ms", "p99 ms", "non-2xx", "x ray engine"):
        table.add_column(column, justify="left" if column in ("server", "replica") else "right")
    base = loaded[RAY]["rps"]
    for name, row in loaded.items():
        if name == RAY + TUNED_LABEL:
            table.add_section()
        table.add_row(
            name + (" tuned" if name.endswith(TUNED_LABEL) else ""),
            where.get(name, ""),
            f"{row['rps']:,.0f}",
            f"{row['p50_ms']:.2f}",
            f"{row['p99_ms']:.2f}",
            f"{row['bad']:.1%}",
            f"{row['rps'] / base:.2f}",
        )
    console.print(table)
    console.print(
        escape(
            f"Ray cluster: `ray start --head --num-cpus {results['ray_cpus']}` at {results['ray_address']}. "
            "Both gateways: default flags, tokens on, the plain manifest (no resources)"
            + (f'; tuned: the same with limits {{cpu: "1"}} ({TUNED})' if results["tuned"] else "")
        )
    )
    for peer, place in results["peers_on"].items():
        note = f": {results['peer_note']}" if peer == "rayserve" and "peer_note" in results else ""
        console.print(escape(f"{peer} runs on {place}{note}"))

    suffixes = ["", TUNED_LABEL] if results["tuned"] else [""]
    for suffix in suffixes:
        ray, process = loaded[RAY + suffix], loaded[PROCESS + suffix]
        what = "tuned (cpu: 1): " if suffix else ""
        checks = [(f"{what}no failed requests through either gateway", ray["bad"] == 0 == process["bad"])]
        if "rayserve" in loaded:
            serve = loaded["rayserve"]
            checks.append((
                f"{what}ray engine >= 5x Ray Serve's throughput ({ray['rps'] / serve['rps']:.2f}x) "
                f"with a lower p99 ({ray['p99_ms']:.2f} vs {serve['p99_ms']:.2f} ms)",
                ray["rps"] >= 5 * serve["rps"] and ray["p99_ms"] < serve["p99_ms"],
            ))  # fmt: skip
        ratio = ray["rps"] / process["rps"]
        checks.append(
            (f"{what}ray engine >= 0.9x the process engine's throughput ({ratio:.2f}x)", ratio >= 0.9)
        )
        for label, ok in checks:
            console.print(f"[{'green' if ok else 'red'}]{'PASS' if ok else 'FAIL'}[/]: {escape(label)}")

    starts = results["replica_start"]
    rounds = max(len(r["seconds"]) for r in starts.values())
    table = Table(title="replica start: scale 0 -> 1, one request at zero replicas until its answer (s)")
    for column in ("engine", *(f"round {i + 1}" for i in range(rounds)), "median"):
        table.add_column(column, justify="left" if column == "engine" else "right")
    medians = {}
    for name, row in starts.items():
        medians[name] = statistics.median(row["seconds"])
        cells = [
            f"{s:.2f}" + ("" if status == 200 else f" ({status})")
            for s, status in zip(row["seconds"], row["status"], strict=True)
        ]
        table.add_row(name, *cells, f"{medians[name]:.2f}")
    console.print(table)
    console.print(
        f"replica start, median: ray engine {medians[RAY]:.2f} s, process engine {medians[PROCESS]:.2f} s "
        f"(+{medians[RAY] - medians[PROCESS]:.2f} s on Ray)"
    )
    failed = [s for row in starts.values() for s in row["status"] if s != 200]
    if failed:
        console.print(f"[red]{len(failed)} requests at zero replicas failed: HTTP {sorted(set(failed))}[/]")


if __name__ == "__main__":
    raise SystemExit(main())
