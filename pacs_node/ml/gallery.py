"""PNG galleries of an evaluation's worst misses and false positives.

Each panel is an axial crop (:data:`CROP_MM` square, :data:`PIXEL_MM` pixels) through a
point, cut from the scan's HU volume and shown in a lung window (W1500/L-600), in
radiological view: anterior up, the patient's right on the image's left.  A dashed
circle marks the nodule's radius (misses) or the predicted one (false positives),
3 mm wider so that it does not hide the edge.

Crops are cut while each scan's volume is in memory (:class:`Gallery` keeps only the
worst ``n`` of each kind seen so far), so no scan is read twice.  Figures are drawn
on matplotlib's Agg canvas; no display or global backend is touched.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

if TYPE_CHECKING:
    import highdicom as hd

#: Side of a crop (mm) and its pixel size (mm).
CROP_MM = 64.0
PIXEL_MM = 0.5
#: Lung window (HU): width and level.
WINDOW_HU = (1500.0, -600.0)
#: Panels per row of a gallery.
COLUMNS = 4
#: File of each kind of panel.
FILES = {"misses": "misses.png", "false_positives": "false_positives.png"}


def axial_crop(volume: hd.Volume, centre_lps_mm: Sequence[float], size_mm: float = CROP_MM,
               pixel_mm: float = PIXEL_MM) -> np.ndarray:
    """HU on an axial square through a point (linear interpolation; -1024 outside the scan).

    Parameters
    ----------
    volume
        HU volume with its affine to patient LPS (mm), in any orientation.
    centre_lps_mm
        The crop's centre (LPS mm).
    size_mm, pixel_mm
        Side of the square and its pixel size (mm).

    Returns
    -------
    numpy.ndarray
        ``float32`` image, rows running anterior to posterior (+y), columns from the
        patient's right to left (+x).
    """
    n = max(1, int(round(size_mm / pixel_mm)))
    offsets = (np.arange(n) - (n - 1) / 2.0) * pixel_mm
    yy, xx = np.meshgrid(offsets, offsets, indexing="ij")
    cx, cy, cz = (float(v) for v in centre_lps_mm)
    points = np.stack([xx.ravel() + cx, yy.ravel() + cy, np.full(xx.size, cz)], axis=1)
    indices = volume.map_reference_to_indices(points, round_output=False)
    array = np.asarray(volume.array, dtype=np.float32)
    values = ndi.map_coordinates(array, indices.T, order=1, mode="constant", cval=-1024.0)
    return values.reshape(n, n).astype(np.float32)


@dataclass(frozen=True)
class Panel:
    """One crop with its caption; ``radius_mm`` draws a circle around the centre (``None``: none)."""

    title: str
    image_hu: np.ndarray
    radius_mm: float | None = None


@dataclass
class Gallery:
    """The ``n`` worst panels of each kind seen so far (kinds: the keys of :data:`FILES`).

    Offer every candidate panel with its badness (higher: worse); the crop is cut
    only when the panel ranks among the worst ``n``.
    """

    n: int
    _heaps: dict[str, list[tuple[float, int, Panel]]] = field(default_factory=lambda: {k: [] for k in FILES})
    _order: itertools.count = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"n must be >= 0, got {self.n}")

    def offer(self, kind: str, badness: float, volume: hd.Volume, centre_lps_mm: Sequence[float], title: str,
              radius_mm: float | None = None) -> bool:
        """Keep a panel if it is among the ``n`` worst of its kind; returns whether it was kept."""
        if kind not in self._heaps:
            raise ValueError(f"kind must be one of {', '.join(FILES)}, got {kind!r}")
        heap = self._heaps[kind]
        if self.n == 0 or (len(heap) >= self.n and badness <= heap[0][0]):
            return False
        # ties keep the panel offered first (a later one ranks lower)
        entry = (badness, -next(self._order), Panel(title, axial_crop(volume, centre_lps_mm), radius_mm))
        if len(heap) < self.n:
            heapq.heappush(heap, entry)
        else:
            heapq.heapreplace(heap, entry)
        return True

    def panels(self, kind: str) -> list[Panel]:
        """The kept panels of a kind, worst first."""
        return [p for _, _, p in sorted(self._heaps[kind], key=lambda e: (-e[0], -e[1]))]

    def write(self, out_dir: Path, heading: str = "") -> dict[str, dict[str, object]]:
        """Write one PNG grid per kind into ``out_dir``; returns ``{kind: {"file", "panels"}}``."""
        written = {}
        for kind, name in FILES.items():
            panels = self.panels(kind)
            label = kind.replace("_", " ")
            title = f"{heading}: worst {len(panels)} {label}" if heading else f"worst {len(panels)} {label}"
            save_panel_grid(panels, Path(out_dir) / name, title, empty=f"no {label} at the operating point")
            written[kind] = {"file": name, "panels": len(panels)}
        return written


def save_panel_grid(panels: Sequence[Panel], path: Path, title: str, empty: str = "nothing to show") -> Path:
    """Draw panels in a grid of :data:`COLUMNS` columns (lung window) and save it as a PNG.

    With no panels, a small figure says ``empty`` (so an old gallery never lingers).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    width, level = WINDOW_HU
    cols = max(1, min(COLUMNS, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig = Figure(figsize=(3.0 * cols, 3.3 * rows + 0.5), dpi=90)
    FigureCanvasAgg(fig)
    fig.suptitle(title, fontsize=10)
    if not panels:
        fig.text(0.5, 0.45, empty, ha="center", va="center", fontsize=10)
    for k, panel in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        n = panel.image_hu.shape[0]
        ax.imshow(panel.image_hu, cmap="gray", vmin=level - width / 2, vmax=level + width / 2,
                  interpolation="nearest")
        if panel.radius_mm is not None and math.isfinite(panel.radius_mm):
            r_px = (panel.radius_mm + 3.0) * n / CROP_MM
            ax.add_patch(Circle(((n - 1) / 2, (n - 1) / 2), r_px, fill=False, edgecolor="yellow", lw=1,
                                linestyle="--"))
        ax.set_title(panel.title, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
