"""Scan-level calibration: the full detector on validation studies, FROC, the operating point."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from pacs_node.ml.cases import Case, load_case_volume
from pacs_node.ml.modelcard import ModelCard, Thresholds
from pacs_node.ml.network import NoduleNet

if TYPE_CHECKING:
    from pacs_node.ml.train import TrainConfig

#: False positives per scan at which LUNA16's CPM averages the sensitivity.
FROC_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def froc_points(findings: Sequence[Sequence[tuple[np.ndarray, float]]], truth: Sequence[Sequence[tuple[np.ndarray, float]]],
                fp_rates: Sequence[float] = FROC_FP_RATES) -> dict[str, object]:
    """LUNA16-rule FROC of scored findings against reference nodules.

    Parameters
    ----------
    findings
        Per scan, ``(centre_lps_mm, score)`` of each finding.
    truth
        Per scan, ``(centre_lps_mm, diameter_mm)`` of each reference nodule.
    fp_rates
        False positives per scan at which sensitivity is read.

    Returns
    -------
    dict
        ``sensitivity`` (list at ``fp_rates``), ``cpm`` (their mean), ``thresholds``
        (the score threshold at each rate), ``n_scans``, ``n_nodules``, and
        ``hit_scores`` (best score per nodule, 0 when never hit).

    A finding within a nodule's radius of its centre is a hit; several hits on one
    nodule count once (its best score); a finding that hits no nodule is a false
    positive.
    """
    n_scans = len(truth)
    fp_scores: list[float] = []
    hit_scores: list[float] = []
    for f_scan, t_scan in zip(findings, truth, strict=True):
        best = np.zeros(len(t_scan))
        for centre, score in f_scan:
            hit_any = False
            for k, (tc, td) in enumerate(t_scan):
                if np.linalg.norm(np.asarray(centre) - np.asarray(tc)) <= td / 2.0:
                    best[k] = max(best[k], score)
                    hit_any = True
            if not hit_any:
                fp_scores.append(float(score))
        hit_scores.extend(best.tolist())
    fp = np.sort(np.array(fp_scores))[::-1]
    hits = np.array(hit_scores)
    sens, thresholds = [], []
    for rate in fp_rates:
        allowed = int(math.floor(rate * n_scans))
        # threshold: just above the (allowed+1)-th highest false positive score
        thr = float(fp[allowed]) if allowed < len(fp) else 0.0
        strict = allowed < len(fp)
        ok = (hits > thr) if strict else (hits > 0)
        sens.append(float(ok.mean()) if len(hits) else float("nan"))
        thresholds.append(thr)
    return {"sensitivity": sens, "cpm": float(np.mean(sens)) if len(hits) else float("nan"),
            "thresholds": thresholds, "n_scans": n_scans, "n_nodules": len(hits), "hit_scores": hit_scores,
            "fp_scores": fp_scores}


def calibrate(model: NoduleNet, cfg: TrainConfig, cases: Sequence[Case], say: Callable[[str], None],
              device: str = "cpu") -> tuple[Thresholds, dict[str, object]]:
    """Run the full detector on validation studies; choose the operating point.

    The report threshold is the FROC threshold at the rate nearest to
    ``cfg.target_fp_per_scan`` false positives per scan, kept within 0.2 .. 0.95.
    The detector runs on ``device`` (where the model is), with the configuration's
    test-time flips.

    Returns
    -------
    tuple[Thresholds, dict]
        The thresholds, and a summary for the model card (empty if no study could be read).
    """
    from pacs_node.ml.detector import Detector

    base = Thresholds()
    card = ModelCard(cfg.name, cfg.version, cfg.network, cfg.front_end, base, inference=cfg.inference)
    det = Detector(card, model.eval(), device)
    found, truth = [], []
    for case in cases:
        try:
            volume, nodules = load_case_volume(case)
            result = det.run(volume, min_score=base.min_score)
        except Exception as exc:  # a study the detector cannot read is reported, not fatal
            say(f"calibration: skipped {case.case_id}: {exc}")
            continue
        found.append([(np.array(f.center_lps_mm), f.score) for f in result.findings])
        truth.append([(np.array(n.centre_lps_mm), n.diameter_mm) for n in nodules])
    if not truth:
        return base, {}
    froc = froc_points(found, truth)
    rate_idx = int(np.argmin(np.abs(np.array(FROC_FP_RATES) - cfg.target_fp_per_scan)))
    report = float(np.clip(froc["thresholds"][rate_idx], 0.2, 0.95))  # type: ignore[index]
    thresholds = Thresholds(report_score=round(report, 4), min_score=base.min_score, merge_mm=base.merge_mm)
    summary = {
        "scans": froc["n_scans"], "nodules": froc["n_nodules"],
        "fp_per_scan": list(FROC_FP_RATES),
        "sensitivity": [round(v, 4) for v in froc["sensitivity"]],  # type: ignore[union-attr]
        "cpm": round(float(froc["cpm"]), 4),  # type: ignore[arg-type]
    }
    say(f"calibration on {froc['n_scans']} scans: CPM={summary['cpm']} sensitivity={summary['sensitivity']} "
        f"report_score={thresholds.report_score}")
    return thresholds, summary
