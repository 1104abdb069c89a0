"""Routing policies of the gateway: decisions without I/O.

`graph` runs an InferenceGraph with the calls injected; `gjson` evaluates the graph's conditions.
Nothing is imported here, so that `serving.spec.graph` can use `gjson` without a cycle.
"""
