"""`servegate model serve`: validated arguments -> model specs -> one replica (or several workers)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

import click
import uvloop
from prometheus_client import disable_created_metrics
from pydantic import BaseModel, ConfigDict, model_validator

from predictors.spec import ModelSpec, TrustPolicy
from predictors.threads import ThreadPlan, available_cores, plan_threads, thread_env
from serving.auth import Authenticator
from serving.auth.listen import check_exposure
from serving.auth.storage import STORAGE_ROOTS_ENV, StoragePolicy
from serving.auth.tls import TlsFiles, tls_files

__all__ = ["ServeArgs", "apply_thread_env", "prepare_process", "run_serve"]

log = logging.getLogger(__name__)


class ServeArgs(BaseModel):
    model_config = ConfigDict(frozen=True)

    names: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()
    model_repository: Path | None = None
    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 8081
    no_grpc: bool = False
    max_batch_size: int = 1
    max_latency_ms: float = 5.0
    workers: int = 1
    #: intra-op threads of every model (None: "auto", sized from `cpus`).
    threads: int | None = None
    #: CPUs this replica may use, its workers together (None: every core it may run on).
    cpus: float | None = None
    instances: int = 1
    max_body_size: int = 256 * 1024 * 1024
    trusted_sources: tuple[str, ...] = ()
    s3_endpoint: str | None = None
    cache_dir: Path | None = None
    registry_url: str | None = None
    artifacts: str | None = None
    drain_timeout: float = 30.0
    port_file: Path | None = None
    access_log: bool = False
    log_level: str = "info"
    #: bearer tokens this replica accepts (authentication is on iff given).
    token_file: Path | None = None
    #: allow a non-loopback --host with authentication off.
    insecure: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: "explicit": the repository load/unload API is on (Triton's --model-control-mode).
    model_control: str = "none"
    #: where load requests may read from (empty: the working directory) and fetch from.
    storage_roots: tuple[Path, ...] = ()
    allowed_hosts: tuple[str, ...] = ()

    @property
    def auth_enabled(self) -> bool:
        return self.token_file is not None

    @property
    def tls(self) -> TlsFiles | None:
        """The checked --tls-cert/--tls-key pair (None: plain HTTP and gRPC)."""
        return TlsFiles(self.tls_cert, self.tls_key) if self.tls_cert and self.tls_key else None

    @model_validator(mode="after")
    def _check(self) -> ServeArgs:
        if len(self.names) != len(self.uris):
            raise ValueError(
                "give --model-name and --model-uri in pairs "
                f"(got {len(self.names)} names, {len(self.uris)} URIs)"
            )
        if not self.names and self.model_repository is None:
            raise ValueError("nothing to serve: give --model-name/--model-uri or --model-repository")
        if len(set(self.names)) != len(self.names):
            raise ValueError("each --model-name must be different")
        if len(self.formats) not in (0, 1, len(self.names)):
            raise ValueError("give no --model-format, one for every model, or one per --model-name")
        if self.model_repository is not None and not self.model_repository.is_dir():
            raise ValueError(f"--model-repository {self.model_repository} is not a directory")
        if self.workers > 1 and (self.http_port == 0 or (self.grpc_port == 0 and not self.no_grpc)):
            raise ValueError("--workers > 1 needs fixed ports (the workers share them)")
        if self.workers > 1 and self.port_file is not None:
            raise ValueError("--port-file needs --workers 1")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be 'auto' or a positive integer, not {self.threads}")
        if self.cpus is not None and self.cpus <= 0:
            raise ValueError(f"--cpus must be above 0, not {self.cpus:g}")
        tls_files(self.tls_cert, self.tls_key)
        refusal = check_exposure(self.host, self.auth_enabled, self.insecure, enable_auth="give --token-file")
        if refusal is not None:
            raise ValueError(refusal)
        try:
            StoragePolicy(allowed_hosts=self.allowed_hosts)
        except ValueError as exc:
            raise ValueError(f"--allow-host: {exc}") from None
        return self

    def storage_policy(self) -> tuple[StoragePolicy, bool]:
        """The storage policy, and whether it applies to the command line's models too: a gateway
        hands its policy down in the environment and every model it sends is checked (its manifests'
        `args` must not widen it, so the flags give way); else the flags' policy checks only the
        URIs of load requests."""
        handed = StoragePolicy.from_env()
        if handed is not None:
            if self.storage_roots or self.allowed_hosts:
                logging.getLogger(__name__).warning(
                    "--storage-root/--allow-host ignored: $%s sets the storage policy", STORAGE_ROOTS_ENV
                )
            return handed, True
        return StoragePolicy(self.storage_roots or (Path.cwd(),), self.allowed_hosts), False

    def thread_plan(self, cores: int) -> ThreadPlan:
        """The threads of one replica process on `cores` cores: each of --workers N gets an Nth of
        --cpus (or of the cores), and --threads N, when given, wins over the sizing."""
        share = min(self.cpus or cores, cores) / self.workers
        return plan_threads(cores=cores, cpus=share, requested=self.threads)

    def template(self, plan: ThreadPlan) -> ModelSpec:
        """Settings every model gets unless its own configuration says otherwise."""
        return ModelSpec(
            name="",
            uri="",
            max_batch_size=self.max_batch_size,
            max_latency_ms=self.max_latency_ms,
            threads=plan.intra_op,
            spinning=plan.spinning,
            instances=self.instances,
            trust=TrustPolicy.from_env(self.trusted_sources),
        )

    def specs(self, plan: ThreadPlan) -> list[ModelSpec]:
        template = self.template(plan)
        formats = self.formats * len(self.names) if len(self.formats) == 1 else self.formats
        return [
            dataclasses.replace(template, name=name, uri=uri, format=fmt)
            for name, uri, fmt in zip(
                self.names, self.uris, formats or (None,) * len(self.names), strict=True
            )
        ]


def run_serve(args: ServeArgs) -> None:
    prepare_process(args.log_level)
    plan = args.thread_plan(available_cores())
    # Before the imports below: they load numpy, whose OpenBLAS sizes its pool as it loads.
    kept = apply_thread_env(plan)
    log.info("threads: %s%s", plan.why, f" (kept from the environment: {', '.join(kept)})" if kept else "")

    from predictors.server.replica import Replica, ReplicaOptions
    from predictors.storage import StorageConfig

    # registry:// URIs resolve through RegistryConfig.from_env(), here and in any worker process.
    if args.registry_url:
        os.environ["SERVEGATE_REGISTRY_URL"] = args.registry_url
    if args.artifacts:
        os.environ["SERVEGATE_ARTIFACTS"] = args.artifacts
    storage = StorageConfig.from_env()
    if args.cache_dir is not None or args.s3_endpoint is not None:
        storage = StorageConfig(
            cache_dir=args.cache_dir or storage.cache_dir,
            s3_endpoint_url=args.s3_endpoint or storage.s3_endpoint_url,
            http_timeout_s=storage.http_timeout_s,
        )
    policy, check_start_models = args.storage_policy()
    storage = dataclasses.replace(storage, policy=policy)
    options = ReplicaOptions(
        host=args.host,
        http_port=args.http_port,
        grpc_port=None if args.no_grpc else args.grpc_port,
        max_body_bytes=args.max_body_size,
        drain_timeout_s=args.drain_timeout,
        model_repository=args.model_repository,
        storage=storage,
        access_log=args.access_log,
        shared_ports=args.workers > 1,
        port_file=args.port_file,
        tls=args.tls,
        insecure=args.insecure and not args.auth_enabled,
        auth=_authenticator(args.token_file),
        model_control=args.model_control == "explicit",
        check_start_models=check_start_models,
    )
    if args.workers > 1:
        from predictors.server.workers import run_workers

        sys.exit(run_workers(options, args.specs(plan), args.template(plan), args.workers, args.log_level))
    replica = Replica(options, args.specs(plan), args.template(plan))
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(replica.run())
    except OSError as exc:
        raise click.ClickException(str(exc)) from None


def _authenticator(token_file: Path | None) -> Authenticator | None:
    """What the replica accepts: the tokens of --token-file (one a line), and the pool and metrics
    tokens an engine puts in its environment; None when there are none (authentication off)."""
    from serving.auth import Principal, Scope, StaticTokens
    from serving.auth.files import read_token_file
    from serving.auth.internal import GATEWAY, METRICS_ENV, PROMETHEUS, REPLICA_TOKEN_ENV

    tokens: dict[str, Principal] = {}
    if token_file is not None:
        try:
            read_token_file(token_file)  # refuses a file others can read, or an empty one
        except (OSError, ValueError) as exc:
            raise click.UsageError(f"--token-file: {exc}") from None
        client = Principal("client", frozenset(Scope))
        tokens = {line.strip(): client for line in token_file.read_text().splitlines() if line.strip()}
    if pool := os.environ.get(REPLICA_TOKEN_ENV):
        tokens[pool] = GATEWAY
    if metrics := os.environ.get(METRICS_ENV):
        tokens[metrics] = PROMETHEUS
    return StaticTokens(tokens) if tokens else None


def apply_thread_env(plan: ThreadPlan, environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Put `plan`'s thread variables (OMP_NUM_THREADS, ...) in `environ` where they are not set
    already (the user's value wins); workers inherit them. Returns the user's, as `NAME=value`."""
    kept = []
    for name, value in thread_env(plan).items():
        if name in environ:
            kept.append(f"{name}={environ[name]}")
        else:
            environ[name] = value
    return kept


def prepare_process(log_level: str) -> None:
    """Process-wide settings for a replica (or worker) process, made once at its start."""
    configure_logging(log_level)
    # `*_created` series double every counter's output and no dashboard reads them.
    disable_created_metrics()


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s [%(process)d] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # uvicorn's own error logger is useful; its per-request access logger is opt-in (--access-log).
    logging.getLogger("uvicorn.error").setLevel(level.upper())
    # One line per health check of every replica drowns what matters.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))
