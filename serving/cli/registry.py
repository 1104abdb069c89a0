"""`servegate registry ...`: register model versions, move aliases, set promotion gates, read the
audit log.

Which registry, like MLflow's tracking URI, found by one rule (`_registry_url`): the first of
`--registry`, `--url`, SERVEGATE_REGISTRY_URL and SERVEGATE_URL. `--url` and SERVEGATE_URL name a
gateway, as they do for `servegate get` and `apply`; `--registry` and SERVEGATE_REGISTRY_URL either
a gateway (`http://...`, `https://...`) or a SQLAlchemy database URL used directly, with
`--artifacts` as its artifact store. A gateway is spoken to through `RegistryClient`, with the
token of `--token` / `--token-file` (else SERVEGATE_TOKEN, else the admin token in `--state-dir`
for a gateway on this machine). With none of the four, the database and artifacts live under
`--state-dir` (`.servegate`), where `servegate up` keeps its state.

A registry error prints `error: MESSAGE` on stderr and exits 1; bad arguments are usage errors
(exit 2).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from click.core import ParameterSource

from serving.cli._options import given_token, output_option, token_options, with_token_hint
from serving.cli._output import dump, fail, print_table
from serving.cli._registry_args import parse_gate, parse_pairs, parse_ref

if TYPE_CHECKING:
    from serving.registry import Registry, RegistryUri
    from serving.registry.client import RegistryClient

__all__ = ["registry"]

_FORMATS = ("onnx", "pytorch", "sklearn", "python")
_GATEWAY_SCHEMES = ("http://", "https://")
F = TypeVar("F", bound=Callable[..., Any])


class _Ref(click.ParamType):
    """A `parse_ref` argument; `versioned` takes only NAME/VERSION."""

    def __init__(self, versioned: bool = False) -> None:
        self.versioned = versioned
        self.name = "NAME/VERSION" if versioned else "NAME[/VERSION|@ALIAS]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> RegistryUri:
        from serving.registry import RegistryError

        try:
            ref = parse_ref(str(value))
        except RegistryError as exc:
            self.fail(exc.message, param, ctx)
        if self.versioned and ref.version is None:
            self.fail(f"'{value}' names no version: use NAME/VERSION, e.g. mlp/3", param, ctx)
        return ref


def _pairs_option(flag: str, dest: str, what: str, numeric: bool = False) -> Callable[[F], F]:
    def convert(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> dict[str, Any]:
        try:
            return parse_pairs(values, numeric=numeric)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None

    return click.option(
        flag, dest, multiple=True, metavar="KEY=VALUE", callback=convert, help=f"{what} (repeatable)."
    )


_output_option = output_option()

# -- the backend ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    """Which registry the group's options name."""

    url: str | None
    artifacts: str | None
    state_dir: Path
    #: the CA certificate an https gateway's certificate is checked against (None: SERVEGATE_CA_CERT).
    ca_cert: Path | None = None
    #: --token / --token-file (None: found by `serving._credentials.resolve_token`).
    token: str | None = None
    token_file: Path | None = None

    @property
    def is_gateway(self) -> bool:
        return self.url is not None and self.url.lower().startswith(_GATEWAY_SCHEMES)

    def open(self) -> Registry | RegistryClient:
        if self.is_gateway:
            from serving._credentials import CredentialsError, resolve_token
            from serving.client import ServegateError
            from serving.registry.client import RegistryClient
            from serving.registry.types import default_actor

            try:  # the admin token of a local gateway is in this --state-dir
                token = resolve_token(
                    self.token, self.url, token_file=self.token_file, state_dir=self.state_dir
                )
            except CredentialsError as exc:
                raise ServegateError(str(exc)) from None
            return RegistryClient(self.url, token=token, actor=default_actor(), ca_cert=self.ca_cert)
        from serving.registry import Registry, RegistryConfig

        defaults = RegistryConfig.from_env(self.state_dir)
        return Registry(RegistryConfig(self.url or defaults.url, self.artifacts or defaults.artifacts))


@contextlib.contextmanager
def _backend(target: _Target) -> Iterator[Registry | RegistryClient]:
    """The registry for one command; any error it raises becomes `error: ...` and exit status 1."""
    from serving.client import GatewayUnreachable, ServegateError
    from serving.registry import RegistryError

    try:
        with contextlib.closing(target.open()) as backend:
            yield backend
    except GatewayUnreachable as exc:
        fail(f"cannot reach the gateway at {exc.url} (is `servegate up` running?)")
    except (RegistryError, ServegateError) as exc:
        # A registry's own errors are never 401: that status is the gateway's, asking for a token.
        fail(with_token_hint(exc.message, exc.status))


def _registry_url(ctx: click.Context, registry_url: str | None, gateway_url: str | None) -> str | None:
    """The one rule: `--registry`, else `--url`, else SERVEGATE_REGISTRY_URL, else SERVEGATE_URL;
    None for the database in the state dir. A flag beats a variable, and of two flags or two
    variables the registry's own wins. `--url` and SERVEGATE_URL are gateways (http:// implied)."""
    given = ctx.get_parameter_source("url") is ParameterSource.COMMANDLINE
    if registry_url and given:
        return registry_url
    gateway_url = gateway_url or (None if registry_url else os.environ.get("SERVEGATE_URL"))
    if gateway_url:
        gateway_url = gateway_url.rstrip("/")
        return gateway_url if "://" in gateway_url else f"http://{gateway_url}"
    return registry_url


def _emit(value: Any, output: str, text: Callable[[], str]) -> None:
    click.echo(dump(value, output) if output != "table" else text())


# -- commands -------------------------------------------------------------------------------------


@click.group()
@click.option(
    "--registry",
    "url",
    metavar="URL",
    envvar="SERVEGATE_REGISTRY_URL",
    show_default="SERVEGATE_REGISTRY_URL; see above",
    help="A gateway (http://HOST:PORT) or a SQLAlchemy database URL (sqlite:///PATH, postgresql+psycopg://...).",
)
@click.option(
    "--url",
    "gateway_url",
    metavar="URL",
    show_default="SERVEGATE_URL",
    help="A gateway (`servegate up`), as for `servegate get`: the registry commands talk to it.",
)
@token_options
@click.option(
    "--artifacts",
    metavar="PATH|s3://BUCKET/PREFIX",
    envvar="SERVEGATE_ARTIFACTS",
    show_default="SERVEGATE_ARTIFACTS, else STATE_DIR/artifacts",
    help="The artifact store of a database registry (a gateway uses its own).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SERVEGATE_STATE_DIR",
    default=Path(".servegate"),
    show_default=True,
    help="Where the default database and artifacts live (servegate up's state dir).",
)
@click.option(
    "--ca-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="SERVEGATE_CA_CERT",
    help="CA certificate (PEM) to check an https gateway's certificate with [default: SERVEGATE_CA_CERT].",
)
@click.pass_context
def registry(
    ctx: click.Context,
    url: str | None,
    gateway_url: str | None,
    artifacts: str | None,
    state_dir: Path,
    ca_cert: Path | None,
) -> None:
    """Model versions, aliases and promotion gates.

    Which registry: the first of --registry, --url, SERVEGATE_REGISTRY_URL and SERVEGATE_URL,
    else the database in --state-dir. So with SERVEGATE_URL set (or --url given), these commands
    talk to that gateway, like `servegate get` and `apply` do; --registry also takes a database
    URL.

    \b
    servegate registry register mlp model.onnx --metric accuracy=0.97
    servegate registry alias mlp production 3
    servegate registry --url http://127.0.0.1:8080 list
    """
    token, token_file = given_token(ctx)
    ctx.obj = _Target(_registry_url(ctx, url, gateway_url), artifacts, state_dir, ca_cert, token, token_file)


@registry.command()
@click.argument("name")
@click.argument("source", metavar="PATH_OR_URI")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(_FORMATS, case_sensitive=False),
    help="The artifact's format (default: inferred from it).",
)
@_pairs_option("--metric", "metrics", "A number the version scored, e.g. accuracy=0.97", numeric=True)
@_pairs_option("--param", "params", "A training parameter, e.g. lr=0.001")
@_pairs_option("--tag", "tags", "A label, e.g. team=search")
@click.option("--description", default="", help="What this version is.")
@click.option("--run", metavar="RUN_ID", help="The pipeline run that made it.")
@click.option("--dataset", metavar="HASH", help="The dataset it was trained on.")
@_output_option
@click.pass_obj
def register(
    target: _Target,
    name: str,
    source: str,
    fmt: str | None,
    metrics: dict[str, float],
    params: dict[str, str],
    tags: dict[str, str],
    description: str,
    run: str | None,
    dataset: str | None,
    output: str,
) -> None:
    """Register PATH_OR_URI as the next version of model NAME.

    PATH_OR_URI: a file or folder, file://, s3:// or http(s)://, or FILE.py:Class (python).
    """
    from serving.cli._registry_output import registered_line

    with _backend(target) as backend:
        version = backend.register(
            name,
            source,
            format=fmt.lower() if fmt else None,
            metrics=metrics,
            params=params,
            tags=tags,
            description=description,
            run=run,
            dataset=dataset,
        )
    _emit(version.as_dict(), output, lambda: registered_line(version))


@registry.command(name="list")
@_output_option
@click.pass_obj
def list_models(target: _Target, output: str) -> None:
    """List the registered models."""
    from serving.cli._registry_output import MODEL_COLUMNS, model_rows

    with _backend(target) as backend:
        models = backend.models()
    if output != "table":
        click.echo(dump([m.as_dict() for m in models], output))
    elif not models:
        click.echo("No models registered.", err=True)
    else:
        print_table(MODEL_COLUMNS, model_rows(models, time.time()))


@registry.command()
@click.argument("ref", metavar="NAME[/VERSION|@ALIAS]", type=_Ref())
@_output_option
@click.pass_obj
def show(target: _Target, ref: RegistryUri, output: str) -> None:
    """Show a model (aliases, gates, versions), or one version in detail.

    \b
    servegate registry show mlp
    servegate registry show mlp/3
    servegate registry show mlp@production
    """
    from serving.cli._registry_output import describe_model, describe_version

    with _backend(target) as backend:
        if ref.version is None and ref.alias is None:
            model, versions = backend.model(ref.model), backend.versions(ref.model)
            value = model.as_dict() | {"versions": [v.as_dict() for v in versions]}
            _emit(value, output, lambda: describe_model(model, versions, time.time()))
            return
        version = backend.resolve(str(ref))
    _emit(version.as_dict(), output, lambda: describe_version(version, time.time()))


@registry.command()
@click.argument("name")
@click.argument("alias")
@click.argument("version", type=click.IntRange(min=1), required=False)
@click.option("--delete", is_flag=True, help="Remove the alias instead.")
@_output_option
@click.pass_obj
def alias(target: _Target, name: str, alias: str, version: int | None, delete: bool, output: str) -> None:
    """Point ALIAS of model NAME at VERSION (moving it), or remove it with --delete.

    \b
    servegate registry alias mlp production 3
    servegate registry alias mlp staging --delete
    """
    if (version is None) == (not delete):
        raise click.UsageError(
            "give either VERSION or --delete, not both" if delete else "give VERSION or --delete"
        )
    with _backend(target) as backend:
        if delete:
            model = backend.delete_alias(name, alias)
            message = f"deleted alias {alias} of {name}"
        else:
            model = backend.set_alias(name, alias, version)  # type: ignore[arg-type]
            message = f"{name}@{alias} -> version {version}"
    _emit(model.as_dict(), output, lambda: message)


@registry.command()
@click.argument("ref", metavar="NAME/VERSION", type=_Ref(versioned=True))
@_output_option
@click.pass_obj
def archive(target: _Target, ref: RegistryUri, output: str) -> None:
    """Archive a version: it keeps its number and stays resolvable, but takes no alias."""
    with _backend(target) as backend:
        version = backend.archive(ref.model, ref.version)  # type: ignore[arg-type]
    _emit(version.as_dict(), output, lambda: f"archived {version.model} version {version.version}")


@registry.command()
@click.argument("ref", metavar="NAME/VERSION", type=_Ref(versioned=True))
@click.option("--revoke", is_flag=True, help="Stop trusting it instead.")
@_output_option
@click.pass_obj
def trust(target: _Target, ref: RegistryUri, revoke: bool, output: str) -> None:
    """Trust a version to run code as it loads, or stop with --revoke (a gateway wants an admin token).

    A python model, a pickled scikit-learn model or a torch.export archive runs code from its
    author when it loads, so it is served only once trusted. Trust only what you would run
    yourself. ONNX, TorchScript and skops versions need no trust.

    \b
    servegate registry trust fraud/3
    servegate registry trust fraud/3 --revoke
    """
    with _backend(target) as backend:
        version = backend.trust(ref.model, ref.version, not revoke)  # type: ignore[arg-type]
    where = f"{version.model} version {version.version}"
    message = f"no longer trusting {where}" if revoke else f"trusted {where}: it may run code as it loads"
    _emit(version.as_dict(), output, lambda: message)


@registry.command()
@click.argument("name")
@_output_option
@click.pass_obj
def history(target: _Target, name: str, output: str) -> None:
    """Every change to model NAME, oldest first: who did what when."""
    from serving.cli._registry_output import HISTORY_COLUMNS, history_rows

    with _backend(target) as backend:
        entries = backend.history(name)
    if output != "table":
        click.echo(dump([e.as_dict() for e in entries], output))
    else:
        print_table(HISTORY_COLUMNS, history_rows(entries))


@registry.command()
@click.argument("name")
@click.argument("expressions", metavar="[METRIC OP THRESHOLD]...", nargs=-1)
@click.option(
    "--alias",
    "alias_name",
    default="production",
    show_default=True,
    help="The alias the gates guard.",
)
@click.option("--clear", is_flag=True, help="Remove the alias's gates.")
@_output_option
@click.pass_obj
def gate(
    target: _Target, name: str, expressions: tuple[str, ...], alias_name: str, clear: bool, output: str
) -> None:
    """Set the promotion gates of one alias of model NAME, replacing its old ones.

    The alias then only moves to a version whose metrics pass every gate. OP is one of
    >= > <= < == (quote the expression for the shell). The other aliases' gates are kept.

    \b
    servegate registry gate mlp 'accuracy>=0.95' 'latency_ms<20'
    servegate registry gate mlp --alias staging 'accuracy>=0.9'
    servegate registry gate mlp --clear
    """
    if bool(expressions) == clear:
        raise click.UsageError(
            "give gate expressions or --clear, not both" if clear else "give gate expressions or --clear"
        )
    try:
        gates = [parse_gate(text, alias_name) for text in expressions]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="METRIC OP THRESHOLD") from None
    with _backend(target) as backend:
        kept = [g for g in backend.model(name).gates if g.alias != alias_name]
        model = backend.set_gates(name, kept + gates)
    where = f"{name}@{alias_name}"
    message = (
        (f"gates of {where}: " + ", ".join(map(str, gates))) if gates else f"removed the gates of {where}"
    )
    _emit(model.as_dict(), output, lambda: message)
