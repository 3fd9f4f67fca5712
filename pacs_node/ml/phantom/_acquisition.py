"""CT acquisition: point spread, kernel sharpening, correlated noise, streaks and
calibration, applied slab by slab."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from pacs_node.ml.phantom._geometry import _Canvas, _Grid, _Pose, _squircle
from pacs_node.ml.phantom._study import _Body
from pacs_node.ml.phantom.truth import HU_MAX, HU_MIN


@dataclass(frozen=True)
class _Streak:
    """Beam-hardening-like dark streaks (with bright flanks) around world ``z`` (mm)."""

    z: float
    half_width: float  # mm along z
    amp: float  # HU at the streak centre (negative: dark)
    width: float  # mm across the streak
    lines: np.ndarray  # (n, 3): x0, y0 (world mm) and angle (rad) of each streak


@dataclass(frozen=True)
class _Acq:
    psf_sigma_mm: float
    sharpen: float
    sharpen_sigma_mm: float
    z_blur_vox: float
    noise_std: float
    noise_sigma_mm: float
    noise_band: float
    noise_band_sigma_mm: float
    noise_z_corr: float
    noise_centre_gain: float
    hu_offset: float
    hu_scale: float
    streaks: tuple[_Streak, ...]

    @property
    def kernel(self) -> str:
        if self.sharpen > 0.3:
            return "sharp"
        return "soft" if self.psf_sigma_mm > 0.7 else "standard"

    def summary(self) -> dict[str, float | int | str]:
        return {
            "kernel": self.kernel,
            "psf_sigma_mm": self.psf_sigma_mm,
            "sharpen": self.sharpen,
            "z_blur_vox": self.z_blur_vox,
            "noise_std_hu": self.noise_std,
            "noise_sigma_mm": self.noise_sigma_mm,
            "noise_band": self.noise_band,
            "noise_z_corr": self.noise_z_corr,
            "hu_offset": self.hu_offset,
            "hu_scale": self.hu_scale,
            "streak_events": len(self.streaks),
        }


def _sample_acquisition(rng: np.random.Generator, grid: _Grid, pose: _Pose, B: _Body) -> _Acq:
    """Draw the reconstruction kernel, noise texture and artefacts of one study."""
    u = rng.uniform
    psf = u(0.25, 0.8) if rng.random() < 0.85 else u(0.8, 1.4)
    sharpen = 0.0 if rng.random() < 0.4 else u(0.15, 0.6)
    sn = u(0.35, 1.0)
    band = 0.0 if rng.random() < 0.35 else u(0.3, 0.85)
    streaks = []
    z_lo, z_hi = float(grid.origin[2]), float(grid.origin[2] + (grid.shape[0] - 1) * grid.spacing[0])
    for _ in range(int(rng.choice([0, 1, 2, 3], p=[0.6, 0.2, 0.12, 0.08]))):
        zc = z_hi - u(0.0, 0.25) * (z_hi - z_lo) if rng.random() < 0.6 else u(z_lo, z_hi)
        cx, cy = pose.centre(zc)
        n = int(rng.integers(2, 7))
        lines = np.stack(
            [
                cx + rng.normal(0.0, 0.25 * B.W, n),
                cy + rng.normal(0.0, 0.25 * B.Dp, n),
                rng.normal(0.0, math.radians(20.0), n) + (math.pi / 2 if rng.random() < 0.2 else 0.0),
            ],
            axis=1,
        )
        streaks.append(_Streak(zc, u(4.0, 25.0), -u(35.0, 130.0), u(1.5, 4.0), lines))
    return _Acq(
        psf_sigma_mm=psf,
        sharpen=sharpen,
        sharpen_sigma_mm=u(0.8, 1.6),
        z_blur_vox=0.0 if rng.random() < 0.5 else u(0.2, 0.6),
        noise_std=math.exp(u(math.log(15.0), math.log(50.0))),
        noise_sigma_mm=sn,
        noise_band=band,
        noise_band_sigma_mm=sn * u(1.6, 3.0),
        noise_z_corr=u(0.0, 0.5),
        noise_centre_gain=u(0.0, 0.45),
        hu_offset=u(-8.0, 8.0),
        hu_scale=u(0.985, 1.015),
        streaks=tuple(streaks),
    )


def _noise_filter(x: np.ndarray, acq: _Acq, px: float) -> np.ndarray:
    """In-plane noise power spectrum: Gaussian low-pass, optionally minus its low band.

    ``px`` is the pixel size (mm).  Periodic boundaries, so that filtered noise images
    tile without seams.
    """
    sn, sb = acq.noise_sigma_mm / px, acq.noise_band_sigma_mm / px
    n = ndi.gaussian_filter(x, (0, sn, sn), truncate=3.0, mode="wrap")
    if acq.noise_band > 0:
        n -= acq.noise_band * ndi.gaussian_filter(n, (0, sb, sb), truncate=3.0, mode="wrap")
    return n


def _acquire(canvas: _Canvas, B: _Body, pose: _Pose, acq: _Acq, rng: np.random.Generator) -> np.ndarray:
    """Turn the ideal volume into a CT image (``int16`` HU); consumes ``canvas.vol``."""
    g = canvas.grid
    nz, ny, nx = g.shape
    dz, dy, dx = g.spacing
    vol, lab = canvas.vol, canvas.lab
    if acq.z_blur_vox > 0.05 and nz > 1:
        ndi.gaussian_filter1d(vol, acq.z_blur_vox, axis=0, output=vol, truncate=3.0)
    # noise grows with the attenuating cross-section of the slice, and towards the body centre
    area = np.array([np.count_nonzero((lab[k] - np.uint8(1)) <= 1) for k in range(nz)], dtype=np.float64)
    ref = float(np.median(area[area > 0])) if np.any(area > 0) else 1.0
    gain_z = np.clip(np.sqrt(np.maximum(area, 1.0) / ref), 0.85, 1.5).astype(np.float32)
    zmid = float(canvas.zs[nz // 2])
    cx, cy = pose.centre(zmid)
    c, s = math.cos(pose.theta), math.sin(pose.theta)
    X, Y = canvas.xs[None, :] - cx, canvas.ys[:, None] - cy
    rho = _squircle(c * X + s * Y, -s * X + c * Y, B.W, B.Da, B.Dp, B.sq)
    gain_xy = (1.0 + acq.noise_centre_gain * (1.0 - np.clip(rho, 0.0, 1.0) ** 2)).astype(np.float32)
    body_w = np.clip(1.3 - rho, 0.0, 1.0).astype(np.float32)
    # exact variance of the filtered white noise, from the impulse response
    half = int(3 * max(acq.noise_sigma_mm, acq.noise_band_sigma_mm if acq.noise_band > 0 else 0.0) / dx) + 4
    imp = np.zeros((1, 2 * half + 1, 2 * half + 1), dtype=np.float64)
    imp[0, half, half] = 1.0
    norm = np.float32(1.0 / math.sqrt(float((_noise_filter(imp, acq, dx) ** 2).sum())))
    patterns = []
    for st in acq.streaks:
        pat = np.zeros((ny, nx), dtype=np.float32)
        for x0, y0, ang in st.lines:
            d = np.abs((canvas.xs[None, :] - x0) * math.sin(ang) - (canvas.ys[:, None] - y0) * math.cos(ang))
            pat += np.exp(-((d / st.width) ** 2)) - 0.35 * np.exp(-(((d - 2.5 * st.width) / st.width) ** 2))
        patterns.append(pat * body_w)
    rho_z = np.float32(acq.noise_z_corr)
    keep = np.float32(math.sqrt(1.0 - acq.noise_z_corr**2))
    psf = acq.psf_sigma_mm / dx
    s2 = acq.sharpen_sigma_mm / dx
    # noise: each slice sums two randomly shifted images from a bank of periodic noise
    # images (same power spectrum, stationary, no seams), then an AR(1) link along z
    n_bank = 12
    bank = _noise_filter(rng.standard_normal((n_bank, ny, nx), dtype=np.float32), acq, dx)
    bank *= norm * np.float32(math.sqrt(0.5))
    bank = np.tile(bank, (1, 2, 2))
    out = np.empty(g.shape, dtype=np.int16)
    prev: np.ndarray | None = None
    step = 16
    for z0 in range(0, nz, step):
        z1 = min(nz, z0 + step)
        img = vol[z0:z1]
        if psf > 0.05:
            img = ndi.gaussian_filter(img, (0, psf, psf), truncate=3.0)
        if acq.sharpen > 0:
            img += acq.sharpen * (img - ndi.gaussian_filter(img, (0, s2, s2), truncate=3.0))
        n = np.empty(img.shape, dtype=np.float32)
        picks = rng.integers(0, n_bank, (z1 - z0, 2))
        offs = rng.integers(0, (ny, nx), (z1 - z0, 2, 2))
        for i in range(z1 - z0):
            (b1, b2), ((y1, x1), (y2, x2)) = picks[i], offs[i]
            np.add(bank[b1, y1 : y1 + ny, x1 : x1 + nx], bank[b2, y2 : y2 + ny, x2 : x2 + nx], out=n[i])
            if prev is not None:
                n[i] *= keep
                n[i] += rho_z * prev
            prev = n[i]
        prev = n[-1].copy()
        n *= (acq.noise_std * gain_z[z0:z1])[:, None, None]
        n *= gain_xy[None]
        img += n
        zw = canvas.zs[z0:z1]
        for st, pat in zip(acq.streaks, patterns, strict=True):
            amp = st.amp * np.exp(-0.5 * ((zw - st.z) / st.half_width) ** 2)
            if np.abs(amp).max() > 0.5:
                img += amp[:, None, None].astype(np.float32) * pat[None]
        img = img * acq.hu_scale + acq.hu_offset
        out[z0:z1] = np.clip(np.rint(img), HU_MIN, HU_MAX)
    return out
