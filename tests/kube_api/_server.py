"""Running the fake: uvicorn in a thread with its own loop, and the test's handle on it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes.client
import uvicorn
import yaml

from tests.kube_api import _selectors as selectors
from tests.kube_api._app import KubeApp, SeenRequest
from tests.kube_api._auth import Authorizer, Rules
from tests.kube_api._cluster import Cluster, Target
from tests.kube_api._controllers import CONTROLLER_MANAGER, Controllers
from tests.kube_api._kubelet import Kubelet
from tests.kube_api._resources import RESOURCES, Registry, Resource
from tests.kube_api._store import Store

_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


class KubeApi:
    """A running fake Kubernetes API server, and the test's own handles on its objects.

    The handles (`get`, `list`, `put`, `delete`, ...) are plain thread-safe Python, no HTTP:
    `put` is what the cluster's own controllers would write, and emits watch events like any write."""

    def __init__(self, url: str, app: KubeApp, controllers: Controllers | None) -> None:
        self.url = url
        self._app = app
        self._cluster = app.cluster
        self._controllers = controllers

    @property
    def requests(self) -> list[SeenRequest]:
        """Every resource request seen, in order: (verb, path, field_manager)."""
        return self._app.requests

    @property
    def resource_version(self) -> str:
        """The latest resourceVersion: what a list answered now would carry."""
        return self._cluster.store.resource_version

    # -- clients

    def client_config(self, token: str = "admin") -> kubernetes.client.Configuration:
        """A client configuration for this server, authenticating with a bearer token."""
        config = kubernetes.client.Configuration()
        config.host = self.url
        config.api_key = {"authorization": token}
        config.api_key_prefix = {"authorization": "Bearer"}
        return config

    def api_client(self, token: str = "admin") -> kubernetes.client.ApiClient:
        return kubernetes.client.ApiClient(self.client_config(token))

    def write_kubeconfig(self, path: str | Path, token: str = "admin", namespace: str = "default") -> Path:
        """A kubeconfig file `kubernetes.config.load_kube_config(path)` accepts (bearer token auth)."""
        path = Path(path)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kube-api-fake", "cluster": {"server": self.url}}],
            "users": [{"name": "kube-api-fake", "user": {"token": token}}],
            "contexts": [
                {
                    "name": "kube-api-fake",
                    "context": {"cluster": "kube-api-fake", "user": "kube-api-fake", "namespace": namespace},
                }
            ],
            "current-context": "kube-api-fake",
            "preferences": {},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config))
        return path

    # -- the test's handles

    def _target(self, group_version: str, plural: str, namespace: str | None, name: str = "") -> Target:
        resource = self._cluster.registry.by_api_version(group_version, plural)
        if resource is None:
            raise KeyError(f"the fake serves no {plural} in {group_version}")
        return Target(resource, (namespace or "") if resource.namespaced else "", name)

    def get(self, group_version: str, plural: str, namespace: str | None, name: str) -> dict | None:
        """The object as stored, or None."""
        target = self._target(group_version, plural, namespace, name)
        return self._cluster.store.get(target.resource, target.namespace, name)

    def list(
        self,
        group_version: str,
        plural: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict]:
        """The objects of a resource (in one namespace, or all), optionally selected as a list would."""
        target = self._target(group_version, plural, namespace)
        labels, fields = selectors.label_selector(label_selector), selectors.field_selector(field_selector)
        return self._cluster.list(target, lambda o: labels(o["metadata"].get("labels") or {}) and fields(o))

    def put(self, obj: dict, *, manager: str = CONTROLLER_MANAGER) -> dict:
        """Create or replace `obj` as given, status included (a namespaced object without a namespace
        goes to "default")."""
        return self._cluster.write(obj, manager=manager)

    def delete(
        self,
        group_version: str,
        plural: str,
        namespace: str | None,
        name: str,
        *,
        propagation: str = "Background",
    ) -> dict | None:
        """Delete as the API would (finalizers, garbage collection); None if there was nothing."""
        target = self._target(group_version, plural, namespace, name)
        if self._cluster.store.get(target.resource, target.namespace, name) is None:
            return None
        return self._cluster.delete(target, propagation=propagation)[0]

    def set_pod_ready(self, namespace: str, name: str, ready: bool = True) -> dict:
        """Turn a pod's Ready condition on or off (what a readiness probe would do)."""
        if self._controllers is None:
            raise RuntimeError("the fake runs no kubelet (controllers=False); put the pod's status instead")
        return self._controllers.set_pod_ready(namespace, name, ready)

    def drop_watches(self, *, abort: bool = False) -> None:
        """End every open watch stream now; with `abort`, break the connections off mid-response
        (uvicorn logs one "ASGI callable returned without completing response" line each)."""
        self._cluster.store.drop_watches(abort=abort)

    def compact(self) -> None:
        """Forget the watch history: a watch from an older resourceVersion gets 410 Gone."""
        self._cluster.store.compact()

    def wait_until(self, check: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Return `check()` once it is truthy, re-checking after each write; TimeoutError after `timeout` s.
        `check` may call the server over HTTP."""
        return self._cluster.store.wait_until(check, timeout)


class _Server(uvicorn.Server):
    """uvicorn, saying when it listens."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.listening.set()


def _run(server: _Server, sock: socket.socket, controllers: Controllers | None) -> None:
    async def main() -> None:
        reconciling = asyncio.ensure_future(controllers.run()) if controllers else None
        try:
            await server.serve(sockets=[sock])
        finally:
            server.listening.set()  # also when it failed to start
            if reconciling is not None and controllers is not None:
                reconciling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reconciling
                await controllers.aclose()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()


@contextlib.contextmanager
def kube_api(
    *,
    tokens: Mapping[str, Rules | None] | None = None,
    controllers: bool = True,
    kubelet: Kubelet | None = None,
    ready_delay: float = 0.0,
    resources: Iterable[Resource] = (),
    first_pod_ip: str = "127.0.0.2",
    bookmark_interval: float = 1.0,
    history_limit: int = 10_000,
) -> Iterator[KubeApi]:
    """Serve a fake Kubernetes API on 127.0.0.1 and a free port until the block ends.

    tokens: bearer token -> Rules (None: may do anything); "admin" may do anything unless given.
    controllers: run the Deployment, kubelet and EndpointSlice controllers.
    kubelet: starts a pod (see `PodRuntime`); the default makes it Running and Ready after `ready_delay` s.
    resources: served besides `RESOURCES` (creating a CustomResourceDefinition also serves its resources).
    first_pod_ip: pods get this address, then the next ones (all of 127/8 routes to lo on Linux).
    bookmark_interval: seconds between BOOKMARK events on watches that allow them.
    history_limit: watch events kept; a watch from before the oldest kept gets 410 Gone.
    """
    registry = Registry([*RESOURCES, *resources])
    cluster = Cluster(Store(history_limit), registry)
    namespace_resource = registry.find("", "v1", "namespaces")
    assert namespace_resource is not None
    for name in _NAMESPACES:
        cluster.create(Target(namespace_resource, "", name), {"metadata": {"name": name}}, manager=None)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{sock.getsockname()[1]}"
    app = KubeApp(
        cluster,
        Authorizer({"admin": None, **(tokens or {})}),
        server_address=lambda: address,
        bookmark_interval=bookmark_interval,
    )
    runner = (
        Controllers(cluster, kubelet=kubelet, ready_delay=ready_delay, first_pod_ip=first_pod_ip)
        if controllers
        else None
    )
    config = uvicorn.Config(
        app.starlette(),
        log_config=None,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    server = _Server(config)
    thread = threading.Thread(target=_run, args=(server, sock, runner), name="kube-api-fake", daemon=True)
    thread.start()
    server.listening.wait(timeout=30)
    try:
        if not server.started:
            raise RuntimeError("the fake Kubernetes API server did not start")
        yield KubeApi(f"http://{address}", app, runner)
    finally:
        app.closing = True
        cluster.store.drop_watches()
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
