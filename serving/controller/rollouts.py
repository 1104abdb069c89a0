"""Runs every InferenceService's rollout strategy (`spec.rollout`): when a new predictor revision is
ready, it becomes the canary of the rolled-out (stable) one and walks the strategy's stages. At each
look (every `interval`) the checks compare the two over the current stage's window, from what the
router saw (`router.samples`) or from Prometheus; `progressive.judge` decides; this applies it:
new traffic, promote or roll back through the controller, events, metrics.

The controller asks `canary_percent(...)` while it plans a service's traffic and `shadow(...)` while
it builds routes; everything else happens in `run()`. Progress lives in memory: a gateway restarted
mid-rollout starts the canary's rollout again from its first stage.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from autoscaler.sources import MetricSourceError
from autoscaler.sources.promql import PromQLSource, render
from router.samples import RevisionSamples, Window
from serving.controller import analysis, progressive
from serving.controller.analysis import Counts, Verdict
from serving.controller.progressive import Progress, Stage
from serving.controller.status import rfc3339
from serving.spec.rollout import RolloutCheck, RolloutStrategy, duration_s

if TYPE_CHECKING:
    from serving.controller.controller import Controller

__all__ = ["RolloutMetrics", "Rollouts"]

log = logging.getLogger(__name__)
#: who acts in events when the rollout itself promotes or rolls back.
ACTOR = "rollout"
_OUTCOME_VALUE = {"pass": 1.0, "pending": 0.0, "fail": -1.0}


class RolloutMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.stage = Gauge(
            "servegate_rollout_stage",
            "The rollout's current stage (0 is the first: the shadow phase when there is one).",
            ["service", "canary"],
            registry=registry,
        )
        self.percent = Gauge(
            "servegate_rollout_canary_percent",
            "Percent of requests the canary takes now, live or mirrored.",
            ["service", "canary", "mode"],
            registry=registry,
        )
        self.check = Gauge(
            "servegate_rollout_check",
            "Each check's last verdict: 1 pass, 0 pending, -1 fail.",
            ["service", "canary", "check"],
            registry=registry,
        )
        self.decisions = Counter(
            "servegate_rollout_decisions",
            "Rollout decisions: stepped, succeeded, waiting, aborted.",
            ["service", "decision"],
            registry=registry,
        )


@dataclass(slots=True)
class _Rollout:
    strategy: RolloutStrategy
    plan: tuple[Stage, ...]
    progress: Progress
    last_look: float


class Rollouts:
    def __init__(
        self,
        controller: Controller,
        samples: RevisionSamples,
        *,
        prometheus: PromQLSource | None = None,
        metrics: RolloutMetrics | None = None,
        clock: Callable[[], float] = time.time,
        tick_s: float = 1.0,
    ) -> None:
        self.controller = controller
        self.samples = samples
        self.prometheus = prometheus
        self.metrics = metrics
        self._clock = clock
        self.tick_s = tick_s
        self._rollouts: dict[str, _Rollout] = {}

    # -- asked by the controller while it plans ---------------------------------------------------

    def canary_percent(
        self,
        name: str,
        strategy: RolloutStrategy,
        canary_percent: int | None,
        canary: str | None,
        stable: str | None,
    ) -> int:
        """The canary's share of live traffic for service `name`, whose newest ready revision newer
        than the rolled-out one is `canary` (None: no canary now). Starts a rollout for a new canary."""
        current = self._rollouts.get(name)
        if canary is None or stable is None:
            if current is not None and current.progress.state not in progressive.DONE:
                self._ended_by_hand(name, current)
            return 0
        if current is None or current.progress.canary != canary or current.strategy != strategy:
            current = self._start(name, strategy, canary_percent, canary, stable)
        return current.progress.traffic(current.plan)[0]

    def shadow(self, name: str) -> tuple[str, int] | None:
        """(canary revision, percent) while `name`'s rollout mirrors requests to its canary."""
        current = self._rollouts.get(name)
        if current is None:
            return None
        mirrored = current.progress.traffic(current.plan)[1]
        return (current.progress.canary, mirrored) if mirrored else None

    def forget(self, name: str) -> None:
        if (current := self._rollouts.pop(name, None)) is not None:
            self._close_windows(current.progress)

    # -- status and a person's commands ---------------------------------------------------------

    def status(self, name: str) -> dict[str, Any]:
        isvc = self.controller.services.get(name)
        if isvc is None:
            from serving.controller.controller import NotFound

            raise NotFound(f"InferenceService '{name}' not found")
        strategy = isvc.spec.rollout
        if strategy is None:
            raise ValueError(f"InferenceService '{name}' has no rollout strategy (spec.rollout)")
        current = self._rollouts.get(name)
        plan = (
            current.plan
            if current
            else progressive.stages(strategy, isvc.spec.predictor.canary_traffic_percent)
        )
        out: dict[str, Any] = {
            "service": name,
            "canary": None,
            "stable": None,
            "state": "none",
            "stage": None,
            "stages": [{"kind": s.kind, "percent": s.percent, "holdSeconds": s.hold_s} for s in plan],
            "stageStarted": None,
            "traffic": {"live": 0, "shadow": 0},
            "failures": 0,
            "failureBudget": strategy.failure_budget,
            "reason": "no canary: the next new revision starts a rollout",
            "checks": [],
        }
        if current is None:
            return out
        p = current.progress
        live, mirrored = p.traffic(current.plan)
        return out | {
            "canary": p.canary,
            "stable": p.stable,
            "state": p.state,
            "stage": p.stage,
            "stageStarted": p.stage_started,
            "traffic": {"live": live, "shadow": mirrored},
            "failures": p.failures,
            "reason": p.reason,
            "checks": [v.as_dict() for v in p.verdicts],
        }

    def condition(self, name: str) -> dict[str, Any] | None:
        """The service's `RolloutSucceeded` condition: Unknown while its rollout runs (the reason
        says where), True once promoted, False once rolled back; None without a rollout."""
        current = self._rollouts.get(name)
        if current is None:
            return None
        p = current.progress
        status = {"succeeded": "True", "aborted": "False"}.get(p.state, "Unknown")
        return {
            "type": "RolloutSucceeded",
            "status": status,
            "reason": p.state.capitalize(),
            "message": f"{p.canary}: stage {p.stage + 1}/{len(current.plan)}: {p.reason}",
            "lastTransitionTime": rfc3339(p.stage_started),
        }

    async def pause(self, name: str, actor: str = "") -> str:
        current = self._running(name)
        current.progress = progressive.pause(current.progress, actor or "someone")
        return self._said(name, current, "RolloutPaused", actor)

    async def resume(self, name: str, actor: str = "") -> str:
        current = self._running(name)
        current.progress = progressive.resume(current.progress, self._clock(), actor or "someone")
        self._open_windows(current)
        return self._said(name, current, "RolloutResumed", actor)

    async def abort(self, name: str, actor: str = "") -> str:
        current = self._running(name)
        decision = progressive.abort(current.progress, actor or "someone")
        return await self._apply(name, current, decision, actor)

    def _said(self, name: str, current: _Rollout, reason: str, actor: str) -> str:
        """Record a person's step as event `reason` (its message: the progress's reason) and export."""
        self._export(name, current)
        return self._record(name, (reason, f"{current.progress.canary}: {current.progress.reason}"), actor)

    def _running(self, name: str) -> _Rollout:
        self.status(name)  # NotFound, or ValueError: no strategy
        current = self._rollouts.get(name)
        if current is None:
            raise ValueError(f"InferenceService '{name}' has no rollout in progress")
        return current

    # -- the looks --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Look at every running rollout whose interval is up, every `tick_s`, until cancelled."""
        while True:
            now = self._clock()
            # Of several gateways on one state, the leader runs the rollouts.
            running = list(self._rollouts.items()) if self.controller.leading else []
            for name, current in running:
                interval = duration_s(current.strategy.interval)
                if current.progress.state in progressive.DONE or now - current.last_look < interval:
                    continue
                current.last_look = now
                try:
                    await self.look(name, current, now)
                except Exception:
                    log.exception("the rollout of %s could not look", name)
            await asyncio.sleep(self.tick_s)

    async def look(self, name: str, current: _Rollout, now: float) -> None:
        p = current.progress
        final = p.final_look(current.plan, now)
        stage = current.plan[p.stage]
        looks = max(1, math.ceil(stage.hold_s / duration_s(current.strategy.interval)))
        alpha = analysis.look_alpha(current.strategy.confidence, looks, final)
        verdicts = await self._verdicts(name, current, stage, alpha)
        decision = progressive.judge(
            p,
            current.plan,
            verdicts,
            now,
            failure_budget=current.strategy.failure_budget,
            on_success=current.strategy.on_success,
            canary_ready=self.controller.is_ready(p.canary),
        )
        await self._apply(name, current, decision, ACTOR)

    async def _verdicts(self, name: str, current: _Rollout, stage: Stage, alpha: float) -> list[Verdict]:
        p, strategy = current.progress, current.strategy
        canary = self.samples.window(p.canary) or Window()
        stable = self.samples.window(p.stable) or Window()
        verdicts = []
        for check in strategy.judged:
            if check.metric == "errorRate":
                verdicts.append(
                    analysis.error_rate(
                        check,
                        Counts(canary.requests, canary.errors),
                        Counts(stable.requests, stable.errors),
                        alpha,
                        strategy.min_samples,
                    )
                )
            elif check.metric == "latency":
                if stage.kind == "shadow":  # mirrored after the client's answer, at another concurrency
                    continue
                verdicts.append(
                    analysis.latency(
                        check, canary.latencies_ms, stable.latencies_ms, alpha, strategy.min_samples
                    )
                )
            elif check.metric == "agreement":
                if stage.kind == "shadow":
                    verdicts.append(self._agreement(check, canary, alpha, strategy.min_samples))
            else:
                verdicts.append(await self._promql(name, check, p.canary))
        return verdicts

    @staticmethod
    def _agreement(check: RolloutCheck, canary: Window, alpha: float, min_samples: int) -> Verdict:
        if canary.problem is not None and canary.compared == 0:
            return Verdict(check.label, "fail", {}, None, f"the answers cannot be compared: {canary.problem}")
        return analysis.agreement(check, Counts(canary.compared, canary.agreed), alpha, min_samples)

    async def _promql(self, name: str, check: RolloutCheck, canary: str) -> Verdict:
        if self.prometheus is None:
            return Verdict(check.label, "pending", {}, None, "no Prometheus (servegate up --prometheus-url)")
        try:
            value = await self.prometheus.query(render(check.query or "", revision=canary, service=name))
        except MetricSourceError as exc:
            return Verdict(check.label, "pending", {}, None, f"Prometheus did not answer: {exc}")
        return analysis.threshold(check, value)

    # -- applying a decision ----------------------------------------------------------------------

    async def _apply(self, name: str, current: _Rollout, decision: progressive.Decision, actor: str) -> str:
        before = current.progress
        current.progress = decision.progress
        message = decision.progress.reason
        if decision.event is not None:
            message = self._record(name, decision.event, actor if actor != ACTOR else "")
        if decision.progress.stage != before.stage:
            self._open_windows(current)
        if decision.promote or decision.rollback:
            self._close_windows(decision.progress)
            how = self.controller.promote if decision.promote else self.controller.rollback
            try:
                await how(name, ACTOR if actor in ("", ACTOR) else actor)
            except ValueError as exc:  # a person moved it meanwhile
                log.warning("rollout of %s: %s", name, exc)
        self._export(name, current)
        self.controller.mark(name)
        return message

    def _record(self, name: str, event: tuple[str, str], actor: str) -> str:
        reason, message = event
        kind = "Warning" if reason == "RolloutAborted" else "Normal"
        self.controller.store.add_event("InferenceService", name, kind, reason, message, actor)
        if self.metrics is not None:
            self.metrics.decisions.labels(name, reason.removeprefix("Rollout").lower()).inc()
        log.info("%s: %s", reason, message)
        return message

    def _start(
        self, name: str, strategy: RolloutStrategy, canary_percent: int | None, canary: str, stable: str
    ) -> _Rollout:
        if (old := self._rollouts.get(name)) is not None:
            self._close_windows(old.progress)
        now = self._clock()
        plan = progressive.stages(strategy, canary_percent)
        current = _Rollout(strategy, plan, progressive.start(canary, stable, now), now)
        current.progress = replace(current.progress, reason=f"{plan[0]}")
        self._rollouts[name] = current
        self._open_windows(current)
        self._record(name, ("RolloutStarted", f"{canary} against {stable}: {', '.join(map(str, plan))}"), "")
        self._export(name, current)
        return current

    def _ended_by_hand(self, name: str, current: _Rollout) -> None:
        """The canary was promoted or rolled back by a person (or a new spec) while its rollout ran."""
        state = "succeeded" if self.controller.rolled_out(name) == current.progress.canary else "aborted"
        current.progress = replace(current.progress, state=state, reason="ended outside the rollout")
        self._close_windows(current.progress)
        self._export(name, current)

    def _open_windows(self, current: _Rollout) -> None:
        p = current.progress
        stage = current.plan[p.stage]
        agreement = next((c for c in current.strategy.judged if c.metric == "agreement"), None)
        compare = stage.kind == "shadow" and agreement is not None
        self.samples.open(p.canary, compare=compare, tolerance=agreement.tolerance if agreement else None)
        self.samples.open(p.stable)

    def _close_windows(self, progress: Progress) -> None:
        self.samples.close(progress.canary)
        self.samples.close(progress.stable)

    def _export(self, name: str, current: _Rollout) -> None:
        if self.metrics is None:
            return
        p = current.progress
        live, mirrored = p.traffic(current.plan)
        self.metrics.stage.labels(name, p.canary).set(p.stage)
        self.metrics.percent.labels(name, p.canary, "live").set(live)
        self.metrics.percent.labels(name, p.canary, "shadow").set(mirrored)
        for verdict in p.verdicts:
            self.metrics.check.labels(name, p.canary, verdict.check).set(_OUTCOME_VALUE[verdict.outcome])
