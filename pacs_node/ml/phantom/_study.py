"""Per-study parameters: voxel grid, patient pose, anatomy sizes and tissue look."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pacs_node.ml.phantom._geometry import _Grid, _Pose


@dataclass
class _Body:
    """Anatomy of one patient in the body frame (all lengths in mm)."""

    W: float  # body half-width
    Da: float  # body half-depth, anterior
    Dp: float  # body half-depth, posterior
    sq: float  # body squareness
    skin: float
    Wf: float  # inner outline of the subcutaneous fat (half-width, -depths)
    Daf: float
    Dpf: float
    Wc: float  # pleural cavity (half-width, -depths, squareness)
    Dac: float
    Dpc: float
    sqc: float
    tr: float  # thickness of the rib layer outside the pleura
    H: float  # lung apex above the right dome
    dome_l: float  # left dome below the right one
    dome_lat: float
    dome_post: float
    dome_ant: float
    top_narrow: float  # narrowing of the cavity towards the apex (fraction)
    apx_lat: float  # lung apex centres |a - m0|, and its fall-off
    apx_fall: float
    pert: tuple[tuple[float, float, float], ...]  # amplitude, frequency (rad/mm), phase of the outline wobble
    m0: float  # mediastinal midline
    hw_z: np.ndarray  # mediastinal half-width knots (zb) and values
    hw_v: np.ndarray
    med_shape: tuple[float, float, float, float, float]  # right/left width factors, wobble amplitude, rad/mm, phase
    z_car: float
    z_arch: float
    heart: tuple[float, ...]  # a0, b0, z0, h1, h2, h3, alpha, shear_a, shear_b
    fat_rim: float
    myo_t: float
    rva: float  # vertebral body half-width and half-depth
    rvb: float
    b_vb: float
    v_pitch: float
    v_z0: float
    disc_h: float
    rc: float  # spinal canal radius
    sp_len: float  # spinous process length
    rib_pitch: float
    rib_drop: float
    rib_h: float
    rib_t: float
    z_rib1: float
    ws: float  # sternum half-width
    z_st: tuple[float, float]
    z_sc: tuple[float, float]  # scapulae
    sc_gap: float
    sc_t: float
    liver_a: float
    gas: tuple[float, float, float, float] | None  # depth, a0, a1, b1 of the stomach bubble
    breasts: tuple[float, float, float, float] | None  # a, b, zb, radius
    fissures: tuple[tuple[float, float, float], ...]  # zb0, slope_b, slope_a: right/left major, right minor
    scan_zb: tuple[float, float]  # body-frame z range of the scan


@dataclass
class _Look:
    """Tissue attenuation (HU) and structure densities of one patient."""

    contrast: bool
    skin: float
    fat: float
    muscle: float
    med_fat: float
    liver: float
    spleen: float
    lung: float
    lung_grad: float
    lung_tex: float
    fat_tex: float
    soft_tex: float
    tex_sigma_mm: float
    dep_amp: float
    dep_len: float
    emph: float
    emph_thr: float
    fissure_amp: float
    artery: float
    vein: float
    aorta: float
    myo: float
    blood: float
    marrow: float
    cortex: float
    cartilage: float
    disc: float
    csf: float
    airway_wall: float
    r_leaf: float
    gamma: float
    vessel_density: float
    bronchus_r_min: float
    table: tuple[float, float, float, float, float] | None  # y_top, pad, plate, curvature, plate HU


_SLICE_SPACINGS = (0.625, 0.75, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5)
_SLICE_WEIGHTS = (0.14, 0.05, 0.06, 0.15, 0.25, 0.08, 0.12, 0.15)
#: slice spacings (mm) of the wide ``acquisition`` family, and how often each is drawn
_WIDE_SLICE_SPACINGS = (0.5, 0.6, 0.625, 0.75, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
_WIDE_SLICE_WEIGHTS = (0.06, 0.06, 0.1, 0.06, 0.06, 0.14, 0.14, 0.08, 0.12, 0.1, 0.08)


def _draw_wide_body(rng: np.random.Generator) -> dict[str, float]:
    """Wide ``body`` family: habitus, lung shape, diaphragm (incl. high domes), heart, mediastinum.

    Lengths in mm; ``*_scale`` are factors on the classic sizes.
    """
    u = rng.uniform
    return {
        "W": u(122.0, 210.0),  # body half-width
        "d_ratio": u(0.62, 0.92),  # half-depth / half-width
        "H": u(150.0, 270.0),  # apex above the right dome: low values are high domes
        "rec": u(25.0, 95.0),  # depth of the posterior costophrenic recess
        "tf_log": u(math.log(1.5), math.log(45.0)),  # subcutaneous fat (mm, log)
        "sq": u(0.05, 0.8),
        "sqc": u(0.0, 0.5),
        "dome_l": u(-15.0, 40.0),  # left dome below the right (negative: higher)
        "dome_lat": u(8.0, 65.0),
        "dome_ant": u(6.0, 45.0),
        "top_narrow": u(0.15, 0.6),
        "apx_fall": u(30.0, 90.0),
        "pert_amp": u(0.0, 0.08),
        "m0": u(-16.0, 20.0),
        "med_scale": u(0.7, 1.45),
        "heart_scale": u(0.75, 1.4),
        "car_frac": u(0.5, 0.72),
    }


def _draw_wide_grid(rng: np.random.Generator) -> tuple[float, float]:
    """Wide ``acquisition`` family: slice spacing (mm) and pixel spacing (mm, 0.5 to 0.98)."""
    dz = float(rng.choice(_WIDE_SLICE_SPACINGS, p=_WIDE_SLICE_WEIGHTS))
    return dz, float(rng.uniform(0.5, 0.98))


def _sample_study(
    rng: np.random.Generator,
    shape_zyx: tuple[int, int, int] | None,
    spacing_zyx_mm: tuple[float, float, float] | None,
    rng_body: np.random.Generator | None = None,
    rng_grid: np.random.Generator | None = None,
) -> tuple[_Grid, _Pose, _Body, _Look]:
    """Draw the geometry, the pose, the anatomy and the tissue look of one study.

    ``rng`` is the classic stream and is consumed the same way whatever else is
    given.  With ``rng_body`` (the wide ``body`` family's stream) the body habitus,
    lung shape, diaphragm, heart and mediastinum come from wide ranges; with
    ``rng_grid`` (the wide ``acquisition`` family's stream) the slice spacing (0.5
    to 3 mm) and pixel spacing (0.5 to 0.98 mm) are drawn widely when the caller
    fixed neither shape nor spacing.
    """
    u = rng.uniform
    wb = _draw_wide_body(rng_body) if rng_body is not None else None
    wg = _draw_wide_grid(rng_grid) if rng_grid is not None else None
    # ---- raw body size (mm)
    W = u(128.0, 195.0)
    D = W * u(0.62, 0.86)
    H = u(170.0, 245.0) * (W / 160.0) ** 0.3
    rec = u(40.0, 75.0)
    if wb is not None:
        W = wb["W"]
        D = W * wb["d_ratio"]
        H = wb["H"] * (W / 160.0) ** 0.3
        rec = wb["rec"]
    top_m, bot_m = u(10.0, 50.0), u(5.0, 45.0)
    zb_top, zb_bot = H + top_m, -rec - bot_m
    extent = zb_top - zb_bot
    # ---- grid
    if spacing_zyx_mm is not None:
        dz, dy, dx = (float(v) for v in spacing_zyx_mm)
        if min(dz, dy, dx) <= 0:
            raise ValueError(f"spacing_zyx_mm must be positive, got {spacing_zyx_mm}")
    if shape_zyx is not None:
        nz, ny, nx = (int(v) for v in shape_zyx)
        if min(nz, ny, nx) < 8:
            raise ValueError(f"shape_zyx must be at least 8 voxels per axis, got {shape_zyx}")
    margin = u(15.0, 90.0)
    if spacing_zyx_mm is None:
        if shape_zyx is None:
            nx = ny = 512
            dz = float(rng.choice(_SLICE_SPACINGS, p=_SLICE_WEIGHTS))
            if wg is not None:
                dz = wg[0]
            nz = int(np.clip(round(extent / dz) + 1, 100, 400))
            dx = float(np.clip((2 * W + margin) / nx, 0.6, 0.9))
            if wg is not None:
                dx = float(np.clip(max(wg[1], (2 * W + 12.0) / nx), 0.5, 0.98))
        else:
            dx = (2 * W + margin) / nx
            dz = extent / max(nz - 1, 1)
        dy = dx
    elif shape_zyx is None:
        nx = ny = 512
        nz = int(round(extent / dz)) + 1
    fov_x, fov_y = nx * dx, ny * dy
    # shrink the body (in-plane) when the field of view is too small for it
    scale = min(1.0, 0.485 * fov_x / W, 0.45 * fov_y / D)
    W, D = W * scale, D * scale
    Da, Dp = D * u(0.95, 1.08), D * u(0.92, 1.04)
    # ---- body wall (mm)
    skin = u(1.5, 2.5)
    tf = math.exp(u(math.log(3.0), math.log(32.0))) * scale
    if wb is not None:
        tf = math.exp(wb["tf_log"]) * scale
    tfl, tfa, tfp = tf * u(1.0, 1.6), tf * u(0.6, 1.2), tf * u(0.5, 1.0)
    tml, tma, tmp = u(6.0, 14.0) * scale, u(10.0, 22.0) * scale, u(22.0, 36.0) * scale
    tr = u(9.0, 13.0) * scale
    Wc = W - skin - tfl - tml - tr
    Dac = Da - skin - tfa - tma - tr
    Dpc = Dp - skin - tfp - tmp - tr
    # keep a reasonable cavity for very fat patients
    Wc, Dac, Dpc = max(Wc, 0.62 * W), max(Dac, 0.5 * Da), max(Dpc, 0.45 * Dp)
    Wf = min(W - skin - tfl, Wc + tr + 4.0)
    Daf = min(Da - skin - tfa, Dac + tr + 6.0)
    Dpf = min(Dp - skin - tfp, Dpc + tr + 10.0)
    Wf, Daf, Dpf = max(Wf, Wc + tr + 2.0), max(Daf, Dac + tr + 2.0), max(Dpf, Dpc + tr + 4.0)
    # ---- spine
    rva, rvb = u(17.0, 23.0) * scale, u(14.0, 19.0) * scale
    b_vb = Dpc - rvb - u(4.0, 14.0) * scale
    # ---- mediastinum and heart
    m0 = u(-6.0, 10.0)
    z_car = H * u(0.58, 0.68)
    z_arch = z_car + u(18.0, 32.0)
    hw_low, hw_mid, hw_up = u(18.0, 30.0) * scale, u(32.0, 46.0) * scale, u(22.0, 32.0) * scale
    dome_l = u(5.0, 25.0)
    h3 = u(42.0, 58.0) * scale ** 0.5
    k_heart = 1.0
    if wb is not None:
        m0, z_car, dome_l = wb["m0"], H * wb["car_frac"], wb["dome_l"]
        z_arch = z_car + (z_arch - H * 0.63)  # same arch offset, new carina
        ms, k_heart = wb["med_scale"], wb["heart_scale"]
        hw_low, hw_mid, hw_up = hw_low * ms, hw_mid * ms, hw_up * ms
        h3 *= k_heart
    heart = tuple(
        float(v)
        for v in (
            m0 + u(15.0, 35.0) * scale * k_heart,
            -Dac * u(0.1, 0.35),
            -dome_l + 0.85 * h3,
            u(52.0, 70.0) * scale * k_heart,
            u(42.0, 55.0) * scale * k_heart,
            h3,
            math.radians(u(25.0, 50.0)),
            u(0.15, 0.45),
            u(0.05, 0.3),
        )
    )
    hw_z = np.array([-60.0, z_car - 45, z_car - 5, z_arch + 8, z_arch + 35, H + 80])
    hw_v = np.array([hw_low, hw_low, hw_mid, hw_mid, hw_up, hw_up])
    # ---- ribs
    rib_pitch = (H + 10.0) / u(7.6, 8.6)
    rib_drop = u(55.0, 95.0)
    z_rib1 = H + u(0.0, 15.0)
    # ---- others
    gas = None
    if rng.random() < 0.55:
        gas = (u(8.0, 35.0), m0 + u(15.0, 40.0), m0 + u(70.0, 110.0) * scale, u(-0.1, 0.5) * Dpc)
    breasts = None
    if rng.random() < 0.3:
        breasts = (0.45 * W, -Da + u(5.0, 25.0), z_car - u(60.0, 120.0), u(35.0, 75.0) * scale)
    fissures = (
        (u(45.0, 90.0), u(0.6, 1.2), u(-0.2, 0.2)),
        (u(55.0, 100.0), u(0.6, 1.2), u(-0.2, 0.2)),
        (z_car - u(25.0, 55.0), u(-0.1, 0.1), u(-0.1, 0.1)),
    )
    pert = tuple((u(0.0, 0.04), u(0.01, 0.05), u(0.0, 6.3)) for _ in range(4))
    if wb is not None:
        pert = tuple((p[0] / 0.04 * wb["pert_amp"], p[1], p[2]) for p in pert)
    # ---- scan range (body frame)
    span = (nz - 1) * dz
    if span >= extent:
        zb_lo = zb_bot - (span - extent) * u(0.3, 0.7)
    else:
        lo, hi = -rec, max(-rec, 0.92 * H - span)
        zb_lo = u(lo, hi)
    shape_w: dict[str, float] = {}
    if wb is not None:
        shape_w = {k: wb[k] for k in ("sq", "sqc", "dome_lat", "dome_ant", "top_narrow", "apx_fall")}
    body = _Body(
        W=W, Da=Da, Dp=Dp, sq=u(0.1, 0.65), skin=skin,
        Wf=Wf, Daf=Daf, Dpf=Dpf,
        Wc=Wc, Dac=Dac, Dpc=Dpc, sqc=u(0.0, 0.35), tr=tr,
        H=H, dome_l=dome_l, dome_lat=u(20.0, 45.0), dome_post=rec, dome_ant=u(12.0, 30.0),
        top_narrow=u(0.3, 0.5), apx_lat=u(0.42, 0.55) * Wc, apx_fall=u(40.0, 70.0), pert=pert,
        m0=m0, hw_z=hw_z, hw_v=hw_v, z_car=z_car, z_arch=z_arch,
        med_shape=(u(0.8, 1.1), u(0.9, 1.2), u(0.05, 0.2), u(0.03, 0.08), u(0.0, 6.3)),
        heart=heart, fat_rim=u(2.0, 6.0), myo_t=u(8.0, 13.0),
        rva=rva, rvb=rvb, b_vb=b_vb, v_pitch=u(22.0, 28.0) * (H / 210.0), v_z0=u(0.0, 25.0),
        disc_h=u(4.0, 7.0), rc=u(6.5, 8.5), sp_len=u(22.0, 35.0) * scale,
        rib_pitch=rib_pitch, rib_drop=rib_drop, rib_h=u(8.0, 12.0), rib_t=u(2.6, 3.6), z_rib1=z_rib1,
        ws=u(12.0, 18.0), z_st=(u(10.0, 40.0), z_rib1 - u(15.0, 35.0)),
        z_sc=(H - u(110.0, 150.0), H + 60.0), sc_gap=u(3.0, 10.0), sc_t=u(3.0, 6.0),
        liver_a=m0 + u(10.0, 40.0), gas=gas, breasts=breasts, fissures=fissures,
        scan_zb=(zb_lo, zb_lo + span),
    )
    if shape_w:
        body.sq, body.sqc, body.dome_lat, body.dome_ant = shape_w["sq"], shape_w["sqc"], shape_w["dome_lat"], \
            shape_w["dome_ant"]
        body.top_narrow, body.apx_fall = shape_w["top_narrow"], shape_w["apx_fall"] * (body.Wc / 120.0) ** 0.5
    # ---- look (HU)
    contrast = bool(rng.random() < 0.2)
    blood = u(35.0, 50.0)
    table = None
    if rng.random() < 0.85:
        table = (u(0.0, 8.0), u(8.0, 45.0), u(6.0, 14.0), u(0.0, 0.0015), u(120.0, 350.0))
    look = _Look(
        contrast=contrast,
        skin=u(20.0, 50.0),
        fat=u(-110.0, -75.0),
        muscle=u(38.0, 58.0),
        med_fat=u(-105.0, -60.0),
        liver=u(95.0, 125.0) if contrast else u(48.0, 66.0),
        spleen=u(90.0, 120.0) if contrast else u(38.0, 50.0),
        lung=u(-905.0, -840.0),
        lung_grad=u(5.0, 45.0),
        lung_tex=u(6.0, 22.0),
        fat_tex=u(3.0, 10.0),
        soft_tex=u(2.0, 7.0),
        tex_sigma_mm=u(1.0, 2.6),
        dep_amp=float(rng.choice([0.0, u(20.0, 80.0), u(80.0, 250.0)], p=[0.45, 0.35, 0.2])),
        dep_len=u(3.0, 12.0),
        emph=float(rng.choice([0.0, u(0.3, 0.9)], p=[0.7, 0.3])),
        emph_thr=u(1.2, 2.0),
        fissure_amp=u(0.0, 350.0),
        artery=u(170.0, 380.0) if contrast else blood,
        vein=u(120.0, 260.0) if contrast else blood,
        aorta=u(140.0, 320.0) if contrast else blood,
        myo=u(80.0, 120.0) if contrast else u(38.0, 52.0),
        blood=u(140.0, 320.0) if contrast else blood,
        marrow=u(180.0, 330.0),
        cortex=u(650.0, 1100.0),
        cartilage=u(70.0, 160.0),
        disc=u(60.0, 100.0),
        csf=u(5.0, 25.0),
        airway_wall=u(10.0, 45.0),
        r_leaf=u(0.35, 0.6),
        gamma=u(2.6, 3.0),
        vessel_density=u(0.6, 1.5),
        bronchus_r_min=u(0.9, 1.5),
        table=table,
    )
    # ---- grid origin and pose
    ox = -(nx - 1) * dx / 2 + u(-15.0, 15.0)
    oy = -(ny - 1) * dy / 2 + u(-15.0, 15.0)
    oz = round(u(-450.0, 50.0), 2)
    slack_x = max(0.0, fov_x / 2 - W - 4.0)
    slack_y = max(0.0, fov_y / 2 - 0.5 * (Da + Dp) - 6.0)
    cx = ox + (nx - 1) * dx / 2 + u(-1.0, 1.0) * min(slack_x, 30.0)
    cy = oy + (ny - 1) * dy / 2 + (Da - Dp) / 2 + u(-1.0, 0.6) * min(slack_y, 35.0)
    pose = _Pose(
        cx=cx,
        cy=cy,
        tx=u(-0.03, 0.03),
        ty=u(-0.03, 0.03),
        theta=math.radians(float(np.clip(rng.normal(0.0, 3.5), -9.0, 9.0))),
        zoff=oz - zb_lo,
    )
    grid = _Grid(shape=(nz, ny, nx), spacing=(dz, dy, dx), origin=(round(ox, 3), round(oy, 3), oz))
    return grid, pose, body, look
