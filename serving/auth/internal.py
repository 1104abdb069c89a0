"""Credentials the gateway makes for its own parts: one token per replica pool (the gateway sends
it on every call to that pool's replicas, which accept nothing else but health checks), one for a
service's own replicas to call back into the gateway (a transformer reaching its predictor), and
one for Prometheus to scrape `/metrics` everywhere.

Each is an HMAC of the gateway's secret, which is made at start and never leaves the process: a
replica knows only its own pool's token, so a replica on another node is not a key to the others.
Replicas of the process engine are restarted with the gateway, so a new secret per start costs
nothing; the ray engine's replicas outlive it, so it keeps the secret in the state dir (0600, like
the admin token) for a restarted gateway to talk to the replicas it re-attaches to.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Any

from serving.auth.files import read_token_file, write_secret
from serving.auth.guard import Authenticator
from serving.auth.scopes import Principal, Scope
from serving.errors import Unauthenticated

__all__ = [
    "CALLER_ENV",
    "GATEWAY",
    "GATEWAY_CERT_ENV",
    "METRICS_ENV",
    "PROMETHEUS",
    "REPLICA_TOKEN_ENV",
    "GatewayTokens",
    "InternalCredentials",
    "may_skip_transformer",
]

#: environment variables a replica started by an engine reads its tokens from (never argv: `ps` shows it).
REPLICA_TOKEN_ENV = "SERVEGATE_REPLICA_TOKEN"
METRICS_ENV = "SERVEGATE_METRICS_TOKEN"
#: the token a service's replicas send when they call the gateway (a transformer's predictor calls).
CALLER_ENV = "SERVEGATE_GATEWAY_TOKEN"
#: the certificate of a gateway serving TLS, which those calls trust (and nothing else).
GATEWAY_CERT_ENV = "SERVEGATE_GATEWAY_CERT"

#: the gateway as its replicas see it: everything but health needs this.
GATEWAY = Principal("gateway", frozenset(Scope))
#: Prometheus: metrics only.
PROMETHEUS = Principal("prometheus", frozenset({Scope.METRICS}))
_CALLER_PREFIX = "sgi_"
#: the principal a service's caller token stands for is named this, then the service.
_CALLER_NAME = "service:"


def _mac(secret: bytes, purpose: str) -> str:
    digest = hmac.new(secret, purpose.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class InternalCredentials:
    """The gateway's internal tokens, derived from one secret (random unless given, for tests)."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)
        self.metrics_token = _mac(self._secret, "metrics")

    @classmethod
    def kept_in(cls, path: Path) -> InternalCredentials:
        """The credentials whose secret is kept in `path` (made there, mode 0600, on first use)."""
        try:
            return cls(bytes.fromhex(read_token_file(path)))
        except FileNotFoundError:
            credentials = cls()
            write_secret(path, credentials._secret.hex())
            return credentials

    @classmethod
    def shared_in(cls, store: Any) -> InternalCredentials:
        """The credentials of every gateway on `store`'s state (the secret is kept there, made by the
        first): pools applied by one gateway take the others' tokens."""
        return cls(bytes.fromhex(store.secret("internal-key", lambda: secrets.token_bytes(32).hex())))

    @property
    def owner(self) -> str:
        """A name for what gateways with this secret made (a label value): the same for all of them."""
        return "sg-" + hmac.new(self._secret, b"owner", hashlib.sha256).hexdigest()[:12]

    def pool_token(self, revision: str) -> str:
        """What the gateway sends to, and only the replicas of, `revision`."""
        return _mac(self._secret, f"pool:{revision}")

    def caller_token(self, service: str) -> str:
        """What `service`'s replicas send to call the gateway back: inference on `service` only."""
        return f"{_CALLER_PREFIX}{service}_{_mac(self._secret, f'caller:{service}')}"

    def authenticate(self, token: str) -> Principal | None:
        """The principal of one of these tokens as the gateway accepts them, or None when `token` is
        not an internal one (it may still be a user's)."""
        if token.startswith(_CALLER_PREFIX):
            # The MAC is urlsafe base64, which has "_" in it; a service name (DNS-1123) has none.
            service, _, mac = token[len(_CALLER_PREFIX) :].partition("_")
            if not service or not hmac.compare_digest(
                mac.encode(), _mac(self._secret, f"caller:{service}").encode()
            ):
                raise Unauthenticated("invalid token")
            return Principal(
                f"{_CALLER_NAME}{service}", frozenset({Scope.INFER}), services=frozenset({service})
            )
        if hmac.compare_digest(token.encode(), self.metrics_token.encode()):
            return PROMETHEUS
        return None


def may_skip_transformer(principal: Principal, service: str) -> bool:
    """Whether `principal` may call `service`'s predictor past its transformer: the service's own
    replicas (its transformer) and admins may; a client may not dodge what the transformer does."""
    return Scope.ADMIN in principal.scopes or principal.name == f"{_CALLER_NAME}{service}"


class GatewayTokens:
    """What the gateway accepts: its internal tokens, then the users' (`TokenStore`)."""

    def __init__(self, internal: InternalCredentials, users: Authenticator) -> None:
        self.internal = internal
        self.users = users

    def authenticate(self, token: str) -> Principal:
        return self.internal.authenticate(token) or self.users.authenticate(token)
