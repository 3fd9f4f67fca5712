"""Where training runs and in which arithmetic: CUDA with mixed precision, or the CPU in float32.

:func:`select_device` picks CUDA when present; :func:`select_precision` picks the
autocast type: ``bf16`` on GPUs that have it (no loss scaling needed), ``fp16`` with a
:class:`torch.amp.GradScaler` on older ones, plain ``float32`` on the CPU (autocast
there is slower than float32 on most CPUs; ask for ``bf16`` explicitly to use it).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

AMP_MODES = ("auto", "bf16", "fp16", "off")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def select_device(requested: str | None = None) -> str:
    """``requested`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``) after checking it exists; default CUDA when present.

    Raises
    ------
    ValueError
        If CUDA is asked for but not available, or the device kind is unknown.
    """
    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind = requested.split(":", 1)[0]
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda[:N], got {requested!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} asked for, but this torch build sees no CUDA device")
    return requested


@dataclass(frozen=True)
class Precision:
    """Autocast type of the forward pass and whether gradients are scaled.

    Attributes
    ----------
    device_type
        ``"cuda"`` or ``"cpu"``.
    dtype
        Autocast type; ``None``: no autocast (``float32``).
    scale_gradients
        Use a :class:`torch.amp.GradScaler` (``float16`` only).
    """

    device_type: str
    dtype: torch.dtype | None = None
    scale_gradients: bool = False

    @property
    def name(self) -> str:
        """``"bf16"``, ``"fp16"`` or ``"fp32"``."""
        return next((k for k, v in _DTYPES.items() if v == self.dtype), "fp32")

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context the forward pass and the loss run in."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A scaler, enabled for ``float16`` only (disabled, it passes losses and steps through)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.scale_gradients)


def select_precision(device: str, amp: str = "auto", *, bf16_supported: bool | None = None) -> Precision:
    """The arithmetic for training on ``device``.

    Parameters
    ----------
    device
        As :func:`select_device` returns it.
    amp
        ``"auto"`` (CUDA: ``bf16`` where supported, else ``fp16``; CPU: off), ``"bf16"``,
        ``"fp16"`` (CUDA only) or ``"off"``.
    bf16_supported
        Whether the GPU computes in ``bfloat16``; default: ask CUDA.

    Raises
    ------
    ValueError
        If ``amp`` is unknown, or ``fp16`` is asked for on the CPU.
    """
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
    kind = device.split(":", 1)[0]
    if amp == "off" or (amp == "auto" and kind == "cpu"):
        return Precision(kind)
    if kind == "cpu" and amp == "fp16":
        raise ValueError("amp 'fp16' needs a CUDA device (use 'bf16' or 'off' on the CPU)")
    if amp == "auto":
        if bf16_supported is None:
            bf16_supported = torch.cuda.is_bf16_supported()
        amp = "bf16" if bf16_supported else "fp16"
    return Precision(kind, _DTYPES[amp], scale_gradients=(amp == "fp16"))
