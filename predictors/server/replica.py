"""One replica process: the models, the REST server and the gRPC server on one event loop.

Start-up: both servers listen first (so liveness answers while large models load), then the models
load concurrently; readiness turns true once every model is ready. SIGTERM or SIGINT: readiness
turns false, both servers stop accepting, in-flight requests finish (up to the drain timeout),
models are released, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry

from predictors.dataplane import DataPlane
from predictors.metrics import ReplicaMetrics
from predictors.repository import ModelRepository
from predictors.server._coalesce import CoalescingHttpToolsProtocol
from predictors.server.grpc_service import build_grpc_server
from predictors.server.rest import build_app
from predictors.spec import ModelSpec
from predictors.storage import StorageConfig
from serving.auth import Authenticator, Guard
from serving.auth.listen import exposure_warning, is_loopback_host
from serving.auth.tls import TlsFiles, add_port

__all__ = ["HttpServer", "Replica", "ReplicaOptions", "bind_socket", "http_server"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplicaOptions:
    """host: interface to listen on. http_port / grpc_port: 0 picks a free port (grpc_port None: no gRPC).
    max_body_bytes: largest request body (REST) or message (gRPC) accepted, in bytes.
    drain_timeout_s: how long shutdown waits for in-flight requests, in seconds.
    """

    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int | None = 8081
    max_body_bytes: int = 256 * 1024 * 1024
    drain_timeout_s: float = 30.0
    model_repository: Path | None = None
    storage: StorageConfig = field(default_factory=StorageConfig.from_env)
    access_log: bool = False
    #: set with --workers: the workers share the gRPC port (HTTP comes as one socket from the supervisor).
    shared_ports: bool = False
    #: where to write `{"http": port, "grpc": port | null, "pid": pid}` once both servers listen.
    port_file: Path | None = None
    #: serve HTTPS and gRPC over TLS with these files; None: plain.
    tls: TlsFiles | None = None
    #: a non-loopback host with authentication off was allowed (--insecure): warn loudly at start.
    insecure: bool = False
    #: who may call every route but health (the engine's pool token, --token-file); None: anyone.
    auth: Authenticator | None = None
    #: the repository load/unload API is on (--model-control explicit).
    model_control: bool = False
    #: the models given at start are checked against `storage.policy` too (a gateway sent them);
    #: False: they are the operator's, and only URIs from load requests are checked.
    check_start_models: bool = False


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket, bound here so a busy port fails with a clear message."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _write_port_file(path: Path, ports: dict[str, int | None]) -> None:
    # Atomic: a process manager polling for the file never reads half of it.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(ports))
    os.replace(tmp, path)


def http_server(
    app: Any, access_log: bool, drain_timeout_s: float, tls: TlsFiles | None = None
) -> HttpServer:
    """uvicorn for an app served on sockets we bound, on the running loop, signals left to us;
    HTTPS when `tls` is given. HTTP/1.1 through httptools, each response in one send (`_coalesce`)."""
    config = uvicorn.Config(
        app,
        lifespan="off",
        loop="none",
        http=CoalescingHttpToolsProtocol,
        access_log=access_log,
        log_config=None,
        # Nothing here reads X-Forwarded-* (a middleware less per request), nor says what it runs.
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=drain_timeout_s,  # type: ignore[arg-type] - uvicorn takes floats too
        **(tls.uvicorn_options() if tls is not None else {}),
    )
    return HttpServer(config)


class HttpServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The replica owns SIGTERM/SIGINT so that HTTP and gRPC drain together.
        yield


class Replica:
    def __init__(
        self,
        options: ReplicaOptions,
        specs: list[ModelSpec],
        template: ModelSpec | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.options = options
        self.specs = specs
        self.registry = registry or CollectorRegistry()
        self.metrics = ReplicaMetrics(self.registry)
        self.repository = ModelRepository(
            self.metrics,
            options.storage,
            options.model_repository,
            template,
            check_start_models=options.check_start_models,
        )
        self.dataplane = DataPlane(self.repository, self.metrics)
        self.exposition = self.metrics.exposition()
        #: set once the start-up models have loaded (or failed to).
        self.models_loaded = asyncio.Event()
        self.http_port: int | None = None
        self.grpc_port: int | None = None
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def _load_models(self) -> None:
        try:
            await self.repository.start(self.specs)
        finally:
            self.models_loaded.set()

    async def run(self, http_socket: socket.socket | None = None) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)

        opts = self.options
        sock = http_socket or bind_socket(opts.host, opts.http_port)
        self.http_port = sock.getsockname()[1]
        app = build_app(
            self.dataplane,
            self.exposition,
            opts.max_body_bytes,
            guard=Guard(opts.auth),
            model_control=opts.model_control,
            loopback_only=is_loopback_host(opts.host),
        )
        http = http_server(app, opts.access_log, opts.drain_timeout_s, opts.tls)

        grpc_server = None
        if opts.grpc_port is not None:
            grpc_server = build_grpc_server(
                self.dataplane,
                opts.max_body_bytes,
                reuse_port=opts.shared_ports,
                guard=Guard(opts.auth),
                model_control=opts.model_control,
            )
            try:
                self.grpc_port = add_port(grpc_server, f"{opts.host}:{opts.grpc_port}", opts.tls)
            except RuntimeError as exc:
                raise OSError(f"cannot listen on {opts.host}:{opts.grpc_port} for gRPC: {exc}") from None
            await grpc_server.start()

        http_task = asyncio.create_task(http.serve(sockets=[sock]), name="http")
        load_task = asyncio.create_task(self._load_models(), name="load-models")
        scheme = "https" if opts.tls is not None else "http"
        log.info(
            "replica listening: %s://%s:%s, gRPC %s",
            scheme,
            opts.host,
            self.http_port,
            f"{opts.host}:{self.grpc_port}{' (TLS)' if opts.tls else ''}" if grpc_server else "off",
        )
        if opts.insecure and (warning := exposure_warning(opts.host, auth_enabled=False)):
            log.warning(warning)
        if opts.port_file is not None:
            ports = {"http": self.http_port, "grpc": self.grpc_port, "pid": os.getpid()}
            _write_port_file(opts.port_file, ports)
        stop_task = asyncio.create_task(self._stop.wait())
        await asyncio.wait({stop_task, http_task}, return_when=asyncio.FIRST_COMPLETED)

        log.info("shutting down: draining in-flight requests (up to %gs)", opts.drain_timeout_s)
        self.dataplane.draining = True
        http.should_exit = True
        drains = [http_task]
        if grpc_server is not None:
            drains.append(asyncio.create_task(grpc_server.stop(grace=opts.drain_timeout_s)))
        await asyncio.gather(*drains, return_exceptions=True)
        if not load_task.done():
            load_task.cancel()
        await asyncio.gather(load_task, return_exceptions=True)
        await self.repository.close()
        stop_task.cancel()
        log.info("replica stopped")
