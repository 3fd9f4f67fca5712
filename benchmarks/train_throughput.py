#!/usr/bin/env python
"""Training throughput and memory: one epoch of ``pacs_node.ml.train.train`` on a made-up patch cache.

    .venv/bin/python benchmarks/train_throughput.py --cases 40 --samples-per-case 150 --steps 20

Writes ``--cases`` case folders of random ``int16`` patches (the size of LUNA16-scale
samples, ``P = 32``, cropped to the default network's 24) where the cache of a
phantom set would hold them, so :func:`~pacs_node.ml.train.train` finds every case
cached and only trains: the front end never runs.  Prints one JSON line: seconds per
epoch, samples per second, data wait, and the peak resident memory of the process
next to the size of the patches on disk (an in-memory cache would need all of it).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pacs_node.ml.cases import PhantomSet, list_cases  # noqa: E402
from pacs_node.ml.patchcache import case_path  # noqa: E402
from pacs_node.ml.patchstore import write_case  # noqa: E402
from pacs_node.ml.train import TrainConfig, train  # noqa: E402


def fake_case(rng: np.random.Generator, n: int, p: int) -> dict[str, np.ndarray]:
    label = (rng.random(n) < 0.25).astype(np.int8)
    patches = rng.normal(-700, 200, (n, p, p, p)).astype(np.int16)
    return {"fine": patches, "context": patches, "label": label, "type": np.where(label == 1, 0, -1).astype(np.int8),
            "diameter": np.where(label == 1, 8.0, 0.0).astype(np.float32),
            "offset": rng.normal(0, 1, (n, 3)).astype(np.float32), "kind": np.where(label == 1, 0, 2).astype(np.int8),
            "n_candidates": np.array(n), "n_nodules": np.array(1), "n_found": np.array(1), "scale": np.array(1.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--samples-per-case", type=int, default=150)
    ap.add_argument("--steps", type=int, default=20, help="batches in the epoch")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--prefetch", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--amp", default="auto")
    ap.add_argument("--work", type=Path, default=None, help="folder for the cache and the model (default: a temporary one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        cfg = TrainConfig(name="throughput", phantoms=PhantomSet(count=args.cases, seed=1), batch_size=args.batch_size,
                          steps_per_epoch=args.steps, val_fraction=0.05, calibrate_cases=0, threads=args.threads,
                          prefetch=args.prefetch, amp=args.amp, workers=1)
        cache = work / "cache"
        rng = np.random.default_rng(0)
        disk = 0
        for case in list_cases(cache, "phantom", cfg.phantoms):
            path = case_path(cache, case, cfg.front_end, cfg.samples, 0)
            if not path.exists():
                write_case(path, fake_case(rng, args.samples_per_case, cfg.samples.patch_size))
            disk += sum(f.stat().st_size for f in path.iterdir())
        result = train(cache, "phantom", work / "model", epochs=1, seed=0, device=args.device, config=cfg,
                       progress=lambda line: print(line, file=sys.stderr, flush=True))
        r = result.history[-1]
        print(json.dumps({
            "cases": args.cases, "samples": args.cases * args.samples_per_case, "patch_bytes_on_disk": disk,
            "epoch_samples": args.steps * args.batch_size, "epoch_s": round(r["epoch_s"], 2),
            "samples_per_s": round(r["samples_per_s"], 1), "data_wait_s": round(r["data_wait_s"], 2),
            "val_s": round(r["val_s"], 2), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "device": result.card.extra["training"]["device"], "precision": result.card.extra["training"]["precision"],
        }))


if __name__ == "__main__":
    main()
