"""Training checkpoints: everything needed to continue a run exactly where it stopped.

One file, ``out_dir/checkpoints/last.pt``, rewritten (atomically) after every epoch:
model, optimiser, learning-rate schedule, gradient scaler, the numpy and torch random
states (CUDA's too when training there), the per-epoch history and the configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"


def checkpoint_path(out_dir: Path) -> Path:
    """Where the last checkpoint of a model folder lives."""
    return Path(out_dir) / CHECKPOINT_DIR / LAST


@dataclass
class TrainingState:
    """The mutable parts of a run, saved together and restored together."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    rng: np.random.Generator

    def save(self, path: Path, history: list[dict[str, float]], epoch: int, config: object) -> None:
        """Write the state after ``epoch`` epochs (to a temporary file, then renamed)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".pt.tmp")
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                    "numpy_rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                    "cuda_rng": cuda_rng, "history": history, "epoch": epoch, "config": config}, tmp)
        tmp.replace(path)

    def load(self, path: Path) -> tuple[list[dict[str, float]], int]:
        """Restore the state from ``path``; returns the history and the epochs completed.

        Tensors are read onto the CPU, then copied to where the model and optimiser
        live, so a checkpoint written on a GPU resumes on the CPU and vice versa.
        """
        ck = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        if ck.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(ck["scaler"])
        self.rng.bit_generator.state = ck["numpy_rng"]
        torch.set_rng_state(ck["torch_rng"])
        if ck.get("cuda_rng") is not None and torch.cuda.is_available():
            states = ck["cuda_rng"]
            if len(states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(states)
        return list(ck["history"]), int(ck["epoch"])
