"""The LUNA16 file formats: MetaImage volumes and nodule annotation tables.

As the LUNA16 challenge ships its data: ``subset0/<seriesuid>.mhd`` (MetaImage
header) + ``.raw`` (int16 HU, x fastest, then y, then z), and ``annotations.csv``
(``seriesuid,coordX,coordY,coordZ,diameter_mm`` in world mm).  Our side file
``annotations_types.csv`` holds the same rows plus ``type,margin,location``.

World coordinates are patient LPS mm; the MetaImage ``Offset`` is the centre of voxel
``[0, 0, 0]`` and the direction is identity, as in LUNA16.  Nothing here depends on
the phantom, so real LUNA16 data reads the same way.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LUNA16_SUBSET = "subset0"
ANNOTATIONS_FILE = "annotations.csv"
ANNOTATION_TYPES_FILE = "annotations_types.csv"
ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
ANNOTATION_TYPE_COLUMNS = (*ANNOTATION_COLUMNS, "type", "margin", "location")


@dataclass(frozen=True)
class Luna16Annotation:
    """One row of a LUNA16 ``annotations.csv`` (world LPS mm).

    ``type``, ``margin`` and ``location`` are set when read from
    ``annotations_types.csv`` and ``None`` otherwise.
    """

    seriesuid: str
    centre_xyz_mm: tuple[float, float, float]
    diameter_mm: float
    type: str | None = None
    margin: str | None = None
    location: str | None = None


@dataclass(frozen=True, eq=False)
class MetaImage:
    """A volume read from a MetaImage (``.mhd`` + ``.raw``) file.

    Attributes
    ----------
    volume
        Voxel values indexed ``[z, y, x]`` (HU for LUNA16).
    spacing_zyx_mm
        Slice, row and column spacing (mm).
    origin_xyz_mm
        World position (mm) of the centre of voxel ``[0, 0, 0]`` (the ``Offset``).
    direction
        The ``TransformMatrix`` as a 3 x 3 array, in the order written (identity in
        LUNA16; callers that meet anything else should refuse or reorient).
    """

    volume: np.ndarray
    spacing_zyx_mm: tuple[float, float, float]
    origin_xyz_mm: tuple[float, float, float]
    direction: np.ndarray


def _num(v: float) -> str:
    """Shortest text that reads back as the same float."""
    return repr(float(v))


def write_mhd(volume: np.ndarray, spacing_zyx_mm: tuple[float, float, float],
              origin_xyz_mm: tuple[float, float, float], mhd_path: Path) -> Path:
    """Write an ``int16`` ``[z, y, x]`` volume as MetaImage ``.mhd`` + ``.raw`` (LUNA16 style).

    Returns the ``.mhd`` path.
    """
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3D [z, y, x], got shape {volume.shape}")
    mhd_path = Path(mhd_path)
    raw_path = mhd_path.with_suffix(".raw")
    nz, ny, nx = volume.shape
    dz, dy, dx = spacing_zyx_mm
    ox, oy, oz = origin_xyz_mm
    header = (
        "ObjectType = Image\n"
        "NDims = 3\n"
        "BinaryData = True\n"
        "BinaryDataByteOrderMSB = False\n"
        "CompressedData = False\n"
        "TransformMatrix = 1 0 0 0 1 0 0 0 1\n"
        f"Offset = {_num(ox)} {_num(oy)} {_num(oz)}\n"
        "CenterOfRotation = 0 0 0\n"
        "AnatomicalOrientation = RAI\n"
        f"ElementSpacing = {_num(dx)} {_num(dy)} {_num(dz)}\n"
        f"DimSize = {nx} {ny} {nz}\n"
        "ElementType = MET_SHORT\n"
        f"ElementDataFile = {raw_path.name}\n"
    )
    mhd_path.parent.mkdir(parents=True, exist_ok=True)
    np.ascontiguousarray(volume, dtype="<i2").tofile(raw_path)
    mhd_path.write_text(header)
    return mhd_path


_MET_TYPES = {
    "MET_SHORT": "i2", "MET_USHORT": "u2", "MET_CHAR": "i1", "MET_UCHAR": "u1",
    "MET_INT": "i4", "MET_UINT": "u4", "MET_FLOAT": "f4", "MET_DOUBLE": "f8",
}


def read_mhd(mhd_path: Path) -> MetaImage:
    """Read an uncompressed 3D MetaImage (as LUNA16 ships it) into a ``[z, y, x]`` array.

    Raises
    ------
    ValueError
        If the header is not a 3D, uncompressed, single-file MetaImage.
    """
    mhd_path = Path(mhd_path)
    fields: dict[str, str] = {}
    for line in mhd_path.read_text().splitlines():
        if "=" in line:
            key, _, value = line.partition("=")
            fields[key.strip()] = value.strip()
    if fields.get("NDims") != "3":
        raise ValueError(f"{mhd_path}: NDims must be 3, got {fields.get('NDims')!r}")
    if fields.get("CompressedData", "False").lower() == "true":
        raise ValueError(f"{mhd_path}: compressed MetaImage is not supported")
    etype = fields.get("ElementType", "")
    if etype not in _MET_TYPES:
        raise ValueError(f"{mhd_path}: unsupported ElementType {etype!r}")
    msb = fields.get("BinaryDataByteOrderMSB", fields.get("ElementByteOrderMSB", "False")).lower() == "true"
    dtype = np.dtype(_MET_TYPES[etype]).newbyteorder(">" if msb else "<")
    nx, ny, nz = (int(v) for v in fields["DimSize"].split())
    sx, sy, sz = (float(v) for v in fields["ElementSpacing"].split())
    origin = fields.get("Offset", fields.get("Origin", fields.get("Position", "0 0 0")))
    ox, oy, oz = (float(v) for v in origin.split())
    tm = np.array([float(v) for v in fields.get("TransformMatrix", "1 0 0 0 1 0 0 0 1").split()]).reshape(3, 3)
    data_file = fields.get("ElementDataFile", "")
    if data_file in ("", "LOCAL", "LIST"):
        raise ValueError(f"{mhd_path}: ElementDataFile {data_file!r} is not supported")
    raw = np.fromfile(mhd_path.parent / data_file, dtype=dtype)
    if raw.size != nx * ny * nz:
        raise ValueError(f"{mhd_path}: {raw.size} voxels in {data_file}, header says {nx}x{ny}x{nz}")
    return MetaImage(raw.reshape(nz, ny, nx).astype(dtype.newbyteorder("=")), (sz, sy, sx), (ox, oy, oz), tm)


def write_luna16_annotations(annotations: Iterable[Luna16Annotation], out_dir: Path) -> tuple[Path, Path]:
    """Write ``annotations.csv`` and the ``annotations_types.csv`` side file.

    Parameters
    ----------
    annotations
        The rows, in order; a series without nodules has no row, as in LUNA16.
    out_dir
        Folder the two files are (re)written in.

    Returns
    -------
    tuple[Path, Path]
        The ``annotations.csv`` and ``annotations_types.csv`` paths.
    """
    out_dir = Path(out_dir)
    rows = []
    for a in annotations:
        x, y, z = a.centre_xyz_mm
        rows.append([a.seriesuid, _num(x), _num(y), _num(z), _num(a.diameter_mm), a.type, a.margin, a.location])
    plain, typed = out_dir / ANNOTATIONS_FILE, out_dir / ANNOTATION_TYPES_FILE
    with open(plain, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(ANNOTATION_COLUMNS)
        w.writerows(r[:5] for r in rows)
    with open(typed, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(ANNOTATION_TYPE_COLUMNS)
        w.writerows(rows)
    return plain, typed


def read_luna16_annotations(path: Path) -> list[Luna16Annotation]:
    """Read LUNA16 ``annotations.csv`` (or our ``annotations_types.csv``).

    Raises
    ------
    ValueError
        If a required column is missing or a value does not parse.
    """
    path = Path(path)
    out = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ANNOTATION_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
        for lineno, row in enumerate(reader, start=2):
            try:
                centre = (float(row["coordX"]), float(row["coordY"]), float(row["coordZ"]))
                diameter = float(row["diameter_mm"])
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: {exc}") from exc
            out.append(
                Luna16Annotation(
                    seriesuid=row["seriesuid"],
                    centre_xyz_mm=centre,
                    diameter_mm=diameter,
                    type=row.get("type") or None,
                    margin=row.get("margin") or None,
                    location=row.get("location") or None,
                )
            )
    return out
