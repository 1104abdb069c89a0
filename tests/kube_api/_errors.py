"""Kubernetes `Status` errors: one exception that carries the HTTP code and the Status body."""

from __future__ import annotations

from tests.kube_api._resources import Resource


class KubeError(Exception):
    """An API error answered as a `kind: Status` body with `code`."""

    def __init__(
        self, code: int, reason: str, message: str, details: dict | None = None, *, causes: list | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = dict(details or {})
        if causes:
            self.details["causes"] = causes

    def status(self) -> dict:
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def _details(resource: Resource, name: str | None) -> dict:
    details = {"group": resource.group, "kind": resource.plural}
    if name:
        details["name"] = name
    return details


def _named(resource: Resource, name: str | None) -> str:
    return f'{resource.qualified} "{name}"' if name else resource.qualified


def not_found(resource: Resource, name: str) -> KubeError:
    return KubeError(404, "NotFound", f"{_named(resource, name)} not found", _details(resource, name))


def already_exists(resource: Resource, name: str) -> KubeError:
    return KubeError(
        409, "AlreadyExists", f"{_named(resource, name)} already exists", _details(resource, name)
    )


def stale(resource: Resource, name: str) -> KubeError:
    """An update whose resourceVersion (or uid) precondition no longer holds."""
    return KubeError(
        409,
        "Conflict",
        f"Operation cannot be fulfilled on {_named(resource, name)}: the object has been modified; "
        "please apply your changes to the latest version and try again",
        _details(resource, name),
    )


def apply_conflicts(
    resource: Resource, name: str, conflicts: dict[str, list[str]], api_version: str
) -> KubeError:
    """Server-side apply met fields other managers own with other values; `conflicts` is manager -> fields."""
    count = sum(len(fields) for fields in conflicts.values())
    parts = []
    for manager, fields in conflicts.items():
        if count == 1:
            parts.append(f'conflict with "{manager}" using {api_version}: {fields[0]}')
        else:
            listed = "".join(f"\n- {field}" for field in fields)
            parts.append(f'conflicts with "{manager}" using {api_version}:{listed}')
    plural = "conflict" if count == 1 else "conflicts"
    causes = [
        {
            "reason": "FieldManagerConflict",
            "message": f'conflict with "{manager}" using {api_version}',
            "field": f,
        }
        for manager, fields in conflicts.items()
        for f in fields
    ]
    message = f"Apply failed with {count} {plural}: " + "\n".join(parts)
    return KubeError(409, "Conflict", message, _details(resource, name), causes=causes)


def forbidden(resource: Resource, name: str | None, why: str) -> KubeError:
    return KubeError(
        403, "Forbidden", f"{_named(resource, name)} is forbidden: {why}", _details(resource, name)
    )


def invalid(resource: Resource, name: str, field: str, why: str) -> KubeError:
    kind_group = f"{resource.kind}.{resource.group}" if resource.group else resource.kind
    message = f'{kind_group} "{name}" is invalid: {field}: {why}'
    causes = [{"reason": "FieldValueInvalid", "message": why, "field": field}]
    details = {"name": name, "group": resource.group, "kind": resource.kind}
    return KubeError(422, "Invalid", message, details, causes=causes)


def unauthorized() -> KubeError:
    return KubeError(401, "Unauthorized", "Unauthorized")


def bad_request(message: str) -> KubeError:
    return KubeError(400, "BadRequest", message)


def gone(message: str) -> KubeError:
    return KubeError(410, "Expired", message)


def not_allowed() -> KubeError:
    return KubeError(
        405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
    )


def unsupported_media_type(content_type: str) -> KubeError:
    return KubeError(
        415,
        "UnsupportedMediaType",
        f'the body of the request was in an unknown format ("{content_type}") - '
        "accepted media types include: "
        "application/json-patch+json, application/merge-patch+json, "
        "application/strategic-merge-patch+json, application/apply-patch+yaml",
    )


def page_not_found() -> KubeError:
    return KubeError(404, "NotFound", "the server could not find the requested resource")
