"""Operator mode: KServe's CRDs (crds.py) and what `servegate install` prints (install.py); the
operator that syncs KServe's objects in a cluster with the gateway (sync.py, status.py, kube.py),
elected by a Kubernetes Lease (kubelease.py), with its health endpoints (health.py, runner.py)."""
