"""The node's results in a real viewer: scanner -> node -> Orthanc (DICOMweb) -> OHIF in Chromium.

Three small phantom studies go to Orthanc and through a running ``pacs-node serve``: one
with two nodules, one without, one the node cannot analyse (5 mm slices).  Each is opened
in OHIF Viewer 3.13 (``tests/viewer/ohif.py``) in headless Chromium, and the test checks
what a radiologist sees: each nodule's circle on its own slice where the nodule is, its
label (type, Lung-RADS category, AI disclaimer) on screen, no "not compatible" badge,
the nodules loaded as editable tracked measurements, the DICOM SEG loaded as one
labelled segment per nodule, the KOS and GSPS listed with the study, and the outcome of the other two studies in the series list.  ``PACS_NODE_VIEWER_SHOTS=<folder>`` keeps screenshots
(docs/viewer.md).  Skipped, with the reason, only where the set-up could not install
OHIF (npm), Chromium, Playwright or Orthanc's DICOMweb plugin.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from pacs_node.ml.phantom import Phantom, generate_phantom, write_dicom_study
from pacs_node.report.geometry import image_coordinates
from pacs_node.report.read import read_findings
from tests.conftest import REPO, free_port, start_node, storescu, wait_until
from tests.orthanc import DICOMWEB_PLUGIN, Orthanc
from tests.viewer.ohif import ViewerServer, fetch_ohif

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
#: The JavaScript that reads OHIF's tracked measurements (its MeasurementService).
MEASUREMENTS_JS = """() => window.services.measurementService.getMeasurements().map(m => ({
    label: m.label, toolName: m.toolName, points: m.points, SOPInstanceUID: m.SOPInstanceUID}))"""
#: The segments OHIF loaded from a DICOM SEG (its SegmentationService), with their centres.
SEGMENTS_JS = """() => window.services.segmentationService.getSegmentations().flatMap(s =>
    Object.values(s.segments).map(g => ({label: g.label, algorithm: g.cachedStats.algorithmName,
                                         centre: g.cachedStats.center && g.cachedStats.center.world})))"""
#: Every series of the open study as OHIF holds it: modality, number, which handler displays it.
DISPLAY_SETS_JS = """() => window.services.displaySetService.getActiveDisplaySets().map(d => ({
    modality: d.Modality, number: d.SeriesNumber, handler: d.SOPClassHandlerId, unsupported: !!d.unsupported}))"""
#: The SR display set as OHIF sees it: loadable as tracked measurements or not.
SR_STATE_JS = """() => window.services.displaySetService.getActiveDisplaySets()
    .filter(d => d.Modality === 'SR')
    .map(d => ({isRehydratable: d.isRehydratable, count: (d.measurements || []).length}))"""


@dataclass
class Study:
    """One phantom study after the node: its CT slices and what Orthanc holds for it."""

    phantom: Phantom
    ct: list[Dataset]
    sr: Dataset
    key_image_series_uid: str
    seg_series_uid: str | None


def _missing_tool() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (`make test` installs the test extras)"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (`make test` installs the Debian package chromium, as root)"
    if not DICOMWEB_PLUGIN.exists():
        return f"{DICOMWEB_PLUGIN} is missing (`make test` installs the Debian package orthanc-dicomweb, as root)"
    return None


def _stored(orthanc: Orthanc, study_uid: str, folder: Path, seg: bool) -> tuple[Dataset, str, str | None] | None:
    """The SR, the key images' series and (with ``seg``) the segmentation's series Orthanc holds
    for a study; None until all are there."""
    sr = key_images = segmentation = None
    for orthanc_id in orthanc.get("/instances"):
        tags = orthanc.get(f"/instances/{orthanc_id}/simplified-tags")
        if tags["StudyInstanceUID"] != study_uid:
            continue
        if tags["Modality"] == "SR":
            path = folder / f"{orthanc_id}.dcm"
            path.write_bytes(orthanc.get_bytes(f"/instances/{orthanc_id}/file"))
            sr = pydicom.dcmread(path)
        elif tags["SOPClassUID"] == SECONDARY_CAPTURE:
            key_images = tags["SeriesInstanceUID"]
        elif tags["Modality"] == "SEG":
            segmentation = tags["SeriesInstanceUID"]
    if sr is None or key_images is None or (seg and segmentation is None):
        return None
    return sr, key_images, segmentation


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Orthanc with DICOMweb, a node that analyses into it, three studies through both, OHIF, Chromium."""
    missing = _missing_tool()
    if missing:
        pytest.skip(f"viewer test needs its tools: {missing}")
    try:
        dist = fetch_ohif()
    except RuntimeError as exc:
        pytest.skip(f"OHIF Viewer could not be fetched with npm (registry unreachable?): {exc}")
    from playwright.sync_api import sync_playwright

    folder = tmp_path_factory.mktemp("viewer")
    orthanc = Orthanc(folder / "orthanc", dicom_port=free_port(), http_port=free_port(), dicomweb=True)
    orthanc.start()
    node = start_node(
        folder / "node", f"sqlite:///{folder / 'node.db'}",
        analysis={"enabled": True, "models_dir": str(REPO / "models")},
        destinations=[{"name": "orthanc", "ae_title": orthanc.ae_title, "host": "127.0.0.1",
                       "port": orthanc.dicom_port, "objects": ["sr", "key_image", "seg", "kos", "gsps"]}],
        sending={"poll_interval_s": 0.3},
    )
    server = None
    try:
        phantoms = {
            "positive": generate_phantom(424250, shape_zyx=(48, 192, 192), spacing_zyx_mm=(1.25, 1.6, 1.6),
                                         n_nodules=2, nodule_types=["solid", "part-solid"],
                                         diameter_range_mm=(10.0, 18.0)),
            "negative": generate_phantom(424240, shape_zyx=(48, 192, 192), spacing_zyx_mm=(1.25, 1.6, 1.6),
                                         n_nodules=0),
            "not_analysable": generate_phantom(424244, shape_zyx=(12, 128, 128), spacing_zyx_mm=(5.0, 2.5, 2.5),
                                               n_nodules=0),
        }
        series = {name: Path(write_dicom_study(p, folder / name).series_dir) for name, p in phantoms.items()}
        for path in series.values():  # the scanner sends to the PACS and to the node
            assert storescu(orthanc.dicom_port, path, called_ae=orthanc.ae_title).returncode == 0
            assert storescu(node.port, path).returncode == 0
        studies = {}
        for name, phantom in phantoms.items():
            sr, key_images, seg = wait_until(
                lambda p=phantom, n=name: _stored(orthanc, p.study_uid, folder, seg=n == "positive"),
                timeout=240, interval=1.0)
            ct = sorted((pydicom.dcmread(p, stop_before_pixels=True) for p in series[name].glob("*.dcm")),
                        key=lambda ds: float(ds.ImagePositionPatient[2]))
            studies[name] = Study(phantom, ct, sr, key_images, seg)
        server = ViewerServer(dist, orthanc.http_port).start()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                                 args=["--no-sandbox", "--use-angle=swiftshader"])
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            yield {"server": server, "context": context, "studies": studies}
            browser.close()
    finally:
        if server is not None:
            server.stop()
        node.stop()
        orthanc.stop()


def _open(setting: dict[str, Any], study: Study, series_uid: str | None = None, *, track: bool = False):  # noqa: ANN202
    """A page with the viewer on ``study`` (and ``series_uid`` first), onboarding pop-ups closed."""
    server: ViewerServer = setting["server"]
    server.auto_track = track
    page = setting["context"].new_page()
    page.goto(server.study_url(study.phantom.study_uid, series_uid))
    page.locator("canvas").first.wait_for(state="attached", timeout=90_000)
    for name in ("Skip all", "Confirm and hide"):
        button = page.get_by_role("button", name=name, exact=True)
        try:
            button.first.wait_for(timeout=3_000)
            button.first.click()
        except Exception:  # noqa: BLE001 - shown once per browser profile, or not at all
            pass
    return page


def _shot(page, name: str) -> None:  # noqa: ANN001
    folder = os.environ.get("PACS_NODE_VIEWER_SHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"))


def _pixel(ct: list[Dataset], sop_uid: str, point_lps_mm: Any) -> np.ndarray:
    image = next(ds for ds in ct if ds.SOPInstanceUID == sop_uid)
    return image_coordinates(image, np.asarray([point_lps_mm], dtype=float))[0][:2]


def _truth_of(study: Study, point_lps_mm: Any) -> Any:
    """The phantom nodule nearest a point (LPS mm)."""
    return min(study.phantom.nodules, key=lambda n: np.linalg.norm(np.subtract(n.centre_xyz_mm, point_lps_mm)))


def test_positive_study_shows_each_nodule_labelled_on_its_slice(setting: dict[str, Any]) -> None:
    study: Study = setting["studies"]["positive"]
    findings = read_findings(study.sr)
    assert len(findings) == 2, "the phantom's two nodules are found (the model's job; checked elsewhere)"
    labels = [f"{f['name']}: {f['diameter_mm']:.1f} mm {f['nodule_type']}, Lung-RADS {f['lung_rads']}"
              for f in findings]
    page = _open(setting, study, str(study.sr.SeriesInstanceUID))
    page.locator("svg text", has_text="Lung-RADS").first.wait_for(timeout=60_000)
    text = page.inner_text("body")
    assert labels[0] in text, "the report opens on the first nodule, labelled"
    assert "AI-generated, not for diagnostic use" in text
    assert f"Diameter: {findings[0]['diameter_mm']:.2f} mm" in text, "the diameter within the five lines shown"
    assert page.evaluate(SR_STATE_JS) == [{"isRehydratable": True, "count": 2}]
    page.locator("[data-cy^=ModalityLoadBadge]").first.hover()
    page.wait_for_timeout(1_000)
    badge = page.inner_text("body")
    assert "not compatible" not in badge and "restore measurements" in badge, "the (!) badge is gone"
    _shot(page, "positive-report")
    page.close()

    page = _open(setting, study, str(study.sr.SeriesInstanceUID), track=True)
    measurements = wait_until(lambda: (m := page.evaluate(MEASUREMENTS_JS)) and len(m) == 2 and m, timeout=60)
    page.wait_for_timeout(2_000)
    _shot(page, "positive-tracked")
    spacing = float(study.ct[1].ImagePositionPatient[2]) - float(study.ct[0].ImagePositionPatient[2])
    for finding, label in zip(findings, labels, strict=True):
        [measurement] = [m for m in measurements if m["label"].startswith(label)]
        assert measurement["toolName"] == "CircleROI"
        assert "not for diagnostic use" in measurement["label"]
        assert measurement["SOPInstanceUID"] == finding["circle"]["sop_instance_uid"], "drawn on the slice of the SR"
        truth = _truth_of(study, finding["center_lps_mm"])
        drawn = _pixel(study.ct, measurement["SOPInstanceUID"], measurement["points"][0])
        assert np.linalg.norm(drawn - np.asarray(finding["circle"]["center_col_row"])) < 0.5, "where the SR puts it"
        assert np.linalg.norm(drawn - _pixel(study.ct, measurement["SOPInstanceUID"], truth.centre_xyz_mm)) < 3, \
            "within a few pixels of the nodule's true centre"
        assert abs(measurement["points"][0][2] - truth.centre_xyz_mm[2]) <= abs(spacing) / 2 + 1e-3, "on its own slice"
    assert {_truth_of(study, f["center_lps_mm"]).centre_xyz_mm for f in findings} == \
        {n.centre_xyz_mm for n in study.phantom.nodules}, "each nodule drawn once"
    page.close()


def test_segmentation_shows_each_nodule_as_a_labelled_segment(setting: dict[str, Any]) -> None:
    study: Study = setting["studies"]["positive"]
    assert study.seg_series_uid is not None
    findings = read_findings(study.sr)
    page = _open(setting, study, study.seg_series_uid)
    segments = wait_until(lambda: (s := page.evaluate(SEGMENTS_JS)) and len(s) == len(findings) and s, timeout=60)
    page.wait_for_timeout(2_000)
    _shot(page, "positive-segmentation")
    assert sorted(s["label"] for s in segments) == sorted(f["name"] for f in findings)
    for segment in segments:
        [finding] = [f for f in findings if f["name"] == segment["label"]]
        assert segment["algorithm"] == "lung-nodule-synthetic-v3"
        assert np.linalg.norm(np.subtract(segment["centre"], finding["center_lps_mm"])) < 3, \
            "the segment lies on its nodule (centre within 3 mm of the SR's)"
    page.close()


def test_key_objects_and_presentation_state_are_listed_with_the_study(setting: dict[str, Any]) -> None:
    """OHIF 3.13 lists the KOS and the GSPS under the study, by description, but has no handler
    that displays either (it marks them unsupported): in OHIF the marks come from the SR and the
    SEG; the KOS and GSPS are for PACS viewers that flag key images and draw presentation states."""
    study: Study = setting["studies"]["positive"]
    page = _open(setting, study)
    sets = wait_until(lambda: (d := page.evaluate(DISPLAY_SETS_JS)) and len(d) == 6 and d, timeout=60)
    text = page.inner_text("body")
    assert "AI key objects (not for diagnostic use)" in text
    assert "AI nodule marks (not for diagnostic use)" in text
    by_number = {d["number"]: d for d in sets}
    assert by_number[9903]["modality"] == "KO" and by_number[9904]["modality"] == "PR"
    assert by_number[9903]["unsupported"] and by_number[9904]["unsupported"], \
        "OHIF displays KO or PR now: check them on screen and update docs/viewer.md"
    assert not any(by_number[n]["unsupported"] for n in (2, 9901, 9902, 9905)), "CT, SR, key images, SEG display"
    page.close()


def test_negative_study_says_no_nodules_were_detected(setting: dict[str, Any]) -> None:
    study: Study = setting["studies"]["negative"]
    assert read_findings(study.sr) == []
    page = _open(setting, study, study.key_image_series_uid)
    page.get_by_text("AI report: no lung nodules detected", exact=False).first.wait_for(timeout=30_000)
    page.wait_for_timeout(2_000)
    _shot(page, "negative")
    page.close()


def test_not_analysable_study_says_it_was_not_analysed(setting: dict[str, Any]) -> None:
    study: Study = setting["studies"]["not_analysable"]
    page = _open(setting, study, study.key_image_series_uid)
    page.get_by_text("AI report: series not analysed", exact=False).first.wait_for(timeout=30_000)
    page.wait_for_timeout(2_000)
    _shot(page, "not-analysable")
    page.close()


