"""The ray engine's pure parts: a replica spec as Ray actor options, why a pending replica has no
node, the checks before joining a cluster, and where `get -o wide` / `describe` show replicas."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from serving.cli._output import describe_resource, rows_for
from serving.engines._ray_placement import actor_options, demand_of, placement_problem
from serving.engines.base import ReplicaSpec
from serving.raycluster import RayUnavailable, check_address, check_version
from serving.spec import load_manifests
from serving.spec.isvc import Component


def node(address: str, cpus: float, gpus: float = 0, alive: bool = True, **labels: str) -> dict:
    resources = {"CPU": cpus, "memory": 8 * 2**30, **({"GPU": gpus} if gpus else {})}
    return {"Alive": alive, "NodeManagerAddress": address, "Resources": resources, "Labels": labels}


def test_resources_map_to_ray_actor_options() -> None:
    spec = ReplicaSpec(
        "m-00001", gpus=1, cpus=2.5, memory_bytes=2**30, node_selector=(("servegate.io/node", "a"),)
    )
    options = actor_options(spec, "owner:m-00001-abcde:1")
    assert options["num_gpus"] == 1 and options["num_cpus"] == 2.5 and options["memory"] == 2**30
    assert options["label_selector"] == {"servegate.io/node": "a"}
    assert options["lifetime"] == "detached" and options["namespace"] == "servegate"
    assert options["max_restarts"] == 0 and options["scheduling_strategy"] == "SPREAD"
    # No limits: one CPU, as a Ray Serve replica asks, and nothing else.
    plain = actor_options(ReplicaSpec("m-00001"), "n")
    assert (plain["num_cpus"], plain["num_gpus"]) == (1.0, 0)
    assert "memory" not in plain and "label_selector" not in plain
    assert demand_of(ReplicaSpec("m", gpus=2)) == {"CPU": 1.0, "GPU": 2.0}


def test_a_replica_no_node_can_hold_is_told_apart_from_one_waiting_for_room() -> None:
    nodes = [node("10.0.0.1", 2), node("10.0.0.2", 2, gpus=1, **{"servegate.io/node": "a"})]
    two_gpus = placement_problem(ReplicaSpec("m", gpus=2), nodes)
    assert two_gpus.startswith("no node of the Ray cluster can hold a replica: it needs 1 CPU, 2 GPU")
    assert "2 nodes" in two_gpus and "10.0.0.2: 2 CPU, 1 GPU, servegate.io/node=a" in two_gpus
    assert "starts by itself when a node that fits joins" in two_gpus
    label = placement_problem(ReplicaSpec("m", node_selector=(("servegate.io/node", "z"),)), nodes)
    assert "label servegate.io/node=z" in label and label.startswith("no node")
    busy = placement_problem(ReplicaSpec("m", gpus=1), nodes)
    assert busy.startswith("waiting for a Ray node with free resources: each replica needs 1 CPU, 1 GPU")
    # A dead node holds nothing.
    dead = placement_problem(ReplicaSpec("m", gpus=1), [node("10.0.0.2", 2, gpus=1, alive=False)])
    assert dead.startswith("no node") and "0 nodes" in dead


def test_ray_versions_too_old_are_named() -> None:
    check_version("2.60.0")
    check_version("3.0.0rc1")
    with pytest.raises(RayUnavailable, match=r"Ray 2\.9\.3 is too old: servegate needs Ray >= 2\.49"):
        check_version("2.9.3")


@pytest.mark.parametrize("address", ["nonsense", "host:", ":6379", "host:port", "127.0.0.1:70000"])
def test_a_malformed_ray_address_is_refused(address: str) -> None:
    with pytest.raises(RayUnavailable, match="bad Ray address"):
        check_address(address)


def test_an_address_that_does_not_answer_or_is_not_ray_fails_fast() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(RayUnavailable, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        check_address(f"127.0.0.1:{port}")
    with socket.socket() as listening:  # accepts, never speaks gRPC
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        with pytest.raises(RayUnavailable, match="not a Ray GCS"):
            check_address(f"127.0.0.1:{port}")


def test_node_selector_makes_a_new_revision_and_its_absence_keeps_old_ones() -> None:
    before = Component(kind="predictor", format="onnx", storage_uri="/m")
    # The hash of a component without a nodeSelector is what it was before the field existed.
    assert before.revision_key() == "3e211e4d7426"
    placed = Component(kind="predictor", format="onnx", storage_uri="/m", node_selector=(("zone", "a"),))
    assert placed.revision_key() != before.revision_key()


def test_node_selector_must_map_labels_to_strings() -> None:
    text = """
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: picky}
spec:
  predictor:
    nodeSelector: [zone-a]
    model: {modelFormat: {name: onnx}, storageUri: /m}
"""
    with pytest.raises(Exception, match="nodeSelector"):
        load_manifests(text, "picky.yaml")


def _isvc_with_replicas() -> dict:
    replicas = [
        {"id": "m-predictor-00001-aaaaa", "state": "Ready", "restarts": 0, "node": "10.0.0.1 (1a2b3c4d)",
         "url": "http://10.0.0.1:4100"},
        {"id": "m-predictor-00001-bbbbb", "state": "Pending", "restarts": 0,
         "reason": "waiting for a Ray node with free resources"},
    ]  # fmt: skip
    pool = {"desired": 2, "ready": 1, "restarts": 0, "schedulable": False, "replicas": replicas}
    predictor = {"latestCreatedRevision": "m-predictor-00001", "replicas": {"m-predictor-00001": pool}}
    return {
        "metadata": {"name": "m"},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"}}}},
        "status": {"components": {"predictor": predictor}, "conditions": []},
    }


def test_get_wide_and_describe_show_where_replicas_run() -> None:
    isvc = _isvc_with_replicas()
    headers, rows = rows_for("inferenceservices", [isvc], {}, 0.0, wide=True)
    assert headers[-2:] == ("REPLICAS", "NODES")
    assert rows[0][-2:] == ["1/2", "10.0.0.1 (1a2b3c4d)"]
    text = describe_resource("InferenceService", isvc, [], 0.0)
    assert "Replicas (predictor):" in text
    lines = {line.split()[0]: line for line in text.splitlines() if "m-predictor-00001-" in line}
    assert "10.0.0.1 (1a2b3c4d)" in lines["m-predictor-00001-aaaaa"]
    assert "http://10.0.0.1:4100" in lines["m-predictor-00001-aaaaa"]
    assert (
        "Pending" in lines["m-predictor-00001-bbbbb"] and "free resources" in lines["m-predictor-00001-bbbbb"]
    )


def test_a_cluster_that_wants_a_token_gets_this_machines_or_says_how(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from serving import raycluster

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "absent"))
    with pytest.raises(RayUnavailable, match="uses token authentication: give its token in RAY_AUTH_TOKEN"):
        raycluster._use_token("10.0.0.1:6379")
    (tmp_path / "token").write_text("secret")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    raycluster._use_token("10.0.0.1:6379")
    assert os.environ["RAY_AUTH_MODE"] == "token"
