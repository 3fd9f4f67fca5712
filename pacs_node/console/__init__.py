"""The IT console: web pages, REST API, Prometheus metrics and health checks on their own port."""
