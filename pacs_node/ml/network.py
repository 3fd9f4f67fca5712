"""The candidate classifier: a small 3D CNN on co-centred patches (24³ voxels by default).

Input (``B x C x P x P x P``, ``P = patch_size``, 24 by default, ``C = channels``): channel 0
is the fine patch (``P`` voxels of 1 mm around the candidate), channel 1 the context patch
(``P`` voxels of 2 mm around the same point) and, with ``channels = 3``, channel 2 the
wide patch (``P`` voxels of 4 mm: 96 mm, enough for a 30 mm nodule and what surrounds
it), all in HU normalised by :func:`normalise_hu` and indexed ``[z, y, x]`` along S, P, L
(any of the 48 axis symmetries is fine: the network is trained with all of them).  The
geometric centre of a patch is the point between its two middle voxels.

Heads (:class:`NetOutput`): ``logit`` (nodule or not), ``type_logits`` over
:data:`TYPE_NAMES`, ``log_diameter`` (natural log of the diameter in mm) and
``offset`` (nodule centre minus patch centre, ``z, y, x`` in mm).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

#: Class order of the type head (the values of :class:`pacs_node.imaging.findings.NoduleType`).
TYPE_NAMES: tuple[str, ...] = ("solid", "part-solid", "ground-glass", "calcified")


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture hyper-parameters (stored in ``model.toml``).

    Attributes
    ----------
    patch_size
        Edge of the input patches in voxels (a multiple of 8).
    fine_mm, context_mm
        Voxel size of the fine and context channels (mm).
    widths
        Channels of the stem and of the three following stages.
    stem_stride
        1: the stem works at full resolution and the next three stages halve it;
        2: the stem halves it, the first stage keeps it (cheaper on CPU).
    head_channels
        Channels of the 1 x 1 x 1 reduction before the fully connected layer.
    hidden
        Width of the fully connected layer.
    dropout
        Dropout before the heads (training only).
    hu_window
        HU window the input is clipped to, then mapped to ``[-1, 1]``.
    channels
        Input patches: 2 (fine and context) or 3 (also the wide patch of ``4 * fine_mm``
        voxels).  Models before v4 have 2.
    """

    patch_size: int = 24
    fine_mm: float = 1.0
    context_mm: float = 2.0
    widths: tuple[int, int, int, int] = (8, 32, 64, 96)
    stem_stride: int = 1
    head_channels: int = 32
    hidden: int = 128
    dropout: float = 0.2
    hu_window: tuple[float, float] = (-1100.0, 400.0)
    channels: int = 2

    def __post_init__(self) -> None:
        if self.patch_size % 8 or self.patch_size < 16:
            raise ValueError(f"patch_size must be a multiple of 8 and >= 16, got {self.patch_size}")
        if len(self.widths) != 4 or min(self.widths) < 1:
            raise ValueError(f"widths must be 4 positive channel counts, got {self.widths}")
        if not self.hu_window[0] < self.hu_window[1]:
            raise ValueError(f"hu_window must be increasing, got {self.hu_window}")
        if self.stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {self.stem_stride}")
        if self.context_mm < self.fine_mm:
            raise ValueError("context_mm must be >= fine_mm")
        if self.channels not in (2, 3):
            raise ValueError(f"channels must be 2 or 3, got {self.channels}")

    def to_dict(self) -> dict[str, Any]:
        """Plain values for ``model.toml``."""
        d = asdict(self)
        d["widths"] = list(self.widths)
        d["hu_window"] = list(self.hu_window)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetworkConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown network parameter(s): {', '.join(sorted(unknown))}")
        kw = dict(d)
        if "widths" in kw:
            kw["widths"] = tuple(int(v) for v in kw["widths"])
        if "hu_window" in kw:
            kw["hu_window"] = tuple(float(v) for v in kw["hu_window"])
        return cls(**kw)


class NetOutput(NamedTuple):
    """Raw network outputs for a batch of ``B`` candidates."""

    logit: torch.Tensor  #: ``B``, nodule vs. not
    type_logits: torch.Tensor  #: ``B x 4`` over :data:`TYPE_NAMES`
    log_diameter: torch.Tensor  #: ``B``, log of the diameter in mm
    offset: torch.Tensor  #: ``B x 3``, nodule centre minus patch centre (z, y, x), mm


def normalise_hu(hu: torch.Tensor | np.ndarray, window: tuple[float, float]) -> torch.Tensor:
    """Clip HU to ``window`` and map it linearly to ``[-1, 1]`` (``float32`` tensor)."""
    t = torch.as_tensor(hu, dtype=torch.float32)
    lo, hi = window
    return (t.clamp(lo, hi) - (lo + hi) / 2) * (2.0 / (hi - lo))


def _conv(ci: int, co: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(ci, co, 3, stride, 1, bias=False), nn.BatchNorm3d(co), nn.ReLU(inplace=True))


class NoduleNet(nn.Module):
    """Classifier and regressor of nodule candidates (see the module docstring)."""

    def __init__(self, config: NetworkConfig | None = None) -> None:
        super().__init__()
        self.config = config or NetworkConfig()
        w0, w1, w2, w3 = self.config.widths
        self.features = nn.Sequential(
            _conv(self.config.channels, w0, self.config.stem_stride),
            _conv(w0, w1, 3 - self.config.stem_stride), _conv(w1, w1, 1),
            _conv(w1, w2, 2), _conv(w2, w2, 1),
            _conv(w2, w3, 2), _conv(w3, w3, 1),
            nn.Conv3d(w3, self.config.head_channels, 1, bias=False),
            nn.BatchNorm3d(self.config.head_channels),
            nn.ReLU(inplace=True),
        )
        side = self.config.patch_size // 8
        self.trunk = nn.Sequential(
            nn.Flatten(),
            nn.Linear(self.config.head_channels * side**3, self.config.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(self.config.dropout),
        )
        self.head = nn.Linear(self.config.hidden, 1 + len(TYPE_NAMES) + 1 + 3)

    def forward(self, x: torch.Tensor) -> NetOutput:
        """Score a batch ``B x C x P x P x P`` of normalised patches."""
        h = self.head(self.trunk(self.features(x)))
        n = len(TYPE_NAMES)
        return NetOutput(h[:, 0], h[:, 1 : 1 + n], h[:, 1 + n] + float(np.log(8.0)), h[:, 2 + n : 5 + n] * 4.0)


def fused_for_inference(model: NoduleNet) -> NoduleNet:
    """An evaluation-mode copy of ``model`` with every BatchNorm folded into the convolution before it.

    The copy computes the same outputs (within float rounding) with one pass over
    each feature map fewer; ``model`` itself is left as it is (it may be training).
    """
    fused = copy.deepcopy(model).eval()
    layers: list[nn.Module] = []
    for layer in fused.features:
        if isinstance(layer, nn.BatchNorm3d) and layers and isinstance(layers[-1], nn.Conv3d):
            layers[-1] = fuse_conv_bn_eval(layers[-1], layer)
        elif isinstance(layer, nn.Sequential):
            conv, bn, *rest = layer
            layers.append(nn.Sequential(fuse_conv_bn_eval(conv, bn), *rest))
        else:
            layers.append(layer)
    fused.features = nn.Sequential(*layers)
    return fused


def widen_input(state: dict[str, torch.Tensor], model: NoduleNet) -> dict[str, torch.Tensor]:
    """``state`` (weights of a network with fewer input channels) made loadable into ``model``.

    The stem's kernels for the added channels start at zero, so the widened network
    computes exactly what the narrower one did until training teaches it to use them.
    Any other difference is left for ``load_state_dict`` to report.
    """
    key = "features.0.0.weight"
    theirs, ours = state.get(key), model.state_dict().get(key)
    if theirs is None or ours is None or theirs.shape == ours.shape or theirs.shape[1] > ours.shape[1] \
            or theirs.shape[0] != ours.shape[0] or theirs.shape[2:] != ours.shape[2:]:
        return state
    widened = torch.zeros_like(ours)
    widened[:, : theirs.shape[1]] = theirs
    return {**state, key: widened}


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
