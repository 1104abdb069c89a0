"""`servegate operator` put together: check the cluster once, serve health, campaign for the Lease,
and sync while leading (`serving.operator.sync.Syncer`), until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from serving.client import Client, ServegateError
from serving.engines.kubernetes.api import KubernetesUnavailable
from serving.operator.health import HealthServer
from serving.operator.kube import KINDS, OperatorApi
from serving.operator.kubelease import LEASE_NAME, LeaseElector
from serving.operator.sync import Syncer

__all__ = ["OperatorError", "OperatorSettings", "preflight", "run_operator"]

log = logging.getLogger(__name__)

#: /healthz fails when the event loop has not run for this long (it is stuck).
_STALL_S = 30.0


class OperatorError(Exception):
    """The operator cannot start; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class OperatorSettings:
    """What `servegate operator` was told."""

    gateway_url: str
    #: the namespace watched (None: every namespace).
    namespace: str | None
    #: where the Lease lives, and who this process is in it.
    lease_namespace: str
    holder: str
    kubeconfig: Path | None = None
    token_file: Path | None = None
    health_host: str = "127.0.0.1"
    health_port: int = 8082
    #: seconds between two status syncs (and retries of refused specs).
    resync_s: float = 5.0
    #: the Lease's leaseDurationSeconds; it is renewed every third of it.
    lease_s: int = 15


def preflight(api: OperatorApi, namespace: str | None, lease_namespace: str) -> None:
    """List each kind once and read the Lease: KubernetesUnavailable, naming the permission or the
    missing CRD, rather than a loop that retries what can never work."""
    for kind in KINDS:
        try:
            api.list_objects(kind, namespace, limit=1)
        except KubernetesUnavailable as exc:
            if "404" in str(exc):
                raise KubernetesUnavailable(
                    f"{exc} (is the {kind.kind} CRD installed? `servegate install` prints it)"
                ) from None
            raise
    api.read_lease(lease_namespace, LEASE_NAME)


def run_operator(settings: OperatorSettings) -> None:
    """Run until SIGTERM or SIGINT. OperatorError when the cluster cannot be reached, refuses the
    operator's credentials or a permission, or the health port cannot be had."""
    try:
        api = OperatorApi.from_config(str(settings.kubeconfig) if settings.kubeconfig else None)
        preflight(api, settings.namespace, settings.lease_namespace)
    except KubernetesUnavailable as exc:
        raise OperatorError(str(exc)) from None
    try:
        gateway = Client(settings.gateway_url, token_file=settings.token_file)
    except ServegateError as exc:
        api.close()
        raise OperatorError(f"--token-file: {exc.message}") from None
    try:
        asyncio.run(_serve(settings, api, gateway))
    finally:
        gateway.close()
        api.close()


class _Operator:
    """Starts a Syncer when this process leads, stops it when it no longer does; says how it is."""

    def __init__(self, settings: OperatorSettings, api: OperatorApi, gateway: Client) -> None:
        self.settings = settings
        self.api = api
        self.gateway = gateway
        self.elector = LeaseElector(
            api.sibling(),
            settings.lease_namespace,
            holder=settings.holder,
            duration_s=settings.lease_s,
            on_started_leading=self._start,
            on_stopped_leading=self.stop_syncing,
        )
        self.beat = time.monotonic()
        self._syncer: Syncer | None = None
        self._task: asyncio.Task[None] | None = None

    async def _start(self) -> None:
        s = self.settings
        self._syncer = Syncer(self.api, self.gateway, s.namespace, s.resync_s)
        self._task = asyncio.create_task(self._syncer.run(), name="sync")

    async def stop_syncing(self) -> None:
        task, self._task, self._syncer = self._task, None, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def live(self) -> tuple[bool, str]:
        stalled = time.monotonic() - self.beat
        if stalled > _STALL_S:
            return False, f"the event loop has not run for {stalled:.0f} s"
        task = self._task
        if task is not None and task.done():
            return False, "the sync loop ended"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if self._syncer is not None:
            return (True, "leading, synced") if self._syncer.synced else (False, "leading, syncing")
        if self.elector.reached:
            return True, "waiting for the lease"
        return False, "the Kubernetes API has not answered the lease's read yet"

    async def heartbeat(self) -> None:
        while True:
            self.beat = time.monotonic()
            await asyncio.sleep(1.0)


async def _serve(settings: OperatorSettings, api: OperatorApi, gateway: Client) -> None:
    operator = _Operator(settings, api, gateway)
    try:
        health = HealthServer(settings.health_host, settings.health_port, operator.live, operator.ready)
    except OSError as exc:
        where = f"{settings.health_host}:{settings.health_port}"
        raise OperatorError(f"--health-port: cannot listen on {where}: {exc.strerror or exc}") from None
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    beating = asyncio.create_task(operator.heartbeat())
    campaign = asyncio.create_task(operator.elector.run(), name="lease")
    where = f"namespace {settings.namespace}" if settings.namespace else "every namespace"
    log.info(
        "servegate operator %s: watching %s, gateway %s, health on %s:%d",
        settings.holder,
        where,
        gateway.url,
        settings.health_host,
        health.port,
    )
    try:
        await stopping.wait()
        log.info("stopping")
    finally:
        await operator.elector.close()
        await operator.stop_syncing()
        campaign.cancel()
        beating.cancel()
        await asyncio.gather(campaign, beating, return_exceptions=True)
        health.close()
