"""CT acquisition: slice profile, motion, point spread, kernel sharpening, correlated
noise, streaks, beam hardening and calibration, applied slab by slab.

The classic acquisition (:func:`_sample_acquisition`) has no slice profile beyond
the voxel, no motion and no cupping; the wide ``acquisition`` family
(:func:`_sample_wide_acquisition`) adds them and widens kernels, dose and streaks.
"""

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
    slice_thickness_mm: float = 0.0  # 0: the voxel's own partial volume only
    breathing: tuple[float, float, float, float] | None = None  # shift y, x (mm), world z of its top, weight
    cardiac: tuple[float, float, float, float, float, float] | None = None  # x, y, z (mm), radius, shift (mm), weight
    cupping_hu: float = 0.0
    beam_hardening_bands: int = 0

    @property
    def kernel(self) -> str:
        if self.sharpen > 0.8:
            return "very-sharp"
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
            "low_dose": bool(self.noise_std > 55.0),
            "motion_breathing_mm": round(math.hypot(*self.breathing[:2]), 2) if self.breathing else 0.0,
            "motion_cardiac_mm": self.cardiac[4] if self.cardiac else 0.0,
            "cupping_hu": self.cupping_hu,
            "beam_hardening_bands": self.beam_hardening_bands,
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


def _sample_wide_acquisition(
    rng: np.random.Generator, grid: _Grid, pose: _Pose, B: _Body
) -> _Acq:
    """Draw a wide acquisition: kernels soft to very sharp (overshoot), dose down to low
    dose, slice thickness 0.6 to 3 mm (often thicker than the spacing), breathing and
    cardiac motion, beam-hardening bands between dense structures, cupping and streaks.

    ``rng`` is the wide ``acquisition`` family's stream (after the grid draws).
    """
    u = rng.uniform
    dz = grid.spacing[0]
    mode = int(rng.choice(3, p=[0.3, 0.3, 0.4]))
    ratio, t_abs = u(1.0, 2.0), u(2.0, 3.0)
    thickness = (dz, dz * ratio, t_abs)[mode]
    thickness = float(np.clip(thickness, 0.6, 3.0))
    psf = u(0.2, 1.6)
    sharpen = 0.0 if rng.random() < 0.3 else u(0.1, 1.5)
    sn = u(0.25, 1.3)
    band = 0.0 if rng.random() < 0.3 else u(0.2, 0.95)
    z_lo, z_hi = float(grid.origin[2]), float(grid.origin[2] + (grid.shape[0] - 1) * grid.spacing[0])
    streaks = []
    for _ in range(int(rng.choice([0, 1, 2, 3, 5], p=[0.4, 0.25, 0.15, 0.1, 0.1]))):
        zc = z_hi - u(0.0, 0.25) * (z_hi - z_lo) if rng.random() < 0.5 else u(z_lo, z_hi)
        cx, cy = pose.centre(zc)
        n = int(rng.integers(2, 9))
        lines = np.stack([cx + rng.normal(0.0, 0.25 * B.W, n), cy + rng.normal(0.0, 0.25 * B.Dp, n),
                          rng.normal(0.0, math.radians(30.0), n) + (math.pi / 2 if rng.random() < 0.3 else 0.0)], axis=1)
        streaks.append(_Streak(zc, u(4.0, 30.0), -u(30.0, 220.0), u(1.0, 4.5), lines))
    # beam hardening: dark bands along the lines joining dense structures (shoulders, spine, sternum)
    n_bh = int(rng.choice([0, 1, 2, 3], p=[0.4, 0.3, 0.2, 0.1]))
    for _ in range(n_bh):
        zb = u(0.55, 1.05) * B.H
        zc = zb + pose.zoff
        cx, cy = pose.centre(zc)
        c, s = math.cos(pose.theta), math.sin(pose.theta)
        if rng.random() < 0.6:  # shoulder to shoulder
            pa, pb = (-0.9 * B.W, 0.1 * B.Dp), (0.9 * B.W, 0.1 * B.Dp)
        else:  # spine to sternum or to a shoulder
            pa = (0.0, B.b_vb)
            pb = (0.0, -B.Dac) if rng.random() < 0.5 else (float(rng.choice([-0.9, 0.9])) * B.W, 0.1 * B.Dp)
        (xa, ya), (xb, yb) = ((cx + c * a_ - s * b_, cy + s * a_ + c * b_) for a_, b_ in (pa, pb))
        ang = math.atan2(yb - ya, xb - xa)
        lines = np.array([[0.5 * (xa + xb), 0.5 * (ya + yb), ang]])
        streaks.append(_Streak(zc, u(10.0, 40.0), -u(20.0, 80.0), u(3.0, 9.0), lines))
    breathing = None
    if rng.random() < 0.3:
        amp, ang = u(2.0, 9.0), rng.normal(math.pi / 2, 0.5)
        breathing = (amp * math.sin(ang), amp * math.cos(ang), pose.zoff + u(20.0, 70.0), u(0.3, 0.5))
    cardiac = None
    if rng.random() < 0.35:
        a0, b0, z0, h1 = B.heart[0], B.heart[1], B.heart[2], B.heart[3]
        xyz = pose.to_world(np.array([[a0, b0, z0]]))[0]
        cardiac = (float(xyz[0]), float(xyz[1]), float(xyz[2]), 1.3 * h1, u(1.5, 4.5), u(0.3, 0.5))
    return _Acq(
        psf_sigma_mm=psf,
        sharpen=sharpen,
        sharpen_sigma_mm=u(0.6, 2.2),
        z_blur_vox=0.0 if rng.random() < 0.5 else u(0.2, 0.6),
        noise_std=math.exp(u(math.log(8.0), math.log(110.0))),
        noise_sigma_mm=sn,
        noise_band=band,
        noise_band_sigma_mm=sn * u(1.4, 3.5),
        noise_z_corr=u(0.0, 0.8),
        noise_centre_gain=u(0.0, 0.8),
        hu_offset=u(-20.0, 20.0),
        hu_scale=u(0.97, 1.03),
        streaks=tuple(streaks),
        slice_thickness_mm=thickness,
        breathing=breathing,
        cardiac=cardiac,
        cupping_hu=float(rng.choice([0.0, u(5.0, 45.0)], p=[0.5, 0.5])),
        beam_hardening_bands=n_bh,
    )


def _slice_profile(thickness_mm: float, dz: float) -> np.ndarray | None:
    """Weights along z (per slice) that widen the voxel's own profile to ``thickness_mm``.

    The ideal volume already averages over one slice spacing; the rest of the slice
    sensitivity profile is a box of width ``thickness - dz`` with soft edges.
    ``None`` if the thickness is not larger than the spacing.
    """
    extra = thickness_mm - dz
    if extra <= 0.1 * dz:
        return None
    half = int(math.ceil(0.5 * extra / dz + 1.0))
    k = np.arange(-half, half + 1) * dz
    # overlap of each slice's interval with [-extra/2, extra/2], softened by a Gaussian edge
    lo, hi = np.maximum(k - 0.5 * dz, -0.5 * extra), np.minimum(k + 0.5 * dz, 0.5 * extra)
    w = np.clip(hi - lo, 0.0, None) + 1e-3
    w = np.convolve(w, [0.15, 0.7, 0.15], mode="same")
    return (w / w.sum()).astype(np.float32)


def _motion(img: np.ndarray, zw: np.ndarray, acq: _Acq, canvas: _Canvas) -> np.ndarray:
    """Breathing (doubling at the lung bases) and cardiac pulsation (near the heart) of a slab."""
    dy, dx = canvas.grid.spacing[1], canvas.grid.spacing[2]
    if acq.breathing is not None:
        sy, sx, z_top, wgt = acq.breathing
        w = wgt * np.clip((z_top - zw) / 30.0, 0.0, 1.0)
        if w.max() > 0.01:
            moved = ndi.shift(img, (0.0, sy / dy, sx / dx), order=1, mode="nearest")
            img = img + w[:, None, None].astype(np.float32) * (moved - img)
    if acq.cardiac is not None:
        x0, y0, z0, rad, shift, wgt = acq.cardiac
        wz = wgt * np.exp(-(((zw - z0) / rad) ** 2))
        if wz.max() > 0.01:
            r2 = ((canvas.xs[None, :] - x0) ** 2 + (canvas.ys[:, None] - y0) ** 2) / (rad * rad)
            m = np.exp(-r2).astype(np.float32)
            moved = ndi.shift(img, (0.0, 0.3 * shift / dy, shift / dx), order=1, mode="nearest")
            img = img + wz[:, None, None].astype(np.float32) * m[None] * (moved - img)
    return img


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
    profile = _slice_profile(acq.slice_thickness_mm, dz) if acq.slice_thickness_mm > 0 and nz > 1 else None
    if profile is not None:
        ndi.convolve1d(vol, profile, axis=0, output=vol, mode="nearest")
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
    cup = None
    if acq.cupping_hu > 0:
        cup = (-acq.cupping_hu * (1.0 - np.clip(rho, 0.0, 1.0) ** 2)).astype(np.float32)
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
        if acq.breathing is not None or acq.cardiac is not None:
            img = _motion(img, canvas.zs[z0:z1], acq, canvas)
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
        if cup is not None:
            img += cup[None]
        img = img * acq.hu_scale + acq.hu_offset
        out[z0:z1] = np.clip(np.rint(img), HU_MIN, HU_MAX)
    return out
