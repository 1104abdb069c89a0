"""`RegistryClient`: the registry of a running gateway, over its control API (`/api/registry`).

It has `Registry`'s methods and returns the same dataclasses, and an error the gateway reports is
raised as the same `RegistryError` class with the same message, so code written against one works
against the other:

    with RegistryClient("http://127.0.0.1:8080") as registry:
        v = registry.register("mlp", "model.onnx", metrics={"accuracy": 0.97})
        registry.set_alias("mlp", "production", v.version)

A gateway that cannot be reached raises `serving.client.GatewayUnreachable`, not a RegistryError:
that is no answer from the registry, and the SDK and CLI already report it as such. Other failures
on the way (a timeout, a dropped connection) are `serving.client.ServegateError`.
"""

from __future__ import annotations

import builtins
import re
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

import httpx

from serving.client import gateway_http, send
from serving.registry.api import ACTOR_HEADER, PREFIX
from serving.registry.types import (
    AuditEntry,
    Gate,
    GateFailed,
    InvalidArtifact,
    ModelVersion,
    RegisteredModel,
    RegistryConflict,
    RegistryError,
    RegistryNotFound,
    RegistryUnavailable,
)

__all__ = ["RegistryClient"]

#: the error classes the API names under "type"; an unknown name falls back to the status.
_ERRORS: dict[str, type[RegistryError]] = {
    cls.__name__: cls
    for cls in (
        RegistryError,
        InvalidArtifact,
        RegistryNotFound,
        RegistryConflict,
        GateFailed,
        RegistryUnavailable,
    )
}
_BY_STATUS: dict[int, type[RegistryError]] = {
    404: RegistryNotFound,
    409: RegistryConflict,
    503: RegistryUnavailable,
}
#: `FILE.py:Class`, the python format's source.
_PYTHON_SOURCE = re.compile(r"^(?P<file>.+\.py):(?P<cls>[A-Za-z_]\w*)$")


class RegistryClient:
    """`Registry`'s methods over HTTP to a gateway; close it, or use it as a context manager.

    `url`: the gateway (default `SERVEGATE_URL`, else http://127.0.0.1:8080); `timeout`: seconds
    each request may take (registering copies the artifact, so give it time; an `http` client
    keeps its own). `token`, `token_file`: the bearer token, found as `serving.Client` finds it
    (`SERVEGATE_TOKEN`, or the admin token of a gateway on this machine, when neither is given);
    an `http` client sends its own headers instead. `actor` (and each write method's, which
    overrides it), kept so that code written for `Registry` runs unchanged: sent as
    `x-servegate-user`, but the gateway's audit log names the caller's token, not this.
    `transport` replaces the network (tests pass `httpx.MockTransport`); `http` sends every
    request through an httpx client of the caller's, such as starlette's `TestClient` driving the
    API in process (its base URL is used and closing this client leaves it open). `ca_cert`: the
    CA bundle (PEM) an https gateway's certificate is checked against (default
    `SERVEGATE_CA_CERT`, else the system's).
    """

    def __init__(
        self,
        url: str | None = None,
        timeout: float = 300.0,
        *,
        token: str | None = None,
        token_file: str | Path | None = None,
        transport: httpx.BaseTransport | None = None,
        actor: str | None = None,
        http: httpx.Client | None = None,
        ca_cert: str | Path | None = None,
    ) -> None:
        self.actor = actor
        if http is not None:
            self.url = str(http.base_url).rstrip("/")
            self._http, self._owned = http, False
        else:
            self._http = gateway_http(
                url, timeout, token=token, token_file=token_file, transport=transport, ca_cert=ca_cert
            )
            self.url = str(self._http.base_url).rstrip("/")
            self._owned = True

    def close(self) -> None:
        if self._owned:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes -----------------------------------------------------------------------------------

    def register(
        self,
        name: str,
        source: str,
        *,
        format: str | None = None,
        metrics: dict[str, float] | None = None,
        params: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
        description: str = "",
        run: str | None = None,
        dataset: str | None = None,
        actor: str | None = None,
    ) -> ModelVersion:
        """`Registry.register` on the gateway. The gateway reads `source` itself: a local path is
        sent as an absolute path, so it must be one the gateway's machine can read too."""
        body: dict[str, Any] = {
            "source": _absolute(source),
            "format": format,
            "metrics": metrics or {},
            "params": params or {},
            "tags": tags or {},
            "description": description,
            "run": run,
            "dataset": dataset,
        }
        data = self._call("POST", f"/models/{_seg(name)}/versions", actor, json=body)
        return ModelVersion.from_dict(data)

    def set_alias(self, name: str, alias: str, version: int, *, actor: str | None = None) -> RegisteredModel:
        path = f"/models/{_seg(name)}/aliases/{_seg(alias)}"
        return RegisteredModel.from_dict(self._call("PUT", path, actor, json={"version": version}))

    def delete_alias(self, name: str, alias: str, *, actor: str | None = None) -> RegisteredModel:
        path = f"/models/{_seg(name)}/aliases/{_seg(alias)}"
        return RegisteredModel.from_dict(self._call("DELETE", path, actor))

    def archive(self, name: str, version: int, *, actor: str | None = None) -> ModelVersion:
        path = f"/models/{_seg(name)}/versions/{version}/archive"
        return ModelVersion.from_dict(self._call("POST", path, actor))

    def trust(
        self, name: str, version: int, trusted: bool = True, *, actor: str | None = None
    ) -> ModelVersion:
        """`Registry.trust` on the gateway; its token must be an admin's."""
        path = f"/models/{_seg(name)}/versions/{version}/trust"
        return ModelVersion.from_dict(self._call("POST", path, actor, json={"trusted": trusted}))

    def set_gates(self, name: str, gates: list[Gate], *, actor: str | None = None) -> RegisteredModel:
        body = {
            "gates": [
                {"alias": g.alias, "metric": g.metric, "op": g.op, "threshold": g.threshold} for g in gates
            ]
        }
        return RegisteredModel.from_dict(self._call("PUT", f"/models/{_seg(name)}/gates", actor, json=body))

    # -- reads ------------------------------------------------------------------------------------

    def models(self) -> builtins.list[RegisteredModel]:
        return [RegisteredModel.from_dict(m) for m in self._call("GET", "/models")["items"]]

    def model(self, name: str) -> RegisteredModel:
        return RegisteredModel.from_dict(self._call("GET", f"/models/{_seg(name)}"))

    def versions(self, name: str) -> builtins.list[ModelVersion]:
        """Every version of `name`, oldest first, archived ones included."""
        return [ModelVersion.from_dict(v) for v in self._call("GET", f"/models/{_seg(name)}")["versions"]]

    def version(self, name: str, version: int) -> ModelVersion:
        return ModelVersion.from_dict(self._call("GET", f"/models/{_seg(name)}/versions/{version}"))

    def resolve(self, uri: str) -> ModelVersion:
        """The version a `registry://NAME/VERSION` or `registry://NAME@ALIAS` URI names now."""
        return ModelVersion.from_dict(self._call("GET", "/resolve", params={"uri": uri}))

    def history(self, name: str) -> builtins.list[AuditEntry]:
        """Every change to `name`, oldest first."""
        return [AuditEntry.from_dict(e) for e in self._call("GET", f"/models/{_seg(name)}/history")["items"]]

    # -- plumbing ---------------------------------------------------------------------------------

    def _call(self, method: str, path: str, actor: str | None = None, **kwargs: Any) -> dict[str, Any]:
        who = actor or self.actor
        headers = {ACTOR_HEADER: who} if who else None
        response, body = send(self._http, self.url, method, PREFIX + path, headers=headers, **kwargs)
        if response.is_success and isinstance(body, dict):
            return body
        raise _error(response, body)


def _error(response: httpx.Response, body: Any) -> RegistryError:
    """The RegistryError the server raised: its class by name, else by status, and its message."""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        message = body["error"]
        cls = _ERRORS.get(str(body.get("type")), _BY_STATUS.get(response.status_code, RegistryError))
    elif response.is_success:
        message, cls = (
            f"{response.request.method} {response.request.url}: the answer is not a JSON object",
            RegistryError,
        )
    else:
        text = response.text.strip()[:500] or response.reason_phrase
        message, cls = (
            f"HTTP {response.status_code}: {text}",
            _BY_STATUS.get(response.status_code, RegistryError),
        )
    error = cls(message)
    if not response.is_success:
        error.status = response.status_code  # what the gateway said (413, 502, ...), not the class's
    return error


def _seg(part: str) -> str:
    return quote(part, safe="")


def _absolute(source: str) -> str:
    """A local path (or `FILE.py:Class`) made absolute, since the gateway reads it; URIs as given."""
    if "://" in source:
        return source
    match = _PYTHON_SOURCE.match(source)
    if match:
        return f"{Path(match['file']).expanduser().absolute()}:{match['cls']}"
    return str(Path(source).expanduser().absolute())
