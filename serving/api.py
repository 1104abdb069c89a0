"""The control API under `/api/v1`: apply manifests, list/get/delete resources, promote, rollback,
events, and a service's rollout (its status; pause, resume, abort). The CLI and `serving.Client`
speak only this.

Errors are `{"error": message}` like the data plane; a rejected apply adds
`"problems": [{"path", "message"}, ...]`, one per thing wrong, and changes nothing.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount

from autoscaler.sources import MetricSourceError
from autoscaler.sources.promql import render
from predictors.trust import (
    TRUSTED_SOURCES_ENV,
    TrustPolicy,
    local_needs_trust,
    needs_trust,
    source_of,
    trust_hint,
    why_code_runs,
)
from serving.auth import Guard, Principal, Scope, Target, refusal
from serving.auth.rest import principal_of, scoped_routes
from serving.auth.storage_fields import storage_problems
from serving.controller.comparable import agreement_problems
from serving.controller.controller import Controller, NotFound
from serving.errors import PermissionDenied, ServerUnavailable, ServingError
from serving.registry.types import RegistryError
from serving.registry.uris import is_registry_uri
from serving.spec import InferenceService, ManifestError, Problem, TrainedModel, load_manifests
from serving.spec.manifests import ManifestTooLarge, Resource

if TYPE_CHECKING:
    from serving.controller.rollouts import Rollouts

__all__ = ["KINDS", "api_routes", "resource_target", "trust_problems", "visible_to"]

#: URL plural -> manifest kind.
KINDS = {
    "inferenceservices": "InferenceService",
    "trainedmodels": "TrainedModel",
    "inferencegraphs": "InferenceGraph",
}
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
#: why a manifest may not name trusted sources itself.
_OPERATORS = "is the operator's to give (servegate up --trust-source), not a manifest's"
NO_PROMETHEUS = "a PromQL query needs a Prometheus server: start servegate up with --prometheus-url"


def _error(message: str, status: int, problems: list[Problem] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if problems is not None:
        body["problems"] = [{"path": p.path, "message": p.message} for p in problems]
    return JSONResponse(body, status)


class _Api:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def _kind(self, request: Request) -> str:
        plural = request.path_params["plural"]
        if plural not in KINDS:
            raise NotFound(f"unknown resource type '{plural}'; use one of {', '.join(KINDS)}")
        return KINDS[plural]

    async def apply(self, request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_MANIFEST_BYTES:
            return _error(f"manifests larger than {MAX_MANIFEST_BYTES} bytes are refused", 413)
        try:
            text = body.decode()
        except UnicodeDecodeError:
            return _error("manifests must be UTF-8 text (YAML or JSON)", 400)
        try:
            resources = load_manifests(text, request.query_params.get("source", "<request>"))
            _check_namespaces(principal_of(request), resources)
            problems = (
                self.controller.manifest_problems(resources)
                + self._references(resources)
                + await self._queries(resources)
                + await self._models(resources)
                + await self._storage(resources)
                + await self._trust(resources)
                + await self._comparable(resources)
            )
            if problems:
                raise ManifestError(problems)
        except ManifestError as exc:
            count = len(exc.problems)
            # past a size bound once parsed (aliases expanded): 413, like a body past MAX_MANIFEST_BYTES
            status = 413 if isinstance(exc, ManifestTooLarge) else 400
            return _error(
                f"{count} problem{'s' * (count != 1)} in the manifests; nothing applied", status, exc.problems
            )
        if not resources:
            return _error("no manifests in the request", 400)
        warnings = [f"{r.kind}/{r.metadata.name}: {w}" for r in resources for w in r.warnings()]
        results = await self.controller.apply(resources, actor=principal_of(request).name)
        return JSONResponse({"results": results, "warnings": warnings})

    def _references(self, resources: list[Resource]) -> list[Problem]:
        """Problems only the current state can show: missing services, names taken in another namespace."""
        services = dict(self.controller.services) | {
            r.metadata.name: r for r in resources if isinstance(r, InferenceService)
        }
        known = set(services)
        problems = []
        for r in resources:
            where = f"{r.kind}/{r.metadata.name}"
            stored = self.controller.store.resource(r.kind, r.metadata.name)
            namespace = stored.manifest.get("metadata", {}).get("namespace", "default") if stored else None
            if namespace is not None and namespace != r.metadata.namespace:
                # The gateway routes by model name alone, so a name is one service whatever its namespace.
                problems.append(
                    Problem(
                        f"{where}: metadata.namespace",
                        f"{r.kind} '{r.metadata.name}' already exists in namespace '{namespace}'; "
                        "names are unique across namespaces on one gateway",
                    )
                )
            if isinstance(r, TrainedModel) and r.spec.inference_service not in known:
                problems.append(
                    Problem(
                        f"{where}: spec.inferenceService",
                        f"InferenceService '{r.spec.inference_service}' not found",
                    )
                )
            elif isinstance(r, TrainedModel):
                # KServe's MemoryResourceAvailable: a model larger than its host's memory never fits.
                limit = services[r.spec.inference_service].components()["predictor"].memory_bytes
                if limit is not None and r.memory_bytes > limit:
                    problems.append(
                        Problem(
                            f"{where}: spec.model.memory",
                            f"{r.spec.model.memory} exceeds the memory limit of InferenceService "
                            f"'{r.spec.inference_service}' ({limit} bytes)",
                        )
                    )
            if isinstance(r, InferenceService):
                refs = (
                    [
                        (f"spec.experiment.variants[{i}].service", v.service)
                        for i, v in enumerate(r.spec.experiment.variants)
                    ]
                    if r.spec.experiment
                    else []
                )
                if r.spec.shadow is not None:
                    refs.append(("spec.shadow.service", r.spec.shadow.service))
                for path, service in refs:
                    if service and service not in known:
                        problems.append(
                            Problem(f"{where}: {path}", f"InferenceService '{service}' not found")
                        )
        return problems

    async def _queries(self, resources: list[Resource]) -> list[Problem]:
        """A custom metric's PromQL must parse on the Prometheus server that will answer it."""
        problems = []
        promql = getattr(self.controller.autoscaler, "promql", None)
        for r in resources:
            if not isinstance(r, InferenceService):
                continue
            name = r.metadata.name
            queries = []
            for kind in r.components():
                config = r.scaling(kind)
                if config.metric == "custom" and config.query is not None:
                    where = f"spec.{kind}.autoScaling.metrics[0].external.metric.query"
                    queries.append((where, config.query, f"{name}-{kind}-00001"))
            if r.spec.rollout is not None:
                for i, check in enumerate(r.spec.rollout.checks or ()):
                    if check.metric == "promql" and check.query is not None:
                        queries.append(
                            (f"spec.rollout.checks[{i}].query", check.query, f"{name}-predictor-00002")
                        )
            for where, query, revision in queries:
                if promql is None:
                    problems.append(Problem(f"InferenceService/{name}: {where}", NO_PROMETHEUS))
                    continue
                try:
                    error = await promql.check(render(query, revision=revision, service=name))
                except (MetricSourceError, ValueError) as exc:
                    error = str(exc)
                if error:
                    problems.append(Problem(f"InferenceService/{name}: {where}", error))
        return problems

    async def _storage(self, resources: list[Resource]) -> list[Problem]:
        """Paths outside the storage roots, URLs into loopback, private or link-local addresses:
        whatever the manifests would make this machine read or fetch that its policy refuses."""
        return await asyncio.to_thread(storage_problems, resources, self.controller.storage_policy)

    async def _models(self, resources: list[Resource]) -> list[Problem]:
        """A `registry://` storageUri must name a version (or alias) the registry has, of the format
        the manifest says."""
        problems = []
        for r in resources:
            if isinstance(r, InferenceService):
                uris = [(f"spec.{kind}", c.storage_uri, c.format) for kind, c in r.components().items()]
            elif isinstance(r, TrainedModel):
                uris = [("spec.model", r.spec.model.storage_uri, r.spec.model.framework)]
            else:
                continue
            for path, uri, fmt in uris:
                if not is_registry_uri(uri):
                    continue
                where = f"{r.kind}/{r.metadata.name}: {path}.storageUri"
                if self.controller.registry is None:
                    problems.append(Problem(where, "this gateway has no model registry"))
                    continue
                try:
                    version = await asyncio.to_thread(self.controller.registry.resolve, uri)
                except RegistryError as exc:
                    problems.append(Problem(where, exc.message))
                    continue
                if fmt and _format(fmt) != version.format:
                    problems.append(Problem(where, f"{version.uri} is a {version.format} model, not {fmt}"))
        return problems

    async def _comparable(self, resources: list[Resource]) -> list[Problem]:
        """Agreement checks between models whose answers could never be compared (see comparable.py)."""
        c = self.controller
        return await asyncio.to_thread(
            agreement_problems, resources, c.serving_component, c.registry, c.storage_policy
        )

    async def _trust(self, resources: list[Resource]) -> list[Problem]:
        """Models that run code as they load, from sources nobody trusted (see `trust_problems`)."""
        return await asyncio.to_thread(
            trust_problems, resources, self.controller.trust, self.controller.registry
        )

    async def list(self, request: Request) -> Response:
        items = self.controller.list(self._kind(request))
        return JSONResponse({"items": visible_to(principal_of(request), items)})

    async def get(self, request: Request) -> Response:
        return JSONResponse(self.controller.get(self._kind(request), request.path_params["name"]))

    async def delete(self, request: Request) -> Response:
        kind, name = self._kind(request), request.path_params["name"]
        await self.controller.delete(kind, name, actor=principal_of(request).name)
        return JSONResponse({"kind": kind, "name": name, "action": "deleted"})

    async def events(self, request: Request) -> Response:
        kind, name = self._kind(request), request.path_params["name"]
        self.controller.get(kind, name)
        return JSONResponse({"items": self.controller.events(kind, name)})

    async def promote(self, request: Request) -> Response:
        return await self._move(request, self.controller.promote)

    async def rollback(self, request: Request) -> Response:
        return await self._move(request, self.controller.rollback)

    async def rollout(self, request: Request) -> Response:
        name = request.path_params["name"]
        try:
            return JSONResponse(self._rollouts(name).status(name))
        except ValueError as exc:  # no rollout strategy
            return _error(str(exc), 409)

    async def pause_rollout(self, request: Request) -> Response:
        return await self._move(request, self._rollouts(request.path_params["name"]).pause)

    async def resume_rollout(self, request: Request) -> Response:
        return await self._move(request, self._rollouts(request.path_params["name"]).resume)

    async def abort_rollout(self, request: Request) -> Response:
        return await self._move(request, self._rollouts(request.path_params["name"]).abort)

    def _rollouts(self, name: str) -> Rollouts:
        rollouts = self.controller.rollouts
        if rollouts is None:  # a controller the gateway did not set up (tests, embedding)
            self.controller.get("InferenceService", name)  # an unknown service is still a 404
            raise ServerUnavailable("this gateway runs no rollout strategies")
        return rollouts

    async def _move(self, request: Request, how: Callable[..., Awaitable[str]]) -> Response:
        try:
            message = await how(request.path_params["name"], actor=principal_of(request).name)
        except ValueError as exc:
            return _error(str(exc), 409)
        return JSONResponse({"name": request.path_params["name"], "message": message})


def visible_to(principal: Principal, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The resources of `items` a token limited to some namespaces may see (all for others)."""
    namespaces = principal.namespaces
    if namespaces is None:
        return items
    return [i for i in items if i.get("metadata", {}).get("namespace", "default") in namespaces]


def trust_problems(resources: list[Resource], trust: TrustPolicy, registry: Any = None) -> list[Problem]:
    """A model that runs code as it loads (a python file, a pickle, a torch.export archive) must come
    from a source `trust` trusts (`servegate up --trust-source`) or be a version of `registry` an
    admin trusted; and only the operator names trusted sources, not a manifest's args or env. The
    replica's runtime checks again when it loads the artifact itself. `registry` None: registry
    URIs are not checked here. Reads local file names and zip directories; call it in a thread."""
    problems = []
    for r in resources:
        if isinstance(r, InferenceService):
            models = [
                (f"spec.{kind}", c.storage_uri, c.format, c.args, c.env) for kind, c in r.components().items()
            ]
        elif isinstance(r, TrainedModel):
            models = [("spec.model", r.spec.model.storage_uri, r.spec.model.framework, (), ())]
        else:
            continue
        for path, uri, fmt, args, env in models:
            where = f"{r.kind}/{r.metadata.name}: {path}"
            # What the replica would read as its trusted sources; only the operator names them.
            if any(arg.partition("=")[0] == "--trust-source" for arg in args):
                problems.append(Problem(f"{where}.args", f"--trust-source {_OPERATORS}"))
            if any(name == TRUSTED_SOURCES_ENV for name, _ in env):
                problems.append(Problem(f"{where}.env", f"{TRUSTED_SOURCES_ENV} {_OPERATORS}"))
            if not uri or trust.trust_all:
                continue
            if is_registry_uri(uri):
                if registry is None:
                    continue  # registry URIs are not checked here (the API's _models says if none)
                try:
                    version = registry.resolve(uri)
                except RegistryError:
                    continue  # the API's _models says why
                if version.trusted or not needs_trust(version.format, version.artifact_name):
                    continue
                why, source, whose = why_code_runs(version.format), version.uri, "no admin has trusted it"
            else:
                source = source_of(fmt, uri)
                if trust.trusts(source) or not local_needs_trust(fmt, uri):
                    continue
                why, whose = why_code_runs(fmt, uri), "this gateway does not trust its source"
            message = f"refusing {source}: {why}, and {whose}; {trust_hint(source)}"
            problems.append(Problem(f"{where}.storageUri", message))
    return problems


def _format(name: str) -> str:
    from predictors.runtimes import normalize_format

    try:
        return normalize_format(name)
    except ServingError:
        return name.lower()


def _check_namespaces(principal: Principal, resources: list[Resource]) -> None:
    """PermissionDenied unless `principal` may deploy every resource, in its namespace."""
    for r in resources:
        reason = refusal(principal, Scope.DEPLOY, Target(r.metadata.namespace, frozenset({r.metadata.name})))
        if reason is not None:
            raise PermissionDenied(f"{r.kind}/{r.metadata.name}: {reason}; nothing applied")


async def _serving_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServingError)
    return _error(exc.message, exc.http_status)


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error(str(exc.args[0]) if exc.args else "not found", 404)


def api_routes(controller: Controller, guard: Guard) -> list[Mount]:
    """The control API, every route behind `guard` with the scope it needs; a deployer's namespaces
    are checked against the resource's (`_target`)."""
    a = _Api(controller)
    item = "/{plural}/{name}"
    rollout = "/inferenceservices/{name}/rollout"
    from starlette.applications import Starlette

    route = scoped_routes(guard)
    target = functools.partial(resource_target, controller)
    app = Starlette(
        routes=[
            # apply checks each manifest's namespace itself: the body names them.
            route("/apply", a.apply, Scope.DEPLOY, "POST"),
            route("/{plural}", a.list, Scope.READ),
            route(item, a.get, Scope.READ, target=target),
            route(item, a.delete, Scope.DEPLOY, "DELETE", target),
            route(item + "/events", a.events, Scope.READ, target=target),
            route("/inferenceservices/{name}/promote", a.promote, Scope.DEPLOY, "POST", target),
            route("/inferenceservices/{name}/rollback", a.rollback, Scope.DEPLOY, "POST", target),
            route(rollout, a.rollout, Scope.READ, target=target),
            route(rollout + "/pause", a.pause_rollout, Scope.DEPLOY, "POST", target),
            route(rollout + "/resume", a.resume_rollout, Scope.DEPLOY, "POST", target),
            route(rollout + "/abort", a.abort_rollout, Scope.DEPLOY, "POST", target),
        ],
        exception_handlers={NotFound: _not_found, ServingError: _serving_error},
    )
    return [Mount("/api/v1", app=app)]


def resource_target(controller: Controller, params: dict[str, Any]) -> Target | None:
    """The stored resource a request names, as a permission target (None when it does not exist:
    the endpoint then answers 404 to whoever may use the route at all)."""
    kind = KINDS.get(params.get("plural", "inferenceservices"))
    stored = controller.store.resource(kind, params["name"]) if kind else None
    if stored is None:
        return None
    namespace = stored.manifest.get("metadata", {}).get("namespace", "default")
    return Target(namespace, frozenset({params["name"]}))
