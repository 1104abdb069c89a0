"""`servegate up`: the gateway (data plane, control API, /metrics), the controller and an engine
(local processes, or a Ray cluster) in one foreground process, with state in SQLite under the state dir.

Start: restore every stored resource, apply the `-f` manifests, then listen. Stop (SIGTERM/SIGINT):
stop accepting, finish in-flight requests, then drain and stop every replica this process started
(the ray engine leaves its replicas serving for the next start to re-attach to).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.routing import BaseRoute

from autoscaler.config import GlobalScalingDefaults
from autoscaler.metrics import AutoscalerMetrics
from autoscaler.runner import Autoscaler
from autoscaler.sources.promql import PromQLSource
from autoscaler.sources.scrape import ScrapeSource
from predictors.server.replica import bind_socket, http_server
from predictors.trust import TrustPolicy
from router.core import Router
from router.front.grpc import build_gateway_grpc_server
from router.front.rest import build_gateway_app
from router.metrics import GatewayMetrics, PoolGauge
from serving.api import api_routes, trust_problems
from serving.auth import Guard
from serving.auth.api import token_routes
from serving.auth.files import ADMIN_TOKEN_FILE, INTERNAL_KEY_FILE, METRICS_TOKEN_FILE, write_secret
from serving.auth.internal import GatewayTokens, InternalCredentials
from serving.auth.listen import exposure_warning, is_loopback_host
from serving.auth.sessions import Sessions
from serving.auth.storage import StoragePolicy
from serving.auth.storage_fields import storage_problems
from serving.auth.tls import TlsFiles, add_port
from serving.auth.tokens import TokenStore
from serving.controller.controller import Controller
from serving.controller.rollouts import RolloutMetrics, Rollouts
from serving.dashboard.collectors import PipelineRunsCollector, RegistryCollector
from serving.dashboard.history import MetricHistory
from serving.dashboard.routes import Dashboard
from serving.engines.base import Engine
from serving.engines.process import ProcessEngine
from serving.leader import LeaderElector
from serving.leader import connect as connect_lease
from serving.monitoring import ReplicaTarget, targets_path, write_targets
from serving.pipelines.api import StoreOpener, pipeline_routes
from serving.registry.api import registry_routes
from serving.registry.registry import Registry, RegistryConfig
from serving.spec import ManifestError, load_manifests, read_manifest_paths
from serving.store import Store, default_url

__all__ = ["Gateway", "GatewayOptions", "gateway_routes"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewayOptions:
    """host / http_port / grpc_port: where the gateway listens (0 picks a free port).
    state_dir: SQLite state (unless state_url), replica logs and scratch space. manifests: files or
    folders applied at start.
    drain_timeout_s: how long stopping waits for in-flight requests (gateway and each replica), seconds.
    """

    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 8081
    #: serve HTTPS and gRPC over TLS with these files; None: plain.
    tls: TlsFiles | None = None
    #: token authentication (off only with --no-auth).
    auth: bool = True
    #: a non-loopback host with authentication off was allowed (--insecure): warn loudly at start.
    insecure: bool = False
    #: every service's data plane answers callers without a token (KServe's open behaviour).
    anonymous_inference: bool = False
    state_dir: Path = Path(".servegate")
    #: the state store's database (SQLAlchemy URL): PostgreSQL lets several gateways share one
    #: state; None: `state.db` (SQLite) in `state_dir`.
    state_url: str | None = None
    manifests: tuple[str, ...] = ()
    max_body_bytes: int = 256 * 1024 * 1024
    drain_timeout_s: float = 30.0
    access_log: bool = False
    engine_options: dict[str, float] = field(default_factory=dict)
    #: where replicas run: "process" (local processes) or "ray" (actors on a Ray cluster).
    engine: str = "process"
    #: the Ray cluster of the ray engine (HOST:PORT of its GCS); None: a local Ray for this run.
    ray_address: str | None = None
    #: with a shared state (state_url): seconds a leader's lease lasts unrenewed before another
    #: gateway takes over.
    lease_ttl_s: float = 10.0
    #: the kubernetes engine's cluster: a kubeconfig file (None: in-cluster, else ~/.kube/config),
    #: its namespace, and the image its replicas run.
    kubeconfig: str | None = None
    namespace: str = "default"
    image: str | None = None
    #: the ports replica containers listen on in their pods (http, grpc).
    pod_ports: tuple[int, int] = (8080, 8081)
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
    #: what manifests, registrations and load requests may make it read or fetch; None: the default,
    #: the working directory and `state_dir` as roots and no allowed hosts (`Gateway.storage_policy`).
    storage_policy: StoragePolicy | None = None
    #: sources whose models may run code as they load (python files, pickles, torch.export), given
    #: to the controller (apply-time checks) and to every replica (SERVEGATE_TRUSTED_SOURCES).
    trust: TrustPolicy = field(default_factory=TrustPolicy)


def _engine(options: GatewayOptions, credentials: InternalCredentials) -> Engine:
    settings: dict[str, Any] = {
        "drain_timeout_s": options.drain_timeout_s,
        "credentials": credentials,
        **options.engine_options,
    }
    if options.engine == "ray":
        from serving.engines.ray import RayEngine

        return RayEngine(options.state_dir, address=options.ray_address, **settings)
    if options.engine == "kubernetes":
        return _kubernetes_engine(options, credentials)
    if options.engine != "process":
        raise ValueError(f"unknown engine {options.engine!r}: use process, ray or kubernetes")
    return ProcessEngine(options.state_dir, **settings)


class GatewayError(Exception):
    """The gateway cannot start as configured; the message says why."""


def _redacted(url: str) -> str:
    from sqlalchemy.engine.url import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "the state URL"


def _kubernetes_engine(options: GatewayOptions, credentials: InternalCredentials) -> Engine:
    from serving.engines.kubernetes.api import KubeApi
    from serving.engines.kubernetes.engine import KubernetesEngine
    from serving.engines.kubernetes.names import IMAGE
    from serving.engines.kubernetes.render import Placement

    placement = Placement(
        namespace=options.namespace,
        image=options.image or IMAGE,
        owner=credentials.owner,
        drain_timeout_s=options.drain_timeout_s,
        http_port=options.pod_ports[0],
        grpc_port=options.pod_ports[1],
    )
    return KubernetesEngine(KubeApi.from_config(options.kubeconfig), placement, credentials)


def gateway_routes(
    controller: Controller,
    guard: Guard,
    model_registry: Registry,
    tokens: TokenStore | None,
    dashboard: Dashboard,
    pipelines: list[BaseRoute],
    policy: StoragePolicy | None = None,
) -> list[BaseRoute]:
    """Everything the gateway's HTTP port serves beside the data plane, in the order Starlette tries
    them: the token, dashboard and pipeline routes before the control API, whose `/api/v1/{plural}`
    would match their paths too; then the model registry."""
    token_api = token_routes(tokens, guard) if tokens is not None else []
    registry_api = registry_routes(model_registry, guard, policy=policy)
    return token_api + dashboard.routes() + pipelines + api_routes(controller, guard) + registry_api


class Gateway:
    def __init__(self, options: GatewayOptions) -> None:
        self.options = options
        self.registry = CollectorRegistry()
        self.storage_policy = options.storage_policy or StoragePolicy((Path.cwd(), options.state_dir))
        self.router = Router(GatewayMetrics(self.registry), check_urls=self.storage_policy.connectable)
        self.store = Store(options.state_url or default_url(options.state_dir))
        #: the tokens of the gateway's own parts (replica pools, Prometheus, transformers' calls back).
        if options.state_url is not None:  # gateways sharing a state share the replicas' tokens
            self.credentials = InternalCredentials.shared_in(self.store)
        elif options.engine in ("ray", "kubernetes"):  # replicas outlive this process, and keep their tokens
            self.credentials = InternalCredentials.kept_in(options.state_dir / INTERNAL_KEY_FILE)
        else:
            self.credentials = InternalCredentials()
        self.engine = _engine(options, self.credentials)
        self.tokens: TokenStore | None = None
        self.http_port: int | None = None
        self.model_registry: Registry | None = None
        self.grpc_port: int | None = None
        self.controller: Controller | None = None
        #: the leader election, with several gateways on one state (None: this gateway leads alone).
        self.elector: LeaderElector | None = None
        self.started = asyncio.Event()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        opts = self.options
        # Manifests given with -f are checked before anything starts: a bad file stops here.
        texts = read_manifest_paths(list(opts.manifests)) if opts.manifests else []
        resources = [r for source, text in texts for r in load_manifests(text, source)]
        # Their replicas check the storage policy when they fetch: say now what they would refuse.
        if problems := await asyncio.to_thread(storage_problems, resources, self.storage_policy):
            raise ManifestError(problems)
        # ... and what runs code as it loads from a source nobody trusted (registry URIs: at apply).
        if problems := await asyncio.to_thread(trust_problems, resources, opts.trust):
            raise ManifestError(problems)

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)

        sock = bind_socket(opts.host, opts.http_port)
        self.http_port = sock.getsockname()[1]
        try:
            await self.engine.start()
        except BaseException:
            sock.close()
            raise
        local = "127.0.0.1" if opts.host in ("0.0.0.0", "::") else opts.host
        scheme = "https" if opts.tls is not None else "http"
        # What replicas call back (transformers): on other machines too, with the ray engine.
        gateway_url = f"{scheme}://{self.engine.gateway_host(opts.host)}:{self.http_port}"
        controller = self.controller = Controller(self.store, self.engine, self.router, gateway_url)
        controller.registry = model_registry = self.model_registry = Registry(
            opts.registry or RegistryConfig.from_env(opts.state_dir), storage_policy=self.storage_policy
        )
        controller.registry_poll_s = opts.registry_poll_s
        controller.credentials = self.credentials
        controller.gateway_cert = opts.tls.cert.resolve() if opts.tls is not None else None
        controller.storage_policy = self.storage_policy
        controller.trust = opts.trust
        # Replicas want it on /metrics whether or not users need tokens: Prometheus reads it here.
        write_secret(opts.state_dir / METRICS_TOKEN_FILE, self.credentials.metrics_token)
        guard = self._guard()
        controller.scaling_defaults = opts.scaling
        controller.activation_timeout_s = opts.activation_timeout_s
        # One client for the autoscaler's PromQL metrics and the dashboard's charts; the autoscaler closes it.
        prometheus = PromQLSource(opts.prometheus_url) if opts.prometheus_url else None
        autoscaler = controller.autoscaler = Autoscaler(
            controller.scale_targets,
            controller.resize,
            # With several gateways on one state: every gateway's traffic (the members of the lease).
            lambda: (self.elector.members if self.elector is not None else None) or [gateway_url],
            # It scrapes this gateway's own /metrics, by an address the certificate need not name.
            scrape=ScrapeSource(
                verify=opts.tls.self_context() if opts.tls is not None else True,
                token=self.credentials.metrics_token,
            ),
            promql=prometheus,
            metrics=AutoscalerMetrics(self.registry),
            tick_s=opts.autoscale_tick_s,
        )
        # Rollout strategies: their checks read the router's samples (and Prometheus for promql checks).
        rollouts = controller.rollouts = Rollouts(
            controller, self.router.samples, prometheus=prometheus, metrics=RolloutMetrics(self.registry)
        )
        self.router.metrics.watch_pools(self._pool_gauges)
        # Registry and pipeline activity for the Grafana dashboard, read at scrape time.
        self.registry.register(RegistryCollector(model_registry))
        # The store `servegate pipeline run` records into, opened on first use (none yet: no runs).
        pipelines_store = StoreOpener.for_state_dir(opts.state_dir)
        self.registry.register(PipelineRunsCollector(pipelines_store))
        history = MetricHistory(
            self.router.metrics.requests,
            self.router.metrics.request_seconds,
            lambda: [(g[0], g[1], g[4], g[5]) for g in self._pool_gauges()],
        )
        dashboard = Dashboard(controller, guard, history, prometheus=prometheus)
        pipelines = pipeline_routes(
            pipelines_store,
            guard,
            state_dir=opts.state_dir,
            services=lambda: controller.list("InferenceService"),
        )
        routes = gateway_routes(
            controller, guard, model_registry, self.tokens, dashboard, pipelines, self.storage_policy
        )
        app = build_gateway_app(
            self.router,
            self.registry,
            opts.max_body_bytes,
            routes,
            guard=guard,
            targets=lambda: controller.targets,
            loopback_only=is_loopback_host(opts.host),
        )
        http = http_server(app, opts.access_log, opts.drain_timeout_s, opts.tls)
        grpc_server = build_gateway_grpc_server(
            self.router, opts.max_body_bytes, guard, targets=lambda: controller.targets
        )
        try:
            self.grpc_port = add_port(grpc_server, f"{opts.host}:{opts.grpc_port}", opts.tls)
        except RuntimeError as exc:
            sock.close()
            raise OSError(f"cannot listen on {opts.host}:{opts.grpc_port} for gRPC: {exc}") from None

        # Prometheus (`servegate prometheus-config`) finds the replicas through this file.
        self.engine.watch(lambda _revision: self._write_targets(f"{local}:{self.http_port}"))
        self._write_targets(f"{local}:{self.http_port}")
        elector = self.elector = await self._elect(controller, gateway_url)
        await controller.start()
        # Every stored revision has asked for its replicas: what an earlier run left that none took goes
        # (with several gateways on one state, the leader does it when it starts leading).
        await controller.settled()
        if elector is None:
            await self.engine.release_unclaimed()
        if resources:
            await controller.apply(resources)
        await grpc_server.start()
        http_task = asyncio.create_task(http.serve(sockets=[sock]), name="gateway-http")
        log.info(
            "gateway listening: %s://%s:%s (control API /api/v1, /metrics), gRPC %s:%s%s, state in %s",
            scheme,
            opts.host,
            self.http_port,
            opts.host,
            self.grpc_port,
            " (TLS)" if opts.tls is not None else "",
            opts.state_dir,
        )
        if opts.insecure and (warning := exposure_warning(opts.host, opts.auth)):
            log.warning(warning)
        # Everything allocated so far lives as long as the process: keep it out of the collector's
        # full passes, which otherwise pause the event loop long enough to show in p99 latency.
        gc.freeze()
        autoscaling = asyncio.create_task(autoscaler.run(), name="autoscaler")
        sampling = asyncio.create_task(dashboard.run(), name="dashboard-history")
        rolling = asyncio.create_task(rollouts.run(), name="rollouts")
        electing = asyncio.create_task(elector.run(), name="leader-election") if elector else None
        following = asyncio.create_task(controller.follow_store(), name="state") if elector else None
        log.info("dashboard: %s/", f"{scheme}://{local}:{self.http_port}")
        self.started.set()
        stop_task = asyncio.create_task(self._stop.wait())
        await asyncio.wait({stop_task, http_task}, return_when=asyncio.FIRST_COMPLETED)

        log.info("stopping: draining in-flight requests, then every replica")
        dashboard.close()  # its live streams would hold the HTTP server's shutdown
        http.should_exit = True
        await asyncio.gather(http_task, grpc_server.stop(grace=opts.drain_timeout_s), return_exceptions=True)
        loops = [task for task in (autoscaling, rolling, following) if task is not None]
        for task in loops:
            task.cancel()
        await asyncio.gather(sampling, *loops, return_exceptions=True)
        if elector is not None and electing is not None:
            await elector.close()  # a successor takes over at its next attempt, not after the lease's TTL
            await asyncio.gather(electing, return_exceptions=True)
            elector.engine.dispose()
        await autoscaler.aclose()
        await controller.close()
        await self.engine.close()
        await self.router.close()
        self.store.close()
        model_registry.close()
        pipelines_store.close()
        if self.tokens is not None:
            self.tokens.close()
        stop_task.cancel()
        log.info("gateway stopped")

    async def _elect(self, controller: Controller, gateway_url: str) -> LeaderElector | None:
        """With a shared state (--state-url), the leader election: one gateway reconciles and scales,
        the others follow. Only engines whose replicas the others can reach may follow; with another
        engine a gateway that cannot lead does not start, and one that stops leading stops."""
        opts = self.options
        if opts.state_url is None:
            return None
        shares = self.engine.shares_replicas

        async def started() -> None:
            await controller.lead(True)

        async def stopped() -> None:
            if shares:
                await controller.lead(False)
            else:
                log.error(
                    "this gateway lost the lead of the shared state; it stops (--engine %s)", opts.engine
                )
                self.stop()

        elector = LeaderElector(
            connect_lease(opts.state_url),
            ttl_s=opts.lease_ttl_s,
            on_started_leading=started,
            on_stopped_leading=stopped,
            address=gateway_url,
        )
        controller.leading = False
        self.engine.lead(False)
        leading = await elector.step()
        # A gateway of this state that just died may still hold the lease: wait it out, once.
        deadline = asyncio.get_running_loop().time() + opts.lease_ttl_s + elector.renew_s
        while not leading and not shares and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(elector.renew_s)
            leading = await elector.step()
        if not leading and not shares:
            await elector.close()
            elector.engine.dispose()
            raise GatewayError(
                f"another gateway leads the state at {_redacted(opts.state_url)}: several gateways share "
                "one state only with --engine kubernetes (their replicas outlive them and all can reach them)"
            )
        return elector

    def _guard(self) -> Guard:
        """Token authentication (unless --no-auth): the users' tokens and the gateway's own, with an
        admin token in the state dir for this machine's CLI."""
        opts = self.options
        if not opts.auth:
            return Guard(None)
        # Gateways sharing a state share its users' tokens too.
        self.tokens = (
            TokenStore(opts.state_url) if opts.state_url else TokenStore.in_state_dir(opts.state_dir)
        )
        admin_file = (opts.state_dir / ADMIN_TOKEN_FILE).resolve()
        if self.tokens.ensure_admin_file(admin_file):
            log.info("made an admin token: %s (mode 0600)", admin_file)
        else:
            log.info("admin token: %s", admin_file)
        authenticator = GatewayTokens(self.credentials, self.tokens)
        sessions = Sessions(self.tokens)  # the dashboard's: users log in, never the gateway's own parts
        return Guard(authenticator, anonymous_inference=opts.anonymous_inference, sessions=sessions)

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
