"""ScalingConfig resolution: Knative's defaults, every annotation, every bad input with its path."""

from __future__ import annotations

from typing import Any

import pytest

from autoscaler.config import (
    ANNOTATIONS,
    ConfigError,
    GlobalScalingDefaults,
    ScalingConfig,
    parse_duration,
)
from serving.spec.common import ManifestError

KN = "autoscaling.knative.dev/"
DEFAULTS = GlobalScalingDefaults()
GiB = 1 << 30


def resolve(annotations: dict[str, str] | None = None, **spec: Any) -> ScalingConfig:
    return ScalingConfig.from_sources(DEFAULTS, annotations or {}, **spec)


def problems(annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, str]:
    """path -> message of every problem (each path once in these tests)."""
    with pytest.raises(ConfigError) as caught:
        resolve(annotations, **spec)
    return {p.path: p.message for p in caught.value.problems}


def test_defaults_are_knatives() -> None:
    config = resolve()
    assert config == ScalingConfig()
    assert (config.min_replicas, config.max_replicas, config.metric) == (1, 0, "concurrency")
    assert (config.target, config.target_utilization, config.per_replica_target) == (100, 0.7, 70)
    assert (config.stable_window_s, config.panic_window_s, config.panic_threshold) == (60, 6, 2)
    assert (config.max_scale_up_rate, config.max_scale_down_rate) == (1000, 2)
    assert (config.scale_to_zero_grace_s, config.initial_scale, config.scale_down_delay_s) == (30, 1, 0)
    assert config.query is None


def test_global_defaults_flow_through() -> None:
    defaults = GlobalScalingDefaults(stable_window_s=120, concurrency_target=10, min_replicas=0)
    config = ScalingConfig.from_sources(defaults, {})
    assert (config.stable_window_s, config.target, config.min_replicas) == (120, 10, 0)


@pytest.mark.parametrize(
    ("metric", "extra", "target", "per_replica"),
    [
        ("concurrency", {}, 100, 70),
        ("rps", {}, 200, 140),
        ("cpu", {}, 80, 80),  # utilization is not applied to resource metrics
        ("memory", {"memory_limit_bytes": GiB}, 80, 80),
        ("custom", {"query": "sum(queue)", "scale_target": 5}, 5, 5),
    ],
)
def test_each_metric_has_its_default_target(
    metric: str, extra: dict[str, Any], target: float, per_replica: float
) -> None:
    config = resolve(scale_metric=metric, **extra)
    assert (config.metric, config.target, config.per_replica_target) == (metric, target, per_replica)


def test_container_concurrency_is_the_default_target_and_caps_a_given_one() -> None:
    assert resolve(container_concurrency=10).target == 10
    assert resolve(container_concurrency=10, scale_target=50).target == 10
    assert resolve(container_concurrency=10, scale_target=4).target == 4
    assert resolve(scale_target=50).target == 50
    assert resolve(container_concurrency=10, scale_metric="rps").target == 200  # only for concurrency


def test_per_replica_target_never_goes_under_knatives_minimum() -> None:
    config = resolve({KN + "target-utilization-percentage": "1"}, scale_target=0.5)
    assert config.per_replica_target == 0.01


@pytest.mark.parametrize(
    ("key", "value", "field", "expected"),
    [
        ("min-scale", "0", "min_replicas", 0),
        ("max-scale", "10", "max_replicas", 10),
        ("metric", "rps", "metric", "rps"),
        ("target", "25.5", "target", 25.5),
        ("target-utilization-percentage", "85", "target_utilization", 0.85),
        ("window", "2m", "stable_window_s", 120),
        ("panic-window-percentage", "20", "panic_window_pct", 20),
        ("panic-threshold-percentage", "150.5", "panic_threshold_pct", 150.5),
        ("max-scale-up-rate", "10", "max_scale_up_rate", 10),
        ("max-scale-down-rate", "1.5", "max_scale_down_rate", 1.5),
        ("initial-scale", "3", "initial_scale", 3),
        ("scale-down-delay", "15s", "scale_down_delay_s", 15),
        ("scale-to-zero-pod-retention-period", "1m30s", "scale_to_zero_grace_s", 90),
        # Knative's older camelCase spellings.
        ("minScale", "2", "min_replicas", 2),
        ("maxScale", "4", "max_replicas", 4),
        ("targetUtilizationPercentage", "50", "target_utilization", 0.5),
        ("panicWindowPercentage", "5", "panic_window_pct", 5),
        ("panicThresholdPercentage", "300", "panic_threshold_pct", 300),
        ("initialScale", "2", "initial_scale", 2),
        ("scaleToZeroPodRetentionPeriod", "45s", "scale_to_zero_grace_s", 45),
    ],
)
def test_every_knative_annotation(key: str, value: str, field: str, expected: Any) -> None:
    assert getattr(resolve({KN + key: value}), field) == expected


def test_servegate_grace_period_annotation_wins_over_knatives() -> None:
    annotations = {
        "serving.servegate.io/scale-to-zero-grace-period": "10s",
        KN + "scale-to-zero-pod-retention-period": "20s",
    }
    assert resolve(annotations).scale_to_zero_grace_s == 10
    assert resolve({"serving.servegate.io/scale-to-zero-grace-period": "2m"}).scale_to_zero_grace_s == 120


def test_kebab_case_wins_over_camel_case() -> None:
    assert resolve({KN + "min-scale": "3", KN + "minScale": "1"}).min_replicas == 3


def test_spec_fields_win_over_annotations() -> None:
    annotations = {KN + "min-scale": "3", KN + "max-scale": "4", KN + "metric": "rps", KN + "target": "9"}
    config = resolve(annotations, min_replicas=0, max_replicas=8, scale_metric="concurrency", scale_target=20)
    assert (config.min_replicas, config.max_replicas) == (0, 8)
    assert (config.metric, config.target) == ("concurrency", 20)


def test_annotation_metric_takes_that_metrics_default_target() -> None:
    assert resolve({KN + "metric": "rps"}).target == 200


def test_unrelated_annotations_are_ignored() -> None:
    assert resolve({KN + "class": "kpa.autoscaling.knative.dev", "team": "ml"}) == ScalingConfig()


def test_every_annotation_read_is_listed() -> None:
    assert KN + "window" in ANNOTATIONS
    assert "serving.servegate.io/scale-to-zero-grace-period" in ANNOTATIONS
    assert len(ANNOTATIONS) == len(set(ANNOTATIONS)) == 21


def test_custom_metric_keeps_its_query_and_others_drop_it() -> None:
    assert resolve(scale_metric="custom", scale_target=3, query="sum(x)").query == "sum(x)"
    assert resolve(scale_metric="rps", query="sum(x)").query is None


def test_initial_replicas_is_clamped_to_the_bounds() -> None:
    assert resolve({KN + "initial-scale": "5"}, max_replicas=3).initial_replicas == 3
    assert resolve({KN + "initial-scale": "1"}, min_replicas=2).initial_replicas == 2
    assert resolve(min_replicas=2, max_replicas=6).bounded(9) == 6
    assert resolve().bounded(500) == 500  # max 0: no upper bound


SPEC = "spec.predictor."


def ann(key: str) -> str:
    return f'metadata.annotations["{KN}{key}"]'


@pytest.mark.parametrize(
    ("annotations", "spec", "path", "message"),
    [
        ({}, {"min_replicas": 5, "max_replicas": 3}, SPEC + "minReplicas", "min replicas (5) exceeds max"),
        ({KN + "min-scale": "5", KN + "max-scale": "3"}, {}, ann("min-scale"), "exceeds max replicas (3)"),
        ({KN + "max-scale": "3"}, {"min_replicas": 4}, "spec.predictor.minReplicas", "exceeds"),
        ({}, {"min_replicas": -1}, "spec.predictor.minReplicas", "must be 0 or more"),
        ({KN + "min-scale": "-1"}, {}, ann("min-scale"), "must be 0 or more"),
        ({KN + "max-scale": "many"}, {}, ann("max-scale"), "'many' is not a whole number"),
        ({KN + "min-scale": "1.5"}, {}, ann("min-scale"), "not a whole number"),
        ({}, {"scale_target": 0}, "spec.predictor.scaleTarget", "must be at least 0.01"),
        ({}, {"scale_target": -5}, "spec.predictor.scaleTarget", "must be at least 0.01"),
        ({KN + "target": "-1"}, {}, ann("target"), "must be at least 0.01"),
        ({KN + "target": "lots"}, {}, ann("target"), "is not a number"),
        ({KN + "target": "nan"}, {}, ann("target"), "not a finite number"),
        ({}, {"scale_metric": "latency"}, "spec.predictor.scaleMetric", "'latency' is not a known metric"),
        ({KN + "metric": "gpu"}, {}, ann("metric"), "is not a known metric"),
        ({}, {"scale_metric": "custom", "scale_target": 2}, "spec.predictor.scaleMetric", "PromQL query"),
        ({}, {"scale_metric": "custom", "query": "q"}, SPEC + "scaleMetric", "needs a per-replica target"),
        ({}, {"scale_metric": "memory"}, "spec.predictor.scaleMetric", "needs a memory limit"),
        ({KN + "target-utilization-percentage": "0"}, {}, ann("target-utilization-percentage"), "[1, 100]"),
        ({KN + "target-utilization-percentage": "120"}, {}, ann("target-utilization-percentage"), "[1, 100]"),
        ({KN + "window": "5s"}, {}, ann("window"), "5s must be whole seconds in [6s, 1h]"),
        ({KN + "window": "2h"}, {}, ann("window"), "[6s, 1h]"),
        ({KN + "window": "10.5s"}, {}, ann("window"), "whole seconds"),
        ({KN + "window": "60"}, {}, ann("window"), "'60' is not a duration"),
        ({KN + "panic-window-percentage": "0.5"}, {}, ann("panic-window-percentage"), "[1, 100]"),
        ({KN + "panic-window-percentage": "101"}, {}, ann("panic-window-percentage"), "[1, 100]"),
        ({KN + "panic-threshold-percentage": "100"}, {}, ann("panic-threshold-percentage"), "[110, 1000]"),
        ({KN + "panic-threshold-percentage": "1001"}, {}, ann("panic-threshold-percentage"), "[110, 1000]"),
        ({KN + "max-scale-up-rate": "1"}, {}, ann("max-scale-up-rate"), "greater than 1"),
        ({KN + "max-scale-down-rate": "0.5"}, {}, ann("max-scale-down-rate"), "greater than 1"),
        ({KN + "initial-scale": "-2"}, {}, ann("initial-scale"), "must be 0 or more"),
        ({KN + "initial-scale": "0"}, {}, ann("initial-scale"), "allow-zero-initial-scale"),
        ({KN + "scale-down-delay": "-1s"}, {}, ann("scale-down-delay"), "[0s, 1h]"),
        ({KN + "scale-down-delay": "1.5s"}, {}, ann("scale-down-delay"), "whole seconds"),
        ({KN + "scaleToZeroPodRetentionPeriod": "2h"}, {}, ann("scaleToZeroPodRetentionPeriod"), "[0s, 1h]"),
        (
            {"serving.servegate.io/scale-to-zero-grace-period": "soon"},
            {},
            'metadata.annotations["serving.servegate.io/scale-to-zero-grace-period"]',
            "not a duration",
        ),
    ],
)
def test_every_bad_input_is_reported_at_its_path(
    annotations: dict[str, str], spec: dict[str, Any], path: str, message: str
) -> None:
    found = problems(annotations, **spec)
    assert path in found, found
    assert message in found[path]


def test_every_problem_is_reported_at_once() -> None:
    found = problems(
        {KN + "window": "forever", KN + "panic-threshold-percentage": "50", KN + "max-scale-down-rate": "1"},
        min_replicas=5,
        max_replicas=2,
        scale_target=-1,
    )
    assert set(found) == {
        ann("window"),
        ann("panic-threshold-percentage"),
        ann("max-scale-down-rate"),
        "spec.predictor.minReplicas",
        "spec.predictor.scaleTarget",
    }


def test_paths_follow_the_component_and_where_annotations_live() -> None:
    found = problems(
        {KN + "window": "1s"},
        min_replicas=-1,
        path="spec.transformer",
        annotations_path="spec.transformer.annotations",
    )
    assert set(found) == {"spec.transformer.minReplicas", f'spec.transformer.annotations["{KN}window"]'}


def test_config_error_is_a_manifest_error() -> None:
    with pytest.raises(ManifestError, match="minReplicas"):
        resolve(min_replicas=3, max_replicas=1)


def test_zero_initial_scale_when_the_cluster_allows_it() -> None:
    defaults = GlobalScalingDefaults(allow_zero_initial_scale=True, min_replicas=0)
    config = ScalingConfig.from_sources(defaults, {KN + "initial-scale": "0"})
    assert config.initial_scale == config.initial_replicas == 0


def test_bad_global_defaults_are_refused_by_field_name() -> None:
    with pytest.raises(ConfigError) as caught:
        GlobalScalingDefaults(stable_window_s=3, max_scale_up_rate=1, rps_target=0, scale_to_zero_grace_s=-1)
    assert {p.path for p in caught.value.problems} == {
        "stable_window_s",
        "max_scale_up_rate",
        "rps_target",
        "scale_to_zero_grace_s",
    }


def test_a_direct_scaling_config_is_validated_too() -> None:
    with pytest.raises(ConfigError) as caught:
        ScalingConfig(min_replicas=3, max_replicas=2, metric="custom", panic_window_pct=0)
    assert {p.path for p in caught.value.problems} == {"min_replicas", "metric", "panic_window_pct"}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("60s", 60),
        ("2m", 120),
        ("1h", 3600),
        ("1h30m", 5400),
        ("1m30s", 90),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("300ms", 0.3),
        ("1500us", 0.0015),
        ("0", 0),
        ("+10s", 10),
        ("-5s", -5),
        (" 30s ", 30),
    ],
)
def test_knative_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "60", "1.5", "s", "1d", "5 s", "abc", "--5s", "1h-30m", "10S"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)
