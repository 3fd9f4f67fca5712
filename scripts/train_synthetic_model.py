#!/usr/bin/env python
"""Train the bundled synthetic-data models (models/lung-nodule-synthetic-v1, -v2, -v3) reproducibly.

    nice -n 5 .venv/bin/python scripts/train_synthetic_model.py --recipe v3 --epochs 6 --steps-per-epoch 300

``v4``: v3's studies plus 48 more wide ones (``study_seed(41400, i)``), and a third input
channel (24 voxels of 4 mm: 96 mm around each candidate, for nodules up to 30 mm and
their surroundings); initialised from v3's weights with the new channel's stem kernels at
zero (:func:`pacs_node.ml.network.widen_input`), lr 7e-4.

``v3`` (the node's default): v2's 96 wide studies plus 48 classic ones of v1's set
(``study_seed(20250, i)``, i < 48), 300 negatives per study (the 100 strongest always),
hard negatives mined by the model before every epoch (half of each batch's negatives from
the highest-scored tenth), 4 test-time flips above score 0.2 used in calibration too,
14 validation studies for the operating point, weights initialised from v2.

``v2``: studies ``generate_phantom(study_seed(30300, i),
variation=Variation.wide())`` (every family wide, all three styles), 3 to 6 nodules,
the v2 front end (lobes kept, 10 mm search margin, density floor relative to the
study's own lung, candidate quotas 500 + 800 in training and inference), weights
initialised from v1 (fine-tuning).  Evaluation seeds never used here: 777000
(classic test set), 990000 (wide held-out set).

``v1``:

    nice -n 5 .venv/bin/python scripts/train_synthetic_model.py --out models/lung-nodule-synthetic-v1

Training studies: ``generate_phantom(study_seed(PHANTOM_SEED, i))`` for ``i < STUDIES``
with 3 to 6 nodules each (half of the studies cycle through all four types, a fifth
have a random matrix / partial chest coverage).  The test set of the model card uses
``study_seed(777000, i)``, a seed never used here.  ``--cache-only`` builds the patch
cache (about 10 s per study per core) without training; ``--resume`` continues an
interrupted run from its last checkpoint.  The bundled model was made with the defaults
(6 epochs x 200 steps), then its card's inference candidate caps were raised to 500 + 800
(see the model card) and ``[metrics.test]`` was filled from ``scripts/evaluate_detector.py``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pacs_node.ml.cases import PhantomSet  # noqa: E402
from pacs_node.ml.patchcache import build_cache  # noqa: E402
from pacs_node.ml.candidates import CandidateParams  # noqa: E402
from pacs_node.ml.lungs import LungMaskParams  # noqa: E402
from pacs_node.ml.mining import MiningParams  # noqa: E402
from pacs_node.ml.modelcard import Inference  # noqa: E402
from pacs_node.ml.phantom.variation import Variation  # noqa: E402
from pacs_node.ml.preprocess import FrontEndConfig  # noqa: E402
from pacs_node.ml.samples import SampleParams  # noqa: E402
from pacs_node.ml.train import TrainConfig, train, training_cases  # noqa: E402

PHANTOM_SEED = 20250
STUDIES = 160
TRAIN_SEED = 1
V2_PHANTOM_SEED = 30300
V2_STUDIES = 96
V3_CLASSIC_STUDIES = 48
V4_PHANTOM_SEED = 41400
V4_STUDIES = 48


def v2_front_end() -> FrontEndConfig:
    """The v2 front end: v1's, with the search region and candidate rules that generalise."""
    base = FrontEndConfig()
    lungs = LungMaskParams(margin_mm=10.0, lobe_gap_mm=12.0)
    passes = (replace(base.candidates.passes[0], max_candidates=500),
              replace(base.candidates.passes[1], max_candidates=800))
    candidates = CandidateParams(passes=passes, min_above_parenchyma_hu=60.0)
    return replace(base, lungs=lungs, candidates=candidates)


def recipe(name: str, out: Path, studies: int | None, steps: int) -> TrainConfig:
    """The training configuration of a bundled model."""
    if name == "v4":
        v3 = recipe("v3", out, studies, steps)
        return replace(
            v3, version="4.0.0",
            description="Lung nodule detector trained only on synthetic chest CT phantoms: v3's "
                        "domain-randomised (Variation.wide()) and classic studies plus 48 more wide ones, "
                        "a third 96 mm input channel, model-mined hard negatives (pacs_node.ml.phantom)",
            extra_phantoms=v3.extra_phantoms + (
                PhantomSet(count=V4_STUDIES, seed=V4_PHANTOM_SEED, variation=Variation.wide()),),
            network=replace(v3.network, channels=3), samples=replace(v3.samples, channels=3),
            lr=7e-4, init_weights=Path("models/lung-nodule-synthetic-v3/weights.pt"))
    if name == "v3":
        v2 = recipe("v2", out, studies, steps)
        return replace(
            v2, version="3.0.0",
            description="Lung nodule detector trained only on synthetic chest CT phantoms: domain-randomised "
                        "(Variation.wide()) and classic studies, model-mined hard negatives (pacs_node.ml.phantom)",
            extra_phantoms=(PhantomSet(count=V3_CLASSIC_STUDIES, seed=PHANTOM_SEED),),
            samples=SampleParams(negatives_per_case=300, hard_negatives=100),
            mining=MiningParams(share=0.5, pool_fraction=0.1, first_epoch=0),
            inference=Inference(flips=4, rescore_above=0.2),
            calibrate_cases=14, init_weights=Path("models/lung-nodule-synthetic-v2/weights.pt"))
    if name == "v1":
        return TrainConfig(
            name=out.name, version="1.0.0",
            description="Lung nodule detector trained only on synthetic chest CT phantoms (pacs_node.ml.phantom)",
            phantoms=PhantomSet(count=studies or STUDIES, seed=PHANTOM_SEED),
            steps_per_epoch=steps, calibrate_cases=16)
    return TrainConfig(
        name=out.name, version="2.0.0",
        description="Lung nodule detector trained only on synthetic chest CT phantoms drawn with domain "
                    "randomisation (pacs_node.ml.phantom, Variation.wide())",
        phantoms=PhantomSet(count=studies or V2_STUDIES, seed=V2_PHANTOM_SEED, variation=Variation.wide()),
        steps_per_epoch=steps, calibrate_cases=10, lr=1e-3, front_end=v2_front_end(),
        init_weights=Path("models/lung-nodule-synthetic-v1/weights.pt"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", choices=("v1", "v2", "v3", "v4"), default="v3")
    ap.add_argument("--out", type=Path, default=None, help="default models/lung-nodule-synthetic-RECIPE")
    ap.add_argument("--cache", type=Path, default=None, help="default var/cache/phantom-train[-RECIPE]")
    ap.add_argument("--studies", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--steps-per-epoch", type=int, default=200)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--cache-only", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    out = args.out or Path(f"models/lung-nodule-synthetic-{args.recipe}")
    cache = args.cache or Path("var/cache/phantom-train" + ("" if args.recipe == "v1" else f"-{args.recipe}"))
    config = recipe(args.recipe, out, args.studies, args.steps_per_epoch)
    if args.cache_only:
        cases = training_cases(cache, "phantom", config)
        paths = build_cache(cases, cache, config.front_end, config.samples, TRAIN_SEED, workers=config.workers,
                            say=lambda line: print(line, flush=True))
        print(f"cached {len(paths)}/{len(cases)} studies under {cache}")
        return
    train(cache, "phantom", out, epochs=args.epochs, seed=TRAIN_SEED, resume=args.resume,
          config=config, progress=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
