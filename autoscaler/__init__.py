"""Replica autoscaling from Prometheus metrics (a pure policy, metric sources, engine actuators).
Built in issue 4; this package is empty until then."""
