"""The operator's pure parts: the gateway's status -> the custom object's (KServe's shape), a refused
spec's condition, the merge patch between two statuses, the manifest the gateway is given, and the
Lease decisions, as tables stepped through a fake clock; then the elector on an in-memory Lease."""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest

from serving.engines.kubernetes.api import KubernetesUnavailable
from serving.operator.kube import Conflict
from serving.operator.kubelease import LeaseElector, decide, micro_time, parse_time, released
from serving.operator.status import cr_status, gateway_manifest, invalid_status, merge_patch
from serving.spec.common import Problem
from tests.election_fakes import FakeTime, Recorder

URL = "http://gw:8080/v2/models/iris"
T0 = "2026-12-04T16:07:16Z"


def _traffic(revision: str, percent: int, latest: bool) -> dict[str, Any]:
    return {"revisionName": revision, "percent": percent, "latestRevision": latest, "storageUri": "s3://m"}


def _gateway_isvc(traffic: list[dict[str, Any]], previous: str | None = None) -> dict[str, Any]:
    """What `GET /api/v1/inferenceservices/iris` answers (servegate's additions included)."""
    return {
        "metadata": {"name": "iris", "generation": 7},
        "status": {
            "url": URL,
            "address": {"url": URL},
            "conditions": [
                {"type": "PredictorReady", "status": "True", "lastTransitionTime": T0},
                {"type": "Ready", "status": "False", "lastTransitionTime": T0, "reason": "R", "message": ""},
            ],
            "components": {
                "predictor": {
                    "latestCreatedRevision": "iris-predictor-00002",
                    "latestReadyRevision": "iris-predictor-00002",
                    "latestRolledoutRevision": "iris-predictor-00001",
                    "previousRolledoutRevision": previous,
                    "storageUri": "s3://m",
                    "traffic": traffic,
                    "url": URL,
                    "replicas": {"iris-predictor-00002": {"desired": 1, "ready": 1}},
                }
            },
            "modelStatus": {
                "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"},
                "transitionStatus": "UpToDate",
                "copies": {"failedCopies": 0, "totalCopies": 1},
            },
        },
    }


_CONDITIONS = [
    {"type": "PredictorReady", "status": "True", "lastTransitionTime": T0},
    {"type": "Ready", "status": "False", "lastTransitionTime": T0, "reason": "R"},
]
_MODEL_STATUS = {
    "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"},
    "transitionStatus": "UpToDate",
    "copies": {"failedCopies": 0, "totalCopies": 1},
}


def _predictor(traffic: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "latestCreatedRevision": "iris-predictor-00002",
        "latestReadyRevision": "iris-predictor-00002",
        "latestRolledoutRevision": "iris-predictor-00001",
        **extra,
        "url": URL,
        "traffic": traffic,
    }


_STATUS_TABLE = [
    (
        "one revision: no tags, servegate's replicas and storageUri dropped, empty fields omitted",
        "InferenceService",
        _gateway_isvc([_traffic("iris-predictor-00002", 100, True)]),
        {
            "url": URL,
            "address": {"url": URL},
            "components": {
                "predictor": _predictor(
                    [{"revisionName": "iris-predictor-00002", "latestRevision": True, "percent": 100}]
                )
            },
            "modelStatus": _MODEL_STATUS,
            "conditions": _CONDITIONS,
            "observedGeneration": 3,
        },
    ),
    (
        "a canary split: KServe's latest and prev tags (kubectl's PREV column reads prev)",
        "InferenceService",
        _gateway_isvc(
            [_traffic("iris-predictor-00001", 80, False), _traffic("iris-predictor-00002", 20, True)],
            previous="iris-predictor-00001",
        ),
        {
            "url": URL,
            "address": {"url": URL},
            "components": {
                "predictor": _predictor(
                    [
                        {
                            "tag": "prev",
                            "revisionName": "iris-predictor-00001",
                            "latestRevision": False,
                            "percent": 80,
                        },
                        {
                            "tag": "latest",
                            "revisionName": "iris-predictor-00002",
                            "latestRevision": True,
                            "percent": 20,
                        },
                    ],
                    previousRolledoutRevision="iris-predictor-00001",
                )
            },
            "modelStatus": _MODEL_STATUS,
            "conditions": _CONDITIONS,
            "observedGeneration": 3,
        },
    ),
    (
        "an InferenceService without status yet",
        "InferenceService",
        {"metadata": {"name": "iris"}},
        {"observedGeneration": 3},
    ),
    (
        "a TrainedModel: url and conditions, not servegate's storageUri",
        "TrainedModel",
        {
            "status": {
                "url": "http://gw:8080/v2/models/tm",
                "storageUri": "s3://tm",
                "conditions": [
                    {"type": "InferenceServiceReady", "status": "True"},
                    {"type": "Ready", "status": "True"},
                ],
            }
        },
        {
            "url": "http://gw:8080/v2/models/tm",
            "conditions": [
                {"type": "InferenceServiceReady", "status": "True"},
                {"type": "Ready", "status": "True"},
            ],
            "observedGeneration": 3,
        },
    ),
    (
        "an InferenceGraph the gateway routes: Ready",
        "InferenceGraph",
        {"status": {"url": "http://gw:8080/graphs/g"}},
        {
            "url": "http://gw:8080/graphs/g",
            "conditions": [{"type": "Ready", "status": "True"}],
            "observedGeneration": 3,
        },
    ),
]


@pytest.mark.parametrize(
    ("kind", "gateway", "expected"), [row[1:] for row in _STATUS_TABLE], ids=[row[0] for row in _STATUS_TABLE]
)
def test_the_gateway_status_in_kserve_shape(
    kind: str, gateway: dict[str, Any], expected: dict[str, Any]
) -> None:
    before = copy.deepcopy(gateway)
    assert cr_status(kind, gateway, 3) == expected
    assert gateway == before  # not changed in place


def test_a_refused_spec_names_each_field_without_the_object_again() -> None:
    problems = [
        Problem("InferenceService/iris: spec.predictor.minReplicas", "must be at least 0"),
        Problem("", "names a service that does not exist"),
    ]
    assert invalid_status("InferenceService", "iris", problems, 4, T0) == {
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "lastTransitionTime": T0,
                "reason": "InvalidSpec",
                "message": "the gateway refused the spec: spec.predictor.minReplicas: must be at least 0; "
                "names a service that does not exist",
            }
        ],
        "observedGeneration": 4,
    }


_PATCH_TABLE = [
    ("equal", {"a": 1, "b": {"c": [1]}}, {"a": 1, "b": {"c": [1]}}, {}),
    ("a new key", {}, {"url": "u"}, {"url": "u"}),
    ("a key gone is nulled", {"url": "u", "a": 1}, {"a": 1}, {"url": None}),
    ("nested: only what changed", {"c": {"x": 1, "y": 2}}, {"c": {"x": 1, "y": 3}}, {"c": {"y": 3}}),
    ("nested key gone", {"c": {"x": 1, "y": 2}}, {"c": {"x": 1}}, {"c": {"y": None}}),
    ("lists are replaced whole", {"l": [1, 2]}, {"l": [1]}, {"l": [1]}),
    ("a dict over a scalar", {"a": 1}, {"a": {"b": 2}}, {"a": {"b": 2}}),
]


@pytest.mark.parametrize(
    ("old", "new", "patch"), [r[1:] for r in _PATCH_TABLE], ids=[r[0] for r in _PATCH_TABLE]
)
def test_the_merge_patch_between_two_statuses(old: dict, new: dict, patch: dict) -> None:
    assert merge_patch(old, new) == patch
    assert _apply_merge(old, patch) == new


def _apply_merge(target: Any, patch: Any) -> Any:
    """RFC 7386's own algorithm."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _apply_merge(out.get(key), value)
    return out


def test_the_gateway_gets_the_manifest_without_what_the_api_server_keeps() -> None:
    obj = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": "iris",
            "namespace": "models",
            "uid": "u-1",
            "resourceVersion": "42",
            "generation": 3,
            "creationTimestamp": T0,
            "finalizers": ["serving.servegate.io/cleanup"],
            "managedFields": [{"manager": "kubectl"}],
            "labels": {"team": "a"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}", "note": "x"},
        },
        "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}}}},
        "status": {"url": URL},
    }
    assert gateway_manifest(obj) == {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": "iris",
            "namespace": "models",
            "labels": {"team": "a"},
            "annotations": {"note": "x"},
        },
        "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}}}},
    }
    bare = {"apiVersion": "v", "kind": "InferenceGraph", "metadata": {"name": "g"}}
    assert gateway_manifest(bare)["metadata"] == {"name": "g", "namespace": "default"}


# -- the Lease ------------------------------------------------------------------------------------------

DURATION = 15
BASE = 1_800_000_000.0  # an instant, in Unix seconds


def _at(offset: float) -> str:
    return micro_time(BASE + offset)


def _lease(holder: str | None, renewed: float, acquired: float = 0.0, transitions: int = 0) -> dict[str, Any]:
    return {
        "holderIdentity": holder,
        "leaseDurationSeconds": DURATION,
        "acquireTime": _at(acquired),
        "renewTime": _at(renewed),
        "leaseTransitions": transitions,
    }


#: (why, the Lease's spec, who decides, now (seconds after BASE), what is written (None: nothing),
#: who holds it then, until when)
_LEASE_TABLE = [
    ("no Lease: create it", None, "a", 0.0, _lease("a", 0.0, 0.0, 0), "a", 15.0),
    (
        "its own: renew, acquired and transitions kept",
        _lease("a", 5.0, 0.0, 2),
        "a",
        10.0,
        _lease("a", 10.0, 0.0, 2),
        "a",
        25.0,
    ),
    ("another's, live: wait", _lease("a", 5.0), "b", 19.9, None, "a", 20.0),
    (
        "another's, expired at renew + duration: take it",
        _lease("a", 5.0, 0.0, 2),
        "b",
        20.0,
        _lease("b", 20.0, 20.0, 3),
        "b",
        35.0,
    ),
    (
        "released (no holder): take it at once",
        _lease("", 5.0, 0.0, 3),
        "b",
        6.0,
        _lease("b", 6.0, 6.0, 4),
        "b",
        21.0,
    ),
    (
        "its own, expired, nobody took it: renew",
        _lease("a", 0.0, 0.0, 1),
        "a",
        40.0,
        _lease("a", 40.0, 0.0, 1),
        "a",
        55.0,
    ),
]


@pytest.mark.parametrize(
    ("lease", "me", "now", "written", "holder", "expires"),
    [row[1:] for row in _LEASE_TABLE],
    ids=[row[0] for row in _LEASE_TABLE],
)
def test_the_lease_decision(
    lease: dict | None, me: str, now: float, written: dict | None, holder: str, expires: float
) -> None:
    decision = decide(lease, me, BASE + now, DURATION)
    assert decision.spec == written
    assert (decision.holder, decision.expires) == (holder, pytest.approx(BASE + expires))


def test_only_the_holder_releases_the_lease() -> None:
    assert released(_lease("b", 5.0, 0.0, 2), "a", BASE + 6.0) is None
    assert released(None, "a", BASE) is None
    assert released(_lease("a", 5.0, 0.0, 2), "a", BASE + 6.0) == {
        "holderIdentity": "",
        "leaseDurationSeconds": 1,
        "acquireTime": _at(6.0),
        "renewTime": _at(6.0),
        "leaseTransitions": 2,
    }


def test_micro_time_is_what_kubernetes_writes_and_reads_back() -> None:
    assert micro_time(1_800_000_000.25) == "2027-01-15T08:00:00.250000Z"
    assert parse_time("2027-01-15T08:00:00.250000Z") == 1_800_000_000.25
    assert parse_time("2027-01-15T08:00:00Z") == 1_800_000_000.0
    assert parse_time("2027-01-15T08:00:00+00:00") == 1_800_000_000.0
    assert parse_time(None) is None and parse_time("yesterday") is None


# -- the elector ------------------------------------------------------------------------------------------


class FakeLeases:
    """The Lease calls of `OperatorApi`, in memory: a write must carry the version it read."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False
        self._lock = threading.Lock()

    def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        if self.down:
            raise KubernetesUnavailable("cannot reach the Kubernetes API at http://k8s: connection refused")
        return copy.deepcopy(self.lease)

    def write_lease(
        self, namespace: str, name: str, spec: dict[str, Any], resource_version: str | None
    ) -> dict:
        with self._lock:
            current = self.lease["metadata"]["resourceVersion"] if self.lease else None
            if resource_version != current:
                raise Conflict("the object has been modified")
            self.version += 1
            self.lease = {"metadata": {"name": name, "resourceVersion": str(self.version)}, "spec": spec}
            return copy.deepcopy(self.lease)

    @property
    def holder(self) -> str | None:
        return self.lease["spec"]["holderIdentity"] if self.lease else None


def _elector(leases: FakeLeases, holder: str, fake: FakeTime, calls: Recorder) -> LeaseElector:
    return LeaseElector(
        leases,  # type: ignore[arg-type]  # the two Lease calls are all it makes
        "servegate",
        holder=holder,
        duration_s=DURATION,
        on_started_leading=calls.started,
        on_stopped_leading=calls.stopped,
        clock=fake.clock,
        sleep=fake.sleep,
    )


async def test_the_elector_leads_renews_and_a_successor_takes_an_expired_lease() -> None:
    leases, fake, a_calls, b_calls = FakeLeases(), FakeTime(BASE), Recorder(), Recorder()
    a, b = _elector(leases, "a", fake, a_calls), _elector(leases, "b", fake, b_calls)
    assert await a.step() and not await b.step()
    assert b.reached  # a follower that read the Lease is ready
    for _ in range(4):  # renewals every 5 s
        fake.now += a.renew_s
        assert await a.step() and not await b.step()
    assert (a_calls.calls, b_calls.calls, leases.holder) == (["started"], [], "a")

    fake.now += 10.0  # a stops renewing: 5 s left, less than one renewal, so it no longer leads
    assert not a.is_leader
    assert not await b.step()  # ... and b waits for the end of the lease
    fake.now += 5.0
    assert await b.step() and b_calls.calls == ["started"]
    assert leases.lease["spec"]["leaseTransitions"] == 1
    assert not await a.step()  # a finds b holding it
    assert a_calls.calls == ["started", "stopped"]
    await a.close()
    await b.close()


async def test_the_elector_steps_down_when_renewals_fail_past_the_deadline() -> None:
    leases, fake, calls = FakeLeases(), FakeTime(BASE), Recorder()
    a = _elector(leases, "a", fake, calls)
    assert await a.step()
    leases.down = True
    fake.now += a.renew_s
    assert await a.step()  # one failed renewal: 10 s left, still leading
    assert not a.reached
    fake.now += a.renew_s
    assert not await a.step()  # 5 s left: steps down before anyone may take over
    assert calls.calls == ["started", "stopped"]
    leases.down = False
    fake.now += a.renew_s
    assert await a.step()  # the API is back and the Lease still a's
    assert calls.calls == ["started", "stopped", "started"]
    await a.close()


async def test_closing_releases_the_lease_for_an_immediate_successor() -> None:
    leases, fake, a_calls, b_calls = FakeLeases(), FakeTime(BASE), Recorder(), Recorder()
    a, b = _elector(leases, "a", fake, a_calls), _elector(leases, "b", fake, b_calls)
    assert await a.step()
    await a.close()
    assert a_calls.calls == ["started", "stopped"] and leases.holder == ""
    fake.now += 0.5
    assert await b.step()
    await b.close()


async def test_a_lost_race_for_the_lease_is_not_leadership() -> None:
    leases, fake, calls = FakeLeases(), FakeTime(BASE), Recorder()
    a = _elector(leases, "a", fake, calls)
    original = leases.write_lease

    def racing(*args: Any) -> dict:
        leases.write_lease = original  # type: ignore[method-assign]
        original(
            "servegate",
            "servegate-operator",
            {"holderIdentity": "b", "renewTime": micro_time(fake.now), "leaseDurationSeconds": DURATION},
            None,
        )
        return original(*args)  # the version a read is stale now: Conflict

    leases.write_lease = racing  # type: ignore[method-assign]
    assert not await a.step()
    assert calls.calls == [] and a.reached and leases.holder == "b"
    await a.close()


# -- the command's flags ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["-n", "models", "--all-namespaces"], "give --namespace or --all-namespaces, not both"),
        (["-n", "Not_A_Name"], "a DNS-1123 label"),
        (["--health-port", "70000"], "70000 is not in the range"),
        (["--resync-seconds", "0"], "0 is not in the range"),
        (["--lease-seconds", "2"], "2 is not in the range"),
    ],
)
def test_bad_flags_are_click_errors(args: list[str], said: str) -> None:
    from click.testing import CliRunner

    from serving.cli.main import cli

    result = CliRunner().invoke(cli, ["operator", *args])
    assert result.exit_code == 2, result.output
    assert said in result.output
