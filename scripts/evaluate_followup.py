"""Registration and nodule matching on fresh synthetic follow-up pairs (issue 12).

Each pair is :func:`pacs_node.ml.phantom.followup.generate_followup` of one seed (two
time points, the later one re-positioned and re-scanned).  The prior CT is registered
to the current one (:func:`pacs_node.compare.register`), then matched:

* the *truth* nodules of both time points (centres and diameters from the truth), so
  that matching is measured on its own;
* with ``--detector``, the detector's findings on both scans; a finding belongs to the
  lesion whose centre it is closer to than half the lesion's diameter (the LUNA16 hit
  rule of :mod:`pacs_node.ml.froc`).

Figures: registration error at the lesions (mapped prior truth centre to current truth
centre of the same ``lesion_id``, mm, before and after registration), the share of
lesions >= ``--min-mm`` on both scans matched to the right lesion, new/resolved
recall, and timings; with ``--detector`` also the VDT from the detector's measurements
against the truth (solid nodules >= 6 mm with >= 25 % volume change) and the study's
Lung-RADS follow-up category from the detector's findings against the truth's.  Seeds start at 930000 (never used for training).

    PYTHONPATH=. python scripts/evaluate_followup.py --pairs 10 [--shape 160,256,256 --spacing 2,1.4,1.4]
        [--nodules 8] [--detector models/lung-nodule-synthetic-v3] [--out followup.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from pacs_node.compare import NoduleSite, Registration, match_nodules, register
from pacs_node.compare.match import Located
from pacs_node.imaging.findings import Finding, NoduleType
from pacs_node.imaging.growth import volume_doubling_time
from pacs_node.imaging.lungrads_followup import compare_nodule, study_followup_category
from pacs_node.ml.cases import phantom_volume
from pacs_node.ml.phantom.followup import TimePoint, generate_followup

SEED0 = 930000


def _present(tp: TimePoint) -> list[tuple[int, NoduleSite]]:
    """``(lesion_id, site)`` of the lesions drawn at a time point."""
    return [(st.lesion_id, NoduleSite(st.centre_xyz_mm, float(st.diameter_mm)))
            for st in tp.lesions if st.diameter_mm is not None]


def _warp(sites: list[tuple[int, NoduleSite]], amplitude_mm: float, seed: int) -> list[tuple[int, NoduleSite]]:
    """Sites moved by a smooth random displacement field (each axis ``amplitude * sin(2 pi k.x / 150 mm + phase)``):
    a stand-in for the non-rigid breathing and posture change a lung-mask affine leaves."""
    if amplitude_mm <= 0:
        return sites
    rng = np.random.default_rng([seed, 0x3A7])
    k = rng.normal(size=(3, 3))
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    phase = rng.uniform(0.0, 2.0 * np.pi, 3)
    out = []
    for lid, s in sites:
        c = np.asarray(s.center_lps_mm)
        c = c + amplitude_mm * np.sin(2.0 * np.pi * (k @ c) / 150.0 + phase)
        out.append((lid, NoduleSite((float(c[0]), float(c[1]), float(c[2])), s.diameter_mm)))
    return out


def _owner(sites: list[tuple[int, NoduleSite]], finding: Located) -> int | None:
    """Lesion whose centre the finding is closer to than half its diameter (nearest such), else ``None``."""
    best, best_d = None, np.inf
    for lid, s in sites:
        d = float(np.linalg.norm(np.subtract(finding.center_lps_mm, s.center_lps_mm)))
        if d < 0.5 * s.diameter_mm and d < best_d:
            best, best_d = lid, d
    return best


def _score(prior_ids: list[int | None], current_ids: list[int | None], prior: list[Located],
           current: list[Located], reg: Registration, both: set[int]) -> dict[str, Any]:
    """Matching figures for nodules labelled with their lesion ids (``None``: not a lesion)."""
    t = time.perf_counter()
    m = match_nodules(prior, current, reg.map_points)
    seconds = time.perf_counter() - t
    # each lesion on both scans, counted once: its first nodule in each list
    first_p = {lid: i for i, lid in reversed(list(enumerate(prior_ids))) if lid is not None}
    first_c = {lid: j for j, lid in reversed(list(enumerate(current_ids))) if lid is not None}
    targets = [lid for lid in sorted(both) if lid in first_p and lid in first_c]
    right = sum(m.current_to_prior[first_c[lid]] == first_p[lid] for lid in targets)
    new_truth = [j for j, lid in enumerate(current_ids) if lid is not None and lid not in first_p]
    gone_truth = [i for i, lid in enumerate(prior_ids) if lid is not None and lid not in first_c]
    return {"targets": len(targets), "right": int(right),
            "new": len(new_truth), "new_right": sum(j in m.new for j in new_truth),
            "resolved": len(gone_truth), "resolved_right": sum(i in m.resolved for i in gone_truth),
            "false_new": sum(j in m.new for j in (first_c[lid] for lid in targets)),
            "wrong_pairs": sum(prior_ids[x.prior] != current_ids[x.current] or current_ids[x.current] is None
                               for x in m.matches),
            "unlabelled": sum(lid is None for lid in prior_ids) + sum(lid is None for lid in current_ids),
            "residual_mm": [mm.residual_mm for mm in m.matches], "seconds": seconds}


def _truth_finding(state: Any) -> Finding:
    """A lesion's truth at one time point as a :class:`Finding` (both axes = its diameter)."""
    return Finding(tuple(state.centre_xyz_mm), float(state.diameter_mm), float(state.diameter_mm),
                   float(state.volume_mm3), NoduleType(state.type), 1.0)


def _followup_category(prior: list[Finding], current: list[Finding], pairs: dict[int, int], days: float) -> str:
    """The study's Lung-RADS follow-up category when ``pairs`` maps current to prior indices."""
    categories = [compare_nodule(f, prior[pairs[j]] if j in pairs else None, days).category
                  for j, f in enumerate(current)]
    return study_followup_category(categories).value


def _growth(a: TimePoint, b: TimePoint, fa: list[Finding], fb: list[Finding], reg: Registration,
            days: float) -> dict[str, Any]:
    """VDT of the detector's matched findings against the truth (solid, >= 6 mm on both scans,
    >= 25 % volume change: the issue's condition), and the study's follow-up category from the
    detector's findings against the one from the truth."""
    sa, sb = _present(a), _present(b)
    m = match_nodules(fa, fb, reg.map_points)
    owners_a, owners_b = [_owner(sa, f) for f in fa], [_owner(sb, f) for f in fb]
    states_a = {st.lesion_id: st for st in a.lesions if st.diameter_mm is not None}
    states_b = {st.lesion_id: st for st in b.lesions if st.diameter_mm is not None}
    vdt = []
    for pair in m.matches:
        lid = owners_b[pair.current]
        if lid is None or owners_a[pair.prior] != lid or lid not in states_a or lid not in states_b:
            continue
        then, now = states_a[lid], states_b[lid]
        if (now.type != "solid" or min(then.diameter_mm, now.diameter_mm) < 6 or not now.vdt_days
                or abs(now.volume_mm3 / then.volume_mm3 - 1) < 0.25):
            continue
        measured = volume_doubling_time(fa[pair.prior].volume_mm3, fb[pair.current].volume_mm3, days)
        vdt.append({"truth_days": float(now.vdt_days), "measured_days": measured,
                    "within_25": measured is not None and abs(measured / now.vdt_days - 1) <= 0.25})
    truth_a = [_truth_finding(st) for st in states_a.values()]
    truth_b = [_truth_finding(st) for st in states_b.values()]
    ids_a, ids_b = list(states_a), list(states_b)
    truth_pairs = {j: ids_a.index(lid) for j, lid in enumerate(ids_b) if lid in states_a}
    detector_pairs = {x.current: x.prior for x in m.matches}
    return {"vdt": vdt, "category_truth": _followup_category(truth_a, truth_b, truth_pairs, days),
            "category_detector": _followup_category(fa, fb, detector_pairs, days)}


def evaluate_pair(seed: int, kw: dict[str, Any], min_mm: float, detector: Any | None,
                  warp_mm: float = 0.0) -> dict[str, Any]:
    """Generate, register and match one pair; lesions count for matching when >= ``min_mm`` on both scans."""
    t = time.perf_counter()
    fu = generate_followup(seed, 2, **kw)
    t_gen = time.perf_counter() - t
    a, b = fu.timepoints
    va, vb = phantom_volume(a.phantom), phantom_volume(b.phantom)
    reg = register(va, vb)
    # every lesion has a truth centre at both time points (a resolved one: where it was, moved)
    ca = {st.lesion_id: st.centre_xyz_mm for st in a.lesions}
    cb = {st.lesion_id: st.centre_xyz_mm for st in b.lesions}
    ids = sorted(set(ca) & set(cb))
    pa, pb = np.array([ca[i] for i in ids]).reshape(-1, 3), np.array([cb[i] for i in ids]).reshape(-1, 3)
    before = np.linalg.norm(pa - pb, axis=1)
    after = np.linalg.norm(reg.map_points(pa) - pb, axis=1)
    rigid = np.linalg.norm(pa @ reg.rigid_matrix[:3, :3].T + reg.rigid_matrix[:3, 3] - pb, axis=1)
    sa, sb = _present(a), _present(b)
    da, db = dict(sa), dict(sb)
    both = {lid for lid in set(da) & set(db) if min(da[lid].diameter_mm, db[lid].diameter_mm) >= min_mm}
    wb = _warp(sb, warp_mm, seed)
    truth = _score([lid for lid, _ in sa], [lid for lid, _ in wb], [s for _, s in sa], [s for _, s in wb], reg, both)
    out: dict[str, Any] = {
        "seed": seed, "shape_prior": list(a.phantom.volume_hu.shape), "shape_current": list(b.phantom.volume_hu.shape),
        "reposition": b.reposition.to_dict(), "registration": reg.to_dict(),
        "lesion_error_before_mm": before.tolist(), "lesion_error_rigid_mm": rigid.tolist(),
        "lesion_error_mm": after.tolist(), "truth": truth, "generate_s": t_gen,
    }
    if detector is not None:
        t = time.perf_counter()
        fa, fb = detector.detect(va), detector.detect(vb)
        t_det = time.perf_counter() - t
        det = _score([_owner(sa, f) for f in fa], [_owner(sb, f) for f in fb], fa, fb, reg, both)
        out["detector"] = {**det, "findings": [len(fa), len(fb)], "detect_s": t_det,
                           **_growth(a, b, fa, fb, reg, b.day - a.day)}
    return out


def _summary(pairs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    s = {k: sum(p[key][k] for p in pairs) for k in ("targets", "right", "new", "new_right", "resolved",
                                                   "resolved_right", "false_new", "wrong_pairs", "unlabelled")}
    res = [r for p in pairs for r in p[key]["residual_mm"]]
    ratio = (lambda a, b: a / b if b else None)  # noqa: E731
    return {**s, "matched_right": ratio(s["right"], s["targets"]), "new_recall": ratio(s["new_right"], s["new"]),
            "resolved_recall": ratio(s["resolved_right"], s["resolved"]),
            "new_resolved_accuracy": ratio(s["new_right"] + s["resolved_right"], s["new"] + s["resolved"]),
            "residual_mean_mm": float(np.mean(res)) if res else None,
            "match_ms_mean": 1000 * float(np.mean([p[key]["seconds"] for p in pairs]))}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=SEED0, help="first seed (default %(default)s)")
    ap.add_argument("--shape", help="phantom shape z,y,x (default: the phantom's full size)")
    ap.add_argument("--spacing", help="phantom spacing z,y,x in mm (with --shape)")
    ap.add_argument("--interval-days", type=float, default=365.0)
    ap.add_argument("--nodules", type=int, default=8, help="baseline nodules per patient (default %(default)s)")
    ap.add_argument("--new", type=int, help="nodules appearing at follow-up (default drawn, 0 to 2)")
    ap.add_argument("--min-mm", type=float, default=4.0, help="smallest lesion counted for matching (mm)")
    ap.add_argument("--warp-mm", type=float, default=0.0,
                    help="move the current truth centres by a smooth random field of this amplitude (mm)")
    ap.add_argument("--detector", type=Path, help="model folder: also match the detector's findings")
    ap.add_argument("--out", type=Path, help="write per-pair results and the summary as JSON")
    args = ap.parse_args(argv)
    kw: dict[str, Any] = {"interval_days": args.interval_days, "n_nodules": args.nodules, "n_new": args.new}
    if args.shape:
        kw["shape_zyx"] = tuple(int(v) for v in args.shape.split(","))
    if args.spacing:
        kw["spacing_zyx_mm"] = tuple(float(v) for v in args.spacing.split(","))
    detector = None
    if args.detector:
        from pacs_node.ml.detector import Detector

        detector = Detector.load(args.detector)
    pairs = []
    print(f"{'seed':>7} {'shape':>13} {'before':>11} {'rigid':>11} {'affine':>11} {'dice':>5} {'reg s':>5} "
          f"{'truth':>6}" + (f" {'det':>6}" if detector else ""))
    for k in range(args.pairs):
        r = evaluate_pair(args.seed + k, kw, args.min_mm, detector, args.warp_mm)
        pairs.append(r)
        err = (lambda v: f"{np.mean(v):4.1f}/{np.max(v):4.1f}" if v else "-")  # noqa: E731
        line = (f"{r['seed']:>7} {'x'.join(map(str, r['shape_current'])):>13} {err(r['lesion_error_before_mm']):>11} "
                f"{err(r['lesion_error_rigid_mm']):>11} {err(r['lesion_error_mm']):>11} "
                f"{r['registration']['dice']:5.3f} {r['registration']['seconds']:5.2f} "
                f"{r['truth']['right']:>2}/{r['truth']['targets']:<3}")
        if detector:
            line += f" {r['detector']['right']:>2}/{r['detector']['targets']:<3}"
        print(line, flush=True)
    errs = {k: [e for p in pairs for e in p[k]] for k in ("lesion_error_before_mm", "lesion_error_rigid_mm",
                                                          "lesion_error_mm")}
    summary: dict[str, Any] = {
        "pairs": len(pairs), "seeds": [args.seed, args.seed + args.pairs - 1],
        "phantom": {k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()},
        "lesions": len(errs["lesion_error_mm"]), "warp_mm": args.warp_mm,
        **{f"{k}_mean": float(np.mean(v)) for k, v in errs.items() if v},
        **{f"{k}_max": float(np.max(v)) for k, v in errs.items() if v},
        "register_s_mean": float(np.mean([p["registration"]["seconds"] for p in pairs])),
        "register_s_max": float(np.max([p["registration"]["seconds"] for p in pairs])),
        "generate_s_mean": float(np.mean([p["generate_s"] for p in pairs])),
        "truth": _summary(pairs, "truth"),
    }
    if detector:
        vdt = [v for p in pairs for v in p["detector"]["vdt"]]
        agree = sum(p["detector"]["category_truth"] == p["detector"]["category_detector"] for p in pairs)
        summary["detector"] = {**_summary(pairs, "detector"),
                               "detect_s_mean": float(np.mean([p["detector"]["detect_s"] for p in pairs])),
                               "vdt_cases": len(vdt), "vdt_within_25": sum(v["within_25"] for v in vdt),
                               "category_agreement": agree}
    print(f"lesion error (mm, mean/max over {summary['lesions']} lesions): before "
          f"{summary.get('lesion_error_before_mm_mean', 0):.1f}/{summary.get('lesion_error_before_mm_max', 0):.1f}, "
          f"rigid {summary.get('lesion_error_rigid_mm_mean', 0):.2f}/"
          f"{summary.get('lesion_error_rigid_mm_max', 0):.2f}, "
          f"affine {summary.get('lesion_error_mm_mean', 0):.2f}/{summary.get('lesion_error_mm_max', 0):.2f}; "
          f"registration {summary['register_s_mean']:.2f} s mean, {summary['register_s_max']:.2f} s max")
    for key in ("truth", "detector") if detector else ("truth",):
        s = summary[key]
        print(f"{key:>8}: matched right {s['right']}/{s['targets']} ({_pct(s['matched_right'])}) of lesions >= "
              f"{args.min_mm:g} mm on both; new {s['new_right']}/{s['new']}, resolved {s['resolved_right']}/"
              f"{s['resolved']} (accuracy {_pct(s['new_resolved_accuracy'])}); persisting called new "
              f"{s['false_new']}; pairs not of one lesion {s['wrong_pairs']} (unlabelled nodules {s['unlabelled']}); "
              f"residual {s['residual_mean_mm'] or 0:.2f} mm; match {s['match_ms_mean']:.1f} ms")
    if detector:
        d = summary["detector"]
        print(f"detector: VDT within 25 % of the truth for {d['vdt_within_25']}/{d['vdt_cases']} matched solid nodules "
              f">= 6 mm with >= 25 % volume change; study Lung-RADS follow-up category equal to the truth's in "
              f"{d['category_agreement']}/{len(pairs)} studies")
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "pairs": pairs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
