#!/usr/bin/env python3
"""Benchmark the gateway: client -> `servegate up` -> replica, with the manifest users write (no
`resources`, default flags), beside KServe's ModelServer and Ray Serve serving the model directly.

    python loadtests/bench_gateway.py [--seconds 10] [--rounds 3] [--peers kserve,rayserve] [--json FILE]

An ONNX MLP 64-256-256-10 is deployed as a plain InferenceService on `servegate up` as users run it
(tokens on: requests carry the admin token), on a second `servegate up --no-auth`, and, labelled
"tuned", on a third whose manifest sets `resources.limits.cpu: "1"`. A standalone
`servegate model serve` serves the same file with the CPU share the gateway's engine gives its
replica (`--cpus`), so the router hop is measured against the same replica; the peers
(`../shared/bench/peer-serve`, one ONNX Runtime thread each) serve it directly, without a router.
Every endpoint gets the same Authorization header.

Loads, in alternating rounds (`../shared/bench/compare` with wrk; h2load for gRPC): V2 JSON and
unary gRPC ModelInfer with 16 connections, then one connection to the gateway and to the replica,
which shows the latency the router hop adds without queueing.

Prints requests/s, p50 and p99 for each, and whether the issue's targets are met: through the
gateway >= 2x KServe's V2 JSON throughput with a lower p99, >= 2x KServe's gRPC throughput, >= 10x
Ray Serve's, the router hop adding under 0.25 ms at p50, and authentication costing under 3%.
Needs wrk and h2load (Debian: wrk, nghttp2-client); peers are installed on first use (minutes).
"""

from __future__ import annotations

import argparse
import json
import shutil
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
    check_grpc,
    chosen_peers,
    compare,
    free_port,
    grpc_body,
    h2load_compare,
    running,
    v2_json_body,
)
from predictors.examples import make_mlp_onnx
from predictors.threads import available_cores
from serving.auth.files import ADMIN_TOKEN_FILE
from serving.auth.tokens import TokenStore

SIZES = (64, 256, 256, 10)
console = Console(width=None if sys.stdout.isatty() else 120)

#: the manifest as users write it: no resources, no annotations.
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
"""
#: the tuned variant: a CPU limit of one core.
TUNED = (
    MANIFEST
    + """\
      resources:
        limits: {{cpu: "1"}}
"""
)
#: gateway name -> (manifest, extra `servegate up` flags)
GATEWAYS = {
    "gateway": (MANIFEST, []),
    "gateway-no-auth": (MANIFEST, ["--no-auth"]),
    "gateway-tuned": (TUNED, []),
}
TITLES = {
    "v2_json_16": "V2 JSON, 16 conn",
    "grpc_16": "gRPC, 16 conn",
    "v2_json_1": "V2 JSON, 1 conn",
    "grpc_1": "gRPC, 1 conn",
}
LABELS = {"gateway-tuned": "gateway (tuned: cpu 1)", "replica": "replica alone"}


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
    x = np.random.default_rng(0).normal(size=(1, SIZES[0])).astype(np.float32)
    body = v2_json_body("input", x)
    ports = {name: (free_port(), free_port()) for name in [*GATEWAYS, "replica"]}
    servers = []
    for name, (manifest, flags) in GATEWAYS.items():
        path = work / f"{name}.yaml"
        path.write_text(manifest.format(uri=model))
        http, grpc = ports[name]
        servers.append(Server(name, [
            sys.executable, "-m", "serving", "up", "-f", str(path), "--host", "127.0.0.1",
            "--http-port", str(http), "--grpc-port", str(grpc), "--state-dir", str(work / name),
            "--log-level", "warning", "--storage-root", str(work), *flags,
        ]))  # fmt: skip
    # The share the process engine gives a plain replica: the cores, divided between it and the gateway.
    share = available_cores() / 2
    http, grpc = ports["replica"]
    replica = Server("replica", [
        sys.executable, "-m", "serving", "model", "serve", "--model-name", "mlp", "--model-uri", str(model),
        "--cpus", f"{share:g}", "--http-port", str(http), "--grpc-port", str(grpc), "--log-level", "warning",
    ])  # fmt: skip
    peer_ports = {peer: free_port() for peer in peers}
    peer_servers = [
        Server(peer, [str(args.bench_dir / "peer-serve"), peer, str(model), "mlp", str(peer_ports[peer])],
               env={"PEER_ORT_THREADS": "1", "RAY_ADDRESS": "local"})
        for peer in peers
    ]  # fmt: skip
    urls = {name: f"http://127.0.0.1:{http}/v2/models/mlp/infer" for name, (http, _) in ports.items()}
    grpcs = {name: f"127.0.0.1:{grpc}" for name, (_, grpc) in ports.items()}
    peer_urls = {peer: f"http://127.0.0.1:{peer_ports[peer]}/v2/models/mlp/infer" for peer in peers}
    if "kserve" in peers:
        grpcs["kserve"] = f"127.0.0.1:{peer_ports['kserve'] + 1}"  # peer-serve puts KServe's gRPC there
    authorization = shared_admin_token(work / "gateway", work / "gateway-tuned")
    with running(*servers, replica, *peer_servers):
        with console.status("starting servegate up and the peers (a peer's first use installs it: minutes)"):
            for server in (*servers, replica, *peer_servers):
                server.start(work)
            for server in (*servers, replica):
                server.wait_until_answering(urls[server.name], body, timeout=120, headers=authorization)
            for server in peer_servers:
                server.wait_until_answering(peer_urls[server.name], body, timeout=900)
            # h2load counts HTTP statuses; a real call shows the gRPC status is OK too.
            for address in grpcs.values():
                check_grpc(address, x, authorization)
        header = f"Authorization: {authorization['authorization']}"
        figures = {}
        with console.status(f"V2 JSON, 16 connections: {', '.join([*urls, *peer_urls])}"):
            figures["v2_json_16"] = compare(
                args.bench_dir, body, urls | peer_urls, 16, args.seconds, args.rounds, header=header
            )
        with console.status(f"gRPC, 16 connections: {', '.join(grpcs)}"):
            figures["grpc_16"] = h2load_compare(
                {name: a for name, a in grpcs.items() if name != "gateway-no-auth"},
                grpc_body("mlp", "input", x), 16, args.seconds, args.rounds, header=header,
            )  # fmt: skip
        single = {name: urls[name] for name in ("gateway", "replica")}
        with console.status("V2 JSON, 1 connection: gateway vs replica (the router hop)"):
            figures["v2_json_1"] = compare(
                args.bench_dir, body, single, 1, args.seconds, args.rounds, header=header
            )
        with console.status("gRPC, 1 connection: gateway vs replica (the router hop)"):
            figures["grpc_1"] = h2load_compare(
                {name: grpcs[name] for name in ("gateway", "replica")},
                grpc_body("mlp", "input", x), 1, args.seconds, args.rounds, header=header,
            )  # fmt: skip
    return figures


def shared_admin_token(*state_dirs: Path) -> dict[str, str]:
    """One admin token for the gateways with auth on, made before they start (as
    `servegate up` would make it), so one Authorization header serves every endpoint."""
    first = state_dirs[0]
    first.mkdir()
    store = TokenStore.in_state_dir(first)
    store.ensure_admin_file(first / ADMIN_TOKEN_FILE)
    store.close()
    for other in state_dirs[1:]:
        other.mkdir()
        for name in ("auth.db", ADMIN_TOKEN_FILE):
            shutil.copy2(first / name, other / name)
    return admin_headers(first)


def report(results: dict[str, dict[str, dict[str, float]]]) -> int:
    table = Table(title="servegate gateway benchmark: plain manifests (medians over rounds)")
    for column in ("load", "server", "requests/s", "p50 ms", "p99 ms", "non-2xx", "x gateway"):
        table.add_column(column, justify="left" if column in ("load", "server") else "right")
    for key, rows in results.items():
        base = rows["gateway"]["rps"]
        for name, row in rows.items():
            table.add_row(
                TITLES[key],
                LABELS.get(name, name),
                f"{row['rps']:,.0f}",
                f"{row['p50_ms']:.2f}",
                f"{row['p99_ms']:.2f}",
                f"{row['bad']:.1%}",
                f"{row['rps'] / base:.2f}",
            )
        table.add_section()
    console.print(table)

    loaded, grpc = results["v2_json_16"], results["grpc_16"]
    gateway = loaded["gateway"]
    checks = []
    for key, protocol in (("v2_json_1", "V2 JSON"), ("grpc_1", "gRPC")):
        single = results[key]
        hop50 = single["gateway"]["p50_ms"] - single["replica"]["p50_ms"]
        hop99 = single["gateway"]["p99_ms"] - single["replica"]["p99_ms"]
        console.print(
            f"router hop, {protocol}, 1 connection: +{hop50:.2f} ms at p50, +{hop99:.2f} ms at p99 "
            f"(gateway {single['gateway']['p50_ms']:.2f} / {single['gateway']['p99_ms']:.2f} ms, "
            f"replica {single['replica']['p50_ms']:.2f} / {single['replica']['p99_ms']:.2f} ms)"
        )
        if key == "v2_json_1":
            checks.append(("the router hop adds under 0.25 ms at p50 (V2 JSON, 1 connection)", hop50 < 0.25))
    if "kserve" in loaded:
        kserve = loaded["kserve"]
        console.print(
            f"V2 JSON, gateway vs KServe direct: {gateway['rps'] / kserve['rps']:.2f}x throughput "
            f"(tuned {loaded['gateway-tuned']['rps'] / kserve['rps']:.2f}x); "
            f"p99 {gateway['p99_ms']:.2f} ms vs {kserve['p99_ms']:.2f} ms"
        )
        checks.append(
            ("V2 JSON: gateway >= 2x KServe direct, lower p99",
             gateway["rps"] >= 2 * kserve["rps"] and gateway["p99_ms"] < kserve["p99_ms"])
        )  # fmt: skip
    if "kserve" in grpc:
        ratio = grpc["gateway"]["rps"] / grpc["kserve"]["rps"]
        console.print(
            f"gRPC, gateway vs KServe's gRPC direct: {ratio:.2f}x throughput "
            f"(tuned {grpc['gateway-tuned']['rps'] / grpc['kserve']['rps']:.2f}x); "
            f"p99 {grpc['gateway']['p99_ms']:.2f} ms vs {grpc['kserve']['p99_ms']:.2f} ms"
        )
        checks.append(("gRPC: gateway >= 2x KServe's gRPC direct", ratio >= 2))
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
    failed = max(
        rows[name]["bad"] for rows in results.values() for name in rows if name.startswith("gateway")
    )
    checks.append(("no failed requests through the gateway", failed == 0))
    for label, ok in checks:
        console.print(f"[{'green' if ok else 'red'}]{'met' if ok else 'MISSED'}[/]: {label}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
