"""`servegate install`: the manifests that run servegate in a Kubernetes cluster, as YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from serving import __version__
from serving.cli._options import dns_label
from serving.engines.kubernetes.names import IMAGE

__all__ = ["install_command", "manifests_yaml"]


@click.command("install")
@click.option(
    "-n",
    "--namespace",
    default="servegate",
    show_default=True,
    callback=dns_label,
    help="Namespace of the operator, the gateway and their ServiceAccount (created).",
)
@click.option("--image", default=IMAGE, show_default=True, help="The servegate image both run.")
@click.option(
    "--gateway-replicas",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Gateway pods; more than one share the state of --state-url-secret (one leads, all route).",
)
@click.option(
    "--state-url-secret",
    metavar="NAME",
    callback=dns_label,
    help="Secret in the namespace whose `url` key is the gateway's state database (SQLAlchemy URL, "
    "e.g. PostgreSQL) [default: each gateway pod keeps its own state in an emptyDir].",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the manifests to this file instead of printing them.",
)
def install_command(
    namespace: str, image: str, gateway_replicas: int, state_url_secret: str | None, output: Path | None
) -> None:
    """Print what runs servegate in a Kubernetes cluster: KServe's CRDs (InferenceService,
    TrainedModel, InferenceGraph), a namespace, RBAC, the operator and the gateway.

    The InferenceService CRD is too large for client-side apply's annotation: apply server-side.

    \b
    servegate install | kubectl apply --server-side -f -
    """
    from serving.operator.install import install_objects

    try:
        objects = install_objects(
            namespace=namespace,
            image=image,
            gateway_replicas=gateway_replicas,
            state_url_secret=state_url_secret,
        )
    except ValueError as exc:  # the image: the other values are checked as they are parsed
        raise click.UsageError(str(exc)) from None
    text = manifests_yaml(objects)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)
        click.echo(f"wrote {output}; apply it with: kubectl apply --server-side -f {output}", err=True)


def manifests_yaml(objects: list[dict[str, Any]]) -> str:
    """`objects` as one multi-document YAML stream, under a one-line comment naming servegate's version."""
    import yaml

    # Every document written out in full: no anchors and aliases, even for shared dicts.
    base = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    dumper = type("_Dumper", (base,), {"ignore_aliases": lambda self, data: True})
    header = f"# servegate {__version__} install manifests: apply with `kubectl apply --server-side -f -`\n"
    body = yaml.dump_all(objects, Dumper=dumper, sort_keys=False, explicit_start=True)
    return header + body
