#!/usr/bin/env python3
"""What an open dashboard costs the data plane: the gateway benchmark's load with and without pages
open, in alternating rounds.

    python loadtests/bench_dashboard.py [--seconds 10] [--rounds 3] [--pages 1] [--json FILE]

`servegate up` serves the ONNX MLP from the gateway benchmark's plain manifest (tokens on). Each
round runs wrk (V2 JSON, 16 connections, through `../shared/bench/compare`) twice: once with no
page open, once with `--pages` pages open on the service's view, each doing what the page's
script does there: the live stream (`/ui/live`, an event every 2 s) and, every 5 s, the service's
metric history, its status and its events. Prints requests/s, p50 and p99 for both and the cost of
the open pages; the target is under 3% of requests/s.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import threading
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests.bench_gateway import MANIFEST, SIZES, shared_admin_token
from loadtests.harness import Server, benchmark_arguments, compare, free_port, running, v2_json_body
from predictors.examples import make_mlp_onnx

console = Console(width=None if sys.stdout.isatty() else 120)
#: how often the service view refreshes its charts, status and events (app.js does the same).
REFRESH_S = 5.0


class OpenPage:
    """One browser tab on the service's view: the live stream, and a refresh every `REFRESH_S`."""

    def __init__(self, base: str, headers: dict[str, str], service: str) -> None:
        self.client = httpx.Client(base_url=base, headers=headers, timeout=30.0, trust_env=False)
        self.service = service
        self.stop = threading.Event()
        self.events = self.refreshes = 0
        self.threads = [threading.Thread(target=self._live), threading.Thread(target=self._refresh)]

    def __enter__(self) -> OpenPage:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()
        self.client.close()

    def _live(self) -> None:
        while not self.stop.is_set():
            with self.client.stream("GET", "/ui/live") as stream:
                for line in stream.iter_lines():
                    self.events += line.startswith("event: services")
                    if self.stop.is_set():
                        return

    def _refresh(self) -> None:
        item = f"/api/v1/inferenceservices/{self.service}"
        while not self.stop.wait(REFRESH_S):
            for path in (f"{item}/history?minutes=60", item, f"{item}/events"):
                self.client.get(path).raise_for_status()
            self.refreshes += 1


def main() -> int:
    parser = benchmark_arguments(__doc__ or "")
    parser.add_argument("--pages", type=int, default=1, help="dashboard pages open during the loaded rounds")
    args = parser.parse_args()
    if args.pages < 1:
        parser.error("--pages must be at least 1")
    with tempfile.TemporaryDirectory(prefix="servegate-bench-") as tmp:
        work = Path(tmp)
        model = make_mlp_onnx(work / "mlp.onnx", SIZES)
        x = np.random.default_rng(0).normal(size=(1, SIZES[0])).astype(np.float32)
        body = v2_json_body("input", x)
        (work / "mlp.yaml").write_text(MANIFEST.format(uri=model))
        http, grpc = free_port(), free_port()
        gateway = Server("gateway", [
            sys.executable, "-m", "serving", "up", "-f", str(work / "mlp.yaml"), "--host", "127.0.0.1",
            "--http-port", str(http), "--grpc-port", str(grpc), "--state-dir", str(work / "state"),
            "--log-level", "warning", "--storage-root", str(work),
        ])  # fmt: skip
        headers = shared_admin_token(work / "state")
        base = f"http://127.0.0.1:{http}"
        url = f"{base}/v2/models/mlp/infer"
        header = f"Authorization: {headers['authorization']}"
        closed, opened = [], []
        with running(gateway):
            with console.status("starting servegate up"):
                gateway.start(work)
                gateway.wait_until_answering(url, body, timeout=120, headers=headers)
            for round_ in range(1, args.rounds + 1):
                with console.status(f"round {round_}/{args.rounds}: no dashboard open"):
                    closed.append(
                        compare(args.bench_dir, body, {"gateway": url}, 16, args.seconds, 1, header=header)
                    )
                with console.status(f"round {round_}/{args.rounds}: {args.pages} dashboard page(s) open"):
                    pages = [OpenPage(base, headers, "mlp") for _ in range(args.pages)]
                    for page in pages:
                        page.__enter__()
                    try:
                        opened.append(
                            compare(
                                args.bench_dir, body, {"gateway": url}, 16, args.seconds, 1, header=header
                            )
                        )
                    finally:
                        for page in pages:
                            page.__exit__()
                    events = sum(p.events for p in pages)
                    refreshes = sum(p.refreshes for p in pages)
                if events == 0 or refreshes == 0:
                    console.print(
                        "[red]the open pages got no live events or refreshes: the round measures nothing[/]"
                    )
                    return 1
    if args.json:
        args.json.write_text(json.dumps({"closed": closed, "opened": opened, "pages": args.pages}, indent=2))
    return report(closed, opened, args.pages)


def report(closed: list[dict], opened: list[dict], pages: int) -> int:
    def median(rows: list[dict], key: str) -> float:
        return statistics.median(row["gateway"][key] for row in rows)

    table = Table(title="an open dashboard vs none: V2 JSON, 16 connections (medians over rounds)")
    for column in ("dashboard", "requests/s", "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "dashboard" else "right")
    for label, rows in (("none open", closed), (f"{pages} page(s) open, live", opened)):
        table.add_row(
            label,
            f"{median(rows, 'rps'):,.0f}",
            f"{median(rows, 'p50_ms'):.2f}",
            f"{median(rows, 'p99_ms'):.2f}",
        )
    console.print(table)
    cost = 1 - median(opened, "rps") / median(closed, "rps")
    ok = cost < 0.03
    bad = max(row["gateway"]["bad"] for row in closed + opened)
    console.print(f"an open dashboard costs {cost:.1%} of requests/s")
    console.print(
        f"[{'green' if ok else 'red'}]{'met' if ok else 'MISSED'}[/]: an open dashboard costs under 3%"
    )
    console.print(
        f"[{'green' if bad == 0 else 'red'}]{'met' if bad == 0 else 'MISSED'}[/]: no failed requests"
    )
    return 0 if ok and bad == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
