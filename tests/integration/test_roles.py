"""Roles: a receive-only process and an analyse+send process on one database and spool."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pacs_node.ml.phantom import generate_phantom, write_dicom_study
from tests.conftest import REPO, free_port, listening, storescu, wait_until, write_config

pytestmark = pytest.mark.integration


def _serve(config: Path, log: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "pacs_node", "serve", "--config", str(config)],
                               stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO)
    try:
        wait_until(lambda: process.poll() is not None or "event=node_started" in log.read_text(), timeout=60)
    except AssertionError:
        process.kill()
        raise
    assert process.poll() is None, log.read_text()
    return process


def test_a_receiver_and_a_worker_process_split_the_work(orthanc, tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    spool = str(tmp_path / "spool")
    receiver_port, worker_port = free_port(), free_port()
    for folder in ("receiver", "worker"):
        (tmp_path / folder).mkdir()
    destination = [{"name": "orthanc", "ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}]
    # the receiver needs no model: its models folder does not even exist
    receiver_config = write_config(tmp_path / "receiver", receiver_port, database,
                                   node={"name": "receiver-1", "roles": ["receive"]},
                                   storage={"spool_dir": spool, "database_url": database, "min_free_mb": 0},
                                   analysis={"enabled": True, "models_dir": str(tmp_path / "no-models-here")},
                                   destinations=destination)
    worker_config = write_config(tmp_path / "worker", worker_port, database,
                                 node={"name": "worker-1", "roles": ["analyse", "send"]},
                                 storage={"spool_dir": spool, "database_url": database, "min_free_mb": 0},
                                 analysis={"enabled": True, "models_dir": str(REPO / "models")},
                                 destinations=destination, sending={"poll_interval_s": 0.3})
    logs = {"receiver": tmp_path / "receiver.log", "worker": tmp_path / "worker.log"}
    receiver = _serve(receiver_config, logs["receiver"])
    worker = _serve(worker_config, logs["worker"])
    try:
        assert listening(receiver_port) and not listening(worker_port), "only the receiver opens a DICOM port"
        phantom = generate_phantom(424243, shape_zyx=(48, 192, 192), spacing_zyx_mm=(1.25, 1.6, 1.6),
                                   n_nodules=1, nodule_types=["solid"], diameter_range_mm=(12.0, 18.0))
        series = Path(write_dicom_study(phantom, tmp_path / "study").series_dir)
        assert storescu(receiver_port, series).returncode == 0
        wait_until(lambda: any(i["Modality"] == "SR" and i["StudyInstanceUID"] == phantom.study_uid
                               for i in orthanc.instances()), timeout=120, interval=0.5)
        # the delivery is logged once Orthanc has answered: wait for the line, not a fixed time
        wait_until(lambda: "event=delivery_sent" in logs["worker"].read_text(), timeout=30)
        receiver_log, worker_log = logs["receiver"].read_text(), logs["worker"].read_text()
        assert "roles=receive " in receiver_log and "worker=off sender=off" in receiver_log
        assert "event=study_complete" in receiver_log + worker_log
        assert "event=job_done" in worker_log and "event=job_done" not in receiver_log
        assert "event=delivery_sent" in worker_log and "event=delivery_sent" not in receiver_log
        assert "association_accepted" not in worker_log
    finally:
        for process in (receiver, worker):
            process.terminate()
            process.wait(timeout=30)
