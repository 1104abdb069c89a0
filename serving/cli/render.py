"""`servegate render`: the Kubernetes objects InferenceService manifests become, for GitOps reviews."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from serving.cli._options import dns_label, manifest_paths_option

__all__ = ["render_command"]


@click.command("render")
@manifest_paths_option
@click.option(
    "--namespace",
    default="default",
    show_default=True,
    callback=dns_label,
    help="The namespace the objects go in.",
)
@click.option("--image", help="The image replicas run [default: servegate's, this version].")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the objects to this file instead of printing them.",
)
def render_command(paths: tuple[str, ...], namespace: str, image: str | None, output: Path | None) -> None:
    """Print the Deployments and Services that `servegate up --engine kubernetes` (or `servegate
    operator`) makes for InferenceService manifests, as their first revisions, in one YAML stream.

    The manifests get the checks an apply does that need no running gateway, the cluster's own among
    them; nothing is sent anywhere. Each revision's Secret (its tokens) is made when it runs.

    \b
    servegate render -f isvc.yaml
    servegate render -f manifests/ --namespace models -o rendered.yaml
    """
    import yaml

    from serving.engines.kubernetes.names import IMAGE
    from serving.engines.kubernetes.render import Placement
    from serving.spec import ManifestError, read_manifest_paths

    try:
        sources = read_manifest_paths(list(paths))
        objects = _objects(sources, Placement(namespace=namespace, image=image or IMAGE))
    except ManifestError as exc:
        click.echo("error: the manifests cannot be rendered:", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        raise SystemExit(2) from None
    header = "# rendered by servegate render: first revisions; each one's Secret is made when it runs\n"
    text = header + yaml.safe_dump_all(objects, sort_keys=False, explicit_start=True)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)
        click.echo(f"wrote {len(objects)} objects to {output}", err=True)


def _objects(sources: list[tuple[str, str]], placement: Any) -> list[dict[str, Any]]:
    """Every InferenceService component's first revision, rendered; ManifestError with every problem
    (the manifests' own, then what the cluster would refuse) when there is any."""
    from serving.controller.controller import replica_spec
    from serving.engines.kubernetes.admission import manifest_problems
    from serving.engines.kubernetes.render import revision_objects
    from serving.spec import InferenceService, ManifestError, Problem, load_manifests

    resources, problems = [], []
    for source, text in sources:
        try:
            resources += load_manifests(text, source)
        except ManifestError as exc:
            problems += exc.problems
    problems += manifest_problems(resources)
    if problems:
        raise ManifestError(problems)
    objects = []
    for r in resources:
        if not isinstance(r, InferenceService):
            continue  # TrainedModels and InferenceGraphs run in the gateway and its replicas
        for kind, component in r.components().items():
            revision = f"{r.metadata.name}-{kind}-00001"
            objects += revision_objects(replica_spec(r.metadata.name, kind, revision, component), placement)
    if not objects:
        raise ManifestError([Problem("-f", "no InferenceService in the manifests")])
    return objects
