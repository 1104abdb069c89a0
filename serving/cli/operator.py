"""`servegate operator`: watch KServe's objects in a Kubernetes cluster and run them on a gateway."""

from __future__ import annotations

import os
from pathlib import Path

import click

from serving.cli._options import dns_label

__all__ = ["operator_command"]

#: set by the operator's Deployment (`servegate install`) from the pod's own metadata.
_POD_NAME_ENV = "POD_NAME"
_POD_NAMESPACE_ENV = "POD_NAMESPACE"
_IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@click.command("operator")
@click.option(
    "--kubeconfig",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The cluster's kubeconfig [default: the pod's service account in a cluster, else "
    "KUBECONFIG or ~/.kube/config].",
)
@click.option(
    "-n",
    "--namespace",
    callback=dns_label,
    help="Watch this namespace [default: POD_NAMESPACE, else the kubeconfig context's, else default].",
)
@click.option("-A", "--all-namespaces", is_flag=True, help="Watch every namespace.")
@click.option(
    "--gateway-url",
    metavar="URL",
    help="The gateway that runs what the objects say [default: SERVEGATE_URL, else in a pod "
    "http://servegate-gateway.$POD_NAMESPACE.svc:8080, else http://127.0.0.1:8080].",
)
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The gateway's admin token, in a file (mode 600) [default: SERVEGATE_TOKEN, else "
    "SERVEGATE_TOKEN_FILE, else a local `servegate up`'s admin token].",
)
@click.option(
    "--health-host",
    default="127.0.0.1",
    show_default=True,
    help="Address of /healthz and /readyz (0.0.0.0 in a pod, for the kubelet's probes).",
)
@click.option(
    "--health-port",
    type=click.IntRange(0, 65535),
    default=8082,
    show_default=True,
    help="Port of /healthz and /readyz.",
)
@click.option(
    "--resync-seconds",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds between two copies of the gateway's status onto the objects.",
)
@click.option(
    "--lease-seconds",
    type=click.IntRange(min=3),
    default=15,
    show_default=True,
    help="The leader Lease's duration: a leader that stops renewing is replaced within about this long.",
)
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True
)
def operator_command(
    kubeconfig: Path | None,
    namespace: str | None,
    all_namespaces: bool,
    gateway_url: str | None,
    token_file: Path | None,
    health_host: str,
    health_port: int,
    resync_seconds: float,
    lease_seconds: int,
    log_level: str,
) -> None:
    """Run KServe's InferenceService, TrainedModel and InferenceGraph objects of a Kubernetes cluster on
    a servegate gateway, and write their status back as KServe does (`kubectl get isvc` shows it).

    One of several operators leads (a Lease named servegate-operator in POD_NAMESPACE); the others wait.
    The gateway needs an admin token: in a cluster, put one in the Secret servegate-operator-token
    (key `token`), which the operator's Deployment reads into SERVEGATE_TOKEN.
    """
    if namespace is not None and all_namespaces:
        raise click.UsageError("give --namespace or --all-namespaces, not both")
    from serving.cli._serve import configure_logging
    from serving.election import default_holder
    from serving.operator.runner import OperatorError, OperatorSettings, run_operator

    configure_logging(log_level)
    fallback = _default_namespace(kubeconfig)
    watched = None if all_namespaces else (namespace or fallback)
    settings = OperatorSettings(
        gateway_url=gateway_url or _default_gateway_url(),
        namespace=watched,
        lease_namespace=os.environ.get(_POD_NAMESPACE_ENV) or watched or fallback,
        holder=os.environ.get(_POD_NAME_ENV) or default_holder(),
        kubeconfig=kubeconfig,
        token_file=token_file,
        health_host=health_host,
        health_port=health_port,
        resync_s=resync_seconds,
        lease_s=lease_seconds,
    )
    try:
        run_operator(settings)
    except OperatorError as exc:
        raise click.ClickException(str(exc)) from None


def _default_gateway_url() -> str:
    from serving.client import DEFAULT_URL
    from serving.engines.kubernetes.names import HTTP_PORT
    from serving.operator.install import GATEWAY_NAME

    if url := os.environ.get("SERVEGATE_URL"):
        return url
    if namespace := os.environ.get(_POD_NAMESPACE_ENV):
        return f"http://{GATEWAY_NAME}.{namespace}.svc:{HTTP_PORT}"
    return DEFAULT_URL


def _default_namespace(kubeconfig: Path | None) -> str:
    """POD_NAMESPACE, else the service account's namespace in a pod, else the kubeconfig's current
    context's, else "default" (as kubectl does)."""
    if namespace := os.environ.get(_POD_NAMESPACE_ENV):
        return namespace
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            return _IN_CLUSTER_NAMESPACE.read_text().strip() or "default"
        except OSError:
            return "default"
    try:
        from kubernetes import config

        _, current = config.list_kube_config_contexts(config_file=str(kubeconfig) if kubeconfig else None)
    except Exception:  # no kubeconfig, or an unreadable one: the operator says so when it connects
        return "default"
    return str((current or {}).get("context", {}).get("namespace") or "default")
