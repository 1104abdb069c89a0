"""`servegate prometheus-config`: a Prometheus configuration that scrapes the gateway and its replicas."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

__all__ = ["prometheus_config"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}


class _Duration(click.ParamType):
    """A duration such as 5s, 500ms, 1m or 2.5 (seconds)."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        match = _DURATION.match(str(value))
        if match is None:
            self.fail(f"'{value}' is not a duration (examples: 5s, 500ms, 1m)", param, ctx)
        seconds = float(match.group(1)) * _SECONDS[match.group(2)]
        if seconds < 0.001:
            self.fail("the duration must be at least 1ms", param, ctx)
        return seconds


@click.command("prometheus-config")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".servegate"),
    show_default=True,
    help="The state dir of `servegate up`; its prometheus/targets.json lists the replicas.",
)
@click.option(
    "--gateway",
    default="127.0.0.1:8080",
    show_default=True,
    metavar="HOST:PORT|URL",
    help="Where the gateway serves /metrics (https://HOST:PORT for a gateway serving TLS).",
)
@click.option(
    "--ca-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The CA that signed an https gateway's certificate [default: Prometheus's system roots].",
)
@click.option(
    "--scrape-interval",
    type=_Duration(),
    default="5s",
    show_default=True,
    help="Time between two scrapes of one target.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the configuration to this file instead of printing it.",
)
def prometheus_config(
    state_dir: Path, gateway: str, ca_cert: Path | None, scrape_interval: float, output: Path | None
) -> None:
    """Print a Prometheus configuration that scrapes the gateway and every replica.

    `servegate up` lists its replicas in STATE_DIR/prometheus/targets.json and the configuration
    reads that file, so Prometheus follows replicas as they start and stop, without a restart.
    Replica series are labelled with their service, revision, replica and namespace. Run
    Prometheus with it (the Debian package `prometheus`, or a release from prometheus.io):

    \b
    servegate prometheus-config -o prometheus.yml
    prometheus --config.file prometheus.yml --storage.tsdb.path .servegate/prometheus/data
    # then, for the autoscaler: --prometheus-url http://127.0.0.1:9090
    """
    from serving.monitoring import scrape_config

    try:
        text = scrape_config(state_dir, gateway, scrape_interval, ca_cert)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--gateway'") from exc
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)
        click.echo(f"wrote {output}; run: prometheus --config.file {output}", err=True)
