"""`servegate grafana-dashboard`: the Grafana dashboard over servegate's Prometheus metrics, as JSON."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["grafana_dashboard_command"]


@click.command("grafana-dashboard")
@click.option(
    "--datasource-uid",
    metavar="UID",
    help="Read this Prometheus data source (for provisioning from a file) [default: Grafana asks "
    "for one at import].",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the dashboard to this file instead of printing it.",
)
def grafana_dashboard_command(datasource_uid: str | None, output: Path | None) -> None:
    """Print a Grafana dashboard (JSON) for a Prometheus that scrapes servegate.

    Request rate, errors by status and latency quantiles per service and revision, queue depth and
    requests in flight, replicas desired vs ready, the autoscaler's panic mode and decisions,
    replica CPU, memory and GPU, batch sizes, model load states, registry and pipeline activity;
    variables select namespace, service and revision. Import it in Grafana (Dashboards > New >
    Import) and pick the Prometheus that `servegate prometheus-config` configured:

    \b
    servegate grafana-dashboard > servegate.json
    """
    from serving.dashboard.grafana import dashboard_json

    try:
        text = dashboard_json(datasource_uid)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--datasource-uid'") from exc
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)
        click.echo(f"wrote {output}; import it in Grafana (Dashboards > New > Import)", err=True)
