"""The calls the Kubernetes engine makes, through the official `kubernetes` client, with errors said
the way a person can act on: which permission is missing, which API cannot be reached.

Blocking (the client is synchronous): the engine and the operator call these in threads. A watch
reads the API's stream of events itself (`watch`), so `interrupt` can end a read that would
otherwise wait out its timeout, and a 410 Gone (the watch's place is too old) is told apart from a
dropped connection.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from typing import Any

from serving.engines.kubernetes.names import FIELD_MANAGER, REVISION_LABEL
from serving.engines.kubernetes.render import credentials_name

__all__ = ["KubeApi", "KubernetesUnavailable", "status_message"]

_APPLY = "application/apply-patch+yaml"
_MERGE = "application/merge-patch+json"
#: the reads a gateway needs before it runs anything: (which API, its list call).
_PREFLIGHT = (
    ("apps", "list_namespaced_deployment"),
    ("core", "list_namespaced_service"),
    ("core", "list_namespaced_pod"),
)


class KubernetesUnavailable(Exception):
    """The cluster cannot be reached, or refused a call; the message says which and why."""


class KubeApi:
    """One cluster, through an `ApiClient` of the official client."""

    class Gone(Exception):
        """A watch's resourceVersion is too old: list again."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self.client = api_client
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self._response_lock = threading.Lock()
        self._response: Any = None

    @classmethod
    def from_config(cls, kubeconfig: str | None = None, context: str | None = None) -> KubeApi:
        """The cluster of `kubeconfig` (and `context`), else the pod's own service account when
        running in a cluster, else ~/.kube/config."""
        try:
            from kubernetes import client, config
        except ImportError:
            raise KubernetesUnavailable(
                "the Kubernetes client is not installed: pip install 'servegate[kubernetes]'"
            ) from None
        configuration = client.Configuration()
        try:
            if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config(client_configuration=configuration)
            else:
                config.load_kube_config(
                    config_file=kubeconfig, context=context, client_configuration=configuration
                )
        except (config.ConfigException, OSError, TypeError, ValueError) as exc:
            where = kubeconfig or "~/.kube/config (or the pod's service account)"
            raise KubernetesUnavailable(f"no usable Kubernetes configuration in {where}: {exc}") from None
        return cls(client.ApiClient(configuration))

    @property
    def host(self) -> str:
        return str(self.client.configuration.host)

    def close(self) -> None:
        self.interrupt()
        self.client.close()

    # -- calls -------------------------------------------------------------------------------------

    def preflight(self, namespace: str) -> None:
        """Fail now, naming the permission, rather than at the first revision."""
        for api, method in _PREFLIGHT:
            self._call(getattr(self.core if api == "core" else self.apps, method), namespace, limit=1)

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply `obj` (a Deployment, Service or Secret) as FIELD_MANAGER; the object now."""
        kind, meta = obj["kind"], obj["metadata"]
        method = {
            "Deployment": self.apps.patch_namespaced_deployment,
            "Service": self.core.patch_namespaced_service,
            "Secret": self.core.patch_namespaced_secret,
        }[kind]
        result = self._call(
            method,
            meta["name"],
            meta["namespace"],
            obj,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type=_APPLY,
        )
        return self.client.sanitize_for_serialization(result)

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        """Deployment `name`'s replica count, through its scale subresource (not owned by the apply)."""
        body = {"spec": {"replicas": replicas}}
        self._call(
            self.apps.patch_namespaced_deployment_scale,
            name,
            namespace,
            body,
            field_manager=FIELD_MANAGER,
            _content_type=_MERGE,
        )

    def replicas(self, namespace: str, name: str) -> int | None:
        """Deployment `name`'s replica count now (None: there is no such Deployment)."""
        found = self._call(self.apps.read_namespaced_deployment_scale, name, namespace, missing_ok=True)
        return None if found is None else int(found.spec.replicas or 0)

    def delete_revision(self, namespace: str, revision: str) -> None:
        """A revision's Deployment (its pods drain), Service and Secret; what is gone already is fine."""
        for method, name in (
            (self.apps.delete_namespaced_deployment, revision),
            (self.core.delete_namespaced_service, revision),
            (self.core.delete_namespaced_secret, credentials_name(revision)),
        ):
            self._call(method, name, namespace, propagation_policy="Background", missing_ok=True)

    def revisions(self, namespace: str, selector: str) -> list[str]:
        """The revisions whose Deployments match `selector`."""
        found = self._call(self.apps.list_namespaced_deployment, namespace, label_selector=selector)
        return [
            d.metadata.labels[REVISION_LABEL]
            for d in found.items
            if REVISION_LABEL in (d.metadata.labels or {})
        ]

    def list_pods(self, namespace: str, selector: str) -> tuple[list[dict[str, Any]], str]:
        """The pods matching `selector` and the list's resourceVersion (where a watch goes on)."""
        found = self._call(self.core.list_namespaced_pod, namespace, label_selector=selector)
        pods = [self.client.sanitize_for_serialization(p) for p in found.items]
        return pods, found.metadata.resource_version

    def watch_pods(
        self, namespace: str, selector: str, version: str, timeout_s: int
    ) -> Iterator[tuple[str, dict[str, Any], str]]:
        """The pods matching `selector`, watched from `version` (see `watch`)."""
        method = self.core.list_namespaced_pod
        return self.watch(
            method, namespace, what="pod", version=version, timeout_s=timeout_s, label_selector=selector
        )

    def watch(
        self, method: Any, *args: Any, what: str, version: str, timeout_s: int, **kwargs: Any
    ) -> Iterator[tuple[str, dict[str, Any], str]]:
        """(event type, object, resourceVersion) of the watch the list call `method(*args, **kwargs)`
        makes, from `version` on, for up to `timeout_s` seconds or until the connection drops or
        `interrupt`. Bookmarks come as ("BOOKMARK", {}, version): they only move the version on.
        KubeApi.Gone when `version` is too old."""
        from urllib3.exceptions import HTTPError

        response = self._call(
            method,
            *args,
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout_s,
            _preload_content=False,
            _request_timeout=(10, timeout_s + 30),
            **kwargs,
        )
        with self._response_lock:
            self._response = response
        try:
            for line in _lines(response):
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise KubeApi.Gone(obj.get("message", "too old"))
                    raise KubernetesUnavailable(f"the {what} watch failed: {obj.get('message', obj)}")
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                yield kind, ({} if kind == "BOOKMARK" else obj), version
        except (HTTPError, OSError, ValueError):
            return  # dropped, cut short or garbled: the caller watches again from the last version
        finally:
            with self._response_lock:
                self._response = None
            response.release_conn()

    def interrupt(self) -> None:
        """End the watch being read, from another thread."""
        with self._response_lock:
            response = self._response
        if response is not None:
            response.shutdown()

    def pod_log(self, namespace: str, name: str, lines: int) -> list[str]:
        try:
            text = self._call(self.core.read_namespaced_pod_log, name, namespace, tail_lines=lines)
        except KubernetesUnavailable as exc:
            return [f"(the replica's log cannot be read: {exc})"]
        return str(text).splitlines()[-lines:]

    # -- errors ----------------------------------------------------------------------------------

    def _call(self, method: Any, *args: Any, missing_ok: bool = False, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return method(*args, **kwargs)
        except ApiException as exc:
            if exc.status == 404 and missing_ok:
                return None
            raise KubernetesUnavailable(self._refusal(exc)) from None
        except HTTPError as exc:
            raise KubernetesUnavailable(
                f"cannot reach the Kubernetes API at {self.host}: {_reason(exc)}"
            ) from None

    def _refusal(self, exc: Any) -> str:
        message = status_message(exc)
        if exc.status == 401:
            return (
                f"the Kubernetes API at {self.host} did not accept servegate's credentials "
                "(401 Unauthorized): check the kubeconfig, or the service account's token"
            )
        if exc.status == 403:
            grant = "grant it in servegate's ClusterRole (see `servegate install`)"
            return f"the Kubernetes API refused: {message} ({grant})"
        return f"the Kubernetes API answered {exc.status} {exc.reason}: {message}"


def status_message(exc: Any) -> str:
    """The message of the Status an API error (an `ApiException`) carries, else its reason."""
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except ValueError:
        return str(exc.body or exc.reason)


def _lines(response: Any) -> Iterator[bytes]:
    """Newline-delimited JSON events as they arrive (a chunk may hold several, or part of one)."""
    pending = b""
    for chunk in response.stream(65536, decode_content=True):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (line for line in complete if line.strip())
    if pending.strip():
        yield pending


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc)
