"""Argument types shared by the CLI's commands (parsing only; no side effects)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import click

__all__ = ["ByteSize", "listen_options", "output_option", "server_options"]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


class ByteSize(click.ParamType):
    """A size such as 1048576, 64MiB or 1.5GB."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = _SIZE.match(str(value))
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            self.fail(f"'{value}' is not a size (examples: 1048576, 64MiB, 1GB)", param, ctx)
        size = int(float(match.group(1)) * _UNITS[unit])
        if size <= 0:
            self.fail("the size must be positive", param, ctx)
        return size


F = TypeVar("F", bound=Callable[..., Any])


def _options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


#: where a server listens: `--host`, `--http-port`, `--grpc-port` (replica and gateway alike).
listen_options = _options(
    click.option("--host", default="0.0.0.0", show_default=True, help="Interface to listen on."),
    click.option(
        "--http-port",
        type=click.IntRange(0, 65535),
        default=8080,
        show_default=True,
        help="REST port (0: any free port).",
    ),
    click.option(
        "--grpc-port",
        type=click.IntRange(0, 65535),
        default=8081,
        show_default=True,
        help="gRPC port (0: any free port).",
    ),
)

#: how a server takes requests and stops: body limit, drain timeout, access log, log level.
server_options = _options(
    click.option(
        "--max-body-size",
        type=ByteSize(),
        default="256MiB",
        show_default=True,
        help="Largest request body or gRPC message accepted.",
    ),
    click.option(
        "--drain-timeout",
        type=click.FloatRange(0),
        default=30.0,
        show_default=True,
        help="Seconds stopping waits for in-flight requests.",
    ),
    click.option("--access-log", is_flag=True, help="Log every HTTP request."),
    click.option(
        "--log-level",
        type=click.Choice(["debug", "info", "warning", "error"]),
        default="info",
        show_default=True,
    ),
)


def output_option(help: str = "Text for people, or the objects as JSON or YAML.") -> Callable[[F], F]:
    """`-o table|json|yaml`, the output choice of every command that prints objects."""
    return click.option(
        "-o",
        "--output",
        type=click.Choice(["table", "json", "yaml"]),
        default="table",
        show_default=True,
        help=help,
    )
