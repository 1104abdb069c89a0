"""`servegate model ...`: run a standalone replica (like KServe's model server), make example models."""

from __future__ import annotations

from pathlib import Path

import click
from pydantic import ValidationError

from serving.cli._options import listen_options, policy_options, security_options, server_options

__all__ = ["model"]

_FORMATS = ("onnx", "pytorch", "sklearn", "python", "triton")


class _Threads(click.ParamType):
    """`auto` (None: sized from --cpus) or a positive thread count."""

    name = "auto|N"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int | None:
        if value is None or (isinstance(value, int) and value >= 1):
            return value  # type: ignore[return-value] - the default, or already converted
        text = str(value).strip().lower()
        if text == "auto":
            return None
        if text.isascii() and text.isdigit() and int(text) >= 1:
            return int(text)
        self.fail(f"'{value}' is neither 'auto' nor a positive integer", param, ctx)


_THREADS = _Threads()


@click.group()
def model() -> None:
    """Serve models from one replica process."""


@model.command()
@click.option(
    "--model-name",
    "names",
    multiple=True,
    help="Name clients use; repeat with --model-uri for several models.",
)
@click.option(
    "--model-uri",
    "uris",
    multiple=True,
    help="Storage URI (path, file://, http(s)://, s3://, registry://NAME/VERSION or registry://NAME@ALIAS); "
    "python: an import path; triton: the server URL.",
)
@click.option(
    "--model-format",
    "formats",
    multiple=True,
    type=click.Choice(_FORMATS, case_sensitive=False),
    help="Format per model (default: from the artifact); give none, one for all, or one per model.",
)
@click.option(
    "--model-repository",
    type=click.Path(file_okay=False, path_type=Path),
    help="Serve every model in this folder (KServe/Triton layout).",
)
@listen_options
@security_options
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path),
    help="The bearer tokens this replica accepts; turns authentication on.",
)
@click.option(
    "--model-control",
    type=click.Choice(["none", "explicit"]),
    default="none",
    show_default=True,
    help="explicit: turn on the repository API that loads and unloads models (as Triton's).",
)
@policy_options(
    "load requests",
    "the working directory; models given on this command line are not limited",
)
@click.option("--no-grpc", is_flag=True, help="Do not serve gRPC.")
@click.option(
    "--max-batch-size",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Rows merged into one model call; 1 turns dynamic batching off.",
)
@click.option(
    "--max-latency-ms",
    type=click.FloatRange(0),
    default=5.0,
    show_default=True,
    help="How long a request may wait for its batch to fill, in milliseconds.",
)
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Worker processes sharing the ports, each holding every model.",
)
@click.option(
    "--threads",
    type=_THREADS,
    default="auto",
    show_default=True,
    help="Intra-op threads for ONNX Runtime / torch; auto: one per whole CPU of --cpus.",
)
@click.option(
    "--cpus",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="CPUs this replica may use, shared by its --workers (default: every core it may run on).",
)
@click.option(
    "--instances",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Model calls (or batches) that may run at once per model.",
)
@click.option("--s3-endpoint", help="S3-compatible endpoint URL (default: AWS_ENDPOINT_URL or S3_ENDPOINT).")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where downloaded models are kept (default: SERVEGATE_CACHE_DIR or ~/.cache/servegate/models).",
)
@click.option(
    "--registry-url",
    help="Model registry database for registry:// URIs (SQLAlchemy URL) "
    "[default: SERVEGATE_REGISTRY_URL, else SQLite in ./.servegate].",
)
@click.option(
    "--artifacts",
    help="The registry's artifact store: a folder or s3://bucket/prefix "
    "[default: SERVEGATE_ARTIFACTS, else ./.servegate/artifacts].",
)
@click.option(
    "--port-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the bound ports as JSON to this file once listening (for process managers).",
)
@server_options
def serve(**kw: object) -> None:
    """Serve one or more models over KServe V1, V2 REST and V2 gRPC.

    \b
    servegate model serve --model-name mlp --model-uri ./mlp.onnx
    servegate model serve --model-name a --model-uri a.onnx --model-name b --model-uri s3://bucket/b/
    servegate model serve --model-repository ./models --max-batch-size 32 --max-latency-ms 2
    servegate model serve --model-name mlp --model-uri ./mlp.onnx --tls-cert cert.pem --tls-key key.pem
    """
    from serving.cli._serve import ServeArgs, run_serve

    try:
        args = ServeArgs(**kw)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise click.UsageError(
            "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        ) from None
    run_serve(args)


@model.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=Path("models"))
@click.option("--name", default="mlp", show_default=True, help="Model name (a sub-folder of DIRECTORY).")
@click.option("--sizes", default="64,256,256,10", show_default=True, help="Layer widths of the MLP.")
def example(directory: Path, name: str, sizes: str) -> None:
    """Write an example ONNX MLP into DIRECTORY/NAME/1/model.onnx (made locally, no download)."""
    from predictors.examples import make_mlp_onnx

    try:
        widths = tuple(int(s) for s in sizes.split(","))
    except ValueError:
        raise click.BadParameter(
            f"'{sizes}' is not a comma-separated list of integers", param_hint="--sizes"
        ) from None
    if len(widths) < 2 or min(widths) < 1:
        raise click.BadParameter("give at least two positive widths", param_hint="--sizes")
    path = make_mlp_onnx(directory / name / "1" / "model.onnx", widths)
    click.echo(f"wrote {path} (input [-1, {widths[0]}] FP32 -> output [-1, {widths[-1]}] FP32)")
