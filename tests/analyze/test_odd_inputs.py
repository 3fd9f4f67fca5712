"""Odd real-world DICOM files (pydicom's test data) through the series gate and the volume builder.

Every file either builds a volume or is rejected with a reason; none may raise anything
else.  Only files already on disk are used: pydicom's ``get_testdata_files()`` would also
download every file of its URL map that is not cached yet, so the files are listed here
from pydicom's own test folder and from the installed ``pydicom-data`` package.
"""

from __future__ import annotations

import copy
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.data.data_manager import DATA_ROOT, DataTypes, external_data_sources

from pacs_node.analyze.series import Rejection, SeriesChoice, check_series
from pacs_node.imaging.volume import NotAnalysable, volume_from_datasets

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")


def _files(source: str) -> list[Path]:
    """The data set files of ``source`` that are on this machine (no download)."""
    if source == "pydicom":
        return sorted(p for p in (Path(DATA_ROOT) / "test_files").rglob("*") if p.is_file())
    store = external_data_sources().get("pydicom-data")
    if store is None:
        pytest.skip("pydicom-data is not installed (pip install pydicom-data, or the project's test extra)")
    return sorted(Path(p) for p in store.get_paths("**/*", DataTypes.DATASET))


def _twin(ds: Dataset) -> Dataset:
    """A copy of ``ds`` one slice (2 mm) further along its normal: a two-slice series of one file."""
    twin = copy.deepcopy(ds)
    try:
        orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
        position = np.array([float(v) for v in ds.ImagePositionPatient])
        twin.ImagePositionPatient = [float(v) for v in position + 2.0 * np.cross(orientation[:3], orientation[3:])]
    except (AttributeError, TypeError, ValueError):
        pass  # no usable geometry: the twin lies on the original, and that has to be rejected
    return twin


def _outcomes(paths: list[Path], datasets: list[Dataset]) -> tuple[str, str]:
    """(gate outcome, volume outcome) of one series; raises if either raises anything unexpected."""
    gate = check_series("1.2.3", list(zip(paths, datasets, strict=True)), min_slices=2)
    if isinstance(gate, Rejection):
        assert gate.reason, "a rejection without a reason"
        gate_outcome = "rejected"
    else:
        assert isinstance(gate, SeriesChoice) and gate.slice_spacing_mm > 0
        gate_outcome = "passed"
    try:
        volume = volume_from_datasets(datasets)
    except NotAnalysable as exc:
        assert str(exc), "NotAnalysable without a reason"
        return gate_outcome, "not analysable"
    assert np.isfinite(volume.array).all() and np.isfinite(volume.affine).all()
    assert volume.spatial_shape[0] == len(datasets)
    return gate_outcome, "volume"


@pytest.mark.parametrize("source", ["pydicom", "pydicom-data"])
def test_every_odd_file_builds_or_is_rejected_with_a_reason(source: str) -> None:
    files = _files(source)
    assert files, f"no {source} test files found"
    counts: Counter[str] = Counter()
    crashes: list[str] = []
    series: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for path in files:
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception:  # noqa: BLE001 - not a data set pydicom reads: the receiver would refuse it (C000)
            counts["unreadable"] += 1
            continue
        try:
            gate, volume = _outcomes([path, path.with_suffix(".twin")], [ds, _twin(ds)])
        except Exception as exc:  # noqa: BLE001 - collected, so one run names every offending file
            crashes.append(f"{path.name} ({ds.get('Modality', '?')}): {type(exc).__name__}: {str(exc)[:120]}")
            continue
        counts[f"gate {gate}"] += 1
        counts[volume] += 1
        if "SeriesInstanceUID" in ds and "PixelData" in ds:
            series[str(ds.SeriesInstanceUID)].append((path, ds))
    for uid, members in series.items():  # the real series among the files, as the node would get them
        if len(members) < 2:
            continue
        try:
            _outcomes([p for p, _ in members], [ds for _, ds in members])
            counts["series"] += 1
        except Exception as exc:  # noqa: BLE001
            crashes.append(f"series {uid[-12:]} of {len(members)} files: {type(exc).__name__}: {str(exc)[:120]}")
    assert crashes == [], "\n".join(crashes)
    assert counts["volume"] and counts["not analysable"] and counts["gate rejected"], counts
