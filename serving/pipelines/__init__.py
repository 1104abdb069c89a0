"""Pipelines in the spirit of Kubeflow Pipelines v2: components and pipelines in Python (`dsl`),
compiled and checked (`compiler`), run by a local or Ray executor (`executor`) with every run, step,
artifact and metric recorded for caching and lineage (`metadata`); training (`training`,
`preprocess`) and tuning (`tuning`) helpers for the steps themselves."""

from serving.pipelines.dsl import Component, Condition, ParallelFor, Pipeline, Task, component, pipeline
from serving.pipelines.types import Artifact, Dataset, Input, Metrics, Model, Output, PipelineError

__all__ = [
    "Artifact",
    "Component",
    "Condition",
    "Dataset",
    "Input",
    "Metrics",
    "Model",
    "Output",
    "ParallelFor",
    "Pipeline",
    "PipelineError",
    "Task",
    "component",
    "pipeline",
]
