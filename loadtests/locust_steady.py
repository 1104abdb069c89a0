"""Steady load through the gateway: a ramp to SERVEGATE_USERS users (default 16), held for
SERVEGATE_SECONDS seconds (default 120), then stop.

    locust -f loadtests/locust_steady.py --host http://127.0.0.1:8080 --headless

The users are `InferenceUser` from locustfile.py (SERVEGATE_MODEL, SERVEGATE_PROTOCOLS apply).
"""

from __future__ import annotations

import os

from locust import LoadTestShape
from locustfile import InferenceUser  # locust puts this folder on sys.path

__all__ = ["InferenceUser", "Steady"]

USERS = int(os.environ.get("SERVEGATE_USERS", "16"))
SECONDS = int(os.environ.get("SERVEGATE_SECONDS", "120"))


class Steady(LoadTestShape):
    def tick(self) -> tuple[int, float] | None:
        if self.get_run_time() >= SECONDS:
            return None
        return USERS, max(1.0, USERS / 5)
