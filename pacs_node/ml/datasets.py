"""Training samples: cases (studies with annotated nodules) turned into cached patches.

Sources (:func:`list_cases`)
----------------------------
``luna16``
    A LUNA16-style folder: ``*.mhd`` volumes anywhere below it (``subset0/`` ...),
    ``annotations.csv`` (world LPS mm), optionally ``annotations_types.csv`` (adds
    the nodule type) and ``annotations_excluded.csv`` (findings that are neither
    nodules nor negatives: no negative is taken within their radius).
``dicom``
    Study folders as ``pacs-node phantom`` writes them: ``<study>/series/*.dcm``
    plus ``<study>/truth.json``.
``phantom``
    Synthetic studies generated on the fly from seeds (:class:`PhantomSet`); nothing
    but the cache is written.

Samples (:func:`build_case`)
----------------------------
Each case runs the detector's own front end (:func:`~pacs_node.ml.preprocess.run_front_end`).
Negatives are candidates farther than ``R + ambiguous_mm`` from every nodule (and
outside excluded findings): vessel crossings, bifurcations and the pleura, as the
classifier will meet them.  Positives are the candidates within a nodule's radius
plus ``pos_jitters`` patches per nodule centred at random points near its centre.
Patches are cut from a fine grid resampled with a random scale (spacing jitter).
Per case, the ``int16`` patches and their targets go to one ``.npz`` in the cache,
named by the case and a fingerprint of the parameters, so repeat runs reuse them.
Augmentation that is cheap per batch (axis symmetries, HU offset and scale, noise,
blur and sharpening) happens in :func:`augment` at training time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import highdicom as hd
import numpy as np
import torch

from pacs_node.ml.luna16 import read_luna16_annotations
from pacs_node.ml.network import TYPE_NAMES
from pacs_node.ml.patches import extract_patches, patch_centres
from pacs_node.ml.preprocess import FrontEndConfig, fine_grid, run_front_end

log = logging.getLogger(__name__)

DATA_FORMATS = ("luna16", "dicom", "phantom")
CACHE_VERSION = 3


@dataclass(frozen=True)
class Nodule:
    """One annotated nodule (world LPS mm); ``type`` is ``None`` when unknown."""

    centre_lps_mm: tuple[float, float, float]
    diameter_mm: float
    type: str | None = None

    def __post_init__(self) -> None:
        if not self.diameter_mm > 0:
            raise ValueError(f"diameter_mm must be positive, got {self.diameter_mm}")
        if self.type is not None and self.type not in TYPE_NAMES:
            raise ValueError(f"type must be one of {TYPE_NAMES} or None, got {self.type!r}")


@dataclass(frozen=True)
class PhantomSet:
    """Synthetic training studies: study ``i`` is generated from ``study_seed(seed, i)``.

    Attributes
    ----------
    count
        Number of studies.
    seed
        Seed of the set (see :func:`pacs_node.ml.phantom.study_seed`).
    nodules
        Range (inclusive) of nodules planted per study.
    balanced_fraction
        Fraction of studies whose nodule types cycle through all four types (the rest
        draw types as the generator does, mostly solid).
    varied_fraction
        Fraction of studies with a random matrix (fewer slices, 384 x 384 or 512 x 512,
        partial coverage of the chest) instead of the default geometry.
    shape_zyx, spacing_zyx_mm
        Fixed geometry for every study (small, fast sets for tests); ``None``: as above.
    diameter_range_mm
        Range of nodule diameters (mm).
    """

    count: int
    seed: int
    nodules: tuple[int, int] = (3, 6)
    balanced_fraction: float = 0.5
    varied_fraction: float = 0.2
    shape_zyx: tuple[int, int, int] | None = None
    spacing_zyx_mm: tuple[float, float, float] | None = None
    diameter_range_mm: tuple[float, float] = (3.0, 30.0)


@dataclass(frozen=True)
class Case:
    """One training study: where its volume comes from and its annotations.

    ``source`` is ``("mhd", path)``, ``("dicom", series folder)`` or
    ``("phantom", seed, PhantomSet)``.
    """

    case_id: str
    source: tuple
    nodules: tuple[Nodule, ...]
    excluded: tuple[Nodule, ...] = ()


@dataclass(frozen=True)
class SampleParams:
    """How patches are drawn from a case (mm unless stated).

    Attributes
    ----------
    patch_size
        Patch edge stored (voxels of the fine grid); training crops the centre to the
        network's patch size, which may be smaller by an even number of voxels.
    negatives_per_case
        Most negatives kept per case (a random choice among the candidates, the
        strongest ``hard_negatives`` always in).
    hard_negatives
        Strongest negative candidates always kept.
    pos_jitters
        Extra positive patches per nodule, centred up to ``jitter_fraction`` of the
        radius (at most ``max_jitter_mm``) from the centre.
    scale_range
        Range of the spacing jitter (magnification of the fine grid).
    ambiguous_mm
        Candidates between ``R`` and ``R + ambiguous_mm`` from a nodule are not used.
    """

    patch_size: int = 32
    negatives_per_case: int = 110
    hard_negatives: int = 40
    pos_jitters: int = 10
    jitter_fraction: float = 0.5
    max_jitter_mm: float = 5.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    ambiguous_mm: float = 3.0


def _luna_nodules(rows: Sequence) -> dict[str, list[Nodule]]:
    out: dict[str, list[Nodule]] = {}
    for a in rows:
        t = a.type if a.type in TYPE_NAMES else None
        out.setdefault(a.seriesuid, []).append(Nodule(a.centre_xyz_mm, a.diameter_mm, t))
    return out


def list_cases(data_dir: Path, fmt: str, phantoms: PhantomSet | None = None) -> list[Case]:
    """The cases of a data folder (``luna16``/``dicom``) or of a phantom set (``phantom``).

    Raises
    ------
    ValueError
        If the format is unknown, the folder holds no case or an annotation file is bad.
    """
    if fmt not in DATA_FORMATS:
        raise ValueError(f"fmt must be one of {DATA_FORMATS}, got {fmt!r}")
    data_dir = Path(data_dir)
    if fmt == "phantom":
        if phantoms is None or phantoms.count < 1:
            raise ValueError("fmt 'phantom' needs a PhantomSet with count >= 1")
        from pacs_node.ml.phantom import study_seed

        return [Case(f"phantom-{study_seed(phantoms.seed, i)}", ("phantom", study_seed(phantoms.seed, i), phantoms), ())
                for i in range(phantoms.count)]
    if not data_dir.is_dir():
        raise ValueError(f"data folder {data_dir} does not exist")
    cases: list[Case] = []
    if fmt == "luna16":
        ann = data_dir / "annotations.csv"
        if not ann.is_file():
            raise ValueError(f"{data_dir} has no annotations.csv (LUNA16 layout expected)")
        typed = data_dir / "annotations_types.csv"
        nodules = _luna_nodules(read_luna16_annotations(typed if typed.is_file() else ann))
        excl_path = data_dir / "annotations_excluded.csv"
        excluded = _luna_nodules(read_luna16_annotations(excl_path)) if excl_path.is_file() else {}
        for mhd in sorted(data_dir.rglob("*.mhd")):
            uid = mhd.stem
            cases.append(Case(uid, ("mhd", str(mhd)), tuple(nodules.get(uid, ())), tuple(excluded.get(uid, ()))))
    else:
        for truth in sorted(data_dir.rglob("truth.json")):
            series = truth.parent / "series"
            if not series.is_dir():
                continue
            d = json.loads(truth.read_text())
            nods = tuple(
                Nodule(tuple(float(v) for v in n["centre_xyz_mm"]), float(n["diameter_mm"]),  # type: ignore[arg-type]
                       n.get("type") if n.get("type") in TYPE_NAMES else None)
                for n in d.get("nodules", [])
            )
            cases.append(Case(str(d.get("series_uid") or truth.parent.name), ("dicom", str(series)), nods))
    if not cases:
        raise ValueError(f"no {fmt} studies found under {data_dir}")
    return cases


def _phantom_volume(seed: int, ps: PhantomSet) -> tuple[hd.Volume, tuple[Nodule, ...]]:
    from pacs_node.ml.phantom import NODULE_TYPES, generate_phantom

    rng = np.random.default_rng([seed, 17])
    n = int(rng.integers(ps.nodules[0], ps.nodules[1] + 1))
    types = list(rng.permutation(NODULE_TYPES)) if rng.random() < ps.balanced_fraction else None
    shape = ps.shape_zyx
    if shape is None and rng.random() < ps.varied_fraction:
        side = int(rng.choice([384, 512]))
        shape = (int(rng.integers(60, 220)), side, side)
    p = generate_phantom(seed, shape_zyx=shape, spacing_zyx_mm=ps.spacing_zyx_mm, n_nodules=n, nodule_types=types,
                         diameter_range_mm=ps.diameter_range_mm, keep_labels=False)
    return phantom_volume(p), tuple(Nodule(n.centre_xyz_mm, n.diameter_mm, str(n.type)) for n in p.nodules)


def phantom_volume(phantom: object) -> hd.Volume:
    """A :class:`highdicom.Volume` (``float32`` HU, LPS affine) of a :class:`~pacs_node.ml.phantom.Phantom`."""
    dz, dy, dx = phantom.spacing_zyx_mm  # type: ignore[attr-defined]
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    affine[0, 2], affine[1, 1], affine[2, 0] = dx, dy, dz  # index [z, y, x] -> LPS (x, y, z)
    affine[:3, 3] = phantom.origin_xyz_mm  # type: ignore[attr-defined]
    return hd.Volume(phantom.volume_hu.astype(np.float32), affine, coordinate_system="PATIENT")  # type: ignore[attr-defined]


def load_case_volume(case: Case) -> tuple[hd.Volume, tuple[Nodule, ...]]:
    """The case's HU volume and its nodules."""
    kind = case.source[0]
    if kind == "phantom":
        return _phantom_volume(int(case.source[1]), case.source[2])
    if kind == "mhd":
        from pacs_node.analyze.volume import read_mhd_volume

        return read_mhd_volume(Path(case.source[1])), case.nodules
    from pacs_node.analyze.volume import read_dicom_volume

    return read_dicom_volume(sorted(Path(case.source[1]).glob("*.dcm"))), case.nodules


def fingerprint(front_end: FrontEndConfig, params: SampleParams, seed: int) -> str:
    """Short hash of everything that shapes a case's cached samples."""
    blob = json.dumps({"v": CACHE_VERSION, "fe": front_end.to_dict(), "sp": asdict(params), "seed": seed},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_case(case: Case, front_end: FrontEndConfig, params: SampleParams, seed: int) -> dict[str, np.ndarray]:
    """Run the front end on one case and cut its training patches.

    Returns
    -------
    dict[str, np.ndarray]
        ``fine``, ``context`` (``N x P x P x P`` ``int16`` HU), ``label`` (1 nodule,
        0 not), ``type`` (index into :data:`TYPE_NAMES`, -1 unknown or negative),
        ``diameter`` (apparent mm, 0 for negatives), ``offset`` (``N x 3``, apparent
        mm, nodule centre minus patch centre along the fine grid's z, y, x), ``kind``
        (0 jittered positive, 1 candidate positive, 2 negative), and per-case
        statistics ``n_candidates``, ``n_nodules``, ``n_found``.
    """
    rng = np.random.default_rng([seed, int(hashlib.sha256(case.case_id.encode()).hexdigest()[:8], 16)])
    volume, nodules = load_case_volume(case)
    fe = run_front_end(volume, front_end)
    scale = float(rng.uniform(*params.scale_range))
    grid = fine_grid(fe.oriented, fe.lungs, front_end, scale=scale) if scale != 1.0 else fe.fine
    del volume
    cands = fe.candidates.centres_lps_mm
    centres = np.array([n.centre_lps_mm for n in nodules], dtype=np.float64).reshape(-1, 3)
    radii = np.array([n.diameter_mm / 2 for n in nodules], dtype=np.float64)
    excl_c = np.array([n.centre_lps_mm for n in case.excluded], dtype=np.float64).reshape(-1, 3)
    excl_r = np.array([n.diameter_mm / 2 for n in case.excluded], dtype=np.float64)
    if len(centres) and len(cands):
        d = np.linalg.norm(cands[:, None] - centres[None], axis=2)
        nearest = d.argmin(axis=1)
        rel = d[np.arange(len(cands)), nearest] / radii[nearest]
        dist = d[np.arange(len(cands)), nearest]
        hit = rel <= 1.0
        near = dist <= radii[nearest] + params.ambiguous_mm
    else:
        nearest = np.zeros(len(cands), dtype=int)
        hit = np.zeros(len(cands), dtype=bool)
        near = hit.copy()
    if len(excl_c) and len(cands):
        near |= (np.linalg.norm(cands[:, None] - excl_c[None], axis=2) <= excl_r[None] + params.ambiguous_mm).any(1)
    found = np.unique(nearest[hit]) if hit.any() else np.empty(0, dtype=int)
    neg_idx = np.nonzero(~near)[0]  # candidates are strongest first within each pass
    hard = neg_idx[: params.hard_negatives]
    rest = neg_idx[params.hard_negatives:]
    n_rand = max(0, min(len(rest), params.negatives_per_case - len(hard)))
    negs = np.concatenate([hard, rng.choice(rest, n_rand, replace=False)]) if n_rand else hard
    points: list[np.ndarray] = []
    labels: list[int] = []
    kinds: list[int] = []
    owner: list[int] = []
    for i, c in enumerate(centres):
        r = radii[i]
        jitter_r = min(params.jitter_fraction * r, params.max_jitter_mm)
        for _ in range(params.pos_jitters):
            u = rng.standard_normal(3)
            u *= jitter_r * rng.random() ** (1 / 3) / (np.linalg.norm(u) + 1e-9)
            points.append(c + u)
            labels.append(1)
            kinds.append(0)
            owner.append(i)
    for j in np.nonzero(hit)[0]:
        points.append(cands[j])
        labels.append(1)
        kinds.append(1)
        owner.append(int(nearest[j]))
    for j in negs:
        points.append(cands[j])
        labels.append(0)
        kinds.append(2)
        owner.append(-1)
    p = params.patch_size
    n = len(points)
    out: dict[str, np.ndarray] = {
        "n_candidates": np.array(len(cands)),
        "n_nodules": np.array(len(centres)),
        "n_found": np.array(len(found)),
        "scale": np.array(scale),
    }
    if n == 0:
        out.update(fine=np.zeros((0, p, p, p), np.int16), context=np.zeros((0, p, p, p), np.int16),
                   label=np.zeros(0, np.int8), type=np.zeros(0, np.int8), diameter=np.zeros(0, np.float32),
                   offset=np.zeros((0, 3), np.float32), kind=np.zeros(0, np.int8))
        return out
    idx = grid.world_to_index(np.array(points))
    pc = patch_centres(idx)
    fine, context = extract_patches(grid, pc, p, dtype=np.int16)
    owner_a = np.array(owner)
    offset = np.zeros((n, 3), dtype=np.float32)
    diameter = np.zeros(n, dtype=np.float32)
    types = np.full(n, -1, dtype=np.int8)
    pos = owner_a >= 0
    if pos.any():
        target = grid.world_to_index(centres[owner_a[pos]])
        offset[pos] = (target - (pc[pos] - 0.5)) * front_end.fine_mm
        diameter[pos] = radii[owner_a[pos]] * 2 * scale
        types[pos] = [TYPE_NAMES.index(nodules[o].type) if nodules[o].type in TYPE_NAMES else -1
                      for o in owner_a[pos]]
    out.update(fine=fine, context=context, label=np.array(labels, np.int8), type=types, diameter=diameter,
               offset=offset, kind=np.array(kinds, np.int8))
    return out


def _build_one(args: tuple[Case, FrontEndConfig, SampleParams, int, str]) -> tuple[str, str | None]:
    case, front_end, params, seed, path = args
    torch.set_num_threads(1)
    try:
        arrays = build_case(case, front_end, params, seed)
    except Exception as exc:  # a bad study must not stop the others; reported by the caller
        return path, f"{type(exc).__name__}: {exc}"
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path, None


def build_cache(cases: Sequence[Case], cache_dir: Path, front_end: FrontEndConfig, params: SampleParams,
                seed: int, workers: int = 2) -> list[Path]:
    """Build (or reuse) the cached samples of each case; returns the ``.npz`` paths.

    Cases already cached with the same fingerprint are not rebuilt.  Cases that fail
    (unreadable, no lungs) are logged and left out.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(front_end, params, seed)
    paths = [cache_dir / f"{c.case_id}-{fp}.npz" for c in cases]
    todo = [(c, front_end, params, seed, str(p)) for c, p in zip(cases, paths, strict=True) if not p.is_file()]
    if todo:
        log.info("event=cache_build cases=%d cached=%d workers=%d", len(todo), len(cases) - len(todo), workers)
        done = 0
        if workers > 1:
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(workers, maxtasksperchild=8) as pool:
                results = pool.imap_unordered(_build_one, todo)
                for path, err in results:
                    done += 1
                    _report(path, err, done, len(todo))
        else:
            for item in todo:
                path, err = _build_one(item)
                done += 1
                _report(path, err, done, len(todo))
    return [p for p in paths if p.is_file()]


def _report(path: str, err: str | None, done: int, total: int) -> None:
    if err:
        log.warning("event=case_failed path=%s error=%s", Path(path).name, err)
    else:
        log.info("event=case_cached n=%d/%d path=%s", done, total, Path(path).name)


@dataclass
class PatchSet:
    """All cached samples of some cases, in memory (see :func:`build_case` for the fields)."""

    fine: np.ndarray
    context: np.ndarray
    label: np.ndarray
    type: np.ndarray
    diameter: np.ndarray
    offset: np.ndarray
    kind: np.ndarray
    case_index: np.ndarray
    stats: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.label)

    @classmethod
    def load(cls, paths: Sequence[Path]) -> PatchSet:
        """Concatenate cached cases."""
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("fine", "context", "label", "type", "diameter",
                                                               "offset", "kind", "case_index")}
        stats = {"cases": 0, "nodules": 0, "found": 0, "candidates": 0}
        for i, path in enumerate(paths):
            with np.load(path) as z:
                for k in ("fine", "context", "label", "type", "diameter", "offset", "kind"):
                    parts[k].append(z[k])
                parts["case_index"].append(np.full(len(z["label"]), i, dtype=np.int32))
                stats["cases"] += 1
                stats["nodules"] += int(z["n_nodules"])
                stats["found"] += int(z["n_found"])
                stats["candidates"] += int(z["n_candidates"])
        if not paths:
            raise ValueError("no cached cases to load")
        return cls(**{k: np.concatenate(v) for k, v in parts.items()}, stats=stats)

    def subset(self, mask: np.ndarray) -> PatchSet:
        """The samples where ``mask`` is true."""
        return PatchSet(self.fine[mask], self.context[mask], self.label[mask], self.type[mask],
                        self.diameter[mask], self.offset[mask], self.kind[mask], self.case_index[mask],
                        dict(self.stats))


def center_crop(patches: np.ndarray, size: int) -> np.ndarray:
    """The central ``size``³ of ``N x P x P x P`` patches (``P - size`` even: the centre is kept)."""
    p = patches.shape[-1]
    m = (p - size) // 2
    if m == 0:
        return patches
    return patches[:, m:m + size, m:m + size, m:m + size]


@dataclass(frozen=True)
class AugmentParams:
    """Per-batch augmentation (HU, voxels of the fine grid).

    Attributes
    ----------
    hu_offset
        Uniform HU offset range (+/-).
    hu_scale
        Uniform relative HU scale range (+/-).
    noise_hu
        Range of the standard deviation of added noise (HU); added with probability
        ``noise_p``, half of the time smoothed (correlated).
    blur_p, sharpen_p
        Probabilities of a Gaussian blur (sigma 0.4 to 1.0 voxel) or an unsharp mask.
    """

    hu_offset: float = 30.0
    hu_scale: float = 0.05
    noise_hu: tuple[float, float] = (10.0, 60.0)
    noise_p: float = 0.5
    blur_p: float = 0.2
    sharpen_p: float = 0.15


def _smooth3(x: torch.Tensor, passes: int = 1) -> torch.Tensor:
    """Separable [1, 2, 1] / 4 smoothing of ``B x C x D x H x W`` along the three spatial axes.

    One pass is a Gaussian of about 0.7 voxel; ``n`` passes about ``0.7 sqrt(n)``.
    Replicated borders; no convolution call, so it is cheap on CPU.
    """
    for _ in range(passes):
        for dim in (2, 3, 4):
            n = x.shape[dim]
            lo = torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, n - 1)], dim)
            hi = torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim)
            x = 0.5 * x + 0.25 * (lo + hi)
    return x


#: Standard deviation of white noise after one :func:`_smooth3` pass ((6/16)^(3/2)).
_SMOOTH3_NOISE_STD = (6.0 / 16.0) ** 1.5


def symmetry(x: torch.Tensor, offset: torch.Tensor, perm: Sequence[int], flips: Sequence[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one of the 48 axis symmetries to patches ``C x P x P x P`` and their offset (3,)."""
    x = x.permute(0, 1 + perm[0], 1 + perm[1], 1 + perm[2])
    offset = offset[list(perm)].clone()
    dims = [1 + a for a in range(3) if flips[a]]
    if dims:
        x = torch.flip(x, dims)
        for a in range(3):
            if flips[a]:
                offset[a] = -offset[a]
    return x, offset


def augment(fine: np.ndarray, context: np.ndarray, offset: np.ndarray, rng: np.random.Generator,
            params: AugmentParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented HU patches ``B x 2 x P x P x P`` (``float32``) and their offsets ``B x 3`` (mm)."""
    x = torch.from_numpy(np.stack([fine, context], axis=1).astype(np.float32))
    off = torch.from_numpy(offset.astype(np.float32))
    b = len(x)
    xs, offs = [], []
    for i in range(b):
        perm = tuple(int(v) for v in rng.permutation(3))
        flips = tuple(bool(v) for v in rng.random(3) < 0.5)
        xi, oi = symmetry(x[i], off[i], perm, flips)
        xs.append(xi)
        offs.append(oi)
    x = torch.stack(xs).contiguous()
    off = torch.stack(offs)
    scale = torch.from_numpy(rng.uniform(1 - params.hu_scale, 1 + params.hu_scale, b).astype(np.float32))
    shift = torch.from_numpy(rng.uniform(-params.hu_offset, params.hu_offset, b).astype(np.float32))
    x = x * scale.view(b, 1, 1, 1, 1) + shift.view(b, 1, 1, 1, 1)
    if rng.random() < params.blur_p:
        sel = torch.from_numpy(rng.random(b) < 0.5)
        if sel.any():
            x[sel] = _smooth3(x[sel], int(rng.integers(1, 3)))
    if rng.random() < params.sharpen_p:
        sel = torch.from_numpy(rng.random(b) < 0.5)
        if sel.any():
            a = float(rng.uniform(0.2, 0.7))
            xs_ = x[sel]
            x[sel] = xs_ + a * (xs_ - _smooth3(xs_, int(rng.integers(1, 4))))
    sel = rng.random(b) < params.noise_p
    if sel.any():
        k = int(sel.sum())
        sd = torch.from_numpy(rng.uniform(*params.noise_hu, k).astype(np.float32))
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        noise = torch.randn((k, *x.shape[1:]), generator=gen)
        if rng.random() < 0.5:
            noise = _smooth3(noise) / _SMOOTH3_NOISE_STD  # spatially correlated, same std
        noise[:, 1] *= 0.5  # the context channel averages 8 fine voxels
        x[torch.from_numpy(sel)] += noise * sd.view(-1, 1, 1, 1, 1)
    return x, off


def batches(data: PatchSet, rng: np.random.Generator, batch_size: int, positive_fraction: float,
            steps: int) -> Iterator[np.ndarray]:
    """Index batches with a fixed share of positives (sampled with replacement) and negatives."""
    pos = np.nonzero(data.label == 1)[0]
    neg = np.nonzero(data.label == 0)[0]
    n_pos = max(1, int(round(batch_size * positive_fraction))) if len(pos) else 0
    n_neg = batch_size - n_pos
    neg_order = rng.permutation(neg)
    k = 0
    for _ in range(steps):
        if k + n_neg > len(neg_order):
            neg_order = rng.permutation(neg)
            k = 0
        idx = np.concatenate([rng.choice(pos, n_pos) if n_pos else np.empty(0, dtype=np.int64),
                              neg_order[k:k + n_neg]])
        k += n_neg
        yield idx
