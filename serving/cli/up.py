"""`servegate up`: the gateway, the controller and an engine (local processes or Ray), in the foreground."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import uvloop

from serving.cli._options import dns_label, listen_options, policy_options, security_options, server_options

__all__ = ["up"]

#: GlobalScalingDefaults field -> the flag that sets it (to name a rejected value by its flag).
_SCALING_FLAGS = {
    "target_utilization": "--target-utilization",
    "stable_window_s": "--stable-window",
    "scale_to_zero_grace_s": "--scale-to-zero-grace-period",
    "panic_window_pct": "--panic-window-percentage",
    "panic_threshold_pct": "--panic-threshold-percentage",
    "max_scale_up_rate": "--max-scale-up-rate",
    "max_scale_down_rate": "--max-scale-down-rate",
}


@click.command()
@click.option(
    "-f",
    "--filename",
    "manifests",
    multiple=True,
    help="Manifest file or folder to apply at start (repeatable).",
)
@listen_options
@security_options
@click.option(
    "--no-auth",
    is_flag=True,
    help="Turn token authentication off (only on loopback, or with --insecure).",
)
@click.option(
    "--anonymous-inference",
    is_flag=True,
    help="Open every service's data plane to callers without a token, as KServe's is (the control "
    "API still needs one). One service: the annotation serving.servegate.io/anonymous-inference: 'true'.",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".servegate"),
    show_default=True,
    help="Where state (SQLite, unless --state-url), replica logs and scratch files live.",
)
@click.option(
    "--state-url",
    envvar="SERVEGATE_STATE_URL",
    help="The state store's database: any SQLAlchemy URL; PostgreSQL lets several gateways share one "
    "state (high availability), e.g. postgresql+psycopg://user@db/servegate "
    "[default: state.db (SQLite) in the state dir].",
)
@click.option(
    "--leader-lease",
    type=click.FloatRange(min=1.0),
    default=10.0,
    show_default=True,
    help="With --state-url: seconds a leader's lease lasts unrenewed; when a leader dies, another "
    "gateway on the state takes over within about this long.",
)
@policy_options("manifests, registrations and load requests", "the working directory and the state dir")
@click.option(
    "--engine",
    type=click.Choice(["process", "ray", "kubernetes"]),
    default="process",
    show_default=True,
    help="Where replicas run: local processes, Ray actors spread over a Ray cluster, or Pods of "
    "Deployments in a Kubernetes cluster.",
)
@click.option(
    "--ray-address",
    envvar="SERVEGATE_RAY_ADDRESS",
    help="The Ray cluster of --engine ray: its head's GCS address, HOST:PORT [default: a local Ray "
    "started for this run, stopped with it].",
)
@click.option(
    "--kubeconfig",
    type=click.Path(dir_okay=False, exists=True),
    envvar="KUBECONFIG",
    help="The cluster of --engine kubernetes [default: the pod's service account inside a cluster, "
    "else ~/.kube/config].",
)
@click.option(
    "--namespace",
    default="default",
    show_default=True,
    callback=dns_label,
    help="The namespace --engine kubernetes runs revisions in.",
)
@click.option(
    "--image",
    help="The image --engine kubernetes runs replicas from [default: servegate's, this version].",
)
@click.option(
    "--pod-ports",
    metavar="HTTP,GRPC",
    default="8080,8081",
    show_default=True,
    help="The ports --engine kubernetes replicas listen on, in their pods.",
)
@click.option(
    "--registry-url",
    envvar="SERVEGATE_REGISTRY_URL",
    help="Model registry database (SQLAlchemy URL, e.g. postgresql+psycopg://...) "
    "[default: SQLite in the state dir].",
)
@click.option(
    "--artifacts",
    envvar="SERVEGATE_ARTIFACTS",
    help="Registry artifact store: a folder or s3://bucket/prefix [default: artifacts/ in the state dir].",
)
@click.option(
    "--prometheus-url",
    help="Prometheus server for custom (PromQL) autoscaling metrics, e.g. http://127.0.0.1:9090.",
)
@click.option(
    "--target-utilization",
    type=click.FloatRange(0.01, 1.0),
    default=0.7,
    show_default=True,
    help="Default fraction of the concurrency/rps target aimed for (Knative's 70%).",
)
@click.option(
    "--stable-window",
    type=click.FloatRange(6, 3600),
    default=60.0,
    show_default=True,
    help="Default seconds the autoscaler averages over (the panic window is a share of it).",
)
@click.option(
    "--scale-to-zero-grace-period",
    type=click.FloatRange(0, 3600),
    default=30.0,
    show_default=True,
    help="Default seconds without requests before a minReplicas-0 revision loses its last replica.",
)
@click.option(
    "--panic-window-percentage",
    type=click.FloatRange(1, 100),
    default=10.0,
    show_default=True,
    help="Default panic window, as a percentage of the stable window.",
)
@click.option(
    "--panic-threshold-percentage",
    type=click.FloatRange(110, 1000),
    default=200.0,
    show_default=True,
    help="Default: panic when the panic window wants this percentage of the ready replicas.",
)
@click.option(
    "--max-scale-up-rate",
    type=click.FloatRange(min=1, min_open=True),
    default=1000.0,
    show_default=True,
    help="Default: one decision asks for at most this many times the ready replicas.",
)
@click.option(
    "--max-scale-down-rate",
    type=click.FloatRange(min=1, min_open=True),
    default=2.0,
    show_default=True,
    help="Default: one decision keeps at least the ready replicas divided by this.",
)
@click.option(
    "--autoscale-interval",
    type=click.FloatRange(0.1, 60),
    default=2.0,
    show_default=True,
    help="Seconds between two autoscaling decisions.",
)
@click.option(
    "--activation-timeout",
    type=click.FloatRange(1, 3600),
    default=60.0,
    show_default=True,
    help="Seconds a request waits for the first replica of a revision at zero before a 503.",
)
@server_options
def up(
    manifests: tuple[str, ...],
    host: str,
    http_port: int,
    grpc_port: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    insecure: bool,
    no_auth: bool,
    anonymous_inference: bool,
    state_dir: Path,
    state_url: str | None,
    leader_lease: float,
    storage_roots: tuple[Path, ...],
    allowed_hosts: tuple[str, ...],
    trusted_sources: tuple[str, ...],
    engine: str,
    ray_address: str | None,
    kubeconfig: str | None,
    namespace: str,
    image: str | None,
    pod_ports: str,
    registry_url: str | None,
    artifacts: str | None,
    max_body_size: int,
    drain_timeout: float,
    prometheus_url: str | None,
    target_utilization: float,
    stable_window: float,
    scale_to_zero_grace_period: float,
    panic_window_percentage: float,
    panic_threshold_percentage: float,
    max_scale_up_rate: float,
    max_scale_down_rate: float,
    autoscale_interval: float,
    activation_timeout: float,
    access_log: bool,
    log_level: str,
) -> None:
    """Run the gateway with its control plane; replicas run as local processes, or on a Ray cluster.

    \b
    servegate up -f examples/iris.yaml
    servegate up --http-port 9000 --grpc-port 9001 --state-dir /var/lib/servegate
    servegate up --host 0.0.0.0 --tls-cert cert.pem --tls-key key.pem
    servegate up --engine ray --ray-address 10.0.0.5:6379
    servegate up --engine kubernetes --namespace models --host 0.0.0.0
    """
    from autoscaler.config import ConfigError, GlobalScalingDefaults
    from predictors.trust import TrustPolicy
    from serving.auth.listen import check_exposure
    from serving.auth.storage import StoragePolicy
    from serving.auth.tls import tls_files
    from serving.cli._serve import prepare_process
    from serving.engines.kubernetes.api import KubernetesUnavailable
    from serving.gateway import Gateway, GatewayError, GatewayOptions
    from serving.raycluster import RayUnavailable
    from serving.registry import RegistryConfig, RegistryError
    from serving.spec import ManifestError
    from serving.sqldb import DatabaseError

    try:
        scaling = GlobalScalingDefaults(
            target_utilization=target_utilization,
            stable_window_s=stable_window,
            scale_to_zero_grace_s=scale_to_zero_grace_period,
            panic_window_pct=panic_window_percentage,
            panic_threshold_pct=panic_threshold_percentage,
            max_scale_up_rate=max_scale_up_rate,
            max_scale_down_rate=max_scale_down_rate,
        )
    except ConfigError as exc:
        raise click.UsageError(
            "; ".join(f"{_SCALING_FLAGS.get(p.path, p.path)}: {p.message}" for p in exc.problems)
        ) from None
    auth = not no_auth
    refusal = check_exposure(host, auth, insecure, enable_auth="leave token authentication on (no --no-auth)")
    if refusal is not None:
        raise click.UsageError(refusal)
    if ray_address is not None and engine != "ray":
        raise click.UsageError("--ray-address needs --engine ray")
    if engine != "kubernetes" and (image is not None or namespace != "default" or pod_ports != "8080,8081"):
        raise click.UsageError("--namespace, --image and --pod-ports need --engine kubernetes")
    ports = _ports(pod_ports)
    try:
        tls = tls_files(tls_cert, tls_key)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        storage_policy = StoragePolicy(storage_roots or (Path.cwd(), state_dir), allowed_hosts)
    except ValueError as exc:
        raise click.UsageError(f"--allow-host: {exc}") from None
    prepare_process(log_level)
    defaults = RegistryConfig.from_env(state_dir)
    # Gateways sharing a state share its registry too, unless told otherwise (its artifacts need a
    # store they all reach: --artifacts s3://...).
    registry_url = registry_url or state_url or defaults.url
    registry = RegistryConfig(url=registry_url, artifacts=artifacts or defaults.artifacts)
    options = GatewayOptions(
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        tls=tls,
        auth=auth,
        anonymous_inference=anonymous_inference,
        insecure=insecure,
        state_dir=state_dir,
        state_url=state_url,
        storage_policy=storage_policy,
        trust=TrustPolicy.from_env(trusted_sources),
        registry=registry,
        manifests=manifests,
        max_body_bytes=max_body_size,
        drain_timeout_s=drain_timeout,
        access_log=access_log,
        prometheus_url=prometheus_url,
        scaling=scaling,
        autoscale_tick_s=autoscale_interval,
        activation_timeout_s=activation_timeout,
        engine=engine,
        ray_address=ray_address,
        kubeconfig=kubeconfig if engine == "kubernetes" else None,
        namespace=namespace,
        image=image,
        pod_ports=ports,
        lease_ttl_s=leader_lease,
    )
    try:
        gateway = Gateway(options)  # opens the state store: a bad URL or database stops here
    except DatabaseError as exc:
        raise click.ClickException(f"{'--state-url' if state_url else '--state-dir'}: {exc}") from None
    except KubernetesUnavailable as exc:
        raise click.ClickException(f"--engine kubernetes: {exc}") from None
    try:
        uvloop.run(gateway.run())
    except ManifestError as exc:
        click.echo("error: the manifests cannot be applied; nothing started:", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)
    except OSError as exc:
        raise click.ClickException(str(exc)) from None
    except RegistryError as exc:
        raise click.ClickException(f"model registry: {exc.message}") from None
    except RayUnavailable as exc:
        raise click.ClickException(f"--engine ray: {exc}") from None
    except KubernetesUnavailable as exc:
        raise click.ClickException(f"--engine kubernetes: {exc}") from None
    except GatewayError as exc:
        raise click.ClickException(str(exc)) from None


def _ports(text: str) -> tuple[int, int]:
    try:
        http, grpc = (int(part) for part in text.split(","))
    except ValueError:
        raise click.BadParameter(
            f"'{text}' is not HTTP,GRPC (two port numbers)", param_hint="--pod-ports"
        ) from None
    if not (0 < http < 65536 and 0 < grpc < 65536) or http == grpc:
        raise click.BadParameter(f"'{text}': two different ports from 1 to 65535", param_hint="--pod-ports")
    return http, grpc
