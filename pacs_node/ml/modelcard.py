"""The model folder: ``model.toml`` (what the model is and how to run it) + ``weights.pt``.

A model is data (see ARCHITECTURE.md): the detector reads everything it needs to
run a model from its folder, and code never hard-codes one.  ``model.toml``::

    format = "pacs-node-model/1"
    [model]        name, version, description, intended_use
    [files]        weights file name, its SHA-256, parameter count
    [network]      architecture hyper-parameters (NetworkConfig)
    [front_end]    fine grid, lung mask and candidate parameters (FrontEndConfig)
    [thresholds]   report_score (operating point), min_score, merge_mm
    [inference]    flips (test-time axis flips averaged: 1, 2, 4 or 8), rescore_above
    [training]     data, seeds, epochs, time ... (free-form, for people)
    [metrics.*]    validation / test metrics (free-form, for people)

Python's ``tomllib`` reads it; :func:`dumps_toml` writes the small subset of TOML
used here (tables, strings, numbers, booleans, arrays, inline tables in arrays).
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pacs_node.ml.network import NetworkConfig
from pacs_node.ml.preprocess import FrontEndConfig

CARD_FILE = "model.toml"
WEIGHTS_FILE = "weights.pt"
CARD_FORMAT = "pacs-node-model/1"


class ModelError(ValueError):
    """A model folder that cannot be used; the message says why."""


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds of a model.

    Attributes
    ----------
    report_score
        Findings at or above this score are reported (the operating point).
    min_score
        Lowest score a finding is kept at when asked for all findings (FROC analysis).
    merge_mm
        Findings whose centres are closer than ``max(merge_mm, diameter / 2)`` are one.
    """

    report_score: float = 0.5
    min_score: float = 0.02
    merge_mm: float = 4.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_score <= self.report_score <= 1.0:
            raise ValueError(f"need 0 <= min_score <= report_score <= 1, got {self.min_score}, {self.report_score}")
        if self.merge_mm < 0:
            raise ValueError(f"merge_mm must be >= 0, got {self.merge_mm}")


@dataclass(frozen=True)
class Inference:
    """How candidates are scored.

    Attributes
    ----------
    flips
        Axis flips of each patch whose outputs are averaged (1: none; 2, 4 or 8).
    rescore_above
        Only candidates whose unflipped score reaches this get the other flips (the
        rest cannot come near a reported score, and are most of the candidates).
    """

    flips: int = 1
    rescore_above: float = 0.0

    def __post_init__(self) -> None:
        if self.flips not in (1, 2, 4, 8):
            raise ValueError(f"inference.flips must be 1, 2, 4 or 8, got {self.flips}")
        if not 0.0 <= self.rescore_above < 1.0:
            raise ValueError(f"inference.rescore_above must be in [0, 1), got {self.rescore_above}")


@dataclass(frozen=True)
class ModelCard:
    """The parsed ``model.toml``; ``extra`` keeps the free-form sections."""

    name: str
    version: str
    network: NetworkConfig
    front_end: FrontEndConfig
    thresholds: Thresholds
    weights_file: str = WEIGHTS_FILE
    weights_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    inference: Inference = field(default_factory=Inference)

    def to_dict(self) -> dict[str, Any]:
        """The TOML document as a dictionary."""
        d: dict[str, Any] = {"format": CARD_FORMAT}
        model = {"name": self.name, "version": self.version}
        model.update(self.extra.get("model", {}))
        d["model"] = model
        files: dict[str, Any] = {"weights": self.weights_file}
        if self.weights_sha256:
            files["sha256"] = self.weights_sha256
        files.update({k: v for k, v in self.extra.get("files", {}).items() if k not in ("weights", "sha256")})
        d["files"] = files
        d["network"] = self.network.to_dict()
        d["front_end"] = self.front_end.to_dict()
        d["thresholds"] = {"report_score": self.thresholds.report_score, "min_score": self.thresholds.min_score,
                           "merge_mm": self.thresholds.merge_mm}
        d["inference"] = {"flips": self.inference.flips, "rescore_above": self.inference.rescore_above}
        for k, v in self.extra.items():
            if k not in ("model", "files"):
                d[k] = v
        return d


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"TOML here has no place for {v!r}")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items() if x is not None) + "}"
    if hasattr(v, "item"):  # numpy scalars
        return _toml_value(v.item())
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dumps_toml(doc: dict[str, Any]) -> str:
    """Serialise nested dictionaries to TOML (``None`` values are left out)."""
    lines: list[str] = []

    def table(d: dict[str, Any], path: list[str]) -> None:
        scalars = [(k, v) for k, v in d.items() if not isinstance(v, dict) and v is not None]
        tables = [(k, v) for k, v in d.items() if isinstance(v, dict)]
        if path and (scalars or not tables):
            lines.append("")
            lines.append("[" + ".".join(_toml_key(p) for p in path) + "]")
        for k, v in scalars:
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        for k, v in tables:
            table(v, [*path, k])

    table(doc, [])
    return "\n".join(lines).lstrip("\n") + "\n"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_model_card(card: ModelCard, model_dir: Path) -> Path:
    """Write ``model.toml`` into a model folder; returns its path."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / CARD_FILE
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(dumps_toml(card.to_dict()))
    tmp.replace(path)
    return path


def read_model_card(model_dir: Path) -> ModelCard:
    """Read and check ``model.toml`` of a model folder.

    Raises
    ------
    ModelError
        If the folder, the card or the weights file is missing, or the card is malformed.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"model folder {model_dir} does not exist")
    path = model_dir / CARD_FILE
    if not path.is_file():
        raise ModelError(f"model folder {model_dir} has no {CARD_FILE}")
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not valid TOML: {exc}") from exc
    if doc.get("format") != CARD_FORMAT:
        raise ModelError(f"{path}: format must be {CARD_FORMAT!r}, got {doc.get('format')!r}")
    try:
        model = doc["model"]
        files = doc.get("files", {})
        network = NetworkConfig.from_dict(doc["network"])
        front_end = FrontEndConfig.from_dict(doc.get("front_end", {}))
        th = doc.get("thresholds", {})
        thresholds = Thresholds(float(th.get("report_score", 0.5)), float(th.get("min_score", 0.02)),
                                float(th.get("merge_mm", 4.0)))
        name, version = str(model["name"]), str(model["version"])
        inf = doc.get("inference", {})
        inference = Inference(int(inf.get("flips", 1)), float(inf.get("rescore_above", 0.0)))
    except KeyError as exc:
        raise ModelError(f"{path}: missing {exc.args[0]!r}") from exc
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{path}: {exc}") from exc
    if abs(network.fine_mm - front_end.fine_mm) > 1e-6:
        raise ModelError(f"{path}: network.fine_mm {network.fine_mm} differs from front_end.fine_mm {front_end.fine_mm}")
    weights = str(files.get("weights", WEIGHTS_FILE))
    if not (model_dir / weights).is_file():
        raise ModelError(f"model folder {model_dir} has no weights file {weights!r} (named in {CARD_FILE})")
    extra = {k: v for k, v in doc.items() if k not in ("format", "network", "front_end", "thresholds", "inference")}
    extra["model"] = {k: v for k, v in model.items() if k not in ("name", "version")}
    return ModelCard(name, version, network, front_end, thresholds, weights, files.get("sha256"), extra, inference)
