"""The `servegate` command: the entry point; sub-commands live in their own modules."""

from __future__ import annotations

import os

import click

from serving import __version__
from serving.cli.grafana import grafana_dashboard_command
from serving.cli.install import install_command
from serving.cli.model import model
from serving.cli.operator import operator_command
from serving.cli.pipeline import pipeline_group
from serving.cli.prometheus import prometheus_config
from serving.cli.registry import registry
from serving.cli.render import render_command
from serving.cli.resources import RESOURCE_COMMANDS
from serving.cli.rollout import rollout_group
from serving.cli.token import token_group
from serving.cli.up import up

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="servegate")
def cli() -> None:
    """servegate: serve models over KServe V1, Open Inference Protocol V2 (REST and gRPC)."""


cli.add_command(model)
cli.add_command(pipeline_group)
cli.add_command(up)
cli.add_command(prometheus_config)
cli.add_command(grafana_dashboard_command)
cli.add_command(install_command)
cli.add_command(operator_command)
cli.add_command(registry)
cli.add_command(token_group)
cli.add_command(rollout_group)
cli.add_command(render_command)
for command in RESOURCE_COMMANDS:
    cli.add_command(command)


def main() -> None:
    # Read by gRPC when it is first imported (after this). servegate never runs Python in a forked
    # child (replicas are fork+exec), so gRPC's fork handlers would only log a warning per replica.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    cli()
