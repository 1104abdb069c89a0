"""A standalone replica's repository load/unload API is off unless --model-control explicit, as
Triton's is: a request must not make it read and run whatever a URI names."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from predictors.server.replica import Replica, ReplicaOptions
from predictors.server.rest import build_app


@pytest.mark.parametrize("action", ["load", "unload"])
def test_load_and_unload_are_refused_without_model_control(action: str) -> None:
    replica = Replica(ReplicaOptions(grpc_port=None), [])
    app = build_app(replica.dataplane, replica.exposition, 1 << 20)
    with TestClient(app) as client:
        body = {"parameters": {"storage_uri": "/etc/passwd", "model_format": "python"}}
        response = client.post(f"/v2/repository/models/evil/{action}", json=body)
    assert response.status_code == 400
    assert "--model-control explicit" in response.json()["error"]
    assert "evil" not in replica.repository.names
