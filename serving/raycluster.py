"""Joining a Ray cluster, the one way every part of servegate does it (the ray engine, the ray
pipeline executor, data-parallel training on Ray).

`connect` checks what `ray.init` would otherwise retry for minutes: a malformed address, one that
does not answer, one where no Ray GCS answers gRPC, and a Ray release too old for what servegate
asks of it (node labels for `nodeSelector`).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

__all__ = ["MIN_RAY", "NAMESPACE", "RayUnavailable", "check_address", "check_version", "connect"]

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


def check_address(address: str) -> None:
    """Fail fast on an address `ray.init` would retry for ever: malformed, not answering, or not a
    Ray cluster (no gRPC server there). `auto` and `local` are left to Ray."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RayUnavailable(f"bad Ray address {address!r}: use HOST:PORT (the head's GCS port)")
    try:
        socket.create_connection((host, int(port)), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise RayUnavailable(f"cannot reach the Ray cluster at {address}: {exc}") from None
    if not address.startswith("ray://") and not _speaks_grpc(host, int(port)):
        raise RayUnavailable(
            f"no Ray cluster at {address}: something listens there but it is not a Ray GCS "
            "(give the head's GCS address, HOST:6379 by default)"
        )


def _speaks_grpc(host: str, port: int) -> bool:
    """Whether a gRPC server answers at host:port (any status counts: only a gRPC server sends one)."""
    import grpc

    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    with grpc.insecure_channel(target) as channel:
        probe = channel.unary_unary("/grpc.health.v1.Health/Check")
        try:
            probe(b"", timeout=_PROBE_TIMEOUT_S)
        except grpc.RpcError as exc:
            return exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        return True


def connect(address: str | None, namespace: str | None = NAMESPACE) -> bool:
    """Join the Ray cluster at `address` (None: start a local one, as `ray.init()` does) unless this
    process already has; servegate's code reaches the cluster's workers through PYTHONPATH. Returns
    whether a local cluster was started here (the caller shuts it down). Raises RayUnavailable."""
    try:
        import ray
    except ImportError:
        raise RayUnavailable("Ray is not installed: pip install 'servegate[ray]'") from None
    check_version(ray.__version__)
    if address:
        check_address(address)
    if ray.is_initialized():
        return False
    root = str(Path(__file__).resolve().parents[1])
    pythonpath = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    try:
        ray.init(
            address=address,
            namespace=namespace,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise RayUnavailable(f"cannot start {where}: {exc}") from None
    return address is None
