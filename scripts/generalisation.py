#!/usr/bin/env python
"""Measure generalisation in-house: leave-one-family-out, cross-style, and the in-distribution baseline.

    nice -n 5 .venv/bin/python scripts/generalisation.py --work var/generalisation
    nice -n 5 .venv/bin/python scripts/generalisation.py --folds wide,lofo:nodules --work var/generalisation
    .venv/bin/python scripts/generalisation.py --list
    nice -n 19 .venv/bin/python scripts/generalisation.py --work /tmp/smoke --folds nodules,mottled \
        --train-studies 2 --test-studies 2 --epochs 1 --steps-per-epoch 2 --shape 40,80,80 --spacing 2.5,2.5,2.5

Protocols (:mod:`pacs_node.ml.protocols`, where the folds are defined as data):

``in-distribution:wide``
    Train on ``Variation.wide()`` (all families wide, all styles), test on
    ``Variation.wide()`` studies.  This *all-families* model is the reference below.
``lofo:F`` for each family F (body, parenchyma, vessels, airways, pleura, nodules, acquisition)
    Train on ``Variation.wide(without=[F])``; test on ``wide`` and on ``only-F``
    (F wide, the other families classic, all styles), beside the all-families
    model on the same studies (ΔCPM = this model's CPM minus the reference's).
``cross-style:S`` for each style S (classic, lobular, mottled)
    Train on all families wide in the other two styles; test on all families wide
    in style S, beside the all-families model.

Seeds: every model trains on ``study_seed(610000, i)``, every test set holds
``study_seed(620000, i)`` (disjoint from each other and from 777000, 990000, 30300,
20250, 555000, 888000, 20240, which belong to other sets; checked before a run).
Training is the bundled v2 recipe (``scripts/train_synthetic_model.py``: v2 front end,
lr 1e-3, 10 calibration studies, 3 to 6 nodules per study) with this run's scale, seed
1, from ``--init-weights`` (default v1's weights: v1 saw only classic ranges and the
classic style, so only ``cross-style:classic`` is not clean with them; the table marks
it).  Evaluation: :func:`pacs_node.ml.evaluate.evaluate_model`, LUNA16 hit rule, flips
1 (the trained card's default), operating point 1 FP/scan.

Everything goes under ``--work`` (caches, models, test sets, evaluations, one JSON per
fold, ``summary.json`` and ``summary.md``, the table for the model card).  A run can be
stopped and started again: finished folds are skipped, training resumes from its
checkpoint, test sets, caches and reports are reused.  A work folder holds one scale;
the printed header (first line of the table too) names it, and says SMOKE RUN below
the v2 recipe's scale (96 training studies, 6 x 200 steps, 40 test studies).

How long a full run takes (11 models, 11 test sets of 40 studies, 28 evaluations;
estimates from measured rates, not a timed full run):

2 CPUs (no GPU)
    Per model: patch cache 96 studies x 20-45 s = 32-72 min, training 6 x 200 x 64 =
    76,800 samples at ~60 samples/s = ~21 min, calibration ~2 min: 55-95 min, so 10-17 h
    for the 11 models.  Test sets: 440 studies x 5-10 s = 0.6-1.2 h.  Evaluations:
    28 x 40 scans x ~8 s = ~2.5 h.  In all 13-21 h; the first lofo fold (its model and
    the all-families model, 2 test sets, 4 evaluations) 2.5-4 h, each further one
    1.5-2.5 h.
GPU machine (one GPU, 16 cores, ``--workers 16``)
    The cache build is CPU work: 96 studies / 16 workers, 4-9 min per model; training
    is bound by batch preparation, ~1-2 min per model at 1,000+ samples/s; so 1-2 h for
    the models.  Test-set generation (~40 min) and evaluation (~40 min at ~2 s per scan)
    run one study at a time.  In all about 2.5-3.5 h.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from pacs_node.ml.protocols import (  # noqa: E402
    FULL_EPOCHS,
    FULL_STEPS,
    FULL_TEST_STUDIES,
    FULL_TRAIN_STUDIES,
    TEST_SET_SEED,
    TRAIN_SET_SEED,
    ProtocolError,
    Scale,
    Workspace,
    check_seeds,
    run_folds,
    select_folds,
    write_summary,
)
from train_synthetic_model import recipe  # noqa: E402

V1_WEIGHTS = Path("models/lung-nodule-synthetic-v1/weights.pt")


def _init_weights(value: str) -> Path | None:
    """``none``: random initialisation; a relative path missing here is looked up in the repository."""
    if value.lower() == "none":
        return None
    path = Path(value)
    if not path.is_file() and not path.is_absolute() and (ROOT / path).is_file():
        path = ROOT / path
    return path.resolve()


def _triple(kind: type) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        parts = text.split(",")
        if len(parts) != 3:
            raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}")
        return tuple(kind(p) for p in parts)

    return parse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", default="", help="comma list of protocols (lofo), fold ids (lofo:nodules) or names "
                                                "(nodules, mottled, wide); default: every fold")
    ap.add_argument("--work", type=Path, default=Path("var/generalisation"), help="caches, models, test sets, reports")
    ap.add_argument("--train-studies", type=int, default=FULL_TRAIN_STUDIES)
    ap.add_argument("--test-studies", type=int, default=FULL_TEST_STUDIES)
    ap.add_argument("--epochs", type=int, default=FULL_EPOCHS)
    ap.add_argument("--steps-per-epoch", type=int, default=FULL_STEPS)
    ap.add_argument("--init-weights", default=str(V1_WEIGHTS), help="weights.pt to fine-tune from, or 'none'")
    ap.add_argument("--workers", type=int, default=2, help="processes building the patch caches")
    ap.add_argument("--shape", type=_triple(int), default=None, metavar="Z,Y,X",
                    help="fixed volume shape of every study, for smoke runs (default: the chest geometry)")
    ap.add_argument("--spacing", type=_triple(float), default=None, metavar="DZ,DY,DX",
                    help="fixed voxel spacing (mm) with --shape")
    ap.add_argument("--list", action="store_true", help="print the chosen folds and their variations, then stop")
    ap.add_argument("--summary-only", action="store_true", help="rewrite summary.json/.md from finished folds")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stdout)
    try:
        folds = select_folds(args.folds)
        if (args.shape is None) != (args.spacing is None):
            raise ProtocolError("--shape and --spacing go together")
        scale = Scale(args.train_studies, args.test_studies, args.epochs, args.steps_per_epoch,
                      _init_weights(args.init_weights), args.shape, args.spacing)
        check_seeds(scale)
    except ProtocolError as exc:
        ap.exit(2, f"{exc}\n")
    if args.list:
        print(f"training studies study_seed({TRAIN_SET_SEED}, i), test studies study_seed({TEST_SET_SEED}, i)")
        for f in folds:
            print(f"{f.id}: train {f.model.key} ({f.model.description})")
            for role, model, test in f.evaluations():
                print(f"    {role:<15} {model.key} on {test.key} ({test.description})")
        return
    if args.summary_only:
        try:
            summary = write_summary(Workspace(args.work))
        except ProtocolError as exc:
            ap.exit(2, f"{exc}\n")
        print((args.work / "summary.md").read_text(), end="")
        print(f"folds done {len(summary['folds_done'])}, missing {len(summary['folds_missing'])}")
        return
    base = replace(recipe("v2", Path("generalisation"), args.train_studies, args.steps_per_epoch),
                   workers=args.workers)
    try:
        run_folds(args.work, folds, scale, base, say=lambda line: print(line, flush=True))
    except ProtocolError as exc:
        ap.exit(2, f"{exc}\n")
    print()
    print((args.work / "summary.md").read_text(), end="")
    print(f"summary: {(args.work / 'summary.json').resolve()}")


if __name__ == "__main__":
    main()
