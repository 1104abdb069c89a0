"""What a Kubernetes cluster would refuse in what the engine renders from a manifest, found at apply
(by field path, before anything is sent): names too long once a revision's suffix is added, labels
and annotations Kubernetes does not take, requests above limits, CPU finer than a millicore, and
model paths that only the gateway's machine has. Pure functions of the parsed manifests."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from serving.spec.common import Problem, is_dns_subdomain, is_label_key, is_label_value, parse_quantity
from serving.spec.isvc import InferenceService, PredictorSpec, TransformerSpec
from serving.spec.manifests import Resource
from serving.spec.trained_model import TrainedModel

__all__ = ["MAX_SERVICE_NAME", "manifest_problems"]

#: Deployments and Services are named NAME-transformer-00001 and are at most 63 characters.
MAX_SERVICE_NAME = 63 - len("-transformer-00001")
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
_LOCAL = "a path on the gateway's machine, which pods cannot read: use pvc://CLAIM/PATH, s3://, https:// or registry://"


def manifest_problems(resources: list[Resource]) -> list[Problem]:
    problems = []
    for r in resources:
        where = f"{r.kind}/{r.metadata.name}"
        if isinstance(r, InferenceService):
            found = list(_service_problems(r))
        elif isinstance(r, TrainedModel):
            found = [("spec.model.storageUri", _LOCAL)] if _is_local(r.spec.model.storage_uri) else []
        else:
            found = []
        problems += [Problem(f"{where}: {path}", message) for path, message in found]
    return problems


def _service_problems(r: InferenceService) -> Iterator[tuple[str, str]]:
    if len(r.metadata.name) > MAX_SERVICE_NAME:
        yield (
            "metadata.name",
            f"at most {MAX_SERVICE_NAME} characters on Kubernetes: its revisions are named "
            f"NAME-transformer-00001, and Kubernetes names are at most 63 ({len(r.metadata.name)} here)",
        )
    components: list[tuple[str, PredictorSpec | TransformerSpec]] = [("spec.predictor", r.spec.predictor)]
    if r.spec.transformer is not None:
        components.append(("spec.transformer", r.spec.transformer))
    for prefix, spec in components:
        yield from _labels(f"{prefix}.labels", spec.labels, values=True)
        yield from _labels(f"{prefix}.annotations", spec.annotations, values=False)
        yield from _labels(f"{prefix}.nodeSelector", spec.node_selector, values=True)
        account = spec.service_account_name
        if account is not None and not is_dns_subdomain(account):
            yield f"{prefix}.serviceAccountName", f"'{account}' is not a service account name"
        for source in spec.sources():
            fields = getattr(spec, source)
            if source == "containers" or fields is None:
                continue
            at = f"{prefix}.{source}"
            if _is_local(fields.storage_uri):
                yield f"{at}.storageUri", _LOCAL
            for i, var in enumerate(fields.env):
                if not _ENV_NAME.fullmatch(var.name):
                    yield f"{at}.env[{i}].name", f"'{var.name}' is not an environment variable name"
            if fields.resources is not None:
                yield from _resources(f"{at}.resources", fields.resources.limits, fields.resources.requests)


def _labels(path: str, given: Any, values: bool) -> Iterator[tuple[str, str]]:
    """Kubernetes' rules for label (and annotation) keys, and label values."""
    if not isinstance(given, dict):
        if given is not None:
            yield path, "must be a map of strings"
        return
    for key, value in given.items():
        if not is_label_key(key):
            yield f"{path}.{key}", "is not a valid key (NAME or PREFIX/NAME: letters, digits, '-', '_', '.')"
        elif not isinstance(value, str):
            yield f"{path}.{key}", "must be a string"
        elif values and value and not is_label_value(value):
            yield (
                f"{path}.{key}",
                f"'{value}' is not a label value (at most 63 letters, digits, '-', '_', '.')",
            )


def _resources(path: str, limits: dict[str, Any], requests: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for part, values in (("limits", limits), ("requests", requests)):
        cpu = values.get("cpu")
        if cpu is not None and not (parse_quantity(cpu) * 1000).is_integer():
            yield f"{path}.{part}.cpu", f"{cpu} is finer than Kubernetes takes (whole millicores, e.g. 250m)"
    for name, request in requests.items():
        if name in limits and parse_quantity(request) > parse_quantity(limits[name]):
            yield f"{path}.requests.{name}", f"{request} is above its limit ({limits[name]})"


def _is_local(uri: str | None) -> bool:
    if not uri:
        return False
    if "://" not in uri:
        # a python model's module path (package.module:Class) is code in the image, not a file
        module, _, cls = uri.partition(":")
        is_module = bool(cls) and re.fullmatch(r"[\w.]+", module) and not module.endswith(".py")
        return not is_module
    return urlsplit(uri).scheme.lower() == "file"
