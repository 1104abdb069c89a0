"""The scaling decision: Knative's KPA as a pure function of (observed, config, ready, now, state).

`decide` follows `Scale()` in Knative's `pkg/autoscaler/scaling/autoscaler.go`, then applies the
bounds and the scale-to-zero rule the KPA reconciler adds (`applyBounds`, `handleScaleToZero` in
`pkg/reconciler/autoscaling/kpa/scaler.go`):

1. desired replicas = ceil(observed total / per-replica target), for the stable and the panic
   window, each kept within the rate limits around the ready replicas (at least 1 counted);
2. panic starts when the panic window wants `panic_threshold` times the ready replicas, and ends
   once a whole stable window has passed without that; in panic the count never goes down;
3. with a scale-down delay, the highest count wanted over that trailing delay is kept;
4. the count is bounded by min/max replicas; it reaches zero only when min is 0, the stable
   average is 0 and no request has been seen for the grace period.

Nothing here reads a clock or applies the result: the caller passes `now`, keeps the returned
state for the next call and sizes the pool. For cpu and memory the target is already a
utilization, so desired = ceil(total / target) as in Kubernetes' HPA; the rest is shared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from autoscaler.config import ScalingConfig

__all__ = ["Decision", "NoData", "Observed", "PolicyState", "decide"]


@dataclass(frozen=True, slots=True)
class Observed:
    """What was seen of one revision, in the metric's unit, totalled over its replicas.

    `stable` and `panic` are averages over the stable and panic windows (total concurrency, total
    rps, summed cpu or memory percent, the custom query's value); `stable` None means the metric is
    unavailable, `panic` None reads as 0. `last_activity` is when a request was last seen (a
    request queued in the router counts), on the clock of `now`; None if never. Seed it with the
    revision's creation time, so a new idle revision gets a grace period before going to zero.
    """

    stable: float | None
    panic: float | None
    last_activity: float | None = None


@dataclass(frozen=True, slots=True)
class PolicyState:
    """What `decide` carries from one call to the next; start from `PolicyState()` or `initial()`."""

    #: when the panic window last wanted more than the threshold (seconds); None in stable mode.
    panic_since: float | None = None
    #: the most replicas asked for during this panic; panic never asks for fewer.
    max_panic_pods: int = 0
    #: (time, replicas wanted) over the trailing `scale_down_delay_s`, oldest first.
    recent: tuple[tuple[float, int], ...] = ()

    @classmethod
    def initial(cls, ready: int, now: float) -> PolicyState:
        """The state of a restarted autoscaler: as Knative does, a pool above one replica starts in
        panic at its current size, so the lost metric history cannot cause a scale-down."""
        if ready > 1:
            return cls(panic_since=now, max_panic_pods=ready)
        return cls()


@dataclass(frozen=True, slots=True)
class Decision:
    """The replicas the revision should have now, and the state for the next call."""

    desired: int
    panic: bool
    state: PolicyState
    #: why, for logs and `servegate describe`.
    reason: str
    #: the stable average per ready replica (at least one counted), in the metric's unit.
    observed_per_replica: float


@dataclass(frozen=True, slots=True)
class NoData:
    """No decision: the metric is unavailable, so the caller keeps the pool's size and the state."""

    reason: str


def decide(
    observed: Observed, config: ScalingConfig, ready: int, now: float, state: PolicyState
) -> Decision | NoData:
    """The replicas wanted at `now` (seconds) given `ready` replicas serving, or NoData."""
    since = None if observed.last_activity is None else now - observed.last_activity
    recently_active = since is not None and since <= config.scale_to_zero_grace_s
    if observed.stable is None:
        if ready == 0 and recently_active:
            # A request waits on a revision at zero: bring one replica now rather than wait for
            # the first sample (Knative's activator pokes the autoscaler the same way).
            desired = config.bounded(1)
            return Decision(desired, False, state, "requests waiting at zero replicas", 0.0)
        return NoData(f"no {config.metric} sample in the last {config.stable_window_s:g}s")

    stable, panic = observed.stable, observed.panic or 0.0
    counted = max(1, ready)  # Knative divides and multiplies by at least one replica
    target = config.per_replica_target
    max_up = math.ceil(config.max_scale_up_rate * counted)
    max_down = math.floor(counted / config.max_scale_down_rate)
    want_stable, want_panic = math.ceil(stable / target), math.ceil(panic / target)
    stable_pods = min(max(want_stable, max_down), max_up)
    panic_pods = min(max(want_panic, max_down), max_up)
    notes = [f"{config.metric} {stable:g} over {ready} ready, {target:g} per replica"]
    if stable_pods != want_stable:
        notes.append(f"{want_stable} limited by the scale-{'up' if want_stable > max_up else 'down'} rate")

    panic_since, max_panic = state.panic_since, state.max_panic_pods
    if want_panic / counted >= config.panic_threshold:
        panic_since = now  # entering panic, or still above the threshold: the window restarts
    elif panic_since is not None and now - panic_since > config.stable_window_s:
        panic_since, max_panic = None, 0  # the surge has made its way into the stable window

    desired = stable_pods
    if panic_since is not None:
        # Provision for whichever window wants more, and never scale down while panicking.
        desired = max(desired, panic_pods, max_panic)
        notes.append(f"panic: {panic:g} in the panic window" + (" holds" if desired > panic_pods else ""))
        max_panic = desired

    recent: tuple[tuple[float, int], ...] = ()
    if config.scale_down_delay_s > 0:
        horizon = now - config.scale_down_delay_s
        recent = (*((t, n) for t, n in state.recent if t > horizon), (now, desired))
        delayed = max(n for _, n in recent)
        if delayed > desired:
            notes.append(f"scale-down to {desired} delayed")
        desired = delayed

    if desired == 0 and (config.min_replicas > 0 or recently_active):
        # Knative keeps the last replica until the revision has been idle for the grace period.
        desired = 1
        if config.min_replicas == 0:
            notes.append(f"last replica kept until idle for {config.scale_to_zero_grace_s:g}s")
    bounded = config.bounded(desired)
    if bounded != desired:
        notes.append(f"bounded to [{config.min_replicas}, {config.max_replicas or 'inf'}]")
    if bounded == 0:
        notes.append("idle: scale to zero")

    next_state = PolicyState(panic_since=panic_since, max_panic_pods=max_panic, recent=recent)
    return Decision(bounded, panic_since is not None, next_state, "; ".join(notes), stable / counted)
