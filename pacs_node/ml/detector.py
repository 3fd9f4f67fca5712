"""Lung nodule detector: a model folder in, findings in patient LPS mm out.

:meth:`Detector.load` reads a model folder (:mod:`pacs_node.ml.modelcard`); nothing
is fetched from a network.  :meth:`Detector.run` takes a CT volume as
:mod:`pacs_node.imaging.volume` builds it (any slice order, orientation, spacing)
and runs: the front end (:mod:`pacs_node.ml.preprocess`: orientation, lung mask,
fine grid, candidates), the CNN on every candidate in batches, merging of
candidates that point at the same nodule (greedy by score, radius half the
predicted diameter), measurement (:mod:`pacs_node.ml.measure`), and conversion of
each centre back to patient coordinates through the fine grid's exact affine.
Every step is timed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import highdicom as hd
import numpy as np
import torch

from pacs_node.imaging.findings import Finding, NoduleType
from pacs_node.ml.canonical import Grid
from pacs_node.ml.lungs import LungMask
from pacs_node.ml.measure import measure_nodule
from pacs_node.ml.modelcard import ModelCard, ModelError, read_model_card, sha256_file
from pacs_node.ml.network import TYPE_NAMES, NoduleNet, fused_for_inference, normalise_hu
from pacs_node.ml.patches import HalfGrid, extract_patches, patch_centres
from pacs_node.ml.preprocess import FrontEnd, run_front_end

log = logging.getLogger(__name__)

#: Axis flips (of the patch axes z, y, x) averaged at inference, by their number; the
#: patch centre lies between the middle voxels, so every flip keeps it in place.
FLIP_SETS: dict[int, tuple[tuple[int, ...], ...]] = {
    1: ((),),
    2: ((), (2,)),
    4: ((), (0,), (1,), (2,)),
    8: ((), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)),
}


@dataclass(frozen=True, eq=False)
class Scored:
    """Network outputs for candidates (arrays of length ``N``; positions in LPS mm)."""

    centres_lps_mm: np.ndarray
    score: np.ndarray
    type_prob: np.ndarray
    diameter_mm: np.ndarray


@dataclass(frozen=True, eq=False)
class Detection:
    """Result of :meth:`Detector.run`.

    Attributes
    ----------
    findings
        Merged and measured findings, highest score first.
    timings_s
        Wall time per step (s): ``lung_mask``, ``resample``, ``candidates``,
        ``classify``, ``merge``, ``measure`` and ``total``.
    n_candidates
        Candidates the classifier scored.
    lung_ml
        Volume of the filled lung mask (mL).
    candidates_lps_mm
        ``N x 3`` front-end candidate centres (patient LPS, mm) before the CNN, in the
        order of ``scored``; ``None`` when not recorded.
    scored
        The CNN's outputs for every candidate (refined centres LPS mm, score, type
        probabilities, diameter mm), before merging and thresholding.
    lungs
        The lung masks; ``lungs.region`` is the grid nodule centres are searched in.

    The last three exist for evaluation (:mod:`pacs_node.ml.stages`): they tell at
    which step of the pipeline a nodule was lost.
    """

    findings: list[Finding]
    timings_s: dict[str, float]
    n_candidates: int
    lung_ml: float
    candidates_lps_mm: np.ndarray | None = None
    scored: Scored | None = None
    lungs: LungMask | None = None


class Detector:
    """A loaded model, ready to detect nodules.  Build it with :meth:`load`.

    Inference runs a copy of :attr:`model` with its BatchNorms folded into the
    convolutions (:func:`~pacs_node.ml.network.fused_for_inference`), in channels-last
    layout on the CPU; it is made here, so later changes to :attr:`model` do not reach it.
    """

    def __init__(self, card: ModelCard, model: NoduleNet, device: str = "cpu", batch_size: int = 64) -> None:
        self.card = card
        self.model = model.eval().to(device)
        self.device = device
        self.batch_size = batch_size
        self._layout = torch.channels_last_3d if torch.device(device).type == "cpu" else torch.contiguous_format
        self._net = fused_for_inference(self.model).to(memory_format=self._layout)

    @property
    def name(self) -> str:
        """The model's name, as its card gives it."""
        return self.card.name

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def synthetic_data(self) -> bool:
        """True when the model was trained on our synthetic phantoms (reports then say so)."""
        return self.card.extra.get("training", {}).get("data_format", "phantom") == "phantom"

    @classmethod
    def load(cls, model_dir: Path, device: str = "cpu", verify_checksum: bool = True) -> Detector:
        """Load a model folder (``model.toml`` + weights).

        Raises
        ------
        ModelError
            If a file is missing, the card is malformed, the weights' checksum differs
            from the card, or the weights do not fit the architecture the card describes.
        """
        model_dir = Path(model_dir)
        card = read_model_card(model_dir)
        weights = model_dir / card.weights_file
        if verify_checksum and card.weights_sha256 and sha256_file(weights) != card.weights_sha256:
            raise ModelError(f"{weights}: SHA-256 differs from the one in model.toml (weights and card mismatched)")
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a bad file
            raise ModelError(f"{weights}: not a readable state_dict: {exc}") from exc
        if not isinstance(state, dict):
            raise ModelError(f"{weights}: expected a state_dict, got {type(state).__name__}")
        model = NoduleNet(card.network)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise ModelError(f"{weights}: weights do not match the architecture in model.toml: {first}") from exc
        return cls(card, model, device)

    def detect(self, volume: hd.Volume) -> list[Finding]:
        """Findings at or above the model's operating point (LPS mm), highest score first."""
        return self.run(volume).findings

    def run(self, volume: hd.Volume, min_score: float | None = None, max_findings: int | None = None) -> Detection:
        """Detect nodules in a CT volume.

        Parameters
        ----------
        volume
            HU volume with its affine to patient LPS (mm), from
            :mod:`pacs_node.imaging.volume`.
        min_score
            Keep findings at or above this score; default: the model's ``report_score``.
            Pass the card's ``thresholds.min_score`` for FROC analysis.
        max_findings
            Keep (and measure) at most this many findings, the highest scores.

        Raises
        ------
        pacs_node.ml.lungs.NoLungsFound
            If no lungs are found (a :class:`~pacs_node.imaging.volume.NotAnalysable`).
        """
        threshold = self.card.thresholds.report_score if min_score is None else float(min_score)
        t_total = time.perf_counter()
        fe = run_front_end(volume, self.card.front_end)
        timings = dict(fe.timings_s)
        t = time.perf_counter()
        scored = self.score_candidates(fe.fine, fe.candidates.centres_lps_mm)
        scored = replace(scored, centres_lps_mm=clip_to_volume(scored.centres_lps_mm, volume))
        timings["classify"] = time.perf_counter() - t
        t = time.perf_counter()
        keep = merge(scored, threshold, self.card.thresholds.merge_mm)
        if max_findings is not None:
            keep = keep[: max(0, int(max_findings))]
        timings["merge"] = time.perf_counter() - t
        t = time.perf_counter()
        findings = [self._finding(fe, scored, i) for i in keep]
        timings["measure"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t_total
        log.info("event=detect model=%s candidates=%d findings=%d %s", self.card.name, len(fe.candidates),
                 len(findings), " ".join(f"{k}_s={v:.2f}" for k, v in timings.items()))
        return Detection(findings, timings, len(fe.candidates), fe.lungs.lung_ml,
                         candidates_lps_mm=fe.candidates.centres_lps_mm, scored=scored, lungs=fe.lungs)

    def score_candidates(self, fine: Grid, centres_lps_mm: np.ndarray) -> Scored:
        """Run the network on patches around points (LPS mm) of a fine grid.

        Returns the refined centres (patch centre plus predicted offset, LPS mm), the
        nodule probability, the type probabilities and the diameter (mm).
        """
        cfg = self.card.network
        n = len(centres_lps_mm)
        if n == 0:
            return Scored(np.empty((0, 3)), np.empty(0), np.empty((0, len(TYPE_NAMES))), np.empty(0))
        pc = patch_centres(fine.world_to_index(centres_lps_mm))
        flips = FLIP_SETS[self.card.inference.flips]
        half = HalfGrid(fine.array) if cfg.channels == 3 else None  # shared by every batch's wide patches
        score, type_prob, log_diameter, offset = self._forward(fine, pc, flips[:1], half)
        again = np.flatnonzero(score >= self.card.inference.rescore_above) if len(flips) > 1 else np.empty(0, int)
        if len(again):
            more = self._forward(fine, pc[again], flips[1:], half)
            k = len(flips)
            for total, extra in zip((score, type_prob, log_diameter, offset), more, strict=True):
                total[again] = (total[again] + (k - 1) * extra) / k
        refined = fine.index_to_world(pc - 0.5 + offset / cfg.fine_mm)
        return Scored(refined, score, type_prob, np.exp(log_diameter))

    def _forward(self, fine: Grid, pc: np.ndarray, flips: tuple[tuple[int, ...], ...], half: HalfGrid | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Mean over ``flips`` of score, type probabilities, log diameter and offset (mm, unflipped)."""
        cfg = self.card.network
        outputs: list[list[np.ndarray]] = [[], [], [], []]
        with torch.inference_mode():
            for s in range(0, len(pc), self.batch_size):
                patches = extract_patches(fine, pc[s:s + self.batch_size], cfg.patch_size, channels=cfg.channels,
                                          half=half)
                x = normalise_hu(np.stack(patches, axis=1), cfg.hu_window).to(self.device)
                sums = [0.0, 0.0, 0.0, 0.0]
                for axes in flips:
                    flipped = torch.flip(x, [2 + a for a in axes]) if axes else x
                    out = self._net(flipped.contiguous(memory_format=self._layout))
                    unflip = torch.ones(3, device=out.offset.device)
                    unflip[list(axes)] = -1.0
                    parts = (torch.sigmoid(out.logit), torch.softmax(out.type_logits, dim=1), out.log_diameter,
                             out.offset * unflip)
                    sums = [a + b for a, b in zip(sums, parts, strict=True)]
                for store, total in zip(outputs, sums, strict=True):
                    store.append((total / len(flips)).cpu().numpy().astype(np.float64))
        return tuple(np.concatenate(v) for v in outputs)  # type: ignore[return-value]

    def _finding(self, fe: FrontEnd, scored: Scored, i: int) -> Finding:
        centre = scored.centres_lps_mm[i]
        type_idx = int(np.argmax(scored.type_prob[i]))
        nodule_type = NoduleType(TYPE_NAMES[type_idx])
        subsolid = nodule_type in (NoduleType.GROUND_GLASS, NoduleType.PART_SOLID)
        m = measure_nodule(fe.fine, fe.fine.world_to_index(centre)[0], float(scored.diameter_mm[i]), subsolid,
                           fe.lungs.parenchyma_hu)
        return Finding(
            center_lps_mm=(float(centre[0]), float(centre[1]), float(centre[2])),
            long_axis_mm=m.long_axis_mm,
            short_axis_mm=m.short_axis_mm,
            volume_mm3=m.volume_mm3,
            nodule_type=nodule_type,
            score=float(np.clip(scored.score[i], 0.0, 1.0)),
            mean_hu=m.mean_hu,
            solid_core_mm=m.solid_core_mm if nodule_type == NoduleType.PART_SOLID else None,
        )


def clip_to_volume(points_lps_mm: np.ndarray, volume: hd.Volume) -> np.ndarray:
    """Points (``N x 3``, LPS mm) moved onto the scanned volume where a predicted offset pushed
    them past its edge: a finding is reported on the slices it was found on, never beside them."""
    if not len(points_lps_mm):
        return points_lps_mm
    affine = np.asarray(volume.affine, dtype=np.float64)
    homogeneous = np.c_[points_lps_mm, np.ones(len(points_lps_mm))]
    index = (np.linalg.inv(affine) @ homogeneous.T).T[:, :3]
    index = np.clip(index, 0.0, np.asarray(volume.spatial_shape, dtype=np.float64) - 1.0)
    return (affine @ np.c_[index, np.ones(len(index))].T).T[:, :3]


def merge(scored: Scored, min_score: float, merge_mm: float) -> list[int]:
    """Indices of the candidates kept, one per nodule, highest score first.

    Greedy: the best remaining candidate absorbs every candidate whose refined centre
    lies within ``max(merge_mm, d / 2)`` of it (``d`` the larger of their predicted
    diameters).
    """
    order = [int(i) for i in np.argsort(-scored.score, kind="stable") if scored.score[i] >= min_score]
    kept: list[int] = []
    centres = np.empty((len(order), 3))
    half = np.empty(len(order))
    for i in order:
        n = len(kept)
        c, h = scored.centres_lps_mm[i], 0.5 * scored.diameter_mm[i]
        if n:
            radius = np.maximum(merge_mm, np.maximum(half[:n], h))
            if np.any(np.sqrt(((centres[:n] - c) ** 2).sum(axis=1)) < radius):
                continue
        centres[n], half[n] = c, h
        kept.append(i)
    return kept
