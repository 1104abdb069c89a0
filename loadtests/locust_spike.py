"""Spike load through the gateway: SERVEGATE_USERS users (default 4) for 30 s, a spike to 8 times as
many for 30 s, back down for 30 s, then stop. Watch p99 and failures across the edges (and, with
the autoscaler, the replica count following the spike).

    locust -f loadtests/locust_spike.py --host http://127.0.0.1:8080 --headless

The users are `InferenceUser` from locustfile.py (SERVEGATE_MODEL, SERVEGATE_PROTOCOLS apply).
"""

from __future__ import annotations

import os

from locust import LoadTestShape
from locustfile import InferenceUser  # locust puts this folder on sys.path

__all__ = ["InferenceUser", "Spike"]

BASE = int(os.environ.get("SERVEGATE_USERS", "4"))
STAGES = ((30, BASE), (60, 8 * BASE), (90, BASE))


class Spike(LoadTestShape):
    def tick(self) -> tuple[int, float] | None:
        elapsed = self.get_run_time()
        for until, users in STAGES:
            if elapsed < until:
                return users, float(8 * BASE)  # the whole spike arrives within a second
        return None
