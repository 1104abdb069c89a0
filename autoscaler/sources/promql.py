"""A metric source that asks a Prometheus server: one PromQL instant query, one number.

A query may name the revision being scaled through placeholders, filled in by `render`:

    sum(rate(servegate_requests_total{revision="{{revision}}"}[1m]))

`servegate prometheus-config` writes a Prometheus configuration whose replica targets carry the
`service`, `revision` and `replica` labels these queries select on.
"""

from __future__ import annotations

import math
import re
from typing import Any

import httpx

from autoscaler.sources import MetricSourceError

__all__ = ["PLACEHOLDERS", "PromQLSource", "render"]

#: the names `render` fills in, written `{{name}}` inside a double-quoted PromQL string.
PLACEHOLDERS = ("revision", "service", "namespace")

_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
# What a PromQL double-quoted string needs escaped (its escapes follow Go's).
_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})
_RESULT_KINDS = {"matrix": "a range vector", "string": "a string"}
# Prometheus prefixes a parse error with the parameter it came in; the position that follows is
# what a user needs.
_QUERY_PARAMETER = 'invalid parameter "query": '


def render(expr: str, *, revision: str, service: str, namespace: str = "default") -> str:
    """`expr` with `{{revision}}`, `{{service}}` and `{{namespace}}` replaced by those values.

    The values are escaped for a double-quoted PromQL string (`{revision="{{revision}}"}`); they
    are not regex-escaped, so `=~"{{revision}}"` matches the name as a regex. An unknown
    placeholder raises ValueError naming it.
    """
    values = {"revision": revision, "service": service, "namespace": namespace}

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            known = ", ".join("{{" + known + "}}" for known in PLACEHOLDERS)
            raise ValueError(f"unknown placeholder {match.group(0)} in {expr!r} (known: {known})")
        return values[name].translate(_ESCAPES)

    return _PLACEHOLDER.sub(substitute, expr)


class PromQLSource:
    """Instant PromQL queries against the Prometheus server at `url` (e.g. `http://127.0.0.1:9090`).

    url: base URL of the server; the HTTP API is under `/api/v1`.
    timeout_s: seconds one query may take, connecting included, before it fails.
    """

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        # trust_env=False: an HTTP(S)_PROXY meant for the internet must not capture a local server.
        self._client = httpx.AsyncClient(base_url=self.url, timeout=timeout_s, trust_env=False)

    async def query(self, expr: str, at: float | None = None) -> float | None:
        """The value of `expr` at `at` (Unix seconds; None: now), or None when it selects no series.

        An instant vector is summed into one number and a scalar returned as it is. A range
        vector or a string, a value that is not finite (NaN from 0/0 or from `scalar()` of no
        series, ±Inf) and every failure raise MetricSourceError.
        """
        body = await self._get(expr, at)
        if body.get("status") != "success":
            raise MetricSourceError(f"query {expr!r} failed at {self.url}: {_error_text(body)}")
        kind, result = body["data"]["resultType"], body["data"]["result"]
        if kind == "vector":
            if not result:
                return None
            # Sample values come as strings: "1", "1.5e+06", "NaN", "+Inf".
            value = sum(float(sample["value"][1]) for sample in result)
        elif kind == "scalar":
            value = float(result[1])
        else:
            raise MetricSourceError(
                f"query {expr!r} returns {_RESULT_KINDS.get(kind, kind)}, not an instant vector or a scalar"
            )
        if not math.isfinite(value):
            raise MetricSourceError(f"query {expr!r} returned {value}, not a finite number")
        return value

    async def query_range(
        self, expr: str, start: float, end: float, step: float
    ) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        """`expr` evaluated every `step` seconds from `start` to `end` (Unix seconds): each series'
        labels and its (time, value) points. Values that are not finite (a quantile of no requests)
        are left out. MetricSourceError when Prometheus fails or answers something else."""
        params = {
            "query": expr,
            "start": repr(float(start)),
            "end": repr(float(end)),
            "step": repr(float(step)),
        }
        body = await self._get_api("/api/v1/query_range", params, expr)
        if body.get("status") != "success":
            raise MetricSourceError(f"query {expr!r} failed at {self.url}: {_error_text(body)}")
        if body["data"]["resultType"] != "matrix":
            raise MetricSourceError(
                f"range query {expr!r} returned {body['data']['resultType']}, not a matrix"
            )
        out = []
        for series in body["data"]["result"]:
            points = [(float(t), float(v)) for t, v in series["values"] if math.isfinite(float(v))]
            out.append((series["metric"], points))
        return out

    async def check(self, expr: str) -> str | None:
        """Why Prometheus rejects `expr` (its parse error), or None when the query is usable.

        `expr` is a rendered query (no placeholders). A query whose result is a range vector or a
        string is rejected too: `query` could never read a number from it. MetricSourceError
        when the server cannot be asked.
        """
        # Evaluated at the Unix epoch, where there is no data: Prometheus parses the query and
        # reports the result type, without reading any series or failing on the data of the day.
        body = await self._get(expr, 0.0)
        if body.get("status") != "success":
            if body.get("errorType") == "bad_data":
                return str(body.get("error", "")).removeprefix(_QUERY_PARAMETER)
            raise MetricSourceError(f"checking query {expr!r} failed at {self.url}: {_error_text(body)}")
        kind = body["data"]["resultType"]
        if kind in _RESULT_KINDS:
            return f"the query returns {_RESULT_KINDS[kind]}; it must return an instant vector or a scalar"
        return None

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> PromQLSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _get(self, expr: str, at: float | None) -> dict[str, Any]:
        """Prometheus's JSON answer to the instant query, success or error."""
        params = {"query": expr}
        if at is not None:
            params["time"] = repr(float(at))
        return await self._get_api("/api/v1/query", params, expr)

    async def _get_api(self, path: str, params: dict[str, str], expr: str) -> dict[str, Any]:
        try:
            response = await self._client.get(path, params=params)
        except httpx.TimeoutException as exc:
            raise MetricSourceError(
                f"Prometheus at {self.url} did not answer query {expr!r} within {self.timeout_s}s"
            ) from exc
        except httpx.HTTPError as exc:
            raise MetricSourceError(
                f"Prometheus at {self.url} unreachable: {str(exc) or type(exc).__name__}"
            ) from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        # Prometheus answers its errors (400, 422, 503) with a JSON body; anything else is not
        # Prometheus's API (a wrong URL, a proxy's error page).
        if not isinstance(body, dict) or "status" not in body:
            raise MetricSourceError(
                f"query {expr!r}: {self.url} answered HTTP {response.status_code}, "
                f"not the Prometheus API: {response.text[:200]!r}"
            )
        return body


def _error_text(body: dict[str, Any]) -> str:
    return f"{body.get('errorType', 'error')}: {body.get('error', 'no message')}"
