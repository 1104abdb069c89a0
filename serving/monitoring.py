"""Prometheus for servegate: the targets file `servegate up` keeps, and a configuration that reads it.

The gateway and every replica serve `/metrics`. Replicas come and go on free ports, so `servegate
up` rewrites `<state-dir>/prometheus/targets.json` (Prometheus's file_sd format) whenever they
change, and a Prometheus started with `scrape_config` (what `servegate prometheus-config` prints)
follows without a restart. Both read `<state-dir>/metrics.token`,
the token `/metrics` needs. Every replica series carries `service`, `revision`, `replica` and
`namespace` labels, which the autoscaler's PromQL queries select on.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from serving.auth.files import METRICS_TOKEN_FILE

__all__ = [
    "GATEWAY_JOB",
    "REPLICA_JOB",
    "ReplicaTarget",
    "scrape_config",
    "target_groups",
    "targets_path",
    "write_targets",
]

GATEWAY_JOB = "servegate-gateway"
REPLICA_JOB = "servegate-replica"

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class ReplicaTarget(NamedTuple):
    """One replica to scrape, and the labels its series get.

    address: `host:port` of its REST server, or its base URL (`ReplicaInfo.http_url`).
    """

    service: str
    revision: str
    replica: str
    address: str
    namespace: str = "default"


def targets_path(state_dir: Path) -> Path:
    """Where `servegate up` keeps the targets file of the state dir `state_dir`."""
    return state_dir / "prometheus" / "targets.json"


def target_groups(gateway: str, replicas: Iterable[ReplicaTarget]) -> list[dict[str, object]]:
    """The file_sd groups: the gateway (`host:port` or URL), then one group per replica."""
    groups: list[dict[str, object]] = [{"targets": [_host_port(gateway)], "labels": {"job": GATEWAY_JOB}}]
    for target in replicas:
        target = ReplicaTarget(*target)
        labels = {
            "job": REPLICA_JOB,
            "namespace": target.namespace,
            "service": target.service,
            "revision": target.revision,
            "replica": target.replica,
        }
        groups.append({"targets": [_host_port(target.address)], "labels": labels})
    return groups


def write_targets(path: Path, gateway: str, replicas: Iterable[ReplicaTarget]) -> None:
    """Replace the targets file at `path` in one step: Prometheus never reads half a file."""
    text = json.dumps(target_groups(gateway, replicas), indent=2) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
        # mkstemp makes the file 0600; a Prometheus running as its own user must read it.
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def scrape_config(
    state_dir: Path, gateway: str, scrape_interval_s: float = 5.0, ca_cert: Path | None = None
) -> str:
    """A complete prometheus.yml scraping the gateway at `gateway` and the replicas of `state_dir`.

    scrape_interval_s: seconds between two scrapes of one target. An `https://` gateway (one
    serving TLS) is scraped over https, its certificate checked against `ca_cert` when given (else
    Prometheus's system roots); replicas serve plain HTTP on loopback.
    The targets file is named by its absolute path, since Prometheus reads a relative one from the
    folder of the configuration file.
    """
    interval = _duration(scrape_interval_s)
    targets = json.dumps(str(targets_path(state_dir.absolute())))
    # /metrics needs the gateway's metrics token (read again at every scrape, so a restarted
    # gateway's new token is picked up).
    credentials = json.dumps(str(state_dir.absolute() / METRICS_TOKEN_FILE))
    # JSON strings are YAML strings, so every value a user gave is quoted safely.
    return f"""\
# Prometheus configuration for servegate (from `servegate prometheus-config`).
# Run it with: prometheus --config.file THIS_FILE
global:
  scrape_interval: {interval}
  evaluation_interval: {interval}

scrape_configs:
  - job_name: {GATEWAY_JOB}
    authorization:
      credentials_file: {credentials}{_tls_lines(gateway, ca_cert)}
    static_configs:
      - targets: [{json.dumps(_host_port(gateway))}]

  # The replicas, from the targets file `servegate up` rewrites whenever they change; Prometheus
  # sees each change at once (inotify), or after refresh_interval at the latest.
  - job_name: {REPLICA_JOB}
    authorization:
      credentials_file: {credentials}
    file_sd_configs:
      - files: [{targets}]
        refresh_interval: {interval}
    relabel_configs:
      # The file lists the gateway too (for a Prometheus that reads only the file); the job above
      # scrapes it already.
      - source_labels: [job]
        regex: {REPLICA_JOB}
        action: keep
"""


def _tls_lines(gateway: str, ca_cert: Path | None) -> str:
    """The scheme (and CA) of a gateway given as an https:// URL, as lines of its scrape job."""
    if not gateway.lower().startswith("https://"):
        return ""
    lines = "\n    scheme: https"
    if ca_cert is not None:
        lines += f"\n    tls_config:\n      ca_file: {json.dumps(str(ca_cert.absolute()))}"
    return lines


def _host_port(address: str) -> str:
    """`host:port` from `host:port` or a URL; a wildcard bind address becomes loopback."""
    parts = urlsplit(address if "//" in address else f"//{address}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        raise ValueError(f"{address!r} is not host:port or a URL with a port")
    host = parts.hostname or ""
    host = _WILDCARDS.get(host, host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _duration(seconds: float) -> str:
    """A Prometheus duration: whole seconds as `5s`, anything finer in milliseconds."""
    milliseconds = round(seconds * 1000)
    if milliseconds <= 0:
        raise ValueError(f"a scrape interval must be at least 1ms, not {seconds}s")
    return f"{milliseconds // 1000}s" if milliseconds % 1000 == 0 else f"{milliseconds}ms"
