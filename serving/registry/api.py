"""The registry's control API under `/api/registry`: a thin HTTP adapter over `Registry`, spoken by
`RegistryClient` (and so by `servegate registry --registry http://...`).

JSON in and out; objects are their `as_dict()`. Errors are `{"error": message}` like `/api/v1`,
with the registry error's class name under `"type"` so a client can raise the same class. Bodies
are validated with pydantic before the registry sees them. The registry blocks (database, artifact
copies), so every call runs in the thread pool.

    GET    /models                                  {"items": [model, ...]}
    GET    /models/{name}                           model + "versions": [version, ...]
    POST   /models/{name}/versions                  201, version      (RegisterBody)
    GET    /models/{name}/versions/{version}        version
    POST   /models/{name}/versions/{version}/archive version
    GET    /resolve?uri=registry://...              version
    PUT    /models/{name}/aliases/{alias}           model             ({"version": N})
    DELETE /models/{name}/aliases/{alias}           model
    PUT    /models/{name}/gates                     model             ({"gates": [gate, ...]})
    GET    /models/{name}/history                   {"items": [entry, ...]}
    POST   /models/{name}/versions/{version}/trust  version           ({"trusted": true|false}; admin)

Who made a change (the audit log's actor) is the name of the caller's token (with authentication
off, `anonymous@HOST`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount

from serving.auth import Guard, Scope, Target
from serving.auth.guard import ANONYMOUS
from serving.auth.rest import principal_of, scoped_routes
from serving.auth.storage import StoragePolicy, StorageRefused
from serving.bounds import BoundsError, loads_json
from serving.protocol.rest import validation_problems
from serving.registry.types import Gate, RegistryError

if TYPE_CHECKING:
    from serving.registry.registry import Registry

__all__ = [
    "ACTOR_HEADER",
    "MAX_BODY_BYTES",
    "PREFIX",
    "GatesBody",
    "RegisterBody",
    "SetAliasBody",
    "TrustBody",
    "registry_routes",
]

PREFIX = "/api/registry"
MAX_BODY_BYTES = 1 << 20
ACTOR_HEADER = "x-servegate-user"
#: where `source` may point: places the gateway itself can read (a relative path would be relative
#: to the gateway's working directory, which the caller cannot know).
_REMOTE_SCHEMES = ("file://", "s3://", "http://", "https://")

# -- bodies ---------------------------------------------------------------------------------------

_Metric = Annotated[float, Field(allow_inf_nan=False)]


class _Body(BaseModel):
    # Strict: "0.97" is not a metric and 3.0 is not a version; unknown fields are typos.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RegisterBody(_Body):
    """POST /models/{name}/versions: what `Registry.register` takes."""

    source: str
    format: str | None = None
    metrics: dict[str, _Metric] = Field(default_factory=dict)
    params: dict[str, str] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    description: str = ""
    run: str | None = None
    dataset: str | None = None


class SetAliasBody(_Body):
    """PUT /models/{name}/aliases/{alias}."""

    version: Annotated[int, Field(ge=1)]


class GateBody(_Body):
    alias: str
    metric: str
    op: str  # the registry checks it against its GATE_OPS
    threshold: _Metric


class GatesBody(_Body):
    """PUT /models/{name}/gates: every gate of the model (the ones left out are removed)."""

    gates: list[GateBody]


class TrustBody(_Body):
    """POST /models/{name}/versions/{version}/trust: trust the version to run code as it loads, or not."""

    trusted: bool


B = TypeVar("B", bound=_Body)


async def _body(request: Request, model: type[B]) -> B:
    """The request's JSON body as `model`; HTTPException 413 past MAX_BODY_BYTES, else 400 (bad JSON,
    nesting or values past `serving.bounds`, an invalid body)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HTTPException(413, f"request bodies larger than {MAX_BODY_BYTES} bytes are refused")
    chunks, size = [], 0
    async for chunk in request.stream():  # without a Content-Length, stop reading at the cap
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HTTPException(413, f"request bodies larger than {MAX_BODY_BYTES} bytes are refused")
        chunks.append(chunk)
    try:
        data = loads_json(b"".join(chunks))
    except BoundsError as exc:  # bytes are capped above: what is past a bound here is its shape
        raise HTTPException(400, f"the request body {exc}") from None
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        raise HTTPException(400, f"the request body is not valid JSON: {exc}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise HTTPException(400, f"invalid request body: {validation_problems(exc)}") from None


# -- endpoints ------------------------------------------------------------------------------------


def _actor(request: Request) -> str:
    """The audit log's actor: the caller's token name, never a header the caller chooses. With
    authentication off there is no name to trust, so the caller's address stands in."""
    principal = principal_of(request)
    if principal is not ANONYMOUS:
        return principal.name
    return f"anonymous@{request.client.host if request.client else 'unknown'}"


def _version(request: Request) -> int:
    text = request.path_params["version"]
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise RegistryError(f"version must be a positive integer, not '{text}'")
    return int(text)


def _source(source: str) -> str:
    if source.startswith("/") or source.lower().startswith(_REMOTE_SCHEMES):
        return source
    raise RegistryError(
        f"source '{source}' is not something the gateway can read: "
        "use an absolute path, or a file://, s3://, http:// or https:// URI"
    )


def _allowed(policy: StoragePolicy, source: str) -> None:
    try:
        policy.check_uri(source)
    except StorageRefused as exc:
        raise RegistryError(f"source: {exc.message}") from None


class _Api:
    def __init__(self, registry: Registry, policy: StoragePolicy | None) -> None:
        self.registry = registry
        self.policy = policy

    async def models(self, request: Request) -> Response:
        models = await run_in_threadpool(self.registry.models)
        return JSONResponse({"items": [m.as_dict() for m in models]})

    async def model(self, request: Request) -> Response:
        name = request.path_params["name"]

        def read() -> dict[str, Any]:
            out = self.registry.model(name).as_dict()
            out["versions"] = [v.as_dict() for v in self.registry.versions(name)]
            return out

        return JSONResponse(await run_in_threadpool(read))

    async def register(self, request: Request) -> Response:
        body = await _body(request, RegisterBody)
        source = _source(body.source)
        if self.policy is not None:
            await run_in_threadpool(_allowed, self.policy, source)
        version = await run_in_threadpool(
            self.registry.register,
            request.path_params["name"],
            source,
            format=body.format,
            metrics=dict(body.metrics),
            params=dict(body.params),
            tags=dict(body.tags),
            description=body.description,
            run=body.run,
            dataset=body.dataset,
            actor=_actor(request),
        )
        return JSONResponse(version.as_dict(), 201)

    async def version(self, request: Request) -> Response:
        found = await run_in_threadpool(self.registry.version, request.path_params["name"], _version(request))
        return JSONResponse(found.as_dict())

    async def archive(self, request: Request) -> Response:
        archived = await run_in_threadpool(
            self.registry.archive, request.path_params["name"], _version(request), actor=_actor(request)
        )
        return JSONResponse(archived.as_dict())

    async def resolve(self, request: Request) -> Response:
        uri = request.query_params.get("uri")
        if not uri:
            raise RegistryError(
                "give the URI to resolve: ?uri=registry://NAME/VERSION or registry://NAME@ALIAS"
            )
        return JSONResponse((await run_in_threadpool(self.registry.resolve, uri)).as_dict())

    async def set_alias(self, request: Request) -> Response:
        body = await _body(request, SetAliasBody)
        p = request.path_params
        model = await run_in_threadpool(
            self.registry.set_alias, p["name"], p["alias"], body.version, actor=_actor(request)
        )
        return JSONResponse(model.as_dict())

    async def delete_alias(self, request: Request) -> Response:
        p = request.path_params
        model = await run_in_threadpool(
            self.registry.delete_alias, p["name"], p["alias"], actor=_actor(request)
        )
        return JSONResponse(model.as_dict())

    async def set_gates(self, request: Request) -> Response:
        body = await _body(request, GatesBody)
        gates = [Gate(g.alias, g.metric, g.op, g.threshold) for g in body.gates]
        model = await run_in_threadpool(
            self.registry.set_gates, request.path_params["name"], gates, actor=_actor(request)
        )
        return JSONResponse(model.as_dict())

    async def history(self, request: Request) -> Response:
        entries = await run_in_threadpool(self.registry.history, request.path_params["name"])
        return JSONResponse({"items": [e.as_dict() for e in entries]})

    async def trust(self, request: Request) -> Response:
        body = await _body(request, TrustBody)
        found = await run_in_threadpool(
            self.registry.trust,
            request.path_params["name"],
            _version(request),
            body.trusted,
            actor=_actor(request),
        )
        return JSONResponse(found.as_dict())


async def _registry_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RegistryError)
    return JSONResponse({"error": exc.message, "type": type(exc).__name__}, exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    # Starlette's own (unknown path, wrong method) and the body checks above, as JSON like the rest.
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, exc.status_code, headers=exc.headers)


#: what every change to the registry acts on: something no namespace owns.
SHARED = Target(shared=True)


def registry_routes(registry: Registry, guard: Guard, *, policy: StoragePolicy | None = None) -> list[Mount]:
    """The control API of `registry`, to mount in the gateway beside `api_routes`; every route
    behind `guard` with the scope it needs. `policy`: what a registration's `source` may be (None:
    anything the gateway can read); a registry made with the same `storage_policy` checks it again
    as it fetches (redirects, DNS)."""
    a = _Api(registry, policy)
    model = "/models/{name}"
    version = model + "/versions/{version}"

    route = scoped_routes(guard)
    # Changes: the registry is one for every namespace, so only an unlimited token may make them.
    change = scoped_routes(guard, lambda _params: SHARED)

    app = Starlette(
        routes=[
            route("/models", a.models, Scope.READ, "GET"),
            route(model, a.model, Scope.READ, "GET"),
            change(model + "/versions", a.register, Scope.DEPLOY, "POST"),
            route(version, a.version, Scope.READ, "GET"),
            change(version + "/archive", a.archive, Scope.DEPLOY, "POST"),
            route("/resolve", a.resolve, Scope.READ, "GET"),
            change(model + "/aliases/{alias}", a.set_alias, Scope.DEPLOY, "PUT"),
            change(model + "/aliases/{alias}", a.delete_alias, Scope.DEPLOY, "DELETE"),
            change(model + "/gates", a.set_gates, Scope.DEPLOY, "PUT"),
            route(model + "/history", a.history, Scope.READ, "GET"),
            # Trusting a version lets its code run on the serving machines: an admin's decision.
            change(version + "/trust", a.trust, Scope.ADMIN, "POST"),
        ],
        exception_handlers={RegistryError: _registry_error, HTTPException: _http_error},
    )
    return [Mount(PREFIX, app=app)]
