"""Hard-negative mining: the negatives the model currently scores highest are drawn more often.

The detector meets about a thousand candidates per scan and must reject nearly all of
them; the few mimics it scores highest (airway rings, vessel ends at the pleura, partial
volume over the dome) set its false positives per scan, yet uniform sampling shows each
of them rarely.  Before each epoch from ``first_epoch`` on, :func:`score_samples` scores
every training negative without augmentation and :func:`hard_pool` keeps the highest
``pool_fraction`` of them; that epoch's batches draw ``share`` of their negatives from
the pool (with replacement) and the rest uniformly, as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pacs_node.ml.batches import make_batch
from pacs_node.ml.network import NoduleNet
from pacs_node.ml.patchstore import PatchStore
from pacs_node.ml.precision import Precision


@dataclass(frozen=True)
class MiningParams:
    """How hard negatives are mined (stored in the model card).

    Attributes
    ----------
    share
        Fraction of each batch's negatives drawn from the pool.
    pool_fraction
        Fraction of the training negatives, highest scored first, that form the pool.
    first_epoch
        First epoch (0-based) that mines; earlier epochs sample uniformly.  0 suits
        fine-tuning, where the initial weights already rank negatives meaningfully.
    """

    share: float = 0.5
    pool_fraction: float = 0.1
    first_epoch: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"share must be in [0, 1], got {self.share}")
        if not 0.0 < self.pool_fraction <= 1.0:
            raise ValueError(f"pool_fraction must be in (0, 1], got {self.pool_fraction}")
        if self.first_epoch < 0:
            raise ValueError(f"first_epoch must be >= 0, got {self.first_epoch}")


def score_samples(model: NoduleNet, data: PatchStore, idx: np.ndarray, device: str,
                  precision: Precision | None = None, chunk: int = 256) -> np.ndarray:
    """Nodule probability of the samples ``idx``, un-augmented, read ``chunk`` at a time."""
    precision = precision or Precision(device.split(":", 1)[0])
    cfg = model.config
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for s in range(0, len(idx), chunk):
            b = make_batch(data, idx[s:s + chunk], None, cfg.patch_size, cfg.hu_window)
            with precision.autocast():
                logit = model(b.x.to(device)).logit
            out.append(torch.sigmoid(logit.float()).cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def hard_pool(idx: np.ndarray, scores: np.ndarray, fraction: float) -> np.ndarray:
    """The ``fraction`` of ``idx`` with the highest scores (at least one when ``idx`` is not empty)."""
    if len(idx) == 0:
        return idx
    k = max(1, int(round(len(idx) * fraction)))
    return idx[np.argsort(-scores, kind="stable")[:k]]
