#!/usr/bin/env python
"""Score a detector model on freshly generated synthetic studies (LUNA16 hit rule).

    .venv/bin/python scripts/evaluate_detector.py --model models/lung-nodule-synthetic-v1 \
        --studies 60 --seed 777000 --json var/eval.json

Study ``i`` is ``generate_phantom(study_seed(seed, i))`` with the default geometry
(the seeds must never have been used for training).  A finding is a hit if it lies
within a nodule's radius of its centre; several hits count once.  Reported: CPM and
the FROC points at 1/8 .. 8 false positives per scan (all nodules, and nodules of
6 mm or more, where findings on smaller nodules are ignored), and at the model's
operating point: sensitivity by size and type, false positives per scan, and the
per-step detection time.  This is a quick scorer for the model card, independent
of ``pacs_node.ml.evaluate``, except for the per-stage recall (``stages``: where each
nodule was lost, :mod:`pacs_node.ml.stages`, at the model's ``report_score``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pacs_node.ml.calibrate import FROC_FP_RATES, froc_points  # noqa: E402

_DETECTOR = None


def _init(model_dir: str) -> None:
    global _DETECTOR
    import torch

    from pacs_node.ml.detector import Detector

    torch.set_num_threads(1)
    _DETECTOR = Detector.load(Path(model_dir))


def _one(args: tuple[int, int]) -> dict:
    index, seed = args
    from pacs_node.ml.cases import phantom_volume
    from pacs_node.ml.froc import Reference
    from pacs_node.ml.phantom import generate_phantom
    from pacs_node.ml.stages import StageData, trace_scan

    assert _DETECTOR is not None
    p = generate_phantom(seed, keep_labels=False)
    volume = phantom_volume(p)
    result = _DETECTOR.run(volume, min_score=_DETECTOR.card.thresholds.min_score)
    refs = [Reference(tuple(n.centre_xyz_mm), float(n.diameter_mm), str(n.type)) for n in p.nodules]
    traces, _ = trace_scan(str(seed), refs, result.findings, _DETECTOR.card.thresholds.report_score,
                           StageData.from_detection(result))
    return {
        "index": index,
        "seed": seed,
        "shape": list(p.shape_zyx),
        "spacing": list(p.spacing_zyx_mm),
        "findings": [{"centre": list(f.center_lps_mm), "score": f.score, "type": str(f.nodule_type),
                      "long": f.long_axis_mm, "short": f.short_axis_mm} for f in result.findings],
        "nodules": [{"centre": list(n.centre_xyz_mm), "diameter": n.diameter_mm, "type": str(n.type),
                     "location": n.location, "found": t.found, "stage_lost": t.lost_at}
                    for n, t in zip(p.nodules, traces, strict=True)],
        "timings": result.timings_s,
        "candidates": result.n_candidates,
    }


def _matches(study: dict, threshold: float) -> tuple[list[bool], int, list[str | None]]:
    """Per nodule: hit at the threshold, predicted type of the best hit; and false positives."""
    hits = [False] * len(study["nodules"])
    types: list[str | None] = [None] * len(study["nodules"])
    best = [0.0] * len(study["nodules"])
    fps = 0
    for f in study["findings"]:
        if f["score"] < threshold:
            continue
        c = np.array(f["centre"])
        hit_any = False
        for k, n in enumerate(study["nodules"]):
            if np.linalg.norm(c - np.array(n["centre"])) <= n["diameter"] / 2:
                hit_any = True
                hits[k] = True
                if f["score"] > best[k]:
                    best[k] = f["score"]
                    types[k] = f["type"]
        if not hit_any:
            fps += 1
    return hits, fps, types


def summarise(studies: list[dict], report_score: float) -> dict:
    found = [[(np.array(f["centre"]), f["score"]) for f in s["findings"]] for s in studies]
    truth = [[(np.array(n["centre"]), n["diameter"]) for n in s["nodules"]] for s in studies]
    all_froc = froc_points(found, truth)
    # nodules >= 6 mm: findings on smaller nodules are neither hits nor false positives
    found6, truth6 = [], []
    for s in studies:
        small = [n for n in s["nodules"] if n["diameter"] < 6]
        keep = []
        for f in s["findings"]:
            c = np.array(f["centre"])
            if any(np.linalg.norm(c - np.array(n["centre"])) <= n["diameter"] / 2 for n in small):
                continue
            keep.append((c, f["score"]))
        found6.append(keep)
        truth6.append([(np.array(n["centre"]), n["diameter"]) for n in s["nodules"] if n["diameter"] >= 6])
    froc6 = froc_points(found6, truth6)
    by_size: dict[str, list[bool]] = {"<6": [], "6-10": [], ">10": []}
    by_type: dict[str, list[bool]] = {}
    by_loc: dict[str, list[bool]] = {}
    type_ok: list[bool] = []
    fps = 0
    for s in studies:
        hits, fp, types = _matches(s, report_score)
        fps += fp
        for n, h, t in zip(s["nodules"], hits, types, strict=True):
            d = n["diameter"]
            by_size["<6" if d < 6 else ("6-10" if d <= 10 else ">10")].append(h)
            by_type.setdefault(n["type"], []).append(h)
            by_loc.setdefault(n["location"], []).append(h)
            if h:
                type_ok.append(t == n["type"])
    timings = {k: float(np.mean([s["timings"][k] for s in studies])) for k in studies[0]["timings"]}

    def rate(v: list[bool]) -> dict:
        return {"sensitivity": round(float(np.mean(v)), 4) if v else None, "n": len(v)}

    return {
        "studies": len(studies),
        "nodules": sum(len(s["nodules"]) for s in studies),
        "fp_per_scan_points": list(FROC_FP_RATES),
        "froc_all": {"sensitivity": [round(v, 4) for v in all_froc["sensitivity"]], "cpm": round(all_froc["cpm"], 4),
                     "thresholds": [round(v, 4) for v in all_froc["thresholds"]]},
        "froc_ge6mm": {"sensitivity": [round(v, 4) for v in froc6["sensitivity"]], "cpm": round(froc6["cpm"], 4),
                       "n_nodules": froc6["n_nodules"]},
        "operating_point": {
            "report_score": report_score,
            "fp_per_scan": round(fps / len(studies), 3),
            "by_size_mm": {k: rate(v) for k, v in by_size.items()},
            "by_type": {k: rate(v) for k, v in sorted(by_type.items())},
            "by_location": {k: rate(v) for k, v in sorted(by_loc.items())},
            "type_accuracy_of_hits": round(float(np.mean(type_ok)), 4) if type_ok else None,
        },
        "stages": _stages(studies),
        "mean_timings_s_1_thread": {k: round(v, 3) for k, v in timings.items()},
        "mean_candidates": round(float(np.mean([s["candidates"] for s in studies])), 1),
    }


def _stages(studies: list[dict]) -> dict | None:
    """Per-stage recall at the model's report_score (``None`` for results saved without stages)."""
    from pacs_node.ml.froc import Reference
    from pacs_node.ml.stages import NoduleTrace, stage_recall

    nodules = [(s, n) for s in studies for n in s["nodules"]]
    if any("stage_lost" not in n for _, n in nodules):
        return None
    traces = [NoduleTrace(str(s["seed"]), Reference(tuple(n["centre"]), n["diameter"], n["type"]), n["found"],
                          n["stage_lost"], None, None) for s, n in nodules]
    return stage_recall(traces, stages_available=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--studies", type=int, default=40)
    ap.add_argument("--seed", type=int, default=777000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="write the per-study results and summary here")
    ap.add_argument("--from-json", type=Path, default=None, help="re-summarise saved per-study results")
    ap.add_argument("--report-score", type=float, default=None)
    args = ap.parse_args()
    from pacs_node.ml.modelcard import read_model_card
    from pacs_node.ml.phantom import study_seed

    card = read_model_card(args.model)
    report = card.thresholds.report_score if args.report_score is None else args.report_score
    if args.from_json:
        studies = json.loads(args.from_json.read_text())["studies"]
    else:
        jobs = [(i, study_seed(args.seed, i)) for i in range(args.studies)]
        t = time.time()
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(args.workers, initializer=_init, initargs=(str(args.model),)) as pool:
            studies = []
            for r in pool.imap_unordered(_one, jobs):
                studies.append(r)
                print(f"study {len(studies)}/{len(jobs)} seed={r['seed']} nodules={len(r['nodules'])} "
                      f"findings={len(r['findings'])} t={r['timings']['total']:.1f}s", flush=True)
        studies.sort(key=lambda r: r["index"])
        print(f"evaluated {len(studies)} studies in {time.time() - t:.0f}s")
    summary = summarise(studies, report)
    summary["seed"] = args.seed
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"summary": summary, "studies": studies}, indent=1))


if __name__ == "__main__":
    main()
