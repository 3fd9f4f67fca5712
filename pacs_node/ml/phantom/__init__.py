"""Synthetic chest CT studies with planted lung nodules and their ground truth.

:func:`generate_phantom` builds one study from one integer seed (:mod:`.generate`);
the study and its truth are :class:`Phantom` and :class:`PlantedNodule`
(:mod:`.truth`); :mod:`.output` writes studies to disk as DICOM series or in the
LUNA16 layout.  Modules starting with an underscore are the generator's stages.
"""

from pacs_node.ml.phantom.generate import generate_phantom
from pacs_node.ml.phantom.output import (
    WrittenStudy,
    default_identity,
    generate_studies,
    study_seed,
    truth_dict,
    write_dicom_study,
    write_luna16,
)
from pacs_node.ml.phantom.truth import (
    HU_MAX,
    HU_MIN,
    LOCATIONS,
    MARGINS,
    NODULE_TYPES,
    Location,
    Margin,
    NoduleType,
    Phantom,
    PlantedNodule,
    Tissue,
)

__all__ = [
    "HU_MAX",
    "HU_MIN",
    "LOCATIONS",
    "MARGINS",
    "NODULE_TYPES",
    "Location",
    "Margin",
    "NoduleType",
    "Phantom",
    "PlantedNodule",
    "Tissue",
    "WrittenStudy",
    "default_identity",
    "generate_phantom",
    "generate_studies",
    "study_seed",
    "truth_dict",
    "write_dicom_study",
    "write_luna16",
]
