#!/usr/bin/env python3
"""Progressive delivery under load: how long a rollout strategy takes to decide, and how many
requests a bad version answers (and fails) before it is stopped.

    python loadtests/bench_rollout.py [--hold 20s] [--connections 8] [--json FILE]

`servegate up` (tokens on) serves a three-class classifier (`tests.gateway_models:Scorer`) as a
stable revision under continuous V2 JSON load, then rolls out a new version with this strategy,
written as a user would, with shorter holds and 2 s looks (default 10 s) so the run takes minutes:

    rollout:
      shadow: {percent: 100, hold: HOLD}
      steps: [{weight: 10, hold: HOLD}, {weight: 25, hold: HOLD}, {weight: 50, hold: HOLD}]
      interval: 2s
      checks: [{metric: errorRate}, {metric: latency, quantile: p99, maxRatio: 1.5},
               {metric: agreement, minShare: 0.95}]

for four versions: the same model (promoted), one failing 5% of its requests, one 3x slower, one
retrained with shuffled labels (its answers disagree). The failing and slow ones run again with the
steps only (no shadow phase), where they do take live traffic. Prints, per scenario, the decision and
the check behind it, the time from the canary's first stage to the decision, the requests the canary
answered live and those that failed, as a share of every request during the rollout. Target: a bad
version's failed requests stay under 1% of all requests during its rollout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests.harness import Server, admin_headers, free_port, running
from tests.gateway_helpers import Load
from tests.servers import until

console = Console(width=None if sys.stdout.isatty() else 140)
BODY = {"inputs": [{"name": "x", "shape": [4], "datatype": "FP32", "data": [0.0, 1.0, 2.0, 4.0]}]}
#: (scenario, the new version's environment, whether it is bad)
VERSIONS = [
    ("same model", {"VERSION": "2"}, False),
    ("5% errors", {"FAIL_SHARE": "0.05"}, True),
    ("3x slower", {"SLEEP_MS": "6"}, True),
    ("shuffled labels", {"SHUFFLE": "1"}, True),
]
#: the stable version's environment: 2 ms per request, so "3x slower" is 6 ms.
STABLE = {"SLEEP_MS": "2"}
ENDINGS = ("RolloutSucceeded", "RolloutAborted")


def manifest(name: str, env: dict[str, str], strategy: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {
            "predictor": {
                "model": {
                    "modelFormat": {"name": "python"},
                    "protocolVersion": "v2",
                    "storageUri": "tests.gateway_models:Scorer",
                    "env": [{"name": k, "value": v} for k, v in env.items()],
                }
            },
            "rollout": strategy,
        },
    }


def strategy(hold: str, shadow: bool) -> dict[str, Any]:
    checks = [{"metric": "errorRate"}, {"metric": "latency", "quantile": "p99", "maxRatio": 1.5}]
    out: dict[str, Any] = {
        "steps": [{"weight": w, "hold": hold} for w in (10, 25, 50)],
        "interval": "2s",
        "checks": checks + ([{"metric": "agreement", "minShare": 0.95}] if shadow else []),
    }
    if shadow:
        out["shadow"] = {"percent": 100, "hold": hold}
    return out


@dataclass
class Result:
    scenario: str
    strategy: str
    bad: bool
    decision: str
    why: str
    seconds: float
    requests: int
    canary_live: int
    failed: int

    @property
    def failed_share(self) -> float:
        return self.failed / self.requests if self.requests else 0.0


def run_scenario(
    api: httpx.Client,
    url: str,
    token: str,
    name: str,
    env: dict[str, str],
    plan: dict[str, Any],
    connections: int,
) -> tuple[str, str, float, list[Any]]:
    """Roll `name` out to a version with `env` under load; (decision event, message, seconds, outcomes)."""
    assert api.post("/apply", json=manifest(name, STABLE, plan)).status_code == 200
    until(lambda: _ready(api, name), 120, f"{name} to be ready")
    with Load(url, name, BODY, concurrency=connections, token=token) as load:
        load.wait_count(200)
        start = load.mark()
        assert api.post("/apply", json=manifest(name, {**STABLE, **env}, plan)).status_code == 200

        def ended() -> tuple[dict[str, Any], dict[str, Any]] | None:
            events = api.get(f"/inferenceservices/{name}/events").json()["items"]
            started = [e for e in events if e["reason"] == "RolloutStarted"]
            done = [e for e in events if e["reason"] in ENDINGS]
            return (started[0], done[0]) if started and done else None

        started, done = until(ended, 600, f"the rollout of {name} to end")
        outcomes = load.since(start)
    return done["reason"], done["message"], done["time"] - started["time"], outcomes


def _ready(api: httpx.Client, name: str) -> bool:
    status = api.get(f"/inferenceservices/{name}").json().get("status", {})
    return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hold", default="20s", help="each stage's hold (a Go duration)")
    parser.add_argument("--connections", type=int, default=8, help="load connections")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="servegate-bench-") as tmp:
        work = Path(tmp)
        http, grpc = free_port(), free_port()
        gateway = Server("gateway", [
            sys.executable, "-m", "serving", "up", "--host", "127.0.0.1", "--http-port", str(http),
            "--grpc-port", str(grpc), "--state-dir", str(work / "state"), "--log-level", "warning",
        ])  # fmt: skip
        url = f"http://127.0.0.1:{http}"
        with running(gateway):
            gateway.start(work)
            headers = admin_headers(work / "state")
            token = headers["authorization"].removeprefix("Bearer ")
            until(lambda: _answers(url), 60, "servegate up")
            with httpx.Client(base_url=f"{url}/api/v1", headers=headers, timeout=60, trust_env=False) as api:
                runs = [(s, e, b, True) for s, e, b in VERSIONS]
                runs += [(s, e, b, False) for s, e, b in VERSIONS if s in ("5% errors", "3x slower")]
                for i, (scenario, env, bad, shadow) in enumerate(runs):
                    label = "shadow + steps" if shadow else "steps only"
                    with console.status(f"{scenario} ({label})"):
                        plan = strategy(args.hold, shadow)
                        reason, message, seconds, outcomes = run_scenario(
                            api, url, token, f"roll-{i}", env, plan, args.connections
                        )
                    canary = f"roll-{i}-predictor-00002"
                    results.append(
                        Result(
                            scenario,
                            label,
                            bad,
                            "promoted" if reason == "RolloutSucceeded" else "rolled back",
                            message.split(": ", 1)[-1],
                            seconds,
                            len(outcomes),
                            sum(o.revision == canary for o in outcomes),
                            sum(o.status != 200 for o in outcomes),
                        )
                    )
    if args.json:
        args.json.write_text(
            json.dumps([r.__dict__ | {"failedShare": r.failed_share} for r in results], indent=2)
        )
    return report(results)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def report(results: list[Result]) -> int:
    table = Table(title="rollouts under load: time to decision, what the canary answered")
    for column in (
        "version",
        "strategy",
        "decision",
        "seconds",
        "requests",
        "canary live",
        "failed",
        "failed share",
    ):
        table.add_column(column, justify="left" if column in ("version", "strategy", "decision") else "right")
    for r in results:
        table.add_row(
            r.scenario, r.strategy, r.decision, f"{r.seconds:.1f}", f"{r.requests:,}",
            f"{r.canary_live:,}", f"{r.failed:,}", f"{r.failed_share:.2%}",
        )  # fmt: skip
    console.print(table)
    for r in results:
        console.print(f"[bold]{r.scenario}[/] ({r.strategy}): {r.why}")
    right = all((r.decision == "rolled back") == r.bad for r in results)
    cheap = all(r.failed_share < 0.01 for r in results if r.bad)
    for ok, what in (
        (right, "every bad version rolled back, the good one promoted"),
        (cheap, "a bad version's failed requests stay under 1% of all requests during its rollout"),
    ):
        console.print(f"[{'green' if ok else 'red'}]{'met' if ok else 'MISSED'}[/]: {what}")
    return 0 if right and cheap else 1


if __name__ == "__main__":
    raise SystemExit(main())
