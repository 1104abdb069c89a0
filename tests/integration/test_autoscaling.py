"""Autoscaling end to end on a real `servegate up`: a load step scales a revision up, removing the
load scales it down, and a revision at zero comes back for the requests that wait for it, with no
failed request anywhere."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.gateway_helpers import X_BODY, ControlApi, Load, python_isvc, revision
from tests.servers import GatewayProcess, until

#: a short stable window (6 s, Knative's minimum) keeps the test quick.
FAST = {"autoscaling.knative.dev/window": "6s"}


def replicas(api: ControlApi, service: str, rev: str) -> tuple[int, int]:
    """(desired, ready) replicas of a revision, from the service's status."""
    pool = api.status(service)["components"]["predictor"]["replicas"].get(rev, {})
    return pool.get("desired", 0), pool.get("ready", 0)


def events(api: ControlApi, service: str) -> list[str]:
    return [e["message"] for e in api.events(service) if e["reason"] == "Scaled"]


def elastic(name: str, **predictor: Any) -> dict[str, Any]:
    # 0.2 s per request and one request at a time per replica: about 5 requests/s each.
    manifest = python_isvc(name, "Sleeper", env={"SLEEP_SECONDS": "0.2"}, predictor=predictor)
    manifest["metadata"]["annotations"] = dict(FAST)
    return manifest


def test_a_load_step_scales_up_and_its_end_scales_down(gateway: GatewayProcess, api: ControlApi) -> None:
    api.apply(elastic("elastic", minReplicas=1, maxReplicas=4, scaleTarget=2))
    try:
        api.wait_ready("elastic")
        rev = revision("elastic", 1)
        assert replicas(api, "elastic", rev) == (1, 1)
        with Load(gateway.url, "elastic", X_BODY, concurrency=8, timeout=30, token=gateway.token) as load:
            # 8 in flight against a target of 2 x 70% per replica: as many replicas as allowed.
            until(lambda: replicas(api, "elastic", rev) == (4, 4), 45, "4 ready replicas under load")
            load.wait_count(40)
        assert load.failures() == [], load.failures()[:3]
        assert any("1 -> " in message for message in events(api, "elastic"))
        # Without load the pool shrinks back to minReplicas (at most halving per decision).
        until(lambda: replicas(api, "elastic", rev) == (1, 1), 60, "back to 1 replica")
        assert any("-> 1 replica" in message for message in events(api, "elastic"))
    finally:
        api.delete("elastic")


def test_scale_to_zero_and_back_loses_no_request(gateway: GatewayProcess, api: ControlApi) -> None:
    manifest = elastic("sleepy", minReplicas=0, maxReplicas=2)
    manifest["metadata"]["annotations"]["serving.servegate.io/scale-to-zero-grace-period"] = "3s"
    api.apply(manifest)
    try:
        api.wait_ready("sleepy")
        rev = revision("sleepy", 1)
        # Idle past the grace period: no replica left, and the service still says Ready.
        until(lambda: replicas(api, "sleepy", rev) == (0, 0), 60, "scale to zero")
        status = api.status("sleepy")
        assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
        assert any("scale to zero" in message for message in events(api, "sleepy"))

        # Requests arriving at zero wait for the replica the first of them asked for.
        started = time.monotonic()
        with (
            httpx.Client(
                base_url=gateway.url, timeout=60, trust_env=False, headers=gateway.headers
            ) as client,
            ThreadPoolExecutor(6) as pool,
        ):
            answers = list(pool.map(lambda _: client.post("/v2/models/sleepy/infer", json=X_BODY), range(6)))
        cold = time.monotonic() - started
        assert [a.status_code for a in answers] == [200] * 6, [
            a.text for a in answers if a.status_code != 200
        ]
        assert all(a.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0] for a in answers)
        assert cold < 20, f"cold start took {cold:.1f}s"
        assert any("scale from zero" in message for message in events(api, "sleepy"))
    finally:
        api.delete("sleepy")
