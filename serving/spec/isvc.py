"""InferenceService (serving.kserve.io/v1beta1): KServe's manifest, plus servegate's A/B and shadow.

A KServe user's manifest validates unchanged: every KServe field servegate acts on is modelled,
pod-level fields it cannot act on (`serviceAccountName`, `tolerations`, ...) are accepted silently,
and anything else is kept and reported by `warnings()`. `components()` turns the manifest into
plain `Component`s, the controller's view of what to run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator

from serving.spec.common import (
    NAME_PATTERN,
    KModel,
    ObjectMeta,
    Problem,
    parse_quantity,
    unknown_fields,
)
from serving.spec.rollout import RolloutStrategy

if TYPE_CHECKING:
    # autoscaler.config reads serving.spec.common: importing it here at load time would be circular.
    from autoscaler.config import GlobalScalingDefaults, ScalingConfig

__all__ = [
    "FRAMEWORKS",
    "SERVED_FORMATS",
    "SERVER_METADATA",
    "THREADS_ANNOTATION",
    "Batcher",
    "Component",
    "ExperimentSpec",
    "InferenceService",
    "InferenceServiceSpec",
    "LoggerSpec",
    "ModelFormat",
    "ModelSpecField",
    "PredictorSpec",
    "Quantity",
    "ResourceRequirements",
    "ShadowSpec",
    "TransformerSpec",
    "Variant",
    "field_warnings",
    "format_problem",
]

#: model formats a servegate replica can serve.
SERVED_FORMATS = ("onnx", "pytorch", "sklearn", "python", "triton")
#: KServe's older per-framework predictor fields; each names its model format.
FRAMEWORKS = (
    "onnx",
    "pytorch",
    "sklearn",
    "triton",
    "tensorflow",
    "xgboost",
    "lightgbm",
    "pmml",
    "paddle",
    "huggingface",
)
GPU = "nvidia.com/gpu"
#: InferenceService annotation: the intra-op threads of the predictor's runtimes (a positive
#: integer), instead of the count each replica sizes from the CPUs it may use.
THREADS_ANNOTATION = "serving.servegate.io/threads"
_PYTHON_URI = "'package.module:ClassName' or 'path/to/file.py:ClassName'"


def format_problem(name: str, path: str) -> Problem | None:
    """A problem at `path` when servegate cannot serve model format `name`, else None."""
    if name.lower() in SERVED_FORMATS:
        return None
    return Problem(path, f"unknown model format '{name}': servegate serves {', '.join(SERVED_FORMATS)}")


def _quantity(value: Any) -> Any:
    # Checked before the union runs, so a bad value gives one problem, not one per union member.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected a Kubernetes quantity (e.g. 500m, 2, 1Gi), got {type(value).__name__}")
    parse_quantity(value)
    return value


#: a Kubernetes resource quantity: `500m`, `2`, `1.5Gi`, or a plain number.
Quantity = Annotated[str | int | float, BeforeValidator(_quantity)]


class ResourceRequirements(KModel):
    """Container resources; every value is a Kubernetes quantity."""

    limits: dict[str, Quantity] = Field(default_factory=dict)
    requests: dict[str, Quantity] = Field(default_factory=dict)

    def problems(self, prefix: str) -> list[Problem]:
        """GPUs are whole devices: `nvidia.com/gpu: 0.5` is a problem."""
        problems = []
        for part in ("limits", "requests"):
            value = getattr(self, part).get(GPU)
            if value is not None and not parse_quantity(value).is_integer():
                problems.append(Problem(f"{prefix}.{part}.{GPU}", f"GPUs are whole devices, got {value}"))
        return problems

    @property
    def gpus(self) -> int:
        """GPUs asked for: the limit, else the request, else 0."""
        value = self.limits.get(GPU, self.requests.get(GPU, 0))
        return int(parse_quantity(value))


class EnvVar(KModel):
    name: str
    value: str | None = None
    #: Kubernetes' secret/config references: accepted, not resolved by servegate.
    value_from: Any | None = None


class _ContainerFields(KModel):
    """What KServe's model and per-framework specs share (they inline a Kubernetes container)."""

    storage_uri: str | None = None
    #: the serving runtime's version (e.g. a Triton image tag); accepted, not acted on.
    runtime_version: str | None = None
    protocol_version: Literal["v1", "v2", "grpc-v2"] | None = None
    resources: ResourceRequirements | None = None
    env: list[EnvVar] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)
    #: mounts of the pod's `volumes` (the Kubernetes engine only).
    volume_mounts: list[dict[str, Any]] | None = None
    # Container fields servegate does not act on; declared so they are not reported.
    name: Any | None = None
    image: Any | None = None
    command: Any | None = None


class ModelFormat(KModel):
    name: str
    version: str | None = None


class ModelSpecField(_ContainerFields):
    """`predictor.model` (and servegate's `transformer.model`): a model format and where it lives."""

    model_format: ModelFormat
    #: a ServingRuntime name, e.g. `kserve-sklearnserver`; recorded, not looked up.
    runtime: str | None = None


class FrameworkSpec(_ContainerFields):
    """The older `predictor.sklearn` / `predictor.onnx` / ... form."""


class Batcher(KModel):
    """Server-side batching: up to `maxBatchSize` rows, waiting at most `maxLatency` milliseconds."""

    max_batch_size: int | None = Field(None, ge=1)
    max_latency: int | None = Field(None, ge=1)
    timeout: int | None = Field(None, ge=1)


class LoggerSpec(KModel):
    """Request/response logging to `url` (CloudEvents), of requests, responses or both."""

    mode: Literal["all", "request", "response"] = "all"
    url: str | None = None


class MetricTarget(KModel):
    """KServe's `autoScaling.metrics[].*.target`: a utilization percentage or a value."""

    type: Literal["Utilization", "AverageValue", "Value"] = "Utilization"
    average_utilization: int | None = Field(None, ge=1)
    average_value: float | None = Field(None, gt=0)
    value: float | None = Field(None, gt=0)

    def number(self) -> float | None:
        return self.average_utilization or self.average_value or self.value


class ResourceMetric(KModel):
    name: Literal["cpu", "memory"]
    target: MetricTarget = Field(default_factory=MetricTarget)


class ExternalMetricSource(KModel):
    backend: Literal["prometheus"] = "prometheus"
    server_address: str | None = None
    query: str = Field(min_length=1)


class ExternalMetric(KModel):
    metric: ExternalMetricSource
    target: MetricTarget = Field(default_factory=MetricTarget)


class MetricSpec(KModel):
    """One entry of KServe's `autoScaling.metrics`: a Resource (cpu, memory) or External (PromQL)."""

    type: Literal["Resource", "External"]
    resource: ResourceMetric | None = None
    external: ExternalMetric | None = None


class AutoScalingSpec(KModel):
    metrics: list[MetricSpec] = Field(default_factory=list)


class ComponentExtension(KModel):
    """KServe's ComponentExtensionSpec: scaling, rollout and batching settings of one component."""

    min_replicas: int | None = Field(None, ge=0)
    max_replicas: int | None = Field(None, ge=0)
    scale_metric: Literal["concurrency", "rps", "cpu", "memory"] | None = None
    scale_target: int | None = Field(None, ge=1)
    #: KServe's newer form: one cpu/memory utilization or PromQL (External) metric.
    auto_scaling: AutoScalingSpec | None = None
    #: requests one replica handles at once; 0 is unlimited.
    container_concurrency: int | None = Field(None, ge=0)
    #: request timeout in seconds.
    timeout: int | None = Field(None, ge=1)
    canary_traffic_percent: int | None = Field(None, ge=0, le=100)
    batcher: Batcher | None = None
    logger: LoggerSpec | None = None
    #: labels a node must carry to run this component's replicas: Ray node labels on the ray engine
    #: (`ray start --labels`); the process engine has one machine and ignores it.
    node_selector: dict[str, str] | None = None
    # Pod-level fields KServe allows: the Kubernetes engine passes them on (Component.pod); the
    # other engines run no pods and ignore them.
    service_account_name: Any | None = None
    tolerations: Any | None = None
    affinity: Any | None = None
    image_pull_secrets: Any | None = None
    annotations: Any | None = None
    labels: Any | None = None
    volumes: Any | None = None

    def scaling_problems(self, prefix: str) -> list[Problem]:
        """`minReplicas` above a non-zero `maxReplicas`."""
        low, high = self.min_replicas, self.max_replicas
        if low is not None and high and low > high:
            return [Problem(f"{prefix}.minReplicas", f"minReplicas ({low}) exceeds maxReplicas ({high})")]
        return []

    def scaling(
        self,
        annotations: Mapping[str, str],
        defaults: GlobalScalingDefaults,
        memory_limit_bytes: int | None,
        prefix: str,
    ) -> ScalingConfig:
        """How this component scales: `defaults`, then annotations, then these fields (raises ConfigError)."""
        from autoscaler.config import ConfigError, ScalingConfig

        metric, target, query = self.scale_metric, self.scale_target, None
        if self.auto_scaling is not None and self.auto_scaling.metrics:
            if len(self.auto_scaling.metrics) > 1:
                raise ConfigError(
                    [Problem(f"{prefix}.autoScaling.metrics", "servegate scales on one metric")]
                )
            entry = self.auto_scaling.metrics[0]
            source = entry.resource if entry.type == "Resource" else entry.external
            if source is None:
                where = f"{prefix}.autoScaling.metrics[0].{entry.type.lower()}"
                raise ConfigError(
                    [Problem(where, f"a {entry.type} metric needs its '{entry.type.lower()}' field")]
                )
            if isinstance(source, ResourceMetric):
                metric = source.name
            else:
                metric, query = "custom", source.metric.query
            target = source.target.number() or target
        return ScalingConfig.from_sources(
            defaults,
            annotations,
            min_replicas=self.min_replicas,
            max_replicas=self.max_replicas,
            scale_metric=metric,
            scale_target=target,
            container_concurrency=self.container_concurrency or 0,
            query=query,
            memory_limit_bytes=memory_limit_bytes,
            path=prefix,
        )


class PredictorSpec(ComponentExtension):
    """The model to serve: `model`, one per-framework field, or custom `containers`."""

    model: ModelSpecField | None = None
    onnx: FrameworkSpec | None = None
    pytorch: FrameworkSpec | None = None
    sklearn: FrameworkSpec | None = None
    triton: FrameworkSpec | None = None
    tensorflow: FrameworkSpec | None = None
    xgboost: FrameworkSpec | None = None
    lightgbm: FrameworkSpec | None = None
    pmml: FrameworkSpec | None = None
    paddle: FrameworkSpec | None = None
    huggingface: FrameworkSpec | None = None
    containers: list[dict[str, Any]] | None = None

    def sources(self) -> list[str]:
        """The fields that say what to serve, in manifest spelling (exactly one is valid)."""
        names = ["model", *FRAMEWORKS, "containers"]
        return [name for name in names if getattr(self, name) is not None]


class TransformerSpec(ComponentExtension):
    """Pre/post-processing in front of the predictor: a python `model` or custom `containers`."""

    model: ModelSpecField | None = None
    containers: list[dict[str, Any]] | None = None

    def sources(self) -> list[str]:
        return [name for name in ("model", "containers") if getattr(self, name) is not None]


DEFAULT_STICKY_BY = "header:x-user-id"


def _sticky(value: Any) -> Any:
    if value is None:
        return DEFAULT_STICKY_BY  # null is unset, as in Kubernetes (and a dump without nulls keeps it)
    if not isinstance(value, str):
        return value  # the str check reports it
    kind, _, name = value.partition(":")
    if kind not in ("header", "cookie") or not name:
        raise ValueError(f"stickyBy must be 'header:NAME' or 'cookie:NAME', got '{value}'")
    return value


class Variant(KModel):
    """One arm of an A/B experiment. Neither `service` nor `revision`: this service's own predictor."""

    name: str = Field(max_length=63, pattern=NAME_PATTERN)
    weight: int = Field(ge=0, le=100)
    #: another InferenceService, by name.
    service: str | None = Field(None, max_length=63, pattern=NAME_PATTERN)
    #: a revision of this service's predictor, e.g. `iris-predictor-00001`.
    revision: str | None = Field(None, max_length=63, pattern=NAME_PATTERN)


class ExperimentSpec(KModel):
    """servegate's A/B split: weighted variants; a user keeps their variant (`stickyBy`)."""

    variants: list[Variant] = Field(min_length=2)
    #: `header:NAME` or `cookie:NAME`: requests with the same value get the same variant
    #: (null means the default, `header:x-user-id`).
    sticky_by: Annotated[str, BeforeValidator(_sticky)] = DEFAULT_STICKY_BY

    @property
    def sticky(self) -> tuple[str, str]:
        """(`header` or `cookie`, name)."""
        kind, _, name = self.sticky_by.partition(":")
        return kind, name

    def problems(self, prefix: str) -> list[Problem]:
        """Weights that do not add up to 100, duplicate names, variants with two targets."""
        problems = []
        total = sum(v.weight for v in self.variants)
        if total != 100:
            problems.append(Problem(f"{prefix}.variants", f"variant weights add up to {total}, not 100"))
        seen: set[str] = set()
        for i, variant in enumerate(self.variants):
            if variant.name in seen:
                problems.append(Problem(f"{prefix}.variants[{i}].name", f"'{variant.name}' is repeated"))
            seen.add(variant.name)
            if variant.service is not None and variant.revision is not None:
                problems.append(Problem(f"{prefix}.variants[{i}]", "give service or revision, not both"))
        return problems


class ShadowSpec(KModel):
    """servegate's shadow traffic: a copy of `percent` of requests goes to a service or revision,
    whose responses are dropped."""

    service: str | None = Field(None, max_length=63, pattern=NAME_PATTERN)
    revision: str | None = Field(None, max_length=63, pattern=NAME_PATTERN)
    percent: int = Field(100, ge=0, le=100)

    def problems(self, prefix: str) -> list[Problem]:
        """Exactly one target."""
        if (self.service is None) == (self.revision is None):
            return [Problem(prefix, "shadow needs exactly one of service or revision")]
        return []


class InferenceServiceSpec(KModel):
    predictor: PredictorSpec
    transformer: TransformerSpec | None = None
    #: accepted so KServe manifests apply; reported unsupported by `warnings()`.
    explainer: dict[str, Any] | None = None
    experiment: ExperimentSpec | None = None
    shadow: ShadowSpec | None = None
    #: servegate's progressive delivery: stages, checks and what ends the rollout (rollout.py).
    rollout: RolloutStrategy | None = None


@dataclass(frozen=True, slots=True)
class Component:
    """One component (predictor or transformer) normalized for the controller, defaults filled in.

    Units: `timeout_s` seconds, `max_latency_ms` milliseconds, `memory_bytes` bytes, `cpus` cores.
    `revision_key()` changes exactly when what runs changes, not when routing or sizing does.
    """

    kind: str
    format: str | None = None
    storage_uri: str | None = None
    runtime: str | None = None
    protocol: str = "v1"
    min_replicas: int = 1
    max_replicas: int = 1
    scale_metric: str = "concurrency"
    scale_target: int | None = None
    #: requests one replica handles at once; 0 is unlimited.
    container_concurrency: int = 0
    timeout_s: float | None = None
    canary_traffic_percent: int | None = None
    #: 1 turns batching off.
    max_batch_size: int = 1
    max_latency_ms: float = 5.0
    #: the batcher's own timeout (KServe `batcher.timeout`), seconds.
    batch_timeout_s: float | None = None
    gpus: int = 0
    cpus: float | None = None
    memory_bytes: int | None = None
    env: tuple[tuple[str, str], ...] = ()
    args: tuple[str, ...] = ()
    #: a custom container was given; `container_spec` is its canonical JSON.
    containers: bool = False
    container_spec: str | None = None
    logger_url: str | None = None
    logger_mode: str = "all"
    #: (label, value) pairs a node must carry (`nodeSelector`), sorted.
    node_selector: tuple[tuple[str, str], ...] = ()
    #: intra-op threads of its runtimes (THREADS_ANNOTATION); None: sized from each replica's CPUs.
    threads: int | None = None
    #: what only a Kubernetes pod uses, as KServe passes it on (`POD_FIELDS`, the model container's
    #: `resources` as written, env from secrets and config maps): canonical JSON; None when none.
    pod: str | None = None

    def revision_key(self) -> str:
        """A short stable hash of what runs: 12 hex digits of the sha256 of canonical JSON."""
        what = {k: v for k, v in asdict(self).items() if k not in _ROUTING_FIELDS}
        # Added later: revisions made before them keep their hash while they are unset.
        if not self.node_selector:
            del what["node_selector"]
        if self.threads is None:
            del what["threads"]
        if self.pod is None:
            del what["pod"]
        text = json.dumps(what, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


#: Component fields that change routing or sizing, not the revision.
_ROUTING_FIELDS = frozenset(
    {"canary_traffic_percent", "min_replicas", "max_replicas", "scale_metric", "scale_target"}
)

#: metadata the API server fills in; present in exported manifests, so not worth a warning.
SERVER_METADATA = frozenset(
    {"uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "selfLink"}
    | {"finalizers", "ownerReferences", "generateName", "deletionTimestamp", "deletionGracePeriodSeconds"}
)


class InferenceService(KModel):
    """A model behind an endpoint: predictor, optional transformer, canary, A/B and shadow traffic."""

    api_version: Literal["serving.kserve.io/v1beta1"] = "serving.kserve.io/v1beta1"
    kind: Literal["InferenceService"] = "InferenceService"
    metadata: ObjectMeta
    spec: InferenceServiceSpec
    #: written by a cluster; accepted and ignored so exported manifests apply.
    status: Any | None = Field(None, exclude=True)

    @field_validator("metadata")
    @classmethod
    def _dns_name(cls, metadata: ObjectMeta) -> ObjectMeta:
        # The name becomes a host name (KServe requires the same): it must start with a letter.
        if not metadata.name[0].isalpha():
            raise ValueError(f"an InferenceService name must start with a letter, got '{metadata.name}'")
        return metadata

    def check(self) -> list[Problem]:
        """Cross-field problems pydantic cannot see, each with its path from the document root."""
        spec = self.spec
        problems = _predictor_problems(spec.predictor, "spec.predictor")
        if spec.transformer is not None:
            problems += _transformer_problems(spec.transformer, "spec.transformer")
        if spec.experiment is not None:
            problems += spec.experiment.problems("spec.experiment")
        if spec.shadow is not None:
            problems += spec.shadow.problems("spec.shadow")
        if spec.rollout is not None:
            problems += spec.rollout.problems("spec.rollout", spec.predictor.canary_traffic_percent)
            if spec.experiment is not None:
                problems.append(
                    Problem("spec.rollout", "a rollout and an A/B experiment cannot share the traffic")
                )
        if not problems:
            from autoscaler.config import ConfigError

            for kind in self.components():
                try:
                    self.scaling(kind)
                except ConfigError as exc:
                    problems += exc.problems
        return problems + _threads_problems(self.metadata.annotations)

    def scaling(self, kind: str, defaults: GlobalScalingDefaults | None = None) -> ScalingConfig:
        """How the `kind` component ("predictor", "transformer") scales; raises ConfigError."""
        from autoscaler.config import GlobalScalingDefaults

        component = self.spec.predictor if kind == "predictor" else self.spec.transformer
        assert component is not None
        memory = self.components()[kind].memory_bytes
        annotations = self.metadata.annotations
        return component.scaling(annotations, defaults or GlobalScalingDefaults(), memory, f"spec.{kind}")

    def warnings(self) -> list[str]:
        """What is accepted but ignored: unknown fields and explainers."""
        found = field_warnings(self)
        if self.spec.explainer is not None:
            found.append("spec.explainer: explainers are not supported, ignored")
        return found

    def components(self) -> dict[str, Component]:
        """The predictor (and transformer, when given), normalized with defaults filled in."""
        spec = self.spec
        threads = _threads(self.metadata.annotations)
        found = {"predictor": replace(_component("predictor", spec.predictor), threads=threads)}
        if spec.transformer is not None:
            found["transformer"] = _component("transformer", spec.transformer)
        return found


def field_warnings(model: KModel) -> list[str]:
    """`PATH: unknown field, ignored` for every field under `model` servegate does not model."""
    return [
        f"{path}: unknown field, ignored"
        for path in unknown_fields(model)
        if path.removeprefix("metadata.") not in SERVER_METADATA
    ]


def _container_problems(fields: _ContainerFields, fmt: str, path: str) -> list[Problem]:
    problems = fields.resources.problems(f"{path}.resources") if fields.resources else []
    if fmt.lower() == "python":
        uri = fields.storage_uri
        target, _, class_name = (uri or "").rpartition(":")
        if uri is None:
            problems.append(Problem(f"{path}.storageUri", f"a python model needs storageUri {_PYTHON_URI}"))
        elif not target or not class_name.isidentifier():
            problems.append(Problem(f"{path}.storageUri", f"python model URI '{uri}' must be {_PYTHON_URI}"))
    return problems


def _predictor_problems(predictor: PredictorSpec, path: str) -> list[Problem]:
    problems = predictor.scaling_problems(path)
    sources = predictor.sources()
    if len(sources) != 1:
        given = f"{' and '.join(sources)} are given" if sources else "nothing to serve"
        problems.append(
            Problem(path, f"{given}: give exactly one of model, a framework (e.g. sklearn) or containers")
        )
    if predictor.model is not None:
        name = predictor.model.model_format.name
        problem = format_problem(name, f"{path}.model.modelFormat.name")
        problems += [problem] if problem else _container_problems(predictor.model, name, f"{path}.model")
    for framework in FRAMEWORKS:
        fields = getattr(predictor, framework)
        if fields is not None:
            where = f"{path}.{framework}"
            problem = format_problem(framework, where)
            problems += [problem] if problem else _container_problems(fields, framework, where)
    return problems


def _transformer_problems(transformer: TransformerSpec, path: str) -> list[Problem]:
    problems = transformer.scaling_problems(path)
    sources = transformer.sources()
    if len(sources) != 1:
        problems.append(Problem(path, "give exactly one of model (a python class) or containers"))
    if transformer.model is not None:
        name = transformer.model.model_format.name
        if name.lower() != "python":
            message = f"transformer model format must be 'python', got '{name}'"
            problems.append(Problem(f"{path}.model.modelFormat.name", message))
        else:
            problems += _container_problems(transformer.model, "python", f"{path}.model")
    return problems


def _component(kind: str, spec: PredictorSpec | TransformerSpec) -> Component:
    """`spec` normalized; on an invalid spec (see `check`) the first source found wins."""
    sources = spec.sources()
    source = sources[0] if sources else None
    fields: _ContainerFields | None = getattr(spec, source) if source not in (None, "containers") else None
    fmt = None
    if isinstance(fields, ModelSpecField):
        fmt = fields.model_format.name.lower()
    elif fields is not None:
        fmt = source
    resources = fields.resources if fields and fields.resources else ResourceRequirements()
    limits = resources.limits
    batcher, logger = spec.batcher, spec.logger
    low = 1 if spec.min_replicas is None else spec.min_replicas
    return Component(
        kind=kind,
        format=fmt,
        storage_uri=fields.storage_uri if fields else None,
        runtime=fields.runtime if isinstance(fields, ModelSpecField) else None,
        protocol=(fields.protocol_version if fields else None) or "v1",
        min_replicas=low,
        max_replicas=spec.max_replicas or max(low, 1),
        scale_metric=spec.scale_metric or "concurrency",
        scale_target=spec.scale_target,
        container_concurrency=spec.container_concurrency or 0,
        timeout_s=float(spec.timeout) if spec.timeout is not None else None,
        canary_traffic_percent=spec.canary_traffic_percent,
        max_batch_size=(batcher.max_batch_size or 32) if batcher else 1,
        max_latency_ms=float(batcher.max_latency) if batcher and batcher.max_latency else 5.0,
        batch_timeout_s=float(batcher.timeout) if batcher and batcher.timeout is not None else None,
        gpus=resources.gpus,
        cpus=parse_quantity(limits["cpu"]) if "cpu" in limits else None,
        memory_bytes=int(parse_quantity(limits["memory"])) if "memory" in limits else None,
        env=tuple((e.name, e.value or "") for e in fields.env) if fields else (),
        args=tuple(fields.args) if fields else (),
        containers=spec.containers is not None,
        container_spec=_canonical(spec.containers) if spec.containers is not None else None,
        logger_url=logger.url if logger else None,
        logger_mode=logger.mode if logger else "all",
        node_selector=tuple(sorted((spec.node_selector or {}).items())),
        pod=_pod(spec, fields),
    )


#: component fields that only a Kubernetes pod uses (manifest spelling -> Python name).
POD_FIELDS = {
    "serviceAccountName": "service_account_name",
    "tolerations": "tolerations",
    "affinity": "affinity",
    "imagePullSecrets": "image_pull_secrets",
    "volumes": "volumes",
    "annotations": "annotations",
    "labels": "labels",
}


def _pod(spec: PredictorSpec | TransformerSpec, fields: _ContainerFields | None) -> str | None:
    given = {alias: getattr(spec, name) for alias, name in POD_FIELDS.items()}
    pod = {alias: value for alias, value in given.items() if value is not None}
    if spec.containers:
        pod["containers"] = spec.containers
    if fields is not None:
        if fields.resources is not None and (fields.resources.limits or fields.resources.requests):
            pod["resources"] = fields.resources.model_dump(mode="json", exclude_defaults=True)
        refs = [{"name": e.name, "valueFrom": e.value_from} for e in fields.env if e.value_from is not None]
        if refs:
            pod["envFrom"] = refs
        if fields.volume_mounts is not None:
            pod["volumeMounts"] = fields.volume_mounts
    return _canonical(pod) if pod else None


def _threads(annotations: Mapping[str, str]) -> int | None:
    """THREADS_ANNOTATION's count; None when it is not set or not a positive integer (`check`)."""
    value = annotations.get(THREADS_ANNOTATION, "").strip()
    return int(value) if value.isascii() and value.isdigit() and int(value) >= 1 else None


def _threads_problems(annotations: Mapping[str, str]) -> list[Problem]:
    if THREADS_ANNOTATION not in annotations or _threads(annotations) is not None:
        return []
    where = f'metadata.annotations["{THREADS_ANNOTATION}"]'
    value = annotations[THREADS_ANNOTATION]
    return [Problem(where, f"'{value}' is not a positive integer (the predictor's intra-op threads)")]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
