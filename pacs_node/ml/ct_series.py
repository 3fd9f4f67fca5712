"""Write a HU volume as a DICOM CT series (one file per axial slice).

Used by the phantom generator, the tests and the benchmarks.  Geometry is explicit:
the volume is indexed ``[z, y, x]``; slice ``k`` lies at ``origin + k * spacing_z``
along the patient's S axis, rows run along P (y) and columns along L (x) in LPS.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

#: Stored value = HU - RESCALE_INTERCEPT (unsigned 16-bit, as most scanners write CT).
RESCALE_INTERCEPT = -1024


@dataclass(frozen=True)
class SeriesIdentity:
    """Who and what a written series belongs to.  UIDs are generated when omitted."""

    patient_id: str = "PHANTOM-0001"
    patient_name: str = "Phantom^Synthetic"
    study_uid: str = field(default_factory=generate_uid)
    series_uid: str = field(default_factory=generate_uid)
    frame_of_reference_uid: str = field(default_factory=generate_uid)
    accession_number: str = ""
    study_description: str = "CT CHEST LOW DOSE (synthetic)"
    series_description: str = "Axial 1.25mm lung (synthetic)"
    series_number: int = 2
    study_date: str = "20260101"


def _base_dataset(identity: SeriesIdentity) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = identity.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "090000"
    ds.AccessionNumber = identity.accession_number
    ds.Modality = "CT"
    ds.Manufacturer = "pacs-node synthetic phantom"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = identity.study_description
    ds.SeriesDescription = identity.series_description
    ds.PatientName = identity.patient_name
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "CHEST"
    ds.KVP = "120"
    ds.AcquisitionNumber = 1
    ds.StudyInstanceUID = identity.study_uid
    ds.SeriesInstanceUID = identity.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = identity.series_number
    ds.FrameOfReferenceUID = identity.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "FFS"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = RESCALE_INTERCEPT
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = -600
    ds.WindowWidth = 1500
    ds.ConvolutionKernel = "STANDARD"
    return ds


def write_ct_series(
    volume_hu: np.ndarray,
    spacing_zyx_mm: tuple[float, float, float],
    origin_xyz_mm: tuple[float, float, float],
    out_dir: Path,
    identity: SeriesIdentity | None = None,
) -> list[Path]:
    """Write ``volume_hu`` (``[z, y, x]``, HU) as one CT file per slice.

    Parameters
    ----------
    volume_hu
        Voxel values in Hounsfield units; clipped to -1024..64511 when stored.
    spacing_zyx_mm
        Slice spacing, row spacing and column spacing in mm.
    origin_xyz_mm
        Patient position (LPS, mm) of voxel ``[0, 0, 0]``'s centre.
    out_dir
        Folder to write into (created); files are named ``CT000001.dcm`` ...
    identity
        Patient, study and series attributes; fresh UIDs when omitted.

    Returns
    -------
    list[Path]
        The written files, in slice order.
    """
    identity = identity or SeriesIdentity()
    out_dir.mkdir(parents=True, exist_ok=True)
    dz, dy, dx = (float(v) for v in spacing_zyx_mm)
    stored = np.clip(np.rint(volume_hu) - RESCALE_INTERCEPT, 0, 65535).astype("<u2")
    base = _base_dataset(identity)
    base.Rows, base.Columns = int(stored.shape[1]), int(stored.shape[2])
    base.PixelSpacing = [round(dy, 6), round(dx, 6)]
    base.SliceThickness = round(dz, 6)
    base.SpacingBetweenSlices = round(dz, 6)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d")
    paths = []
    for k in range(stored.shape[0]):
        ds = base.copy()
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        ds.SOPInstanceUID = sop_uid
        ds.InstanceCreationDate = now
        ds.InstanceNumber = k + 1
        z = origin_xyz_mm[2] + k * dz
        ds.ImagePositionPatient = [round(origin_xyz_mm[0], 4), round(origin_xyz_mm[1], 4), round(z, 4)]
        ds.SliceLocation = round(z, 4)
        ds.PixelData = stored[k].tobytes()
        path = out_dir / f"CT{k + 1:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
