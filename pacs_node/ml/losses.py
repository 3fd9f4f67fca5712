"""The training objective: score, type, diameter and offset losses of the classifier's heads."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pacs_node.ml.network import NetOutput


def losses(out: NetOutput, label: torch.Tensor, type_idx: torch.Tensor, diameter: torch.Tensor,
           offset: torch.Tensor, weights: Sequence[float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of score, type, diameter and offset losses (the last three on positives only).

    Parameters
    ----------
    out
        The network's output; heads computed in reduced precision are promoted to ``float32``.
    label
        1 nodule, 0 not (``float``).
    type_idx
        Index into :data:`~pacs_node.ml.network.TYPE_NAMES`, -1 unknown.
    diameter
        Apparent diameter (mm), positives only.
    offset
        Nodule centre minus patch centre (mm, ``B x 3``), positives only.
    weights
        Weights of the four losses, in that order.

    Returns
    -------
    tuple[torch.Tensor, dict[str, torch.Tensor]]
        The total (for ``backward``) and each part, detached (on the device: summing
        them there spares a host synchronisation per step).
    """
    out = NetOutput(*(t.float() for t in out))
    pos = label > 0.5
    l_score = F.binary_cross_entropy_with_logits(out.logit, label)
    zero = out.logit.sum() * 0.0
    typed = pos & (type_idx >= 0)
    l_type = F.cross_entropy(out.type_logits[typed], type_idx[typed]) if typed.any() else zero
    if pos.any():
        l_diam = F.smooth_l1_loss(out.log_diameter[pos], torch.log(diameter[pos].clamp_min(1.0)), beta=0.1)
        l_off = F.smooth_l1_loss(out.offset[pos] / 2.0, offset[pos] / 2.0, beta=0.5)
    else:
        l_diam = l_off = zero
    total = weights[0] * l_score + weights[1] * l_type + weights[2] * l_diam + weights[3] * l_off
    parts = {k: v.detach() for k, v in (("score", l_score), ("type", l_type), ("diameter", l_diam), ("offset", l_off))}
    return total, parts
