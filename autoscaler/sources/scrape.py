"""The default metric source: the Prometheus text exposition of the gateway and the replicas
(`/metrics`), scraped directly and parsed with prometheus-client's parser.

From the gateway, per revision: the requests in flight (outstanding at replicas plus queued at the
gateway: Knative's concurrency, queueing included so a saturated pool still reads as busy) and the
request counter (rps, as a rate between two scrapes). From each replica: its process's CPU seconds
(a rate: cores busy) and resident memory. Turning counters into rates is the caller's (`rate`),
since it needs the previous scrape.
"""

from __future__ import annotations

import ssl
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from autoscaler.sources import MetricSourceError

__all__ = ["GatewaySample", "ReplicaSample", "ScrapeSource", "parse_gateway", "parse_replica", "rate"]


@dataclass(frozen=True, slots=True)
class GatewaySample:
    """One revision as the gateway saw it at one scrape."""

    #: requests in flight for the revision: sent to replicas and not answered, plus queued.
    concurrency: float
    #: requests answered so far (a counter).
    requests_total: float


@dataclass(frozen=True, slots=True)
class ReplicaSample:
    #: CPU time the replica's process has used, in seconds (a counter).
    cpu_seconds_total: float
    #: resident memory of the replica's process, in bytes.
    memory_bytes: float


def _samples(text: str) -> Iterable[Sample]:
    try:
        for family in text_string_to_metric_families(text):
            yield from family.samples
    except ValueError as exc:
        raise MetricSourceError(f"unreadable metrics exposition: {exc}") from None


def parse_gateway(text: str) -> dict[str, GatewaySample]:
    """Per-revision samples from the gateway's `/metrics`."""
    concurrency: dict[str, float] = defaultdict(float)
    requests: dict[str, float] = defaultdict(float)
    for sample in _samples(text):
        revision = sample.labels.get("revision")
        if not revision:
            continue
        if sample.name in ("servegate_gateway_outstanding_requests", "servegate_gateway_queue_depth"):
            concurrency[revision] += sample.value
        elif sample.name == "servegate_gateway_requests_total":
            requests[revision] += sample.value
    return {
        revision: GatewaySample(concurrency.get(revision, 0.0), requests.get(revision, 0.0))
        for revision in concurrency.keys() | requests.keys()
    }


def parse_replica(text: str) -> ReplicaSample:
    """The process figures from a replica's `/metrics` (prometheus-client's process collector)."""
    found = {s.name: s.value for s in _samples(text) if s.name.startswith("process_")}
    missing = {"process_cpu_seconds_total", "process_resident_memory_bytes"} - found.keys()
    if missing:
        raise MetricSourceError(f"the replica exports no {', '.join(sorted(missing))}")
    return ReplicaSample(found["process_cpu_seconds_total"], found["process_resident_memory_bytes"])


def rate(previous: tuple[float, float] | None, current: tuple[float, float]) -> float | None:
    """Per-second increase of a counter between two (time, value) readings; None without two.

    A counter that went down was reset (the process restarted): its new value is the increase, as
    Prometheus's `rate()` counts it.
    """
    if previous is None or current[0] <= previous[0]:
        return None
    increase = current[1] - previous[1] if current[1] >= previous[1] else current[1]
    return increase / (current[0] - previous[0])


class ScrapeSource:
    """`verify`: how https targets' certificates are checked (httpx's `verify`). `token`: the bearer
    token `/metrics` needs (the gateway's metrics token; None: the targets are open)."""

    def __init__(
        self, timeout_s: float = 2.0, verify: ssl.SSLContext | bool = True, token: str | None = None
    ) -> None:
        headers = {"authorization": f"Bearer {token}"} if token else None
        self._client = httpx.AsyncClient(timeout=timeout_s, trust_env=False, verify=verify, headers=headers)

    async def _get(self, base_url: str) -> str:
        try:
            response = await self._client.get(f"{base_url}/metrics")
        except httpx.HTTPError as exc:
            raise MetricSourceError(f"cannot scrape {base_url}/metrics: {exc}") from None
        if response.status_code != 200:
            raise MetricSourceError(f"{base_url}/metrics answered {response.status_code}")
        return response.text

    async def gateway(self, base_url: str) -> dict[str, GatewaySample]:
        return parse_gateway(await self._get(base_url))

    async def replica(self, base_url: str) -> ReplicaSample:
        return parse_replica(await self._get(base_url))

    async def aclose(self) -> None:
        await self._client.aclose()
