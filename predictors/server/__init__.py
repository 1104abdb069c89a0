"""The replica model server: V1/V2 REST, V2 gRPC and /metrics over one data plane."""

from predictors.server.replica import Replica, ReplicaOptions

__all__ = ["Replica", "ReplicaOptions"]
