"""The operator's views: `status`, `verify`, `plan`, and the Prometheus metrics."""
