"""The gateway: one endpoint in front of predictor pools, with canary, A/B, shadow and multi-model
routing. Built in issue 3; this package is empty until then."""
