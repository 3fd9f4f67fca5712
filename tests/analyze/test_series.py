"""Series selection: the right series is chosen, and every rejection says why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from pacs_node.analyze.series import SeriesChoice, Rejection, check_series, choose_series
from pacs_node.ml.ct_series import SeriesIdentity, write_ct_series


def _series(folder: Path, slices: int = 40, spacing: float = 1.25, **identity) -> list:  # noqa: ANN003
    volume = np.zeros((slices, 16, 16), dtype=np.float32)
    paths = write_ct_series(volume, (spacing, 0.7, 0.7), (0.0, 0.0, 0.0), folder, SeriesIdentity(**identity))
    return [(path, dcmread(path, stop_before_pixels=True)) for path in paths]


def test_thinnest_passing_series_wins(tmp_path: Path) -> None:
    thick = _series(tmp_path / "thick", spacing=2.5)
    thin = _series(tmp_path / "thin", spacing=1.0)
    chosen, rejected = choose_series({"1.1": thick, "1.2": thin})
    assert [c.series_uid for c in chosen] == ["1.2"]
    assert rejected[0].reason == "another series of the study has thinner slices"
    both, _ = choose_series({"1.1": thick, "1.2": thin}, analyse_all=True)
    assert len(both) == 2


def test_files_come_sorted_along_the_normal(tmp_path: Path) -> None:
    headers = _series(tmp_path / "s")
    choice = check_series("1", list(reversed(headers)))
    assert isinstance(choice, SeriesChoice)
    z = [float(dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in choice.paths]
    assert z == sorted(z)
    assert choice.slice_spacing_mm == pytest.approx(1.25)


def _edit(headers: list, **changes) -> list:  # noqa: ANN003
    for _, ds in headers:
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
    return headers


@pytest.mark.parametrize(
    "change,reason",
    [
        (lambda h: _edit(h, Modality="MR"), "modality MR is not CT"),
        (lambda h: _edit(h, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]), "localizer"),
        (lambda h: _edit(h, BodyPartExamined="HEAD"), "body part HEAD is not chest"),
        (lambda h: h[:10], "only 10 slices; at least 30 needed"),
        (lambda h: _edit(h, ImageOrientationPatient=[1, 0, 0, 0, 0, -1]), "not axial"),
        (lambda h: _edit(h, GantryDetectorTilt=15), "gantry tilt of 15.0 degrees"),
        (lambda h: h[:20] + h[22:], "missing slices: a gap of 3.75 mm"),
        (lambda h: h + h[:1], "two slices share one position"),
    ],
)
def test_rejections_say_why(tmp_path: Path, change, reason: str) -> None:  # noqa: ANN001
    outcome = check_series("1", change(_series(tmp_path / "s")))
    assert isinstance(outcome, Rejection)
    assert reason in outcome.reason


def test_thick_slices_are_rejected(tmp_path: Path) -> None:
    outcome = check_series("1", _series(tmp_path / "s", spacing=5.0))
    assert isinstance(outcome, Rejection) and outcome.reason == "slice spacing 5.00 mm > 3.0 mm"
