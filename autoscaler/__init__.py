"""Replica autoscaling in the manner of Knative's KPA: a pure policy over windowed metrics.

`ScalingConfig` says how a revision scales (resolved from cluster defaults, annotations and the
InferenceService's fields), `MetricWindow` turns samples into stable and panic averages, and
`decide` turns those into a replica count (or `NoData`). Collecting the metric and resizing the
pool are the caller's.
"""

from autoscaler.config import ANNOTATIONS, METRICS, ConfigError, GlobalScalingDefaults, ScalingConfig
from autoscaler.policy import Decision, NoData, Observed, PolicyState, decide
from autoscaler.windows import MetricWindow

__all__ = [
    "ANNOTATIONS",
    "METRICS",
    "ConfigError",
    "Decision",
    "GlobalScalingDefaults",
    "MetricWindow",
    "NoData",
    "Observed",
    "PolicyState",
    "ScalingConfig",
    "decide",
]
