"""The Kubernetes engine: revisions as Deployments and Services (render.py, pure), applied and
watched through the official client (api.py) by `KubernetesEngine` (engine.py); names.py holds what
the engine, the operator and `servegate install` share."""
