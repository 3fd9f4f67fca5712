"""Analytic anatomy drawn slice by slice (body wall, lungs, bones, heart, diaphragm,
table), then the mediastinal tubes (great vessels, trachea, main bronchi, clavicles)."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from pacs_node.ml.phantom._geometry import _Canvas, _Pose, _soft, _squircle
from pacs_node.ml.phantom._lungmodel import _LungModel
from pacs_node.ml.phantom._study import _Body, _Look
from pacs_node.ml.phantom._tubes import _paint_segment, _polyline
from pacs_node.ml.phantom._vessels import _Roots
from pacs_node.ml.phantom.truth import Tissue


def _dome(B: _Body, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Height ``zb`` (mm) of the diaphragm under the point ``(a, b)``."""
    sides = []
    for a0, top in ((B.m0 - 0.45 * B.Wc, 0.0), (B.m0 + 0.45 * B.Wc, -B.dome_l)):
        lat = ((a - a0) * (1.0 / (0.55 * B.Wc))) ** 2
        post = (np.maximum(b, 0.0) * (1.0 / B.Dpc)) ** 2
        ant = (np.minimum(b, 0.0) * (1.0 / B.Dac)) ** 2
        sides.append(top - B.dome_lat * lat - B.dome_post * post - B.dome_ant * ant)
    w = np.clip((a - B.m0) * (1.0 / 20.0) + 0.5, 0.0, 1.0)
    return sides[0] + w * (sides[1] - sides[0])


def _apex(B: _Body, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Height ``zb`` (mm) of the lung apex surface above ``(a, b)``."""
    la = (np.abs(a - B.m0) - B.apx_lat) * (1.0 / (0.5 * B.Wc))
    lb = (b - 0.15 * B.Dpc) * (1.0 / B.Dpc)
    return B.H - B.apx_fall * (la * la + 0.6 * lb * lb)


def _heart_q(B: _Body, a: np.ndarray, b: np.ndarray, zb: float) -> np.ndarray | None:
    """Normalised ellipsoid radius of the heart in slice ``zb`` (``None`` if not cut)."""
    a0, b0, z0, h1, h2, h3, alpha, sha, shb = B.heart
    t = (zb - z0) / h3
    if abs(t) >= 1.0:
        return None
    ac = a0 + sha * (z0 - zb)
    bc = b0 - shb * (z0 - zb)
    c, s = math.cos(alpha), math.sin(alpha)
    da, db = a - ac, b - bc
    u = (c * da - s * db) * (1.0 / h1)
    v = (s * da + c * db) * (1.0 / h2)
    return np.sqrt(u * u + v * v + t * t)


def _slice_hu(
    B: _Body, L: _Look, a: np.ndarray, b: np.ndarray, zb: float, tex: np.ndarray, px: float, ez: float,
    model: _LungModel | None = None, zw: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """HU and labels of one axial slice (body-frame coordinates ``a``, ``b`` in mm).

    ``px`` is the pixel size and ``ez`` the slice spacing (mm).  With a lung ``model``
    (any of parenchyma, pleura or style not classic) the lung density comes from it,
    ``zw`` being the slice's world z (mm); without, the classic lung is drawn.
    """
    ez_pv = ez if model is None else model.dome_width(ez)
    r = np.sqrt(a * a + b * b) + 1e-3
    sinp = b / r  # +1 straight posterior, -1 straight anterior
    rb = math.sqrt(B.W * 0.5 * (B.Da + B.Dp))
    # body outline, skin, subcutaneous fat, muscle
    rho = _squircle(a, b, B.W, B.Da, B.Dp, B.sq)
    f_body = _soft((1.0 - rho) * rb, px)
    f_in = _soft((1.0 - _squircle(a, b, B.W - B.skin, B.Da - B.skin, B.Dp - B.skin, B.sq)) * rb, px)
    if B.breasts is not None:
        ba, bb, bz, br = B.breasts
        qz = ((zb - bz) / (0.8 * br)) ** 2
        if qz < 1.0:
            for sgn in (-1.0, 1.0):
                q = np.sqrt(((a - sgn * ba) * (1.0 / br)) ** 2 + ((b - bb) * (1.0 / br)) ** 2 + qz)
                f_b = _soft((1.0 - q) * br, px)
                f_body = np.maximum(f_body, f_b)
                f_in = np.maximum(f_in, _soft((1.0 - q) * br - B.skin, px))
    hu = -1000.0 + f_body * (L.skin + 1000.0)
    lab = (f_body > 0.5).astype(np.uint8)
    fat = L.fat + L.fat_tex * tex
    if B.breasts is not None:
        fat = fat + np.clip(tex - 0.6, 0.0, 1.0) * (L.muscle - L.fat) * 0.8 * (b < -0.5 * B.Da)
    hu += f_in * (fat - hu)
    f_mus = _soft((1.0 - _squircle(a, b, B.Wf, B.Daf, B.Dpf, B.sq)) * rb, px)
    hu += f_mus * (L.muscle + L.soft_tex * tex - hu)
    # pleura: a rounded outline narrowing towards the apex, with a slow wobble
    top = np.clip((zb - 0.3 * B.H) / (0.7 * B.H), 0.0, 1.0) ** 1.5
    sw = 1.0 - B.top_narrow * top
    sa = 1.0 - 0.5 * B.top_narrow * top
    ca, cb = a * (1.0 / r), sinp
    amp = [p[0] * math.sin(p[1] * zb + p[2]) for p in B.pert]
    wob = 1.0 + amp[0] * ca + amp[1] * cb + amp[2] * ca * cb + amp[3] * (ca * ca - cb * cb)
    rho_p = _squircle(a, b, B.Wc * sw, B.Dac * sa, B.Dpc, B.sqc) * wob
    d_pl = (rho_p - 1.0) * r / np.maximum(rho_p, 0.05)  # mm outside the pleura
    # ribs: bands around the cavity that descend anteriorly
    t = (B.z_rib1 - zb - B.rib_drop * 0.5 * (1.0 - sinp)) * (1.0 / B.rib_pitch)
    k = np.rint(t)
    dv = (t - k) * B.rib_pitch
    dr = d_pl - 0.5 * B.tr
    q = np.sqrt((dv * (2.0 / B.rib_h)) ** 2 + (dr * (1.0 / B.rib_t)) ** 2)
    lowest = np.where(k >= 10, (k - 10) * 0.3, np.where(k >= 7, -0.75 + (k - 7) * 0.2, -1.1))
    absa = np.abs(a)
    ok = (k >= 0) & (k <= 11) & (sinp > lowest) & (absa > B.ws + 3.0) & ((absa > B.rva + 8.0) | (sinp < 0.5))
    f_rib = _soft((1.0 - q) * B.rib_t, px) * ok
    cart = sinp < -0.72
    rib_hu = np.where(cart, L.cartilage, L.marrow + (L.cortex - L.marrow) * np.clip((q - 0.45) * 1.8, 0.0, 1.0))
    hu += f_rib * (rib_hu - hu)
    lab[(f_rib > 0.5) & ~cart] = Tissue.BONE
    # sternum and scapulae
    if B.z_st[1] < zb < B.z_st[0] + B.H - 20.0:
        f_st = _soft(B.ws - absa, px) * _soft(np.minimum(d_pl - 1.0, B.tr + 4.0 - d_pl), px) * (sinp < -0.3)
        st_hu = np.where((d_pl < 3.0) | (d_pl > B.tr + 1.5) | (absa > B.ws - 2.0), 0.8 * L.cortex, L.marrow)
        hu += f_st * (st_hu - hu)
        lab[f_st > 0.5] = Tissue.BONE
    if B.z_sc[0] < zb < B.z_sc[1]:
        dd = d_pl - (B.tr + B.sc_gap)
        f_sc = _soft(np.minimum(dd, B.sc_t - dd), 0.7 * px) * ((sinp > 0.15) & (sinp < 0.85))
        f_sc *= min(1.0, (zb - B.z_sc[0]) / 15.0)
        hu += f_sc * (0.75 * L.cortex - hu)
        lab[f_sc > 0.5] = Tissue.BONE
    # pleural cavity: mediastinal fat above, abdomen below the diaphragm
    f_pl = _soft(-d_pl, px)
    zd = _dome(B, a, b)
    f_dome = _soft(zb - zd, ez_pv)
    liver_w = _soft(B.liver_a - a, 6.0)
    abd = L.spleen + liver_w * (L.liver - L.spleen) + L.soft_tex * tex
    if B.gas is not None:
        depth, ga0, ga1, gb1 = B.gas
        f_gas = _soft(depth - (zd - zb), ez) * _soft(np.minimum(a - ga0, ga1 - a), px) * _soft(gb1 - b, px)
        abd += f_gas * (-995.0 - abd)
    zt = _apex(B, a, b)
    f_apex = _soft(zt - zb, ez_pv)
    cav = L.med_fat + L.fat_tex * tex
    cav += (1.0 - f_apex) * (0.5 * (L.muscle + L.med_fat) - cav)
    cav += (1.0 - f_dome) * (abd - cav)
    hu += f_pl * (cav - hu)
    # lungs; the mediastinum is narrow in front (anterior junction), widest in the
    # middle; behind the front of the spine only the spine separates the lungs
    hw = float(np.interp(zb, B.hw_z, B.hw_v))
    front = np.clip(-b * (1.0 / B.Dac), 0.0, 1.0)
    post = _soft(b - (B.b_vb - B.rvb - 6.0), 8.0)
    k_r, k_l, m_amp, m_wave, m_phase = B.med_shape
    widen = np.where(a < B.m0, k_r, k_l) * (1.0 + m_amp * np.sin(b * m_wave + m_phase + 0.02 * zb))
    hw_b = hw * widen * (1.0 - 0.6 * front * np.sqrt(front)) * (1.0 - post) + post * min(hw, 0.8 * B.rva)
    f_med = _soft(hw_b - np.abs(a - B.m0), px)
    qh = _heart_q(B, a, b, zb)
    if qh is not None:
        f_heart = _soft((1.0 - qh) * B.heart[4], px)
        f_med = np.maximum(f_med, f_heart)
    f_sp = _soft(B.rva + 5.0 - absa, px) * _soft(b - (B.b_vb - B.rvb - 3.0), px)
    f_lung = f_pl * f_dome * f_apex * (1.0 - np.maximum(f_med, f_sp))
    f_thick = None
    if model is not None:
        lung, f_thick = model.slice(a, b, zb, zw, tex, d_pl, sinp, px, ez)
    else:
        lung = _classic_lung(B, L, a, b, zb, tex, px, ez, d_pl, sinp)
    hu += f_lung * (lung - hu)
    lab[f_lung > 0.5] = Tissue.LUNG
    if f_thick is not None and model is not None:
        f_th = f_lung * f_thick
        hu += f_th * (model.Pl.thick_hu + L.soft_tex * tex - hu)
        lab[f_th > 0.5] = Tissue.SOFT
    # heart: pericardial fat rim, myocardium, blood pool
    if qh is not None:
        dh = (1.0 - qh) * B.heart[4]
        hu += _soft(dh - B.fat_rim, px) * f_pl * (L.myo + L.soft_tex * tex - hu)
        hu += _soft(dh - B.fat_rim - B.myo_t, px) * f_pl * (L.blood - hu)
    _spine(B, L, a, b, zb, absa, px, ez, hu, lab)
    return hu, lab


def _classic_lung(
    B: _Body, L: _Look, a: np.ndarray, b: np.ndarray, zb: float, tex: np.ndarray, px: float, ez: float,
    d_pl: np.ndarray, sinp: np.ndarray,
) -> np.ndarray:
    """The classic lung density (HU) of one slice: gradient, texture, dependent density,
    fissures and emphysema."""
    lung = L.lung + L.lung_grad * np.clip(b * (1.0 / B.Dpc), -1.0, 1.0) + L.lung_tex * tex
    if L.dep_amp > 0:
        lung += L.dep_amp * np.exp(np.minimum(d_pl, 0.0) * (1.0 / L.dep_len)) * np.clip(sinp, 0.0, 1.0) ** 2
    if L.fissure_amp > 0:
        for side, (z0, sb, sa_) in enumerate(B.fissures):
            zf = z0 + sb * b + sa_ * (a - B.m0)
            cosg = 1.0 / math.sqrt(1.0 + sb * sb + sa_ * sa_)
            w = math.sqrt(0.35**2 + (0.5 * ez * cosg) ** 2 + (0.5 * px) ** 2 * (1 - cosg * cosg))
            fis = np.exp(-(((zb - zf) * cosg) * (1.0 / w)) ** 2) * (0.35 / w)
            on_side = (a > B.m0) if side == 1 else (a < B.m0)
            if side == 2:
                on_side = on_side & (b < 0.1 * B.Dpc)
            lung += L.fissure_amp * fis * on_side
    if L.emph > 0:
        lung += L.emph * np.clip((tex - L.emph_thr) * 2.5, 0.0, 1.0) * (-990.0 - lung)
    return lung


def _spine(
    B: _Body, L: _Look, a: np.ndarray, b: np.ndarray, zb: float, absa: np.ndarray, px: float, ez: float,
    hu: np.ndarray, lab: np.ndarray,
) -> None:
    """Draw the spine into one slice's ``hu`` and ``lab`` (in place)."""
    # spine: vertebral body with discs, canal, arch, spinous and transverse processes
    rv = np.sqrt((a * (1.0 / B.rva)) ** 2 + ((b - B.b_vb) * (1.0 / B.rvb)) ** 2)
    tv = (zb - B.v_z0) / B.v_pitch
    f_disc = float(np.clip((0.5 * B.disc_h - abs(tv - round(tv)) * B.v_pitch) / ez + 0.5, 0.0, 1.0))
    vb_hu = L.marrow * 0.9 + (L.cortex - 0.9 * L.marrow) * np.clip((rv - 0.8) * 5.0, 0.0, 1.0)
    vb_hu += f_disc * (L.disc - vb_hu)
    f_vb = _soft((1.0 - rv) * B.rvb, px)
    hu += f_vb * (vb_hu - hu)
    lab[f_vb > 0.5] = Tissue.BONE if f_disc < 0.5 else Tissue.SOFT
    bc = B.b_vb + B.rvb + B.rc + 1.5
    dc = np.sqrt(a * a + (b - bc) ** 2)
    f_arch = _soft(np.minimum(B.rc + 5.0 - dc, dc - B.rc), px) * (1.0 - 0.6 * f_disc)
    f_spn = _soft(3.5 - absa, px) * _soft(np.minimum(b - bc, bc + B.rc + B.sp_len - b), px)
    f_tp = _soft(4.5 - np.abs(b - bc + 2.0), px) * _soft(np.minimum(absa - B.rc, B.rc + 24.0 - absa), px)
    f_post = np.maximum(np.maximum(f_arch, f_spn), f_tp * (1.0 - f_disc))
    hu += f_post * (0.7 * L.cortex - hu)
    lab[f_post > 0.5] = Tissue.BONE
    f_canal = _soft(B.rc - dc, px)
    hu += f_canal * (L.csf - hu)
    lab[f_canal > 0.5] = Tissue.SOFT


def _upsample2(c: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear 2x upsampling of a 2D array sampled at even fine indices, cropped to ``shape``."""
    ny, nx = c.shape
    up = np.empty((2 * ny - 1, 2 * nx - 1), dtype=c.dtype)
    up[::2, ::2] = c
    up[1::2, ::2] = c[:-1] + c[1:]
    up[1::2, ::2] *= 0.5
    up[:, 1::2] = up[:, :-1:2] + up[:, 2::2]
    up[:, 1::2] *= 0.5
    return up[: shape[0], : shape[1]]


def _render_base(
    canvas: _Canvas, pose: _Pose, B: _Body, L: _Look, rng: np.random.Generator, model: _LungModel | None = None
) -> None:
    """Fill the canvas with the analytic anatomy (body, lungs, mediastinum, bones, table).

    The lung density comes from ``model`` if given (:mod:`._lungmodel`), else it is
    the classic one.

    With pixels under 1 mm the anatomy is evaluated on a grid twice as coarse in-plane
    and upsampled bilinearly (labels by nearest voxel): its boundaries are smooth on
    the scale of a coarse pixel anyway, and this quarters the cost.
    """
    g = canvas.grid
    nz, ny, nx = g.shape
    dz, dy, dx = g.spacing
    f = 2 if max(dx, dy) < 1.0 else 1
    px = f * max(dx, dy)
    # in-plane bounding box of the body over all slices
    reach = max(B.W, B.Da, B.Dp) + 8.0 + (B.breasts[3] if B.breasts else 0.0)
    cs = [pose.centre(float(z)) for z in (canvas.zs[0], canvas.zs[-1])]
    lo = np.array([min(c[0] for c in cs) - reach, min(c[1] for c in cs) - reach, canvas.zs[0]])
    hi = np.array([max(c[0] for c in cs) + reach, max(c[1] for c in cs) + reach, canvas.zs[-1]])
    win = g.window(lo, hi)
    if win is None:
        return
    _, sy, sx = win
    fine = (sy.stop - sy.start, sx.stop - sx.start)
    ncy, ncx = (fine[0] - 1) // f + 2, (fine[1] - 1) // f + 2
    X = (canvas.xs[sx.start] + f * dx * np.arange(ncx, dtype=np.float32))[None, :]
    Y = (canvas.ys[sy.start] + f * dy * np.arange(ncy, dtype=np.float32))[:, None]
    c, s = math.cos(pose.theta), math.sin(pose.theta)
    # lazily generated texture planes every `step` mm, blended with variance-keeping weights
    step = 5.0
    sig = (L.tex_sigma_mm / (f * dy), L.tex_sigma_mm / (f * dx))
    planes: dict[int, np.ndarray] = {}
    made = [0]
    if model is not None:
        model.start((ncy, ncx), px, float(canvas.zs[0]))

    def plane(j: int) -> np.ndarray:
        while made[0] <= j:
            p = ndi.gaussian_filter(rng.standard_normal((ncy, ncx), dtype=np.float32), sig)
            planes[made[0]] = p / (p.std() + 1e-6)
            planes.pop(made[0] - 3, None)
            made[0] += 1
        return planes[j]

    for k in range(nz):
        zw = float(canvas.zs[k])
        zb = zw - pose.zoff
        cx, cy = pose.centre(zw)
        ddx, ddy = X - cx, Y - cy
        a = c * ddx + s * ddy
        b = -s * ddx + c * ddy
        tpos = (zw - float(canvas.zs[0])) / step
        j = int(tpos)
        w = (tpos - j) * (math.pi / 2)
        tex = math.cos(w) * plane(j) + math.sin(w) * plane(j + 1)
        hu, lab = _slice_hu(B, L, a, b, zb, tex, px, dz, model, zw)
        if f == 1:
            canvas.vol[k, sy, sx] = hu[: fine[0], : fine[1]]
            canvas.lab[k, sy, sx] = lab[: fine[0], : fine[1]]
        else:
            canvas.vol[k, sy, sx] = _upsample2(hu, fine)
            canvas.lab[k, sy, sx] = lab.repeat(2, axis=0).repeat(2, axis=1)[: fine[0], : fine[1]]
    if L.table is not None:
        _render_table(canvas, pose, B, L)


def _render_table(canvas: _Canvas, pose: _Pose, B: _Body, L: _Look) -> None:
    """Mattress and carbon table top under the patient, wherever the slice is air."""
    assert L.table is not None
    gap, pad, plate, curv, plate_hu = L.table
    cx, cy = pose.centre(float(canvas.zs[len(canvas.zs) // 2]))
    y_back = cy + B.Dp * math.cos(pose.theta) + gap
    X = canvas.xs[None, :]
    Y = canvas.ys[:, None]
    yt = y_back - curv * (X - cx) ** 2
    inside_x = np.abs(X - cx) < B.W + 40.0
    f_pad = _soft(np.minimum(Y - yt, yt + pad - Y), canvas.grid.spacing[1]) * inside_x
    f_plate = _soft(np.minimum(Y - yt - pad, yt + pad + plate - Y), canvas.grid.spacing[1]) * inside_x
    pattern = -1000.0 + f_pad * 180.0 + f_plate * (plate_hu + 1000.0)
    rows = np.nonzero((f_pad + f_plate).max(axis=1) > 0)[0]
    if len(rows) == 0:
        return
    sl = slice(int(rows[0]), int(rows[-1]) + 1)
    pat = pattern[sl].astype(np.float32)
    for k in range(canvas.grid.shape[0]):
        v = canvas.vol[k, sl]
        air = canvas.lab[k, sl] == Tissue.AIR
        v[air] = np.maximum(v[air], pat[air])
        canvas.lab[k, sl][air & (pat > -990.0)] = Tissue.TABLE


def _render_mediastinum(canvas: _Canvas, pose: _Pose, B: _Body, L: _Look) -> _Roots:
    """Great vessels, trachea, main bronchi, oesophagus and clavicles."""
    top = B.scan_zb[1] + 30.0
    m0 = B.m0
    b_vf = B.b_vb - B.rvb  # front of the vertebral body
    b_es = b_vf - 9.0
    r_tr = 8.0 + 3.0 * (B.W / 195.0)
    b_tr = b_es - 8.0 - r_tr
    zc = B.z_car
    hw_mid = float(B.hw_v[2])
    soft = (Tissue.LUNG, Tissue.SOFT, Tissue.AIR)

    def tube(pts: list[list[float]], radii: list[float], hu: float, label: int, mode: str = "over") -> None:
        for seg in _polyline(pose, pts, radii):
            _paint_segment(canvas, seg, hu, mode, label, soft)

    # oesophagus, aorta and its arch branches, superior vena cava
    es = [[m0 + 4.0, b_es, top], [m0 + 8.0, b_es, zc - 40.0], [m0 + 25.0, b_es - 12.0, -25.0]]
    tube(es, [8.0, 8.0, 9.0], L.muscle, Tissue.SOFT)
    r_asc, r_desc = 13.0 + 4.0 * (B.W / 195.0), 10.0 + 3.0 * (B.W / 195.0)
    a_desc = B.rva + 0.75 * r_desc
    aorta = [
        [m0 - 6.0, -0.3 * B.Dac, zc - 55.0],
        [m0 - 12.0, -0.28 * B.Dac, B.z_arch - 12.0],
        [m0 - 4.0, b_tr - 16.0, B.z_arch],
        [m0 + 14.0, b_tr + 4.0, B.z_arch - 2.0],
        [a_desc, b_vf + 2.0, B.z_arch - 20.0],
        [a_desc, b_vf + 4.0, zc - 60.0],
        [a_desc - 6.0, b_vf + 2.0, -40.0],
    ]
    tube(aorta, [r_asc, r_asc, r_asc * 0.9, r_desc * 1.05, r_desc, r_desc, r_desc * 0.95], L.aorta, Tissue.SOFT)
    for da, db, rr in ((-14.0, -10.0, 6.5), (-2.0, -4.0, 5.0), (8.0, 2.0, 5.5)):
        branch = [[m0 + da * 0.5, b_tr - 14.0 + db, B.z_arch], [m0 + da * 1.6, b_tr - 10.0 + db, top]]
        tube(branch, [rr, rr], L.aorta, Tissue.SOFT)
    a_svc = m0 - 0.75 * hw_mid
    tube([[a_svc, -0.12 * B.Dac, top], [a_svc + 2.0, -0.18 * B.Dac, zc - 45.0]], [10.0, 10.5], L.vein, Tissue.SOFT)
    # trachea and main bronchi (wall, then air)
    rb_end = np.array([m0 - hw_mid - 6.0, b_tr + 8.0, zc - 18.0])
    lb_end = np.array([m0 + hw_mid + 8.0, b_tr + 10.0, zc - 30.0])
    car = [m0, b_tr, zc]
    for r_add, hu in ((0.0, L.airway_wall), (-1.8, -1000.0)):
        tube([[m0, b_tr, top], car], [r_tr + r_add, r_tr + r_add], hu, Tissue.AIRWAY)
        tube([car, list(rb_end)], [7.5 + r_add, 6.5 + r_add], hu, Tissue.AIRWAY)
        tube([car, list(lb_end)], [7.0 + r_add, 6.0 + r_add], hu, Tissue.AIRWAY)
    # pulmonary trunk and arteries
    bif = [m0 + 8.0, b_tr - 24.0, zc - 18.0]
    tube([[m0 + 14.0, -0.5 * B.Dac, zc - 65.0], bif], [13.0, 13.0], L.artery, Tissue.SOFT)
    ra_end = np.array([m0 - hw_mid - 4.0, b_tr - 6.0, zc - 24.0])
    la_end = np.array([m0 + hw_mid + 6.0, b_tr + 14.0, zc - 14.0])
    tube([bif, [m0 - 10.0, b_tr - 14.0, zc - 22.0], list(ra_end)], [11.0, 10.0, 9.0], L.artery, Tissue.SOFT)
    tube([bif, [m0 + 24.0, b_tr + 2.0, zc - 6.0], list(la_end)], [11.0, 10.0, 9.0], L.artery, Tissue.SOFT)
    # pulmonary veins from the left atrium
    b_la = B.heart[1] + 0.55 * B.heart[4]
    hw_low = float(B.hw_v[0])
    rv_end = np.array([m0 - hw_low - 12.0, b_la + 4.0, zc - 62.0])
    lv_end = np.array([m0 + hw_low + 14.0, b_la + 6.0, zc - 55.0])
    tube([[m0 + 4.0, b_la, zc - 58.0], list(rv_end)], [8.0, 7.0], L.vein, Tissue.SOFT)
    tube([[m0 + 4.0, b_la, zc - 58.0], list(lv_end)], [8.0, 7.0], L.vein, Tissue.SOFT)
    # clavicles
    zcl = B.H + 5.0
    for sgn in (-1.0, 1.0):
        cl = [[sgn * 22.0, -B.Dac - 0.6 * B.tr, zcl], [sgn * 0.55 * B.W, -B.Dac - 4.0, zcl + 12.0],
              [sgn * 0.85 * B.W, -0.2 * B.Dp, zcl + 28.0]]
        for r_add, hu in ((0.0, 0.8 * L.cortex), (-2.2, L.marrow)):
            for seg in _polyline(pose, cl, [7.0 + r_add] * 3):
                _paint_segment(canvas, seg, hu, "over", Tissue.BONE, (Tissue.SOFT, Tissue.LUNG, Tissue.AIR))
    w = pose.to_world(np.array([ra_end, la_end, rv_end, lv_end, rb_end, lb_end]))
    return _Roots(artery=(w[0], w[1]), vein=(w[2], w[3]), bronchus=(w[4], w[5]))
