"""The pipelines' read API in the gateway, for the dashboard: runs, one run with its DAG, a step's
log, and lineage joined with the InferenceServices that serve a registry version. Every route needs
the read scope; nothing here writes.

    GET /api/v1/pipelines/runs?limit=50&pipeline=NAME         {"items": [run, ...]}, newest first
    GET /api/v1/pipelines/runs/{run_id}                        run + "steps", "edges", "registrations"
    GET /api/v1/pipelines/runs/{run_id}/steps/{step_id}/log?lines=200
                                                               {"lines": [...], "truncated", "available"}
    GET /api/v1/lineage?target=T&direction=up|down             {"nodes", "edges", "services", ...}

The JSON shapes are `_views.py`'s. Errors are `{"error": message}`: 400 a bad query parameter or
target (or an ambiguous id prefix), 403 a log the policy refuses to read, 404 an unknown run, step,
artifact or registry version, 503 a metadata store that cannot be opened.

The store is the one `servegate pipeline run` records into (`pipelines.db` under the state dir, or
$SERVEGATE_METADATA_URL), opened on first use (`StoreOpener`): before any run there is no
database, which reads as "no runs", not as an error. Database reads run in the thread pool: the
event loop is the data plane's. A step's log is read only from its run's folder under
`STATE_DIR/pipelines/logs/` (a cached step's: the run it reused), checked by the storage policy
after resolving, and only its last `MAX_LOG_BYTES`: the path comes from the database, which anyone
who can run a pipeline writes.

Mount order: `/api/v1/lineage` is a full-path route and the runs live under a Mount of
`/api/v1/pipelines`; both must come before the control API's `/api/v1` mount, whose
`/{plural}` and `/{plural}/{name}` routes would otherwise take them.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Awaitable, Callable
from functools import wraps
from pathlib import Path
from typing import Any

from sqlalchemy.engine.url import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount

from serving.auth.guard import Guard
from serving.auth.rest import principal_of, scoped_routes
from serving.auth.scopes import Scope
from serving.auth.storage import StoragePolicy, StorageRefused
from serving.errors import InvalidInput
from serving.pipelines._views import lineage_target, lineage_view, run_detail, run_summary
from serving.pipelines.metadata import (
    Ambiguous,
    Lineage,
    MetadataError,
    MetadataStore,
    NotFound,
    RunNotFound,
    RunView,
    StepRow,
    default_url,
)
from serving.protocol.rest import json_response, query_int

__all__ = [
    "LINEAGE_PATH",
    "MAX_LOG_BYTES",
    "MAX_LOG_LINES",
    "MAX_RUNS",
    "PREFIX",
    "StoreOpener",
    "pipeline_routes",
]

PREFIX = "/api/v1/pipelines"
LINEAGE_PATH = "/api/v1/lineage"
#: the most runs one listing returns.
MAX_RUNS = 500
#: the most log lines one request returns ...
MAX_LOG_LINES = 5000
#: ... read from at most this many bytes at the end of the file.
MAX_LOG_BYTES = 1 << 20

OpenStore = Callable[[], MetadataStore | None]
Services = Callable[[], list[dict[str, Any]]]
Endpoint = Callable[[Request], Awaitable[Response]]


class StoreOpener:
    """`opener()`: the metadata store at `url`, opened the first time it is asked for and kept
    (thread-safe), or None while its SQLite file does not exist: no run was ever recorded, and
    opening would create it. `close()` closes it (a later call opens it again)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._file = _sqlite_file(url)
        self._store: MetadataStore | None = None
        self._lock = threading.Lock()

    @classmethod
    def for_state_dir(cls, state_dir: Path) -> StoreOpener:
        """The store `servegate pipeline run --state-dir STATE_DIR` records into."""
        return cls(default_url(state_dir))

    def __call__(self) -> MetadataStore | None:
        with self._lock:
            if self._store is None:
                if self._file is not None and not self._file.exists():
                    return None
                self._store = MetadataStore(self.url)  # MetadataError: bad URL, too new, unreachable
            return self._store

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for an in-memory one, another database or a bad URL: opening
    it reports that)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser()


# -- errors ---------------------------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _error(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


def _answering_errors(endpoint: Endpoint) -> Endpoint:
    """The metadata store's errors as `{"error": ...}` with their status, whatever app the route
    is put in."""

    @wraps(endpoint)
    async def answer(request: Request) -> Response:
        try:
            return await endpoint(request)
        except _Refused as exc:
            return _error(exc.status, exc.message)
        except InvalidInput as exc:  # a bad query parameter
            return _error(400, exc.message)
        except NotFound as exc:  # RunNotFound too
            return _error(404, str(exc))
        except Ambiguous as exc:
            return _error(400, str(exc))
        except (MetadataError, SQLAlchemyError) as exc:  # unreachable, corrupt, locked for too long
            return _error(503, f"the pipelines' metadata store cannot be read: {exc}")

    return answer


async def _http_error(request: Request, exc: Exception) -> Response:
    # Starlette's own (an unknown path under the mount, a wrong method), as JSON like the rest.
    assert isinstance(exc, HTTPException)
    return json_response({"error": exc.detail}, exc.status_code)


# -- the API --------------------------------------------------------------------------------------


class _Api:
    def __init__(self, open_store: OpenStore, services: Services, state_dir: Path) -> None:
        self.open_store = open_store
        self.services = services
        self.logs_root = state_dir / "pipelines" / "logs"  # where the executor puts them (executor._Run)

    async def runs(self, request: Request) -> Response:
        limit = query_int(request, "limit", 50, 1, MAX_RUNS)
        pipeline = request.query_params.get("pipeline") or None

        def read() -> list[dict[str, Any]]:
            store = self.open_store()
            return [] if store is None else [run_summary(r) for r in store.runs(limit, pipeline)]

        return json_response({"items": await run_in_threadpool(read)})

    async def run(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        return json_response(await run_in_threadpool(lambda: run_detail(self._view(run_id))))

    async def log(self, request: Request) -> Response:
        run_id, step_id = request.path_params["run_id"], request.path_params["step_id"]
        lines = query_int(request, "lines", 200, 1, MAX_LOG_LINES)

        def read() -> dict[str, Any]:
            view = self._view(run_id)
            step = next((s for s in view.steps if s.step_id == step_id), None)
            if step is None:
                raise NotFound(f"no step {step_id!r} in run {view.run.id}")
            tail, truncated = self._tail(step, lines)
            out = {"run": view.run.id, "step": step_id, "lines": tail or [], "truncated": truncated}
            return out | {"available": tail is not None}

        return json_response(await run_in_threadpool(read))

    async def lineage(self, request: Request) -> Response:
        direction = request.query_params.get("direction", "up")
        if direction not in ("up", "down", "upstream", "downstream"):
            raise _Refused(400, f"direction must be up or down, not {direction[:40]!r}")
        try:
            target = lineage_target(request.query_params.get("target", ""))
        except ValueError as exc:
            raise _Refused(400, str(exc)) from None

        def read() -> Lineage:
            store = self.open_store()
            if store is None:
                raise NotFound(f"no run, artifact sha256 or registry version '{target}': no pipeline has run")
            return (store.lineage if direction.startswith("up") else store.descendants)(target)

        graph = await run_in_threadpool(read)
        services: list[dict[str, Any]] = []
        if graph.registrations:
            # On the loop: the services' views are the controller's, which lives there. A token
            # limited to some namespaces sees their services only, as in GET /api/v1/inferenceservices.
            namespaces = principal_of(request).namespaces
            services = [s for s in self.services() if namespaces is None or _namespace(s) in namespaces]
        return json_response(await run_in_threadpool(lineage_view, graph, services))

    # -- in the thread pool ---------------------------------------------------------------------

    def _view(self, run_id: str) -> RunView:
        store = self.open_store()
        if store is None:
            raise RunNotFound(f"no run {run_id!r}")
        return store.run(run_id)

    def _tail(self, step: StepRow, lines: int) -> tuple[list[str] | None, bool]:
        """The step's last `lines` log lines and whether there was more; None when it has no log
        (it has not started, or the file is gone). _Refused (403) for a log outside its run's folder."""
        if not step.log_path:
            return None, False
        runs = {step.run_id} | ({step.cached_from[0]} if step.cached_from else set())
        root = self.logs_root.resolve()
        # A run's folder is a child of the logs folder: a run id cannot climb out of it.
        folders = [root / r for r in sorted(runs) if (root / r).resolve().parent == root]
        try:
            path = StoragePolicy(roots=tuple(folders)).check_path(step.log_path)
        except StorageRefused:
            raise _Refused(
                403, f"the log of step {step.step_id} is not in its run's folder under {root}: not read"
            ) from None
        try:
            return _tail_lines(path, lines, MAX_LOG_BYTES)
        except OSError:  # gone, a folder, a link, not a regular file
            return None, False


def _namespace(isvc: dict[str, Any]) -> str:
    return (isvc.get("metadata") or {}).get("namespace", "default")


def _tail_lines(path: Path, lines: int, max_bytes: int) -> tuple[list[str], bool]:
    """The last `lines` lines of the file, from at most its last `max_bytes` bytes (a line cut by
    that bound is left out), and whether the file holds more."""
    # Not following a link swapped in since the check, nor waiting on a FIFO's writer.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IsADirectoryError(f"{path} is not a regular file")
        size = f.seek(0, os.SEEK_END)
        start = max(0, size - max_bytes)
        # One byte before the bound: when it is a newline, the first line read is whole.
        f.seek(max(0, start - 1))
        data = f.read(size - max(0, start - 1))
    if start > 0:
        data = data[data.find(b"\n") + 1 :] if b"\n" in data else b""
    text = data.decode("utf-8", errors="replace").splitlines()
    return text[-lines:], start > 0 or len(text) > lines


def pipeline_routes(
    open_store: OpenStore,
    guard: Guard,
    *,
    state_dir: Path,
    services: Services = list,
) -> list[BaseRoute]:
    """The pipelines' read API over the store `open_store()` gives (None: no database yet, so no
    runs), every route needing the read scope. `state_dir`: the one pipeline runs were made with,
    whose `pipelines/logs/` holds their steps' logs. `services()`: the gateway's InferenceService
    views (as `GET /api/v1/inferenceservices` lists them), called on the event loop, for lineage.

    Returns a Mount of `/api/v1/pipelines` and the route `/api/v1/lineage`: put both before the
    control API's mount (see the module's docstring)."""
    a = _Api(open_store, services, state_dir)
    route = scoped_routes(guard)

    def read(path: str, endpoint: Endpoint) -> BaseRoute:
        return route(path, _answering_errors(endpoint), Scope.READ)

    runs = Starlette(
        routes=[
            read("/runs", a.runs),
            read("/runs/{run_id}", a.run),
            read("/runs/{run_id}/steps/{step_id}/log", a.log),
        ],
        exception_handlers={HTTPException: _http_error},
    )
    return [Mount(PREFIX, app=runs), read(LINEAGE_PATH, a.lineage)]
