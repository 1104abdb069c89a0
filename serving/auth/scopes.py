"""Roles, scopes and the pure decision of whether a principal may act on a target.

Every HTTP route and gRPC method declares one `Scope`. A token carries a `Role`, which grants a
set of scopes, and optionally the namespaces and services it is limited to. `refusal` is the
whole policy: a pure function of (principal, scope, target) that says why not, or None.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["ROLE_SCOPES", "Principal", "Role", "Scope", "Target", "refusal"]


class Scope(enum.Enum):
    """What a route does, as far as permission goes."""

    #: liveness and readiness: open to everyone (load balancers and kubelets carry no token).
    HEALTH = "health"
    #: the dashboard's page, its static files and its login form: open to everyone, they hold no
    #: data (what the page shows comes from routes with their own scopes).
    PAGE = "page"
    #: Prometheus exposition.
    METRICS = "metrics"
    #: read status, events, the registry and pipeline records.
    READ = "read"
    #: inference, and the data plane's model metadata.
    INFER = "infer"
    #: apply, delete, promote, roll back, register, move aliases.
    DEPLOY = "deploy"
    #: tokens and trust.
    ADMIN = "admin"


class Role(enum.Enum):
    VIEWER = "viewer"
    PREDICTOR = "predictor"
    DEPLOYER = "deployer"
    ADMIN = "admin"


#: what each role may do. A deployer also reads and predicts: it has to check what it rolled out.
ROLE_SCOPES: dict[Role, frozenset[Scope]] = {
    Role.VIEWER: frozenset({Scope.PAGE, Scope.READ, Scope.METRICS}),
    Role.PREDICTOR: frozenset({Scope.PAGE, Scope.INFER}),
    Role.DEPLOYER: frozenset({Scope.PAGE, Scope.READ, Scope.METRICS, Scope.INFER, Scope.DEPLOY}),
    Role.ADMIN: frozenset(Scope),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a token's name (the audit log's actor) and what it may do.

    namespaces / services: the only ones it may act on; None for no limit.
    """

    name: str
    scopes: frozenset[Scope]
    namespaces: frozenset[str] | None = None
    services: frozenset[str] | None = None
    role: Role | None = None

    @classmethod
    def of_role(
        cls,
        name: str,
        role: Role,
        namespaces: frozenset[str] | None = None,
        services: frozenset[str] | None = None,
    ) -> Principal:
        return cls(name, ROLE_SCOPES[role], namespaces or None, services or None, role)


@dataclass(frozen=True, slots=True)
class Target:
    """What a request acts on: a namespace and the names it is known by (a TrainedModel is known by
    its own name and its InferenceService's). None for either: not known yet (a new resource in the
    default namespace is still a namespace)."""

    namespace: str | None = None
    names: frozenset[str] = frozenset()
    #: the service opens its data plane to callers without a token (`--anonymous-inference`).
    anonymous_inference: bool = False
    #: shared by every namespace (the model registry): only a token limited to none may change it.
    shared: bool = False


def refusal(principal: Principal, scope: Scope, target: Target | None = None) -> str | None:
    """Why `principal` may not use `scope` on `target`, or None when it may."""
    if scope not in principal.scopes:
        role = f" ({principal.role.value} role)" if principal.role else ""
        return f"token '{principal.name}'{role} may not {_VERBS[scope]}"
    if target is None:
        return None
    if target.shared and (principal.namespaces is not None or principal.services is not None):
        return (
            f"token '{principal.name}' is limited to some namespaces or services, and the model "
            "registry is shared by all of them"
        )
    if (
        principal.namespaces is not None
        and target.namespace is not None
        and target.namespace not in principal.namespaces
    ):
        return f"token '{principal.name}' may not act in namespace '{target.namespace}'"
    if principal.services is not None and target.names and not (target.names & principal.services):
        name = sorted(target.names)[0]
        return f"token '{principal.name}' may not act on '{name}'"
    return None


_VERBS = {
    Scope.HEALTH: "check health",
    Scope.PAGE: "open the dashboard",
    Scope.METRICS: "read metrics",
    Scope.READ: "read status",
    Scope.INFER: "send inference requests",
    Scope.DEPLOY: "deploy or change resources",
    Scope.ADMIN: "manage tokens or trust",
}
