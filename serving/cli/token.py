"""`servegate token create / list / revoke`: the gateway's tokens, through its token API (admin only).

A new token is printed once, on stdout alone so that scripts can keep it
(`TOKEN=$(servegate token create ci --role deployer)`); the gateway keeps only its hash. Every
command takes the gateway options of `servegate get` (`--url`, `--token`, ...): on the machine of
`servegate up`, its admin token is found without them.
"""

from __future__ import annotations

import time
from typing import Any

import click

from serving.cli._options import output_option
from serving.cli._output import dump, format_age, print_table
from serving.cli.resources import gateway_client, gateway_options

__all__ = ["ROLES", "token_group"]

#: `serving.auth.scopes.Role`'s values (a test holds them equal); not imported, so that the CLI
#: starts without loading serving.auth and gRPC with it.
ROLES = ("viewer", "predictor", "deployer", "admin")
COLUMNS = ("NAME", "ROLE", "NAMESPACES", "SERVICES", "CREATED BY", "AGE", "EXPIRES")


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """`--expires` checked before anything is sent (the gateway checks it again)."""
    if value is None:
        return None
    from serving.auth.tokens import parse_duration

    try:
        parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None
    return value.strip()


def expiry_text(expires: float | None, now: float) -> str:
    """`never`, `in 29d`, or `expired 3h ago`."""
    if expires is None:
        return "never"
    if expires <= now:
        return f"expired {format_age(expires, now)} ago"
    return f"in {format_age(now, expires)}"


def token_rows(tokens: list[dict[str, Any]], now: float) -> list[list[str]]:
    """The rows of `token list`: `*` for a token not limited to some namespaces or services."""
    return [
        [
            t["name"],
            t["role"],
            ",".join(t.get("namespaces") or ()) or "*",
            ",".join(t.get("services") or ()) or "*",
            t.get("createdBy") or "",
            format_age(t.get("created"), now),
            expiry_text(t.get("expires"), now),
        ]
        for t in tokens
    ]


@click.group("token")
def token_group() -> None:
    """Make, list and revoke the gateway's tokens (an admin token is needed).

    \b
    servegate token create ci --role deployer --namespace team-a --expires 30d
    servegate token list
    servegate token revoke ci
    """


@token_group.command()
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(ROLES), help="What the token may do.")
@click.option(
    "--namespace",
    "namespaces",
    multiple=True,
    metavar="NS",
    help="Limit the token to this namespace (repeatable) [default: every namespace].",
)
@click.option(
    "--service",
    "services",
    multiple=True,
    metavar="NAME",
    help="Limit the token to this InferenceService (repeatable) [default: every service].",
)
@click.option(
    "--expires",
    metavar="DURATION",
    callback=_duration,
    help="Lifetime, such as 12h, 30d or 2w [default: never expires].",
)
@gateway_options
def create(
    name: str,
    role: str,
    namespaces: tuple[str, ...],
    services: tuple[str, ...],
    expires: str | None,
    url: str | None,
) -> None:
    """Make token NAME and print it: the only time it is shown.

    \b
    viewer     reads status, events, the registry and pipeline records
    predictor  sends inference requests
    deployer   applies, deletes, promotes, rolls back, registers, moves aliases (and reads, predicts)
    admin      everything, tokens included
    """
    with gateway_client(url) as client:
        made = client.create_token(name, role, namespaces=namespaces, services=services, expires=expires)
    click.echo(made["token"])
    limits = [f"namespaces {', '.join(namespaces)}"] if namespaces else []
    limits += [f"services {', '.join(services)}"] if services else []
    expires_at, created = made.get("expires"), made.get("created") or time.time()
    until = f", expires {expiry_text(expires_at, created)}" if expires_at else ""
    click.echo(
        f"token '{name}' ({role}{'; ' + '; '.join(limits) if limits else ''}{until}) created: "
        "keep it now, it will not be shown again",
        err=True,
    )


@token_group.command(name="list")
@output_option("Table, or the tokens as JSON or YAML (never their secrets).")
@gateway_options
def list_tokens(output: str, url: str | None) -> None:
    """List the tokens (never their secrets)."""
    with gateway_client(url) as client:
        tokens = client.tokens()
    if output != "table":
        click.echo(dump(tokens, output))
    elif not tokens:
        click.echo("No tokens.", err=True)
    else:
        print_table(COLUMNS, token_rows(tokens, time.time()))


@token_group.command()
@click.argument("name")
@gateway_options
def revoke(name: str, url: str | None) -> None:
    """Revoke token NAME: it stops working at once."""
    with gateway_client(url) as client:
        client.revoke_token(name)
    click.echo(f"token '{name}' revoked")
