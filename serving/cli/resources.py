"""`servegate apply / get / describe / delete / promote / rollback / predict`: a running gateway's
resources and models from the shell, through `serving.Client` (kubectl's verbs and output).

Every command takes `--url` (default `SERVEGATE_URL`, else http://127.0.0.1:8080), `--token` /
`--token-file` (default `SERVEGATE_TOKEN`, else the admin token of a `servegate up` on this
machine) and `--ca-cert` (default `SERVEGATE_CA_CERT`, for an https gateway's certificate):
`gateway_options`, which `servegate token` uses too. An error the gateway reports prints
`error: MESSAGE` (and each manifest problem) on stderr and exits 1; bad arguments are usage
errors (exit 2).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from serving.cli._options import (
    given_token,
    manifest_paths_option,
    output_option,
    token_options,
    with_token_hint,
)
from serving.cli._output import describe_resource, dump, fail, parse_time, print_table, rows_for

if TYPE_CHECKING:
    from serving.client import Client

__all__ = ["RESOURCE_COMMANDS", "gateway_client", "gateway_options"]

_TYPES_HELP = "TYPE is isvc (inferenceservice), tm (trainedmodel) or ig (inferencegraph)."

F = TypeVar("F", bound=Callable[..., Any])
#: where `--ca-cert` is kept for `gateway_client`, so that no command needs a parameter of its own for it.
_CA_CERT = "servegate.ca_cert"


def _remember_ca_cert(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.meta[_CA_CERT] = value


def gateway_options(function: F) -> F:
    """`--url` (a parameter of the command), `--token` / `--token-file` and `--ca-cert` (read by
    `gateway_client`)."""
    function = token_options(function)
    function = click.option(
        "--ca-cert",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        envvar="SERVEGATE_CA_CERT",
        expose_value=False,
        callback=_remember_ca_cert,
        help="CA certificate (PEM) to check an https gateway's certificate with "
        "[default: SERVEGATE_CA_CERT].",
    )(function)
    return click.option(
        "--url",
        metavar="URL",
        default=None,
        show_default="SERVEGATE_URL, else http://127.0.0.1:8080",
        help="The gateway (`servegate up`).",
    )(function)


class ResourceType(click.ParamType):
    """A resource type in any spelling `serving.client.plural_of` takes; converted to the URL plural."""

    name = "type"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from serving.client import plural_of

        try:
            return plural_of(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@contextlib.contextmanager
def gateway_client(url: str | None) -> Iterator[Client]:
    """A client for the command (`gateway_options`); any error it raises becomes `error: ...` and
    exit status 1, with how to give a token when the gateway asks for one."""
    from serving.client import Client, GatewayUnreachable, ServegateError

    token, token_file = given_token()
    ca_cert = click.get_current_context().meta.get(_CA_CERT)
    try:
        with Client(url, token=token, token_file=token_file, ca_cert=ca_cert) as client:
            yield client
    except GatewayUnreachable as exc:
        fail(f"cannot reach the gateway at {exc.url} (is `servegate up` running?)")
    except ServegateError as exc:
        fail(with_token_hint(exc.message, exc.status), exc.problems)


# -- apply ----------------------------------------------------------------------------------------


@click.command()
@manifest_paths_option
@click.option("--wait", is_flag=True, help="Wait until every applied InferenceService is Ready.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=120.0,
    show_default=True,
    help="Seconds --wait waits, for all services together.",
)
@gateway_options
def apply(paths: tuple[str, ...], wait: bool, timeout: float, url: str | None) -> None:
    """Create or update resources from manifests, all or nothing.

    \b
    servegate apply -f iris.yaml
    servegate apply -f manifests/ --wait
    cat iris.yaml | servegate apply -f -
    """
    with gateway_client(url) as client:
        result = client.apply_files(paths)
        for warning in result.warnings:
            click.echo(f"warning: {warning}", err=True)
        for applied in result.results:
            click.echo(str(applied))
        if wait:
            services = [r.name for r in result.results if r.kind == "InferenceService"]
            _wait_ready(client, services, timeout)


def _wait_ready(client: Client, names: list[str], timeout: float) -> None:
    from rich.console import Console

    from serving.client import not_ready

    console = Console(stderr=True)
    deadline = time.monotonic() + timeout
    for name in names:
        what = f"inferenceservice/{name}"
        remaining = max(deadline - time.monotonic(), 0.0)
        if not console.is_terminal:
            click.echo(f"waiting for {what} to be ready", err=True)
            client.wait_ready(name, timeout=remaining)
        else:
            with console.status(f"waiting for {what}") as spinner:

                def show(isvc: dict[str, Any], what: str = what, spinner: Any = spinner) -> None:
                    why = not_ready(isvc)  # the first reason is the telling one (PredictorReady's)
                    spinner.update(f"waiting for {what}: {why[0]}" if why else f"waiting for {what}")

                client.wait_ready(name, timeout=remaining, on_poll=show)
        click.echo(f"{what} ready")


# -- get / describe / delete ----------------------------------------------------------------------


@click.command(epilog=_TYPES_HELP)
@click.argument("plural", metavar="TYPE", type=ResourceType())
@click.argument("name", required=False)
@output_option("Table (wide: with replicas and their nodes), or the objects with their status.", wide=True)
@gateway_options
def get(plural: str, name: str | None, output: str, url: str | None) -> None:
    """List resources of a type, or show one.

    \b
    servegate get isvc
    servegate get isvc -o wide
    servegate get isvc iris -o yaml
    """
    with gateway_client(url) as client:
        items = [client.get(plural, name)] if name else client.list(plural)
        if output not in ("table", "wide"):
            # Like kubectl: one object, or a List of them (either applies again as it is).
            value = items[0] if name else {"apiVersion": "v1", "kind": "List", "items": items}
            click.echo(dump(value, output))
            return
        if not items:
            click.echo("No resources found.", err=True)
            return
        created = {}
        if plural == "inferenceservices":
            created = {i["metadata"]["name"]: _created(client, plural, i) for i in items}
        headers, rows = rows_for(plural, items, created, time.time(), wide=output == "wide")
        print_table(headers, rows)


def _created(client: Client, plural: str, obj: dict[str, Any]) -> float | None:
    """When a resource was created: `metadata.creationTimestamp` when the gateway gives one, else
    the time of its `Created` event (None when that has aged out of the event log)."""
    stamp = parse_time((obj.get("metadata") or {}).get("creationTimestamp"))
    if stamp is not None:
        return stamp
    events = client.events(plural, obj["metadata"]["name"])
    return next((parse_time(e.get("time")) for e in events if e.get("reason") == "Created"), None)


@click.command(epilog=_TYPES_HELP)
@click.argument("plural", metavar="TYPE", type=ResourceType())
@click.argument("name")
@gateway_options
def describe(plural: str, name: str, url: str | None) -> None:
    """Show a resource in detail: spec, conditions, revisions and traffic, replicas, events.

    \b
    servegate describe isvc iris
    """
    from serving.client import kind_of

    with gateway_client(url) as client:
        obj = client.get(plural, name)
        events = client.events(plural, name)
    click.echo(describe_resource(kind_of(plural), obj, events, time.time()))


@click.command(epilog=_TYPES_HELP)
@click.argument("plural", metavar="TYPE", type=ResourceType())
@click.argument("name")
@gateway_options
def delete(plural: str, name: str, url: str | None) -> None:
    """Delete a resource (an InferenceService's replicas are stopped)."""
    from serving.client import kind_of

    with gateway_client(url) as client:
        client.delete(plural, name)
    click.echo(f"{kind_of(plural).lower()}/{name} deleted")


# -- rollout --------------------------------------------------------------------------------------


@click.command()
@click.argument("name")
@gateway_options
def promote(name: str, url: str | None) -> None:
    """Give an InferenceService's canary revision all of its traffic."""
    with gateway_client(url) as client:
        click.echo(client.promote(name))


@click.command()
@click.argument("name")
@gateway_options
def rollback(name: str, url: str | None) -> None:
    """Send all of an InferenceService's traffic back to the previous rolled-out revision."""
    with gateway_client(url) as client:
        click.echo(client.rollback(name))


# -- predict --------------------------------------------------------------------------------------


@click.command()
@click.argument("name")
@click.option("-d", "--data", metavar="JSON", help="The request: a V1/V2 body, or an array of rows.")
@click.option(
    "-f",
    "--filename",
    "file",
    type=click.File("r"),
    metavar="FILE|-",
    help="Read the request (JSON) from a file, or - for stdin.",
)
@click.option(
    "--protocol",
    type=click.Choice(["v1", "v2", "grpc"]),
    default="v2",
    show_default=True,
    help="KServe V1 REST, Open Inference Protocol V2 REST, or V2 gRPC.",
)
@click.option(
    "--grpc-url",
    metavar="HOST:PORT",
    help="The gateway's gRPC address (default: SERVEGATE_GRPC_URL, else the --url host on port 8081).",
)
@gateway_options
def predict(
    name: str, data: str | None, file: Any, protocol: str, grpc_url: str | None, url: str | None
) -> None:
    """Send one inference request to model NAME and print the response.

    An array (`[[1, 2, 3]]`) becomes V1 `instances`, or the model's only V2 input, typed from its
    metadata; an object is sent as the request body as it is.

    \b
    servegate predict iris --data '[[5.1, 3.5, 1.4, 0.2]]'
    servegate predict iris -f request.json --protocol grpc
    """
    if (data is None) == (file is None):
        raise click.UsageError("give exactly one of --data and -f/--filename")
    text, hint = (data, "'--data'") if data is not None else (file.read(), "'-f' / '--filename'")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=hint) from None
    with gateway_client(url) as client:
        response = client.predict(name, payload, protocol=protocol, grpc_url=grpc_url)
    click.echo(dump(response, "json"))


RESOURCE_COMMANDS = (apply, get, describe, delete, promote, rollback, predict)
