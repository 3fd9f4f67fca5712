"""Access: the calling-AE allow-list with host binding, no patient data in logs, the unit's exposure."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

from pacs_node.db.models import Instance, Job, JobState
from tests.conftest import REPO, make_series, storescu, wait_until
from tests.reliability.support import NodeDb


def test_allow_list_binds_ae_titles_to_hosts(node_factory, tmp_path: Path, record_outcome) -> None:  # noqa: ANN001
    series = make_series(tmp_path / "series", slices=3)
    node = node_factory(node={"allowed_callers": [{"ae_title": "CT_ALLOWED", "host": "127.0.0.1"},
                                                  {"ae_title": "CT_ELSEWHERE", "host": "10.20.30.40"}]})
    db = NodeDb(node.database_url)
    try:
        unknown = storescu(node.port, series, calling_ae="CT_OTHER")
        wrong_host = storescu(node.port, series, calling_ae="CT_ELSEWHERE")
        wrong_called = storescu(node.port, series, called_ae="NOT_US", calling_ae="CT_ALLOWED")
        for refused in (unknown, wrong_host, wrong_called):
            assert refused.returncode != 0
        assert "Calling AE Title Not Recognized" in unknown.stderr
        assert "Calling AE Title Not Recognized" in wrong_host.stderr, "a listed AE from another host is refused"
        assert "Called AE Title Not Recognized" in wrong_called.stderr
        assert db.count(Instance) == 0
        accepted = storescu(node.port, series, calling_ae="CT_ALLOWED")
        assert accepted.returncode == 0, accepted.stderr
        assert db.count(Instance) == 3
    finally:
        db.close()
    log = node.output()
    assert log.count("event=association_rejected") == 3 and "reason=CALLING_AE_NOT_RECOGNIZED" in log
    record_outcome(area="Access", fault="caller not on the allow-list, or listed but from another host",
                   tried="storescu as an unknown AE, as a listed AE bound to 10.20.30.40 (from 127.0.0.1), "
                         "and to a wrong called AE; then as the allowed AE",
                   cases=4, outcome="3 A-ASSOCIATE-RJ (calling / calling / called AE not recognized), 0 stored, "
                                    "each logged; the allowed AE from its host stored 3 of 3")


def test_no_patient_data_or_uids_in_logs_at_info(node_factory, tmp_path: Path, record_outcome) -> None:  # noqa: ANN001
    series = make_series(tmp_path / "phi", slices=4, patient_name="Sensitive^Person", patient_id="MRN-998877")
    first = pydicom.dcmread(series[0])
    bad = pydicom.dcmread(series[1])
    bad.SOPInstanceUID = "1.2.abc"  # refused with C000: the refusal must not echo it with the patient
    (tmp_path / "bad").mkdir()
    bad.save_as(tmp_path / "bad" / "bad.dcm", enforce_file_format=True)
    node = node_factory(node={"allowed_callers": [{"ae_title": "STORESCU", "host": "127.0.0.1"}]})
    assert storescu(node.port, series[0].parent).returncode == 0
    storescu(node.port, tmp_path / "bad")
    storescu(node.port, series[0], calling_ae="INTRUDER")
    db = NodeDb(node.database_url)
    try:
        wait_until(lambda: [j for j in db.jobs() if j.state == JobState.DONE], timeout=30)
        assert db.count(Job) == 1
    finally:
        db.close()
    node.stop()
    log = node.output()
    assert "event=association_accepted" in log and "event=association_rejected" in log
    secrets = ["Sensitive", "MRN-998877", first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID,
               first.FrameOfReferenceUID]
    for secret in secrets:
        assert secret not in log
    record_outcome(area="Access", fault="patient data in logs (level INFO)",
                   tried="a study with patient name and ID pushed, an instance refused for its UID, an unknown "
                         "caller rejected; the node's whole log searched",
                   cases=len(secrets), outcome="none of name, ID, study/series/instance/frame-of-reference UIDs "
                                              "appears; events carry internal ids only")


def test_systemd_unit_exposure_is_low(record_outcome) -> None:  # noqa: ANN001
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    unit = REPO / "systemd" / "pacs-node.service"
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                            capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for pacs-node\.service: ([0-9.]+) (\w+)", result.stdout)
    assert found, result.stdout + result.stderr
    score = float(found.group(1))
    assert score <= 2.0, f"exposure {score}: the unit lost some of its sandboxing"
    record_outcome(area="Access", fault="service privileges (systemd unit)",
                   tried="systemd-analyze security --offline=true systemd/pacs-node.service", cases=1,
                   outcome=f"overall exposure {score} {found.group(2)} (0 = fully locked down, 10 = unprotected)")
