"""Public types of the synthetic chest CT phantom: tissue labels, planted nodules, studies.

Coordinates
-----------
Volumes are indexed ``[z, y, x]``.  World coordinates are patient LPS in mm with an
identity direction: column index ``i`` runs along +x (patient left), row index ``j``
along +y (posterior), slice index ``k`` along +z (superior), and voxel ``[k, j, i]``
has its centre at ``origin_xyz_mm + (i * dx, j * dy, k * dz)``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np


NoduleType = Literal["solid", "part-solid", "ground-glass", "calcified"]
# the classic generator draws from the first three of each (with fixed probabilities);
# the later names come from the wide nodule family (see ``variation``)
Margin = Literal["smooth", "lobulated", "spiculated", "irregular"]
Location = Literal["free", "juxtapleural", "juxtavascular", "juxtamediastinal", "perifissural"]

NODULE_TYPES: tuple[str, ...] = get_args(NoduleType)
MARGINS: tuple[str, ...] = get_args(Margin)
LOCATIONS: tuple[str, ...] = get_args(Location)

#: Most CT writers store HU as uint16 with intercept -1024; values are clipped to this.
HU_MIN, HU_MAX = -1024, 3071


class Tissue(enum.IntEnum):
    """Labels of :attr:`Phantom.labels` (one per voxel, the class at the voxel centre)."""

    AIR = 0  #: outside the body
    SOFT = 1  #: fat, muscle, organs, blood, cartilage
    BONE = 2  #: ribs, spine, sternum, scapulae, clavicles
    LUNG = 3  #: lung parenchyma
    VESSEL = 4  #: pulmonary vessels inside the lungs
    AIRWAY = 5  #: trachea and bronchi (lumen and wall)
    NODULE = 6  #: planted nodules (including spicules)
    TABLE = 7  #: patient table and mattress


@dataclass(frozen=True)
class PlantedNodule:
    """Ground truth of one planted nodule.

    Attributes
    ----------
    centre_xyz_mm
        Centre in patient LPS coordinates (mm).
    diameter_mm
        Diameter of the volume-equivalent sphere of the nodule body (mm), spicules
        excluded; 3 to 30 mm.
    type
        ``"solid"``, ``"part-solid"``, ``"ground-glass"`` or ``"calcified"``.
    margin
        ``"smooth"``, ``"lobulated"``, ``"spiculated"`` or ``"irregular"`` (a low-order,
        bumpy deformation of the outline).
    location
        ``"free"`` (surrounded by lung), ``"juxtapleural"`` (touching the costal or
        diaphragmatic pleura; classic studies also count the mediastinal pleura here),
        ``"juxtavascular"`` (touching a vessel), ``"juxtamediastinal"`` (abutting the
        mediastinum or the heart border) or ``"perifissural"`` (flattened along a
        fissure, lentiform or triangular in section).
    solid_core_diameter_mm
        Diameter (mm) of the solid component of a part-solid nodule, or of the
        calcified core of a centrally calcified nodule; ``None`` otherwise.
    attenuation_hu
        Nominal attenuation (HU, before blur and noise) of the nodule body: the
        ground-glass level of ground-glass and part-solid nodules, the solid level of
        solid ones and of the rim of centrally calcified ones, the calcium level of
        diffusely calcified ones.
    core_attenuation_hu
        Nominal attenuation (HU) of the core given by ``solid_core_diameter_mm``.
    cavitary
        The nodule has an air-filled cavity inside; ``diameter_mm`` is then that of the
        outer outline (wall and cavity together).
    """

    centre_xyz_mm: tuple[float, float, float]
    diameter_mm: float
    type: NoduleType
    margin: Margin
    location: Location
    solid_core_diameter_mm: float | None = None
    attenuation_hu: float = 0.0
    core_attenuation_hu: float | None = None
    cavitary: bool = False

    def __post_init__(self) -> None:
        if len(self.centre_xyz_mm) != 3:
            raise ValueError(f"centre_xyz_mm must have 3 values, got {self.centre_xyz_mm!r}")
        if not 0.0 < self.diameter_mm <= 60.0:
            raise ValueError(f"diameter_mm out of range: {self.diameter_mm}")
        if self.type not in NODULE_TYPES:
            raise ValueError(f"type must be one of {NODULE_TYPES}, got {self.type!r}")
        if self.margin not in MARGINS:
            raise ValueError(f"margin must be one of {MARGINS}, got {self.margin!r}")
        if self.location not in LOCATIONS:
            raise ValueError(f"location must be one of {LOCATIONS}, got {self.location!r}")
        if self.type == "part-solid" and self.solid_core_diameter_mm is None:
            raise ValueError("solid_core_diameter_mm is required for a part-solid nodule")
        if self.solid_core_diameter_mm is not None and not (
            0.0 < self.solid_core_diameter_mm <= self.diameter_mm
        ):
            raise ValueError(f"solid_core_diameter_mm out of range: {self.solid_core_diameter_mm}")
        if not isinstance(self.cavitary, bool):
            raise TypeError(f"cavitary must be a bool, got {self.cavitary!r}")
        if self.cavitary and self.type == "ground-glass":
            raise ValueError("a ground-glass nodule cannot be cavitary")

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-able form (the ``truth.json`` entry); ``cavitary`` only when true."""
        d: dict[str, object] = {
            "centre_xyz_mm": [round(float(v), 3) for v in self.centre_xyz_mm],
            "diameter_mm": round(float(self.diameter_mm), 3),
            "type": self.type,
            "margin": self.margin,
            "location": self.location,
            "solid_core_diameter_mm": None
            if self.solid_core_diameter_mm is None
            else round(float(self.solid_core_diameter_mm), 3),
            "attenuation_hu": round(float(self.attenuation_hu), 1),
            "core_attenuation_hu": None
            if self.core_attenuation_hu is None
            else round(float(self.core_attenuation_hu), 1),
        }
        if self.cavitary:
            d["cavitary"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> PlantedNodule:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` naming a bad field."""

        def num(key: str, optional: bool = False) -> float | None:
            v = d.get(key)
            if v is None and optional:
                return None
            if not isinstance(v, (int, float)):
                raise ValueError(f"{key} must be a number, got {v!r}")
            return float(v)

        centre = d.get("centre_xyz_mm")
        if not isinstance(centre, (list, tuple)) or len(centre) != 3:
            raise ValueError(f"centre_xyz_mm must be 3 numbers, got {centre!r}")
        diameter = num("diameter_mm")
        assert diameter is not None
        # type, margin and location are checked against their allowed values in __post_init__
        return cls(
            centre_xyz_mm=(float(centre[0]), float(centre[1]), float(centre[2])),
            diameter_mm=diameter,
            type=str(d.get("type")),  # type: ignore[arg-type]
            margin=str(d.get("margin")),  # type: ignore[arg-type]
            location=str(d.get("location")),  # type: ignore[arg-type]
            solid_core_diameter_mm=num("solid_core_diameter_mm", optional=True),
            attenuation_hu=num("attenuation_hu", optional=True) or 0.0,
            core_attenuation_hu=num("core_attenuation_hu", optional=True),
            cavitary=_flag(d.get("cavitary", False), "cavitary"),
        )


def _flag(v: object, key: str) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{key} must be true or false, got {v!r}")
    return v


@dataclass(frozen=True, eq=False)
class Phantom:
    """One synthetic chest CT study.

    Attributes
    ----------
    volume_hu
        ``int16`` Hounsfield units indexed ``[z, y, x]``.
    spacing_zyx_mm
        Slice spacing, row spacing (y) and column spacing (x) in mm.
    origin_xyz_mm
        LPS position (mm) of the centre of voxel ``[0, 0, 0]``; direction is identity.
    nodules
        Planted nodules (may be empty).
    seed
        The seed the study was generated from.
    labels
        ``uint8`` :class:`Tissue` label per voxel, or ``None`` when not kept.
    acquisition
        Study-level parameters (noise, kernel, contrast, body size...) for bookkeeping.
    study_uid, series_uid, frame_of_reference_uid
        UIDs derived from the seed (the same seed gives the same UIDs).
    """

    volume_hu: np.ndarray
    spacing_zyx_mm: tuple[float, float, float]
    origin_xyz_mm: tuple[float, float, float]
    nodules: list[PlantedNodule]
    seed: int
    labels: np.ndarray | None
    acquisition: dict[str, float | int | str | bool]
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """Volume shape ``(nz, ny, nx)``."""
        return tuple(int(v) for v in self.volume_hu.shape)  # type: ignore[return-value]

    def world_to_voxel(self, xyz_mm: Sequence[Any]) -> tuple[Any, Any, Any]:
        """Continuous voxel index ``(k, j, i)`` of an LPS point ``(x, y, z)`` in mm.

        The coordinates may be numbers or broadcastable arrays.
        """
        dz, dy, dx = self.spacing_zyx_mm
        ox, oy, oz = self.origin_xyz_mm
        return ((xyz_mm[2] - oz) / dz, (xyz_mm[1] - oy) / dy, (xyz_mm[0] - ox) / dx)

    def voxel_to_world(self, kji: Sequence[Any]) -> tuple[Any, Any, Any]:
        """LPS point ``(x, y, z)`` in mm of a (continuous) voxel index ``(k, j, i)``.

        The indices may be numbers or broadcastable arrays.
        """
        dz, dy, dx = self.spacing_zyx_mm
        ox, oy, oz = self.origin_xyz_mm
        return (ox + kji[2] * dx, oy + kji[1] * dy, oz + kji[0] * dz)
