"""TrainedModel (serving.kserve.io/v1alpha1): one more model loaded into a multi-model InferenceService."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from serving.spec.common import NAME_PATTERN, KModel, ObjectMeta, Problem, parse_quantity
from serving.spec.isvc import Quantity, field_warnings, format_problem

__all__ = ["TrainedModel", "TrainedModelSpec", "TrainedModelStorage"]


class TrainedModelStorage(KModel):
    """Where the model lives, its format (KServe calls it framework) and the memory it needs."""

    storage_uri: str
    framework: str
    #: memory the model needs once loaded (KServe uses it to place models on hosts).
    memory: Quantity


class TrainedModelSpec(KModel):
    #: the multi-model InferenceService that hosts the model, by name.
    inference_service: str = Field(max_length=63, pattern=NAME_PATTERN)
    model: TrainedModelStorage


class TrainedModel(KModel):
    """A model added to a running multi-model InferenceService without a new revision."""

    api_version: Literal["serving.kserve.io/v1alpha1"] = "serving.kserve.io/v1alpha1"
    kind: Literal["TrainedModel"] = "TrainedModel"
    metadata: ObjectMeta
    spec: TrainedModelSpec
    #: written by a cluster; accepted and ignored so exported manifests apply.
    status: Any | None = Field(None, exclude=True)

    def check(self) -> list[Problem]:
        """Problems pydantic cannot see: a format servegate does not serve."""
        problem = format_problem(self.spec.model.framework, "spec.model.framework")
        return [problem] if problem else []

    def warnings(self) -> list[str]:
        """Fields kept but unused."""
        return field_warnings(self)

    @property
    def memory_bytes(self) -> int:
        """`spec.model.memory` in bytes."""
        return int(parse_quantity(self.spec.model.memory))
