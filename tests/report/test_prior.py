"""What the SR says about the prior CT: found (not compared yet), none, or not retrievable."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from pacs_node.report.context import ReportOutcome
from pacs_node.report.identity import ObjectIdentity
from pacs_node.report.prior import PriorStatement, PriorStatus
from pacs_node.report.read import read_findings, read_study_summary
from pacs_node.report.sr import build_report
from tests.report import dciodvfy, findings, write_series
from tests.report.test_sr import ALGORITHM, DEVICE

PRIOR_UID = generate_uid()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    return [pydicom.dcmread(path) for path in write_series(tmp_path_factory.mktemp("ct"))]


@pytest.mark.parametrize(("statement", "sentence", "uid"), [
    (PriorStatement(PriorStatus.FOUND, PRIOR_UID, "20251130"),
     "Prior CT of 2025-11-30 retrieved but not compared: Lung-RADS categories use the baseline screening table.",
     PRIOR_UID),
    (PriorStatement(PriorStatus.NONE, reason="no earlier CT study"),
     "No prior chest CT available for comparison: Lung-RADS categories use the baseline screening table.", None),
    (PriorStatement(PriorStatus.UNAVAILABLE, reason="pacs: connection refused"),
     "Prior CT could not be retrieved (pacs: connection refused): Lung-RADS categories use the baseline screening "
     "table; compare when it is available (Lung-RADS 0 may apply).", None),
])
def test_the_report_states_the_prior_plainly_and_stays_valid(statement: PriorStatement, sentence: str, uid: str | None,
                                                            source: list[Dataset], tmp_path: Path) -> None:
    report = build_report(source, findings(), outcome=ReportOutcome.analysed(), algorithm=ALGORITHM, device=DEVICE,
                          identity=ObjectIdentity.fresh(9901), prior=statement)
    path = tmp_path / "sr.dcm"
    report.save_as(path, enforce_file_format=True)
    errors, _ = dciodvfy(path)
    assert errors == []
    summary = read_study_summary(pydicom.dcmread(path))
    assert summary["compared_with_prior"] is False
    assert summary["prior_study_uid"] == uid
    assert sentence in summary["comments"]
    assert not any("no comparison with prior examinations" in c for c in summary["comments"]), "said once"


def test_without_priors_the_report_keeps_its_baseline_note(source: list[Dataset]) -> None:
    report = build_report(source, findings(), outcome=ReportOutcome.analysed(), algorithm=ALGORITHM, device=DEVICE,
                          identity=ObjectIdentity.fresh(9901))
    summary = read_study_summary(report)
    assert summary["compared_with_prior"] is None and summary["prior_study_uid"] is None
    assert any("no comparison with prior examinations was made" in c for c in summary["comments"])


def test_a_statement_must_be_consistent() -> None:
    with pytest.raises(ValueError, match="needs its study_uid"):
        PriorStatement(PriorStatus.FOUND)
    with pytest.raises(ValueError, match="cannot have compared with a prior that is none"):
        PriorStatement(PriorStatus.NONE, compared=True)
    assert PriorStatement(PriorStatus.FOUND, PRIOR_UID, "20250101", compared=True).sentence() == \
        "Compared with the prior CT of 2025-01-01: Lung-RADS categories use the follow-up rules."
    assert "not compared (the prior could not be analysed: no lungs)" in PriorStatement(
        PriorStatus.FOUND, PRIOR_UID, "20250101", reason="the prior could not be analysed: no lungs").sentence()


def test_the_overview_key_image_carries_the_same_sentence(source: list[Dataset]) -> None:
    from pacs_node.report.geometry import locate
    from pacs_node.report.keyimages import overview_lines

    nodules = findings()
    positions = [locate(source, n.center_lps_mm) for n in nodules]
    statement = PriorStatement(PriorStatus.NONE, reason="no earlier CT study")
    with_prior = [text for text, _ in overview_lines(source[0], nodules, positions, ReportOutcome.analysed(), ALGORITHM,
                                                      statement)]
    without = [text for text, _ in overview_lines(source[0], nodules, positions, ReportOutcome.analysed(), ALGORITHM)]
    assert statement.sentence() in with_prior and statement.sentence() not in without
    assert len(with_prior) == len(without) + 1


def test_a_follow_up_report_carries_each_nodules_change_and_follow_up_category(source: list[Dataset],
                                                                                tmp_path: Path) -> None:
    import dataclasses

    from pacs_node.imaging.lungrads_followup import compare_nodule

    grown, fresh = findings()[:2]
    smaller = dataclasses.replace(grown, long_axis_mm=grown.long_axis_mm - 3, short_axis_mm=grown.short_axis_mm - 3,
                                  volume_mm3=grown.volume_mm3 / 2)
    compared = [dataclasses.replace(grown, comparison=compare_nodule(grown, smaller, 365)),
                dataclasses.replace(fresh, comparison=compare_nodule(fresh, None, 365))]
    statement = PriorStatement(PriorStatus.FOUND, PRIOR_UID, "20251130", compared=True)
    report = build_report(source, compared, outcome=ReportOutcome.analysed(), algorithm=ALGORITHM, device=DEVICE,
                          identity=ObjectIdentity.fresh(9901), prior=statement)
    path = tmp_path / "sr.dcm"
    report.save_as(path, enforce_file_format=True)
    assert dciodvfy(path)[0] == []
    read = pydicom.dcmread(path)
    first, second = read_findings(read)
    assert first["change"] == "growing" and first["prior_diameter_mm"] == smaller.diameter_mm
    assert first["volume_change_percent"] == pytest.approx(100.0, abs=0.1)
    assert first["vdt_days"] == pytest.approx(365, abs=1), "the volume doubled in a year"
    assert first["lung_rads"] == compared[0].lung_rads.value
    assert second["change"] == "new" and second["prior_diameter_mm"] is None and second["vdt_days"] is None
    summary = read_study_summary(read)
    assert summary["compared_with_prior"] is True
    assert "Compared with the prior CT of 2025-11-30: Lung-RADS categories use the follow-up rules." in summary["comments"]
    texts = _texts(read)
    assert any(t.startswith(f"Nodule 1: {grown.diameter_mm:.1f} mm solid, growing from {smaller.diameter_mm:.1f} mm, "
                            f"Lung-RADS {compared[0].lung_rads.value}") for t in texts), texts
    assert any(t.startswith("Nodule 2: ") and ", new, Lung-RADS " in t for t in texts)


def _texts(dataset: Dataset) -> list[str]:
    """Every TEXT value of an SR content tree."""
    found = []
    for item in dataset.get("ContentSequence", []):
        if item.get("ValueType") == "TEXT":
            found.append(str(item.TextValue))
        found.extend(_texts(item))
    return found
