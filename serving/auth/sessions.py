"""Browser sessions for the dashboard: a token, shown once at the login form, becomes a session
cookie (HttpOnly, SameSite=Strict) that the guard accepts in place of `Authorization: Bearer`.

The session keeps the token in memory only and authenticates it again on every request, so a
revoked or expired token ends its sessions at once. A request carried by the cookie that changes
anything (any method but GET/HEAD/OPTIONS) must also send the session's CSRF token in
`X-CSRF-Token`: a page on another site can make the browser send the cookie, but not read the CSRF
token nor set that header without a CORS preflight, which the gateway never grants.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from serving.auth.guard import Authenticator
from serving.auth.scopes import Principal
from serving.errors import PermissionDenied, Unauthenticated

__all__ = ["CSRF_HEADER", "SAFE_METHODS", "SESSION_COOKIE", "Session", "SessionCookie", "Sessions"]

SESSION_COOKIE = "servegate_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_EXPIRED = "session expired or unknown: log in again"


@dataclass(slots=True)
class Session:
    id: str
    #: the token the user logged in with; authenticated again on every request.
    token: str
    csrf: str
    created: float
    seen: float


@dataclass(frozen=True, slots=True)
class SessionCookie:
    """What a request presents instead of a bearer token: the cookie's session id, whether its method
    changes anything, and the `X-CSRF-Token` header it sent (None: none)."""

    session_id: str
    unsafe: bool
    csrf: str | None


class Sessions:
    """The gateway's open sessions, in memory (a restart logs everyone out).

    idle_s: a session unused this long ends; max_age_s: no session outlives this; limit: the most kept
    at once (the least recently used go first, so a flood of logins cannot grow memory).
    """

    def __init__(
        self,
        authenticator: Authenticator,
        *,
        idle_s: float = 8 * 3600,
        max_age_s: float = 24 * 3600,
        limit: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.authenticator = authenticator
        self.idle_s = idle_s
        self.max_age_s = max_age_s
        self.limit = limit
        self._clock = clock
        self._open: OrderedDict[str, Session] = OrderedDict()

    def open(self, token: str) -> tuple[Session, Principal]:
        """A new session for `token`; raises Unauthenticated when the token is not valid."""
        principal = self.authenticator.authenticate(token)
        now = self._clock()
        session = Session(secrets.token_urlsafe(32), token, secrets.token_urlsafe(32), now, now)
        self._open[session.id] = session
        while len(self._open) > self.limit:
            self._open.popitem(last=False)
        return session, principal

    def close(self, session_id: str) -> None:
        self._open.pop(session_id, None)

    def find(self, session_id: str) -> Session | None:
        """The live session `session_id` names (touched), or None when unknown or expired."""
        session = self._open.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if now - session.seen > self.idle_s or now - session.created > self.max_age_s:
            del self._open[session_id]
            return None
        session.seen = now
        self._open.move_to_end(session_id)
        return session

    def principal(self, cookie: SessionCookie) -> Principal:
        """Who the cookie's session stands for; Unauthenticated when it has ended (or its token was
        revoked), PermissionDenied for an unsafe request without the session's CSRF token."""
        session = self.find(cookie.session_id)
        if session is None:
            raise Unauthenticated(_EXPIRED)
        if cookie.unsafe and not hmac.compare_digest((cookie.csrf or "").encode(), session.csrf.encode()):
            raise PermissionDenied(
                "missing or wrong CSRF token: a request with the session cookie that changes anything "
                "must send the session's token in X-CSRF-Token"
            )
        try:
            return self.authenticator.authenticate(session.token)
        except Unauthenticated:
            self.close(session.id)
            raise
