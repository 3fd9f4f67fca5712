"""Training batches: which samples go together, and the tensors the network gets.

:func:`batches` draws index batches with a fixed share of positives across all cases
of a :class:`~pacs_node.ml.patchstore.PatchStore`; :func:`make_batch` reads those
patches, crops and augments them; :func:`training_batches` does both for one epoch,
optionally one background thread ahead (``prefetch`` batches queued), so that reading
and augmenting overlap the network's step on a GPU.  A single producer consumes the
random stream in the same order as without prefetching: runs stay reproducible and a
resumed run continues the same stream.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch

from pacs_node.ml.augment import AugmentParams, augment
from pacs_node.ml.network import normalise_hu
from pacs_node.ml.patchstore import PatchStore


def center_crop(patches: np.ndarray, size: int) -> np.ndarray:
    """The central ``size``³ of ``N x P x P x P`` patches (``P - size`` even: the centre is kept)."""
    p = patches.shape[-1]
    m = (p - size) // 2
    if m == 0:
        return patches
    return patches[:, m:m + size, m:m + size, m:m + size]


def batches(data: PatchStore, rng: np.random.Generator, batch_size: int, positive_fraction: float,
            steps: int, hard: np.ndarray | None = None, hard_share: float = 0.0) -> Iterator[np.ndarray]:
    """Index batches with a fixed share of positives (sampled with replacement) and negatives.

    Negatives are drawn without replacement from a shuffled order over all cases,
    reshuffled when used up.  With a pool of ``hard`` negatives (see
    :mod:`pacs_node.ml.mining`), ``hard_share`` of each batch's negatives come from
    the pool instead, with replacement.
    """
    pos = np.nonzero(data.label == 1)[0]
    neg = np.nonzero(data.label == 0)[0]
    n_pos = max(1, int(round(batch_size * positive_fraction))) if len(pos) else 0
    n_neg = batch_size - n_pos
    n_hard = int(round(n_neg * hard_share)) if hard is not None and len(hard) else 0
    n_easy = n_neg - n_hard
    neg_order = rng.permutation(neg)
    k = 0
    for _ in range(steps):
        if k + n_easy > len(neg_order):
            neg_order = rng.permutation(neg)
            k = 0
        parts = [rng.choice(pos, n_pos) if n_pos else np.empty(0, dtype=np.int64), neg_order[k:k + n_easy]]
        if n_hard:
            parts.append(rng.choice(hard, n_hard))  # type: ignore[arg-type]
        k += n_easy
        yield np.concatenate(parts)


class Batch(NamedTuple):
    """Network input (``B x C x P x P x P``, normalised HU) and targets of one batch."""

    x: torch.Tensor
    label: torch.Tensor
    type: torch.Tensor
    diameter: torch.Tensor
    offset: torch.Tensor

    def to(self, device: str | torch.device, non_blocking: bool = False) -> Batch:
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in self))

    def pin_memory(self) -> Batch:
        return Batch(*(t.pin_memory() for t in self))


def make_batch(data: PatchStore, idx: np.ndarray, rng: np.random.Generator | None, patch_size: int,
               hu_window: tuple[float, float], params: AugmentParams | None = None) -> Batch:
    """Read, crop to ``patch_size`` and (with ``rng``) augment the samples ``idx`` (CPU tensors)."""
    patches = [center_crop(p, patch_size) for p in data.read(idx)]
    if rng is not None:
        x, off = augment(patches, data.offset[idx], rng, params or AugmentParams())
    else:
        x = torch.from_numpy(np.stack(patches, axis=1).astype(np.float32))
        off = torch.from_numpy(data.offset[idx].astype(np.float32))
    return Batch(normalise_hu(x, hu_window), torch.from_numpy(data.label[idx].astype(np.float32)),
                 torch.from_numpy(data.type[idx].astype(np.int64)),
                 torch.from_numpy(data.diameter[idx].astype(np.float32)), off)


def training_batches(data: PatchStore, rng: np.random.Generator, *, batch_size: int, positive_fraction: float,
                     steps: int, patch_size: int, hu_window: tuple[float, float], params: AugmentParams,
                     prefetch: int = 0, pin_memory: bool = False, hard: np.ndarray | None = None,
                     hard_share: float = 0.0) -> Iterator[Batch]:
    """One epoch of augmented batches; ``prefetch > 0``: prepared by a thread, at most that many ahead.

    ``hard``, ``hard_share``: mined negatives, as :func:`batches` takes them.
    """

    def produce() -> Iterator[Batch]:
        for idx in batches(data, rng, batch_size, positive_fraction, steps, hard, hard_share):
            b = make_batch(data, idx, rng, patch_size, hu_window, params)
            yield b.pin_memory() if pin_memory else b

    if prefetch <= 0:
        yield from produce()
        return
    q: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def put(item: tuple[str, object]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for b in produce():
                if not put(("batch", b)):
                    return
            put(("end", None))
        except BaseException as exc:  # handed to the consumer, which raises it
            put(("error", exc))

    thread = threading.Thread(target=run, name="batch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "end":
                break
            if kind == "error":
                raise item  # type: ignore[misc]
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()
