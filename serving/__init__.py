"""servegate: model serving in the spirit of KServe.

`serving` holds the control plane and the shared core (protocol types, errors, CLI);
`predictors` the model runtimes and the replica server; `router` the gateway; `autoscaler` the
scaling policy.
"""

__version__ = "0.1.0"
