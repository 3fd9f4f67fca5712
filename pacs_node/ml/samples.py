"""Training samples of one case: patches cut around candidates and nodules.

Each case runs the detector's own front end (:func:`~pacs_node.ml.preprocess.run_front_end`).
Negatives are candidates farther than ``R + ambiguous_mm`` from every nodule (and
outside excluded findings): vessel crossings, bifurcations and the pleura, as the
classifier will meet them.  Positives are the candidates within a nodule's radius
plus ``pos_jitters`` patches per nodule centred at random points near its centre.
Patches are cut from a fine grid resampled with a random scale (spacing jitter).
:func:`fingerprint` names everything that shapes them, so that the patch cache
(:mod:`pacs_node.ml.patchstore`) can be reused by later runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np

from pacs_node.ml.cases import Case, PhantomSet, load_case_volume
from pacs_node.ml.network import TYPE_NAMES
from pacs_node.ml.patches import CHANNEL_NAMES, extract_patches, patch_centres
from pacs_node.ml.preprocess import FrontEndConfig, fine_grid, run_front_end

#: Version of the sampling and of the cache layout; part of every fingerprint.
CACHE_VERSION = 4


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
    channels
        Patch channels stored: 2 (fine, context) or 3 (also wide; see
        :data:`~pacs_node.ml.patches.CHANNEL_NAMES`), as the network takes them.
    """

    patch_size: int = 32
    negatives_per_case: int = 110
    hard_negatives: int = 40
    pos_jitters: int = 10
    jitter_fraction: float = 0.5
    max_jitter_mm: float = 5.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    ambiguous_mm: float = 3.0
    channels: int = 2


def fingerprint(front_end: FrontEndConfig, params: SampleParams, seed: int,
                phantoms: PhantomSet | None = None) -> str:
    """Short hash of everything that shapes a case's cached samples.

    ``phantoms``: the set a generated case comes from; its generation parameters
    (variation included, ``count`` not) enter the hash, so that studies of the same
    seed drawn from another generator setting never reuse each other's samples.
    """
    sample = asdict(params)
    if sample["channels"] == 2:  # caches written before there was a choice stay valid
        del sample["channels"]
    blob = {"v": CACHE_VERSION, "fe": front_end.to_dict(), "sp": sample, "seed": seed}
    if phantoms is not None:
        blob["phantoms"] = phantoms.generation_dict()
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:12]


def case_fingerprint(case: Case, front_end: FrontEndConfig, params: SampleParams, seed: int) -> str:
    """:func:`fingerprint` of one case (with its phantom set for generated cases)."""
    phantoms = case.source[2] if case.source[0] == "phantom" else None
    return fingerprint(front_end, params, seed, phantoms)


def build_case(case: Case, front_end: FrontEndConfig, params: SampleParams, seed: int) -> dict[str, np.ndarray]:
    """Run the front end on one case and cut its training patches.

    Returns
    -------
    dict[str, np.ndarray]
        ``fine``, ``context`` and with 3 channels ``wide`` (``N x P x P x P`` ``int16``
        HU), ``label`` (1 nodule,
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
        out.update({name: np.zeros((0, p, p, p), np.int16) for name in CHANNEL_NAMES[:params.channels]})
        out.update(label=np.zeros(0, np.int8), type=np.zeros(0, np.int8), diameter=np.zeros(0, np.float32),
                   offset=np.zeros((0, 3), np.float32), kind=np.zeros(0, np.int8))
        return out
    idx = grid.world_to_index(np.array(points))
    pc = patch_centres(idx)
    patches = extract_patches(grid, pc, p, dtype=np.int16, channels=params.channels)
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
    out.update(zip(CHANNEL_NAMES, patches))
    out.update(label=np.array(labels, np.int8), type=types, diameter=diameter,
               offset=offset, kind=np.array(kinds, np.int8))
    return out
