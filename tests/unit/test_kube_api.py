"""The fake Kubernetes API server (tests/kube_api), driven only through the official `kubernetes` client."""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import urllib3
from kubernetes import client, config, dynamic, watch
from kubernetes.client.exceptions import ApiException

from tests.kube_api import KubeApi, PodRuntime, Rules, kube_api

NS = "default"
APPLY = "application/apply-patch+yaml"
KSERVE = ("serving.kserve.io", "v1beta1")


@dataclass
class Clients:
    core: client.CoreV1Api
    apps: client.AppsV1Api
    discovery: client.DiscoveryV1Api
    custom: client.CustomObjectsApi


def _clients(api: KubeApi, token: str = "admin") -> Clients:
    api_client = api.api_client(token)
    return Clients(
        client.CoreV1Api(api_client),
        client.AppsV1Api(api_client),
        client.DiscoveryV1Api(api_client),
        client.CustomObjectsApi(api_client),
    )


@pytest.fixture
def api() -> Iterator[KubeApi]:
    with kube_api() as running:
        yield running


@pytest.fixture
def k(api: KubeApi) -> Clients:
    return _clients(api)


@pytest.fixture
def quiet() -> Iterator[KubeApi]:
    """A fake without its controllers: nothing writes but the test."""
    with kube_api(controllers=False) as running:
        yield running


def _error(call: Callable[[], object]) -> tuple[int, dict]:
    """The HTTP status and the `Status` body of a call that must fail."""
    with pytest.raises(ApiException) as caught:
        call()
    return caught.value.status, json.loads(caught.value.body)


def _deployment(name: str = "web", *, replicas: int | None = None, image: str = "model:1") -> dict:
    spec: dict = {
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {
                "containers": [
                    {"name": "server", "image": image, "ports": [{"name": "http", "containerPort": 8080}]}
                ]
            },
        },
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": spec}


def _apply(k: Clients, body: dict, manager: str = "servegate", *, force: bool = False):
    return k.apps.patch_namespaced_deployment(
        body["metadata"]["name"], NS, body, field_manager=manager, force=force, _content_type=APPLY
    )


def _isvc(name: str = "iris") -> dict:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://m/iris"}}},
    }


def _names(items) -> list[str]:
    return sorted(item.metadata.name for item in items)


# -- reading and writing


def test_create_get_list_with_label_and_field_selectors(k: Clients) -> None:
    for name, labels, namespace in [
        ("a", {"tier": "web", "env": "prod"}, NS),
        ("b", {"tier": "db", "env": "prod"}, NS),
        ("c", {"tier": "web"}, NS),
        ("d", {"tier": "web"}, "other"),
    ]:
        k.core.create_namespaced_config_map(
            namespace, {"metadata": {"name": name, "labels": labels}, "data": {"k": name}}
        )

    a = k.core.read_namespaced_config_map("a", NS)
    assert a.data == {"k": "a"} and a.metadata.uid and a.metadata.creation_timestamp
    listed = k.core.list_namespaced_config_map(NS)
    assert _names(listed.items) == ["a", "b", "c"]
    assert int(listed.metadata.resource_version) >= int(a.metadata.resource_version)
    for selector, expected in [
        ("tier=web", ["a", "c"]),
        ("tier==web,env=prod", ["a"]),
        ("env!=prod", ["c"]),
        ("tier in (web, db)", ["a", "b", "c"]),
        ("tier notin (web)", ["b"]),
        ("env", ["a", "b"]),
        ("!env", ["c"]),
    ]:
        assert _names(k.core.list_namespaced_config_map(NS, label_selector=selector).items) == expected, (
            selector
        )
    assert _names(k.core.list_namespaced_config_map(NS, field_selector="metadata.name=b").items) == ["b"]
    everywhere = k.core.list_config_map_for_all_namespaces(label_selector="tier=web")
    assert [(i.metadata.namespace, i.metadata.name) for i in everywhere.items] == [
        (NS, "a"),
        (NS, "c"),
        ("other", "d"),
    ]


def test_errors_and_generated_names(k: Clients) -> None:
    k.core.create_namespaced_config_map(NS, {"metadata": {"name": "a"}})
    code, status = _error(lambda: k.core.create_namespaced_config_map(NS, {"metadata": {"name": "a"}}))
    assert (code, status["reason"], status["message"]) == (
        409,
        "AlreadyExists",
        'configmaps "a" already exists',
    )
    code, status = _error(lambda: k.apps.read_namespaced_deployment("nope", NS))
    assert (code, status["kind"], status["message"]) == (404, "Status", 'deployments.apps "nope" not found')
    assert status["details"] == {"name": "nope", "group": "apps", "kind": "deployments"}

    generated = k.core.create_namespaced_config_map(NS, {"metadata": {"generateName": "job-"}})
    assert generated.metadata.name.startswith("job-") and len(generated.metadata.name) == len("job-") + 5

    stale = k.core.read_namespaced_config_map("a", NS)
    k.core.patch_namespaced_config_map("a", NS, {"data": {"x": "1"}})
    stale.data = {"y": "2"}
    code, status = _error(lambda: k.core.replace_namespaced_config_map("a", NS, stale))
    assert (code, status["reason"]) == (409, "Conflict")
    assert "the object has been modified" in status["message"]


def test_patch_types(k: Clients) -> None:
    body = _deployment(replicas=1)
    body["spec"]["template"]["spec"]["containers"].append({"name": "sidecar", "image": "proxy:1"})
    k.apps.create_namespaced_deployment(NS, body)
    # strategic merge: containers merge by name
    sidecar = {"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "image": "proxy:2"}]}}}}
    patched = k.apps.patch_namespaced_deployment("web", NS, sidecar)
    assert [(c.name, c.image) for c in patched.spec.template.spec.containers] == [
        ("server", "model:1"),
        ("sidecar", "proxy:2"),
    ]
    assert patched.metadata.generation == 2
    # JSON merge patch: lists are replaced whole
    merged = k.apps.patch_namespaced_deployment(
        "web", NS, sidecar, _content_type="application/merge-patch+json"
    )
    assert [c.name for c in merged.spec.template.spec.containers] == ["sidecar"]
    # JSON patch (a list body)
    replaced = k.apps.patch_namespaced_deployment(
        "web", NS, [{"op": "replace", "path": "/spec/replicas", "value": 0}]
    )
    assert replaced.spec.replicas == 0
    code, _ = _error(
        lambda: k.apps.patch_namespaced_deployment(
            "web", NS, [{"op": "test", "path": "/spec/replicas", "value": 5}]
        )
    )
    assert code == 422


# -- watches


def _collect(stream, count: int, w: watch.Watch) -> list[tuple[str, str]]:
    events = []
    for event in stream:
        events.append((event["type"], event["object"].metadata.name))
        if len(events) == count:
            w.stop()
    return events


def test_watch_from_a_resource_version(k: Clients) -> None:
    rv = k.core.create_namespaced_config_map(NS, {"metadata": {"name": "a"}}).metadata.resource_version
    k.core.patch_namespaced_config_map("a", NS, {"data": {"k": "v"}})
    k.core.create_namespaced_config_map(NS, {"metadata": {"name": "b"}})
    k.core.delete_namespaced_config_map("a", NS)

    w = watch.Watch()
    stream = w.stream(k.core.list_namespaced_config_map, NS, resource_version=rv, timeout_seconds=5)
    assert _collect(stream, 3, w) == [("MODIFIED", "a"), ("ADDED", "b"), ("DELETED", "a")]

    # without a resourceVersion: what exists now, as ADDED
    w = watch.Watch()
    assert _collect(w.stream(k.core.list_namespaced_config_map, NS, timeout_seconds=5), 1, w) == [
        ("ADDED", "b")
    ]


def test_watch_selector_sees_objects_enter_and_leave(k: Clients) -> None:
    rv = k.core.create_namespaced_config_map(NS, {"metadata": {"name": "a"}}).metadata.resource_version
    k.core.patch_namespaced_config_map("a", NS, {"metadata": {"labels": {"team": "ml"}}})
    k.core.patch_namespaced_config_map("a", NS, {"metadata": {"labels": {"team": None}}})
    w = watch.Watch()
    stream = w.stream(
        k.core.list_namespaced_config_map,
        NS,
        resource_version=rv,
        label_selector="team=ml",
        timeout_seconds=5,
    )
    assert _collect(stream, 2, w) == [("ADDED", "a"), ("DELETED", "a")]


def test_watch_from_a_compacted_resource_version_is_gone(api: KubeApi, k: Clients) -> None:
    rv = k.core.create_namespaced_config_map(NS, {"metadata": {"name": "a"}}).metadata.resource_version
    k.core.create_namespaced_config_map(NS, {"metadata": {"name": "b"}})
    api.compact()
    with pytest.raises(ApiException) as caught:
        next(
            iter(
                watch.Watch().stream(
                    k.core.list_namespaced_config_map, NS, resource_version=rv, timeout_seconds=5
                )
            )
        )
    assert caught.value.status == 410
    assert "too old resource version" in caught.value.reason

    # from the latest resourceVersion, watching goes on
    latest = k.core.list_namespaced_config_map(NS).metadata.resource_version
    k.core.create_namespaced_config_map(NS, {"metadata": {"name": "c"}})
    w = watch.Watch()
    stream = w.stream(k.core.list_namespaced_config_map, NS, resource_version=latest, timeout_seconds=5)
    assert _collect(stream, 1, w) == [("ADDED", "c")]


def test_watch_resumes_after_a_dropped_connection_without_losing_events(api: KubeApi, k: Clients) -> None:
    rv = k.core.list_namespaced_config_map(NS).metadata.resource_version
    w = watch.Watch()
    seen = []
    stream = w.stream(k.core.list_namespaced_config_map, NS, resource_version=rv, timeout_seconds=30)
    k.core.create_namespaced_config_map(NS, {"metadata": {"name": "a"}})
    seen.append(next(stream)["object"].metadata.name)
    k.core.create_namespaced_config_map(NS, {"metadata": {"name": "b"}})
    api.drop_watches()
    seen += [event["object"].metadata.name for event in stream]  # b, then the stream ends
    assert seen == ["a", "b"]

    k.core.create_namespaced_config_map(NS, {"metadata": {"name": "c"}})  # while nobody watches
    stream = w.stream(
        k.core.list_namespaced_config_map, NS, resource_version=w.resource_version, timeout_seconds=30
    )
    k.core.create_namespaced_config_map(NS, {"metadata": {"name": "d"}})
    assert [next(stream)["object"].metadata.name for _ in range(2)] == ["c", "d"]
    w.stop()


def test_a_watch_without_a_timeout_reconnects_by_itself(api: KubeApi, k: Clients) -> None:
    rv = k.core.list_namespaced_config_map(NS).metadata.resource_version
    events: queue.Queue = queue.Queue()
    w = watch.Watch()

    def consume() -> None:
        with contextlib.suppress(urllib3.exceptions.ProtocolError):  # how Watch.stop() ends a read
            for event in w.stream(k.core.list_namespaced_config_map, NS, resource_version=rv):
                events.put(event["object"].metadata.name)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    k.core.create_namespaced_config_map(NS, {"metadata": {"name": "a"}})
    assert events.get(timeout=5) == "a"
    api.drop_watches()
    k.core.create_namespaced_config_map(NS, {"metadata": {"name": "b"}})
    assert events.get(timeout=5) == "b"
    assert [r.verb for r in api.requests].count("watch") == 2
    w.stop()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_an_aborted_watch_breaks_the_connection(api: KubeApi, k: Clients) -> None:
    stream = watch.Watch().stream(k.core.list_namespaced_config_map, NS, timeout_seconds=30)
    k.core.create_namespaced_config_map(NS, {"metadata": {"name": "a"}})
    assert next(stream)["type"] == "ADDED"
    api.drop_watches(abort=True)
    with pytest.raises(urllib3.exceptions.ProtocolError):
        next(stream)


def test_bookmarks_and_the_watch_timeout() -> None:
    with kube_api(controllers=False, bookmark_interval=0.1) as api:
        k = _clients(api)
        rv = k.core.create_namespaced_config_map(NS, {"metadata": {"name": "a"}}).metadata.resource_version
        w = watch.Watch()
        stream = w.stream(
            k.core.list_namespaced_config_map,
            NS,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=1,
        )
        kinds = [event["type"] for event in stream]  # ends by itself after a second
        assert set(kinds) == {"BOOKMARK"} and len(kinds) >= 3
        assert w.resource_version == rv


def test_the_test_side_handles_write_like_a_controller(api: KubeApi, k: Clients) -> None:
    rv = k.core.create_namespaced_config_map(NS, {"metadata": {"name": "a"}}).metadata.resource_version
    cm = api.get("v1", "configmaps", NS, "a")
    api.put({**cm, "data": {"written": "by the test"}})
    w = watch.Watch()
    stream = w.stream(k.core.list_namespaced_config_map, NS, resource_version=rv, timeout_seconds=5)
    event = next(stream)
    w.stop()
    assert event["type"] == "MODIFIED" and event["object"].data == {"written": "by the test"}
    assert [o["metadata"]["name"] for o in api.list("v1", "ConfigMap", NS)] == ["a"]
    assert api.delete("v1", "configmaps", NS, "a") is not None
    assert api.get("v1", "configmaps", NS, "a") is None


def test_a_created_crd_is_served(k: Clients) -> None:
    crd = {
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                    },
                    "subresources": {"status": {}},
                }
            ],
        },
    }
    created = client.ApiextensionsV1Api(k.core.api_client).create_custom_resource_definition(crd)
    assert {c.type: c.status for c in created.status.conditions}["Established"] == "True"
    widget = {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w"},
        "spec": {"size": 3},
    }
    k.custom.create_namespaced_custom_object("example.com", "v1", NS, "widgets", widget)
    listed = k.custom.list_namespaced_custom_object("example.com", "v1", NS, "widgets")
    assert [(i["kind"], i["metadata"]["name"]) for i in listed["items"]] == [("Widget", "w")]


def test_leases_and_collections(k: Clients) -> None:
    leases = client.CoordinationV1Api(k.core.api_client)
    lease = leases.create_namespaced_lease(
        NS, {"metadata": {"name": "leader"}, "spec": {"holderIdentity": "a"}}
    )
    lease.spec.holder_identity = "b"
    leases.replace_namespaced_lease("leader", NS, lease)
    lease.spec.holder_identity = "c"  # with the resourceVersion "b" replaced
    code, _ = _error(lambda: leases.replace_namespaced_lease("leader", NS, lease))
    assert code == 409

    for name, tier in [("a", "web"), ("b", "web"), ("c", "db")]:
        k.core.create_namespaced_config_map(NS, {"metadata": {"name": name, "labels": {"tier": tier}}})
    k.core.delete_collection_namespaced_config_map(NS, label_selector="tier=web")
    assert _names(k.core.list_namespaced_config_map(NS).items) == ["c"]


# -- server-side apply


def test_server_side_apply_create_reapply_conflict_and_force(quiet: KubeApi) -> None:
    k = _clients(quiet)
    created = _apply(k, _deployment(replicas=2))
    assert created.spec.replicas == 2 and created.metadata.generation == 1
    [entry] = [e for e in created.metadata.managed_fields if e.manager == "servegate"]
    assert entry.operation == "Apply" and "f:replicas" in entry.fields_v1["f:spec"]

    again = _apply(k, _deployment(replicas=2))
    assert again.metadata.resource_version == created.metadata.resource_version
    assert again.metadata.generation == 1

    replicas_only = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}
    replicas_only["spec"] = {"replicas": 5}
    code, status = _error(lambda: _apply(k, replicas_only, "autoscaler"))
    assert (code, status["reason"]) == (409, "Conflict")
    assert (
        status["message"]
        == 'Apply failed with 1 conflict: conflict with "servegate" using apps/v1: .spec.replicas'
    )
    assert [c["field"] for c in status["details"]["causes"]] == [".spec.replicas"]

    forced = _apply(k, replicas_only, "autoscaler", force=True)
    assert forced.spec.replicas == 5
    owners = {e.manager: e.fields_v1 for e in forced.metadata.managed_fields}
    assert "f:replicas" in owners["autoscaler"]["f:spec"]
    assert "f:replicas" not in owners["servegate"]["f:spec"]
    code, _ = _error(lambda: _apply(k, _deployment(replicas=2)))
    assert code == 409

    changed = _apply(k, _deployment(image="model:2"))
    assert changed.spec.replicas == 5 and changed.metadata.generation == 3  # force (spec) and image
    assert {r.verb for r in quiet.requests} == {"apply"}
    assert {r.field_manager for r in quiet.requests} == {"servegate", "autoscaler"}


def test_an_applier_that_omits_replicas_keeps_a_scaled_value(k: Clients) -> None:
    assert _apply(k, _deployment()).spec.replicas == 1  # defaulted, owned by nobody
    k.apps.patch_namespaced_deployment_scale("web", NS, {"spec": {"replicas": 3}})
    assert _apply(k, _deployment(image="model:2")).spec.replicas == 3

    # owning replicas, then scaled by someone else: the scaler owns it now, and omitting it keeps it
    _apply(k, _deployment("api", replicas=2))
    scale = k.apps.read_namespaced_deployment_scale("api", NS)
    scale.spec.replicas = 4
    k.apps.replace_namespaced_deployment_scale("api", NS, scale, field_manager="hpa")
    assert _apply(k, _deployment("api")).spec.replicas == 4

    # a field the applier owned alone and now omits is removed (and defaulted again)
    _apply(k, _deployment("solo", replicas=2))
    assert _apply(k, _deployment("solo")).spec.replicas == 1


def test_apply_removes_only_what_the_manager_alone_set(k: Clients) -> None:
    def apply_map(data: dict, labels: dict):
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "cfg", "labels": labels},
            "data": data,
        }
        return k.core.patch_namespaced_config_map(
            "cfg", NS, body, field_manager="servegate", _content_type=APPLY
        )

    apply_map({"a": "1", "b": "2"}, {"x": "1", "y": "2"})
    k.core.patch_namespaced_config_map("cfg", NS, {"data": {"c": "3"}}, field_manager="editor")
    applied = apply_map({"a": "1"}, {"x": "1"})
    assert applied.data == {"a": "1", "c": "3"}
    assert applied.metadata.labels == {"x": "1"}

    code, status = _error(
        lambda: k.core.patch_namespaced_config_map("cfg", NS, {"data": {}}, _content_type=APPLY)
    )
    assert code == 422 and "fieldManager: Required value" in status["message"]


def test_apply_merges_containers_by_name_between_managers(k: Clients) -> None:
    _apply(k, _deployment(replicas=1))
    sidecar = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"template": {"spec": {"containers": [{"name": "proxy", "image": "proxy:1"}]}}},
    }
    merged = _apply(k, sidecar, "injector")
    assert [c.name for c in merged.spec.template.spec.containers] == ["server", "proxy"]
    again = _apply(k, _deployment(replicas=1, image="model:2"))
    assert [(c.name, c.image) for c in again.spec.template.spec.containers] == [
        ("server", "model:2"),
        ("proxy", "proxy:1"),
    ]


# -- subresources, custom resources


def test_status_subresource_is_separate_from_the_main_resource(quiet: KubeApi) -> None:
    k = _clients(quiet)
    created = k.apps.create_namespaced_deployment(NS, {**_deployment(replicas=2), "status": {"replicas": 9}})
    assert created.status is None or created.status.replicas is None
    replaced = k.apps.replace_namespaced_deployment(
        "web", NS, {**_deployment(replicas=2), "status": {"replicas": 9}}
    )
    assert replaced.status is None or replaced.status.replicas is None

    patched = k.apps.patch_namespaced_deployment_status(
        "web", NS, {"status": {"replicas": 4}, "spec": {"replicas": 7}}
    )
    assert patched.status.replicas == 4 and patched.spec.replicas == 2
    assert patched.metadata.generation == 1


def test_inference_service_status_through_the_status_subresource(k: Clients) -> None:
    group, version = KSERVE
    created = k.custom.create_namespaced_custom_object(
        group, version, NS, "inferenceservices", {**_isvc(), "status": {"url": "x"}}
    )
    assert "status" not in created and created["metadata"]["generation"] == 1

    status = {"url": "http://iris.default.example.com", "conditions": [{"type": "Ready", "status": "True"}]}
    patched = k.custom.patch_namespaced_custom_object_status(
        group, version, NS, "inferenceservices", "iris", {"status": status, "spec": {"predictor": {}}}
    )
    assert patched["status"] == status
    assert patched["spec"] == created["spec"] and patched["metadata"]["generation"] == 1

    spec = {"spec": {"predictor": {"minReplicas": 2}}, "status": {"url": "ignored"}}
    updated = k.custom.patch_namespaced_custom_object(group, version, NS, "inferenceservices", "iris", spec)
    assert updated["status"] == status and updated["spec"]["predictor"]["minReplicas"] == 2
    assert updated["metadata"]["generation"] == 2
    read = k.custom.get_namespaced_custom_object_status(group, version, NS, "inferenceservices", "iris")
    assert read["status"]["url"] == status["url"]


# -- deletion


def test_deleting_a_deployment_collects_its_pods(k: Clients) -> None:
    k.apps.create_namespaced_deployment(NS, _deployment(replicas=2))
    w = watch.Watch()
    pods = []
    for event in w.stream(k.core.list_namespaced_pod, NS, timeout_seconds=5):
        pods.append(event["object"].metadata.name)
        if len(set(pods)) == 2:
            w.stop()
    rv = k.core.list_namespaced_pod(NS).metadata.resource_version

    k.apps.delete_namespaced_deployment("web", NS)
    w = watch.Watch()
    stream = w.stream(k.core.list_namespaced_pod, NS, resource_version=rv, timeout_seconds=5)
    deleted = {name for kind, name in _collect(stream, 2, w)}
    assert deleted == set(pods)
    assert k.core.list_namespaced_pod(NS).items == []


def test_deleting_a_custom_resource_collects_what_it_owns(k: Clients) -> None:
    group, version = KSERVE
    for name in ("iris", "kept"):
        isvc = k.custom.create_namespaced_custom_object(group, version, NS, "inferenceservices", _isvc(name))
        owner = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "name": name}
        owner["uid"] = isvc["metadata"]["uid"]
        child = k.core.create_namespaced_config_map(
            NS, {"metadata": {"name": f"{name}-config", "ownerReferences": [owner]}}
        )
        grandchild = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "name": child.metadata.name,
            "uid": child.metadata.uid,
        }
        k.core.create_namespaced_secret(
            NS, {"metadata": {"name": f"{name}-secret", "ownerReferences": [grandchild]}}
        )

    gone = k.custom.delete_namespaced_custom_object(group, version, NS, "inferenceservices", "iris")
    assert gone["metadata"]["name"] == "iris"
    assert _names(k.core.list_namespaced_config_map(NS).items) == ["kept-config"]
    assert _names(k.core.list_namespaced_secret(NS).items) == ["kept-secret"]

    k.custom.delete_namespaced_custom_object(
        group, version, NS, "inferenceservices", "kept", propagation_policy="Orphan"
    )
    orphan = k.core.read_namespaced_config_map("kept-config", NS)
    assert orphan.metadata.owner_references is None


def test_finalizers_hold_an_object_until_they_are_removed(k: Clients) -> None:
    k.core.create_namespaced_config_map(
        NS, {"metadata": {"name": "held", "finalizers": ["servegate.io/cleanup"]}}
    )
    k.core.delete_namespaced_config_map("held", NS)
    held = k.core.read_namespaced_config_map("held", NS)
    assert held.metadata.deletion_timestamp is not None and held.metadata.finalizers == [
        "servegate.io/cleanup"
    ]

    k.core.patch_namespaced_config_map("held", NS, [{"op": "remove", "path": "/metadata/finalizers"}])
    code, _ = _error(lambda: k.core.read_namespaced_config_map("held", NS))
    assert code == 404


# -- authentication and authorization


def test_a_restricted_token_is_forbidden_in_kubernetes_words() -> None:
    operator = Rules([("get", "apps", "deployments"), ("list", "", "pods", NS)])
    with kube_api(tokens={"operator": operator}) as api:
        k = _clients(api, "operator")
        user = "system:serviceaccount:servegate:servegate"
        code, status = _error(lambda: k.apps.create_namespaced_deployment(NS, _deployment()))
        assert (code, status["reason"]) == (403, "Forbidden")
        assert status["message"] == (
            f'deployments.apps is forbidden: User "{user}" cannot create resource "deployments" '
            'in API group "apps" in the namespace "default"'
        )
        assert status["details"] == {"group": "apps", "kind": "deployments"}

        _, status = _error(
            lambda: k.apps.patch_namespaced_deployment_scale("web", NS, {"spec": {"replicas": 2}})
        )
        assert status["message"] == (
            f'deployments.apps "web" is forbidden: User "{user}" cannot patch resource "deployments/scale" '
            'in API group "apps" in the namespace "default"'
        )
        _, status = _error(lambda: k.core.list_namespaced_pod("other"))
        assert status["message"] == (
            f'pods is forbidden: User "{user}" cannot list resource "pods" '
            'in API group "" in the namespace "other"'
        )
        _, status = _error(lambda: k.core.list_pod_for_all_namespaces())
        assert status["message"].endswith('in API group "" at the cluster scope')

        assert k.core.list_namespaced_pod(NS).items == []
        code, _ = _error(lambda: k.apps.read_namespaced_deployment("web", NS))
        assert code == 404  # allowed to look, nothing there


def test_an_unknown_token_is_unauthorized(api: KubeApi) -> None:
    code, status = _error(lambda: _clients(api, "stolen").core.list_namespaced_pod(NS))
    assert (code, status["reason"], status["message"]) == (401, "Unauthorized", "Unauthorized")


# -- the cluster's controllers


def _slice_endpoints(k: Clients, service: str) -> list:
    slices = k.discovery.list_namespaced_endpoint_slice(
        NS, label_selector=f"kubernetes.io/service-name={service}"
    )
    return [e for s in slices.items for e in s.endpoints or ()]


def _ready_addresses(k: Clients, service: str) -> list[str]:
    return sorted(a for e in _slice_endpoints(k, service) if e.conditions.ready for a in e.addresses)


def test_scaling_a_deployment_moves_its_endpoints(api: KubeApi, k: Clients) -> None:
    k.apps.create_namespaced_deployment(NS, _deployment(replicas=1))
    service = {
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }
    k.core.create_namespaced_service(NS, service)

    k.apps.patch_namespaced_deployment_scale("web", NS, {"spec": {"replicas": 3}})
    addresses = api.wait_until(lambda: len(_ready_addresses(k, "web")) == 3 and _ready_addresses(k, "web"), 5)
    assert len(set(addresses)) == 3 and all(a.startswith("127.0.") for a in addresses)
    [endpoint_slice] = k.discovery.list_namespaced_endpoint_slice(NS).items
    assert endpoint_slice.address_type == "IPv4"
    assert [(p.name, p.port, p.protocol) for p in endpoint_slice.ports] == [("http", 8080, "TCP")]
    pods = {p.metadata.name: p for p in k.core.list_namespaced_pod(NS).items}
    assert {e.target_ref.name for e in endpoint_slice.endpoints} == set(pods)
    pod = next(iter(pods.values()))
    assert pod.metadata.name.startswith("web-" + pod.metadata.labels["pod-template-hash"] + "-")
    assert pod.metadata.owner_references[0].kind == "Deployment"
    assert pod.status.phase == "Running" and pod.status.container_statuses[0].ready

    status = api.wait_until(
        lambda: (s := k.apps.read_namespaced_deployment("web", NS).status).ready_replicas == 3 and s
    )
    assert (status.replicas, status.updated_replicas, status.available_replicas) == (3, 3, 3)
    assert {c.type: c.status for c in status.conditions} == {"Available": "True", "Progressing": "True"}

    k.apps.patch_namespaced_deployment_scale("web", NS, {"spec": {"replicas": 1}})
    [left] = api.wait_until(lambda: len(_slice_endpoints(k, "web")) == 1 and _ready_addresses(k, "web"), 5)
    assert left in addresses and len(k.core.list_namespaced_pod(NS).items) == 1


def test_a_new_template_rolls_the_pods(api: KubeApi, k: Clients) -> None:
    k.apps.create_namespaced_deployment(NS, _deployment(replicas=2))
    api.wait_until(lambda: k.apps.read_namespaced_deployment("web", NS).status.ready_replicas == 2, 5)
    before = {p.metadata.name for p in k.core.list_namespaced_pod(NS).items}
    k.apps.patch_namespaced_deployment(
        "web", NS, {"spec": {"template": {"spec": {"containers": [{"name": "server", "image": "model:2"}]}}}}
    )

    def rolled() -> bool:
        pods = k.core.list_namespaced_pod(NS).items
        return len(pods) == 2 and not before & {p.metadata.name for p in pods}

    api.wait_until(rolled, 5)
    assert {p.spec.containers[0].image for p in k.core.list_namespaced_pod(NS).items} == {"model:2"}
    status = api.wait_until(
        lambda: (s := k.apps.read_namespaced_deployment("web", NS).status).updated_replicas == 2 and s
    )
    assert status.observed_generation == 2


def test_a_custom_kubelet_reports_readiness_and_is_told_to_stop() -> None:
    started: list[dict] = []
    stopped: list[str] = []

    def kubelet(pod: dict) -> PodRuntime:
        started.append(pod)
        return PodRuntime(ready_after=None, stop=lambda: stopped.append(pod["metadata"]["name"]))

    with kube_api(kubelet=kubelet, first_pod_ip="127.0.0.50") as api:
        k = _clients(api)
        k.apps.create_namespaced_deployment(NS, _deployment(replicas=1))
        k.core.create_namespaced_service(
            NS, {"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}
        )
        [endpoint] = api.wait_until(lambda: _slice_endpoints(k, "web"), 5)
        assert started[0]["status"]["podIP"] == "127.0.0.50" == endpoint.addresses[0]
        assert endpoint.conditions.ready is False

        pod = started[0]["metadata"]["name"]
        api.set_pod_ready(NS, pod, True)
        assert api.wait_until(lambda: _ready_addresses(k, "web"), 5) == ["127.0.0.50"]
        assert k.core.read_namespaced_pod(pod, NS).status.container_statuses[0].ready

        k.apps.delete_namespaced_deployment("web", NS)
        assert api.wait_until(lambda: stopped, 5) == [pod]


# -- clients other than the typed APIs


def test_a_kubeconfig_and_the_dynamic_client(api: KubeApi, tmp_path: Path) -> None:
    configuration = client.Configuration()
    config.load_kube_config(
        str(api.write_kubeconfig(tmp_path / "kubeconfig")), client_configuration=configuration
    )
    api_client = client.ApiClient(configuration)
    assert "default" in _names(client.CoreV1Api(api_client).list_namespace().items)

    dyn = dynamic.DynamicClient(api_client, cache_file=str(tmp_path / "discovery.json"))
    isvcs = dyn.resources.get(api_version="serving.kserve.io/v1beta1", kind="InferenceService")
    applied = isvcs.server_side_apply(body=_isvc(), name="iris", namespace=NS, field_manager="servegate")
    assert applied.metadata.generation == 1
    assert [i.metadata.name for i in isvcs.get(namespace=NS).items] == ["iris"]
    deployments = dyn.resources.get(api_version="apps/v1", kind="Deployment")
    assert deployments.namespaced and "scale" in deployments.subresources
