"""Names the Kubernetes engine, the operator and `servegate install` agree on: labels, ports, the
field manager, the image, and the KServe API groups."""

from __future__ import annotations

from serving import __version__

__all__ = [
    "COMPONENT_LABEL",
    "FIELD_MANAGER",
    "GRPC_PORT",
    "HTTP_PORT",
    "IMAGE",
    "ISVC_LABEL",
    "MANAGED_BY",
    "MANAGED_BY_LABEL",
    "OWNER_LABEL",
    "REVISION_LABEL",
    "SERVING_GROUP",
]

#: the servegate image replicas, the gateway and the operator run (built from the Dockerfile).
IMAGE = f"ghcr.io/servegate/servegate:{__version__}"
#: every object servegate applies is applied by this server-side-apply field manager.
FIELD_MANAGER = "servegate"

#: KServe's labels on what an InferenceService makes, plus servegate's revision label.
ISVC_LABEL = "serving.kserve.io/inferenceservice"
COMPONENT_LABEL = "component"
REVISION_LABEL = "serving.servegate.io/revision"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "servegate"
#: which gateway (or gateways sharing one state) made an object: a gateway adopts only its own.
OWNER_LABEL = "serving.servegate.io/owner"

#: the ports a replica container listens on (its pod's own address).
HTTP_PORT = 8080
GRPC_PORT = 8081

#: KServe's API group: InferenceService (v1beta1), TrainedModel and InferenceGraph (v1alpha1).
SERVING_GROUP = "serving.kserve.io"
