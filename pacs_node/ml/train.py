"""Train the candidate classifier and write a model folder.

:func:`train` lists the cases (:func:`pacs_node.ml.datasets.list_cases`), builds or
reuses the patch cache (two processes), holds out a validation share of the cases,
trains :class:`~pacs_node.ml.network.NoduleNet` with balanced batches and per-batch
augmentation, checkpoints after every epoch (``out_dir/checkpoints/last.pt``, with
optimiser, scheduler and random states, so ``resume=True`` continues where it
stopped) and rewrites the model folder (``weights.pt`` + ``model.toml``) after every
epoch, so an interrupted run still leaves a usable model.  At the end, the full
detector runs on the validation studies to pick the operating point (the score at
which it makes at most ``target_fp_per_scan`` false positives per scan) and to
record validation FROC metrics in the card.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pacs_node.ml.datasets import (
    AugmentParams,
    Case,
    PatchSet,
    PhantomSet,
    SampleParams,
    augment,
    batches,
    build_cache,
    center_crop,
    list_cases,
    load_case_volume,
)
from pacs_node.ml.modelcard import (
    WEIGHTS_FILE,
    ModelCard,
    Thresholds,
    sha256_file,
    write_model_card,
)
from pacs_node.ml.network import NetworkConfig, NoduleNet, count_parameters, normalise_hu
from pacs_node.ml.preprocess import FrontEndConfig

log = logging.getLogger(__name__)

#: False positives per scan at which LUNA16's CPM averages the sensitivity.
FROC_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


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
    calibrate_cases
        Most validation studies the full detector runs on at the end (0: none).
    target_fp_per_scan
        Operating point: false positives per scan on the validation studies.
    threads
        Torch threads (default: all cores).
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
    calibrate_cases: int = 20
    target_fp_per_scan: float = 1.0
    threads: int | None = None
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


def losses(out: object, label: torch.Tensor, type_idx: torch.Tensor, diameter: torch.Tensor,
           offset: torch.Tensor, weights: Sequence[float]) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of score, type, diameter and offset losses (the last three on positives only)."""
    pos = label > 0.5
    l_score = F.binary_cross_entropy_with_logits(out.logit, label)  # type: ignore[attr-defined]
    zero = out.logit.sum() * 0.0  # type: ignore[attr-defined]
    typed = pos & (type_idx >= 0)
    l_type = F.cross_entropy(out.type_logits[typed], type_idx[typed]) if typed.any() else zero  # type: ignore[attr-defined]
    if pos.any():
        l_diam = F.smooth_l1_loss(out.log_diameter[pos], torch.log(diameter[pos].clamp_min(1.0)), beta=0.1)  # type: ignore[attr-defined]
        l_off = F.smooth_l1_loss(out.offset[pos] / 2.0, offset[pos] / 2.0, beta=0.5)  # type: ignore[attr-defined]
    else:
        l_diam = l_off = zero
    total = weights[0] * l_score + weights[1] * l_type + weights[2] * l_diam + weights[3] * l_off
    parts = {k: float(v.detach()) for k, v in (("score", l_score), ("type", l_type), ("diameter", l_diam), ("offset", l_off))}
    return total, parts


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="stable")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _tensor_batch(data: PatchSet, idx: np.ndarray, rng: np.random.Generator | None, cfg: TrainConfig,
                  device: str) -> tuple[torch.Tensor, ...]:
    fine = center_crop(data.fine[idx], cfg.network.patch_size)
    context = center_crop(data.context[idx], cfg.network.patch_size)
    if rng is not None:
        x, off = augment(fine, context, data.offset[idx], rng, cfg.augment)
    else:
        x = torch.from_numpy(np.stack([fine, context], axis=1).astype(np.float32))
        off = torch.from_numpy(data.offset[idx].astype(np.float32))
    x = normalise_hu(x, cfg.network.hu_window)
    return (x.to(device), torch.from_numpy(data.label[idx].astype(np.float32)).to(device),
            torch.from_numpy(data.type[idx].astype(np.int64)).to(device),
            torch.from_numpy(data.diameter[idx].astype(np.float32)).to(device), off.to(device))


def evaluate_patches(model: NoduleNet, data: PatchSet, cfg: TrainConfig, device: str) -> dict[str, float]:
    """Loss and patch-level metrics on un-augmented samples."""
    model.eval()
    scores, types, diams, offs, total = [], [], [], [], 0.0
    with torch.inference_mode():
        for s in range(0, len(data), 128):
            idx = np.arange(s, min(len(data), s + 128))
            x, y, t, d, o = _tensor_batch(data, idx, None, cfg, device)
            out = model(x)
            loss, _ = losses(out, y, t, d, o, cfg.loss_weights)
            total += float(loss) * len(idx)
            scores.append(torch.sigmoid(out.logit).cpu().numpy())
            types.append(out.type_logits.argmax(1).cpu().numpy())
            diams.append(torch.exp(out.log_diameter).cpu().numpy())
            offs.append(out.offset.cpu().numpy())
    model.train()
    sc, ty, di, of = (np.concatenate(v) for v in (scores, types, diams, offs))
    pos = data.label == 1
    typed = pos & (data.type >= 0)
    return {
        "val_loss": total / max(1, len(data)),
        "val_auc": _auc(sc, data.label),
        "val_sens_at_0.5": float((sc[pos] >= 0.5).mean()) if pos.any() else float("nan"),
        "val_spec_at_0.5": float((sc[~pos] < 0.5).mean()) if (~pos).any() else float("nan"),
        "val_type_acc": float((ty[typed] == data.type[typed]).mean()) if typed.any() else float("nan"),
        "val_diameter_mae_mm": float(np.abs(di[pos] - data.diameter[pos]).mean()) if pos.any() else float("nan"),
        "val_offset_mae_mm": float(np.linalg.norm(of[pos] - data.offset[pos], axis=1).mean()) if pos.any() else float("nan"),
    }


def froc_points(findings: Sequence[Sequence[tuple[np.ndarray, float]]], truth: Sequence[Sequence[tuple[np.ndarray, float]]],
                fp_rates: Sequence[float] = FROC_FP_RATES) -> dict[str, object]:
    """LUNA16-rule FROC of scored findings against reference nodules.

    Parameters
    ----------
    findings
        Per scan, ``(centre_lps_mm, score)`` of each finding.
    truth
        Per scan, ``(centre_lps_mm, diameter_mm)`` of each reference nodule.
    fp_rates
        False positives per scan at which sensitivity is read.

    Returns
    -------
    dict
        ``sensitivity`` (list at ``fp_rates``), ``cpm`` (their mean), ``thresholds``
        (the score threshold at each rate), ``n_scans``, ``n_nodules``, and
        ``hit_scores`` (best score per nodule, 0 when never hit).

    A finding within a nodule's radius of its centre is a hit; several hits on one
    nodule count once (its best score); a finding that hits no nodule is a false
    positive.
    """
    n_scans = len(truth)
    fp_scores: list[float] = []
    hit_scores: list[float] = []
    for f_scan, t_scan in zip(findings, truth, strict=True):
        best = np.zeros(len(t_scan))
        for centre, score in f_scan:
            hit_any = False
            for k, (tc, td) in enumerate(t_scan):
                if np.linalg.norm(np.asarray(centre) - np.asarray(tc)) <= td / 2.0:
                    best[k] = max(best[k], score)
                    hit_any = True
            if not hit_any:
                fp_scores.append(float(score))
        hit_scores.extend(best.tolist())
    fp = np.sort(np.array(fp_scores))[::-1]
    hits = np.array(hit_scores)
    sens, thresholds = [], []
    for rate in fp_rates:
        allowed = int(math.floor(rate * n_scans))
        # threshold: just above the (allowed+1)-th highest false positive score
        thr = float(fp[allowed]) if allowed < len(fp) else 0.0
        strict = allowed < len(fp)
        ok = (hits > thr) if strict else (hits > 0)
        sens.append(float(ok.mean()) if len(hits) else float("nan"))
        thresholds.append(thr)
    return {"sensitivity": sens, "cpm": float(np.mean(sens)) if len(hits) else float("nan"),
            "thresholds": thresholds, "n_scans": n_scans, "n_nodules": len(hits), "hit_scores": hit_scores,
            "fp_scores": fp_scores}


def _split(cases: list[Case], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    n = len(cases)
    if n < 2:
        return list(range(n)), []
    n_val = max(1, int(round(n * fraction)))
    order = np.random.default_rng([seed, 7]).permutation(n)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def _write_model(model: NoduleNet, cfg: TrainConfig, out_dir: Path, thresholds: Thresholds,
                 extra: dict[str, object]) -> ModelCard:
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_FILE
    tmp = weights.with_suffix(".pt.tmp")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(weights)
    card = ModelCard(cfg.name, cfg.version, cfg.network, cfg.front_end, thresholds, WEIGHTS_FILE,
                     sha256_file(weights), extra)
    write_model_card(card, out_dir)
    return card


def _jsonable(v: object) -> object:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items() if x is not None}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return "nan"
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


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
    out_dir = Path(out_dir)
    data_dir = Path(data_dir)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    t_start = time.perf_counter()
    if cfg.network.patch_size > cfg.samples.patch_size or (cfg.samples.patch_size - cfg.network.patch_size) % 2:
        raise ValueError("samples.patch_size must be network.patch_size plus an even number of voxels")
    if abs(cfg.network.fine_mm - cfg.front_end.fine_mm) > 1e-9:
        raise ValueError("network.fine_mm and front_end.fine_mm differ")

    cases = list_cases(data_dir, fmt, cfg.phantoms)
    cache_dir = cfg.cache_dir or (data_dir if fmt == "phantom" else data_dir / ".pacs-node-cache")
    say(f"cases={len(cases)} format={fmt} cache={cache_dir}")
    train_idx, val_idx = _split(cases, cfg.val_fraction, seed)
    t = time.perf_counter()
    paths = build_cache(cases, cache_dir, cfg.front_end, cfg.samples, seed, workers=cfg.workers)
    by_case = {p.name.rsplit("-", 1)[0]: p for p in paths}
    train_paths = [by_case[cases[i].case_id] for i in train_idx if cases[i].case_id in by_case]
    val_paths = [by_case[cases[i].case_id] for i in val_idx if cases[i].case_id in by_case]
    cache_s = time.perf_counter() - t
    train_data = PatchSet.load(train_paths)
    val_data = PatchSet.load(val_paths) if val_paths else None
    st = train_data.stats
    say(f"cache ready in {cache_s:.0f}s: train cases={st['cases']} samples={len(train_data)} "
        f"positives={int(train_data.label.sum())} candidate_recall={st['found']}/{st['nodules']} "
        f"mean_candidates={st['candidates'] / max(1, st['cases']):.0f}"
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
    rng = np.random.default_rng([seed, 11])
    history: list[dict[str, float]] = []
    start_epoch = 0
    ckpt_dir = out_dir / "checkpoints"
    last = ckpt_dir / "last.pt"
    if resume and last.is_file():
        ck = torch.load(last, map_location=dev, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        rng.bit_generator.state = ck["numpy_rng"]
        torch.set_rng_state(ck["torch_rng"])
        history = list(ck["history"])
        start_epoch = int(ck["epoch"])
        say(f"resumed from {last} after epoch {start_epoch}")
    elif resume:
        say(f"no checkpoint at {last}; starting from scratch")
    say(f"model parameters={count_parameters(model)} device={dev} threads={torch.get_num_threads()} "
        f"epochs={epochs} steps_per_epoch={steps} batch={cfg.batch_size}")

    extra_base = _card_extra(cfg, fmt, data_dir, cases, train_idx, val_idx, seed, epochs, train_data, model)
    for epoch in range(start_epoch, epochs):
        t_epoch = time.perf_counter()
        model.train()
        sums: dict[str, float] = {}
        for step, idx in enumerate(batches(train_data, rng, cfg.batch_size, cfg.positive_fraction, steps)):
            x, y, tt, d, o = _tensor_batch(train_data, idx, rng, cfg, dev)
            out = model(x)
            loss, parts = losses(out, y, tt, d, o, cfg.loss_weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            if (step + 1) % max(1, steps // 5) == 0 and step + 1 < steps:
                el = time.perf_counter() - t_epoch
                say(f"epoch {epoch + 1}/{epochs} step {step + 1}/{steps} loss={sums['loss'] / (step + 1):.4f} "
                    f"elapsed={el:.0f}s eta={el / (step + 1) * (steps - step - 1):.0f}s")
        record = {"epoch": float(epoch + 1), **{f"train_{k}": v / steps for k, v in sums.items()},
                  "lr": float(sched.get_last_lr()[0])}
        if val_data is not None and len(val_data):
            record.update(evaluate_patches(model, val_data, cfg, dev))
        record["epoch_s"] = time.perf_counter() - t_epoch
        history.append(record)
        say("epoch {}/{} ".format(epoch + 1, epochs) + " ".join(
            f"{k}={v:.4f}" for k, v in record.items() if k != "epoch"))
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        tmp = last.with_suffix(".pt.tmp")
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "history": history,
                    "epoch": epoch + 1, "config": _jsonable(asdict(cfg))}, tmp)
        tmp.replace(last)
        extra = dict(extra_base)
        extra["training"] = {**extra_base["training"], "epochs_completed": epoch + 1,  # type: ignore[dict-item]
                             "train_time_s": round(time.perf_counter() - t_start, 1)}
        extra["metrics"] = {"validation_patches": _jsonable({k: round(v, 4) for k, v in record.items()})}
        card = _write_model(model, cfg, out_dir, Thresholds(), extra)

    thresholds = Thresholds()
    extra = dict(extra_base)
    metrics: dict[str, object] = {}
    if history:
        metrics["validation_patches"] = _jsonable({k: round(v, 4) for k, v in history[-1].items()})
    if cfg.calibrate_cases > 0 and val_idx:
        thresholds, froc = _calibrate(model, cfg, [cases[i] for i in val_idx[: cfg.calibrate_cases]], out_dir, say)
        metrics["validation_scans"] = froc
    extra["training"] = {**extra_base["training"], "epochs_completed": len(history),  # type: ignore[dict-item]
                         "train_time_s": round(time.perf_counter() - t_start, 1)}
    extra["metrics"] = metrics
    card = _write_model(model, cfg, out_dir, thresholds, extra)
    say(f"wrote {out_dir} (report_score={thresholds.report_score:.3f}) in {time.perf_counter() - t_start:.0f}s")
    return TrainResult(out_dir, history, card)


def _card_extra(cfg: TrainConfig, fmt: str, data_dir: Path, cases: list[Case], train_idx: list[int],
                val_idx: list[int], seed: int, epochs: int, data: PatchSet, model: NoduleNet) -> dict[str, object]:
    training: dict[str, object] = {
        "data_format": fmt,
        "data": str(data_dir) if fmt != "phantom" else "synthetic phantoms (pacs_node.ml.phantom)",
        "cases_total": len(cases),
        "cases_train": len(train_idx),
        "cases_validation": len(val_idx),
        "samples_train": len(data),
        "positives_train": int(data.label.sum()),
        "seed": seed,
        "epochs": epochs,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "positive_fraction": cfg.positive_fraction,
        "samples": _jsonable(asdict(cfg.samples)),
        "augment": _jsonable(asdict(cfg.augment)),
        "torch": torch.__version__,
        "host": f"{platform.machine()} {os.cpu_count()} cpu",
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if cfg.phantoms is not None and fmt == "phantom":
        training["phantoms"] = _jsonable(asdict(cfg.phantoms))
    return {
        "model": {"description": cfg.description,
                  "intended_use": "research and testing only; not a medical device, not for clinical use"},
        "files": {"parameters": count_parameters(model)},
        "training": training,
    }


def _calibrate(model: NoduleNet, cfg: TrainConfig, cases: list[Case], out_dir: Path,
               say: Callable[[str], None]) -> tuple[Thresholds, dict[str, object]]:
    """Run the full detector on validation studies; choose the operating point."""
    from pacs_node.ml.detector import Detector

    base = Thresholds()
    card = ModelCard(cfg.name, cfg.version, cfg.network, cfg.front_end, base)
    det = Detector(card, model.eval())
    found, truth = [], []
    for case in cases:
        try:
            volume, nodules = load_case_volume(case)
            result = det.run(volume, min_score=base.min_score)
        except Exception as exc:  # a study the detector cannot read is reported, not fatal
            say(f"calibration: skipped {case.case_id}: {exc}")
            continue
        found.append([(np.array(f.center_lps_mm), f.score) for f in result.findings])
        truth.append([(np.array(n.centre_lps_mm), n.diameter_mm) for n in nodules])
    if not truth:
        return base, {}
    froc = froc_points(found, truth)
    rate_idx = int(np.argmin(np.abs(np.array(FROC_FP_RATES) - cfg.target_fp_per_scan)))
    report = float(np.clip(froc["thresholds"][rate_idx], 0.2, 0.95))  # type: ignore[index]
    thresholds = Thresholds(report_score=round(report, 4), min_score=base.min_score, merge_mm=base.merge_mm)
    summary = {
        "scans": froc["n_scans"], "nodules": froc["n_nodules"],
        "fp_per_scan": list(FROC_FP_RATES),
        "sensitivity": [round(v, 4) for v in froc["sensitivity"]],  # type: ignore[union-attr]
        "cpm": round(float(froc["cpm"]), 4),  # type: ignore[arg-type]
    }
    say(f"calibration on {froc['n_scans']} scans: CPM={summary['cpm']} sensitivity={summary['sensitivity']} "
        f"report_score={thresholds.report_score}")
    return thresholds, summary
