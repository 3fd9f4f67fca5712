"""Report tests: a small CT series with bright spheres as nodules, and dciodvfy.

The series is 30 slices of 64 x 64 pixels with anisotropic pixels (rows 0.8 mm apart,
columns 0.6 mm), so a row/column mix-up in geometry code moves a circle off its nodule.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pacs_node.imaging.findings import Finding, NoduleType
from pacs_node.ml.ct_series import write_ct_series

SPACING_ZYX_MM = (1.25, 0.8, 0.6)
ORIGIN_XYZ_MM = (-20.0, -30.0, -100.0)
SHAPE_ZYX = (30, 64, 64)
LUNG_HU = -850.0
NODULE_HU = 40.0


@dataclass(frozen=True)
class Blob:
    """A sphere in the test volume: continuous voxel centre ``[z, y, x]`` and radius (mm)."""

    index_zyx: tuple[float, float, float]
    radius_mm: float

    @property
    def center_lps_mm(self) -> tuple[float, float, float]:
        k, r, c = self.index_zyx
        dz, dy, dx = SPACING_ZYX_MM
        x0, y0, z0 = ORIGIN_XYZ_MM
        return (x0 + c * dx, y0 + r * dy, z0 + k * dz)


#: Nodule 1 sits 0.3 slice above slice 15; nodule 2 exactly on slice 8.
BLOBS = (Blob((15.3, 20.0, 40.0), 3.0), Blob((8.0, 34.0, 18.0), 4.0))


def write_series(out_dir: Path) -> list[Path]:
    """Write the test series (lung background, one sphere per :data:`BLOBS`)."""
    z, y, x = np.mgrid[: SHAPE_ZYX[0], : SHAPE_ZYX[1], : SHAPE_ZYX[2]].astype(float)
    dz, dy, dx = SPACING_ZYX_MM
    volume = np.full(SHAPE_ZYX, LUNG_HU)
    for blob in BLOBS:
        k, r, c = blob.index_zyx
        inside = ((z - k) * dz) ** 2 + ((y - r) * dy) ** 2 + ((x - c) * dx) ** 2 <= blob.radius_mm**2
        volume[inside] = NODULE_HU
    return write_ct_series(volume, SPACING_ZYX_MM, ORIGIN_XYZ_MM, out_dir)


def findings() -> list[Finding]:
    """Two findings on :data:`BLOBS`: a solid RUL nodule and a spiculated part-solid one."""
    return [
        Finding(
            center_lps_mm=BLOBS[0].center_lps_mm,
            long_axis_mm=6.34,
            short_axis_mm=5.12,
            volume_mm3=101.6,
            nodule_type=NoduleType.SOLID,
            score=0.8734,
            mean_hu=38.2,
            lobe="RUL",
        ),
        Finding(
            center_lps_mm=BLOBS[1].center_lps_mm,
            long_axis_mm=8.2,
            short_axis_mm=7.6,
            volume_mm3=262.0,
            nodule_type=NoduleType.PART_SOLID,
            score=0.41,
            mean_hu=-310.0,
            solid_core_mm=6.5,
            spiculated=True,
            lobe="left lower lobe",
        ),
    ]


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """Validate a DICOM file with dicom3tools' dciodvfy.

    Returns
    -------
    tuple[list[str], list[str]]
        Its error lines and its warning lines.
    """
    executable = shutil.which("dciodvfy")
    if executable is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    run = subprocess.run([executable, str(path)], capture_output=True, text=True, timeout=120)
    lines = (run.stdout + run.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    if run.returncode != 0 and not errors:
        errors.append(f"dciodvfy exited with {run.returncode}")
    return errors, warnings
