"""Train the candidate classifier and write a model folder.

:func:`train` lists the cases (:mod:`pacs_node.ml.cases`), builds or reuses the patch
cache (:mod:`pacs_node.ml.patchcache`: resumable, bad cases skipped), holds out a
validation share of the cases, and trains :class:`~pacs_node.ml.network.NoduleNet`
on balanced batches streamed from the cache (:mod:`pacs_node.ml.patchstore`,
:mod:`pacs_node.ml.batches`) with per-batch augmentation (:mod:`pacs_node.ml.augment`),
on CUDA in mixed precision when present, else on the CPU (:mod:`pacs_node.ml.precision`).
It checkpoints after every epoch (:mod:`pacs_node.ml.checkpoint`, so ``resume=True``
continues where it stopped) and rewrites the model folder (:mod:`pacs_node.ml.modelfolder`)
after every epoch, so an interrupted run still leaves a usable model.  At the end,
the full detector runs on the validation studies to pick the operating point
(:mod:`pacs_node.ml.calibrate`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from pacs_node.ml.augment import AugmentParams
from pacs_node.ml.batches import training_batches
from pacs_node.ml.calibrate import FROC_FP_RATES, calibrate, froc_points
from pacs_node.ml.cases import Case, PhantomSet, list_cases
from pacs_node.ml.checkpoint import TrainingState, checkpoint_path
from pacs_node.ml.losses import losses
from pacs_node.ml.mining import MiningParams, hard_pool, score_samples
from pacs_node.ml.modelcard import Inference, ModelCard, Thresholds
from pacs_node.ml.modelfolder import card_extra, jsonable, write_model
from pacs_node.ml.network import NetworkConfig, NoduleNet, count_parameters, widen_input
from pacs_node.ml.patchcache import build_cache
from pacs_node.ml.patchstore import PatchStore
from pacs_node.ml.precision import Precision, select_device, select_precision
from pacs_node.ml.preprocess import FrontEndConfig
from pacs_node.ml.samples import SampleParams
from pacs_node.ml.validation import evaluate_patches

__all__ = ["FROC_FP_RATES", "TrainConfig", "TrainResult", "froc_points", "train"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Everything :func:`train` needs besides the data, the epochs and the seed.

    Attributes
    ----------
    name, version, description
        Written to ``model.toml``.
    batch_size, lr, weight_decay, positive_fraction
        Optimisation: AdamW with a cosine schedule and a short warm-up; each batch
        holds ``positive_fraction`` positives.
    steps_per_epoch
        Default: enough batches to show every training negative once per epoch.
    val_fraction
        Share of the cases held out for validation (at least one case).
    workers
        Processes building the cache.
    cache_dir
        Where patch caches go.  Default: ``data_dir`` itself for ``phantom`` and
        ``data_dir/.pacs-node-cache`` otherwise.
    phantoms
        The synthetic studies for ``fmt="phantom"``.
    extra_phantoms
        More synthetic sets trained on beside ``phantoms`` (e.g. classic studies mixed
        into a domain-randomised set, so that the model keeps what it knew).
    calibrate_cases
        Most validation studies the full detector runs on at the end (0: none).
    target_fp_per_scan
        Operating point: false positives per scan on the validation studies.
    threads
        Torch threads (default: all cores).
    amp
        Mixed precision: ``"auto"`` (CUDA: bf16, or fp16 with gradient scaling on
        GPUs without bf16; CPU: off), ``"bf16"``, ``"fp16"`` (CUDA only) or ``"off"``.
    prefetch
        Batches a background thread prepares ahead (0: none).  Default: 2 on CUDA
        (reading and augmenting overlap the GPU's step), 0 on the CPU, where the
        thread would only compete with the network for the same cores.
    max_open_cases
        Most cases whose patch files the training store keeps open.
    inference
        Test-time flips of the model (card ``[inference]``), used by calibration too, so
        that the operating point is chosen with the scores the node will produce.
    mining
        Hard-negative mining (:class:`~pacs_node.ml.mining.MiningParams`); ``None``:
        negatives are drawn uniformly.
    init_weights
        Start from these weights (a ``weights.pt`` of the same architecture, e.g. an
        earlier model) instead of a random initialisation: fine-tuning.
    """

    name: str = "lung-nodule-model"
    version: str = "1.0.0"
    description: str = "Lung nodule detector (candidate generator + 3D CNN)"
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    positive_fraction: float = 0.3
    steps_per_epoch: int | None = None
    val_fraction: float = 0.1
    workers: int = 2
    cache_dir: Path | None = None
    phantoms: PhantomSet | None = None
    extra_phantoms: tuple[PhantomSet, ...] = ()
    calibrate_cases: int = 20
    target_fp_per_scan: float = 1.0
    threads: int | None = None
    amp: str = "auto"
    prefetch: int | None = None
    max_open_cases: int = 64
    init_weights: Path | None = None
    mining: MiningParams | None = None
    inference: Inference = field(default_factory=Inference)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    front_end: FrontEndConfig = field(default_factory=FrontEndConfig)
    samples: SampleParams = field(default_factory=SampleParams)
    augment: AugmentParams = field(default_factory=AugmentParams)
    loss_weights: tuple[float, float, float, float] = (1.0, 0.5, 1.0, 0.5)


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` produced: the model folder and the per-epoch history."""

    model_dir: Path
    history: list[dict[str, float]]
    card: ModelCard


def _split(cases: list[Case], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    n = len(cases)
    if n < 2:
        return list(range(n)), []
    n_val = max(1, int(round(n * fraction)))
    order = np.random.default_rng([seed, 7]).permutation(n)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def training_cases(data_dir: Path, fmt: str, cfg: TrainConfig) -> list[Case]:
    """The cases a configuration trains on: the data folder's, or every phantom set's.

    Raises
    ------
    ValueError
        As :func:`list_cases`, or if two phantom sets share a study.
    """
    cases = list_cases(data_dir, fmt, cfg.phantoms)
    if fmt == "phantom":
        cases += [c for extra in cfg.extra_phantoms for c in list_cases(data_dir, fmt, extra)]
        if len({c.case_id for c in cases}) != len(cases):
            raise ValueError("the phantom sets share studies (same seed and index); give each set its own seed")
    return cases


def _check(cfg: TrainConfig) -> None:
    if cfg.network.patch_size > cfg.samples.patch_size or (cfg.samples.patch_size - cfg.network.patch_size) % 2:
        raise ValueError("samples.patch_size must be network.patch_size plus an even number of voxels")
    if cfg.network.channels != cfg.samples.channels:
        raise ValueError(f"network.channels ({cfg.network.channels}) and samples.channels "
                         f"({cfg.samples.channels}) differ")
    if abs(cfg.network.fine_mm - cfg.front_end.fine_mm) > 1e-9:
        raise ValueError("network.fine_mm and front_end.fine_mm differ")
    if cfg.prefetch is not None and cfg.prefetch < 0:
        raise ValueError(f"prefetch must be >= 0, got {cfg.prefetch}")


def train(data_dir: Path, fmt: str, out_dir: Path, *, epochs: int = 8, seed: int = 0, resume: bool = False,
          device: str | None = None, config: TrainConfig | None = None,
          progress: Callable[[str], None] | None = None) -> TrainResult:
    """Train a detector model and write its folder.

    Parameters
    ----------
    data_dir
        LUNA16 folder (``fmt="luna16"``), folder of phantom DICOM studies
        (``fmt="dicom"``), or the cache folder of generated phantoms (``fmt="phantom"``).
    fmt
        ``"luna16"``, ``"dicom"`` or ``"phantom"``.
    out_dir
        The model folder to write (``weights.pt``, ``model.toml``, ``checkpoints/``).
    epochs
        Total epochs (with ``resume``, the run stops at this epoch count too).
    seed
        Seeds splitting, sampling, augmentation and initialisation.
    resume
        Continue from ``out_dir/checkpoints/last.pt`` if present.
    device
        ``"cuda"``/``"cpu"``; default CUDA when available.
    config
        Everything else (:class:`TrainConfig`).
    progress
        Called with one human-readable line per event (default: the module logger).

    Returns
    -------
    TrainResult
        Model folder, per-epoch history and the written card.
    """
    cfg = config or TrainConfig()
    say = progress or log.info
    out_dir, data_dir = Path(out_dir), Path(data_dir)
    _check(cfg)
    dev = select_device(device)
    precision = select_precision(dev, cfg.amp)
    prefetch = cfg.prefetch if cfg.prefetch is not None else (2 if dev.startswith("cuda") else 0)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    if dev.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
    t_start = time.perf_counter()

    cases = training_cases(data_dir, fmt, cfg)
    cache_dir = cfg.cache_dir or (data_dir if fmt == "phantom" else data_dir / ".pacs-node-cache")
    say(f"cases={len(cases)} format={fmt} cache={cache_dir}")
    train_idx, val_idx = _split(cases, cfg.val_fraction, seed)
    t = time.perf_counter()
    cached = build_cache(cases, cache_dir, cfg.front_end, cfg.samples, seed, workers=cfg.workers, say=say)
    train_paths = [cached[cases[i].case_id] for i in train_idx if cases[i].case_id in cached]
    val_paths = [cached[cases[i].case_id] for i in val_idx if cases[i].case_id in cached]
    cache_s = time.perf_counter() - t
    if not train_paths:
        raise ValueError(f"no training case could be cached under {cache_dir} (see the case_failed lines)")
    channels = cfg.network.channels
    train_data = PatchStore(train_paths, max_open_cases=cfg.max_open_cases, channels=channels)
    val_data = PatchStore(val_paths, max_open_cases=cfg.max_open_cases, channels=channels) if val_paths else None
    st = train_data.stats
    say(f"cache ready in {cache_s:.0f}s: train cases={st['cases']} samples={len(train_data)} "
        f"positives={int(train_data.label.sum())} candidate_recall={st['found']}/{st['nodules']} "
        f"mean_candidates={st['candidates'] / max(1, st['cases']):.0f} store_index_mb={train_data.index_bytes / 1e6:.1f}"
        + (f"; val cases={val_data.stats['cases']} samples={len(val_data)}" if val_data else ""))

    torch.manual_seed(seed)
    model = NoduleNet(cfg.network).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_neg = int((train_data.label == 0).sum())
    per_batch_neg = cfg.batch_size - max(1, int(round(cfg.batch_size * cfg.positive_fraction)))
    steps = cfg.steps_per_epoch or max(1, math.ceil(n_neg / max(1, per_batch_neg)))
    total_steps = steps * epochs
    warmup = max(1, min(steps // 2, total_steps // 10))

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup)))) * 0.98 + 0.02

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    state = TrainingState(model, opt, sched, precision.grad_scaler(), np.random.default_rng([seed, 11]))
    history: list[dict[str, float]] = []
    start_epoch = 0
    last = checkpoint_path(out_dir)
    if resume and last.is_file():
        history, start_epoch = state.load(last)
        say(f"resumed from {last} after epoch {start_epoch}")
    elif resume:
        say(f"no checkpoint at {last}; starting from scratch")
    if start_epoch == 0 and cfg.init_weights is not None:
        weights = torch.load(cfg.init_weights, map_location=dev, weights_only=True)
        model.load_state_dict(widen_input(weights, model), strict=True)  # e.g. a 2-channel model's into 3
        say(f"initialised from {cfg.init_weights}")
    say(f"model parameters={count_parameters(model)} device={dev} precision={precision.name} "
        f"threads={torch.get_num_threads()} prefetch={prefetch} epochs={epochs} steps_per_epoch={steps} "
        f"batch={cfg.batch_size}")

    extra_base = card_extra(cfg, fmt=fmt, data_dir=data_dir, cases_total=len(cases), cases_train=len(train_idx),
                            cases_validation=len(val_idx), samples_train=len(train_data),
                            positives_train=int(train_data.label.sum()), seed=seed, epochs=epochs, model=model,
                            device=dev, precision=precision.name)
    for epoch in range(start_epoch, epochs):
        mined = _mine(model, train_data, cfg, dev, precision, epoch)
        if mined:
            say(f"epoch {epoch + 1}/{epochs} mined {len(mined[0])} hard negatives "
                f"(scores >= {mined[1]['mined_min_score']:.3f}) in {mined[1]['mine_s']:.0f}s")
        record = _train_epoch(state, train_data, cfg, dev, precision, steps, prefetch,
                              lambda s, loss, el: say(f"epoch {epoch + 1}/{epochs} step {s}/{steps} loss={loss:.4f} "
                                                      f"elapsed={el:.0f}s eta={el / s * (steps - s):.0f}s"),
                              hard=mined[0] if mined else None)
        record = {"epoch": float(epoch + 1), **record, **(mined[1] if mined else {})}
        t_val = time.perf_counter()
        if val_data is not None and len(val_data):
            record.update(evaluate_patches(model, val_data, cfg, dev, precision))
        record["val_s"] = time.perf_counter() - t_val
        history.append(record)
        say("epoch {}/{} ".format(epoch + 1, epochs) + " ".join(
            f"{k}={v:.4f}" for k, v in record.items() if k != "epoch"))
        state.save(last, history, epoch + 1, jsonable(asdict(cfg)))
        extra = dict(extra_base)
        extra["training"] = {**extra_base["training"], "epochs_completed": epoch + 1,  # type: ignore[dict-item]
                             "train_time_s": round(time.perf_counter() - t_start, 1)}
        extra["metrics"] = {"validation_patches": jsonable({k: round(v, 4) for k, v in record.items()})}
        write_model(model, cfg, out_dir, Thresholds(), extra)
    train_data.close()
    if val_data is not None:
        val_data.close()

    thresholds = Thresholds()
    extra = dict(extra_base)
    metrics: dict[str, object] = {}
    if history:
        metrics["validation_patches"] = jsonable({k: round(v, 4) for k, v in history[-1].items()})
    if cfg.calibrate_cases > 0 and val_idx:
        thresholds, froc = calibrate(model, cfg, [cases[i] for i in val_idx[: cfg.calibrate_cases]], say,
                                     dev)
        metrics["validation_scans"] = froc
    extra["training"] = {**extra_base["training"], "epochs_completed": len(history),  # type: ignore[dict-item]
                         "train_time_s": round(time.perf_counter() - t_start, 1)}
    extra["metrics"] = metrics
    card = write_model(model, cfg, out_dir, thresholds, extra)
    say(f"wrote {out_dir} (report_score={thresholds.report_score:.3f}) in {time.perf_counter() - t_start:.0f}s")
    return TrainResult(out_dir, history, card)


def _mine(model: NoduleNet, data: PatchStore, cfg: TrainConfig, dev: str, precision: Precision,
          epoch: int) -> tuple[np.ndarray, dict[str, float]] | None:
    """The hard-negative pool of this epoch and its statistics, or ``None`` when not mining."""
    if cfg.mining is None or epoch < cfg.mining.first_epoch:
        return None
    t = time.perf_counter()
    neg = np.nonzero(data.label == 0)[0]
    scores = score_samples(model, data, neg, dev, precision)
    pool = hard_pool(neg, scores, cfg.mining.pool_fraction)
    floor = float(np.sort(scores)[-len(pool)]) if len(pool) else float("nan")
    return pool, {"mined_min_score": floor, "neg_above_0.5": float((scores >= 0.5).mean()) if len(scores) else 0.0,
                  "mine_s": time.perf_counter() - t}


def _train_epoch(state: TrainingState, data: PatchStore, cfg: TrainConfig, dev: str, precision: Precision,
                 steps: int, prefetch: int, report: Callable[[int, float, float], None],
                 hard: np.ndarray | None = None) -> dict[str, float]:
    """One epoch of ``steps`` batches; returns mean losses, learning rate, timings and throughput."""
    model, opt, sched, scaler = state.model, state.optimizer, state.scheduler, state.scaler
    model.train()
    t_epoch = time.perf_counter()
    wait = 0.0
    sums: dict[str, torch.Tensor] = {}
    cuda = dev.startswith("cuda")
    stream = training_batches(data, state.rng, batch_size=cfg.batch_size, positive_fraction=cfg.positive_fraction,
                              steps=steps, patch_size=cfg.network.patch_size, hu_window=cfg.network.hu_window,
                              params=cfg.augment, prefetch=prefetch, pin_memory=cuda, hard=hard,
                              hard_share=cfg.mining.share if cfg.mining is not None else 0.0)
    t_wait = time.perf_counter()
    for step, batch in enumerate(stream):
        wait += time.perf_counter() - t_wait
        b = batch.to(dev, non_blocking=cuda)
        with precision.autocast():
            out = model(b.x)
            loss, parts = losses(out, b.label, b.type, b.diameter, b.offset, cfg.loss_weights)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        for k, v in {"loss": loss.detach(), **parts}.items():
            sums[k] = sums[k] + v if k in sums else v.clone()
        if (step + 1) % max(1, steps // 5) == 0 and step + 1 < steps:
            report(step + 1, float(sums["loss"]) / (step + 1), time.perf_counter() - t_epoch)
        t_wait = time.perf_counter()
    train_s = time.perf_counter() - t_epoch
    return {**{f"train_{k}": float(v) / steps for k, v in sums.items()}, "lr": float(sched.get_last_lr()[0]),
            "epoch_s": train_s, "data_wait_s": wait, "samples_per_s": steps * cfg.batch_size / max(train_s, 1e-9)}
