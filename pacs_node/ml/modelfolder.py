"""Write a trained model's folder: ``weights.pt`` and a ``model.toml`` that says how it was made."""

from __future__ import annotations

import math
import os
import platform
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pacs_node.ml.modelcard import WEIGHTS_FILE, ModelCard, Thresholds, sha256_file, write_model_card
from pacs_node.ml.network import NoduleNet, count_parameters

if TYPE_CHECKING:
    from pacs_node.ml.train import TrainConfig


def jsonable(v: object) -> object:
    """``v`` with paths as strings, tuples and sets as lists, non-finite floats as ``"nan"`` and ``None`` dropped."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items() if x is not None}
    if isinstance(v, (frozenset, set)):
        return sorted(jsonable(x) for x in v)  # type: ignore[type-var]
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return "nan"
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


def write_model(model: NoduleNet, cfg: TrainConfig, out_dir: Path, thresholds: Thresholds,
                extra: dict[str, object]) -> ModelCard:
    """Write the weights (atomically) and the card into ``out_dir``; returns the card."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_FILE
    tmp = weights.with_suffix(".pt.tmp")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(weights)
    card = ModelCard(cfg.name, cfg.version, cfg.network, cfg.front_end, thresholds, WEIGHTS_FILE,
                     sha256_file(weights), extra, cfg.inference)
    write_model_card(card, out_dir)
    return card


def card_extra(cfg: TrainConfig, *, fmt: str, data_dir: Path, cases_total: int, cases_train: int,
               cases_validation: int, samples_train: int, positives_train: int, seed: int, epochs: int,
               model: NoduleNet, device: str, precision: str) -> dict[str, object]:
    """The free-form ``[model]``, ``[files]`` and ``[training]`` sections of a trained model's card.

    For ``fmt="phantom"``, ``[training.phantoms]`` records the synthetic set, its
    generator variation (``[training.phantoms.variation]``) included, and
    ``[training.extra_phantoms.setN]`` each further set.
    """
    training: dict[str, object] = {
        "data_format": fmt,
        "data": str(data_dir) if fmt != "phantom" else "synthetic phantoms (pacs_node.ml.phantom)",
        "cases_total": cases_total,
        "cases_train": cases_train,
        "cases_validation": cases_validation,
        "samples_train": samples_train,
        "positives_train": positives_train,
        "seed": seed,
        "epochs": epochs,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "positive_fraction": cfg.positive_fraction,
        "samples": jsonable(asdict(cfg.samples)),
        "augment": jsonable(asdict(cfg.augment)),
        "torch": torch.__version__,
        "device": device,
        "precision": precision,
        "host": f"{platform.machine()} {os.cpu_count()} cpu",
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if cfg.mining is not None:
        training["mining"] = jsonable(asdict(cfg.mining))
    if cfg.init_weights is not None:
        training["initialised_from"] = str(cfg.init_weights)
    if cfg.phantoms is not None and fmt == "phantom":
        training["phantoms"] = jsonable(cfg.phantoms.to_dict())
        if cfg.extra_phantoms:
            training["extra_phantoms"] = {f"set{k + 1}": jsonable(p.to_dict())
                                          for k, p in enumerate(cfg.extra_phantoms)}
    return {
        "model": {"description": cfg.description,
                  "intended_use": "research and testing only; not a medical device, not for clinical use"},
        "files": {"parameters": count_parameters(model)},
        "training": training,
    }
