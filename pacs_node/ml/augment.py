"""Per-batch augmentation of HU patches: axis symmetries, HU offset and scale, noise, blur, sharpening.

Cheap enough to run on every batch at training time, so the cache holds each patch
once (:mod:`pacs_node.ml.patchstore`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class AugmentParams:
    """Per-batch augmentation (HU, voxels of the fine grid).

    Attributes
    ----------
    hu_offset
        Uniform HU offset range (+/-).
    hu_scale
        Uniform relative HU scale range (+/-).
    noise_hu
        Range of the standard deviation of added noise (HU); added with probability
        ``noise_p``, half of the time smoothed (correlated).
    blur_p, sharpen_p
        Probabilities of a Gaussian blur (sigma 0.4 to 1.0 voxel) or an unsharp mask.
    """

    hu_offset: float = 30.0
    hu_scale: float = 0.05
    noise_hu: tuple[float, float] = (10.0, 60.0)
    noise_p: float = 0.5
    blur_p: float = 0.2
    sharpen_p: float = 0.15


def _smooth3(x: torch.Tensor, passes: int = 1) -> torch.Tensor:
    """Separable [1, 2, 1] / 4 smoothing of ``B x C x D x H x W`` along the three spatial axes.

    One pass is a Gaussian of about 0.7 voxel; ``n`` passes about ``0.7 sqrt(n)``.
    Replicated borders; no convolution call, so it is cheap on CPU.
    """
    for _ in range(passes):
        for dim in (2, 3, 4):
            n = x.shape[dim]
            lo = torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, n - 1)], dim)
            hi = torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim)
            x = 0.5 * x + 0.25 * (lo + hi)
    return x


#: Standard deviation of white noise after one :func:`_smooth3` pass ((6/16)^(3/2)).
_SMOOTH3_NOISE_STD = (6.0 / 16.0) ** 1.5


def symmetry(x: torch.Tensor, offset: torch.Tensor, perm: Sequence[int], flips: Sequence[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one of the 48 axis symmetries to patches ``C x P x P x P`` and their offset (3,)."""
    x = x.permute(0, 1 + perm[0], 1 + perm[1], 1 + perm[2])
    offset = offset[list(perm)].clone()
    dims = [1 + a for a in range(3) if flips[a]]
    if dims:
        x = torch.flip(x, dims)
        for a in range(3):
            if flips[a]:
                offset[a] = -offset[a]
    return x, offset


def augment(patches: Sequence[np.ndarray], offset: np.ndarray, rng: np.random.Generator,
            params: AugmentParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented HU patches ``B x C x P x P x P`` (``float32``; ``patches``: one ``B x P x P x P``
    array per channel, finest first) and their offsets ``B x 3`` (mm)."""
    x = torch.from_numpy(np.stack(patches, axis=1).astype(np.float32))
    off = torch.from_numpy(offset.astype(np.float32))
    b = len(x)
    xs, offs = [], []
    for i in range(b):
        perm = tuple(int(v) for v in rng.permutation(3))
        flips = tuple(bool(v) for v in rng.random(3) < 0.5)
        xi, oi = symmetry(x[i], off[i], perm, flips)
        xs.append(xi)
        offs.append(oi)
    x = torch.stack(xs).contiguous()
    off = torch.stack(offs)
    scale = torch.from_numpy(rng.uniform(1 - params.hu_scale, 1 + params.hu_scale, b).astype(np.float32))
    shift = torch.from_numpy(rng.uniform(-params.hu_offset, params.hu_offset, b).astype(np.float32))
    x = x * scale.view(b, 1, 1, 1, 1) + shift.view(b, 1, 1, 1, 1)
    if rng.random() < params.blur_p:
        sel = torch.from_numpy(rng.random(b) < 0.5)
        if sel.any():
            x[sel] = _smooth3(x[sel], int(rng.integers(1, 3)))
    if rng.random() < params.sharpen_p:
        sel = torch.from_numpy(rng.random(b) < 0.5)
        if sel.any():
            a = float(rng.uniform(0.2, 0.7))
            xs_ = x[sel]
            x[sel] = xs_ + a * (xs_ - _smooth3(xs_, int(rng.integers(1, 4))))
    sel = rng.random(b) < params.noise_p
    if sel.any():
        k = int(sel.sum())
        sd = torch.from_numpy(rng.uniform(*params.noise_hu, k).astype(np.float32))
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        noise = torch.randn((k, *x.shape[1:]), generator=gen)
        if rng.random() < 0.5:
            noise = _smooth3(noise) / _SMOOTH3_NOISE_STD  # spatially correlated, same std
        for channel in range(1, noise.shape[1]):  # channel k averages 8**k fine voxels
            noise[:, channel] *= 0.5**channel
        x[torch.from_numpy(sel)] += noise * sd.view(-1, 1, 1, 1, 1)
    return x, off
