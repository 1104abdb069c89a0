#!/usr/bin/env python3
"""Benchmark the gateway hop: client -> `servegate up` -> replica, beside the same gateway with
authentication off, the replica alone, KServe's ModelServer serving the model directly (no router)
and Ray Serve.

    python loadtests/bench_gateway.py [--seconds 10] [--rounds 3] [--peers kserve,rayserve] [--json FILE]

An ONNX MLP 64-256-256-10 (one ONNX Runtime thread) is deployed as an InferenceService on
`servegate up` as users run it (tokens on: requests carry the admin token) and on a second
`servegate up --no-auth`; a standalone `servegate model serve` serves the same file the way the
gateway's replica does (that replica answers only its gateway), and so do the peers
(`../shared/bench/peer-serve`). Every endpoint gets the same Authorization header.
All take V2 JSON with 16 connections in alternating rounds
(`../shared/bench/compare`); then the gateway and the replica take one connection, which shows the
latency the router hop adds without queueing.

Prints requests/s, p50 and p99 for each, and whether the issue's targets are met: through the
gateway >= 1.5x KServe's throughput with a lower p99, >= 10x Ray Serve's, and authentication costing
under 3% of the gateway's requests/s.
Needs wrk (Debian: wrk); peers are installed on first use (minutes).
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
    admin_headers,
    benchmark_arguments,
    chosen_peers,
    compare,
    free_port,
    running,
    v2_json_body,
)
from predictors.examples import make_mlp_onnx

SIZES = (64, 256, 256, 10)
console = Console(width=None if sys.stdout.isatty() else 120)

MANIFEST = """\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: mlp
spec:
  predictor:
    model:
      modelFormat: {{name: onnx}}
      storageUri: {uri}
      protocolVersion: v2
      resources:
        limits: {{cpu: "1"}}
"""


def main() -> int:
    parser = benchmark_arguments(__doc__ or "")
    args = parser.parse_args()
    peers = chosen_peers(parser, args)

    with tempfile.TemporaryDirectory(prefix="servegate-bench-") as tmp:
        results = run(Path(tmp), args, peers)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return report(results)


def run(work: Path, args: argparse.Namespace, peers: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    model = make_mlp_onnx(work / "mlp.onnx", SIZES)
    manifest = work / "mlp.yaml"
    manifest.write_text(MANIFEST.format(uri=model))
    x = np.random.default_rng(0).normal(size=(1, SIZES[0])).astype(np.float32)
    body = v2_json_body("input", x)
    gateways = {
        "gateway": (free_port(), work / "state", []),
        "gateway-no-auth": (free_port(), work / "open", ["--no-auth"]),
    }
    servers = [
        Server(name, [
            sys.executable, "-m", "serving", "up", "-f", str(manifest), "--host", "127.0.0.1",
            "--http-port", str(http), "--grpc-port", str(free_port()), "--state-dir", str(state),
            "--log-level", "warning", "--storage-root", str(work), *flags,
        ])
        for name, (http, state, flags) in gateways.items()
    ]  # fmt: skip
    replica_port = free_port()
    replica = Server("replica", [
        sys.executable, "-m", "serving", "model", "serve", "--model-name", "mlp", "--model-uri", str(model),
        "--threads", "1", "--http-port", str(replica_port), "--no-grpc", "--log-level", "warning",
    ])  # fmt: skip
    ports = {peer: free_port() for peer in peers}
    peer_servers = [
        Server(peer, [str(args.bench_dir / "peer-serve"), peer, str(model), "mlp", str(ports[peer])],
               env={"PEER_ORT_THREADS": "1"})
        for peer in peers
    ]  # fmt: skip
    urls = {name: f"http://127.0.0.1:{http}/v2/models/mlp/infer" for name, (http, _, _) in gateways.items()}
    urls["replica"] = f"http://127.0.0.1:{replica_port}/v2/models/mlp/infer"
    peer_urls = {peer: f"http://127.0.0.1:{ports[peer]}/v2/models/mlp/infer" for peer in peers}
    with running(*servers, replica, *peer_servers):
        with console.status("starting servegate up and the peers (a peer's first use installs it: minutes)"):
            for server in (*servers, replica, *peer_servers):
                server.start(work)
            authorization = admin_headers(work / "state")
            for server in (*servers, replica):
                server.wait_until_answering(urls[server.name], body, timeout=120, headers=authorization)
            for server in peer_servers:
                server.wait_until_answering(peer_urls[server.name], body, timeout=900)
        header = f"Authorization: {authorization['authorization']}"
        figures = {}
        with console.status(f"V2 JSON, 16 connections: {', '.join([*urls, *peer_urls])}"):
            figures["v2_json_16"] = compare(
                args.bench_dir, body, urls | peer_urls, 16, args.seconds, args.rounds, header=header
            )
        with console.status("V2 JSON, 1 connection: gateway vs replica (the router hop)"):
            figures["v2_json_1"] = compare(
                args.bench_dir, body, urls, 1, args.seconds, args.rounds, header=header
            )
    return figures


def report(results: dict[str, dict[str, dict[str, float]]]) -> int:
    table = Table(title="servegate gateway benchmark (medians over rounds)")
    for column in ("load", "server", "requests/s", "p50 ms", "p99 ms", "non-2xx", "x gateway"):
        table.add_column(column, justify="left" if column in ("load", "server") else "right")
    titles = {"v2_json_16": "V2 JSON, 16 conn", "v2_json_1": "V2 JSON, 1 conn"}
    for key, rows in results.items():
        base = rows["gateway"]["rps"]
        for name, row in rows.items():
            latency = (f"{row['p50_ms']:.2f}", f"{row['p99_ms']:.2f}")
            table.add_row(
                titles[key],
                name,
                f"{row['rps']:,.0f}",
                *latency,
                f"{row['bad']:.1%}",
                f"{row['rps'] / base:.2f}",
            )
        table.add_section()
    console.print(table)

    loaded, single = results["v2_json_16"], results["v2_json_1"]
    gateway = loaded["gateway"]
    hop = single["gateway"]["p50_ms"] - single["replica"]["p50_ms"]
    console.print(
        f"router hop, 1 connection: +{hop:.2f} ms at p50 "
        f"(gateway {single['gateway']['p50_ms']:.2f} ms, replica {single['replica']['p50_ms']:.2f} ms); "
        f"16 connections: gateway {gateway['rps'] / loaded['replica']['rps']:.0%} of the replica's throughput"
    )
    checks = []
    if "kserve" in loaded:
        kserve = loaded["kserve"]
        console.print(
            f"gateway vs KServe direct: {gateway['rps'] / kserve['rps']:.2f}x throughput; "
            f"p99 {gateway['p99_ms']:.2f} ms vs {kserve['p99_ms']:.2f} ms"
        )
        checks.append(
            ("gateway >= 1.5x KServe direct, lower p99",
             gateway["rps"] >= 1.5 * kserve["rps"] and gateway["p99_ms"] < kserve["p99_ms"])
        )  # fmt: skip
    if "rayserve" in loaded:
        ratio = gateway["rps"] / loaded["rayserve"]["rps"]
        console.print(f"gateway vs Ray Serve: {ratio:.2f}x throughput")
        checks.append(("gateway >= 10x Ray Serve", ratio >= 10))
    cost = 1 - gateway["rps"] / loaded["gateway-no-auth"]["rps"]
    console.print(
        f"authentication: {gateway['rps']:,.0f} requests/s with tokens, "
        f"{loaded['gateway-no-auth']['rps']:,.0f} without: it costs {cost:.1%} of requests/s"
    )
    checks.append(("authentication costs under 3% of requests/s", cost < 0.03))
    checks.append(("no failed requests through the gateway", gateway["bad"] == 0))
    for label, ok in checks:
        console.print(f"[{'green' if ok else 'red'}]{'met' if ok else 'MISSED'}[/]: {label}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
