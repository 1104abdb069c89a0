"""The fields of a manifest that make the gateway or a replica read or fetch, judged by the storage
policy at apply: every component's `storageUri` and `logger.url`, a TrainedModel's `storageUri`, an
InferenceGraph step's `serviceUrl`, and what a component's `env` and `args` could point elsewhere
(the S3 endpoint, the replica's storage policy, model folder, cache and registry).
"""

from __future__ import annotations

from collections.abc import Iterator

from serving.auth.storage import (
    ALLOWED_HOSTS_ENV,
    STORAGE_ROOTS_ENV,
    Resolver,
    StoragePolicy,
    StorageRefused,
    resolve_host,
)
from serving.spec import InferenceService, Problem, TrainedModel
from serving.spec.graph import InferenceGraph
from serving.spec.isvc import PredictorSpec, TransformerSpec
from serving.spec.manifests import Resource

__all__ = ["storage_problems"]

#: environment variables that name the S3 endpoint: the policy judges them like a URL.
S3_ENDPOINT_VARS = frozenset({"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "S3_ENDPOINT"})
#: environment variables of a replica's storage: the gateway's (and the operator's) to set.
_STORAGE_VARS = frozenset(
    {
        STORAGE_ROOTS_ENV,
        ALLOWED_HOSTS_ENV,
        "SERVEGATE_CACHE_DIR",
        "SERVEGATE_REGISTRY_URL",
        "SERVEGATE_ARTIFACTS",
        # what it trusts and the tokens it accepts are the gateway's to give
        "SERVEGATE_TRUSTED_SOURCES",
        "SERVEGATE_REPLICA_TOKEN",
        "SERVEGATE_METRICS_TOKEN",
        "SERVEGATE_GATEWAY_TOKEN",
    }
)
#: `servegate model serve` flags that change where a replica reads models from or keeps them, where
#: it listens, whom it lets in and what it trusts: the operator's to set, never a manifest's (the
#: replica applies the gateway's policy to the rest).
_FOLDER_FLAGS = frozenset(
    {
        "--model-repository", "--cache-dir", "--registry-url", "--artifacts",
        "--host", "--http-port", "--grpc-port", "--port-file", "--insecure", "--token-file",
        "--tls-cert", "--tls-key", "--model-control", "--trust-source", "--storage-root", "--allow-host",
    }
)  # fmt: skip
_S3_FLAG = "--s3-endpoint"


def storage_problems(
    resources: list[Resource], policy: StoragePolicy | None, resolve: Resolver = resolve_host
) -> list[Problem]:
    """One problem per field of `resources` that `policy` refuses, by path ("InferenceService/NAME:
    spec.predictor.model.storageUri"); none without a policy. Resolves host names (blocking)."""
    if policy is None:
        return []
    problems = []
    for r in resources:
        where = f"{r.kind}/{r.metadata.name}"
        for path, uri, refusal in _fields(r):
            if refusal is None:
                try:
                    policy.check_uri(uri, resolve)
                except StorageRefused as exc:
                    refusal = exc.message
            if refusal is not None:
                problems.append(Problem(f"{where}: {path}", refusal))
    return problems


def _fields(r: Resource) -> Iterator[tuple[str, str, str | None]]:
    """(path, URI to check, or a refusal already decided) for every field of `r` that is judged."""
    if isinstance(r, InferenceService):
        yield from _component("spec.predictor", r.spec.predictor)
        if r.spec.transformer is not None:
            yield from _component("spec.transformer", r.spec.transformer)
    elif isinstance(r, TrainedModel):
        yield "spec.model.storageUri", r.spec.model.storage_uri, None
    elif isinstance(r, InferenceGraph):
        for name, node in r.spec.nodes.items():
            for i, step in enumerate(node.steps):
                if step.service_url:
                    yield f"spec.nodes.{name}.steps[{i}].serviceUrl", step.service_url, None


def _component(prefix: str, spec: PredictorSpec | TransformerSpec) -> Iterator[tuple[str, str, str | None]]:
    if spec.logger is not None and spec.logger.url:
        yield f"{prefix}.logger.url", spec.logger.url, None
    for source in spec.sources():
        fields = getattr(spec, source)
        if source == "containers" or fields is None:
            continue
        at = f"{prefix}.{source}"
        if fields.storage_uri:
            yield f"{at}.storageUri", fields.storage_uri, None
        for i, var in enumerate(fields.env):
            if var.name in _STORAGE_VARS:
                yield f"{at}.env[{i}].name", "", f"{var.name} is the operator's to set, not a manifest's"
            elif var.name in S3_ENDPOINT_VARS and var.value:
                yield f"{at}.env[{i}].value", _endpoint_url(var.value), None
        for i, arg in enumerate(fields.args):
            flag, _, value = arg.partition("=")
            if flag in _FOLDER_FLAGS:
                yield f"{at}.args[{i}]", "", f"{flag} is the operator's to set, not a manifest's"
            elif flag == _S3_FLAG:
                following = fields.args[i + 1] if i + 1 < len(fields.args) else ""
                yield f"{at}.args[{i}]", _endpoint_url(value or following), None


def _endpoint_url(value: str) -> str:
    # S3_ENDPOINT is host[:port] (KServe's convention); a URL otherwise.
    return value if "://" in value else f"https://{value}"
