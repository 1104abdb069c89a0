"""A kubelet for the fake Kubernetes API (tests/kube_api) that runs each pod's servegate container as
a real local process on the pod's own loopback address, so a gateway with `--engine kubernetes`
routes real requests to real replicas.

It does what a kubelet does with what the engine renders: the container's args (its `--host` made
the pod's IP), its env (values, and secretKeyRef read from the fake's Secrets), the readiness probe
(`/v2/health/ready` polled until it answers 200, then the pod is Ready), and on deletion SIGTERM,
the drain, then SIGKILL. Paths of the image (the cache dir) are mapped into a temporary folder.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx

from tests.kube_api import KubeApi, PodRuntime

__all__ = ["ProcessKubelet"]

_IMAGE_CACHE = "/var/cache/servegate"


class ProcessKubelet:
    """Call it with a pod (the fake does); `attach` the fake's handle before the first pod starts."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.api: KubeApi | None = None
        self.started: list[str] = []

    def attach(self, api: KubeApi) -> None:
        self.api = api

    def __call__(self, pod: dict[str, Any]) -> PodRuntime:
        assert self.api is not None, "attach the fake's handle first"
        meta, ip = pod["metadata"], pod["status"]["podIP"]
        container = pod["spec"]["containers"][0]
        args = list(container["args"])
        args[args.index("--host") + 1] = ip
        folder = self.root / meta["name"]
        folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self._env(meta["namespace"], container.get("env", []), folder)}
        log = (folder / "log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "serving", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.started.append(meta["name"])
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
        stopped = threading.Event()
        probe = threading.Thread(
            target=self._probe,
            args=(meta["namespace"], meta["name"], f"http://{ip}:{port}", stopped),
            daemon=True,
        )
        probe.start()

        def stop() -> None:
            stopped.set()
            grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(grace)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()

        return PodRuntime(ready_after=None, stop=stop)

    def _env(self, namespace: str, entries: list[dict[str, Any]], folder: Path) -> dict[str, str]:
        assert self.api is not None
        env = {}
        for entry in entries:
            if "value" in entry:
                env[entry["name"]] = str(entry["value"]).replace(_IMAGE_CACHE, str(folder / "cache"))
                continue
            ref = entry["valueFrom"]["secretKeyRef"]
            secret = self.api.get("v1", "secrets", namespace, ref["name"]) or {}
            data = (secret.get("data") or {}).get(ref["key"])
            if data is not None:
                env[entry["name"]] = base64.b64decode(data).decode()
        return env

    def _probe(self, namespace: str, name: str, url: str, stopped: threading.Event) -> None:
        """The readiness probe: Ready once /v2/health/ready answers 200, not Ready when it stops."""
        assert self.api is not None
        ready = False
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while not stopped.wait(0.2):
                try:
                    now = client.get(f"{url}/v2/health/ready").status_code == 200
                except httpx.HTTPError:
                    now = False
                if now != ready and not stopped.is_set():
                    try:
                        self.api.set_pod_ready(namespace, name, now)
                    except Exception:  # the pod was deleted meanwhile
                        return
                    ready = now
