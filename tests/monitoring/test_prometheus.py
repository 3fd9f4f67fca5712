"""A real Prometheus server scrapes the console every second and sees what was pushed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, storescu, wait_until
from tests.monitoring.support import console_up

PROMETHEUS = "/usr/bin/prometheus"


def _query(port: int, expression: str) -> list[dict]:
    response = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": expression}, timeout=5)
    response.raise_for_status()
    return response.json()["data"]["result"]


@pytest.mark.integration
def test_prometheus_scrapes_the_received_instances(node_factory, ct_series: list[Path], tmp_path: Path) -> None:
    if shutil.which(PROMETHEUS) is None:
        pytest.fail("Prometheus is missing; `make test` installs it (Debian package prometheus, as root)")
    console, web = free_port(), free_port()
    node = node_factory(console={"enabled": True, "port": console})
    wait_until(lambda: console_up(console))
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        f"scrape_configs:\n  - job_name: pacs-node\n    static_configs:\n      - targets: ['127.0.0.1:{console}']\n"
    )
    log = (tmp_path / "prometheus.log").open("w")
    server = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{web}"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
    )
    try:
        def scraped_value() -> float | None:
            try:
                result = _query(web, 'pacs_node_instances_received_total{job="pacs-node"}')
            except httpx.HTTPError:
                return None
            return float(result[0]["value"][1]) if result else None

        wait_until(lambda: scraped_value() == 0, timeout=60, interval=0.5)
        up = _query(web, 'up{job="pacs-node"}')
        assert up and up[0]["value"][1] == "1"
        pushed = storescu(node.port, ct_series)
        assert pushed.returncode == 0, pushed.stderr
        assert wait_until(lambda: scraped_value() == len(ct_series), timeout=30, interval=0.5)
    finally:
        server.terminate()
        server.wait(timeout=30)
