"""Operations: Prometheus metrics, health checks and the systemd watchdog.

``multiprocess`` must be read first: it decides, before ``prometheus_client`` is imported,
that every node process counts into one private directory.
"""
