"""Argument types shared by the CLI's commands (parsing only; no side effects)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

__all__ = [
    "TOKEN_HINT",
    "ByteSize",
    "dns_label",
    "given_token",
    "listen_options",
    "manifest_paths_option",
    "output_option",
    "policy_options",
    "security_options",
    "server_options",
    "token_options",
    "with_token_hint",
]

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
    click.option(
        "--host",
        default="127.0.0.1",
        show_default=True,
        help="Interface to listen on; any but loopback needs authentication (or --insecure).",
    ),
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

_PEM = click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)

#: how a server may be reached: `--tls-cert`, `--tls-key`, `--insecure` (replica and gateway alike).
security_options = _options(
    click.option("--tls-cert", type=_PEM, help="Serve HTTPS and gRPC over TLS with this certificate (PEM)."),
    click.option("--tls-key", type=_PEM, help="The private key (PEM, unencrypted) of --tls-cert."),
    click.option(
        "--insecure",
        is_flag=True,
        help="Allow listening on a non-loopback --host with authentication off (a trusted network only).",
    ),
)


def dns_label(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A click callback: `value` (a namespace, a Secret's name) must be a DNS-1123 label."""
    from serving.spec.common import dns_label_problem

    problem = value is not None and dns_label_problem(value)
    if problem:
        raise click.BadParameter(f"{problem} (a DNS-1123 label)", ctx=ctx, param=param)
    return value


def manifest_paths_option(function: F) -> F:
    """`-f/--filename FILE|DIR|-` (repeatable): the manifests a command reads, as `paths`."""
    return click.option(
        "-f",
        "--filename",
        "paths",
        multiple=True,
        required=True,
        metavar="FILE|DIR|-",
        help="Manifest file, folder of *.yaml/*.yml/*.json, or - for stdin (repeatable).",
    )(function)


def policy_options(reads: str, default_roots: str) -> Callable[[F], F]:
    """What a server may read, fetch and run: `--storage-root`, `--allow-host`, `--trust-source`
    (replica and gateway alike; `reads` says what the storage policy applies to there)."""
    return _options(
        click.option(
            "--storage-root",
            "storage_roots",
            multiple=True,
            type=click.Path(file_okay=False, path_type=Path),
            help=f"Folder that {reads} may read models from (repeatable) [default: {default_roots}].",
        ),
        click.option(
            "--allow-host",
            "allowed_hosts",
            multiple=True,
            help="Host name, address or CIDR, optionally with :PORT, that may be fetched from although it "
            "is loopback, private or link-local, e.g. an internal model store (repeatable).",
        ),
        click.option(
            "--trust-source",
            "trusted_sources",
            multiple=True,
            metavar="PREFIX",
            help="Folder or URI prefix (s3://bucket/models/) whose models may run code as they load: "
            "python files, pickles (joblib, .pkl), torch.export archives (.pt2) (repeatable; also "
            "SERVEGATE_TRUSTED_SOURCES, comma-separated). Registry versions: `servegate registry trust`.",
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


def output_option(
    help: str = "Text for people, or the objects as JSON or YAML.", wide: bool = False
) -> Callable[[F], F]:
    """`-o table|json|yaml` (and `wide`: a table with more columns), the output choice of every
    command that prints objects."""
    return click.option(
        "-o",
        "--output",
        type=click.Choice(["table", *(["wide"] if wide else []), "json", "yaml"]),
        default="table",
        show_default=True,
        help=help,
    )


# -- who the gateway is talking to ----------------------------------------------------------------

#: where `--token` / `--token-file` are kept in the click context (shared by a group and its
#: commands), so that no command needs parameters of its own for them: read with `given_token`.
_TOKEN = "servegate.token"
_TOKEN_FILE = "servegate.token_file"
#: what an answer of 401 adds, so that the user learns how to give a token.
TOKEN_HINT = (
    "give --token or --token-file, set SERVEGATE_TOKEN, "
    "or run on the machine of `servegate up` so its admin token file is found"
)


def _remember(key: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is not None:
            ctx.meta[key] = value

    return callback


#: `--token` and `--token-file`, the bearer token of a command that talks to the gateway. Without
#: either, `serving._credentials.resolve_token` looks in SERVEGATE_TOKEN, SERVEGATE_TOKEN_FILE and,
#: for a gateway on this machine, `servegate up`'s admin token file.
token_options = _options(
    click.option(
        "--token",
        metavar="TOKEN",
        expose_value=False,
        callback=_remember(_TOKEN),
        help="Bearer token for the gateway [default: SERVEGATE_TOKEN, else the admin token of a "
        "local `servegate up`].",
    ),
    click.option(
        "--token-file",
        type=click.Path(dir_okay=False, path_type=Path),
        expose_value=False,
        callback=_remember(_TOKEN_FILE),
        help="Read the token from this file (mode 600) [default: SERVEGATE_TOKEN_FILE].",
    ),
)


def given_token(ctx: click.Context | None = None) -> tuple[str | None, Path | None]:
    """The `--token` and `--token-file` given to the running command or its group (None: not given)."""
    meta = (ctx or click.get_current_context()).meta
    return meta.get(_TOKEN), meta.get(_TOKEN_FILE)


def with_token_hint(message: str, status: int | None) -> str:
    """The gateway's message, and for a 401 (no token, or a bad one) how to give one."""
    return f"{message} ({TOKEN_HINT})" if status == 401 else message
