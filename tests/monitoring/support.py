"""Reading a node's console: ``/metrics`` samples and ``/readyz``."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def samples(console_port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``: (name, sorted labels) → value."""
    response = httpx.get(f"http://127.0.0.1:{console_port}/metrics", timeout=10)
    response.raise_for_status()
    found = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(console_port: int, name: str, **labels: str) -> float | None:
    """One sample of ``/metrics``, ``None`` when absent."""
    return samples(console_port).get((name, tuple(sorted(labels.items()))))


def readyz(console_port: int) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{console_port}/readyz", timeout=10)


def healthz(console_port: int) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{console_port}/healthz", timeout=10)


def console_up(console_port: int) -> bool:
    try:
        return healthz(console_port).status_code == 200
    except httpx.HTTPError:
        return False
