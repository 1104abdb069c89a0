"""The pure parts of authorization: what each role may do, `refusal` with namespace- and
service-limited tokens, the guard's anonymous inference, the token store (expiry, revocation,
tampering, the admin token file) and the gateway's internal credentials. No servers."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.auth import ROLE_SCOPES, Guard, Principal, Role, Scope, StaticTokens, Target, bearer, refusal
from serving.auth.guard import ANONYMOUS
from serving.auth.internal import (
    GATEWAY,
    PROMETHEUS,
    GatewayTokens,
    InternalCredentials,
    may_skip_transformer,
)
from serving.auth.tokens import TokenStore, read_token_file, write_secret
from serving.errors import PermissionDenied, Unauthenticated


def _principal(role: Role, namespaces: set[str] | None = None, services: set[str] | None = None) -> Principal:
    return Principal.of_role(
        f"{role.value}-token",
        role,
        frozenset(namespaces) if namespaces else None,
        frozenset(services) if services else None,
    )


def _target(namespace: str | None, *names: str) -> Target:
    return Target(namespace, frozenset(names))


# -- roles ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        (Role.VIEWER, {Scope.PAGE, Scope.READ, Scope.METRICS}),
        (Role.PREDICTOR, {Scope.PAGE, Scope.INFER}),
        (Role.DEPLOYER, {Scope.PAGE, Scope.READ, Scope.METRICS, Scope.INFER, Scope.DEPLOY}),
        (Role.ADMIN, set(Scope)),
    ],
)
def test_what_each_role_may_do(role: Role, allowed: set[Scope]) -> None:
    assert ROLE_SCOPES[role] == allowed
    principal = _principal(role)
    for scope in Scope:
        reason = refusal(principal, scope)
        if scope in allowed:
            assert reason is None, (role, scope)
        else:
            assert reason is not None and f"({role.value} role)" in reason, (role, scope)


def test_a_viewer_reads_but_may_not_infer_or_deploy() -> None:
    viewer = _principal(Role.VIEWER)
    assert refusal(viewer, Scope.READ) is None
    assert "send inference requests" in str(refusal(viewer, Scope.INFER))
    assert "deploy" in str(refusal(viewer, Scope.DEPLOY))


def test_a_deployer_may_not_manage_tokens() -> None:
    assert "manage tokens" in str(refusal(_principal(Role.DEPLOYER), Scope.ADMIN))


def test_every_role_has_a_scope_table_entry() -> None:
    assert set(ROLE_SCOPES) == set(Role)


# -- namespaces and services ----------------------------------------------------------------------


def test_a_namespaced_deployer_acts_in_its_namespaces_only() -> None:
    deployer = _principal(Role.DEPLOYER, namespaces={"team-a", "shared"})
    assert refusal(deployer, Scope.DEPLOY, _target("team-a", "iris")) is None
    assert refusal(deployer, Scope.DEPLOY, _target("shared", "iris")) is None
    reason = refusal(deployer, Scope.DEPLOY, _target("team-b", "iris"))
    assert reason is not None and "namespace 'team-b'" in reason and "deployer-token" in reason
    # The namespace is checked for reading and inference too, not only for deploying.
    assert refusal(deployer, Scope.READ, _target("team-b", "iris")) is not None
    assert refusal(deployer, Scope.INFER, _target("team-b", "iris")) is not None
    # The scope comes first: a namespace does not give a role more than it has.
    assert "manage tokens" in str(refusal(deployer, Scope.ADMIN, _target("team-a")))


def test_a_namespaced_deployer_on_no_particular_resource() -> None:
    deployer = _principal(Role.DEPLOYER, namespaces={"team-a"})
    assert refusal(deployer, Scope.READ) is None  # a list: the endpoint filters what it shows
    assert refusal(deployer, Scope.DEPLOY, _target(None)) is None


def test_an_unlimited_token_acts_in_every_namespace() -> None:
    assert refusal(_principal(Role.DEPLOYER), Scope.DEPLOY, _target("anywhere", "x")) is None


def test_a_service_limited_predictor() -> None:
    predictor = _principal(Role.PREDICTOR, services={"iris"})
    assert refusal(predictor, Scope.INFER, _target("default", "iris")) is None
    reason = refusal(predictor, Scope.INFER, _target("default", "mlp"))
    assert reason is not None and "'mlp'" in reason
    # A TrainedModel is known by its own name and its InferenceService's: either will do.
    assert refusal(predictor, Scope.INFER, _target("default", "iris", "iris-v2")) is None
    # What acts on no named resource (the model list) is not refused by the limit.
    assert refusal(predictor, Scope.INFER, _target("default")) is None


def test_namespace_and_service_limits_together() -> None:
    deployer = _principal(Role.DEPLOYER, namespaces={"team-a"}, services={"iris"})
    assert refusal(deployer, Scope.DEPLOY, _target("team-a", "iris")) is None
    assert "namespace 'team-b'" in str(refusal(deployer, Scope.DEPLOY, _target("team-b", "iris")))
    assert "'mlp'" in str(refusal(deployer, Scope.DEPLOY, _target("team-a", "mlp")))


# -- the guard ------------------------------------------------------------------------------------

VIEWER_TOKEN = "viewer-secret"


def _guard(**kwargs: bool) -> Guard:
    return Guard(StaticTokens({VIEWER_TOKEN: _principal(Role.VIEWER)}), **kwargs)


@pytest.mark.parametrize("header", [None, "", "Basic dXNlcjpwdw==", "Bearer", "Bearer  ", "Bearer a b"])
def test_a_missing_or_malformed_header_is_unauthenticated(header: str | None) -> None:
    with pytest.raises(Unauthenticated, match="Authorization"):
        bearer(header)
    with pytest.raises(Unauthenticated):
        _guard().check(Scope.READ, header)


def test_the_bearer_scheme_is_case_insensitive() -> None:
    assert bearer("bearer abc") == "abc"
    assert _guard().check(Scope.READ, f"BEARER {VIEWER_TOKEN}").name == "viewer-token"


def test_an_unknown_token_is_unauthenticated_and_a_weak_one_forbidden() -> None:
    with pytest.raises(Unauthenticated):
        _guard().check(Scope.READ, "Bearer guessed")
    with pytest.raises(PermissionDenied, match="viewer role"):
        _guard().check(Scope.DEPLOY, f"Bearer {VIEWER_TOKEN}")


def test_health_needs_no_token_and_off_means_open() -> None:
    assert _guard().check(Scope.HEALTH, None) is ANONYMOUS
    off = Guard(None)
    assert not off.enabled
    for scope in Scope:
        assert off.check(scope, None) is ANONYMOUS


def test_anonymous_inference_opens_inference_only() -> None:
    guard = _guard(anonymous_inference=True)
    anonymous = guard.check(Scope.INFER, None, _target("default", "iris"))
    assert anonymous.scopes == frozenset({Scope.INFER})
    for scope in (Scope.READ, Scope.METRICS, Scope.DEPLOY, Scope.ADMIN):
        with pytest.raises(Unauthenticated):
            guard.check(scope, None)
    # A token that is presented is still checked, even where none is needed.
    with pytest.raises(Unauthenticated):
        guard.check(Scope.INFER, "Bearer guessed")
    # A viewer with its token is judged as itself: its role has no inference.
    with pytest.raises(PermissionDenied):
        guard.check(Scope.INFER, f"Bearer {VIEWER_TOKEN}")


def test_a_service_open_to_anonymous_inference_opens_only_itself() -> None:
    guard = _guard()
    open_target = Target("default", frozenset({"open"}), anonymous_inference=True)
    assert guard.check(Scope.INFER, None, open_target).scopes == frozenset({Scope.INFER})
    with pytest.raises(Unauthenticated):
        guard.check(Scope.INFER, None, _target("default", "closed"))
    with pytest.raises(Unauthenticated):
        guard.check(Scope.INFER, None)
    with pytest.raises(Unauthenticated):
        guard.check(Scope.READ, None, open_target)
    with pytest.raises(Unauthenticated):
        guard.check(Scope.DEPLOY, None, open_target)


# -- the token store ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[TokenStore]:
    tokens = TokenStore(f"sqlite:///{tmp_path / 'auth.db'}", clock=clock)
    yield tokens
    tokens.close()


def test_a_token_stands_for_its_role_and_limits(store: TokenStore) -> None:
    _, secret = store.create("ci", Role.DEPLOYER, namespaces=["team-a"], services=["iris"])
    principal = store.authenticate(secret)
    assert principal.name == "ci" and principal.role is Role.DEPLOYER
    assert principal.namespaces == frozenset({"team-a"}) and principal.services == frozenset({"iris"})


def test_an_expired_token_is_refused(store: TokenStore, clock: Clock) -> None:
    _, secret = store.create("short", Role.VIEWER, expires_in_s=60)
    clock.now += 59
    assert store.authenticate(secret).name == "short"
    clock.now += 1
    with pytest.raises(Unauthenticated, match="expired"):
        store.authenticate(secret)


def test_a_revoked_token_is_refused_at_once(store: TokenStore) -> None:
    _, secret = store.create("gone", Role.ADMIN)
    guard = Guard(store)
    assert guard.check(Scope.ADMIN, f"Bearer {secret}").name == "gone"
    store.revoke("gone")
    with pytest.raises(Unauthenticated):
        guard.check(Scope.READ, f"Bearer {secret}")


def test_a_revoked_token_stays_revoked_for_a_new_store(tmp_path: Path, store: TokenStore) -> None:
    _, secret = store.create("gone", Role.ADMIN)
    store.revoke("gone")
    reopened = TokenStore(f"sqlite:///{tmp_path / 'auth.db'}")
    try:
        with pytest.raises(Unauthenticated):
            reopened.authenticate(secret)
    finally:
        reopened.close()


def test_a_tampered_token_is_refused(store: TokenStore) -> None:
    _, secret = store.create("real", Role.ADMIN)
    _, other = store.create("other", Role.VIEWER)
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    id_of_real_with_secret_of_other = secret[: len("sgt_") + 12] + other[len("sgt_") + 12 :]
    for forged in (flipped, id_of_real_with_secret_of_other, secret[:-4], secret + "x", "sgt_", ""):
        with pytest.raises(Unauthenticated):
            store.authenticate(forged)


def test_secrets_are_stored_hashed(tmp_path: Path, store: TokenStore) -> None:
    _, secret = store.create("hashed", Role.ADMIN)
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("auth.db"))
    assert secret.rsplit("_", 1)[-1].encode() not in stored
    assert all("secret" not in str(info.as_dict()) for info in store.list())


def test_the_admin_token_file_is_private_and_reused(tmp_path: Path, store: TokenStore) -> None:
    path = tmp_path / "state" / "admin.token"
    assert store.ensure_admin_file(path) is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = read_token_file(path)
    assert store.authenticate(token).role is Role.ADMIN
    assert store.ensure_admin_file(path) is False
    assert read_token_file(path) == token
    assert [t.name for t in store.list()] == ["admin"]


def test_a_broken_admin_token_file_is_replaced(tmp_path: Path, store: TokenStore) -> None:
    path = tmp_path / "admin.token"
    assert store.ensure_admin_file(path)
    old = read_token_file(path)
    write_secret(path, "sgt_not-a-token")
    assert store.ensure_admin_file(path) is True
    new = read_token_file(path)
    assert new != old and store.authenticate(new).role is Role.ADMIN
    # The old admin token of that name is gone: one admin token per file, not one per restart.
    with pytest.raises(Unauthenticated):
        store.authenticate(old)
    assert [t.name for t in store.list()] == ["admin"]


def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("sgt_secret\n")
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        read_token_file(path)
    os.chmod(path, 0o600)
    assert read_token_file(path) == "sgt_secret"
    path.write_text("\n")
    with pytest.raises(ValueError, match="no token"):
        read_token_file(path)


# -- internal credentials -------------------------------------------------------------------------


def test_pool_tokens_differ_per_revision_and_per_gateway() -> None:
    credentials = InternalCredentials()
    assert credentials.pool_token("iris-predictor-00001") != credentials.pool_token("iris-predictor-00002")
    assert credentials.pool_token("iris-predictor-00001") == credentials.pool_token("iris-predictor-00001")
    assert InternalCredentials().pool_token("r") != credentials.pool_token("r")
    assert InternalCredentials(b"k" * 32).pool_token("r") == InternalCredentials(b"k" * 32).pool_token("r")


def test_a_replica_accepts_its_own_pool_token_only() -> None:
    credentials = InternalCredentials()
    # What an engine-started replica accepts (serving/cli/_serve.py): its pool's token, and Prometheus'.
    replica = Guard(
        StaticTokens({credentials.pool_token("rev-a"): GATEWAY, credentials.metrics_token: PROMETHEUS})
    )
    assert replica.check(Scope.INFER, f"Bearer {credentials.pool_token('rev-a')}") is GATEWAY
    with pytest.raises(Unauthenticated):
        replica.check(Scope.INFER, f"Bearer {credentials.pool_token('rev-b')}")
    assert replica.check(Scope.METRICS, f"Bearer {credentials.metrics_token}") is PROMETHEUS
    with pytest.raises(PermissionDenied):
        replica.check(Scope.INFER, f"Bearer {credentials.metrics_token}")


def test_a_caller_token_infers_on_its_own_service_only(store: TokenStore) -> None:
    credentials = InternalCredentials()
    guard = Guard(GatewayTokens(credentials, store))
    header = f"Bearer {credentials.caller_token('iris')}"
    assert guard.check(Scope.INFER, header, _target("default", "iris")).name == "service:iris"
    with pytest.raises(PermissionDenied, match="'mlp'"):
        guard.check(Scope.INFER, header, _target("default", "mlp"))
    for scope in (Scope.READ, Scope.DEPLOY, Scope.ADMIN):
        with pytest.raises(PermissionDenied):
            guard.check(scope, header)


def test_every_caller_token_works_whatever_its_mac_holds(store: TokenStore) -> None:
    # The MAC is urlsafe base64: about half of them have a "_", the separator of the token's parts.
    credentials = InternalCredentials(b"fixed secret for a repeatable test")
    guard = Guard(GatewayTokens(credentials, store))
    services = [f"svc-{i}" for i in range(32)]
    tokens = {service: credentials.caller_token(service) for service in services}
    assert any("_" in token.removeprefix(f"sgi_{service}_") for service, token in tokens.items())
    for service, token in tokens.items():
        assert guard.check(Scope.INFER, f"Bearer {token}", _target("default", service)).name == (
            f"service:{service}"
        )


def test_a_forged_caller_token_is_refused(store: TokenStore) -> None:
    credentials = InternalCredentials()
    guard = Guard(GatewayTokens(credentials, store))
    real = credentials.caller_token("iris")
    mac = real.removeprefix("sgi_iris_")
    forged = [
        InternalCredentials().caller_token("iris"),  # another gateway's secret
        f"sgi_mlp_{mac}",  # iris's MAC with another service's name
        real[:-1] + ("A" if real[-1] != "A" else "B"),
        "sgi_iris_",
        "sgi__" + mac,
    ]
    for token in forged:
        with pytest.raises(Unauthenticated):
            guard.check(Scope.INFER, f"Bearer {token}", _target("default", "mlp"))


def test_the_gateway_accepts_users_tokens_beside_its_own(store: TokenStore) -> None:
    credentials = InternalCredentials()
    guard = Guard(GatewayTokens(credentials, store))
    _, secret = store.create("alice", Role.VIEWER)
    assert guard.check(Scope.READ, f"Bearer {secret}").name == "alice"
    assert guard.check(Scope.METRICS, f"Bearer {credentials.metrics_token}") is PROMETHEUS
    with pytest.raises(PermissionDenied):
        guard.check(Scope.READ, f"Bearer {credentials.metrics_token}")
    # A pool token is what the gateway sends to replicas, never something it accepts itself.
    with pytest.raises(Unauthenticated):
        guard.check(Scope.READ, f"Bearer {credentials.pool_token('rev-a')}")


def test_only_the_service_itself_or_an_admin_may_skip_its_transformer() -> None:
    credentials = InternalCredentials(b"k" * 32)
    own = credentials.authenticate(credentials.caller_token("iris"))
    other = credentials.authenticate(credentials.caller_token("fraud"))
    assert own is not None and other is not None
    assert may_skip_transformer(own, "iris")
    assert not may_skip_transformer(other, "iris")
    assert not may_skip_transformer(Principal.of_role("app", Role.PREDICTOR), "iris")
    assert not may_skip_transformer(Principal.of_role("ci", Role.DEPLOYER), "iris")
    assert may_skip_transformer(Principal.of_role("root", Role.ADMIN), "iris")
    assert may_skip_transformer(ANONYMOUS, "iris")  # authentication off: nobody is told apart


def test_the_shared_registry_is_changed_only_by_unlimited_tokens() -> None:
    shared = Target(shared=True)
    assert refusal(Principal.of_role("ci", Role.DEPLOYER), Scope.DEPLOY, shared) is None
    limited = Principal.of_role("team-a", Role.DEPLOYER, namespaces=frozenset({"team-a"}))
    assert "shared by all of them" in (refusal(limited, Scope.DEPLOY, shared) or "")
    one = Principal.of_role("app", Role.DEPLOYER, services=frozenset({"fraud"}))
    assert "shared by all of them" in (refusal(one, Scope.DEPLOY, shared) or "")
