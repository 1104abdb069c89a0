"""The one check in front of every route and RPC: the bearer token -> a `Principal`, then
`scopes.refusal` for the scope the route declares. Protocol adapters (`rest.py`, `grpc.py`) only
read the header and report the error through the error table (401 / UNAUTHENTICATED, 403 /
PERMISSION_DENIED).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from serving.auth.scopes import Principal, Scope, Target, refusal
from serving.errors import PermissionDenied, Unauthenticated

if TYPE_CHECKING:
    from serving.auth.sessions import SessionCookie, Sessions

__all__ = ["ANONYMOUS", "Authenticator", "Guard", "StaticTokens", "bearer"]

#: who calls when authentication is off (or an open route is called without a token).
ANONYMOUS = Principal("anonymous", frozenset(Scope))
_ANONYMOUS_PREDICTOR = Principal("anonymous", frozenset({Scope.INFER}))
_HOW = "send 'Authorization: Bearer <token>' (gRPC metadata 'authorization')"
#: routes anyone may call: health checks, and the dashboard's page, files and login, which hold no data.
_OPEN = frozenset({Scope.HEALTH, Scope.PAGE})


class Authenticator(Protocol):
    def authenticate(self, token: str) -> Principal:
        """The principal a token stands for; raises Unauthenticated saying why it does not."""
        ...


class StaticTokens:
    """A fixed set of secrets, each standing for one principal: a replica's internal tokens."""

    def __init__(self, tokens: Mapping[str, Principal]) -> None:
        self._tokens = [(secret.encode(), principal) for secret, principal in tokens.items() if secret]

    def authenticate(self, token: str) -> Principal:
        presented = token.encode()
        found = None
        for secret, principal in self._tokens:  # every one compared: the time says nothing
            if hmac.compare_digest(secret, presented):
                found = principal
        if found is None:
            raise Unauthenticated("invalid token")
        return found


def bearer(header: str | None) -> str:
    """The token in an `Authorization: Bearer <token>` header; Unauthenticated when absent or malformed."""
    if not header:
        raise Unauthenticated(f"this endpoint needs a token: {_HOW}")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise Unauthenticated(f"malformed Authorization header: {_HOW}")
    return token


class Guard:
    """Decides every request. `authenticator` None turns authentication off: everyone may do
    everything (only allowed on loopback, or with --insecure). `anonymous_inference`: the data plane
    of every service is open, as KServe's is."""

    def __init__(
        self,
        authenticator: Authenticator | None,
        *,
        anonymous_inference: bool = False,
        sessions: Sessions | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.anonymous_inference = anonymous_inference
        #: the dashboard's browser sessions, accepted where no Authorization header is sent.
        self.sessions = sessions

    @property
    def enabled(self) -> bool:
        return self.authenticator is not None

    def check(
        self,
        scope: Scope,
        authorization: str | None,
        target: Target | None = None,
        cookie: SessionCookie | None = None,
    ) -> Principal:
        """The caller, allowed `scope` on `target`; raises Unauthenticated or PermissionDenied.
        `cookie`: the dashboard session a browser presents, used when `authorization` is None."""
        if self.authenticator is None or scope in _OPEN:
            return ANONYMOUS
        if (
            scope is Scope.INFER
            and authorization is None
            and (self.anonymous_inference or (target is not None and target.anonymous_inference))
        ):
            return _ANONYMOUS_PREDICTOR
        if authorization is None and cookie is not None and self.sessions is not None:
            principal = self.sessions.principal(cookie)
        else:
            principal = self.authenticator.authenticate(bearer(authorization))
        reason = refusal(principal, scope, target)
        if reason is not None:
            raise PermissionDenied(reason)
        return principal
