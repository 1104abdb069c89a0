"""Secrets kept in files: the admin and metrics tokens a gateway writes into its state dir, and the
token files clients and replicas read. No heavy imports: every CLI call on the gateway's machine
reads the admin token through here."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ADMIN_TOKEN_FILE", "INTERNAL_KEY_FILE", "METRICS_TOKEN_FILE", "read_token_file", "write_secret"]

ADMIN_TOKEN_FILE = "admin.token"
#: the token Prometheus scrapes /metrics with (`servegate prometheus-config` points at it).
METRICS_TOKEN_FILE = "metrics.token"
#: the secret the gateway's internal tokens derive from, kept only by the ray engine (its replicas
#: outlive the gateway); never sent anywhere.
INTERNAL_KEY_FILE = "internal.key"


def read_token_file(path: Path) -> str:
    """The token kept in a file (its first line), refused when others may read it."""
    mode = path.stat().st_mode
    if mode & 0o077:
        raise PermissionError(f"{path} is readable by others (mode {mode & 0o777:o}): chmod 600 {path}")
    token = path.read_text().strip().splitlines()
    if not token or not token[0].strip():
        raise ValueError(f"{path} holds no token")
    return token[0].strip()


def write_secret(path: Path, secret: str) -> None:
    """Write `secret` to `path`, readable by its owner only (0600) from the first byte on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    os.replace(tmp, path)
