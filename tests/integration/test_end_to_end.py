"""End to end with the bundled model: storescu as the scanner, Orthanc as the PACS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from pacs_node.ml.phantom import generate_phantom, write_dicom_study
from pacs_node.report.read import read_findings, read_study_summary
from tests.conftest import REPO, storescu, wait_until

pytestmark = pytest.mark.integration


def _node_config(orthanc, **profile) -> dict:  # noqa: ANN001, ANN003
    return {
        "analysis": {"enabled": True, "models_dir": str(REPO / "models")},
        "destinations": [{"name": "orthanc", "ae_title": orthanc.ae_title, "host": "127.0.0.1",
                          "port": orthanc.dicom_port, **profile}],
        "sending": {"poll_interval_s": 0.3},
    }


#: SOP classes of the objects beyond the SR and the key images.
_EXTRA_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.59": "kos", "1.2.840.10008.5.1.4.1.1.11.1": "gsps",
                  "1.2.840.10008.5.1.4.1.1.66.4": "seg"}


def _extras(orthanc, study_uid: str) -> list[str]:  # noqa: ANN001
    """The KOS, presentation states and segmentations Orthanc holds for a study, by kind."""
    return sorted(_EXTRA_CLASSES[tags["SOPClassUID"]] for tags in orthanc.instances()
                  if tags["StudyInstanceUID"] == study_uid and tags["SOPClassUID"] in _EXTRA_CLASSES)


def _reports(orthanc, study_uid: str, tmp_path: Path) -> tuple[list, int]:  # noqa: ANN001
    srs, key_images = [], 0
    for orthanc_id in orthanc.get("/instances"):
        tags = orthanc.get(f"/instances/{orthanc_id}/simplified-tags")
        if tags["StudyInstanceUID"] != study_uid:
            continue
        if tags["Modality"] == "SR":
            path = tmp_path / f"{orthanc_id}.dcm"
            path.write_bytes(orthanc.get_bytes(f"/instances/{orthanc_id}/file"))
            srs.append(pydicom.dcmread(path))
        elif tags["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.7":
            key_images += 1
    return srs, key_images


def test_pushed_study_comes_back_as_findings_in_pacs(node_factory, orthanc, tmp_path: Path) -> None:
    """The destination takes every object: SR, key images, KOS, presentation state, segmentation."""
    phantom = generate_phantom(424243, shape_zyx=(140, 320, 320), spacing_zyx_mm=(1.25, 1.0, 1.0),
                               n_nodules=1, nodule_types=["solid"], diameter_range_mm=(14.0, 20.0))
    series = Path(write_dicom_study(phantom, tmp_path / "study").series_dir)
    node = node_factory(**_node_config(orthanc, objects=["sr", "key_image", "kos", "gsps", "seg"]))
    assert storescu(node.port, series).returncode == 0
    srs = wait_until(lambda: _reports(orthanc, phantom.study_uid, tmp_path)[0], timeout=120, interval=0.5)
    [sr] = srs
    found = read_findings(sr)
    summary = read_study_summary(sr)
    # The SR is sent first; the other objects follow it over the same association.
    key_images = wait_until(lambda: _reports(orthanc, phantom.study_uid, tmp_path)[1] == 1 + len(found)
                            and 1 + len(found), timeout=30, interval=0.5)
    assert key_images == 1 + len(found), "one per finding plus the overview"
    assert wait_until(lambda: _extras(orthanc, phantom.study_uid) == ["gsps", "kos", "seg"], timeout=30)
    truth = phantom.nodules[0]
    distances = [np.linalg.norm(np.subtract(f["center_lps_mm"], truth.centre_xyz_mm)) for f in found]
    assert distances and min(distances) <= truth.diameter_mm / 2, "the large nodule is found"
    assert summary["outcome"] == "analysed" and summary["nodules_detected"]
    ct = pydicom.dcmread(next(series.glob("*.dcm")))
    log = node.output()
    assert "event=detect" in log
    for secret in (str(ct.PatientName), str(ct.PatientID), phantom.study_uid, str(sr.SOPInstanceUID)):
        assert secret not in log, "no patient data or UIDs in the log at INFO, analysis and sending included"


def test_study_without_nodules_gets_a_negative_report(node_factory, orthanc, tmp_path: Path) -> None:
    """The negative-report path with the real model.  The model makes about one false positive per
    scan (see its card), so this phantom is one on which it reports nothing: the test checks what
    the radiologist receives then, not the model's specificity (the evaluation measures that)."""
    phantom = generate_phantom(424240, shape_zyx=(140, 320, 320), spacing_zyx_mm=(1.25, 1.0, 1.0), n_nodules=0)
    series = Path(write_dicom_study(phantom, tmp_path / "study").series_dir)
    node = node_factory(**_node_config(orthanc))
    assert storescu(node.port, series).returncode == 0
    [sr] = wait_until(lambda: _reports(orthanc, phantom.study_uid, tmp_path)[0], timeout=120, interval=0.5)
    summary = read_study_summary(sr)
    assert summary["outcome"] == "analysed" and not summary["nodules_detected"]
    assert read_findings(sr) == []
    assert "No lung nodules detected." in summary["comments"]
    assert wait_until(lambda: _reports(orthanc, phantom.study_uid, tmp_path)[1], timeout=30) == 1, "the overview"
    assert _extras(orthanc, phantom.study_uid) == [], "the default profile: SR and key images only"
