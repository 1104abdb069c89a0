"""Where the autoscaler reads its metrics from.

- `scrape.ScrapeSource` (the default) reads the `/metrics` of the gateway and of each replica
  directly: concurrency and request counts per revision, CPU and memory per replica.
- `promql.PromQLSource` asks a Prometheus server (`--prometheus-url`) one PromQL query, and gets
  one number, or None while the query selects no series (a new revision, no traffic yet).

"No data" is an answer the scaling policy handles, not an error. Whatever keeps a source from
answering (a server unreachable, a query rejected, a result that is not a number) raises
`MetricSourceError`, whose message says what was asked and the server's own words.
"""

from __future__ import annotations

__all__ = ["MetricSourceError"]


class MetricSourceError(Exception):
    """A metric source could not answer; the message names what was asked and why it failed."""
