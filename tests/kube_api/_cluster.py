"""The API verbs over the store: create, update, the patch types, server-side apply, delete, with
what the API server does around them (subresource separation, defaulting, generation, managedFields)."""

from __future__ import annotations

import base64
import copy
import json
import random
import uuid
from dataclasses import dataclass

import yaml

from tests.kube_api import _errors as errors
from tests.kube_api._fields import SERVER_METADATA, ApplyConflict, record_update, server_side_apply
from tests.kube_api._patch import json_patch, merge_patch
from tests.kube_api._resources import Registry, Resource, resources_of_crd
from tests.kube_api._selectors import ObjectPredicate
from tests.kube_api._store import Store, timestamp

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"

_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


@dataclass(frozen=True)
class Target:
    """What a request names: a resource, a namespace ("" for cluster scope or all), a name, a subresource."""

    resource: Resource
    namespace: str = ""
    name: str = ""
    subresource: str = ""


def random_suffix(rng: random.Random, length: int = 5) -> str:
    return "".join(rng.choice(_NAME_ALPHABET) for _ in range(length))


def _spec_of(obj: dict) -> dict:
    """What `metadata.generation` counts changes of: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata", "status")}


def _comparable(obj: dict) -> dict:
    obj = copy.deepcopy(obj)
    obj["metadata"].pop("resourceVersion", None)
    for entry in obj["metadata"].get("managedFields") or ():
        entry.pop("time", None)
    return obj


def _label_string(selector: dict | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(((selector or {}).get("matchLabels") or {}).items()))


class Cluster:
    """The verbs, as both the HTTP layer and the built-in controllers call them."""

    def __init__(self, store: Store, registry: Registry, rng: random.Random | None = None) -> None:
        self.store = store
        self.registry = registry
        self.rng = rng or random.Random()
        self._cluster_ips = 0

    # -- reading

    def _live(self, target: Target) -> dict:
        obj = self.store.get(target.resource, target.namespace, target.name)
        if obj is None:
            raise errors.not_found(target.resource, target.name)
        return obj

    def read(self, target: Target) -> dict:
        live = self._live(target)
        return self._scale(live) if target.subresource == "scale" else live

    def list(self, target: Target, matches: ObjectPredicate) -> list[dict]:
        return self.store.list(target.resource, target.namespace, matches)

    @staticmethod
    def _scale(live: dict) -> dict:
        meta = live["metadata"]
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            },
            "spec": {"replicas": (live.get("spec") or {}).get("replicas", 0)},
            "status": {
                "replicas": (live.get("status") or {}).get("replicas", 0),
                "selector": _label_string((live.get("spec") or {}).get("selector")),
            },
        }

    # -- writing

    def create(
        self,
        target: Target,
        body: dict,
        *,
        manager: str | None,
        dry_run: bool = False,
        keep_status: bool = False,
    ) -> dict:
        resource = target.resource
        rest = {k: v for k, v in copy.deepcopy(body).items() if k not in ("apiVersion", "kind")}
        obj = {"apiVersion": resource.api_version, "kind": resource.kind, **rest}
        meta = obj.setdefault("metadata", {})
        for key in SERVER_METADATA:
            meta.pop(key, None)
        if resource.namespaced:
            if meta.get("namespace", target.namespace) != target.namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = target.namespace
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise errors.invalid(
                    resource, "", "metadata.name", "Required value: name or generateName is required"
                )
            meta["name"] = meta["generateName"] + random_suffix(self.rng)
        if resource.has_status and not keep_status:
            obj.pop("status", None)
        self._default(resource, obj, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=timestamp(), generation=1)
        if manager:
            record_update(
                None, obj, manager=manager, api_version=resource.api_version, subresource="", now=timestamp()
            )
        if dry_run:
            return obj
        created = self.store.create(resource, obj)
        self._registered(resource, created)
        return created

    def update(self, target: Target, body: dict, *, manager: str, dry_run: bool = False) -> dict:
        with self.store.lock:
            live = self._live(target)
            self._check_preconditions(target, live, body.get("metadata") or {})
            new = self._proposed(target, live, body)
            return self._commit(target, live, new, manager=manager, dry_run=dry_run)

    def patch(
        self,
        target: Target,
        content_type: str,
        body: bytes,
        *,
        manager: str,
        force: bool,
        dry_run: bool = False,
    ) -> dict:
        if content_type == APPLY:
            return self.apply(target, body, manager=manager, force=force, dry_run=dry_run)
        if force:
            raise errors.KubeError(
                422, "Invalid", "force: Invalid value: true: may not be specified for non-apply patch"
            )
        try:
            document = json.loads(body or b"null")
        except json.JSONDecodeError as error:
            raise errors.bad_request(f"error decoding patch: {error}") from None
        with self.store.lock:
            live = self._live(target)
            view = self._scale(live) if target.subresource == "scale" else live
            if content_type == JSON_PATCH:
                patched = json_patch(view, document)
            elif content_type in (MERGE, STRATEGIC):
                if not isinstance(document, dict):
                    raise errors.bad_request("the patch must be a JSON object")
                patched = merge_patch(view, document, strategic=content_type == STRATEGIC)
            else:
                raise errors.unsupported_media_type(content_type)
            self._check_preconditions(target, live, patched.get("metadata") or {})
            new = self._proposed(target, live, patched)
            return self._commit(target, live, new, manager=manager, dry_run=dry_run)

    def apply(self, target: Target, body: bytes, *, manager: str, force: bool, dry_run: bool = False) -> dict:
        """Server-side apply: create when missing, else merge what `manager` owns (see `_fields`)."""
        resource = target.resource
        if not manager:
            why = "fieldManager: Required value: is required for apply patch"
            raise errors.KubeError(422, "Invalid", f'PatchOptions.meta.k8s.io "" is invalid: {why}')
        if target.subresource == "scale":
            raise errors.bad_request("the fake serves no apply on the scale subresource")
        try:
            applied = yaml.safe_load(body or b"{}")
        except yaml.YAMLError as error:
            raise errors.bad_request(f"error decoding YAML: {error}") from None
        if not isinstance(applied, dict):
            raise errors.bad_request("the apply patch must be an object")
        meta = applied.setdefault("metadata", {})
        precondition = {k: meta.pop(k) for k in ("resourceVersion", "uid") if k in meta}
        for key in SERVER_METADATA:
            meta.pop(key, None)
        meta["name"] = target.name
        if resource.namespaced:
            meta["namespace"] = target.namespace
        if target.subresource == "status":
            identity = {k: meta[k] for k in ("name", "namespace") if k in meta}
            applied = {"metadata": identity, "status": applied.get("status") or {}}
        elif resource.has_status:
            applied.pop("status", None)
        applied.pop("apiVersion", None)
        applied.pop("kind", None)
        with self.store.lock:
            live = self.store.get(resource, target.namespace, target.name)
            if live is not None:
                self._check_preconditions(target, live, precondition)
            elif target.subresource:
                raise errors.not_found(resource, target.name)
            try:
                merged = server_side_apply(
                    live,
                    applied,
                    manager=manager,
                    api_version=resource.api_version,
                    subresource=target.subresource,
                    force=force,
                    now=timestamp(),
                )
            except ApplyConflict as conflict:
                raise errors.apply_conflicts(
                    resource, target.name, conflict.conflicts, resource.api_version
                ) from None
            if live is None:
                return self._create_applied(target, merged, dry_run=dry_run)
            new = self._proposed(target, live, merged, keep_managed_fields=True)
            return self._commit(target, live, new, manager=None, dry_run=dry_run)

    def _create_applied(self, target: Target, obj: dict, *, dry_run: bool) -> dict:
        managed = obj["metadata"].pop("managedFields", None)
        created = self.create(target, obj, manager=None, dry_run=True)
        if managed:
            created["metadata"]["managedFields"] = managed
        if dry_run:
            return created
        created = self.store.create(target.resource, created)
        self._registered(target.resource, created)
        return created

    def write(self, obj: dict, *, manager: str, subresource: str = "") -> dict:
        """Store `obj` as given, status and all, creating it if missing: what a cluster's own
        controllers (and the test, through the handle) write."""
        api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
        resource = self.registry.by_api_version(api_version, kind)
        if resource is None:
            raise ValueError(f"the fake serves no {kind} in {api_version}")
        meta = obj.get("metadata") or {}
        namespace = (meta.get("namespace") or "default") if resource.namespaced else ""
        target = Target(resource, namespace, meta.get("name", ""))
        with self.store.lock:
            live = self.store.get(resource, namespace, target.name) if target.name else None
            if live is None:
                return self.create(target, obj, manager=manager, keep_status=True)
            new = copy.deepcopy(obj)
            new_meta = new.setdefault("metadata", {})
            for key in SERVER_METADATA:
                if key in live["metadata"]:
                    new_meta[key] = live["metadata"][key]
                else:
                    new_meta.pop(key, None)
            new_meta["namespace"] = live["metadata"].get("namespace")
            if not resource.namespaced:
                new_meta.pop("namespace")
            return self._commit(
                Target(resource, namespace, target.name, subresource),
                live,
                new,
                manager=manager,
                dry_run=False,
            )

    def delete(
        self,
        target: Target,
        *,
        propagation: str = "Background",
        preconditions: dict | None = None,
        dry_run: bool = False,
    ) -> tuple[dict, bool]:
        """Delete (or mark deleting); returns the object and whether it is gone."""
        if propagation not in ("Background", "Foreground", "Orphan"):
            raise errors.bad_request(f"propagationPolicy: Unsupported value: {propagation!r}")
        with self.store.lock:
            live = self._live(target)
            self._check_preconditions(target, live, preconditions or {})
            if dry_run:
                return live, True
            return self.store.delete(target.resource, target.namespace, target.name, propagation)

    # -- what surrounds every write

    @staticmethod
    def _check_preconditions(target: Target, live: dict, wanted: dict) -> None:
        """A resourceVersion or uid the write carries must still be the live object's."""
        for key in ("resourceVersion", "uid"):
            if wanted.get(key) and wanted[key] != live["metadata"].get(key):
                raise errors.stale(target.resource, target.name)

    @staticmethod
    def _proposed(target: Target, live: dict, body: dict, *, keep_managed_fields: bool = False) -> dict:
        """The object a write to `target` proposes: status writes change only status, scale writes only
        spec.replicas, and main-resource writes to a kind with a status subresource keep the live status."""
        resource = target.resource
        if target.subresource == "status":
            new = copy.deepcopy(live)
            if "status" in body:
                new["status"] = copy.deepcopy(body["status"])
            else:
                new.pop("status", None)
            if keep_managed_fields:
                new["metadata"]["managedFields"] = (body.get("metadata") or {}).get("managedFields", [])
            return new
        if target.subresource == "scale":
            new = copy.deepcopy(live)
            new.setdefault("spec", {})["replicas"] = int((body.get("spec") or {}).get("replicas") or 0)
            return new
        new = copy.deepcopy(body)
        new["apiVersion"], new["kind"] = live["apiVersion"], live["kind"]
        meta = new.setdefault("metadata", {})
        kept = [k for k in SERVER_METADATA if not (keep_managed_fields and k == "managedFields")]
        for key in (*kept, "name", "namespace"):
            if key in live["metadata"]:
                meta[key] = live["metadata"][key]
            else:
                meta.pop(key, None)
        if resource.has_status:
            if "status" in live:
                new["status"] = copy.deepcopy(live["status"])
            else:
                new.pop("status", None)
        return new

    def _commit(self, target: Target, live: dict, new: dict, *, manager: str | None, dry_run: bool) -> dict:
        resource = target.resource
        self._default(resource, new, live)
        if manager:
            api_version = "autoscaling/v1" if target.subresource == "scale" else resource.api_version
            record_update(
                live,
                new,
                manager=manager,
                api_version=api_version,
                subresource=target.subresource,
                now=timestamp(),
            )
        if _spec_of(new) != _spec_of(live):
            new["metadata"]["generation"] = live["metadata"].get("generation", 0) + 1
        if _comparable(new) == _comparable(live):
            result = live
        elif dry_run:
            result = new
        else:
            result = self.store.replace(resource, new)
            self._registered(resource, result)
        return self._scale(result) if target.subresource == "scale" else result

    def _registered(self, resource: Resource, obj: dict) -> None:
        """A CustomResourceDefinition makes its resources served."""
        if resource.plural == "customresourcedefinitions":
            for served in resources_of_crd(obj):
                self.registry.add(served)

    def _default(self, resource: Resource, obj: dict, live: dict | None) -> None:
        """The few defaults the API server fills that code under test is likely to read."""
        spec = obj.setdefault("spec", {}) if resource.kind in ("Deployment", "Service") else None
        if resource.kind == "Deployment" and spec is not None:
            spec.setdefault("replicas", 1)
            spec.setdefault(
                "strategy",
                {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
            )
            spec.setdefault("revisionHistoryLimit", 10)
            spec.setdefault("progressDeadlineSeconds", 600)
        elif resource.kind == "Service" and spec is not None:
            self._default_service(spec, (live or {}).get("spec") or {})
        elif resource.kind == "Namespace":
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
            obj.setdefault("status", {"phase": "Active"})
        elif resource.kind == "Pod" and live is None:
            obj.setdefault("status", {"phase": "Pending", "qosClass": "BestEffort"})
        elif resource.kind == "Secret":
            obj.setdefault("type", "Opaque")
            for key, value in (obj.pop("stringData", None) or {}).items():
                obj.setdefault("data", {})[key] = base64.b64encode(str(value).encode()).decode()
        elif resource.kind == "CustomResourceDefinition":
            names = (obj.get("spec") or {}).get("names") or {}
            now = timestamp()
            obj.setdefault(
                "status",
                {
                    "acceptedNames": names,
                    "storedVersions": [v["name"] for v in (obj.get("spec") or {}).get("versions") or ()][:1],
                    "conditions": [
                        {"type": t, "status": "True", "reason": r, "message": m, "lastTransitionTime": now}
                        for t, r, m in (
                            ("NamesAccepted", "NoConflicts", "no conflicts found"),
                            ("Established", "InitialNamesAccepted", "the initial names have been accepted"),
                        )
                    ],
                },
            )

    def _default_service(self, spec: dict, live_spec: dict) -> None:
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if spec["type"] != "ExternalName" and "clusterIP" not in spec:
            if "clusterIP" in live_spec:
                spec["clusterIP"], spec["clusterIPs"] = live_spec["clusterIP"], live_spec.get("clusterIPs")
            else:
                self._cluster_ips += 1
                ip = f"10.96.{self._cluster_ips // 250}.{self._cluster_ips % 250 + 1}"
                spec["clusterIP"], spec["clusterIPs"] = ip, [ip]
        for port in spec.get("ports") or ():
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
