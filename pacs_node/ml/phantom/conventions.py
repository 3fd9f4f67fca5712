"""Other scanners' conventions applied to a phantom: anatomy, geometry and image statistics.

Our generator makes one kind of chest CT; real scanners differ in ways that must not
break the detector's front end.  Each function here takes a :class:`Scan` (a HU
volume with its truth) and returns a new one as another scanner or another
positioning would have produced it; the DICOM side (stored values, padding
attributes) is in :mod:`pacs_node.ml.phantom.encoding`.

Coordinates
-----------
:attr:`Scan.volume` is a :class:`highdicom.Volume` indexed ``[slice, row, column]``
with its affine to patient LPS (mm); :attr:`Scan.labels` (when kept) is a
:class:`~pacs_node.ml.phantom.truth.Tissue` label volume with the same geometry.
Nodule truth is in patient LPS mm, so re-indexing a volume (another slice order,
row or column direction) leaves it unchanged; functions that move the anatomy
inside the field of view (:func:`rotate_in_plane`, :func:`shift_in_plane`) move it
too.  In-plane functions assume an axial volume (slices along axis 0), which every
function here keeps.  "Image space" means the rows and columns as stored: row 0 at
the top of the displayed image, the table at the bottom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import highdicom as hd
import numpy as np
from scipy import ndimage as ndi

from pacs_node.ml.phantom.truth import HU_MIN, Phantom, PlantedNodule, Tissue

#: HU of air as scanners store it (the floor most CT writers clip to).
AIR_HU = float(HU_MIN)

PatientPosition = Literal["HFS", "FFS", "HFP", "FFP", "HFDL", "HFDR", "FFDL", "FFDR"]

#: highdicom orientation letters (slice, row, column) of the volume a scanner writes for
#: each patient position, from the conventional Image Orientation (Patient):
#: HFS (1,0,0,0,1,0), FFS (-1,0,0,0,1,0), HFP (-1,0,0,0,-1,0), FFP (1,0,0,0,-1,0),
#: HFDL (0,-1,0,1,0,0), HFDR (0,1,0,-1,0,0), FFDL (0,1,0,1,0,0), FFDR (0,-1,0,-1,0,0);
#: slices are stacked along row x column (the way highdicom sorts them).
POSITION_ORIENTATION: dict[str, str] = {
    "HFS": "HPL", "FFS": "FPR", "HFP": "HAR", "FFP": "FAL",
    "HFDL": "HLA", "HFDR": "HRP", "FFDL": "FLP", "FFDR": "FRA",
}


@dataclass(frozen=True, eq=False)
class Scan:
    """A CT volume and what is known to be in it.

    Attributes
    ----------
    volume
        ``float32`` HU indexed ``[slice, row, column]`` with its LPS affine (mm).
    nodules
        Planted nodules (centres in patient LPS mm).
    labels
        ``uint8`` :class:`~pacs_node.ml.phantom.truth.Tissue` labels with the same
        geometry, or ``None`` (functions that need anatomy then raise ``ValueError``).
    """

    volume: hd.Volume
    nodules: tuple[PlantedNodule, ...]
    labels: hd.Volume | None = None

    def __post_init__(self) -> None:
        if self.labels is not None and self.labels.spatial_shape != self.volume.spatial_shape:
            raise ValueError(f"labels shape {self.labels.spatial_shape} differs from the volume's "
                             f"{self.volume.spatial_shape}")

    @property
    def spacing_mm(self) -> np.ndarray:
        """Voxel spacing along slice, row, column (mm)."""
        return np.linalg.norm(self.volume.affine[:3, :3], axis=0)

    def with_array(self, array: np.ndarray, labels: np.ndarray | None = None) -> Scan:
        """The same geometry and truth with new voxels (and labels, else the old ones)."""
        volume = hd.Volume(np.ascontiguousarray(array, dtype=np.float32), self.volume.affine,
                           coordinate_system="PATIENT")
        lab = self.labels if labels is None else hd.Volume(labels, self.volume.affine, coordinate_system="PATIENT")
        return Scan(volume, self.nodules, lab)

    def slice_z_mm(self) -> np.ndarray:
        """Patient S position (mm) of each slice's first voxel."""
        a = self.volume.affine
        return a[2, 0] * np.arange(self.volume.spatial_shape[0]) + a[2, 3]


def scan_from_phantom(phantom: Phantom, table: bool = True) -> Scan:
    """A phantom as a scan (supine, head first, as :func:`~pacs_node.ml.phantom.write_dicom_study` writes it).

    ``table=False`` replaces the generator's table and mattress with air (needs the
    phantom's labels), e.g. before :func:`add_couch` puts another one elsewhere.
    """
    dz, dy, dx = phantom.spacing_zyx_mm
    affine = np.zeros((4, 4))
    affine[0, 2], affine[1, 1], affine[2, 0], affine[3, 3] = dx, dy, dz, 1.0
    affine[:3, 3] = phantom.origin_xyz_mm
    array = phantom.volume_hu.astype(np.float32)
    labels = None
    if phantom.labels is not None:
        if not table:
            array[phantom.labels == Tissue.TABLE] = AIR_HU
        labels = hd.Volume(phantom.labels, affine, coordinate_system="PATIENT")
    elif not table:
        raise ValueError("table=False needs a phantom generated with keep_labels=True")
    volume = hd.Volume(array, affine, coordinate_system="PATIENT")
    return Scan(volume, tuple(phantom.nodules), labels)


def remove_table(scan: Scan) -> Scan:
    """The generator's table and mattress replaced with air (needs labels)."""
    labels = _need_labels(scan, "remove_table")
    table = labels == Tissue.TABLE
    arr = np.where(table, np.float32(AIR_HU), np.asarray(scan.volume.array, dtype=np.float32))
    return scan.with_array(arr, np.where(table, np.uint8(Tissue.AIR), labels))


def _need_labels(scan: Scan, what: str) -> np.ndarray:
    if scan.labels is None:
        raise ValueError(f"{what} needs tissue labels (generate the phantom with keep_labels=True)")
    return np.asarray(scan.labels.array)


# ---------------------------------------------------------------- geometry


def reposition(scan: Scan, position: PatientPosition) -> Scan:
    """Re-index a scan the way a scanner stores it for a patient position.

    The anatomy stays where it is in patient coordinates (a view, no resampling):
    this changes rows, columns, slice order and Image Orientation (Patient) only, e.g.
    ``"HFP"`` (prone) gives orientation ``(-1, 0, 0, 0, -1, 0)`` with the patient's
    back at the top of the image.  Where the table goes is :func:`add_couch`'s job.
    """
    try:
        letters = POSITION_ORIENTATION[position]
    except KeyError:
        raise ValueError(f"position must be one of {sorted(POSITION_ORIENTATION)}, got {position!r}") from None
    volume = scan.volume.to_patient_orientation(letters)
    labels = scan.labels.to_patient_orientation(letters) if scan.labels is not None else None
    return Scan(volume, scan.nodules, labels)


def _in_plane_centre_world(scan: Scan) -> np.ndarray:
    """LPS position (mm) of the in-plane centre of the middle slice."""
    nz, ny, nx = scan.volume.spatial_shape
    return (scan.volume.affine @ np.array([(nz - 1) / 2, (ny - 1) / 2, (nx - 1) / 2, 1.0]))[:3]


def _move_nodules(scan: Scan, matrix: np.ndarray, offset: np.ndarray) -> tuple[PlantedNodule, ...]:
    """Nodules mapped by ``x -> matrix @ x + offset`` (LPS mm)."""
    return tuple(replace(n, centre_xyz_mm=tuple(float(v) for v in matrix @ np.asarray(n.centre_xyz_mm) + offset))
                 for n in scan.nodules)


def rotate_in_plane(scan: Scan, degrees: float) -> Scan:
    """Turn the patient inside the field of view by ``degrees`` about the image centre.

    The voxels are resampled (linear; labels by nearest voxel), air fills the corners;
    nodule centres turn with the anatomy.  Positive angles turn the image
    counter-clockwise as displayed.
    """
    arr = ndi.rotate(np.asarray(scan.volume.array), degrees, axes=(2, 1), reshape=False, order=1,
                     mode="constant", cval=AIR_HU, prefilter=False)
    labels = None
    if scan.labels is not None:
        labels = ndi.rotate(np.asarray(scan.labels.array), degrees, axes=(2, 1), reshape=False, order=0,
                            mode="constant", cval=int(Tissue.AIR), prefilter=False)
    # the same turn in patient coordinates, about the image centre
    a = scan.volume.affine[:3, :3]
    t = math.radians(degrees)
    rot_idx = np.eye(3)  # [slice, row, column] index space: row' / column' about the centre
    rot_idx[1:, 1:] = [[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]]
    matrix = a @ rot_idx @ np.linalg.inv(a)
    centre = _in_plane_centre_world(scan)
    moved = Scan(scan.volume, _move_nodules(scan, matrix, centre - matrix @ centre), scan.labels)
    return moved.with_array(arr, labels)


def shift_in_plane(scan: Scan, rows_mm: float, columns_mm: float) -> Scan:
    """Move the patient inside the field of view (down by ``rows_mm``, right by ``columns_mm``).

    Whole voxels only; what leaves the image is lost (truncation), air comes in.
    """
    _, dy, dx = scan.spacing_mm
    sy, sx = round(rows_mm / dy), round(columns_mm / dx)

    def shift(a: np.ndarray, fill: float) -> np.ndarray:
        out = np.full_like(a, fill)
        ny, nx = a.shape[1:]
        src_y, dst_y = slice(max(0, -sy), min(ny, ny - sy)), slice(max(0, sy), min(ny, ny + sy))
        src_x, dst_x = slice(max(0, -sx), min(nx, nx - sx)), slice(max(0, sx), min(nx, nx + sx))
        out[:, dst_y, dst_x] = a[:, src_y, src_x]
        return out

    arr = shift(np.asarray(scan.volume.array), AIR_HU)
    labels = shift(np.asarray(scan.labels.array), int(Tissue.AIR)) if scan.labels is not None else None
    a = scan.volume.affine[:3, :3]
    offset = a @ np.array([0.0, sy, sx])
    moved = Scan(scan.volume, _move_nodules(scan, np.eye(3), offset), scan.labels)
    return moved.with_array(arr, labels)


def crop_field_of_view(scan: Scan, fov_mm: float) -> Scan:
    """Keep the central ``fov_mm`` x ``fov_mm`` of each slice (a targeted reconstruction).

    Anatomy outside is cut off (the body, maybe the lungs, touch the image border);
    nodules whose centre leaves the field of view are dropped from the truth.
    """
    _, ny, nx = scan.volume.spatial_shape
    _, dy, dx = scan.spacing_mm
    h, w = min(ny, round(fov_mm / dy)), min(nx, round(fov_mm / dx))
    y0, x0 = (ny - h) // 2, (nx - w) // 2
    volume = scan.volume[:, y0:y0 + h, x0:x0 + w]
    labels = scan.labels[:, y0:y0 + h, x0:x0 + w] if scan.labels is not None else None
    return Scan(volume, _nodules_inside(volume, scan.nodules), labels)


def extend_field_of_view(scan: Scan, fov_mm: float) -> Scan:
    """Pad each slice with air to ``fov_mm`` x ``fov_mm`` (a large display field of view)."""
    _, ny, nx = scan.volume.spatial_shape
    _, dy, dx = scan.spacing_mm
    py, px = max(0, round(fov_mm / dy) - ny), max(0, round(fov_mm / dx) - nx)
    pad = [(0, 0), (py // 2, py - py // 2), (px // 2, px - px // 2)]
    arr = np.pad(np.asarray(scan.volume.array), pad, constant_values=AIR_HU)
    affine = scan.volume.affine.copy()
    affine[:3, 3] = (affine @ np.array([0.0, -(py // 2), -(px // 2), 1.0]))[:3]
    volume = hd.Volume(arr, affine, coordinate_system="PATIENT")
    labels = None
    if scan.labels is not None:
        labels = hd.Volume(np.pad(np.asarray(scan.labels.array), pad, constant_values=int(Tissue.AIR)), affine,
                           coordinate_system="PATIENT")
    return Scan(volume, scan.nodules, labels)


def resample_matrix(scan: Scan, matrix: int) -> Scan:
    """Resample each slice to ``matrix`` x ``matrix`` pixels over the same field of view (linear)."""
    _, ny, nx = scan.volume.spatial_shape
    zoom = (1.0, matrix / ny, matrix / nx)
    arr = ndi.zoom(np.asarray(scan.volume.array), zoom, order=1, grid_mode=True, mode="grid-constant",
                   cval=AIR_HU, prefilter=False)
    labels = None
    if scan.labels is not None:
        labels = ndi.zoom(np.asarray(scan.labels.array), zoom, order=0, grid_mode=True, mode="nearest",
                          prefilter=False)
    affine = scan.volume.affine.copy()
    # grid_mode: the field of view (outer pixel edges) is kept, pixel centres move
    for axis, n_old in ((1, ny), (2, nx)):
        f = n_old / matrix
        affine[:3, 3] += affine[:3, axis] * (0.5 * f - 0.5)
        affine[:3, axis] *= f
    volume = hd.Volume(arr, affine, coordinate_system="PATIENT")
    lab = hd.Volume(labels, affine, coordinate_system="PATIENT") if labels is not None else None
    return Scan(volume, scan.nodules, lab)


def reslice(scan: Scan, spacing_mm: float, thickness_mm: float | None = None) -> Scan:
    """Slices every ``spacing_mm`` along the slice axis, each ``thickness_mm`` thick.

    Each new slice averages the old ones over its thickness (at least linear
    interpolation between neighbours), as a thick-slice reconstruction does; the
    default thickness is the spacing.
    """
    nz = scan.volume.spatial_shape[0]
    dz = float(scan.spacing_mm[0])
    thickness = spacing_mm if thickness_mm is None else thickness_mm
    n_new = int(np.floor((nz - 1) * dz / spacing_mm)) + 1
    pos = np.arange(n_new) * spacing_mm / dz  # new slice centres in old (continuous) indices
    arr = np.asarray(scan.volume.array, dtype=np.float32)
    smooth = arr
    if thickness > dz:
        smooth = ndi.uniform_filter1d(arr, max(1, round(thickness / dz)), axis=0, mode="nearest")
    lo = np.clip(np.floor(pos).astype(int), 0, nz - 1)
    hi = np.clip(lo + 1, 0, nz - 1)
    w = (pos - lo).astype(np.float32)[:, None, None]
    out = smooth[lo] * (1 - w) + smooth[hi] * w
    labels = None
    if scan.labels is not None:
        labels = np.asarray(scan.labels.array)[np.clip(np.rint(pos).astype(int), 0, nz - 1)]
    affine = scan.volume.affine.copy()
    affine[:3, 0] *= spacing_mm / dz
    volume = hd.Volume(np.ascontiguousarray(out), affine, coordinate_system="PATIENT")
    lab = hd.Volume(np.ascontiguousarray(labels), affine, coordinate_system="PATIENT") if labels is not None else None
    return Scan(volume, scan.nodules, lab)


def crop_lung_extent(scan: Scan, drop_top_mm: float = 0.0, drop_bottom_mm: float = 0.0) -> Scan:
    """Partial coverage: cut ``drop_top_mm`` off the lung apices and ``drop_bottom_mm`` off the bases.

    Needs labels (where the lungs are) and a volume whose slice axis is axial.
    Nodules whose centre is no longer covered are dropped from the truth.
    """
    labels = _need_labels(scan, "crop_lung_extent")
    lung_slices = np.nonzero((labels == Tissue.LUNG).any(axis=(1, 2)))[0]
    if len(lung_slices) == 0:
        raise ValueError("the scan has no lung to crop")
    z = scan.slice_z_mm()
    z_lung = z[lung_slices]
    top, bottom = z_lung.max() - drop_top_mm, z_lung.min() + drop_bottom_mm
    keep = np.nonzero((z <= top + 1e-6) & (z >= bottom - 1e-6))[0]
    if len(keep) < 2:
        raise ValueError(f"cropping {drop_top_mm} + {drop_bottom_mm} mm leaves fewer than 2 slices")
    s = slice(int(keep[0]), int(keep[-1]) + 1)
    volume = scan.volume[s]
    return Scan(volume, _nodules_inside(volume, scan.nodules), scan.labels[s] if scan.labels is not None else None)


def _nodules_inside(volume: hd.Volume, nodules: tuple[PlantedNodule, ...]) -> tuple[PlantedNodule, ...]:
    """The nodules whose centre lies inside a volume's voxels."""
    shape = np.array(volume.spatial_shape)
    inv = np.linalg.inv(volume.affine)
    kept = []
    for n in nodules:
        idx = (inv @ np.array([*n.centre_xyz_mm, 1.0]))[:3]
        if np.all(idx >= -0.5) and np.all(idx <= shape - 0.5):
            kept.append(n)
    return tuple(kept)


# ---------------------------------------------------------------- anatomy outside the lungs


def _body_bottom_row(arr: np.ndarray, threshold_hu: float = -500.0) -> int:
    """Lowest image row holding body (denser than ``threshold_hu``) in any slice."""
    rows = np.nonzero((arr > threshold_hu).any(axis=(0, 2)))[0]
    return int(rows[-1]) if len(rows) else arr.shape[1] - 1


def add_couch(scan: Scan, *, gap_mm: float = 0.0, mattress_mm: float = 25.0, mattress_hu: float = -880.0,
              cover_mm: float = 2.0, cover_hu: float = 40.0, plate_mm: float = 10.0, plate_hu: float = 250.0,
              rise_mm: float = 45.0, half_width_mm: float = 230.0) -> Scan:
    """Put a patient table under the patient, in image space (the bottom rows are the floor side).

    From the body down: ``gap_mm`` of air, a foam mattress (``mattress_hu``) sealed in
    a cover (``cover_hu``, ``cover_mm`` thick), then a curved carbon cradle
    ``plate_mm`` thick (``plate_hu``) whose rim rises ``rise_mm`` at ``half_width_mm``
    from the centre.  The foam is as dark as lung; a 2 mm cover mostly vanishes on
    the lung mask's 3 mm grid, a 6 mm one (a vacuum cushion, a thick vinyl cover)
    closes it, and a front end that takes "air enclosed by something dense" for lung
    then finds a third lung.  The patient (voxels above -500 HU) is never painted
    over; couch rows below the image are cut off.
    """
    arr = np.array(scan.volume.array, dtype=np.float32)
    _, ny, nx = arr.shape
    _, dy, dx = scan.spacing_mm
    y_body = _body_bottom_row(arr) * dy
    cx = 0.5 * (nx - 1) * dx
    x = np.arange(nx) * dx - cx
    y = np.arange(ny)[:, None] * dy
    inside_x = np.abs(x) <= half_width_mm
    rise = rise_mm * (x / half_width_mm) ** 2  # the cradle curves up towards its rims
    top_m = y_body + gap_mm - rise  # mattress top follows the cradle
    top_p = top_m + mattress_mm
    mattress = (y >= top_m) & (y < top_p) & inside_x
    cover = mattress & ((y < top_m + cover_mm) | (y >= top_p - cover_mm)
                        | (np.abs(x) > half_width_mm - 40.0 - cover_mm) & (np.abs(x) <= half_width_mm - 40.0))
    mattress &= np.abs(x) <= half_width_mm - 40.0
    plate = (y >= top_p) & (y < top_p + plate_mm) & inside_x
    pattern = np.full((ny, nx), np.nan, dtype=np.float32)
    pattern[mattress] = mattress_hu
    pattern[cover] = cover_hu
    pattern[plate] = plate_hu
    where = ~np.isnan(pattern)
    body = arr[:, where] > -500.0  # never paint over the patient
    arr[:, where] = np.where(body, arr[:, where], pattern[where][None, :])
    labels = None
    if scan.labels is not None:
        labels = np.array(scan.labels.array)
        lab = labels[:, where]
        lab[~body] = Tissue.TABLE
        labels[:, where] = lab
    return scan.with_array(arr, labels)


def add_bowel_gas(scan: Scan, rng: np.random.Generator, *, pockets: int = 5, radius_mm: tuple[float, float] = (16.0, 26.0),
                  wall_hu: float = 30.0, gas_hu: float = -1000.0) -> Scan:
    """Gas-filled bowel and stomach under the diaphragm: air pockets in the abdomen, not lung.

    Up to ``pockets`` spheres of ``radius_mm`` (less where the tissue is thinner), each
    with a 2 mm wall, in soft tissue under the diaphragm (below the lowest lung voxel
    of their column), at least 4 mm from lung, bone and skin, each overlapping the
    previous one: one gas volume, like a loop of colon or the stomach, of some tens
    to a few hundred mL depending on how much abdomen the scan covers.  Needs labels.
    The gas is ``gas_hu`` plus the scan's own noise (that of the tissue it replaces).
    """
    labels = _need_labels(scan, "add_bowel_gas").copy()
    arr = np.array(scan.volume.array, dtype=np.float32)
    spacing = scan.spacing_mm
    step = np.maximum(1, np.rint(3.0 / spacing).astype(int))  # work on a ~3 mm grid
    coarse = labels[:: step[0], :: step[1], :: step[2]]
    cs = spacing * step
    soft = coarse == Tissue.SOFT
    depth = ndi.distance_transform_edt(soft, sampling=cs)  # mm to the nearest non-soft voxel
    z = scan.slice_z_mm()[:: step[0], None, None]
    # under the diaphragm: below the lowest lung voxel of the same column
    lung_bottom = np.where(coarse == Tissue.LUNG, z, np.inf).min(axis=0)
    below = z < lung_bottom[None] - 4.0
    pos = np.array(np.nonzero(soft & below & np.isfinite(lung_bottom)[None] & (depth >= radius_mm[0] + 6.0)))
    if pos.shape[1] == 0:
        raise ValueError("no soft tissue under the diaphragm deep enough for bowel gas")
    grid = np.indices(arr.shape[1:], dtype=np.float32)
    placed: list[np.ndarray] = []
    for _ in range(pockets):
        if placed:  # chain: the next pocket starts near the previous one
            d = np.linalg.norm((pos.T - placed[-1]) * cs, axis=1)
            pick = np.nonzero((d > 0.7 * radius_mm[0]) & (d < 1.4 * radius_mm[0]))[0]  # overlapping: one gas volume
            if len(pick) == 0:
                break
            i = int(rng.choice(pick))
        else:
            i = int(rng.choice(pos.shape[1], p=depth[tuple(pos)] / depth[tuple(pos)].sum()))
        c = pos[:, i].astype(float)
        placed.append(c)
        r = float(min(rng.uniform(*radius_mm), depth[tuple(pos[:, i])] - 4.0))
        centre = c * step  # full-resolution index
        kz = np.arange(max(0, int(centre[0] - r / spacing[0]) - 1),
                       min(arr.shape[0], int(centre[0] + r / spacing[0]) + 2))
        for k in kz:
            dzz = (k - centre[0]) * spacing[0]
            if abs(dzz) >= r + 2.0:
                continue
            d2 = ((grid[0] - centre[1]) * spacing[1]) ** 2 + ((grid[1] - centre[2]) * spacing[2]) ** 2 + dzz**2
            inner = d2 < r * r
            if not inner.any():
                continue
            wall = (d2 < (r + 2.0) ** 2) & ~inner & (labels[k] == Tissue.SOFT)
            arr[k][wall] = np.maximum(arr[k][wall], wall_hu)
            arr[k][inner] = gas_hu + (arr[k][inner] - np.median(arr[k][inner]))
            labels_k = labels[k]
            labels_k[inner] = Tissue.AIR
    return scan.with_array(np.maximum(arr, AIR_HU), labels)


# ---------------------------------------------------------------- image statistics


def _in_plane_noise(rng: np.random.Generator, shape: tuple[int, int, int], sigma_px: float) -> np.ndarray:
    """Unit-variance Gaussian noise with a Gaussian in-plane correlation (``sigma_px`` pixels)."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    if sigma_px > 0.05:
        ndi.gaussian_filter(noise, (0, sigma_px, sigma_px), output=noise, mode="wrap", truncate=3.0)
        # exact variance of the filtered white noise
        half = int(3 * sigma_px) + 2
        imp = np.zeros((1, 2 * half + 1, 2 * half + 1), dtype=np.float64)
        imp[0, half, half] = 1.0
        gain = math.sqrt(float((ndi.gaussian_filter(imp, (0, sigma_px, sigma_px), truncate=3.0) ** 2).sum()))
        noise /= np.float32(gain)
    return noise


def add_noise(scan: Scan, rng: np.random.Generator, sigma_hu: float, correlation_mm: float = 0.6) -> Scan:
    """Add stationary Gaussian noise (``sigma_hu``) with an in-plane correlation length; floor at air.

    Low-dose CT: ``sigma_hu`` 60 to 100 at a standard kernel (``correlation_mm`` about
    0.6); iterative reconstruction: lower ``sigma_hu`` with a long correlation (2 to
    3 mm, blotchy).  The stored floor of -1024 HU is kept, as scanners clip there.
    """
    arr = np.asarray(scan.volume.array, dtype=np.float32)
    noise = _in_plane_noise(rng, arr.shape, correlation_mm / float(scan.spacing_mm[1]))
    noise *= np.float32(sigma_hu)
    noise += arr
    return scan.with_array(np.maximum(noise, AIR_HU))


def sharpen(scan: Scan, amount: float = 1.0, sigma_mm: float = 1.0) -> Scan:
    """A sharp (lung, bone) kernel's edge enhancement: ``image + amount * (image - blur)``.

    Edges overshoot (dark rims around vessels and nodules, bright rims on the pleura)
    and the noise already in the image is amplified.
    """
    arr = np.asarray(scan.volume.array, dtype=np.float32)
    s = sigma_mm / float(scan.spacing_mm[1])
    blur = ndi.gaussian_filter(arr, (0, s, s), truncate=3.0)
    blur -= arr
    blur *= np.float32(-amount)
    blur += arr
    return scan.with_array(np.maximum(blur, AIR_HU))


def smooth(scan: Scan, sigma_mm: float = 1.0) -> Scan:
    """A smooth (soft-tissue) kernel: Gaussian blur in-plane of ``sigma_mm``."""
    arr = np.asarray(scan.volume.array, dtype=np.float32)
    s = sigma_mm / float(scan.spacing_mm[1])
    return scan.with_array(ndi.gaussian_filter(arr, (0, s, s), truncate=3.0))


def offset_hu(scan: Scan, offset: float) -> Scan:
    """A calibration offset: every voxel ``offset`` HU higher (air too, then clipped at -1024)."""
    return scan.with_array(np.maximum(np.asarray(scan.volume.array, dtype=np.float32) + np.float32(offset), AIR_HU))


def add_streaks(scan: Scan, rng: np.random.Generator, *, amplitude_hu: float = -150.0, lines: int = 5,
                width_mm: float = 3.0, top_fraction: float = 0.35) -> Scan:
    """Beam-hardening streaks: dark bands with bright flanks across the top of the chest.

    ``lines`` straight bands through points near the image centre, mostly left-right
    (between the shoulders), in the slices of the top ``top_fraction`` of the scan
    (fading in over a few slices), inside the body only.
    """
    arr = np.array(scan.volume.array, dtype=np.float32)
    _, ny, nx = arr.shape
    _, dy, dx = scan.spacing_mm
    yy, xx = np.indices((ny, nx), dtype=np.float32)
    yy *= dy
    xx *= dx
    pattern = np.zeros((ny, nx), dtype=np.float32)
    for _ in range(lines):
        y0 = (0.5 + rng.normal(0.0, 0.1)) * ny * dy
        x0 = (0.5 + rng.normal(0.0, 0.1)) * nx * dx
        ang = rng.normal(0.0, math.radians(15.0))
        d = np.abs((xx - x0) * math.sin(ang) - (yy - y0) * math.cos(ang))
        pattern += np.exp(-((d / width_mm) ** 2)) - 0.35 * np.exp(-(((d - 2.5 * width_mm) / width_mm) ** 2))
    z = scan.slice_z_mm()
    z_cut = z.max() - top_fraction * (z.max() - z.min())
    weight = np.clip((z - z_cut) / max(10.0, 1e-3), 0.0, 1.0).astype(np.float32)
    for k in np.nonzero(weight > 0)[0]:
        body = arr[k] > -500.0
        arr[k][body] += amplitude_hu * weight[k] * pattern[body]
    return scan.with_array(np.maximum(arr, AIR_HU))


def motion_blur_bases(scan: Scan, amplitude_mm: float = 5.0, bottom_fraction: float = 0.3) -> Scan:
    """Breathing at the lung bases: blur of ``amplitude_mm`` along the body axis and front-to-back.

    Applied with full strength to the bottom ``bottom_fraction`` of the scan, fading
    out above (the diaphragm moves most; the apices hardly at all).
    """
    arr = np.asarray(scan.volume.array, dtype=np.float32)
    dz, dy, _ = scan.spacing_mm
    blurred = ndi.uniform_filter1d(arr, max(1, round(amplitude_mm / dz)) | 1, axis=0, mode="nearest")
    blurred = ndi.uniform_filter1d(blurred, max(1, round(amplitude_mm / dy)) | 1, axis=1, mode="nearest")
    z = scan.slice_z_mm()
    z_cut = z.min() + bottom_fraction * (z.max() - z.min())
    w = np.clip((z_cut + 20.0 - z) / 20.0, 0.0, 1.0).astype(np.float32)[:, None, None]
    return scan.with_array(w * blurred + (1 - w) * arr)
