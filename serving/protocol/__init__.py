"""Wire types and codecs: one protocol-agnostic request/response, one codec per protocol."""

from serving.protocol.types import (
    InferRequest,
    InferResponse,
    InferTensor,
    ModelMetadata,
    RequestedOutput,
    TensorSpec,
)

__all__ = ["InferRequest", "InferResponse", "InferTensor", "ModelMetadata", "RequestedOutput", "TensorSpec"]
