"""``/metrics``: what a push, a rejected association and a completed job leave there, with
one receiver process and with two (prometheus_client's multiprocess mode)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert, select

from pacs_node.config import load_settings
from pacs_node.db.deliveries import queue_deliveries, record_objects
from pacs_node.db.engine import make_engine, upgrade
from pacs_node.db.models import DestinationHealth, Instance, Job, JobState, ObjectKind, utcnow
from pacs_node.housekeeping import DiskGuard
from pacs_node.monitoring.health import DatabaseProbe
from pacs_node.monitoring.metrics import NodeMetrics, ScrapeCollector
from tests.conftest import REPO, free_port, make_series, storescu, wait_until
from tests.monitoring.support import console_up, samples, value


def test_job_steps_and_outcomes_are_counted() -> None:
    metrics = NodeMetrics()
    metrics.job_finished("done", {"select_s": 0.01, "load_s": 1.5, "detect_s": 7.0, "report_s": 0.3, "total_s": 9})
    metrics.job_finished("failed")
    text = metrics.text().decode()
    assert 'pacs_node_jobs_total{outcome="done"} 1.0' in text
    assert 'pacs_node_jobs_total{outcome="failed"} 1.0' in text
    for step in ("select", "load", "detect", "report"):
        assert f'pacs_node_job_step_seconds_count{{step="{step}"}} 1.0' in text
    assert 'pacs_node_job_step_seconds_bucket{le="10.0",step="detect"} 1.0' in text
    assert 'step="total"' not in text


def test_scrape_reads_breakers_and_free_space(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    upgrade(engine)
    with engine.begin() as connection:
        connection.execute(insert(DestinationHealth).values(name="pacs", consecutive_failures=3, open_since=utcnow()))
    probe = DatabaseProbe(engine)
    metrics = NodeMetrics()
    metrics.registry.register(ScrapeCollector(probe, DiskGuard(tmp_path, 1, 0), ["pacs", "archive"]))
    try:
        text = metrics.text().decode()
    finally:
        probe.close()
        engine.dispose()
    assert 'pacs_node_destination_breaker_open{destination="pacs"} 1.0' in text
    assert 'pacs_node_destination_breaker_open{destination="archive"} 0.0' in text
    assert 'pacs_node_destination_consecutive_failures{destination="pacs"} 3.0' in text
    assert "pacs_node_jobs_queued 0.0" in text
    assert "pacs_node_database_up 1.0" in text
    values = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    assert values["pacs_node_spool_min_free_bytes"] == 1024 * 1024
    assert values["pacs_node_spool_free_bytes"] > 0


@pytest.mark.integration
def test_metrics_after_a_push_a_rejection_and_a_completed_job(node_factory, ct_series: list[Path]) -> None:
    console = free_port()
    node = node_factory(node={"allowed_callers": [{"ae_title": "STORESCU"}]}, console={"enabled": True, "port": console})
    wait_until(lambda: console_up(console))
    before = samples(console)
    assert before[("pacs_node_instances_received_total", ())] == 0
    assert before[("pacs_node_database_up", ())] == 1
    assert before[("pacs_node_spool_free_bytes", ())] > 0

    pushed = storescu(node.port, ct_series)
    assert pushed.returncode == 0, pushed.stderr
    refused = storescu(node.port, ct_series[:1], calling_ae="INTRUDER")
    assert refused.returncode != 0
    wait_until(lambda: value(console, "pacs_node_jobs_total", outcome="done") == 1, timeout=30)

    after = samples(console)
    file_bytes = sum(path.stat().st_size for path in ct_series)
    assert after[("pacs_node_instances_received_total", ())] == len(ct_series)
    assert 0.9 * file_bytes < after[("pacs_node_received_bytes_total", ())] < file_bytes  # data sets, no file meta
    assert after[("pacs_node_cstore_responses_total", (("status", "0x0000"),))] == len(ct_series)
    assert after[("pacs_node_associations_accepted_total", ())] == 1
    assert after[("pacs_node_associations_rejected_total", (("reason", "calling_ae_not_recognized"),))] == 1
    assert after[("pacs_node_studies_completed_total", ())] == 1
    assert after[("pacs_node_jobs_total", (("outcome", "done"),))] == 1
    assert after[("pacs_node_jobs_queued", ())] == 0
    assert "event=metrics_ready mode=multiprocess" in node.output()


@pytest.mark.integration
def test_deliveries_to_a_destination_that_is_down_and_its_breaker(node_factory, ct_series: list[Path]) -> None:
    console = free_port()
    node = node_factory(console={"enabled": True, "port": console},
                        destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": free_port(),
                                       "timeout_s": 2}],  # nothing listens there
                        sending={"poll_interval_s": 0.2, "first_retry_s": 0.1, "max_retry_s": 0.2, "jitter": 0,
                                 "breaker_failures": 2, "probe_interval_s": 600})
    wait_until(lambda: console_up(console))
    assert value(console, "pacs_node_destination_breaker_open", destination="pacs") == 0
    assert storescu(node.port, ct_series).returncode == 0
    wait_until(lambda: value(console, "pacs_node_jobs_total", outcome="done") == 1, timeout=30)
    # the pass-through job writes no report: owe one received instance to the destination, as a report
    engine = make_engine(node.database_url)
    try:
        with engine.connect() as connection:
            job_pk = connection.scalar(select(Job.id).where(Job.state == JobState.DONE))
            instance = connection.execute(select(Instance.sop_class_uid, Instance.sop_instance_uid, Instance.path)).first()
        record_objects(engine, job_pk, [(ObjectKind.SR, *instance)])
        queue_deliveries(engine, job_pk, load_settings(node.config).destinations)
    finally:
        engine.dispose()
    wait_until(lambda: value(console, "pacs_node_destination_breaker_open", destination="pacs") == 1, timeout=30)
    assert value(console, "pacs_node_deliveries_total", destination="pacs", outcome="retry") == 2
    assert value(console, "pacs_node_destination_consecutive_failures", destination="pacs") == 2


def _instances_by_process(directory: Path) -> dict[int, float]:
    """``pacs_node_instances_received_total`` of each process's file in the multiprocess directory."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        for metric in MultiProcessCollector.merge([str(path)]):
            for sample in metric.samples:
                if sample.name == "pacs_node_instances_received_total":
                    counts[int(path.stem.split("_")[1])] = sample.value
    return counts


@pytest.mark.integration
def test_two_receiver_processes_count_into_one_metrics_endpoint(node_factory, tmp_path: Path) -> None:
    console = free_port()
    node = node_factory(node={"receive_processes": 2}, console={"enabled": True, "port": console})
    wait_until(lambda: node.output().count("event=receiver_started") == 1 and console_up(console), timeout=60)
    directory = Path(re.search(r"event=metrics_ready mode=multiprocess dir=(\S+)", node.output()).group(1))
    series = make_series(tmp_path / "ct", slices=40)
    pushed = 0
    # the kernel hands each connection to either process: push one association at a time
    # until the extra receiver process has stored some
    for path in series:
        result = storescu(node.port, [path])
        assert result.returncode == 0, result.stderr
        pushed += 1
        by_process = _instances_by_process(directory)
        others = {pid: count for pid, count in by_process.items() if pid != node.process.pid}
        if pushed >= 4 and sum(others.values()) > 0:
            break
    assert sum(others.values()) > 0, f"the extra receiver stored nothing in {pushed} associations: {by_process}"
    assert value(console, "pacs_node_instances_received_total") == pushed
    assert value(console, "pacs_node_associations_accepted_total") == pushed
    assert value(console, "pacs_node_cstore_responses_total", status="0x0000") == pushed


_FRESH_RUN = """
import sys
from pacs_node.monitoring import multiprocess
fresh = multiprocess.use_private_directory()
import prometheus_client.values
assert multiprocess.active() and prometheus_client.values.ValueClass._multiprocess
print(fresh)
"""


def test_a_run_starts_with_an_empty_directory_and_clears_those_of_killed_runs(tmp_path: Path) -> None:
    env = {**os.environ, "RUNTIME_DIRECTORY": str(tmp_path), "PYTHONPATH": str(REPO)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    abandoned = tmp_path / f"pacs-node-metrics-{dead.stdout.strip()}-x1"
    abandoned.mkdir()
    (abandoned / "counter_1.db").write_bytes(b"\0" * 8)
    other = tmp_path / "pacs-node-metrics-1-y2"  # pid 1 is alive: another run's
    other.mkdir()
    run = subprocess.run([sys.executable, "-c", _FRESH_RUN], capture_output=True, text=True, env=env, cwd=REPO)
    assert run.returncode == 0, run.stderr
    fresh = Path(run.stdout.strip())
    assert fresh.parent == tmp_path and list(fresh.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, other.name])


def test_refuses_once_prometheus_client_counts_in_single_process_mode(tmp_path: Path) -> None:
    from pacs_node.monitoring import multiprocess

    NodeMetrics()  # this test process imported prometheus_client without the variable
    with pytest.raises(RuntimeError, match="imported before PROMETHEUS_MULTIPROC_DIR was set"):
        multiprocess.use_directory(tmp_path)
    with pytest.raises(RuntimeError, match="single-process mode"):
        NodeMetrics(tmp_path)
