"""Joining a Ray cluster, the one way every part of servegate does it (the ray engine, the ray
pipeline executor, data-parallel training on Ray), and what they ask of its nodes.

`connect` checks what `ray.init` would otherwise retry for minutes: a malformed address, one that
does not answer, one where no Ray GCS answers gRPC, and a Ray release too old for what servegate
asks of it (node labels for `nodeSelector`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "MIN_RAY",
    "NAMESPACE",
    "RayUnavailable",
    "check_address",
    "check_version",
    "connect",
    "demand",
    "has_labels",
    "node_fits",
    "resource_options",
]

#: the oldest Ray the engine works with: actor `label_selector` (nodeSelector -> node labels).
MIN_RAY = (2, 49)
#: the Ray namespace servegate's named actors live in.
NAMESPACE = "servegate"
_PROBE_TIMEOUT_S = 5.0


class RayUnavailable(Exception):
    """Ray cannot be used: not installed, too old, or the cluster cannot be reached; nothing ran."""


def check_version(version: str) -> None:
    """Refuse a Ray release older than `MIN_RAY`, naming both."""
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    if tuple(parts) < MIN_RAY:
        need = ".".join(map(str, MIN_RAY))
        raise RayUnavailable(
            f"Ray {version} is too old: servegate needs Ray >= {need} (node labels for nodeSelector); "
            f"pip install 'ray[serve]>={need}'"
        )


def check_address(address: str) -> bool:
    """Fail fast on an address `ray.init` would retry for ever: malformed, not answering, or not a
    Ray cluster (no Ray GCS answers gRPC there). Returns whether the cluster wants a token (Ray's
    token authentication). `auto`, `local` and `ray://` (Ray Client) addresses are left to Ray."""
    if address in ("auto", "local"):
        return False
    host, _, port = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RayUnavailable(f"bad Ray address {address!r}: use HOST:PORT (the head's GCS port)")
    try:
        socket.create_connection((host, int(port)), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise RayUnavailable(f"cannot reach the Ray cluster at {address}: {exc}") from None
    if address.startswith("ray://"):
        return False
    answer = _gcs_answer(host, int(port))
    if answer in ("OK", "UNAUTHENTICATED"):
        return answer == "UNAUTHENTICATED"
    raise RayUnavailable(
        f"no Ray cluster at {address}: something listens there but it is not a Ray GCS "
        "(give the head's GCS address, HOST:6379 by default)"
    )


def _gcs_answer(host: str, port: int) -> str:
    """How a server at host:port answers the GCS's cluster-id call: OK (a Ray GCS), UNAUTHENTICATED
    (a Ray GCS that wants a token), or what else it said."""
    import grpc

    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    with grpc.insecure_channel(target) as channel:
        probe = channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId")
        try:
            probe(b"", timeout=_PROBE_TIMEOUT_S)
        except grpc.RpcError as exc:
            return exc.code().name
        return "OK"


def _use_token(address: str) -> None:
    """The cluster wants Ray's token authentication: use the token this machine has (as `ray start`
    does: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), or say how to give one."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        return
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if not os.environ.get("RAY_AUTH_TOKEN") and not path.is_file():
        raise RayUnavailable(
            f"the Ray cluster at {address} uses token authentication: give its token in RAY_AUTH_TOKEN "
            "(or a file in RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token)"
        )
    os.environ["RAY_AUTH_MODE"] = "token"


def connect(address: str | None, namespace: str | None = NAMESPACE) -> bool:
    """Join the Ray cluster at `address` (None: start a local one, as `ray.init()` does) unless this
    process already has; servegate's code reaches the cluster's workers through PYTHONPATH. Returns
    whether a local cluster was started here (the caller shuts it down). Raises RayUnavailable."""
    try:
        import ray
    except ImportError:
        raise RayUnavailable("Ray is not installed: pip install 'servegate[ray]'") from None
    check_version(ray.__version__)
    if address and check_address(address):
        _use_token(address)
    if ray.is_initialized():
        return False
    root = str(Path(__file__).resolve().parents[1])
    pythonpath = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    # Ray runs workers at nice 15; a replica (it inherits it) would lose every CPU contest with the
    # gateway and the load on its node.
    env = {"PYTHONPATH": pythonpath, "RAY_worker_niceness": "0"}
    try:
        ray.init(
            address=address,
            namespace=namespace,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            runtime_env={"env_vars": env},
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise RayUnavailable(f"cannot start {where}: {exc}") from None
    return address is None


# -- what a replica or a step asks of a node --------------------------------------------------------


def demand(cpus: float, gpus: float = 0, memory_bytes: float | None = None) -> dict[str, float]:
    """Ray resources: CPU, GPU (when any), memory in bytes (when limited)."""
    asked = {"CPU": float(cpus)}
    if gpus:
        asked["GPU"] = float(gpus)
    if memory_bytes:
        asked["memory"] = float(memory_bytes)
    return asked


def resource_options(asked: Mapping[str, float], selector: Mapping[str, str]) -> dict[str, Any]:
    """`demand` and a node label selector as Ray task or actor options."""
    options: dict[str, Any] = {"num_cpus": asked["CPU"]}
    if "GPU" in asked:
        options["num_gpus"] = asked["GPU"]
    if "memory" in asked:
        options["memory"] = asked["memory"]
    if selector:
        options["label_selector"] = dict(selector)
    return options


def has_labels(node: Mapping[str, Any], selector: Mapping[str, str]) -> bool:
    """Whether a node of `ray.nodes()` carries every label of `selector`."""
    labels = node.get("Labels") or {}
    return all(labels.get(key) == value for key, value in selector.items())


def node_fits(node: Mapping[str, Any], asked: Mapping[str, float], selector: Mapping[str, str]) -> bool:
    """Whether a node of `ray.nodes()` could ever hold `asked` (its total resources) and has the labels."""
    resources = node.get("Resources") or {}
    return has_labels(node, selector) and all(resources.get(k, 0.0) >= v for k, v in asked.items())
