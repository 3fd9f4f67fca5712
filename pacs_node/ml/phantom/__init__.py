"""Synthetic chest CT studies with planted lung nodules and their ground truth.

:func:`generate_phantom` builds one study from one integer seed (:mod:`.generate`);
the study and its truth are :class:`Phantom` and :class:`PlantedNodule`
(:mod:`.truth`); :mod:`.output` writes studies to disk as DICOM series or in the
LUNA16 layout.  :func:`generate_followup` (:mod:`.followup`) makes a series of
studies of one patient over time, re-positioned as :class:`Reposition` says.  Modules starting with an underscore are the generator's stages.
"""

from pacs_node.ml.phantom.followup import FollowUp, Lesion, LesionState, TimePoint, generate_followup
from pacs_node.ml.phantom.generate import generate_phantom
from pacs_node.ml.phantom.output import (
    WrittenStudy,
    default_identity,
    generate_followups,
    generate_studies,
    study_seed,
    truth_dict,
    write_dicom_study,
    write_followup,
    write_luna16,
)
from pacs_node.ml.phantom.reposition import Reposition
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
    "FollowUp",
    "HU_MAX",
    "HU_MIN",
    "LOCATIONS",
    "Lesion",
    "LesionState",
    "Location",
    "MARGINS",
    "Margin",
    "NODULE_TYPES",
    "NoduleType",
    "Phantom",
    "PlantedNodule",
    "Reposition",
    "TimePoint",
    "Tissue",
    "WrittenStudy",
    "default_identity",
    "generate_followup",
    "generate_followups",
    "generate_phantom",
    "generate_studies",
    "study_seed",
    "truth_dict",
    "write_dicom_study",
    "write_followup",
    "write_luna16",
]
