"""Lung texture fields of the non-classic styles, evaluated slice by slice.

All fields are evaluated on the in-plane pixel grid the base anatomy is drawn on
(see :func:`._anatomy._render_base`) and are continuous along z, so that a study
has no slab seams.  ``lobular`` is a warped lattice of secondary pulmonary lobules
(interlobular septa and centrilobular dots, in the body frame); ``mottled`` is a
multi-scale (fractal) noise with a skewed, clumpy histogram.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi


class _PlaneStack:
    """Smooth random planes, one every ``step_mm`` along z, blended with variance-keeping weights.

    Parameters
    ----------
    rng
        The stream the planes are drawn from (consumed lazily, in z order).
    shape
        In-plane shape ``(ny, nx)`` of a plane (pixels).
    sigma_px
        Gaussian smoothing of the white noise (pixels, y and x).
    step_mm
        Distance (mm) along z between two independent planes.
    z0_mm
        World z (mm) of the first plane; slices are asked for in increasing z.
    """

    def __init__(
        self, rng: np.random.Generator, shape: tuple[int, int], sigma_px: tuple[float, float], step_mm: float,
        z0_mm: float,
    ) -> None:
        self._rng, self._shape, self._sigma = rng, shape, sigma_px
        self._step, self._z0 = step_mm, z0_mm
        self._planes: dict[int, np.ndarray] = {}
        self._made = 0

    def _plane(self, j: int) -> np.ndarray:
        while self._made <= j:
            p = ndi.gaussian_filter(self._rng.standard_normal(self._shape, dtype=np.float32), self._sigma)
            self._planes[self._made] = p / (p.std() + 1e-6)
            self._planes.pop(self._made - 3, None)
            self._made += 1
        return self._planes[j]

    def at(self, z_mm: float) -> np.ndarray:
        """Unit-variance field (float32, ``shape``) at world ``z_mm``."""
        tpos = max(0.0, (z_mm - self._z0) / self._step)
        j = int(tpos)
        w = (tpos - j) * (math.pi / 2)
        return math.cos(w) * self._plane(j) + math.sin(w) * self._plane(j + 1)


class _Lobular:
    """Secondary pulmonary lobules: a warped lattice of polyhedral cells (body frame, mm).

    Four plane families with tetrahedral normals (randomly rotated) cut space into
    polyhedra ``cell_mm`` across; a smooth warp makes them irregular.  Returns, per
    slice, the interlobular septa (HU added, lines ``septum_mm`` wide) and the
    centrilobular dots (HU added) at the centres of the cells.
    """

    def __init__(
        self, rng: np.random.Generator, shape: tuple[int, int], px_mm: float, z0_mm: float, *,
        cell_mm: float, septum_hu_mm: float, dot_hu: float, dot_r_mm: float, warp_mm: float,
    ) -> None:
        q, r = np.linalg.qr(rng.standard_normal((3, 3)))
        rot = q * np.sign(np.diag(r))
        tet = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=np.float64) / math.sqrt(3.0)
        self._n = tet @ rot.T
        self._cell = cell_mm * rng.uniform(0.85, 1.15, 4)
        self._phase = rng.uniform(0.0, 1.0, 4)
        self._width = max(0.35, 0.45 * px_mm)  # rendered septum width (mm), partial volume of a thin sheet
        self._septum_amp = septum_hu_mm / (math.sqrt(math.pi) * self._width)
        self._dot_hu = dot_hu
        self._dot_r = max(dot_r_mm, 0.45 * px_mm)
        self._warp_mm = warp_mm
        sig = (cell_mm / px_mm * 0.6,) * 2
        self._wa = _PlaneStack(rng, shape, sig, 1.2 * cell_mm, z0_mm)
        self._wb = _PlaneStack(rng, shape, sig, 1.2 * cell_mm, z0_mm)

    def at(self, a: np.ndarray, b: np.ndarray, zb: float, zw: float) -> np.ndarray:
        """HU added by septa and centrilobular dots at body-frame ``(a, b)`` (mm) of slice ``zb``."""
        aw = a + self._warp_mm * self._wa.at(zw)
        bw = b + self._warp_mm * self._wb.at(zw)
        septa = np.zeros(np.broadcast_shapes(aw.shape, bw.shape), dtype=np.float32)
        dots = np.ones_like(septa)
        for i in range(4):
            n, c = self._n[i], self._cell[i]
            s = (n[0] * aw + n[1] * bw + n[2] * zb) * (1.0 / c) + self._phase[i]
            d = (s - np.floor(s) - 0.5) * c  # mm from the cell's mid-plane, in [-c/2, c/2]
            dist = 0.5 * c - np.abs(d)  # mm to the nearest septum of this family
            septa = np.maximum(septa, np.exp(-((dist * (1.0 / self._width)) ** 2)))
            if i < 3:
                dots *= np.exp(-((d * (1.0 / self._dot_r)) ** 2))
        return self._septum_amp * septa + self._dot_hu * dots


class _Mottled:
    """Multi-scale (fractal) noise, skewed into clumps; unit variance, zero mean."""

    def __init__(
        self, rng: np.random.Generator, shape: tuple[int, int], px_mm: float, z0_mm: float, *,
        hurst: float, skew: float,
    ) -> None:
        scales = (0.7, 1.4, 2.8, 5.6, 11.0)
        self._w = np.array([s**hurst for s in scales])
        self._w /= math.sqrt(float((self._w**2).sum()))
        self._stacks = [_PlaneStack(rng, shape, (s / px_mm,) * 2, max(1.5, 1.6 * s), z0_mm) for s in scales]
        self._skew = skew
        # moments of exp(k n) for standard normal n, to renormalise
        self._mean = math.exp(0.5 * skew * skew)
        self._std = math.sqrt(max(math.exp(2 * skew * skew) - math.exp(skew * skew), 1e-9))

    def at(self, zw: float) -> np.ndarray:
        n = sum(float(w) * st.at(zw) for w, st in zip(self._w, self._stacks, strict=True))
        assert isinstance(n, np.ndarray)
        return (np.exp(self._skew * n) - self._mean) * (1.0 / self._std)
