"""`servegate pipeline ...`: run a pipeline (local processes or Ray), list runs, show one, follow
lineage. The metadata store is SQLite under `--state-dir` unless `--metadata-url` names another
database; artifacts and logs live under `--state-dir/pipelines/`.

A pipeline that cannot run as written (a cycle, a type mismatch, a missing parameter, an unknown
executor) is a usage error (exit 2) listing every problem; a run with a failed step exits 1.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click

from serving.cli._options import output_option
from serving.cli._output import dump, fail
from serving.cli._registry_args import parse_pairs

__all__ = ["pipeline_group"]

_state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".servegate"),
    show_default=True,
    envvar="SERVEGATE_STATE_DIR",
    help="Where runs' artifacts, logs and (by default) the metadata store live.",
)
_metadata_option = click.option(
    "--metadata-url",
    help="The metadata store's database (SQLAlchemy URL) "
    "[default: SERVEGATE_METADATA_URL, else sqlite:///STATE_DIR/pipelines.db].",
)
_output_option = output_option()


def _store(state_dir: Path, url: str | None) -> Any:
    from serving.pipelines.metadata import MetadataStore, default_url

    return MetadataStore(url or default_url(state_dir))


@click.group("pipeline")
def pipeline_group() -> None:
    """Run pipelines and look at their runs, artifacts and lineage."""


@pipeline_group.command()
@click.argument("target", metavar="FILE.py[:PIPELINE]")
@click.option(
    "--param", "params", multiple=True, metavar="KEY=VALUE", help="A pipeline parameter (repeatable)."
)
@click.option("--executor", default="local", show_default=True, help="local (processes) or ray.")
@click.option("--ray-address", help="A running Ray cluster for --executor ray [default: start a local one].")
@click.option(
    "--parallel", type=click.IntRange(1), help="Steps at once with --executor local [default: CPU cores]."
)
@click.option("--no-cache", is_flag=True, help="Run every step, even unchanged ones.")
@_state_dir_option
@_metadata_option
def run(
    target: str,
    params: tuple[str, ...],
    executor: str,
    ray_address: str | None,
    parallel: int | None,
    no_cache: bool,
    state_dir: Path,
    metadata_url: str | None,
) -> None:
    """Run a pipeline and show its steps as they go.

    \b
    servegate pipeline run examples/digits_pipeline.py --param epochs=20
    servegate pipeline run pipelines.py:nightly --executor ray --ray-address 10.0.0.5:6379
    """
    from serving.pipelines.backends import BACKENDS, BackendError, backend_for
    from serving.pipelines.compiler import coerce_params, compile_pipeline, load_pipeline
    from serving.pipelines.executor import execute
    from serving.pipelines.types import PipelineError

    try:
        raw = parse_pairs(params)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--param") from None
    problems: list[str] = []
    if executor not in BACKENDS:
        problems.append(f"--executor: unknown executor '{executor}'; use {' or '.join(BACKENDS)}")
    try:
        pipe = load_pipeline(target)
        spec = compile_pipeline(pipe, coerce_params(pipe, raw))
    except PipelineError as exc:
        problems += [str(p) for p in exc.problems]
    except (OSError, ImportError, SyntaxError) as exc:
        problems.append(f"{target}: {type(exc).__name__}: {exc}")
    if problems:
        click.echo("error: the pipeline cannot run; nothing was started:", err=True)
        for problem in problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)

    from serving.cli._pipeline_output import Progress, outcome_lines

    state_dir = state_dir.resolve()
    store = _store(state_dir, metadata_url)
    progress = Progress(spec)
    env = {"SERVEGATE_STATE_DIR": str(state_dir)}
    try:
        with progress.live():
            outcome = asyncio.run(
                execute(
                    spec,
                    store,
                    backend_for(executor, ray_address, parallel),
                    state_dir,
                    use_cache=not no_cache,
                    on_event=progress.update,
                    env=env,
                )
            )
    except KeyboardInterrupt:
        fail("interrupted: the run is marked FAILED")
    except BackendError as exc:
        fail(str(exc))
    finally:
        store.close()
    for line in outcome_lines(outcome):
        click.echo(line, err=outcome.status != "SUCCEEDED")
    if outcome.status != "SUCCEEDED":
        sys.exit(1)


@pipeline_group.command()
@click.option("--pipeline", "name", help="Only runs of this pipeline.")
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
@_output_option
@_state_dir_option
@_metadata_option
def runs(name: str | None, limit: int, output: str, state_dir: Path, metadata_url: str | None) -> None:
    """List runs, newest first."""
    from serving.cli._pipeline_output import print_runs

    with _store(state_dir, metadata_url) as store:
        found = store.runs(limit=limit, pipeline=name)
    if output != "table":
        click.echo(dump([r.as_dict() for r in found], output))
    else:
        print_runs(found)


@pipeline_group.command()
@click.argument("run_id", metavar="RUN")
@click.option("--logs", "logs_of", metavar="STEP", help="Print this step's log instead.")
@_output_option
@_state_dir_option
@_metadata_option
def show(run_id: str, logs_of: str | None, output: str, state_dir: Path, metadata_url: str | None) -> None:
    """Show a run: its steps (status, attempts, durations, cache), artifacts, metrics, logs.

    RUN is a run id, a unique prefix of one, or a pipeline's name (its latest run).
    """
    from serving.cli._pipeline_output import describe_run
    from serving.pipelines.metadata import Ambiguous, MetadataError

    with _store(state_dir, metadata_url) as store:
        try:
            try:
                view = store.run(run_id)
            except Ambiguous:
                latest = store.runs(limit=1, pipeline=run_id)  # a pipeline's name: its latest run
                if not latest:
                    raise
                view = store.run(latest[0].id)
        except MetadataError as exc:
            fail(str(exc))
    if logs_of is not None:
        step = next((s for s in view.steps if s.step_id == logs_of), None)
        if step is None:
            fail(f"run {view.run.id} has no step '{logs_of}'")
        if not step.log_path or not Path(step.log_path).exists():
            fail(f"step {logs_of} has no log (status {step.status})")
        click.echo(Path(step.log_path).read_text(errors="replace"), nl=False)
        return
    if output != "table":
        click.echo(dump(view.as_dict(), output))
    else:
        click.echo(describe_run(view))


@pipeline_group.command()
@click.argument("target")
@click.option("--reverse", is_flag=True, help="What came out of TARGET, instead of what went into it.")
@_output_option
@_state_dir_option
@_metadata_option
def lineage(target: str, reverse: bool, output: str, state_dir: Path, metadata_url: str | None) -> None:
    """Where TARGET came from: a registry version (registry://NAME/VERSION), an artifact sha256
    (or a 12+ character prefix), or a run id.

    \b
    servegate pipeline lineage registry://digits/3           # which data and run produced it
    servegate pipeline lineage 9f0c1a2b3c4d --reverse        # what was made from this dataset
    """
    from serving.pipelines.metadata import MetadataError

    with _store(state_dir, metadata_url) as store:
        try:
            graph = store.descendants(target) if reverse else store.lineage(target)
        except MetadataError as exc:
            fail(str(exc))
    if output != "table":
        click.echo(dump(graph.as_dict(), output))
    else:
        for line in graph.tree():
            click.echo(line)
