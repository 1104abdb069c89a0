"""servegate: model serving in the spirit of KServe.

`serving` holds the control plane and the shared core (protocol types, errors, CLI);
`predictors` the model runtimes and the replica server; `router` the gateway; `autoscaler` the
scaling policy. `serving.Client` is the Python SDK for a running gateway.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serving.client import Client, ServegateError

__all__ = ["Client", "ServegateError", "__version__"]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The SDK (and httpx with it) is imported on first use: `import serving` stays cheap.
    if name in ("Client", "ServegateError"):
        from serving import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
