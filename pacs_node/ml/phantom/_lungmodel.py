"""The lung density of one axial slice when the parenchyma, the pleura or the style is
not classic: density and gradients, the style's texture, emphysema, dependent and
subpleural density, fissures, pleural thickening and dome partial volume.

Coordinates are the body frame ``(a, b, zb)`` (mm) of :mod:`._geometry`; densities HU.
With the classic parenchyma, pleura and style the base renderer does not use this
module at all (the classic study stays bit-identical).
"""

from __future__ import annotations

import math

import numpy as np

from pacs_node.ml.phantom._geometry import _soft
from pacs_node.ml.phantom._parenchyma import _Parenchyma
from pacs_node.ml.phantom._pleura import _Pleura
from pacs_node.ml.phantom._study import _Body
from pacs_node.ml.phantom._texture import _Lobular, _Mottled, _PlaneStack

#: Most the mottled texture brightens the lung (HU, soft cap).
MOTTLED_CAP_HU = 80.0


class _LungModel:
    """Lung HU of each slice, for one study.

    Parameters
    ----------
    P, Pl
        Parenchyma and pleura of the study (classic or wide).
    B
        The study's anatomy.
    style
        ``"classic"``, ``"lobular"`` or ``"mottled"``: which texture the lung gets.
    rng_style
        Stream of the style's own draws and texture planes.
    rng_par
        Stream of the parenchyma's extra texture scales (used only if they are on).
    rng_pleura
        Stream of the fissure gaps (used only if fissures are incomplete).
    """

    def __init__(
        self, P: _Parenchyma, Pl: _Pleura, B: _Body, style: str, rng_style: np.random.Generator,
        rng_par: np.random.Generator, rng_pleura: np.random.Generator,
    ) -> None:
        self.P, self.Pl, self.B, self.style = P, Pl, B, style
        self._rng_style, self._rng_par, self._rng_pleura = rng_style, rng_par, rng_pleura
        u = rng_style.uniform
        # the style's own parameters, drawn first so they do not depend on the grid
        self.style_params: dict[str, float] = {}
        if style == "lobular":
            self.style_params = {
                "cell_mm": u(10.0, 22.0), "septum_hu_mm": u(25.0, 90.0), "dot_hu": u(60.0, 200.0),
                "dot_r_mm": u(0.4, 0.9), "warp_mm": u(1.5, 4.0), "fine_sigma_mm": u(0.5, 1.0),
                "fine_share": u(0.3, 0.7),
            }
        elif style == "mottled":
            self.style_params = {"hurst": u(0.2, 1.0), "skew": u(0.4, 0.9), "gain": u(1.5, 2.5)}
        self._stacks: dict[str, object] = {}

    def start(self, shape: tuple[int, int], px_mm: float, z0_mm: float) -> None:
        """Set the in-plane pixel grid (shape, pixel size in mm) and the first slice's world z (mm)."""
        sp = self.style_params
        st: dict[str, object] = {}
        if self.style == "lobular":
            st["lobular"] = _Lobular(
                self._rng_style, shape, px_mm, z0_mm, cell_mm=sp["cell_mm"], septum_hu_mm=sp["septum_hu_mm"],
                dot_hu=sp["dot_hu"], dot_r_mm=sp["dot_r_mm"], warp_mm=sp["warp_mm"],
            )
            s = sp["fine_sigma_mm"] / px_mm
            st["fine"] = _PlaneStack(self._rng_style, shape, (s, s), max(1.0, 2.0 * sp["fine_sigma_mm"]), z0_mm)
        elif self.style == "mottled":
            st["mottled"] = _Mottled(self._rng_style, shape, px_mm, z0_mm, hurst=sp["hurst"], skew=sp["skew"])
        for key, amp, sig in (("tex2", self.P.tex2_amp, self.P.tex2_sigma_mm),
                              ("tex3", self.P.tex3_amp, self.P.tex3_sigma_mm)):
            if amp > 0:
                st[key] = _PlaneStack(self._rng_par, shape, (sig / px_mm,) * 2, 1.5 * sig, z0_mm)
        if self.Pl.fissure_gap > 0 and self.Pl.fissure_amp > 0:
            st["gap"] = _PlaneStack(self._rng_pleura, shape, (15.0 / px_mm,) * 2, 20.0, z0_mm)
        self._stacks = st

    def dome_width(self, ez: float) -> float:
        """Width (mm) of the partial-volume transition over the dome and apex for slice spacing ``ez``."""
        return math.sqrt(ez * ez + self.Pl.dome_pv_mm**2)

    def _texture(self, a: np.ndarray, b: np.ndarray, zb: float, zw: float, tex: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """HU of the style's texture, and the unit-variance fine field that emphysema thresholds."""
        P, st = self.P, self._stacks
        if self.style == "lobular":
            fine = st["fine"].at(zw)  # type: ignore[attr-defined]
            sh = self.style_params["fine_share"]
            return P.tex_amp * sh * fine + st["lobular"].at(a, b, zb, zw), fine  # type: ignore[attr-defined]
        if self.style == "mottled":
            m = st["mottled"].at(zw)  # type: ignore[attr-defined]
            t = P.tex_amp * self.style_params["gain"] * m
            # soft cap on the bright tail: clumps stay fainter than the faintest ground glass
            # (100 HU above the lung), so no unlabelled nodule-like blotch is drawn
            return np.where(t > 0, MOTTLED_CAP_HU * np.tanh(t * (1.0 / MOTTLED_CAP_HU)), t), m
        return P.tex_amp * tex, tex

    def slice(
        self, a: np.ndarray, b: np.ndarray, zb: float, zw: float, tex: np.ndarray, d_pl: np.ndarray,
        sinp: np.ndarray, px: float, ez: float,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Lung HU of one slice and the pleural-thickening occupancy (``None`` if none).

        ``a``, ``b`` are body-frame coordinates (mm), ``zb`` and ``zw`` the slice's body
        and world z (mm), ``tex`` the classic unit texture, ``d_pl`` the distance (mm)
        outside the pleura, ``sinp`` the sine of the posterior angle, ``px`` the pixel
        and ``ez`` the slice spacing (mm).
        """
        P, Pl, B, st = self.P, self.Pl, self.B, self._stacks
        t_hu, fine = self._texture(a, b, zb, zw, tex)
        lung = P.hu + 0.5 * P.grad_ap * np.clip(b * (1.0 / B.Dpc), -1.0, 1.0) + t_hu
        if P.grad_cc:
            lung = lung + P.grad_cc * 0.01 * (B.H - zb)
        for key, amp in (("tex2", P.tex2_amp), ("tex3", P.tex3_amp)):
            if key in st:
                lung = lung + amp * st[key].at(zw)  # type: ignore[attr-defined]
        near = np.exp(np.minimum(d_pl, 0.0) * (1.0 / max(P.dep_len, 0.5)))
        if P.dep_amp > 0:
            lung = lung + P.dep_amp * near * np.clip(sinp, 0.0, 1.0) ** 2
        if Pl.rim_hu > 0:
            lung = lung + Pl.rim_hu * np.exp(np.minimum(d_pl, 0.0) * (1.0 / Pl.rim_mm))
        if Pl.fissure_amp > 0:
            lung = lung + Pl.fissure_amp * self._fissures(a, b, zb, zw, px, ez)
        if P.emph > 0:
            w = P.emph * (1.0 - P.emph_upper + P.emph_upper * float(np.clip(zb / B.H, 0.0, 1.0)))
            lung = lung + w * np.clip((fine - P.emph_thr) * 2.5, 0.0, 1.0) * (-990.0 - lung)
        f_thick = None
        if Pl.thick_mm > 0 and Pl.thick_z[0] < zb < Pl.thick_z[1]:
            ang = np.arctan2(b, a)
            da = np.abs(np.angle(np.exp(1j * (ang - Pl.thick_angle))))
            t = Pl.thick_mm * np.sqrt(np.clip(1.0 - da * (1.0 / Pl.thick_span), 0.0, 1.0))
            f_thick = _soft(t + d_pl, px) * (t > 0.2)
        return lung, f_thick

    def _fissures(self, a: np.ndarray, b: np.ndarray, zb: float, zw: float, px: float, ez: float) -> np.ndarray:
        """Fissure profile (1 at the centre of a fully visible fissure of the classic width)."""
        B, Pl = self.B, self.Pl
        out = np.zeros(np.broadcast_shapes(a.shape, b.shape), dtype=np.float32)
        w0 = Pl.fissure_w_mm
        for side, (z0, sb, sa_) in enumerate(Pl.fissures):
            zf = z0 + sb * b + sa_ * (a - B.m0)
            cosg = 1.0 / math.sqrt(1.0 + sb * sb + sa_ * sa_)
            w = math.sqrt(w0**2 + (0.5 * ez * cosg) ** 2 + (0.5 * px) ** 2 * (1 - cosg * cosg))
            fis = np.exp(-(((zb - zf) * cosg) * (1.0 / w)) ** 2) * (w0 / w)
            on_side = (a > B.m0) if side == 1 else (a < B.m0)
            if side == 2:
                on_side = on_side & (b < 0.1 * B.Dpc)
            out += fis * on_side
        if "gap" in self._stacks:
            g = self._stacks["gap"].at(zw)  # type: ignore[attr-defined]
            out *= np.clip((g - (Pl.fissure_gap - 0.5) * 2.5) * 2.0 + 0.5, 0.0, 1.0)
        return out
