"""What one revision is scaled on, and how: Knative's KPA tunables resolved per service.

A `ScalingConfig` is resolved from three layers, later ones winning: the cluster-wide
`GlobalScalingDefaults` (Knative's `config-autoscaler`, set by `servegate up` flags), the service's
`autoscaling.knative.dev/*` annotations, and the InferenceService's own fields (`minReplicas`,
`scaleMetric`, ...), which KServe writes over the annotations the same way. Every bad input is
reported at once, each at the field path it came from.

Defaults, ranges and the target arithmetic follow Knative Serving: `pkg/autoscaler/config/config.go`
(defaults, validation), `pkg/apis/autoscaling/register.go` (annotation names, ranges) and
`pkg/reconciler/autoscaling/resources/target.go` (`ResolveMetricTarget`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from serving.spec.common import ManifestError, Problem

__all__ = [
    "ANNOTATIONS",
    "METRICS",
    "ConfigError",
    "GlobalScalingDefaults",
    "ScalingConfig",
    "parse_duration",
]

#: what a revision can be scaled on. concurrency and rps are Knative's (KPA); cpu and memory
#: Kubernetes' HPA resource metrics; custom is a PromQL query (KServe's `autoScaling.metrics`).
METRICS = ("concurrency", "rps", "cpu", "memory", "custom")

#: Knative's `WindowMin`/`WindowMax`: the range of the stable window, seconds.
WINDOW_MIN_S = 6.0
WINDOW_MAX_S = 3600.0
#: Knative's `TargetMin`: the smallest per-replica target once utilization is applied.
TARGET_MIN = 0.01

_KN = "autoscaling.knative.dev/"
_SG = "serving.servegate.io/"

#: ScalingConfig field -> the annotations that set it, the first present winning. Knative's
#: kebab-case names first, then the camelCase ones older Knative releases used.
_ANNOTATION_KEYS: dict[str, tuple[str, ...]] = {
    "min_replicas": (_KN + "min-scale", _KN + "minScale"),
    "max_replicas": (_KN + "max-scale", _KN + "maxScale"),
    "metric": (_KN + "metric",),
    "target": (_KN + "target",),
    "target_utilization": (_KN + "target-utilization-percentage", _KN + "targetUtilizationPercentage"),
    "stable_window_s": (_KN + "window",),
    "panic_window_pct": (_KN + "panic-window-percentage", _KN + "panicWindowPercentage"),
    "panic_threshold_pct": (_KN + "panic-threshold-percentage", _KN + "panicThresholdPercentage"),
    # Knative sets the rates only cluster-wide (config-autoscaler); servegate also takes them per
    # service, under the names the ConfigMap uses.
    "max_scale_up_rate": (_KN + "max-scale-up-rate",),
    "max_scale_down_rate": (_KN + "max-scale-down-rate",),
    "initial_scale": (_KN + "initial-scale", _KN + "initialScale"),
    "scale_down_delay_s": (_KN + "scale-down-delay",),
    # Knative's retention period keeps the last pod for a while after the decision to scale to
    # zero; servegate has no activator hand-over to wait for, so the two are one grace period.
    "scale_to_zero_grace_s": (
        _SG + "scale-to-zero-grace-period",
        _KN + "scale-to-zero-pod-retention-period",
        _KN + "scaleToZeroPodRetentionPeriod",
    ),
}

#: every annotation `ScalingConfig.from_sources` reads.
ANNOTATIONS = tuple(key for keys in _ANNOTATION_KEYS.values() for key in keys)

#: InferenceService field -> ScalingConfig field, for problem paths.
_SPEC_FIELDS = {
    "min_replicas": "minReplicas",
    "max_replicas": "maxReplicas",
    "metric": "scaleMetric",
    "target": "scaleTarget",
}


class ConfigError(ManifestError):
    """Autoscaling settings that cannot be applied; `problems` lists every one, by field path."""


@dataclass(frozen=True, slots=True)
class _Knobs:
    """What a service and the cluster defaults set alike; each field's meaning and unit below."""

    #: replicas kept however idle; 0 lets a revision scale to zero. KServe's default is 1.
    min_replicas: int = 1
    #: replicas never exceeded; 0 is no upper bound.
    max_replicas: int = 0
    #: fraction (0.01..1) of the concurrency or rps target aimed for, leaving headroom for bursts;
    #: cpu and memory targets are utilizations already (as in the HPA) and do not use it.
    target_utilization: float = 0.70
    #: seconds the stable average spans (6..3600, whole seconds).
    stable_window_s: float = 60.0
    #: the panic window, as a percentage (1..100) of the stable window.
    panic_window_pct: float = 10.0
    #: panic when the panic window wants this percentage (110..1000) of the ready replicas.
    panic_threshold_pct: float = 200.0
    #: a decision asks for at most this many times (> 1) the ready replicas (at least 1).
    max_scale_up_rate: float = 1000.0
    #: a decision keeps at least the ready replicas divided by this (> 1), rounded down.
    max_scale_down_rate: float = 2.0
    #: seconds without requests before the last replica goes (0..3600); needs `min_replicas` 0.
    scale_to_zero_grace_s: float = 30.0
    #: replicas a new revision starts with, before any metric is seen (clamped to the bounds).
    initial_scale: int = 1
    #: seconds a lower replica count must persist before it is applied (0..3600, whole seconds).
    scale_down_delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class GlobalScalingDefaults(_Knobs):
    """Cluster-wide autoscaling defaults, Knative's `config-autoscaler`; a service overrides each.

    Invalid values raise `ConfigError`, each problem at the field's name.
    """

    #: per-replica target when scaling on concurrency: requests in flight (Knative 100).
    concurrency_target: float = 100.0
    #: per-replica target when scaling on rps: requests per second (Knative 200).
    rps_target: float = 200.0
    #: per-replica target when scaling on cpu: percent of the CPU limit, or of one core without one.
    cpu_target: float = 80.0
    #: per-replica target when scaling on memory: percent of the memory limit.
    memory_target: float = 80.0
    #: whether a service may ask for `initial-scale: 0` (Knative's allow-zero-initial-scale).
    allow_zero_initial_scale: bool = False

    def __post_init__(self) -> None:
        values = asdict(self)
        paths = {name: name for name in values}
        problems = _problems(values, paths, allow_zero_initial_scale=self.allow_zero_initial_scale)
        for name in ("concurrency_target", "rps_target", "cpu_target", "memory_target"):
            if not values[name] >= TARGET_MIN:
                problems.append(Problem(name, f"must be at least {TARGET_MIN}, got {values[name]}"))
        if problems:
            raise ConfigError(problems)

    def target_for(self, metric: str) -> float | None:
        """The default per-replica target of `metric`; None for custom, which has no default."""
        return {
            "concurrency": self.concurrency_target,
            "rps": self.rps_target,
            "cpu": self.cpu_target,
            "memory": self.memory_target,
        }.get(metric)


@dataclass(frozen=True, slots=True)
class ScalingConfig(_Knobs):
    """How one revision is scaled. Build it with `from_sources`; a direct call is validated too.

    Invalid values raise `ConfigError`, each problem at the field's name.
    """

    #: what is scaled on: one of `METRICS`.
    metric: str = "concurrency"
    #: the per-replica value aimed for, before `target_utilization`. Units by metric: concurrency,
    #: requests in flight; rps, requests per second; cpu, percent of the CPU limit (of one core
    #: without a limit); memory, percent of the memory limit; custom, the query's unit.
    target: float = 100.0
    #: the PromQL query giving the revision's total of a custom metric; None for other metrics.
    query: str | None = None

    def __post_init__(self) -> None:
        values = asdict(self)
        problems = _problems(values, {name: name for name in values}, allow_zero_initial_scale=True)
        if problems:
            raise ConfigError(problems)

    @property
    def panic_window_s(self) -> float:
        """Seconds the panic average spans."""
        return self.stable_window_s * self.panic_window_pct / 100.0

    @property
    def panic_threshold(self) -> float:
        """The panic threshold as a ratio of wanted to ready replicas (2.0 for 200%)."""
        return self.panic_threshold_pct / 100.0

    @property
    def per_replica_target(self) -> float:
        """What one replica should carry: `target` times utilization for concurrency and rps."""
        if self.metric in ("concurrency", "rps"):
            return max(TARGET_MIN, self.target * self.target_utilization)
        return self.target

    @property
    def initial_replicas(self) -> int:
        """`initial_scale` within the bounds: what a new revision starts with."""
        return self.bounded(self.initial_scale)

    def bounded(self, replicas: int) -> int:
        """`replicas` within [min_replicas, max_replicas], a max of 0 being no upper bound
        (Knative's `applyBounds`)."""
        replicas = max(self.min_replicas, replicas)
        return min(self.max_replicas, replicas) if self.max_replicas > 0 else replicas

    @classmethod
    def from_sources(
        cls,
        defaults: GlobalScalingDefaults,
        annotations: Mapping[str, str],
        *,
        min_replicas: int | None = None,
        max_replicas: int | None = None,
        scale_metric: str | None = None,
        scale_target: float | None = None,
        container_concurrency: int = 0,
        query: str | None = None,
        memory_limit_bytes: int | None = None,
        path: str = "spec.predictor",
        annotations_path: str = "metadata.annotations",
    ) -> ScalingConfig:
        """The config of one component: `defaults`, then `annotations`, then the spec's fields.

        `path` prefixes spec field problems (`spec.predictor.minReplicas`), `annotations_path`
        annotation ones (`metadata.annotations["autoscaling.knative.dev/window"]`).
        `container_concurrency` (0 = unlimited) is the concurrency target when none is given, and
        caps a given one, as in Knative. `memory_limit_bytes` is required to scale on memory.
        Raises `ConfigError` listing every problem.
        """
        values: dict[str, Any] = {f.name: getattr(defaults, f.name, f.default) for f in fields(cls)}
        paths = {name: f"defaults.{name}" for name in values}
        given: set[str] = set()  # fields this service set, by annotation or spec field
        problems: list[Problem] = []

        for name, keys in _ANNOTATION_KEYS.items():
            key = next((k for k in keys if k in annotations), None)
            if key is None:
                continue
            where = f'{annotations_path}["{key}"]'
            raw = annotations[key]
            try:
                values[name] = _PARSERS[name](raw)
            except ValueError as exc:
                problems.append(Problem(where, f"'{raw}' {exc}"))
                values[name] = None  # unparsed: left out of the range checks below
            paths[name] = where
            given.add(name)

        spec = {
            "min_replicas": min_replicas,
            "max_replicas": max_replicas,
            "metric": scale_metric,
            "target": scale_target,
        }
        for name, value in spec.items():
            if value is not None:
                values[name], paths[name] = value, f"{path}.{_SPEC_FIELDS[name]}"
                given.add(name)

        metric = values["metric"]
        if "target" not in given:
            values["target"] = defaults.target_for(metric)
            if metric == "concurrency" and container_concurrency > 0:
                values["target"] = float(container_concurrency)
        elif metric == "concurrency" and container_concurrency > 0 and values["target"] is not None:
            # Knative never aims above what one replica accepts at once.
            values["target"] = min(values["target"], float(container_concurrency))
        values["query"] = query if metric == "custom" else None

        problems += _problems(
            values, paths, given=given, allow_zero_initial_scale=defaults.allow_zero_initial_scale
        )
        if metric == "custom" and values["target"] is None:
            message = f"the custom metric needs a per-replica target ({path}.scaleTarget)"
            problems.append(Problem(paths["metric"], message))
        if metric == "memory" and not memory_limit_bytes:
            problems.append(
                Problem(paths["metric"], "scaling on memory needs a memory limit (resources.limits.memory)")
            )
        if problems:
            raise ConfigError(problems)
        return cls(**values)


def parse_duration(text: str) -> float:
    """A Go duration (`60s`, `2m`, `1h30m`, `1.5s`, `300ms`, `0`) in seconds, as Knative reads them.

    A bare number other than 0 is refused, as Go does: `60` could mean seconds or minutes.
    """
    sign, body = re.fullmatch(r"([+-]?)(.*)", text.strip(), re.DOTALL).groups()
    if body == "0":
        return 0.0
    if not _DURATION.fullmatch(body):
        raise ValueError("is not a duration (e.g. 30s, 2m, 1h30m)")
    seconds = sum(float(number) * _UNITS[unit] for number, unit in _DURATION_PART.findall(body))
    return -seconds if sign == "-" else seconds


_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION = re.compile(rf"(?:{_DURATION_PART.pattern})+")


def _int(text: str) -> int:
    if not re.fullmatch(r"[+-]?\d+", text.strip()):
        raise ValueError("is not a whole number")
    return int(text)


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("is not a number") from None
    if not math.isfinite(value):
        raise ValueError("is not a finite number")
    return value


def _percent_to_fraction(text: str) -> float:
    value = _float(text)
    if not 1.0 <= value <= 100.0:
        raise ValueError("must be a percentage in [1, 100]")
    return value / 100.0


_PARSERS: dict[str, Callable[[str], Any]] = {
    "min_replicas": _int,
    "max_replicas": _int,
    "metric": str.strip,
    "target": _float,
    "target_utilization": _percent_to_fraction,
    "stable_window_s": parse_duration,
    "panic_window_pct": _float,
    "panic_threshold_pct": _float,
    "max_scale_up_rate": _float,
    "max_scale_down_rate": _float,
    "initial_scale": _int,
    "scale_down_delay_s": parse_duration,
    "scale_to_zero_grace_s": parse_duration,
}

#: field -> (valid?, what is expected); Knative's ranges.
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "min_replicas": (lambda v: v >= 0, "must be 0 or more"),
    "max_replicas": (lambda v: v >= 0, "must be 0 (no limit) or more"),
    "metric": (lambda v: v in METRICS, f"is not a known metric: use one of {', '.join(METRICS)}"),
    "target": (lambda v: v >= TARGET_MIN, f"must be at least {TARGET_MIN}"),
    "target_utilization": (lambda v: TARGET_MIN <= v <= 1.0, "must be in [1%, 100%]"),
    "stable_window_s": (
        lambda v: WINDOW_MIN_S <= v <= WINDOW_MAX_S and v == int(v),
        "must be whole seconds in [6s, 1h]",
    ),
    "panic_window_pct": (lambda v: 1.0 <= v <= 100.0, "must be in [1, 100]"),
    "panic_threshold_pct": (lambda v: 110.0 <= v <= 1000.0, "must be in [110, 1000]"),
    "max_scale_up_rate": (lambda v: v > 1.0, "must be greater than 1"),
    "max_scale_down_rate": (lambda v: v > 1.0, "must be greater than 1"),
    "scale_to_zero_grace_s": (lambda v: 0.0 <= v <= WINDOW_MAX_S, "must be in [0s, 1h]"),
    "initial_scale": (lambda v: v >= 0, "must be 0 or more"),
    "scale_down_delay_s": (
        lambda v: 0.0 <= v <= WINDOW_MAX_S and v == int(v),
        "must be whole seconds in [0s, 1h]",
    ),
}


def _problems(
    values: Mapping[str, Any],
    paths: Mapping[str, str],
    *,
    given: set[str] | None = None,
    allow_zero_initial_scale: bool,
) -> list[Problem]:
    """Range and cross-field problems of `values`, each at `paths[field]`; None values are skipped."""
    problems = []
    for name, (valid, expected) in _RULES.items():
        value = values.get(name)
        if value is not None and not valid(value):
            problems.append(Problem(paths[name], f"{_show(name, value)} {expected}"))
    if values.get("initial_scale") == 0 and not allow_zero_initial_scale:
        message = "0 is not allowed by the cluster (allow-zero-initial-scale)"
        problems.append(Problem(paths["initial_scale"], message))
    low, high = values.get("min_replicas"), values.get("max_replicas")
    if isinstance(low, int) and isinstance(high, int) and low >= 0 and 0 < high < low:
        # Reported where the service set it: the min if it did, else the max.
        name = "min_replicas" if given is None or "min_replicas" in given else "max_replicas"
        problems.append(Problem(paths[name], f"min replicas ({low}) exceeds max replicas ({high})"))
    if values.get("metric") == "custom" and not values.get("query"):
        problems.append(Problem(paths["metric"], "the custom metric needs a PromQL query"))
    return problems


def _show(name: str, value: Any) -> str:
    if name.endswith("_s"):
        return f"{value:g}s"
    if name == "target_utilization":
        return f"{value * 100:g}%"
    return f"'{value}'" if isinstance(value, str) else f"{value:g}"
