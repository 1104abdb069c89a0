"""The dashboard's routes on the gateway's port: the page at `/` and its files under `/ui/`, the login
that turns a token into a session cookie, live updates (server-sent events), and the JSON the page
needs beyond the control API (a service's metric history, a replica's log).

The page and its files hold no data, so anyone may load them (`Scope.PAGE`); everything they show
comes from routes that declare their own scope, checked by the same guard as for a CLI's token.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import mimetypes
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute

from autoscaler.sources import MetricSourceError
from autoscaler.sources.promql import PromQLSource
from serving.api import resource_target, visible_to
from serving.auth import Guard, Scope
from serving.auth.guard import ANONYMOUS, bearer
from serving.auth.rest import principal_of, scoped_routes, session_cookie
from serving.auth.scopes import Principal
from serving.auth.sessions import SESSION_COOKIE, SessionCookie
from serving.controller.controller import Controller, NotFound
from serving.dashboard.history import MetricHistory
from serving.dashboard.prom_history import prometheus_series
from serving.errors import InvalidInput, ServingError, Unauthenticated
from serving.protocol.rest import error_response, query_int

__all__ = ["STATIC_DIR", "Dashboard"]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: what the page may load: its own files only, nothing from another origin, never framed.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}
_LOGIN_BODY_LIMIT = 4096
_MAX_MINUTES = 60
#: a week: Prometheus keeps 15 days by default.
_MAX_MINUTES_PROMETHEUS = 7 * 24 * 60
_MAX_LOG_LINES = 2000


class Dashboard:
    """The page's routes, the metric history behind its charts and the live feed.

    history: sampled by `run()` while the gateway runs, what the charts show without a Prometheus;
    prometheus: where the charts come from when the gateway has one (`--prometheus-url`), for
    windows up to a week; live_interval_s: how often an open page gets the services' state (one
    computation per interval, shared by every open page).
    """

    def __init__(
        self,
        controller: Controller,
        guard: Guard,
        history: MetricHistory,
        *,
        prometheus: PromQLSource | None = None,
        static_dir: Path = STATIC_DIR,
        live_interval_s: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.controller = controller
        self.guard = guard
        self.history = history
        self.prometheus = prometheus
        self.live_interval_s = live_interval_s
        self._clock = clock
        self._files = _static_files(static_dir)
        self._closed = asyncio.Event()
        self._snapshot: tuple[float, list[dict[str, Any]]] = (float("-inf"), [])

    # -- lifecycle ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Sample the metric history until `close()`."""
        while not self._closed.is_set():
            self.history.sample(self._clock())
            for service in self.history.services() - set(self.controller.services):
                self.history.forget(service)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), self.history.step_s)

    def close(self) -> None:
        """End the live streams (a server shutting down waits for open responses)."""
        self._closed.set()

    def routes(self) -> list[BaseRoute]:
        route = scoped_routes(self.guard)
        service = functools.partial(resource_target, self.controller)
        item = "/api/v1/inferenceservices/{name}"
        return [
            route("/", self.page, Scope.PAGE),
            route("/ui/login", self.login, Scope.PAGE, "POST"),
            route("/ui/logout", self.logout, Scope.PAGE, "POST"),
            route("/ui/live", self.live, Scope.READ),
            route("/ui/{path:path}", self.file, Scope.PAGE),
            route("/api/v1/session", self.session, Scope.PAGE),
            route(item + "/history", self.service_history, Scope.READ, target=service),
            route(item + "/replicas/{replica}/log", self.replica_log, Scope.READ, target=service),
        ]

    # -- the page ----------------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        return self._serve("index.html")

    async def file(self, request: Request) -> Response:
        return self._serve(request.path_params["path"])

    def _serve(self, name: str) -> Response:
        # Only the files found at start-up: a path from the URL never reaches the file system.
        path = self._files.get(name)
        if path is None:
            return JSONResponse({"error": f"no dashboard file '{name}'"}, 404)
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        headers = {**SECURITY_HEADERS, "cache-control": "no-cache"}
        return FileResponse(path, media_type=media_type, headers=headers)

    # -- sessions ----------------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        """`{"token": ...}` -> a session cookie and the session's CSRF token."""
        if not request.headers.get("content-type", "").startswith("application/json"):
            # A form posted from another site cannot send JSON without a CORS preflight.
            return JSONResponse({"error": 'send the token as JSON: {"token": "..."}'}, 415)
        body = await request.body()
        if len(body) > _LOGIN_BODY_LIMIT:
            return JSONResponse({"error": "the login body is too large"}, 413)
        try:
            token = json.loads(body)["token"]
            if not isinstance(token, str) or not token.strip():
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'the body must be {"token": "<a servegate token>"}'}, 400)
        sessions = self.guard.sessions
        if sessions is None:  # authentication is off: there is nobody to log in as
            return JSONResponse(_who(ANONYMOUS, "", auth=False))
        try:
            session, principal = sessions.open(token.strip())
        except ServingError as exc:
            log.warning("dashboard: a login from %s failed: %s", _client(request), exc.message)
            return error_response(exc)
        log.info("dashboard: %s logged in from %s", principal.name, _client(request))
        response = JSONResponse(_who(principal, session.csrf, auth=True))
        response.set_cookie(
            SESSION_COOKIE,
            session.id,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    async def logout(self, request: Request) -> Response:
        sessions, cookie = self.guard.sessions, session_cookie(request.scope)
        if sessions is not None and cookie is not None:
            try:
                sessions.principal(cookie)  # the CSRF check: another site may not log a user out
            except Unauthenticated:
                pass  # already ended
            except ServingError as exc:
                return error_response(exc)
            sessions.close(cookie.session_id)
        response = JSONResponse({"message": "logged out"})
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    async def session(self, request: Request) -> Response:
        """Who the page is logged in as (401: show the login form)."""
        if not self.guard.enabled:
            return JSONResponse(_who(ANONYMOUS, "", auth=False))
        try:
            authorization = request.headers.get("authorization")
            sessions = self.guard.sessions
            if authorization is not None or sessions is None:
                return JSONResponse(_who(self._bearer(authorization), "", auth=True))
            cookie = session_cookie(request.scope)
            found = sessions.find(cookie.session_id) if cookie is not None else None
            if cookie is None or found is None:
                raise Unauthenticated("not logged in")
            principal = sessions.principal(SessionCookie(cookie.session_id, False, None))
            return JSONResponse(_who(principal, found.csrf, auth=True))
        except ServingError as exc:
            return error_response(exc)

    def _bearer(self, authorization: str | None) -> Principal:
        assert self.guard.authenticator is not None
        return self.guard.authenticator.authenticate(bearer(authorization))

    # -- live updates ------------------------------------------------------------------------------

    async def live(self, request: Request) -> Response:
        """Server-sent events: `services` (the InferenceService list, as `GET /api/v1/inferenceservices`
        answers it) every `live_interval_s`, until the page goes, its session or token ends (a last
        `ended` event), or the gateway stops."""
        principal = principal_of(request)
        authorization = request.headers.get("authorization")
        cookie = session_cookie(request.scope) if authorization is None else None

        async def events() -> AsyncIterator[str]:
            yield f"retry: {int(self.live_interval_s * 1000)}\n\n"
            while True:
                try:  # a token revoked, a session logged out or expired: the stream ends with it
                    self.guard.check(Scope.READ, authorization, None, cookie)
                except ServingError as exc:
                    yield f"event: ended\ndata: {json.dumps({'error': exc.message})}\n\n"
                    return
                items = visible_to(principal, self._services())
                yield f"event: services\ndata: {json.dumps({'items': items}, separators=(',', ':'))}\n\n"
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), self.live_interval_s)
                if self._closed.is_set():
                    return

        headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    def _services(self) -> list[dict[str, Any]]:
        """The services' views, computed at most once per interval however many pages are open."""
        now = time.monotonic()
        at, items = self._snapshot
        if now - at >= self.live_interval_s * 0.9:
            items = self.controller.list("InferenceService")
            self._snapshot = (now, items)
        return items

    # -- a service's history and a replica's log ---------------------------------------------------

    async def service_history(self, request: Request) -> Response:
        name = request.path_params["name"]
        longest = _MAX_MINUTES_PROMETHEUS if self.prometheus is not None else _MAX_MINUTES
        try:
            minutes = query_int(request, "minutes", 60, 1, longest)
            self.controller.get("InferenceService", name)
        except (InvalidInput, NotFound) as exc:
            return _failure(exc)
        now = self._clock()
        since = now - minutes * 60
        out: dict[str, Any] = {}
        if self.prometheus is not None:
            try:
                out = await prometheus_series(self.prometheus, name, since, now) | {"source": "prometheus"}
            except MetricSourceError as exc:
                out = {"warning": f"{exc}; showing the gateway's own history (the last hour)"}
        if "source" not in out:
            out |= self.history.series(name, since) | {"source": "gateway"}
        out["decisions"] = [
            decision
            for event in self.controller.events("InferenceService", name)
            if event["reason"] == "Scaled" and event["time"] >= since
            if (decision := _decision(event)) is not None
        ]
        return JSONResponse(out)

    async def replica_log(self, request: Request) -> Response:
        name, replica = request.path_params["name"], request.path_params["replica"]
        try:
            lines = query_int(request, "lines", 200, 1, _MAX_LOG_LINES)
            self.controller.get("InferenceService", name)
        except (InvalidInput, NotFound) as exc:
            return _failure(exc)
        engine = self.controller.engine
        for revision, owner in self.controller.revision_owners().items():
            if owner == name and (found := await engine.replica_log(revision, replica, lines)) is not None:
                return JSONResponse({"replica": replica, "revision": revision, "lines": found})
        return JSONResponse({"error": f"InferenceService '{name}' has no replica '{replica}'"}, 404)


def _static_files(root: Path) -> dict[str, Path]:
    """Every file under `root`, by its path relative to it (with / separators)."""
    if not root.is_dir():
        return {}
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "?"


def _who(principal: Principal, csrf: str, *, auth: bool) -> dict[str, Any]:
    return {
        "name": principal.name,
        "role": principal.role.value if principal.role else ("admin" if not auth else ""),
        "csrf": csrf,
        "canDeploy": Scope.DEPLOY in principal.scopes,
        "auth": auth,
    }


def _failure(exc: Exception) -> Response:
    if isinstance(exc, ServingError):
        return error_response(exc)
    return JSONResponse({"error": str(exc.args[0]) if exc.args else "not found"}, 404)


_CHANGE = re.compile(r"(?P<start>\d+) -> (?P<end>\d+)")


def _decision(event: dict[str, Any]) -> dict[str, Any] | None:
    """A `Scaled` event ("<revision>: <the autoscaler's reason>") as a chart marker.

    The reason names the change as "<from> -> <to>" ("1 -> 3 replicas") or ends "scale to zero".
    """
    revision, _, reason = event["message"].partition(": ")
    if change := _CHANGE.search(reason):
        start, end = int(change["start"]), int(change["end"])
    elif reason.endswith("scale to zero"):
        start, end = None, 0
    else:
        return None
    return {
        "t": event["time"],
        "revision": revision,
        "direction": "down" if start is None or end < start else "up",
        "from": start,
        "to": end,
        "reason": reason,
    }
