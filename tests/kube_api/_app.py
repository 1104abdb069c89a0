"""The HTTP face: discovery, the REST verbs on every resource, and watch streams."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable
from typing import NamedTuple

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.kube_api import _errors as errors
from tests.kube_api import _resources as discovery
from tests.kube_api._auth import Authorizer
from tests.kube_api._cluster import APPLY, Cluster, Target
from tests.kube_api._selectors import field_selector, label_selector
from tests.kube_api._store import ABORT, END, Watch

log = logging.getLogger(__name__)

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


class SeenRequest(NamedTuple):
    """One resource request as the fake saw it; `verb` is Kubernetes' verb, except "apply" for a
    server-side apply patch."""

    verb: str
    path: str
    field_manager: str | None


def _true(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1")


def _status_response(error: errors.KubeError) -> JSONResponse:
    return JSONResponse(error.status(), status_code=error.code)


class _WatchStream:
    """A watch response: newline-delimited events until the watch ends, times out or the client goes.

    Written as plain ASGI so that a client that disconnects is noticed while no event is due."""

    def __init__(
        self,
        app: KubeApp,
        watch: Watch | None,
        initial: list[dict],
        *,
        timeout: float | None,
        bookmarks: bool,
        resource: discovery.Resource,
    ) -> None:
        self._app = app
        self._watch = watch
        self._initial = initial
        self._timeout = timeout
        self._bookmarks = bookmarks
        self._resource = resource

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-cache, private")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        disconnected = asyncio.ensure_future(self._disconnect(receive))
        try:
            if await self._stream(send, disconnected):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            disconnected.cancel()
            if self._watch is not None:
                self._app.cluster.store.close(self._watch)

    @staticmethod
    async def _disconnect(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    @staticmethod
    async def _send(send: Send, event: dict) -> None:
        await send(
            {"type": "http.response.body", "body": json.dumps(event).encode() + b"\n", "more_body": True}
        )

    async def _stream(self, send: Send, disconnected: asyncio.Future) -> bool:
        """Send events; True to end the response cleanly, False to leave it broken off."""
        for event in self._initial:
            await self._send(send, event)
        if self._watch is None:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout if self._timeout else None
        interval = self._app.bookmark_interval if self._bookmarks else None
        while True:
            waits = [t for t in (interval, deadline and deadline - loop.time()) if t is not None]
            item = asyncio.ensure_future(self._watch.queue.get())
            done, _ = await asyncio.wait(
                {item, disconnected},
                timeout=min(waits) if waits else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if item not in done:
                item.cancel()
                if disconnected in done:
                    return False
                if deadline is not None and loop.time() >= deadline:
                    return True
                bookmark = {
                    "kind": self._resource.kind,
                    "apiVersion": self._resource.api_version,
                    "metadata": {"resourceVersion": self._app.cluster.store.resource_version},
                }
                await self._send(send, {"type": "BOOKMARK", "object": bookmark})
                continue
            event = item.result()
            if event in (END, ABORT):
                return event == END
            kind, obj = event
            await self._send(send, {"type": kind, "object": obj})


class KubeApp:
    """Routes requests to the cluster's verbs after authenticating and authorizing them."""

    def __init__(
        self,
        cluster: Cluster,
        authorizer: Authorizer,
        *,
        server_address: Callable[[], str],
        bookmark_interval: float = 1.0,
    ) -> None:
        self.cluster = cluster
        self.authorizer = authorizer
        self.bookmark_interval = bookmark_interval
        self.requests: list[SeenRequest] = []
        self.closing = False  # the server is stopping: a new watch ends at once
        self._server_address = server_address

    def starlette(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/version", self._version),
                Route("/healthz", self._ok),
                Route("/livez", self._ok),
                Route("/readyz", self._ok),
                Route("/api", self._api),
                Route("/apis", self._apis),
                Route("/api/{version}", self._core_resources),
                Route("/api/{version}/{path:path}", self._core, methods=_METHODS),
                Route("/apis/{group}", self._group),
                Route("/apis/{group}/{version}", self._group_resources),
                Route("/apis/{group}/{version}/{path:path}", self._grouped, methods=_METHODS),
            ]
        )

    # -- discovery

    async def _ok(self, request: Request) -> Response:
        return Response("ok", media_type="text/plain")

    async def _version(self, request: Request) -> Response:
        return JSONResponse(discovery.version_info())

    def _discovery(self, request: Request, document: dict | None) -> Response:
        try:
            self.authorizer.authenticate(request.headers.get("authorization"))
            if document is None:
                raise errors.page_not_found()
        except errors.KubeError as error:
            return _status_response(error)
        return JSONResponse(document)

    async def _api(self, request: Request) -> Response:
        return self._discovery(request, discovery.api_versions(self._server_address()))

    async def _apis(self, request: Request) -> Response:
        return self._discovery(request, discovery.api_group_list(self.cluster.registry))

    async def _core_resources(self, request: Request) -> Response:
        version = request.path_params["version"]
        return self._discovery(request, discovery.resource_list(self.cluster.registry, "", version))

    async def _group(self, request: Request) -> Response:
        return self._discovery(
            request, discovery.api_group(self.cluster.registry, request.path_params["group"])
        )

    async def _group_resources(self, request: Request) -> Response:
        group, version = request.path_params["group"], request.path_params["version"]
        return self._discovery(request, discovery.resource_list(self.cluster.registry, group, version))

    # -- resources

    async def _core(self, request: Request) -> Response:
        return await self._resource(request, "")

    async def _grouped(self, request: Request) -> Response:
        return await self._resource(request, request.path_params["group"])

    def _target(self, group: str, version: str, path: str) -> Target:
        parts = path.strip("/").split("/")
        namespace = ""
        # namespaces/{ns}/{resource}..., but namespaces/{name}/status is the namespace's own subresource
        if parts[0] == "namespaces" and len(parts) >= 3 and parts[2] not in ("status", "finalize"):
            namespace, parts = parts[1], parts[2:]
        resource = self.cluster.registry.find(group, version, parts[0])
        if resource is None or len(parts) > 3 or (namespace and not resource.namespaced):
            raise errors.page_not_found()
        name = parts[1] if len(parts) > 1 else ""
        subresource = parts[2] if len(parts) > 2 else ""
        if subresource and subresource not in resource.subresources:
            raise errors.page_not_found()
        if resource.namespaced and name and not namespace:
            raise errors.page_not_found()
        return Target(resource, namespace, name, subresource)

    @staticmethod
    def _verb(request: Request, target: Target) -> str:
        method = request.method
        if method == "GET":
            if target.name:
                return "get"
            return "watch" if _true(request.query_params.get("watch")) else "list"
        if method == "DELETE":
            return "delete" if target.name else "deletecollection"
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}[method]
        if (verb == "create") == bool(target.name):
            raise errors.not_allowed()
        return verb

    async def _resource(self, request: Request, group: str) -> Response:
        try:
            rules = self.authorizer.authenticate(request.headers.get("authorization"))
            target = self._target(group, request.path_params["version"], request.path_params["path"])
            verb = self._verb(request, target)
            if target.resource.namespaced and not target.namespace and verb not in ("list", "watch"):
                raise errors.page_not_found()  # only reads span every namespace
            content_type = request.headers.get("content-type", "").split(";")[0].strip()
            manager = request.query_params.get("fieldManager")
            seen = "apply" if verb == "patch" and content_type == APPLY else verb
            self.requests.append(SeenRequest(seen, request.url.path, manager))
            self.authorizer.authorize(rules, verb, target)
            if (
                seen == "apply"
                and self.cluster.store.get(target.resource, target.namespace, target.name) is None
            ):
                self.authorizer.authorize(rules, "create", target)  # an apply that creates needs both
            return await self._serve(request, target, verb, content_type)
        except errors.KubeError as error:
            return _status_response(error)
        except Exception as error:  # the fake's own bug: answer as the API server would, and say so
            log.exception("kube_api fake failed on %s %s", request.method, request.url.path)
            return _status_response(
                errors.KubeError(500, "InternalError", f"fake API server error: {error!r}")
            )

    async def _serve(self, request: Request, target: Target, verb: str, content_type: str) -> Response:
        query = request.query_params
        cluster = self.cluster
        user_agent = request.headers.get("user-agent", "")
        manager = query.get("fieldManager") or user_agent.split("/")[0] or "unknown"
        dry_run = query.get("dryRun") == "All"
        if verb == "get":
            return JSONResponse(cluster.read(target))
        if verb in ("list", "watch", "deletecollection"):
            matches_labels = label_selector(query.get("labelSelector"))
            matches_fields = field_selector(query.get("fieldSelector"))

            def matches(obj: dict) -> bool:
                return matches_labels(obj["metadata"].get("labels") or {}) and matches_fields(obj)

            if verb == "watch":
                return self._watch(target, matches, query)
            if verb == "deletecollection":
                return self._delete_collection(target, matches, query)
            return self._list(target, matches, query)
        body = await request.body()
        if verb == "patch":
            created = cluster.store.get(target.resource, target.namespace, target.name) is None
            if content_type == APPLY:  # apply names its manager or fails; others default to the user agent
                manager = query.get("fieldManager") or ""
            obj = cluster.patch(
                target, content_type, body, manager=manager, force=_true(query.get("force")), dry_run=dry_run
            )
            return JSONResponse(obj, status_code=201 if created else 200)
        if verb == "delete":
            return self._delete(target, query, body)
        document = self._json(body)
        if verb == "create":
            return JSONResponse(
                cluster.create(target, document, manager=manager, dry_run=dry_run), status_code=201
            )
        return JSONResponse(cluster.update(target, document, manager=manager, dry_run=dry_run))

    @staticmethod
    def _json(body: bytes) -> dict:
        try:
            document = json.loads(body or b"{}")
        except json.JSONDecodeError as error:
            raise errors.bad_request(f"error decoding the request body: {error}") from None
        if not isinstance(document, dict):
            raise errors.bad_request("the request body must be a JSON object")
        return document

    def _list(self, target: Target, matches: Callable[[dict], bool], query) -> Response:
        resource = target.resource
        with self.cluster.store.lock:
            items = self.cluster.list(target, matches)
            rv = self.cluster.store.resource_version
        metadata: dict = {"resourceVersion": rv}
        if token := query.get("continue"):
            try:
                after = tuple(json.loads(base64.urlsafe_b64decode(token)))
            except ValueError:
                raise errors.bad_request("continue key is not valid") from None
            items = [i for i in items if (i["metadata"].get("namespace", ""), i["metadata"]["name"]) > after]
        limit = int(query.get("limit") or 0)
        if limit and len(items) > limit:
            last = items[limit - 1]["metadata"]
            key = [last.get("namespace", ""), last["name"]]
            metadata["continue"] = base64.urlsafe_b64encode(json.dumps(key).encode()).decode()
            metadata["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        if not resource.custom:  # Kubernetes leaves apiVersion and kind out of built-in list items
            for item in items:
                item.pop("apiVersion", None)
                item.pop("kind", None)
        return JSONResponse(
            {
                "kind": f"{resource.kind}List",
                "apiVersion": resource.api_version,
                "metadata": metadata,
                "items": items,
            }
        )

    def _watch(self, target: Target, matches: Callable[[dict], bool], query) -> Response:
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        try:
            if self.closing:
                raise errors.KubeError(503, "ServiceUnavailable", "the fake API server is shutting down")
            watch, initial = self.cluster.store.watch(
                asyncio.get_running_loop(),
                target.resource,
                target.namespace,
                matches,
                query.get("resourceVersion"),
            )
        except errors.KubeError as error:  # e.g. too old for the history: one ERROR event, as Kubernetes
            watch, events = None, [{"type": "ERROR", "object": error.status()}]
        else:
            events = [{"type": kind, "object": obj} for kind, obj in initial]
        stream = _WatchStream(
            self,
            watch,
            events,
            timeout=timeout,
            bookmarks=_true(query.get("allowWatchBookmarks")),
            resource=target.resource,
        )
        return stream  # type: ignore[return-value]  # an ASGI app is a valid Starlette endpoint result

    def _delete_options(self, query, body: bytes) -> tuple[str, dict]:
        options = self._json(body) if body.strip() else {}
        propagation = query.get("propagationPolicy") or options.get("propagationPolicy") or "Background"
        if _true(query.get("orphanDependents")) or options.get("orphanDependents"):
            propagation = "Orphan"
        return propagation, options.get("preconditions") or {}

    def _delete(self, target: Target, query, body: bytes) -> Response:
        propagation, preconditions = self._delete_options(query, body)
        obj, gone = self.cluster.delete(
            target, propagation=propagation, preconditions=preconditions, dry_run=query.get("dryRun") == "All"
        )
        if not gone or target.resource.delete_returns_object:
            return JSONResponse(obj, status_code=200 if gone else 202)
        resource = target.resource
        details = {"name": target.name, "group": resource.group, "kind": resource.plural}
        details["uid"] = obj["metadata"]["uid"]
        return JSONResponse(
            {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}
        )

    def _delete_collection(self, target: Target, matches: Callable[[dict], bool], query) -> Response:
        propagation, _ = self._delete_options(query, b"")
        deleted = []
        with self.cluster.store.lock:
            for obj in self.cluster.list(target, matches):
                meta = obj["metadata"]
                one = Target(target.resource, meta.get("namespace", ""), meta["name"])
                deleted.append(self.cluster.delete(one, propagation=propagation)[0])
        resource = target.resource
        return JSONResponse(
            {
                "kind": f"{resource.kind}List",
                "apiVersion": resource.api_version,
                "metadata": {"resourceVersion": self.cluster.store.resource_version},
                "items": deleted,
            }
        )
