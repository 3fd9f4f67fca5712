"""Write synthetic chest CT studies to disk, with their ground truth.

Two layouts:

``dicom``
    One folder per study: ``<study>/series/CT000001.dcm ...`` (one CT file per axial
    slice, written by :func:`pacs_node.ml.ct_series.write_ct_series`) and beside it
    ``<study>/truth.json`` (geometry, acquisition parameters and planted nodules in
    patient LPS mm).
``luna16``
    As the LUNA16 challenge ships its data (see :mod:`pacs_node.imaging.luna16`):
    ``subset0/<seriesuid>.mhd`` + ``.raw``, ``annotations.csv`` and, as a side file,
    ``annotations_types.csv``.  ``truth/<seriesuid>.json`` holds the full truth
    (solid core size, acquisition).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from pacs_node.imaging.luna16 import LUNA16_SUBSET, Luna16Annotation, write_luna16_annotations, write_mhd
from pacs_node.ml.ct_series import SeriesIdentity, write_ct_series
from pacs_node.ml.phantom.followup import FollowUp, generate_followup
from pacs_node.ml.phantom.generate import generate_phantom
from pacs_node.ml.phantom.truth import Phantom
from pacs_node.ml.phantom.variation import Variation

log = logging.getLogger(__name__)

TRUTH_FILE = "truth.json"
SERIES_DIR = "series"
TRUTH_FORMAT = "pacs-node-phantom/1"
FOLLOWUP_FILE = "followup.json"
FOLLOWUP_FORMAT = "pacs-node-phantom-followup/1"
#: study date of a follow-up's baseline (time point ``k`` is ``day`` days later)
BASELINE_DATE = datetime.date(2026, 1, 1)

StudyFormat = Literal["dicom", "luna16"]


@dataclass(frozen=True)
class WrittenStudy:
    """Where one DICOM study went."""

    study_dir: Path
    series_dir: Path
    truth_path: Path
    n_files: int


def study_seed(seed: int, index: int) -> int:
    """Seed of study ``index`` of a set generated from ``seed`` (independent streams)."""
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint32)[0])


def truth_dict(phantom: Phantom, identity: SeriesIdentity | None = None) -> dict[str, object]:
    """Ground truth of a study as a JSON-able dictionary (geometry in LPS mm)."""
    nodules = []
    for n in phantom.nodules:
        d = n.to_dict()
        d["centre_voxel_kji"] = [round(float(v), 3) for v in phantom.world_to_voxel(n.centre_xyz_mm)]
        nodules.append(d)
    return {
        "format": TRUTH_FORMAT,
        "seed": phantom.seed,
        "patient_id": identity.patient_id if identity else _patient_id(phantom),
        "study_uid": identity.study_uid if identity else phantom.study_uid,
        "series_uid": identity.series_uid if identity else phantom.series_uid,
        "frame_of_reference_uid": identity.frame_of_reference_uid if identity else phantom.frame_of_reference_uid,
        "coordinate_system": "LPS",
        "shape_zyx": list(phantom.shape_zyx),
        "spacing_zyx_mm": [float(v) for v in phantom.spacing_zyx_mm],
        "origin_xyz_mm": [float(v) for v in phantom.origin_xyz_mm],
        "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1],
        "acquisition": dict(phantom.acquisition),
        "nodules": nodules,
    }


def _patient_id(phantom: Phantom) -> str:
    return f"PHANTOM-{phantom.seed}"


def default_identity(phantom: Phantom) -> SeriesIdentity:
    """Patient, study and series attributes derived from the phantom's seed."""
    dz = phantom.spacing_zyx_mm[0]
    return SeriesIdentity(
        patient_id=_patient_id(phantom),
        patient_name=f"Phantom^{phantom.seed}",
        study_uid=phantom.study_uid,
        series_uid=phantom.series_uid,
        frame_of_reference_uid=phantom.frame_of_reference_uid,
        series_description=f"Axial {dz:g}mm (synthetic)",
    )


def write_dicom_study(phantom: Phantom, out_dir: Path, identity: SeriesIdentity | None = None) -> WrittenStudy:
    """Write a phantom as a DICOM CT series plus ``truth.json``.

    Parameters
    ----------
    phantom
        The study to write.
    out_dir
        Study folder (created): the series goes to ``out_dir/series/`` and the truth
        to ``out_dir/truth.json``, so that a DICOM sender pointed at ``series/`` only
        sees DICOM files.
    identity
        Patient and UIDs; by default derived from the phantom's seed (so the same
        seed writes the same patient, study and series UIDs).

    Returns
    -------
    WrittenStudy
        The folders and files written.
    """
    identity = identity or default_identity(phantom)
    out_dir = Path(out_dir)
    series_dir = out_dir / SERIES_DIR
    files = write_ct_series(phantom.volume_hu, phantom.spacing_zyx_mm, phantom.origin_xyz_mm, series_dir, identity)
    truth_path = out_dir / TRUTH_FILE
    truth_path.write_text(json.dumps(truth_dict(phantom, identity), indent=2) + "\n")
    return WrittenStudy(out_dir, series_dir, truth_path, len(files))


def write_luna16(phantoms: Iterable[Phantom], out_dir: Path, subset: str = LUNA16_SUBSET) -> list[Path]:
    """Write phantoms in the LUNA16 layout (see the module docstring).

    ``phantoms`` may be a generator: each study is written, then released.
    Annotation files are (re)written when all studies are done and list every nodule
    of these phantoms; a study without nodules has no row, as in LUNA16.

    Returns
    -------
    list[Path]
        The ``.mhd`` files written, in order.
    """
    out_dir = Path(out_dir)
    (out_dir / subset).mkdir(parents=True, exist_ok=True)
    (out_dir / "truth").mkdir(parents=True, exist_ok=True)
    annotations: list[Luna16Annotation] = []
    written: list[Path] = []
    for phantom in phantoms:
        uid = phantom.series_uid
        written.append(write_mhd(phantom.volume_hu, phantom.spacing_zyx_mm, phantom.origin_xyz_mm,
                                 out_dir / subset / f"{uid}.mhd"))
        (out_dir / "truth" / f"{uid}.json").write_text(json.dumps(truth_dict(phantom), indent=2) + "\n")
        for n in phantom.nodules:
            annotations.append(Luna16Annotation(uid, n.centre_xyz_mm, n.diameter_mm, n.type, n.margin, n.location))
    write_luna16_annotations(annotations, out_dir)
    return written


def generate_studies(
    out_dir: Path,
    studies: int,
    seed: int,
    fmt: StudyFormat = "dicom",
    *,
    shape_zyx: tuple[int, int, int] | None = None,
    spacing_zyx_mm: tuple[float, float, float] | None = None,
    variation: Variation | None = None,
) -> list[Path]:
    """Generate ``studies`` phantoms and write them in format ``fmt``.

    Study ``i`` is generated from :func:`study_seed` ``(seed, i)``, so a set can be
    extended or regenerated study by study.  ``dicom`` writes one folder per study
    (``study_0000``...); ``luna16`` writes the LUNA16 layout into ``out_dir``.
    ``variation``: the generator's wide families and styles (default
    :meth:`Variation.classic`, the v1 generator).

    Returns
    -------
    list[Path]
        The study folders (``dicom``) or ``.mhd`` files (``luna16``).
    """
    if fmt not in ("dicom", "luna16"):
        raise ValueError(f"fmt must be 'dicom' or 'luna16', got {fmt!r}")
    if studies < 0:
        raise ValueError(f"studies must be >= 0, got {studies}")
    out_dir = Path(out_dir)

    def phantoms() -> Iterable[tuple[int, Phantom]]:
        for i in range(studies):
            p = generate_phantom(study_seed(seed, i), shape_zyx=shape_zyx, spacing_zyx_mm=spacing_zyx_mm,
                                 variation=variation)
            log.info("event=phantom_generated index=%d seed=%d nodules=%d slices=%d",
                     i, p.seed, len(p.nodules), p.shape_zyx[0])
            yield i, p

    if fmt == "luna16":
        return write_luna16((p for _, p in phantoms()), out_dir)
    paths = []
    for i, p in phantoms():
        written = write_dicom_study(p, out_dir / f"study_{i:04d}")
        paths.append(written.study_dir)
    return paths


def write_followup(fu: FollowUp, out_dir: Path, baseline_date: datetime.date = BASELINE_DATE) -> Path:
    """Write a follow-up series: ``out_dir/t0/``, ``t1/`` ... (each as :func:`write_dicom_study`)
    and ``out_dir/followup.json`` tying them together.

    All studies have the patient of the seed (:func:`default_identity`) and their
    own study, series and frame-of-reference UIDs; StudyDate is ``baseline_date``
    plus the time point's day.  Each ``truth.json`` nodule gains its ``lesion_id``, and
    the file a ``followup`` entry (time point, day, lesions' truth, re-positioning).

    Returns
    -------
    Path
        The ``followup.json`` written.
    """
    out_dir = Path(out_dir)
    entries = []
    for tp in fu.timepoints:
        p = tp.phantom
        date = baseline_date + datetime.timedelta(days=round(tp.day))
        identity = dataclasses.replace(default_identity(p), study_date=date.strftime("%Y%m%d"),
                                       accession_number=f"FU{fu.seed % 10**8}T{tp.index}")
        written = write_dicom_study(p, out_dir / f"t{tp.index}", identity)
        present = [s for s in tp.lesions if s.diameter_mm is not None]
        lesions = [s.to_dict() for s in tp.lesions]
        entry: dict[str, object] = {
            "index": tp.index, "dir": f"t{tp.index}", "day": tp.day, "study_date": identity.study_date,
            "study_uid": identity.study_uid, "series_uid": identity.series_uid,
            "frame_of_reference_uid": identity.frame_of_reference_uid,
            "spacing_zyx_mm": [float(v) for v in p.spacing_zyx_mm],
            "slice_thickness_mm": p.acquisition.get("slice_thickness_mm"), "kernel": p.acquisition.get("kernel"),
            "from_baseline": tp.reposition.to_dict(), "lesions": lesions,
        }
        truth = json.loads(written.truth_path.read_text())
        for d, s in zip(truth["nodules"], present, strict=True):
            d["lesion_id"] = s.lesion_id
        truth["followup"] = {k: entry[k] for k in ("index", "day", "from_baseline", "lesions")}
        written.truth_path.write_text(json.dumps(truth, indent=2) + "\n")
        entries.append(entry)
    doc = {
        "format": FOLLOWUP_FORMAT, "seed": fu.seed, "patient_id": default_identity(fu.timepoints[0].phantom).patient_id,
        "coordinate_system": "LPS",
        "transform": "baseline point x is at R @ (D(x) - centre) + centre + shift: from_baseline.matrix_4x4 is the "
                     "rigid part, D the S-I stretch si_stretch between stretch_floor_z_mm and stretch_apex_z_mm "
                     "(baseline z; below the floor shifted with it, above the apex unchanged)",
        "lesions": [{"lesion_id": les.lesion_id, "course": les.course, "vdt_days": les.vdt_days,
                     "first_timepoint": les.first, "last_timepoint": les.last, "type": les.spec.type,
                     "margin": les.spec.margin} for les in fu.lesions],
        "timepoints": entries,
    }
    path = out_dir / FOLLOWUP_FILE
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def generate_followups(
    out_dir: Path,
    patients: int,
    seed: int,
    n_timepoints: int,
    *,
    interval_days: float | Sequence[float] = 365.0,
    shape_zyx: tuple[int, int, int] | None = None,
    spacing_zyx_mm: tuple[float, float, float] | None = None,
    variation: Variation | None = None,
) -> list[Path]:
    """Generate ``patients`` follow-up series of ``n_timepoints`` studies into
    ``out_dir/patient_0000/t0/`` ...; patient ``i`` from :func:`study_seed` ``(seed, i)``.

    Returns
    -------
    list[Path]
        The ``followup.json`` files.
    """
    if patients < 0:
        raise ValueError(f"patients must be >= 0, got {patients}")
    paths = []
    for i in range(patients):
        fu = generate_followup(study_seed(seed, i), n_timepoints, interval_days=interval_days, shape_zyx=shape_zyx,
                               spacing_zyx_mm=spacing_zyx_mm, variation=variation)
        log.info("event=followup_generated index=%d seed=%d timepoints=%d lesions=%d",
                 i, fu.seed, n_timepoints, len(fu.lesions))
        paths.append(write_followup(fu, Path(out_dir) / f"patient_{i:04d}"))
    return paths
