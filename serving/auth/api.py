"""The token API under `/api/v1/tokens`, spoken by `servegate token` and `serving.Client`: every
route needs the admin scope.

    GET    /api/v1/tokens          {"items": [token, ...]}          (never a secret)
    POST   /api/v1/tokens          201, token + "token": secret     (CreateTokenBody; 409 name taken)
    DELETE /api/v1/tokens/{name}   the revoked token                (404 unknown)

The routes carry their full paths rather than sit in a `Mount`: a Mount only matches below its
path (`/api/v1/tokens/...`), and `/api/v1/tokens` itself must not fall through to the control API's
`/api/v1/{plural}`. They must come before the control API's mount in the gateway's route list.
Errors are `{"error": message}` whatever app the routes are put in.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from serving.auth.guard import Guard
from serving.auth.rest import ScopedRoute, principal_of, scoped_routes
from serving.auth.scopes import Role, Scope
from serving.auth.tokens import TokenConflict, TokenStore, parse_duration
from serving.errors import InvalidInput, ServingError
from serving.protocol.rest import error_response, json_response, read_raw, validation_problems

__all__ = ["MAX_BODY_BYTES", "PREFIX", "CreateTokenBody", "token_routes"]

PREFIX = "/api/v1/tokens"
MAX_BODY_BYTES = 64 * 1024
#: how many namespaces or services one token may be limited to (a bound on what is stored).
_MAX_SCOPE_ITEMS = 256
_ScopeName = Annotated[str, Field(min_length=1, max_length=253)]

Endpoint = Callable[[Request], Awaitable[Response]]


class CreateTokenBody(BaseModel):
    """POST /api/v1/tokens. Strict: unknown fields are typos, and `expires` is a duration (`30d`)
    or null for a token that never expires."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str
    role: Role
    namespaces: list[_ScopeName] = Field(default_factory=list, max_length=_MAX_SCOPE_ITEMS)
    services: list[_ScopeName] = Field(default_factory=list, max_length=_MAX_SCOPE_ITEMS)
    expires: str | None = None


def _answering_errors(endpoint: Endpoint) -> Endpoint:
    """Errors as `{"error": ...}` with the error table's status; a name taken as 409."""

    @wraps(endpoint)
    async def answer(request: Request) -> Response:
        try:
            return await endpoint(request)
        except TokenConflict as exc:  # an InvalidInput (400) in the table; here it is a conflict
            return json_response({"error": exc.message}, 409)
        except ServingError as exc:
            return error_response(exc)

    return answer


class _Api:
    def __init__(self, store: TokenStore) -> None:
        self.store = store

    async def list(self, request: Request) -> Response:
        return json_response({"items": [info.as_dict() for info in self.store.list()]})

    async def create(self, request: Request) -> Response:
        raw = await read_raw(request, MAX_BODY_BYTES)
        try:
            body = CreateTokenBody.model_validate_json(raw)
        except ValidationError as exc:
            raise InvalidInput(f"invalid request body: {validation_problems(exc)}") from None
        try:
            expires_in_s = parse_duration(body.expires) if body.expires is not None else None
        except ValueError as exc:
            raise InvalidInput(f"expires: {exc}") from None
        try:
            info, secret = await run_in_threadpool(
                self.store.create,
                body.name,
                body.role,
                namespaces=body.namespaces,
                services=body.services,
                expires_in_s=expires_in_s,
                actor=principal_of(request).name,
            )
        except TokenConflict:
            raise
        except InvalidInput as exc:
            raise InvalidInput(f"name: {exc.message}") from None
        return json_response({"token": secret, **info.as_dict()}, 201)

    async def revoke(self, request: Request) -> Response:
        info = await run_in_threadpool(self.store.revoke, request.path_params["name"])
        return json_response(info.as_dict())


def token_routes(store: TokenStore, guard: Guard) -> list[BaseRoute]:
    """The token API of `store`, every route admin-only; put them before the control API's mount."""
    a = _Api(store)

    scoped = scoped_routes(guard)

    def route(path: str, endpoint: Endpoint, method: str) -> ScopedRoute:
        return scoped(path, _answering_errors(endpoint), Scope.ADMIN, method)

    return [
        route(PREFIX, a.list, "GET"),
        route(PREFIX, a.create, "POST"),
        route(PREFIX + "/{name}", a.revoke, "DELETE"),
    ]
