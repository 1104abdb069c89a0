"""`servegate model serve`: validated arguments -> model specs -> one replica (or several workers)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sys
from pathlib import Path

import click
import uvloop
from prometheus_client import disable_created_metrics
from pydantic import BaseModel, ConfigDict, model_validator

from predictors.spec import ModelSpec, TrustPolicy

__all__ = ["ServeArgs", "prepare_process", "run_serve"]


class ServeArgs(BaseModel):
    model_config = ConfigDict(frozen=True)

    names: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()
    model_repository: Path | None = None
    host: str = "0.0.0.0"
    http_port: int = 8080
    grpc_port: int = 8081
    no_grpc: bool = False
    max_batch_size: int = 1
    max_latency_ms: float = 5.0
    workers: int = 1
    threads: int | None = None
    instances: int = 1
    max_body_size: int = 256 * 1024 * 1024
    trusted: tuple[str, ...] = ()
    s3_endpoint: str | None = None
    cache_dir: Path | None = None
    registry_url: str | None = None
    artifacts: str | None = None
    drain_timeout: float = 30.0
    port_file: Path | None = None
    access_log: bool = False
    log_level: str = "info"

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
        return self

    def template(self) -> ModelSpec:
        """Settings every model gets unless its own configuration says otherwise."""
        return ModelSpec(
            name="",
            uri="",
            max_batch_size=self.max_batch_size,
            max_latency_ms=self.max_latency_ms,
            threads=self.threads,
            instances=self.instances,
            trust=TrustPolicy(sources=self.trusted + _env_list("SERVEGATE_TRUSTED_SOURCES")),
        )

    def specs(self) -> list[ModelSpec]:
        template = self.template()
        formats = self.formats * len(self.names) if len(self.formats) == 1 else self.formats
        return [
            dataclasses.replace(template, name=name, uri=uri, format=fmt)
            for name, uri, fmt in zip(
                self.names, self.uris, formats or (None,) * len(self.names), strict=True
            )
        ]


def _env_list(name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in os.environ.get(name, "").split(",") if item.strip())


def run_serve(args: ServeArgs) -> None:
    from predictors.server.replica import Replica, ReplicaOptions
    from predictors.storage import StorageConfig

    prepare_process(args.log_level)
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
    )
    if args.workers > 1:
        from predictors.server.workers import run_workers

        sys.exit(run_workers(options, args.specs(), args.template(), args.workers, args.log_level))
    replica = Replica(options, args.specs(), args.template())
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(replica.run())
    except OSError as exc:
        raise click.ClickException(str(exc)) from None


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
