"""The autoscaling loop: reads each revision's metric, applies the pure policy, resizes the pool.

Every tick (`tick_s`, Knative's 2 s) the gateway's `/metrics` is scraped once; then, for every
revision `targets()` lists, the revision's total of its metric is measured, recorded into its
`MetricWindow`, and `decide` turns the stable and panic averages into a replica count. When that
count differs from what the engine is asked for, `resize` is awaited with a readable reason.

- concurrency: requests in flight at the gateway (outstanding plus queued); absent means 0;
- rps: the rate of the gateway's request counter between two ticks (none on the first);
- cpu: the summed rate of the replicas' CPU-seconds counters, in percent of one core;
- memory: the summed resident memory of the replicas, in percent of the memory limit;
- custom: the revision's PromQL query (`--prometheus-url`).

Activity, which keeps the last replica through the scale-to-zero grace period, is read from the
gateway for every metric: requests in flight, or the request counter having moved. `poke` is the
router's shortcut: requests wait for a revision at zero, so a replica is asked for at once rather
than at the next tick (Knative's activator pokes its autoscaler the same way).

A metric that cannot be read holds the revision at its size and puts the error in its status;
the other revisions scale on. The policy is pure (`autoscaler.policy`); every read of a clock, a
server or the engine is here.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from autoscaler.config import ScalingConfig
from autoscaler.metrics import AutoscalerMetrics
from autoscaler.policy import Decision, NoData, Observed, PolicyState, decide
from autoscaler.sources import MetricSourceError
from autoscaler.sources.promql import PromQLSource, render
from autoscaler.sources.scrape import GatewaySample, ReplicaSample, ScrapeSource, rate
from autoscaler.windows import MetricWindow

__all__ = ["Autoscaler", "Resize", "ScaleStatus", "ScaleTarget"]

log = logging.getLogger(__name__)

_S = TypeVar("_S")

#: (revision, replicas, reason): asks the engine for `replicas` of the revision.
Resize = Callable[[str, int, str], Awaitable[None]]

#: metrics read from the gateway rather than from the replicas or Prometheus.
_GATEWAY_METRICS = ("concurrency", "rps")
_NO_REQUESTS = GatewaySample(concurrency=0.0, requests_total=0.0)
_POKE_REASON = "requests waiting: scale from zero"


@dataclass(frozen=True, slots=True)
class ScaleTarget:
    """One autoscaled revision, as the controller sees it at this tick."""

    service: str
    revision: str
    config: ScalingConfig
    #: replicas ready to take traffic now.
    ready: int
    #: replicas currently asked of the engine.
    desired: int
    #: base URLs (`http://host:port`) of the ready replicas, scraped for cpu and memory.
    replica_urls: tuple[str, ...]
    #: one replica's memory limit, bytes; needed to scale on memory.
    memory_limit_bytes: int | None
    #: when the revision was first seen, on the autoscaler's clock: a new revision gets the
    #: scale-to-zero grace period from then.
    created: float


@dataclass(frozen=True, slots=True)
class ScaleStatus:
    """The last outcome for one revision, for `servegate describe` and the control API."""

    #: replicas wanted: the decision's, or the pool's size while the autoscaler holds.
    desired: int
    panic: bool
    #: the stable average per ready replica, in the metric's unit; None without a decision.
    observed: float | None
    metric: str
    #: why, in words: the decision, or why there is none.
    reason: str
    #: what kept the metric from being read or the pool from being resized; None when all went well.
    error: str | None
    #: when, on the autoscaler's clock.
    at: float


@dataclass(slots=True)
class _Revision:
    """What the loop keeps about one revision between ticks."""

    service: str
    config: ScalingConfig
    window: MetricWindow
    state: PolicyState
    #: replicas asked of the engine, from `targets()` or a poke since.
    desired: int
    #: when a request was last seen (or the seed); None if never.
    last_activity: float | None
    #: each gateway's request counter at the previous scrape, as (time, value), by its URL.
    requests: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: each replica's CPU-seconds counter at the previous scrape, as (time, value).
    cpu: dict[str, tuple[float, float]] = field(default_factory=dict)
    status: ScaleStatus | None = None
    poke: asyncio.Task[None] | None = None
    #: whether it has had a ready replica since it was first seen.
    was_ready: bool = False

    @property
    def poking(self) -> bool:
        return self.poke is not None and not self.poke.done()


class Autoscaler:
    """Sizes every revision `targets()` lists, once per `tick_s`, through `resize`.

    targets: the autoscaled revisions now; called once per tick (and by `poke` for a revision not
        seen yet). A revision missing from it is forgotten, its metrics removed.
    resize: asks the engine for a number of replicas of a revision, with the reason.
    gateway_url: base URL of the gateway whose `/metrics` gives concurrency and request counts, or
        a function naming every gateway's (several gateways on one state: their traffic is summed).
    scrape / promql: the metric sources; a ScrapeSource is made when none is given. Without
        `promql`, a revision scaled on a custom metric reports an error and holds its size.
        `aclose` closes both.
    metrics: where the autoscaler's own gauges and counters go; None: nowhere.
    tick_s: seconds between two ticks, and the width of the metric windows' buckets.
    clock: seconds, monotonic; the clock of `ScaleTarget.created` and `ScaleStatus.at`.
    """

    def __init__(
        self,
        targets: Callable[[], Sequence[ScaleTarget]],
        resize: Resize,
        gateway_url: str | Callable[[], Sequence[str]],
        *,
        scrape: ScrapeSource | None = None,
        promql: PromQLSource | None = None,
        metrics: AutoscalerMetrics | None = None,
        tick_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if tick_s <= 0:
            raise ValueError(f"tick_s must be positive, got {tick_s}")
        self._targets = targets
        self._resize = resize
        self._gateway_urls = gateway_url if callable(gateway_url) else (lambda: [gateway_url])
        self._scrape = scrape if scrape is not None else ScrapeSource()
        #: the PromQL source custom metrics are read from (None: none configured).
        self.promql = promql
        self._metrics = metrics
        self._tick_s = tick_s
        self._clock = clock
        self._revisions: dict[str, _Revision] = {}
        # Pending pokes, held here so that a task outlives its revision being forgotten.
        self._pokes: set[asyncio.Task[None]] = set()

    # -- public API --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Tick every `tick_s` until cancelled; a failing tick is logged and the loop goes on."""
        # Ticks land mid-bucket so that scheduling jitter cannot put two samples in one bucket
        # and none in the next (a missing bucket reads as zeros).
        now = self._clock()
        next_at = (math.floor(now / self._tick_s) + 0.5) * self._tick_s
        while True:
            now = self._clock()
            if next_at > now:
                await asyncio.sleep(next_at - now)
            try:
                await self.tick()
            except Exception:
                log.exception("autoscaler tick failed")
            next_at += self._tick_s
            now = self._clock()
            if next_at < now:  # a tick overran: skip the slots it missed
                next_at += math.ceil((now - next_at) / self._tick_s) * self._tick_s

    async def tick(self) -> None:
        """One pass: scrape the gateway once, then measure, decide and resize every revision."""
        now = self._clock()
        targets = list(self._targets())
        self._forget({t.revision for t in targets})
        if not targets:
            return
        gateway, gateway_error = await self._scrape_gateways()
        results = await asyncio.gather(
            *(self._scale(t, now, gateway, gateway_error) for t in targets), return_exceptions=True
        )
        for target, result in zip(targets, results, strict=True):
            if isinstance(result, Exception):
                log.error("autoscaling %s failed", target.revision, exc_info=result)
            elif isinstance(result, BaseException):
                raise result

    async def _scrape_gateways(self) -> tuple[dict[str, dict[str, GatewaySample]] | None, str | None]:
        """Every gateway's samples by its URL; None (and why) when none answered. One that does not
        answer is left out of this tick: its requests count again at the next."""
        urls = [url.rstrip("/") for url in self._gateway_urls()]
        samples, errors = await _answers(self._scrape.gateway, urls)
        if not samples:
            return None, "; ".join(errors) or "no gateway to scrape"
        if errors:
            log.debug("gateways left out of this tick: %s", "; ".join(errors))
        return samples, None

    def poke(self, revision: str) -> None:
        """Requests wait for `revision`, which has no replica: count it as active now and, if it is
        asked for zero replicas, ask for one at once, in the background. One poke runs at a time
        per revision; call it from the event loop."""
        now = self._clock()
        rev = self._revisions.get(revision)
        if rev is None:
            target = next((t for t in self._targets() if t.revision == revision), None)
            if target is None:
                log.debug("poke for %s, which is not autoscaled", revision)
                return
            rev = self._revisions[revision] = self._new_revision(target, now)
        rev.last_activity = now
        if rev.desired > 0 or rev.poking:
            return
        task = rev.poke = asyncio.get_running_loop().create_task(
            self._scale_from_zero(revision, rev), name=f"autoscaler-poke-{revision}"
        )
        self._pokes.add(task)
        task.add_done_callback(self._pokes.discard)

    def status(self, revision: str) -> ScaleStatus | None:
        """The last outcome for `revision`; None before its first tick or once it is forgotten."""
        rev = self._revisions.get(revision)
        return rev.status if rev is not None else None

    async def aclose(self) -> None:
        """Cancel pending pokes and close the metric sources."""
        pokes = list(self._pokes)
        for task in pokes:
            task.cancel()
        await asyncio.gather(*pokes, return_exceptions=True)
        await self._scrape.aclose()
        if self.promql is not None:
            await self.promql.aclose()

    # -- one revision ------------------------------------------------------------------------------

    async def _scale(
        self,
        target: ScaleTarget,
        now: float,
        gateway: dict[str, dict[str, GatewaySample]] | None,
        gateway_error: str | None,
    ) -> None:
        rev = self._track(target, now)
        rev.was_ready = rev.was_ready or target.ready > 0
        if not rev.was_ready and target.desired > 0:
            # Still coming up (a slow start, a replica waiting for a node): as Knative keeps a new
            # revision at its initial scale until it has been ready once, its grace period for
            # scaling to zero starts when it is ready; scaled away unready, nothing would wake it.
            rev.last_activity = now
        config = target.config
        sample = rps = None
        if gateway is not None:
            sample, rps = _summed(gateway, target.revision, rev, now)
            if sample.concurrency > 0 or (rps or 0.0) > 0:
                rev.last_activity = now

        try:
            if config.metric in _GATEWAY_METRICS:
                if sample is None:
                    raise MetricSourceError(gateway_error or "the gateway was not scraped")
                value = sample.concurrency if config.metric == "concurrency" else rps
            else:
                value = await self._measure(target, rev, now)
        except MetricSourceError as exc:
            self._hold(target, rev, now, f"{config.metric} unavailable", error=str(exc))
            return
        if value is not None:
            rev.window.record(now, value)

        observed = Observed(
            rev.window.average(now, config.stable_window_s),
            rev.window.average(now, config.panic_window_s),
            rev.last_activity,
        )
        result = decide(observed, config, target.ready, now, rev.state)
        if isinstance(result, NoData):
            self._hold(target, rev, now, result.reason)
            return
        rev.state = result.state
        poke = rev.poke
        if poke is not None and not poke.done():
            # A poke is asking for replicas right now: let it land before comparing with it.
            await asyncio.shield(poke)
        current = rev.desired
        reason = _reason(config, current, target.ready, result, observed, now)
        direction = "up" if result.desired > current else "down" if result.desired < current else "hold"
        error = None
        if direction != "hold":
            try:
                await self._resize(target.revision, result.desired, reason)
            except Exception as exc:
                error = f"resize to {result.desired} failed: {exc}"
                log.warning("%s: %s", target.revision, error)
            else:
                rev.desired = result.desired
                log.info("%s: %s", target.revision, reason)
        rev.status = ScaleStatus(
            result.desired, result.panic, result.observed_per_replica, config.metric, reason, error, now
        )
        if self._metrics is not None:
            self._metrics.decision(target.service, target.revision, direction)
            if error is not None:
                self._metrics.error(target.service, target.revision)
            self._metrics.record(
                target.service,
                target.revision,
                metric=config.metric,
                ready=target.ready,
                desired=rev.desired,
                panic=result.panic,
                target=config.per_replica_target,
                observed=result.observed_per_replica,
            )

    def _hold(
        self, target: ScaleTarget, rev: _Revision, now: float, why: str, error: str | None = None
    ) -> None:
        """No decision this tick: the pool keeps its size and the policy its state."""
        previous = rev.status.error if rev.status is not None else None
        if error is not None and error != previous:  # once per new error, not every tick
            log.warning("%s: %s, holding %d replicas: %s", target.revision, why, rev.desired, error)
        panic = rev.state.panic_since is not None
        reason = f"{why}: holds {_replicas(rev.desired)}"
        rev.status = ScaleStatus(rev.desired, panic, None, target.config.metric, reason, error, now)
        if self._metrics is not None:
            if error is not None:
                self._metrics.error(target.service, target.revision)
            self._metrics.record(
                target.service,
                target.revision,
                metric=target.config.metric,
                ready=target.ready,
                desired=rev.desired,
                panic=panic,
                target=target.config.per_replica_target,
                observed=None,
            )

    async def _measure(self, target: ScaleTarget, rev: _Revision, now: float) -> float | None:
        """The revision's total of a cpu, memory or custom metric; None: nothing to measure."""
        config = target.config
        if config.metric == "custom":
            if self.promql is None:
                raise MetricSourceError("the custom metric needs --prometheus-url")
            try:
                expr = render(config.query or "", revision=target.revision, service=target.service)
            except ValueError as exc:
                raise MetricSourceError(str(exc)) from None
            return await self.promql.query(expr)

        if config.metric == "memory" and not target.memory_limit_bytes:
            raise MetricSourceError("scaling on memory needs a memory limit (resources.limits.memory)")
        urls = target.replica_urls
        if not urls:
            # A pool at zero uses nothing; one still starting is not measured yet.
            rev.cpu.clear()
            return 0.0 if rev.desired == 0 else None
        samples = await self._scrape_replicas(urls)
        if config.metric == "memory":
            limit = target.memory_limit_bytes or 1
            per_replica = [s.memory_bytes / limit * 100.0 for s in samples.values()]
        else:
            per_replica = []
            for url, s in samples.items():
                cores = rate(rev.cpu.get(url), (now, s.cpu_seconds_total))
                if cores is not None:
                    per_replica.append(cores * 100.0)
            rev.cpu = {url: rev.cpu[url] for url in urls if url in rev.cpu}
            rev.cpu.update((url, (now, s.cpu_seconds_total)) for url, s in samples.items())
        if not per_replica:
            return None
        # Replicas that did not answer, or are new (no rate yet), count as the mean of the others,
        # as Knative's collector scales its per-pod average by the ready pods.
        return sum(per_replica) / len(per_replica) * len(urls)

    async def _scrape_replicas(self, urls: Sequence[str]) -> dict[str, ReplicaSample]:
        """The replicas that answered; MetricSourceError when none did."""
        samples, errors = await _answers(self._scrape.replica, urls)
        if not samples:
            raise MetricSourceError("; ".join(errors))
        if errors:
            log.debug("replicas not scraped: %s", "; ".join(errors))
        return samples

    async def _scale_from_zero(self, revision: str, rev: _Revision) -> None:
        replicas = rev.config.bounded(1)
        try:
            await self._resize(revision, replicas, _POKE_REASON)
        except Exception as exc:
            error = f"resize to {replicas} failed: {exc}"
            log.warning("%s: %s", revision, error)
            rev.status = ScaleStatus(0, False, None, rev.config.metric, _POKE_REASON, error, self._clock())
            if self._metrics is not None:
                self._metrics.error(rev.service, revision)
            return
        log.info("%s: %s", revision, _POKE_REASON)
        rev.desired = replicas
        rev.status = ScaleStatus(
            replicas, False, None, rev.config.metric, f"{_POKE_REASON}: 0 -> {replicas}", None, self._clock()
        )
        if self._metrics is not None:
            self._metrics.decision(rev.service, revision, "up")

    # -- bookkeeping -------------------------------------------------------------------------------

    def _track(self, target: ScaleTarget, now: float) -> _Revision:
        """The revision's record, made on first sight and brought up to date with `target`."""
        rev = self._revisions.get(target.revision)
        if rev is None:
            rev = self._revisions[target.revision] = self._new_revision(target, now)
            return rev
        rev.service = target.service
        if target.config.stable_window_s != rev.window.longest_window_s:
            rev.window = self._window(target.config)
        rev.config = target.config
        if not rev.poking:  # else the poke's count is newer than this view
            rev.desired = target.desired
        return rev

    def _new_revision(self, target: ScaleTarget, now: float) -> _Revision:
        # A new revision that runs gets the grace period from its creation; one created at zero
        # (initial-scale 0) stays there until a request comes.
        seed = target.created if target.desired > 0 or target.ready > 0 else None
        return _Revision(
            service=target.service,
            config=target.config,
            window=self._window(target.config),
            state=PolicyState.initial(target.ready, now),
            desired=target.desired,
            last_activity=seed,
        )

    def _window(self, config: ScalingConfig) -> MetricWindow:
        # One bucket per tick: a bucket narrower than the tick would leave every other one empty,
        # and empty buckets inside a window count as zeros.
        return MetricWindow(config.stable_window_s, bucket_s=min(self._tick_s, config.stable_window_s))

    def _forget(self, current: set[str]) -> None:
        for revision in self._revisions.keys() - current:
            rev = self._revisions.pop(revision)
            if self._metrics is not None:
                self._metrics.forget(rev.service, revision)


async def _answers(
    scrape: Callable[[str], Awaitable[_S]], urls: Sequence[str]
) -> tuple[dict[str, _S], list[str]]:
    """`scrape(url)` of every url at once: the answers by url, and why the others did not answer."""
    results = await asyncio.gather(*(scrape(url) for url in urls), return_exceptions=True)
    answers: dict[str, _S] = {}
    errors: list[str] = []
    for url, result in zip(urls, results, strict=True):
        if isinstance(result, MetricSourceError):
            errors.append(str(result))
        elif isinstance(result, BaseException):
            raise result
        else:
            answers[url] = result
    return answers, errors


def _summed(
    gateways: dict[str, dict[str, GatewaySample]], revision: str, rev: _Revision, now: float
) -> tuple[GatewaySample, float | None]:
    """A revision's requests in flight and requests per second over every gateway: rates are taken
    per gateway (a gateway that leaves is no counter reset) and summed; None before two readings."""
    concurrency, total, rates = 0.0, 0.0, []
    readings = {}
    for url, samples in gateways.items():
        sample = samples.get(revision, _NO_REQUESTS)  # absent: no request yet
        concurrency += sample.concurrency
        total += sample.requests_total
        readings[url] = (now, sample.requests_total)
        if (per_second := rate(rev.requests.get(url), readings[url])) is not None:
            rates.append(per_second)
    rev.requests = readings
    return GatewaySample(concurrency, total), (sum(rates) if rates else None)


def _reason(
    config: ScalingConfig, current: int, ready: int, decision: Decision, observed: Observed, now: float
) -> str:
    """The decision in words, e.g. "concurrency 150 per replica, target 70 (100 x 70%): 1 -> 3 replicas"."""
    if observed.stable is None:  # requests wait at zero: the policy asks for a replica unmeasured
        return f"{decision.reason}: {current} -> {decision.desired}"
    if decision.desired == 0 and current > 0:
        if observed.last_activity is None:
            return "no requests seen: scale to zero"
        return f"no requests for {now - observed.last_activity:.0f}s: scale to zero"
    unit = "%" if config.metric in ("cpu", "memory") else ""
    target = f"{_num(config.per_replica_target)}{unit}"
    if config.metric in _GATEWAY_METRICS:
        target += f" ({_num(config.target)} x {config.target_utilization:.0%})"
    change = (
        f"{current} -> {_replicas(decision.desired)}"
        if decision.desired != current
        else f"holds {_replicas(current)}"
    )
    text = (
        f"{config.metric} {_num(decision.observed_per_replica)}{unit} per replica, target {target}: {change}"
    )
    if decision.panic:
        panic = _num((observed.panic or 0.0) / max(1, ready))
        text = f"panic ({panic}{unit} per replica over the last {config.panic_window_s:g}s): {text}"
    # The policy's first note restates the figures above; the others (rate limits, bounds, delays)
    # say why the count is not the plain quotient. Its panic note is the prefix above.
    notes = [n for n in decision.reason.split("; ")[1:] if not n.startswith("panic")]
    return "; ".join([text, *notes])


def _num(value: float) -> str:
    return f"{round(value, 2):g}"


def _replicas(count: int) -> str:
    return f"{count} replica" if count == 1 else f"{count} replicas"
