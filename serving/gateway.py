"""`servegate up`: the gateway (data plane, control API, /metrics), the controller and the process
engine in one foreground process, with state in SQLite under the state dir.

Start: restore every stored resource, apply the `-f` manifests, then listen. Stop (SIGTERM/SIGINT):
stop accepting, finish in-flight requests, then drain and stop every replica this process started.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry

from autoscaler.config import GlobalScalingDefaults
from autoscaler.metrics import AutoscalerMetrics
from autoscaler.runner import Autoscaler
from autoscaler.sources.promql import PromQLSource
from predictors.server.replica import bind_socket, http_server
from router.core import Router
from router.front.grpc import build_gateway_grpc_server
from router.front.rest import build_gateway_app
from router.metrics import GatewayMetrics, PoolGauge
from serving.api import api_routes
from serving.controller.controller import Controller
from serving.engines.process import ProcessEngine
from serving.monitoring import ReplicaTarget, targets_path, write_targets
from serving.registry.api import registry_routes
from serving.registry.registry import Registry, RegistryConfig
from serving.spec import load_manifests, read_manifest_paths
from serving.store import Store

__all__ = ["Gateway", "GatewayOptions"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewayOptions:
    """host / http_port / grpc_port: where the gateway listens (0 picks a free port).
    state_dir: SQLite state, replica logs and scratch space. manifests: files or folders applied at start.
    drain_timeout_s: how long stopping waits for in-flight requests (gateway and each replica), seconds.
    """

    host: str = "0.0.0.0"
    http_port: int = 8080
    grpc_port: int = 8081
    state_dir: Path = Path(".servegate")
    manifests: tuple[str, ...] = ()
    max_body_bytes: int = 256 * 1024 * 1024
    drain_timeout_s: float = 30.0
    access_log: bool = False
    engine_options: dict[str, float] = field(default_factory=dict)
    #: a Prometheus server's base URL, for custom (PromQL) autoscaling metrics; None: scraping only.
    prometheus_url: str | None = None
    #: cluster-wide autoscaling defaults (each service may override them).
    scaling: GlobalScalingDefaults = field(default_factory=GlobalScalingDefaults)
    #: seconds between two autoscaling decisions.
    autoscale_tick_s: float = 2.0
    #: seconds a request waits for the first replica of a revision at zero (then 503).
    activation_timeout_s: float = 60.0
    #: the model registry behind `registry://` URIs and /api/registry; None: the state dir's.
    registry: RegistryConfig | None = None
    #: seconds between two looks at the registry for moved aliases.
    registry_poll_s: float = 1.0


class Gateway:
    def __init__(self, options: GatewayOptions) -> None:
        self.options = options
        self.registry = CollectorRegistry()
        self.router = Router(GatewayMetrics(self.registry), options.max_body_bytes)
        self.store = Store(options.state_dir / "state.db")
        self.engine = ProcessEngine(
            options.state_dir, drain_timeout_s=options.drain_timeout_s, **options.engine_options
        )
        self.http_port: int | None = None
        self.model_registry: Registry | None = None
        self.grpc_port: int | None = None
        self.controller: Controller | None = None
        self.started = asyncio.Event()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        opts = self.options
        # Manifests given with -f are checked before anything starts: a bad file stops here.
        texts = read_manifest_paths(list(opts.manifests)) if opts.manifests else []
        resources = [r for source, text in texts for r in load_manifests(text, source)]

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)

        sock = bind_socket(opts.host, opts.http_port)
        self.http_port = sock.getsockname()[1]
        local = "127.0.0.1" if opts.host in ("0.0.0.0", "::") else opts.host
        gateway_url = f"http://{local}:{self.http_port}"
        controller = self.controller = Controller(self.store, self.engine, self.router, gateway_url)
        controller.registry = model_registry = self.model_registry = Registry(
            opts.registry or RegistryConfig.from_env(opts.state_dir)
        )
        controller.registry_poll_s = opts.registry_poll_s
        controller.scaling_defaults = opts.scaling
        controller.activation_timeout_s = opts.activation_timeout_s
        autoscaler = controller.autoscaler = Autoscaler(
            controller.scale_targets,
            controller.resize,
            gateway_url,
            promql=PromQLSource(opts.prometheus_url) if opts.prometheus_url else None,
            metrics=AutoscalerMetrics(self.registry),
            tick_s=opts.autoscale_tick_s,
        )
        self.router.metrics.watch_pools(self._pool_gauges)
        routes = api_routes(controller) + registry_routes(model_registry)
        app = build_gateway_app(self.router, self.registry, opts.max_body_bytes, routes)
        http = http_server(app, opts.access_log, opts.drain_timeout_s)
        grpc_server = build_gateway_grpc_server(self.router, opts.max_body_bytes)
        try:
            self.grpc_port = grpc_server.add_insecure_port(f"{opts.host}:{opts.grpc_port}")
        except RuntimeError as exc:
            sock.close()
            raise OSError(f"cannot listen on {opts.host}:{opts.grpc_port} for gRPC: {exc}") from None

        # Prometheus (`servegate prometheus-config`) finds the replicas through this file.
        self.engine.watch(lambda _revision: self._write_targets(f"{local}:{self.http_port}"))
        self._write_targets(f"{local}:{self.http_port}")
        await self.engine.start()
        await controller.start()
        if resources:
            await controller.apply(resources)
        await grpc_server.start()
        http_task = asyncio.create_task(http.serve(sockets=[sock]), name="gateway-http")
        log.info(
            "gateway listening: HTTP %s:%s (control API /api/v1, /metrics), gRPC %s:%s, state in %s",
            opts.host,
            self.http_port,
            opts.host,
            self.grpc_port,
            opts.state_dir,
        )
        # Everything allocated so far lives as long as the process: keep it out of the collector's
        # full passes, which otherwise pause the event loop long enough to show in p99 latency.
        gc.freeze()
        autoscaling = asyncio.create_task(autoscaler.run(), name="autoscaler")
        self.started.set()
        stop_task = asyncio.create_task(self._stop.wait())
        await asyncio.wait({stop_task, http_task}, return_when=asyncio.FIRST_COMPLETED)

        log.info("stopping: draining in-flight requests, then every replica")
        http.should_exit = True
        await asyncio.gather(http_task, grpc_server.stop(grace=opts.drain_timeout_s), return_exceptions=True)
        autoscaling.cancel()
        await asyncio.gather(autoscaling, return_exceptions=True)
        await autoscaler.aclose()
        await controller.close()
        await self.engine.close()
        await self.router.close()
        self.store.close()
        model_registry.close()
        stop_task.cancel()
        log.info("gateway stopped")

    def _write_targets(self, gateway: str) -> None:
        controller = self.controller
        owners = controller.revision_owners() if controller else {}
        replicas = [
            ReplicaTarget(service, revision, replica.id, replica.http_url)
            for revision, service in owners.items()
            if (pool := self.engine.status(revision)) is not None
            for replica in pool.replicas
            if replica.http_url
        ]
        try:
            write_targets(targets_path(self.options.state_dir), gateway, replicas)
        except OSError as exc:  # monitoring must never take the gateway down
            log.warning("cannot write Prometheus targets: %s", exc)

    def _pool_gauges(self) -> list[PoolGauge]:
        controller = self.controller
        if controller is None:
            return []
        owners, desired = controller.revision_owners(), controller.desired_replicas()
        gauges = []
        for rev, pool in controller.pools.items():
            status = self.engine.status(rev)
            placeable = status.schedulable if status is not None else True
            gauges.append(
                (
                    owners.get(rev, ""),
                    rev,
                    pool.queued,
                    pool.outstanding,
                    pool.size,
                    desired.get(rev, 0),
                    placeable,
                )
            )
        return gauges
