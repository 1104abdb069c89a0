#!/usr/bin/env python3
"""Benchmark one servegate replica, side by side with KServe's ModelServer and Ray Serve.

    python loadtests/bench_replica.py [--seconds 10] [--rounds 3] [--peers kserve,rayserve] [--json FILE]

1. Protocols: an ONNX MLP 64-256-256-10 (one input row) served by `servegate model serve` with
   its default flags (threads sized from the machine), loaded with 16 connections over V2 JSON,
   V2 binary and gRPC; beside it, labelled "tuned", the same with `--threads 1`. KServe's
   ModelServer and Ray Serve serve the same file (`../shared/bench/peer-serve`, one ONNX Runtime
   thread) and take the same V2 JSON load in alternating rounds (`../shared/bench/compare`);
   KServe's gRPC takes the same gRPC load.
2. Batching: an ONNX MLP 256-4096-4096-10 served twice with default flags, dynamic batching off
   and on (32 rows, 5 ms), loaded with 32 connections.

Prints requests/s, p50 and p99 for each, the ratios, and whether the issue's targets are met:
V2 JSON >= 2x KServe's throughput with a lower p99, and batching on >= 3x off.
Needs wrk and h2load (Debian: wrk, nghttp2-client); peers are installed on first use (minutes).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests.harness import (
    Server,
    benchmark_arguments,
    check_grpc,
    chosen_peers,
    compare,
    free_port,
    grpc_body,
    h2load_grpc,
    running,
    servegate_command,
    v2_binary_body,
    v2_json_body,
)
from predictors.examples import make_mlp_onnx

SMALL = (64, 256, 256, 10)
LARGE = (256, 4096, 4096, 10)
console = Console(width=None if sys.stdout.isatty() else 120)


def main() -> int:
    parser = benchmark_arguments(__doc__ or "")
    parser.add_argument("--skip-batching", action="store_true")
    args = parser.parse_args()
    peers = chosen_peers(parser, args)

    with tempfile.TemporaryDirectory(prefix="servegate-bench-") as tmp:
        work = Path(tmp)
        results = {"protocols": protocols(work, args, peers)}
        if not args.skip_batching:
            results["batching"] = batching(work, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return report(results)


def protocols(
    work: Path, args: argparse.Namespace, peers: list[str]
) -> dict[str, dict[str, dict[str, float]]]:
    model = make_mlp_onnx(work / "mlp.onnx", SMALL)
    x = np.random.default_rng(0).normal(size=(1, SMALL[0])).astype(np.float32)
    json_body = v2_json_body("input", x)
    http, grpc, tuned_port = free_port(), free_port(), free_port()
    servegate = Server("servegate", servegate_command(
        "--model-name", "mlp", "--model-uri", str(model), "--http-port", str(http), "--grpc-port", str(grpc),
    ))  # fmt: skip
    tuned = Server("servegate (tuned: --threads 1)", servegate_command(
        "--model-name", "mlp", "--model-uri", str(model), "--threads", "1",
        "--http-port", str(tuned_port), "--no-grpc",
    ))  # fmt: skip
    ports = {peer: free_port() for peer in peers}
    peer_servers = [
        Server(peer, [str(args.bench_dir / "peer-serve"), peer, str(model), "mlp", str(ports[peer])],
               env={"PEER_ORT_THREADS": "1", "RAY_ADDRESS": "local"})
        for peer in peers
    ]  # fmt: skip
    urls = {
        "servegate": f"http://127.0.0.1:{http}/v2/models/mlp/infer",
        tuned.name: f"http://127.0.0.1:{tuned_port}/v2/models/mlp/infer",
    }
    urls.update({peer: f"http://127.0.0.1:{ports[peer]}/v2/models/mlp/infer" for peer in peers})

    with running(servegate, tuned, *peer_servers):
        with console.status("starting servegate and the peers (a peer's first use installs it: minutes)"):
            for server in (servegate, tuned, *peer_servers):
                server.start(work)
            for server in (servegate, tuned, *peer_servers):
                server.wait_until_answering(urls[server.name], json_body, timeout=900)
        check_grpc(f"127.0.0.1:{grpc}", x)

        figures: dict[str, dict[str, dict[str, float]]] = {}
        with console.status(f"V2 JSON, 16 connections: {', '.join(urls)}"):
            figures["v2_json"] = compare(args.bench_dir, json_body, urls, 16, args.seconds, args.rounds)
        binary, header_length = v2_binary_body("input", x, "output")
        with console.status("V2 binary, 16 connections: servegate"):
            figures["v2_binary"] = compare(
                args.bench_dir, binary, {"servegate": urls["servegate"]}, 16, args.seconds, args.rounds,
                content_type="application/octet-stream",
                header=f"Inference-Header-Content-Length: {header_length}",
            )  # fmt: skip
        grpc_targets = {"servegate": f"127.0.0.1:{grpc}"}
        if "kserve" in peers:
            grpc_targets["kserve"] = f"127.0.0.1:{ports['kserve'] + 1}"  # peer-serve puts KServe's gRPC there
        figures["grpc"] = {}
        for name, address in grpc_targets.items():
            with console.status(f"gRPC, 16 connections: {name}"):
                figures["grpc"][name] = h2load_grpc(
                    address, grpc_body("mlp", "input", x), 16, args.seconds, args.rounds
                )
    return figures


def batching(work: Path, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    model = make_mlp_onnx(work / "large.onnx", LARGE)
    body = v2_json_body("input", np.random.default_rng(1).normal(size=(1, LARGE[0])).astype(np.float32))
    settings = {
        "batching_off": ["--max-batch-size", "1"],
        "batching_on": ["--max-batch-size", "32", "--max-latency-ms", "5"],
    }
    servers, urls = [], {}
    for name, flags in settings.items():
        port = free_port()
        servers.append(Server(name, servegate_command(
            "--model-name", "large", "--model-uri", str(model), "--no-grpc",
            "--http-port", str(port), *flags,
        )))  # fmt: skip
        urls[name] = f"http://127.0.0.1:{port}/v2/models/large/infer"
    with running(*servers):
        with console.status("starting the MLP 256-4096-4096-10 with batching off and on"):
            for server in servers:
                server.start(work)
            for server in servers:
                server.wait_until_answering(urls[server.name], body, timeout=120)
        with console.status("batching off vs on, 32 connections"):
            return compare(args.bench_dir, body, urls, 32, args.seconds, args.rounds)


def report(results: dict) -> int:
    table = Table(title="servegate replica benchmark (medians over rounds)")
    for column in ("load", "server", "requests/s", "p50 ms", "p99 ms", "non-2xx", "x first"):
        table.add_column(column, justify="left" if column in ("load", "server") else "right")
    titles = {"v2_json": "V2 JSON, 16 conn", "v2_binary": "V2 binary, 16 conn", "grpc": "gRPC, 16 conn"}
    sections = [(titles[key], value) for key, value in results["protocols"].items()]
    if "batching" in results:
        sections.append(("MLP 256-4096-4096-10, 32 conn", results["batching"]))
    for title, rows in sections:
        first = next(iter(rows.values()))["rps"]
        for name, row in rows.items():
            table.add_row(title, name, f"{row['rps']:,.0f}", f"{row['p50_ms']:.2f}", f"{row['p99_ms']:.2f}",
                          f"{row['bad']:.1%}", f"{row['rps'] / first:.2f}")  # fmt: skip
        table.add_section()
    console.print(table)

    checks = []
    v2 = results["protocols"]["v2_json"]
    for peer in ("kserve", "rayserve"):
        if peer in v2:
            ratio = v2["servegate"]["rps"] / v2[peer]["rps"]
            ours, theirs = v2["servegate"]["p99_ms"], v2[peer]["p99_ms"]
            console.print(f"V2 JSON throughput vs {peer}: {ratio:.2f}x; p99 {ours:.2f} ms vs {theirs:.2f} ms")
    if "kserve" in v2:
        checks.append(("V2 JSON >= 2x KServe and a lower p99",
                       v2["servegate"]["rps"] >= 2 * v2["kserve"]["rps"]
                       and v2["servegate"]["p99_ms"] < v2["kserve"]["p99_ms"]))  # fmt: skip
    if "batching" in results:
        batch = results["batching"]
        ratio = batch["batching_on"]["rps"] / batch["batching_off"]["rps"]
        console.print(f"batching on vs off: {ratio:.2f}x throughput")
        checks.append(("batching on >= 3x off", ratio >= 3))
    for label, ok in checks:
        console.print(f"[{'green' if ok else 'red'}]{'met' if ok else 'MISSED'}[/]: {label}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
