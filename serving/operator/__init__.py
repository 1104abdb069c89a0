"""servegate's Kubernetes operator: KServe's CRDs, vendored, and the objects `servegate install` prints."""
