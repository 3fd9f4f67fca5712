"""A follow-up CT end to end: the scanner pushes it to the node, the node fetches the prior from
Orthanc, compares with the bundled model, and Orthanc receives an SR that reports the change."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacs_node.report.read import read_findings, read_study_summary
from tests.conftest import REPO, free_port, storescu, wait_until
from tests.integration.test_end_to_end import _reports
from tests.integration.test_priors import _orthanc, growing_and_stable

pytestmark = pytest.mark.integration

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _our_sr(orthanc, study_uid: str, folder: Path):  # noqa: ANN001, ANN202
    """Our SR of a study in Orthanc, or ``None`` until it is there."""
    srs, _ = _reports(orthanc, study_uid, folder)
    return srs[0] if srs else None


def _key_images(orthanc, study_uid: str) -> list[dict]:  # noqa: ANN001
    """Orthanc's simplified tags of the Secondary Capture key images of a study."""
    tags = (orthanc.get(f"/instances/{orthanc_id}/simplified-tags") for orthanc_id in orthanc.get("/instances"))
    return [t for t in tags if t["StudyInstanceUID"] == study_uid and t["SOPClassUID"] == SECONDARY_CAPTURE]


def test_the_sr_in_pacs_reports_the_change_since_the_prior(node_factory, tmp_path: Path) -> None:
    port = free_port()
    orthanc = _orthanc(tmp_path, port)
    try:
        fu = growing_and_stable(tmp_path / "patient")
        prior, current = (fu.timepoints[i].phantom for i in (0, 1))
        assert storescu(orthanc.dicom_port, tmp_path / "patient" / "t0" / "series",
                        called_ae=orthanc.ae_title).returncode == 0  # the PACS holds last year's CT
        source = {"name": "orthanc", "ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}
        node = node_factory(node={"port": port},
                            analysis={"enabled": True, "models_dir": str(REPO / "models")},
                            priors={"enabled": True, "max_wait_s": 60, "sources": [source]},
                            destinations=[{**source, "name": "pacs"}], sending={"poll_interval_s": 0.3})
        assert storescu(node.port, tmp_path / "patient" / "t1" / "series").returncode == 0
        sr = wait_until(lambda: _our_sr(orthanc, current.study_uid, tmp_path), timeout=240, interval=1.0)
        summary = read_study_summary(sr)
        assert summary["compared_with_prior"] is True, summary["comments"]
        assert summary["prior_study_uid"] == prior.study_uid
        nodules = read_findings(sr)
        matched = [n for n in nodules if n["prior_diameter_mm"] is not None]
        assert matched, nodules
        assert all(n["change"] in ("growing", "slowly growing", "stable", "shrinking") for n in matched)
        # each matched nodule's key image shows prior and current side by side (wider than high)
        images = wait_until(lambda: (found := _key_images(orthanc, current.study_uid)) and
                            len(found) == 1 + len(nodules) and found, timeout=60, interval=0.5)
        per_nodule = [t for t in images if t["InstanceNumber"] != "1"]  # 1: the overview
        side_by_side = [t for t in per_nodule if len(t.get("SourceImageSequence") or []) == 2]  # prior and current
        assert len(side_by_side) == len(matched), [(t["Rows"], t["Columns"]) for t in per_nodule]
        assert all(int(t["Columns"]) > int(t["Rows"]) for t in side_by_side)
        assert _our_sr(orthanc, prior.study_uid, tmp_path) is None, "the prior is not analysed as a new study"
        assert "event=comparison_done" in node.output()
    finally:
        orthanc.stop()
