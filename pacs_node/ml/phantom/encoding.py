"""How other scanners store CT pixels: signedness, rescale, and padding outside the reconstruction circle.

:func:`encode_series` turns a HU :class:`highdicom.Volume` (any orientation) into the
datasets of one CT series as a given :class:`PixelEncoding` and :class:`Padding`
would store it; :func:`reread` round-trips them through bytes, as a receiver sees
them.  The series' other attributes (patient, UIDs, ...) come from
:func:`pacs_node.ml.ct_series.write_ct_series`, so only what this module is about
differs from our own writer.

Stored value and HU: ``HU = stored * RescaleSlope + RescaleIntercept``.  Conventions
met in practice (see the presets): unsigned with intercept -1024 (most scanners),
signed with intercept -1024 and padding -2000 stored (-3024 HU, GE), signed with
intercept 0, and the GE variant that writes padding ``63536`` (-2000 as a 16-bit
pattern) into an *unsigned* image, which reads as +62512 HU unless the Pixel Padding
Value is honoured.
"""

from __future__ import annotations

import copy
import io
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from pacs_node.ml.ct_series import SeriesIdentity, write_ct_series


@dataclass(frozen=True)
class PixelEncoding:
    """Stored pixel values: 16 bits, signed or not, with a rescale slope and intercept.

    Attributes
    ----------
    signed
        Pixel Representation 1 (two's complement) or 0 (unsigned).
    intercept
        Rescale Intercept (HU).
    slope
        Rescale Slope (HU per stored unit), positive.
    """

    signed: bool = False
    intercept: float = -1024.0
    slope: float = 1.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.slope) and self.slope > 0):
            raise ValueError(f"slope must be a positive number, got {self.slope!r}")
        if not np.isfinite(self.intercept):
            raise ValueError(f"intercept must be finite, got {self.intercept!r}")

    @property
    def dtype(self) -> np.dtype:
        """``int16`` or ``uint16`` (little endian)."""
        return np.dtype("<i2" if self.signed else "<u2")

    def encode(self, hu: np.ndarray) -> np.ndarray:
        """Stored values of HU (rounded, clipped to what 16 bits hold, as a scanner would)."""
        info = np.iinfo(self.dtype)
        stored = np.rint((np.asarray(hu, dtype=np.float64) - self.intercept) / self.slope)
        return np.clip(stored, info.min, info.max).astype(self.dtype)

    def decode(self, stored: np.ndarray) -> np.ndarray:
        """HU of stored values."""
        return np.asarray(stored, dtype=np.float64) * self.slope + self.intercept


#: Most scanners (and our writer): unsigned, HU = stored - 1024.
UNSIGNED_1024 = PixelEncoding(signed=False, intercept=-1024.0)
#: GE: signed, HU = stored - 1024 (padding -2000 stored, -3024 HU).
SIGNED_1024 = PixelEncoding(signed=True, intercept=-1024.0)
#: Signed values that are HU already.
SIGNED_HU = PixelEncoding(signed=True, intercept=0.0)


@dataclass(frozen=True)
class Padding:
    """Stored values outside the reconstruction circle, and whether the header says so.

    Attributes
    ----------
    stored
        Stored value written outside the circle: Pixel Padding Value (0028,0120) when
        tagged.
    range_limit
        If set, padding pixels take stored values between ``stored`` and this one
        (inclusive, drawn at random) and the header carries Pixel Padding Range Limit
        (0028,0121).
    tagged
        Write the padding attributes.  Without them a reader cannot tell padding
        from image.
    radius_fraction
        Radius of the circle as a fraction of half the smaller image side.
    """

    stored: int
    range_limit: int | None = None
    tagged: bool = True
    radius_fraction: float = 1.0

    def __post_init__(self) -> None:
        if not 0.1 <= self.radius_fraction <= 1.5:
            raise ValueError(f"radius_fraction must be in [0.1, 1.5], got {self.radius_fraction}")

    def outside(self, rows: int, columns: int) -> np.ndarray:
        """Boolean ``rows x columns`` mask of the pixels outside the circle."""
        yy, xx = np.ogrid[:rows, :columns]
        r = self.radius_fraction * 0.5 * min(rows, columns)
        return (yy - (rows - 1) / 2) ** 2 + (xx - (columns - 1) / 2) ** 2 > r * r


def _template(volume: hd.Volume, identity: SeriesIdentity | None) -> Dataset:
    """One slice written by our own writer, read back: the attributes every slice shares."""
    _, rows, columns = volume.spatial_shape
    with tempfile.TemporaryDirectory() as tmp:
        path = write_ct_series(np.zeros((1, rows, columns), dtype=np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                               Path(tmp), identity)[0]
        return dcmread(path)


def encode_series(
    volume: hd.Volume,
    encoding: PixelEncoding = UNSIGNED_1024,
    padding: Padding | None = None,
    *,
    identity: SeriesIdentity | None = None,
    reverse_instances: bool = False,
    rng: np.random.Generator | None = None,
) -> list[Dataset]:
    """The datasets of a CT series holding ``volume`` (HU), one per slice.

    Parameters
    ----------
    volume
        HU indexed ``[slice, row, column]``; rows and columns become the image's,
        the affine gives Image Orientation and Position (Patient) and Pixel Spacing.
    encoding
        Signedness, slope and intercept of the stored values.
    padding
        Stored values outside the reconstruction circle (replacing the image there).
    identity
        Patient and UIDs (fresh ones when omitted).
    reverse_instances
        Number instances from the last slice to the first (feet-first scanners do).
    rng
        For the padding values of a range (:attr:`Padding.range_limit`).

    Returns
    -------
    list[pydicom.Dataset]
        One dataset per slice, with file meta information, in slice order.
    """
    affine = np.asarray(volume.affine, dtype=float)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    row_dir, col_dir = affine[:3, 2] / spacing[2], affine[:3, 1] / spacing[1]  # along a row, down a column
    base = _template(volume, identity)
    base.PixelRepresentation = 1 if encoding.signed else 0
    base.RescaleIntercept = f"{encoding.intercept:g}"
    base.RescaleSlope = f"{encoding.slope:g}"
    base.ImageOrientationPatient = [round(float(v), 6) + 0.0 for v in (*row_dir, *col_dir)]  # no -0
    base.PixelSpacing = [round(float(spacing[1]), 6), round(float(spacing[2]), 6)]
    base.SliceThickness = base.SpacingBetweenSlices = round(float(spacing[0]), 6)
    arr = np.asarray(volume.array)
    nz, rows, columns = arr.shape
    outside = padding.outside(rows, columns) if padding is not None else None
    if padding is not None and padding.tagged:
        vr = "SS" if encoding.signed else "US"  # the VR follows Pixel Representation
        base.add_new(0x00280120, vr, int(padding.stored))  # Pixel Padding Value
        if padding.range_limit is not None:
            base.add_new(0x00280121, vr, int(padding.range_limit))  # Pixel Padding Range Limit
    rng = rng or np.random.default_rng(0)
    datasets = []
    for k in range(nz):
        ds = copy.deepcopy(base)  # a shallow copy would share the elements of every slice
        sop_uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = (nz - k) if reverse_instances else (k + 1)
        position = affine @ np.array([k, 0.0, 0.0, 1.0])
        ds.ImagePositionPatient = [round(float(v), 4) for v in position[:3]]
        ds.SliceLocation = round(float(position[2]), 4)
        stored = encoding.encode(arr[k])
        if padding is not None and outside is not None:
            if padding.range_limit is None:
                stored[outside] = np.array(padding.stored).astype(encoding.dtype)
            else:
                lo, hi = sorted((int(padding.stored), int(padding.range_limit)))
                stored[outside] = rng.integers(lo, hi + 1, int(outside.sum())).astype(encoding.dtype)
        ds.PixelData = stored.tobytes()
        datasets.append(ds)
    return datasets


def reread(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Each dataset written to bytes and read back (what a receiver gets), in the same order."""
    out = []
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        buffer.seek(0)
        out.append(dcmread(buffer))
    return out


def write_series(datasets: Sequence[Dataset], out_dir: Path) -> list[Path]:
    """Write datasets as ``CT000001.dcm`` ... into ``out_dir`` (created)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        path = out_dir / f"CT{i + 1:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
