"""Locust load test for a servegate replica (or any KServe V1 / V2 server).

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8080
    locust -f loadtests/locustfile.py --host http://127.0.0.1:8080 --headless -u 32 -r 8 -t 1m

Environment: SERVEGATE_MODEL (default "mlp"), SERVEGATE_ROWS (rows per request, default 1),
SERVEGATE_PROTOCOLS (comma-separated from v2_json, v2_binary, v1; default all three). The request
is built from the model's own metadata (`GET /v2/models/<m>`), so any numeric model works.
A gateway wants a token: SERVEGATE_TOKEN, else the admin token of `servegate up`'s state dir
(SERVEGATE_STATE_DIR, default ./.servegate), is sent as `Authorization: Bearer`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from locust import HttpUser, between, events, task
from locust.exception import StopUser

MODEL = os.environ.get("SERVEGATE_MODEL", "mlp")
ROWS = int(os.environ.get("SERVEGATE_ROWS", "1"))
PROTOCOLS = set(os.environ.get("SERVEGATE_PROTOCOLS", "v2_json,v2_binary,v1").split(","))
_NUMPY = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "INT8": np.int8, "INT16": np.int16,
          "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8, "BOOL": np.bool_}  # fmt: skip


def _token() -> str | None:
    if token := os.environ.get("SERVEGATE_TOKEN"):
        return token
    path = os.path.join(os.environ.get("SERVEGATE_STATE_DIR", ".servegate"), "admin.token")
    return open(path).read().strip() if os.path.exists(path) else None


def _concrete(shape: list[int]) -> list[int]:
    """Variable dimensions become ROWS for the first (batch) one and 1 elsewhere."""
    return [(ROWS if i == 0 else 1) if d < 0 else d for i, d in enumerate(shape)]


class Bodies:
    """Request bodies for one model, built once from its metadata."""

    def __init__(self, metadata: dict[str, Any]) -> None:
        rng = np.random.default_rng(0)
        self.arrays = {}
        for spec in metadata["inputs"]:
            if spec["datatype"] not in _NUMPY:
                raise StopUser(f"input {spec['name']} is {spec['datatype']}; this locustfile sends numbers")
            shape = _concrete(spec["shape"])
            self.arrays[spec["name"]] = (spec["datatype"], rng.random(shape).astype(_NUMPY[spec["datatype"]]))
        self.v2_json = json.dumps({"inputs": [
            {"name": name, "datatype": dt, "shape": list(a.shape), "data": a.ravel().tolist()}
            for name, (dt, a) in self.arrays.items()
        ]})  # fmt: skip
        raws = [a.tobytes() for _, a in self.arrays.values()]
        header = json.dumps({"inputs": [
            {"name": name, "datatype": dt, "shape": list(a.shape),
             "parameters": {"binary_data_size": len(raw)}}
            for (name, (dt, a)), raw in zip(self.arrays.items(), raws, strict=True)
        ], "parameters": {"binary_data_output": True}}).encode()  # fmt: skip
        self.v2_binary = header + b"".join(raws)
        self.v2_binary_header = str(len(header))
        if len(self.arrays) == 1:
            (_, array) = next(iter(self.arrays.values()))
            self.v1 = json.dumps({"instances": array.tolist()})
        else:
            self.v1 = json.dumps({"inputs": {name: a.tolist() for name, (_, a) in self.arrays.items()}})


_bodies: Bodies | None = None


@events.test_start.add_listener
def _reset(environment: Any, **kwargs: Any) -> None:
    global _bodies
    _bodies = None


class InferenceUser(HttpUser):
    wait_time = between(0, 0)

    def on_start(self) -> None:
        global _bodies
        if token := _token():
            self.client.headers["authorization"] = f"Bearer {token}"
        if _bodies is None:
            response = self.client.get(f"/v2/models/{MODEL}", name="metadata")
            if response.status_code != 200:
                raise StopUser(f"model {MODEL}: {response.status_code} {response.text}")
            _bodies = Bodies(response.json())
        self.bodies = _bodies

    @task
    def v2_json(self) -> None:
        if "v2_json" in PROTOCOLS:
            self.client.post(f"/v2/models/{MODEL}/infer", data=self.bodies.v2_json, name="v2 json",
                             headers={"content-type": "application/json"})  # fmt: skip

    @task
    def v2_binary(self) -> None:
        if "v2_binary" in PROTOCOLS:
            self.client.post(
                f"/v2/models/{MODEL}/infer", data=self.bodies.v2_binary, name="v2 binary",
                headers={"content-type": "application/octet-stream",
                         "inference-header-content-length": self.bodies.v2_binary_header},
            )  # fmt: skip

    @task
    def v1(self) -> None:
        if "v1" in PROTOCOLS:
            self.client.post(f"/v1/models/{MODEL}:predict", data=self.bodies.v1, name="v1",
                             headers={"content-type": "application/json"})  # fmt: skip
