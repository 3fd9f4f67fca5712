#!/usr/bin/env python
"""Run the detector on held-out phantoms as other scanners would store and show them.

    nice -n 10 .venv/bin/python scripts/robustness_check.py --studies 4 \
        --model models/lung-nodule-synthetic-v1 [--cases baseline,pad-3024-ge] [--json var/robustness.json]

Study ``i`` comes from ``generate_phantom(study_seed(888000, i))`` (default geometry,
seeds used nowhere else); studies without a nodule of at least 8 mm are skipped
until ``--studies`` have one.  Each case (see ``CASES``) changes the study with
:mod:`pacs_node.ml.phantom.conventions` and, for stored-value, padding and
orientation cases, writes it as a DICOM series with
:mod:`pacs_node.ml.phantom.encoding` and reads it back through
:func:`pacs_node.imaging.volume.volume_from_datasets`, as the node would.  The
detector runs at the model's operating point.  A large nodule (>= 8 mm) is found
when a finding lies within its radius (LUNA16 rule); a finding near no planted
nodule is a false positive.  Printed per case: studies, large nodules found /
total, false positives per scan, lung volume (mL, and relative to the same study's
baseline), detector time, and errors raised.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pacs_node.ml.phantom import conventions as cv
from pacs_node.ml.phantom.conventions import Scan
from pacs_node.ml.phantom.encoding import (
    SIGNED_1024,
    SIGNED_HU,
    UNSIGNED_1024,
    Padding,
    PixelEncoding,
)

LARGE_MM = 8.0
SEED = 888000


@dataclass(frozen=True)
class Case:
    """One convention: how the study changes, and how it is stored (``None``: volume handed over)."""

    name: str
    make: Callable[[Scan, np.random.Generator], Scan]
    encoding: PixelEncoding | None = None
    padding: Padding | None = None
    reverse_instances: bool = False


def _same(scan: Scan, rng: np.random.Generator) -> Scan:
    return scan


def _couch_under(position: cv.PatientPosition) -> Callable[[Scan, np.random.Generator], Scan]:
    """Re-index for a patient position, then the couch under the patient (image bottom)."""
    return lambda s, r: cv.add_couch(cv.reposition(cv.remove_table(s), position), cover_mm=6.0)


CASES: tuple[Case, ...] = (
    Case("baseline", _same),
    Case("dicom unsigned -1024", _same, UNSIGNED_1024),
    Case("signed intercept 0", _same, SIGNED_HU),
    Case("slope 0.5 (unsigned)", _same, PixelEncoding(signed=False, intercept=-1024.0, slope=0.5)),
    Case("slope 2 (signed)", _same, PixelEncoding(signed=True, intercept=0.0, slope=2.0)),
    Case("pad -2000 HU tagged", _same, SIGNED_HU, Padding(-2000)),
    Case("pad -2000 HU no tag", _same, SIGNED_HU, Padding(-2000, tagged=False)),
    Case("pad -3024 HU (GE) tagged", _same, SIGNED_1024, Padding(-2000)),
    Case("pad -3024 HU no tag", _same, SIGNED_1024, Padding(-2000, tagged=False)),
    Case("pad -1024 HU no tag", _same, UNSIGNED_1024, Padding(0, tagged=False)),
    Case("pad 63536 unsigned tagged", _same, UNSIGNED_1024, Padding(63536)),
    Case("pad range 63536..65535", _same, UNSIGNED_1024, Padding(63536, range_limit=65535)),
    Case("pad 63536 unsigned no tag", _same, UNSIGNED_1024, Padding(63536, tagged=False)),
    Case("feet first (FFS)", lambda s, r: cv.reposition(s, "FFS"), UNSIGNED_1024, reverse_instances=True),
    Case("prone (HFP) + couch", _couch_under("HFP"), SIGNED_1024, Padding(-2000)),
    Case("prone feet first (FFP) + couch", _couch_under("FFP"), UNSIGNED_1024, reverse_instances=True),
    Case("decubitus left (HFDL) + couch", _couch_under("HFDL"), UNSIGNED_1024),
    Case("couch + mattress", lambda s, r: cv.add_couch(cv.remove_table(s))),
    Case("couch + sealed cushion", lambda s, r: cv.add_couch(cv.remove_table(s), cover_mm=6.0)),
    Case("bowel gas", lambda s, r: cv.add_bowel_gas(s, r)),
    Case("apex cut 40 mm", lambda s, r: cv.crop_lung_extent(s, drop_top_mm=40.0)),
    Case("bases cut 50 mm", lambda s, r: cv.crop_lung_extent(s, drop_bottom_mm=50.0)),
    Case("rotated 15 deg", lambda s, r: cv.rotate_in_plane(s, 15.0)),
    Case("off-centre 50 mm + circle", lambda s, r: cv.shift_in_plane(s, 40.0, 30.0), SIGNED_1024, Padding(-2000)),
    Case("FOV 300 mm", lambda s, r: cv.crop_field_of_view(s, 300.0)),
    Case("FOV 500 mm", lambda s, r: cv.resample_matrix(cv.extend_field_of_view(s, 500.0), 512)),
    Case("matrix 1024", lambda s, r: cv.resample_matrix(s, 1024)),
    Case("slices 0.5 mm", lambda s, r: cv.reslice(s, 0.5)),
    Case("slices 5 mm", lambda s, r: cv.reslice(s, 5.0)),
    Case("low dose sigma 80", lambda s, r: cv.add_noise(s, r, 80.0, 0.6)),
    Case("sharp kernel", lambda s, r: cv.add_noise(cv.sharpen(s, 1.2, 1.0), r, 60.0, 0.35)),
    Case("smooth kernel", lambda s, r: cv.smooth(s, 1.2)),
    Case("iterative (blotchy)", lambda s, r: cv.add_noise(cv.smooth(s, 0.6), r, 30.0, 2.5)),
    Case("HU offset +30", lambda s, r: cv.offset_hu(s, 30.0)),
    Case("HU offset -30", lambda s, r: cv.offset_hu(s, -30.0)),
    Case("beam hardening streaks", lambda s, r: cv.add_streaks(s, r)),
    Case("motion blur bases 6 mm", lambda s, r: cv.motion_blur_bases(s, 6.0)),
)


def _volume(case: Case, scan: Scan, rng: np.random.Generator) -> tuple[object, str]:
    """The volume the detector gets, and the series gate's verdict when it went through DICOM."""
    from pacs_node.analyze.series import Rejection, check_series
    from pacs_node.imaging.volume import volume_from_datasets
    from pacs_node.ml.phantom.encoding import encode_series, reread

    if case.encoding is None and scan.spacing_mm[0] <= 3.0:
        return scan.volume, ""
    datasets = reread(encode_series(scan.volume, case.encoding or UNSIGNED_1024, case.padding,
                                    reverse_instances=case.reverse_instances, rng=rng))
    gate = check_series(str(datasets[0].SeriesInstanceUID), [(Path(f"{i}.dcm"), ds) for i, ds in enumerate(datasets)])
    verdict = gate.reason if isinstance(gate, Rejection) else ""
    return volume_from_datasets(datasets), verdict


def _score(findings: list, nodules: tuple) -> tuple[int, int, int]:
    """Large nodules hit, large nodules, false positives (findings near no nodule)."""
    centres = np.array([f.center_lps_mm for f in findings]).reshape(-1, 3)
    hit_any = np.zeros(len(centres), dtype=bool)
    found = total = 0
    for n in nodules:
        d = np.linalg.norm(centres - np.asarray(n.centre_xyz_mm), axis=1) < n.diameter_mm / 2
        hit_any |= d
        if n.diameter_mm >= LARGE_MM:
            total += 1
            found += int(d.any())
    return found, total, int((~hit_any).sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/lung-nodule-synthetic-v1"))
    parser.add_argument("--studies", type=int, default=4)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--json", type=Path, help="also write the rows and per-study results here")
    parser.add_argument("--legacy-front-end", action="store_true",
                        help="turn the front end's robustness rules off (noise smoothing, sealed-cushion and "
                             "truncated-lung rules), to see what they change")
    args = parser.parse_args(argv)

    import torch

    from pacs_node.ml.detector import Detector
    from pacs_node.ml.phantom import generate_phantom, study_seed

    torch.set_num_threads(1)
    detector = Detector.load(args.model)
    if args.legacy_front_end:
        fe = detector.card.front_end
        never = float("inf")
        legacy = replace(fe, smooth_above_noise_hu=None, lungs=replace(fe.lungs, prism_span=never, truncated_overlap=never))
        detector = Detector(replace(detector.card, front_end=legacy), detector.model)
    wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(wanted) - {c.name for c in CASES}
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}; known: {', '.join(c.name for c in CASES)}")
    cases = [c for c in CASES if not wanted or c.name in wanted]
    results: dict[str, list[dict]] = {c.name: [] for c in cases}
    baseline_ml: dict[int, float] = {}
    studies, index = 0, 0
    while studies < args.studies and index < 8 * args.studies:
        seed = study_seed(args.seed, index)
        index += 1
        phantom = generate_phantom(seed, keep_labels=True)
        if not any(n.diameter_mm >= LARGE_MM for n in phantom.nodules):
            continue
        studies += 1
        print(f"# study seed={seed} shape={phantom.shape_zyx} spacing={tuple(round(v, 3) for v in phantom.spacing_zyx_mm)} "
              f"nodules={[round(n.diameter_mm, 1) for n in phantom.nodules]}", flush=True)
        base = cv.scan_from_phantom(phantom)
        for k, case in enumerate(cases):
            rng = np.random.default_rng([seed, k])
            row: dict = {"seed": seed}
            try:
                scan = case.make(base, rng)
                volume, verdict = _volume(case, scan, rng)
                row["gate"] = verdict
                t = time.perf_counter()
                det = detector.run(volume)  # type: ignore[arg-type]
                row["time_s"] = time.perf_counter() - t
                row["found"], row["large"], row["fp"] = _score(det.findings, scan.nodules)
                row["lung_ml"] = det.lung_ml
                if case.name == "baseline":
                    baseline_ml[seed] = det.lung_ml
                if seed in baseline_ml:
                    row["lung_rel"] = det.lung_ml / baseline_ml[seed]
                del volume, scan, det
            except Exception as exc:  # noqa: BLE001 - a robustness check reports every failure
                row["error"] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            results[case.name].append(row)
            print(f"  {case.name:32s} {json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()})}",
                  flush=True)
    rows = _table(results)
    print()
    print(_markdown(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "studies": results}, indent=1) + "\n")
    return 0


def _table(results: dict[str, list[dict]]) -> list[dict]:
    rows = []
    for name, runs in results.items():
        ok = [r for r in runs if "error" not in r]
        rel = [r["lung_rel"] for r in ok if "lung_rel" in r]
        rows.append({
            "case": name,
            "studies": f"{len(ok)}/{len(runs)}",
            "large found": f"{sum(r['found'] for r in ok)}/{sum(r['large'] for r in ok)}",
            "FP/scan": round(float(np.mean([r["fp"] for r in ok])), 2) if ok else None,
            "lung mL": round(float(np.mean([r["lung_ml"] for r in ok]))) if ok else None,
            "lung vs baseline": f"{min(rel):.2f}-{max(rel):.2f}" if rel else "",
            "time s": round(float(np.mean([r["time_s"] for r in ok])), 1) if ok else None,
            "errors / gate": "; ".join(sorted({r["error"][:80] for r in runs if "error" in r}
                                              | {r["gate"] for r in ok if r.get("gate")})),
        })
    return rows


def _markdown(rows: list[dict]) -> str:
    keys = list(rows[0]) if rows else []
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join("" if r[k] is None else str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
