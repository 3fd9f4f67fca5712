"""Patch-level validation: loss, ROC AUC, sensitivity, specificity and head errors on held-out cases."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from pacs_node.ml.batches import make_batch
from pacs_node.ml.losses import losses
from pacs_node.ml.network import NoduleNet
from pacs_node.ml.patchstore import PatchStore
from pacs_node.ml.precision import Precision

if TYPE_CHECKING:
    from pacs_node.ml.train import TrainConfig


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of scores for labels 1 vs. 0 (ties share their rank); NaN if a class is missing."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="stable")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def evaluate_patches(model: NoduleNet, data: PatchStore, cfg: TrainConfig, device: str,
                     precision: Precision | None = None, chunk: int = 128) -> dict[str, float]:
    """Loss and patch-level metrics on un-augmented samples, read ``chunk`` at a time."""
    model.eval()
    precision = precision or Precision(device.split(":", 1)[0])
    scores, types, diams, offs, total = [], [], [], [], 0.0
    with torch.inference_mode():
        for s in range(0, len(data), chunk):
            idx = np.arange(s, min(len(data), s + chunk))
            b = make_batch(data, idx, None, cfg.network.patch_size, cfg.network.hu_window).to(device)
            with precision.autocast():
                out = model(b.x)
                loss, _ = losses(out, b.label, b.type, b.diameter, b.offset, cfg.loss_weights)
            total += float(loss) * len(idx)
            scores.append(torch.sigmoid(out.logit.float()).cpu().numpy())
            types.append(out.type_logits.argmax(1).cpu().numpy())
            diams.append(torch.exp(out.log_diameter.float()).cpu().numpy())
            offs.append(out.offset.float().cpu().numpy())
    model.train()
    sc, ty, di, of = (np.concatenate(v) for v in (scores, types, diams, offs))
    pos = data.label == 1
    typed = pos & (data.type >= 0)
    return {
        "val_loss": total / max(1, len(data)),
        "val_auc": auc(sc, data.label),
        "val_sens_at_0.5": float((sc[pos] >= 0.5).mean()) if pos.any() else float("nan"),
        "val_spec_at_0.5": float((sc[~pos] < 0.5).mean()) if (~pos).any() else float("nan"),
        "val_type_acc": float((ty[typed] == data.type[typed]).mean()) if typed.any() else float("nan"),
        "val_diameter_mae_mm": float(np.abs(di[pos] - data.diameter[pos]).mean()) if pos.any() else float("nan"),
        "val_offset_mae_mm": float(np.linalg.norm(of[pos] - data.offset[pos], axis=1).mean()) if pos.any() else float("nan"),
    }
