"""Scopes on Starlette routes: `ScopedRoute` declares what a route needs and checks it before the
endpoint runs, so no endpoint can forget. `unscoped` finds any route that declares nothing; the
apps refuse to build with one, so a route added later cannot slip through unprotected."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import Receive, Send
from starlette.types import Scope as AsgiScope

from serving.auth.guard import ANONYMOUS, Guard
from serving.auth.scopes import Principal, Scope, Target
from serving.auth.sessions import CSRF_HEADER, SAFE_METHODS, SESSION_COOKIE, SessionCookie
from serving.errors import ServingError
from serving.protocol.rest import error_response

__all__ = [
    "HotRoutes",
    "ScopedRoute",
    "principal_of",
    "require_scopes",
    "scoped_routes",
    "session_cookie",
    "unscoped",
]

#: the target of a request, from its path parameters (None: the route acts on no one resource).
TargetOf = Callable[[dict[str, Any]], Target | None]


class ScopedRoute(Route):
    """A Route that needs `required` (and, when `target` is given, that scope on that target)."""

    def __init__(
        self,
        path: str,
        endpoint: Callable[..., Any],
        *,
        required: Scope,
        guard: Guard,
        target: TargetOf | None = None,
        methods: list[str] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(path, endpoint, methods=methods, name=name)
        self.required = required
        self.guard = guard
        self.target = target

    async def handle(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        authorization = cookie = None
        for key, value in scope["headers"]:
            if key == b"authorization":
                authorization = value.decode("latin-1")
                break
            if key == b"cookie":
                cookie = value
        try:
            # Only an enabled guard reads the target: with authentication off it costs nothing.
            named = self.target is not None and self.guard.enabled
            target = self.target(scope.get("path_params", {})) if named else None
            session = None
            if authorization is None and cookie is not None and self.guard.sessions is not None:
                session = session_cookie(scope)
            principal = self.guard.check(self.required, authorization, target, session)
        except ServingError as exc:
            await error_response(exc)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await super().handle(scope, receive, send)


def session_cookie(scope: AsgiScope) -> SessionCookie | None:
    """The dashboard session a request presents in its cookie (with its CSRF header), or None."""
    connection = HTTPConnection(scope)
    session_id = connection.cookies.get(SESSION_COOKIE)
    if not session_id:
        return None
    unsafe = scope.get("method", "GET") not in SAFE_METHODS
    return SessionCookie(session_id, unsafe, connection.headers.get(CSRF_HEADER))


def scoped_routes(guard: Guard, target: TargetOf | None = None) -> Callable[..., ScopedRoute]:
    """`route(path, endpoint, required, method="GET", target=target)`: routes of one app behind
    `guard`, each acting on `target` unless it names its own."""

    def route(
        path: str,
        endpoint: Callable[..., Any],
        required: Scope,
        method: str = "GET",
        target: TargetOf | None = target,
    ) -> ScopedRoute:
        return ScopedRoute(path, endpoint, required=required, guard=guard, target=target, methods=[method])

    return route


def principal_of(request: HTTPConnection) -> Principal:
    """Who made `request` (ANONYMOUS when authentication is off)."""
    return request.scope.get("state", {}).get("principal", ANONYMOUS)


def unscoped(routes: Sequence[BaseRoute], prefix: str = "") -> list[str]:
    """The paths of every route (inside mounts too) that declares no scope."""
    found = []
    for route in routes:
        if isinstance(route, Mount):
            inner = route.routes or getattr(route.app, "routes", None)
            if inner is None:
                found.append(prefix + route.path + " (a mounted app of unknown routes)")
            else:
                found += unscoped(inner, prefix + route.path)
        elif not isinstance(route, ScopedRoute):
            found.append(prefix + getattr(route, "path", repr(route)))
    return found


def require_scopes(routes: Sequence[BaseRoute]) -> None:
    """Raise (at build time) when a route declares no scope."""
    missing = unscoped(routes)
    if missing:
        raise TypeError(f"routes without a declared scope: {', '.join(missing)}")


class HotRoutes:
    """`app` with its busiest routes (inference) tried first and run directly: no Starlette router
    walking every route, no middleware layers. They are the app's own `ScopedRoute`s, so their
    scopes, guard and targets are the same either way, and `exception_handlers` are the app's, so
    errors read the same. Anything else, and a hot path with another method, goes to `app`."""

    def __init__(
        self, app: Starlette, hot: Sequence[ScopedRoute], exception_handlers: Mapping[Any, Any]
    ) -> None:
        self.app = app
        self.hot = tuple(hot)
        self._handlers = (dict(exception_handlers), {})

    @property
    def routes(self) -> list[BaseRoute]:
        return self.app.routes

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.hot:
                match, child = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child)
                    scope["app"] = self.app
                    scope["starlette.exception_handlers"] = self._handlers
                    await route.handle(scope, receive, send)
                    return
        await self.app(scope, receive, send)
