"""Bearer tokens and the RBAC-like rules a token is held to."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from tests.kube_api import _errors as errors
from tests.kube_api._cluster import Target


class Rule(NamedTuple):
    """One permission; "*" matches anything, and a rule without a namespace holds in every namespace
    and at the cluster scope. A subresource is named as RBAC names it: "deployments/scale"."""

    verb: str
    group: str
    resource: str
    namespace: str | None = None

    def allows(self, verb: str, group: str, resource: str, namespace: str) -> bool:
        return (
            self.verb in ("*", verb)
            and self.group in ("*", group)
            and self.resource in ("*", resource)
            and self.namespace in (None, "*", namespace)
        )


@dataclass(frozen=True, init=False)
class Rules:
    """What a token may do, and the user it authenticates as (named in 403 messages)."""

    allow: tuple[Rule, ...] = ()
    user: str = "system:serviceaccount:servegate:servegate"

    def __init__(
        self, allow: Iterable[tuple] = (), user: str = "system:serviceaccount:servegate:servegate"
    ) -> None:
        object.__setattr__(self, "allow", tuple(Rule(*rule) for rule in allow))
        object.__setattr__(self, "user", user)

    def allows(self, verb: str, group: str, resource: str, namespace: str) -> bool:
        return any(rule.allows(verb, group, resource, namespace) for rule in self.allow)


@dataclass
class Authorizer:
    """token -> Rules (None: may do anything)."""

    tokens: Mapping[str, Rules | None] = field(default_factory=lambda: {"admin": None})

    def authenticate(self, authorization: str | None) -> Rules | None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or token.strip() not in self.tokens:
            raise errors.unauthorized()
        return self.tokens[token.strip()]

    @staticmethod
    def authorize(rules: Rules | None, verb: str, target: Target) -> None:
        if rules is None:
            return
        resource = target.resource
        name = target.name
        namespace = target.namespace
        if resource.plural == "namespaces" and not resource.group and name:
            namespace = name  # Kubernetes authorizes a namespace object inside itself
        qualified = f"{resource.plural}/{target.subresource}" if target.subresource else resource.plural
        if rules.allows(verb, resource.group, qualified, namespace):
            return
        scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        group = resource.group
        why = f'User "{rules.user}" cannot {verb} resource "{qualified}" in API group "{group}" {scope}'
        raise errors.forbidden(resource, name or None, why)
