"""The operators' dashboards: the web page the gateway serves at `/`, and the Grafana dashboard."""
