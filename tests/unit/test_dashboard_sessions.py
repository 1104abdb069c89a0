"""Dashboard sessions: a token becomes a session that the guard accepts in place of a bearer token;
it ends when idle, when too old, when its token is revoked, and unsafe requests need its CSRF token."""

from __future__ import annotations

import pytest

from serving.auth import Guard, Principal, Role, Scope, StaticTokens
from serving.auth.sessions import SessionCookie, Sessions
from serving.errors import PermissionDenied, Unauthenticated

VIEWER = Principal.of_role("alice", Role.VIEWER)
DEPLOYER = Principal.of_role("bob", Role.DEPLOYER)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Revocable(StaticTokens):
    """StaticTokens whose tokens can be revoked."""

    def __init__(self) -> None:
        super().__init__({"viewer-token": VIEWER, "deployer-token": DEPLOYER})
        self.revoked: set[str] = set()

    def authenticate(self, token: str) -> Principal:
        if token in self.revoked:
            raise Unauthenticated("invalid or revoked token")
        return super().authenticate(token)


def _sessions(**kwargs: object) -> tuple[Sessions, Revocable, Clock]:
    tokens, clock = Revocable(), Clock()
    return Sessions(tokens, clock=clock, **kwargs), tokens, clock  # type: ignore[arg-type]


def _get(session_id: str) -> SessionCookie:
    return SessionCookie(session_id, unsafe=False, csrf=None)


def test_a_valid_token_opens_a_session_that_stands_for_it() -> None:
    sessions, _, _ = _sessions()
    session, principal = sessions.open("viewer-token")
    assert principal == VIEWER
    assert sessions.principal(_get(session.id)) == VIEWER
    assert session.csrf and session.csrf != session.id


def test_a_bad_token_opens_nothing() -> None:
    sessions, _, _ = _sessions()
    with pytest.raises(Unauthenticated):
        sessions.open("no-such-token")


@pytest.mark.parametrize(
    ("unsafe", "csrf", "allowed"),
    [
        (False, None, True),  # reading needs no CSRF token
        (True, None, False),
        (True, "wrong", False),
        (True, "right", True),
    ],
)
def test_unsafe_requests_need_the_sessions_csrf_token(unsafe: bool, csrf: str | None, allowed: bool) -> None:
    sessions, _, _ = _sessions()
    session, _ = sessions.open("deployer-token")
    cookie = SessionCookie(session.id, unsafe, session.csrf if csrf == "right" else csrf)
    if allowed:
        assert sessions.principal(cookie) == DEPLOYER
    else:
        with pytest.raises(PermissionDenied, match="CSRF"):
            sessions.principal(cookie)


@pytest.mark.parametrize(
    ("steps", "alive"),
    [
        ([100.0], True),
        ([3599.0], True),
        ([3601.0], False),  # idle longer than idle_s
        ([3000.0, 3000.0, 3000.0], False),  # used all along, but older than max_age_s
        ([3000.0, 3000.0], True),
    ],
)
def test_a_session_ends_when_idle_or_too_old(steps: list[float], alive: bool) -> None:
    sessions, _, clock = _sessions(idle_s=3600, max_age_s=7000)
    session, _ = sessions.open("viewer-token")
    found = True
    for step in steps:
        clock.now += step
        found = sessions.find(session.id) is not None
        if not found:
            break
    assert found is alive


def test_revoking_the_token_ends_its_sessions() -> None:
    sessions, tokens, _ = _sessions()
    session, _ = sessions.open("viewer-token")
    tokens.revoked.add("viewer-token")
    with pytest.raises(Unauthenticated):
        sessions.principal(_get(session.id))
    assert sessions.find(session.id) is None


def test_closed_and_unknown_sessions_are_unauthenticated() -> None:
    sessions, _, _ = _sessions()
    session, _ = sessions.open("viewer-token")
    sessions.close(session.id)
    for session_id in (session.id, "made-up"):
        with pytest.raises(Unauthenticated, match="log in again"):
            sessions.principal(_get(session_id))


def test_the_least_recently_used_sessions_go_past_the_limit() -> None:
    sessions, _, _ = _sessions(limit=2)
    first, _ = sessions.open("viewer-token")
    second, _ = sessions.open("viewer-token")
    assert sessions.find(first.id) is not None  # now the most recently used
    sessions.open("viewer-token")
    assert sessions.find(second.id) is None
    assert sessions.find(first.id) is not None


def test_the_guard_takes_a_session_where_no_bearer_token_is_sent() -> None:
    sessions, _, _ = _sessions()
    guard = Guard(sessions.authenticator, sessions=sessions)
    viewer, _ = sessions.open("viewer-token")
    assert guard.check(Scope.READ, None, cookie=_get(viewer.id)) == VIEWER
    # The session's role still decides: a viewer's session may not deploy.
    unsafe = SessionCookie(viewer.id, unsafe=True, csrf=viewer.csrf)
    with pytest.raises(PermissionDenied, match="alice"):
        guard.check(Scope.DEPLOY, None, cookie=unsafe)
    # A bearer token wins over a cookie; without either, nobody.
    assert guard.check(Scope.READ, "Bearer deployer-token", cookie=_get(viewer.id)) == DEPLOYER
    with pytest.raises(Unauthenticated):
        guard.check(Scope.READ, None)
    # The page and its files are open to everyone.
    assert guard.check(Scope.PAGE, None).name == "anonymous"
