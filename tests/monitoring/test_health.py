"""``/healthz`` and ``/readyz`` while the database goes away and the spool fills up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from pacs_node.monitoring.health import DatabaseProbe, DatabaseUnavailable
from tests.conftest import free_port, wait_until
from tests.monitoring.support import console_up, healthz, readyz, value
from tests.reliability.proxy import TcpProxy
from tests.reliability.test_housekeeping import _fill, small_spool  # noqa: F401 - fixture
from tests.reliability.test_outages import postgres_via_proxy  # noqa: F401 - fixture

_MB = 1024 * 1024


def _failing(console: int) -> dict[str, str]:
    response = readyz(console)
    return response.json()["failing"] if response.status_code == 503 else {}


@pytest.mark.integration
def test_readyz_follows_the_database_and_healthz_stays_up(node_factory, postgres_via_proxy) -> None:  # noqa: F811
    _, proxied_url, proxy = postgres_via_proxy
    console = free_port()
    node_factory(database_url=proxied_url, console={"enabled": True, "port": console})
    wait_until(lambda: console_up(console))
    ready = readyz(console)
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "failing": {}, "checks": {
        "database": "ok", "spool_writable": "ok", "spool_free_space": "ok", "listener": "ok", "model": "ok"}}

    proxy.down()
    failing = wait_until(lambda: _failing(console), timeout=15)
    assert set(failing) == {"database"}, failing
    assert readyz(console).json()["status"] == "not ready"
    assert healthz(console).status_code == 200
    assert value(console, "pacs_node_database_up") == 0

    proxy.up()
    wait_until(lambda: readyz(console).status_code == 200, timeout=30)
    assert value(console, "pacs_node_database_up") == 1


@pytest.mark.integration
def test_readyz_fails_while_the_spool_is_below_min_free_mb(small_spool: Path, node_factory) -> None:  # noqa: F811
    console = free_port()
    node_factory(storage={"min_free_mb": 4, "warn_free_mb": 0}, console={"enabled": True, "port": console})
    wait_until(lambda: console_up(console))
    assert readyz(console).status_code == 200

    filler = _fill(small_spool, "filler", leave_free_bytes=3 * _MB)
    failing = _failing(console)
    assert set(failing) == {"spool_free_space"}, failing
    assert "below storage.min_free_mb = 4" in failing["spool_free_space"]
    assert healthz(console).status_code == 200
    assert value(console, "pacs_node_spool_free_bytes") < 4 * _MB

    filler.unlink()
    assert readyz(console).status_code == 200


def test_a_database_that_stops_answering_fails_the_probe_in_time(postgres_via_proxy) -> None:  # noqa: F811
    _, proxied_url, proxy = postgres_via_proxy
    engine = create_engine(proxied_url, pool_pre_ping=True)
    probe = DatabaseProbe(engine, timeout_s=0.5)
    try:
        assert probe.check() is None
        proxy.stall()  # bytes towards PostgreSQL are held: queries hang
        assert probe.check() == "no answer within 0.5 s"
        assert probe.check().startswith("no answer for")  # the hung query is not queued behind
        proxy.flow()
        wait_until(lambda: probe.check() is None, timeout=10)
        assert probe.run(lambda connection: connection.execute(text("SELECT 41 + 1")).scalar()) == 42
        proxy.down()
        with pytest.raises(DatabaseUnavailable, match="OperationalError"):
            probe.run(lambda connection: connection.execute(text("SELECT 1")).scalar())
    finally:
        proxy.flow()
        probe.close()
        engine.dispose()


def test_spool_check_needs_a_writable_folder(tmp_path: Path) -> None:
    from pacs_node.monitoring.health import spool_writable

    assert spool_writable(tmp_path) is None
    assert os.listdir(tmp_path) == []
    assert spool_writable(tmp_path / "missing").startswith(f"cannot write to {tmp_path / 'missing'}")


def test_the_model_check_sees_the_detector_behind_the_prior_lookup(tmp_path: Path) -> None:
    """With ``[priors]`` on, the analysis job is wrapped; the loaded model still counts."""
    from pacs_node.analyze.pipeline import Analysis
    from pacs_node.config import load_settings
    from pacs_node.node import Node
    from tests.analyze.test_pipeline import TruthDetector
    from tests.conftest import write_config

    config = write_config(tmp_path, free_port(), f"sqlite:///{tmp_path / 'node.db'}", console={"enabled": True, "port": 0},
                          priors={"enabled": True, "sources": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                                                                "port": free_port()}]})
    settings = load_settings(config)
    node = Node(settings, runner=Analysis(settings, TruthDetector([])))
    node.start()
    try:
        assert node.health.readiness()["model"] is None
    finally:
        node.stop()


def test_a_process_that_does_not_receive_has_no_listener_check(tmp_path: Path) -> None:
    from pacs_node.housekeeping import DiskGuard
    from pacs_node.monitoring.health import NodeHealth

    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    probe = DatabaseProbe(engine)
    try:
        worker_only = NodeHealth(probe, tmp_path, DiskGuard(tmp_path, 0, 0), None, lambda: True)
        assert set(worker_only.readiness()) == {"database", "spool_writable", "spool_free_space", "model"}
        receiving = NodeHealth(probe, tmp_path, DiskGuard(tmp_path, 0, 0), lambda: False, lambda: True)
        assert receiving.readiness()["listener"] == "the DICOM listener does not accept associations"
    finally:
        probe.close()
        engine.dispose()
