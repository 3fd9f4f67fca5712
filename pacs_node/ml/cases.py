"""Training cases: studies with annotated nodules, and where their volumes come from.

Sources (:func:`list_cases`)
----------------------------
``luna16``
    A LUNA16-style folder: ``*.mhd`` volumes anywhere below it (``subset0/`` ...),
    ``annotations.csv`` (world LPS mm), optionally ``annotations_types.csv`` (adds
    the nodule type) and ``annotations_excluded.csv`` (findings that are neither
    nodules nor negatives: no negative is taken within their radius).
``dicom``
    Study folders as ``pacs-node phantom`` writes them: ``<study>/series/*.dcm``
    plus ``<study>/truth.json``.
``phantom``
    Synthetic studies generated on the fly from seeds (:class:`PhantomSet`); nothing
    but the patch cache is written.

:func:`load_case_volume` reads (or generates) one case's HU volume and its nodules.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import highdicom as hd
import numpy as np

from pacs_node.imaging.luna16 import read_luna16_annotations
from pacs_node.ml.network import TYPE_NAMES
from pacs_node.ml.phantom.variation import Variation

DATA_FORMATS = ("luna16", "dicom", "phantom")


@dataclass(frozen=True)
class Nodule:
    """One annotated nodule (world LPS mm); ``type`` is ``None`` when unknown."""

    centre_lps_mm: tuple[float, float, float]
    diameter_mm: float
    type: str | None = None

    def __post_init__(self) -> None:
        if not self.diameter_mm > 0:
            raise ValueError(f"diameter_mm must be positive, got {self.diameter_mm}")
        if self.type is not None and self.type not in TYPE_NAMES:
            raise ValueError(f"type must be one of {TYPE_NAMES} or None, got {self.type!r}")


@dataclass(frozen=True)
class PhantomSet:
    """Synthetic training studies: study ``i`` is generated from ``study_seed(seed, i)``.

    Attributes
    ----------
    count
        Number of studies.
    seed
        Seed of the set (see :func:`pacs_node.ml.phantom.study_seed`).
    nodules
        Range (inclusive) of nodules planted per study.
    balanced_fraction
        Fraction of studies whose nodule types cycle through all four types (the rest
        draw types as the generator does, mostly solid).
    varied_fraction
        Fraction of studies with a random matrix (fewer slices, 384 x 384 or 512 x 512,
        partial coverage of the chest) instead of the default geometry.
    shape_zyx, spacing_zyx_mm
        Fixed geometry for every study (small, fast sets for tests); ``None``: as above.
    diameter_range_mm
        Range of nodule diameters (mm).
    variation
        Which generator families are drawn from their wide ranges, and the rendering
        styles (:class:`~pacs_node.ml.phantom.variation.Variation`); default classic,
        the generator the v1 model was trained on.
    """

    count: int
    seed: int
    nodules: tuple[int, int] = (3, 6)
    balanced_fraction: float = 0.5
    varied_fraction: float = 0.2
    shape_zyx: tuple[int, int, int] | None = None
    spacing_zyx_mm: tuple[float, float, float] | None = None
    diameter_range_mm: tuple[float, float] = (3.0, 30.0)
    variation: Variation = field(default_factory=Variation.classic)

    def __post_init__(self) -> None:
        if not isinstance(self.variation, Variation):
            raise TypeError(f"variation must be a Variation, got {type(self.variation).__name__}")

    def to_dict(self) -> dict[str, object]:
        """JSON-able description (for the model card and the cache fingerprint)."""
        d = asdict(self)
        d["variation"] = self.variation.to_dict()
        return d

    def generation_dict(self) -> dict[str, object]:
        """What shapes each generated study (everything but ``count``)."""
        d = self.to_dict()
        del d["count"]
        return d


@dataclass(frozen=True)
class Case:
    """One training study: where its volume comes from and its annotations.

    ``source`` is ``("mhd", path)``, ``("dicom", series folder)`` or
    ``("phantom", seed, PhantomSet)``.
    """

    case_id: str
    source: tuple
    nodules: tuple[Nodule, ...]
    excluded: tuple[Nodule, ...] = ()


def _luna_nodules(rows: Sequence) -> dict[str, list[Nodule]]:
    out: dict[str, list[Nodule]] = {}
    for a in rows:
        t = a.type if a.type in TYPE_NAMES else None
        out.setdefault(a.seriesuid, []).append(Nodule(a.centre_xyz_mm, a.diameter_mm, t))
    return out


def list_cases(data_dir: Path, fmt: str, phantoms: PhantomSet | None = None) -> list[Case]:
    """The cases of a data folder (``luna16``/``dicom``) or of a phantom set (``phantom``).

    Raises
    ------
    ValueError
        If the format is unknown, the folder holds no case or an annotation file is bad.
    """
    if fmt not in DATA_FORMATS:
        raise ValueError(f"fmt must be one of {DATA_FORMATS}, got {fmt!r}")
    data_dir = Path(data_dir)
    if fmt == "phantom":
        if phantoms is None or phantoms.count < 1:
            raise ValueError("fmt 'phantom' needs a PhantomSet with count >= 1")
        from pacs_node.ml.phantom import study_seed

        return [Case(f"phantom-{study_seed(phantoms.seed, i)}", ("phantom", study_seed(phantoms.seed, i), phantoms), ())
                for i in range(phantoms.count)]
    if not data_dir.is_dir():
        raise ValueError(f"data folder {data_dir} does not exist")
    cases: list[Case] = []
    if fmt == "luna16":
        ann = data_dir / "annotations.csv"
        if not ann.is_file():
            raise ValueError(f"{data_dir} has no annotations.csv (LUNA16 layout expected)")
        typed = data_dir / "annotations_types.csv"
        nodules = _luna_nodules(read_luna16_annotations(typed if typed.is_file() else ann))
        excl_path = data_dir / "annotations_excluded.csv"
        excluded = _luna_nodules(read_luna16_annotations(excl_path)) if excl_path.is_file() else {}
        for mhd in sorted(data_dir.rglob("*.mhd")):
            uid = mhd.stem
            cases.append(Case(uid, ("mhd", str(mhd)), tuple(nodules.get(uid, ())), tuple(excluded.get(uid, ()))))
    else:
        for truth in sorted(data_dir.rglob("truth.json")):
            series = truth.parent / "series"
            if not series.is_dir():
                continue
            d = json.loads(truth.read_text())
            nods = tuple(
                Nodule(tuple(float(v) for v in n["centre_xyz_mm"]), float(n["diameter_mm"]),  # type: ignore[arg-type]
                       n.get("type") if n.get("type") in TYPE_NAMES else None)
                for n in d.get("nodules", [])
            )
            cases.append(Case(str(d.get("series_uid") or truth.parent.name), ("dicom", str(series)), nods))
    if not cases:
        raise ValueError(f"no {fmt} studies found under {data_dir}")
    return cases


def _phantom_volume(seed: int, ps: PhantomSet) -> tuple[hd.Volume, tuple[Nodule, ...]]:
    from pacs_node.ml import phantom as ph

    rng = np.random.default_rng([seed, 17])
    n = int(rng.integers(ps.nodules[0], ps.nodules[1] + 1))
    types = list(rng.permutation(ph.NODULE_TYPES)) if rng.random() < ps.balanced_fraction else None
    shape = ps.shape_zyx
    if shape is None and rng.random() < ps.varied_fraction:
        side = int(rng.choice([384, 512]))
        shape = (int(rng.integers(60, 220)), side, side)
    p = ph.generate_phantom(seed, shape_zyx=shape, spacing_zyx_mm=ps.spacing_zyx_mm, n_nodules=n, nodule_types=types,
                            diameter_range_mm=ps.diameter_range_mm, keep_labels=False, variation=ps.variation)
    return phantom_volume(p), tuple(Nodule(n.centre_xyz_mm, n.diameter_mm, str(n.type)) for n in p.nodules)


def phantom_volume(phantom: object) -> hd.Volume:
    """A :class:`highdicom.Volume` (``float32`` HU, LPS affine) of a :class:`~pacs_node.ml.phantom.Phantom`."""
    dz, dy, dx = phantom.spacing_zyx_mm  # type: ignore[attr-defined]
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    affine[0, 2], affine[1, 1], affine[2, 0] = dx, dy, dz  # index [z, y, x] -> LPS (x, y, z)
    affine[:3, 3] = phantom.origin_xyz_mm  # type: ignore[attr-defined]
    return hd.Volume(phantom.volume_hu.astype(np.float32), affine, coordinate_system="PATIENT")  # type: ignore[attr-defined]


def load_case_volume(case: Case) -> tuple[hd.Volume, tuple[Nodule, ...]]:
    """The case's HU volume and its nodules."""
    kind = case.source[0]
    if kind == "phantom":
        return _phantom_volume(int(case.source[1]), case.source[2])
    if kind == "mhd":
        from pacs_node.imaging.volume import read_mhd_volume

        return read_mhd_volume(Path(case.source[1])), case.nodules
    from pacs_node.imaging.volume import read_dicom_volume

    return read_dicom_volume(sorted(Path(case.source[1]).glob("*.dcm"))), case.nodules
