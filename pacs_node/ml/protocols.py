"""In-house generalisation protocols: train without a family or style of variation, test on it.

Each protocol is a list of :class:`Fold` s; a fold trains one model on synthetic
studies drawn with one :class:`~pacs_node.ml.phantom.variation.Variation` and
evaluates it (:func:`pacs_node.ml.evaluate.evaluate_model`) on generated test sets
drawn with others, beside a reference model on the same test sets.

``in-distribution`` (one fold, ``wide``)
    Train on ``Variation.wide()`` (every family wide, every style), test on
    ``Variation.wide()`` studies.  This *all-families* model is the reference of the
    other protocols.
``lofo`` (leave one family out; one fold per family F of :data:`FAMILIES`)
    Train on ``Variation.wide(without=[F])``: F keeps its classic ranges, every
    other family is wide, every style.  Test on ``wide`` (F wide among all the
    others) and on ``only-F`` (``Variation({F}, STYLES)``: F wide, every other family
    classic, every style).  The all-families model, which saw F wide, is evaluated
    on the same two sets; the gap between the two CPMs is what not seeing F cost.
``cross-style`` (one fold per style S of :data:`STYLES`)
    Train on ``Variation.wide(styles=<the other styles>)``, test on
    ``Variation.wide(styles=[S])``; reference: the all-families model (which saw S).

Seeds
-----
Every model trains on the same studies ``study_seed(TRAIN_SET_SEED, i)``, each drawn
with its own variation (so the models differ by their variation only); every test
set holds ``study_seed(TEST_SET_SEED, i)`` (so the test sets are the same base
studies drawn with different variations).  :func:`check_seeds` refuses a scale
whose training and test study seeds meet, or meet those of :data:`RESERVED_SEEDS`.

Work folder (:class:`Workspace`) and resuming
---------------------------------------------
``scale.json`` (a folder holds one scale only), ``caches/<model>/`` (patch caches,
resumable), ``models/<model>/`` with ``models/<model>.done.json`` once trained
(unfinished training resumes from its checkpoint), ``test-sets/<set>/`` (LUNA16
layout, reused once ``generated.json`` is written), ``evaluations/<model>--<set>/``
(``report.json``, reused) and ``folds/<fold>.json``: a fold whose file exists is
skipped.  :func:`write_summary` writes ``summary.json`` and ``summary.md`` over
every finished fold.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pacs_node.ml.cases import PhantomSet
from pacs_node.ml.froc import FP_RATES
from pacs_node.ml.phantom.variation import FAMILIES, STYLES, Variation
from pacs_node.ml.train import TrainConfig

PROTOCOLS: tuple[str, ...] = ("in-distribution", "lofo", "cross-style")
#: Seed of every training set (study ``i``: ``study_seed(TRAIN_SET_SEED, i)``).
TRAIN_SET_SEED = 610000
#: Seed of every test set; never used for training or calibration.
TEST_SET_SEED = 620000
#: Seeds of other sets, never used here.
RESERVED_SEEDS: dict[int, str] = {
    20250: "v1 training", 30300: "v2 training", 777000: "classic test set (model card)",
    990000: "wide held-out set", 555000: "v1 calibration", 888000: "robustness check", 20240: "benchmarks",
}
#: Seed of splitting, sampling, augmentation and initialisation in training (as the bundled recipes).
TRAIN_SEED = 1
SUMMARY_FORMAT = "pacs-node-generalisation/1"
#: Scale of the bundled v2 recipe: a run below it is a smoke run, not the model card's figures.
FULL_TRAIN_STUDIES, FULL_EPOCHS, FULL_STEPS, FULL_TEST_STUDIES = 96, 6, 200, 40


class ProtocolError(ValueError):
    """A protocol run that cannot go ahead as asked; the message says why."""


@dataclass(frozen=True)
class Arm:
    """A model's training studies or a test set: a key (folder name) and a generator variation."""

    key: str
    variation: Variation

    @property
    def description(self) -> str:
        return describe(self.variation)


@dataclass(frozen=True)
class Fold:
    """One model trained on ``model``'s variation, evaluated on ``tests`` beside ``reference``."""

    protocol: str
    name: str
    model: Arm
    tests: tuple[Arm, ...]
    reference: Arm | None = None

    @property
    def id(self) -> str:
        return f"{self.protocol}:{self.name}"

    def evaluations(self) -> list[tuple[str, Arm, Arm]]:
        """``(role, model, test set)``; role ``held-out``, ``reference`` or ``in-distribution``."""
        role = "in-distribution" if self.reference is None else "held-out"
        out = []
        for test in self.tests:
            out.append((role, self.model, test))
            if self.reference is not None:
                out.append(("reference", self.reference, test))
        return out


def describe(v: Variation) -> str:
    """A short human description of a variation, e.g. ``all families wide except nodules; all styles``."""
    if len(v.families) == len(FAMILIES):
        fam = "all families wide"
    elif not v.families:
        fam = "classic ranges"
    elif len(v.families) > len(FAMILIES) / 2:
        fam = "all families wide except " + ", ".join(f for f in FAMILIES if f not in v.families)
    else:
        fam = "only " + ", ".join(f for f in FAMILIES if f in v.families) + " wide"
    styles = "all styles" if set(v.styles) == set(STYLES) else "style " + "+".join(v.styles)
    return f"{fam}; {styles}"


ALL_FAMILIES = Arm("all-families", Variation.wide())
WIDE_TEST = Arm("wide", Variation.wide())


def all_folds() -> list[Fold]:
    """Every fold of every protocol, in table order."""
    folds = [Fold("in-distribution", "wide", ALL_FAMILIES, (WIDE_TEST,))]
    for f in FAMILIES:
        folds.append(Fold("lofo", f, Arm(f"without-{f}", Variation.wide(without=[f])),
                          (WIDE_TEST, Arm(f"only-{f}", Variation(frozenset([f]), STYLES))), ALL_FAMILIES))
    for s in STYLES:
        others = tuple(o for o in STYLES if o != s)
        folds.append(Fold("cross-style", s, Arm(f"without-style-{s}", Variation.wide(styles=others)),
                          (Arm(f"style-{s}", Variation.wide(styles=[s])),), ALL_FAMILIES))
    return folds


def select_folds(spec: str | None) -> list[Fold]:
    """Folds named by a comma list of protocols (``lofo``), fold ids (``lofo:nodules``) or fold names
    (``nodules``, ``mottled``, ``wide``); all folds for ``None`` or ``""``.  Table order is kept."""
    folds = all_folds()
    if not spec:
        return folds
    chosen: set[str] = set()
    for word in (w.strip() for w in spec.split(",")):
        hits = [f.id for f in folds if word in (f.protocol, f.id, f.name)]
        if not word or not hits:
            known = ", ".join([*PROTOCOLS, *(f.id for f in folds)])
            raise ProtocolError(f"unknown fold {word!r}; known: {known}")
        chosen.update(hits)
    return [f for f in folds if f.id in chosen]


@dataclass(frozen=True)
class Scale:
    """How big a run is: studies per training and test set, epochs, geometry, initial weights.

    ``shape_zyx``/``spacing_zyx_mm`` fix the geometry of every study (tests; ``None``:
    the generator's default chest geometry).
    """

    train_studies: int
    test_studies: int
    epochs: int
    steps_per_epoch: int
    init_weights: Path | None = None
    shape_zyx: tuple[int, int, int] | None = None
    spacing_zyx_mm: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.train_studies < 2:
            raise ProtocolError(f"train_studies must be >= 2 (one is held out for validation), "
                                f"got {self.train_studies}")
        for name in ("test_studies", "epochs", "steps_per_epoch"):
            if getattr(self, name) < 1:
                raise ProtocolError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.init_weights is not None and not Path(self.init_weights).is_file():
            raise ProtocolError(f"init_weights {self.init_weights}: no such file")

    @property
    def is_smoke(self) -> bool:
        """Below the bundled v2 recipe's scale, or on a fixed small geometry."""
        return (self.train_studies < FULL_TRAIN_STUDIES or self.epochs * self.steps_per_epoch < FULL_EPOCHS * FULL_STEPS
                or self.test_studies < FULL_TEST_STUDIES or self.shape_zyx is not None)

    def to_dict(self) -> dict[str, Any]:
        return {"train_studies": self.train_studies, "test_studies": self.test_studies, "epochs": self.epochs,
                "steps_per_epoch": self.steps_per_epoch,
                "init_weights": str(self.init_weights) if self.init_weights else None,
                "shape_zyx": list(self.shape_zyx) if self.shape_zyx else None,
                "spacing_zyx_mm": list(self.spacing_zyx_mm) if self.spacing_zyx_mm else None}

    def header(self) -> str:
        """One line naming the scale; a smoke run says so first."""
        kind = ("SMOKE RUN at reduced scale: NOT the model card's figures" if self.is_smoke
                else "full scale (bundled v2 recipe)")
        geometry = "default chest geometry" if self.shape_zyx is None else \
            f"fixed {'x'.join(map(str, self.shape_zyx))} voxels"
        w = Path(self.init_weights) if self.init_weights else None
        init = f"initialised from {w.parent.name}/{w.name}" if w else "random initialisation"
        return (f"Generalisation, {kind}: {self.train_studies} training studies per model, {self.epochs} "
                f"epoch{'s' if self.epochs != 1 else ''} x "
                f"{self.steps_per_epoch} steps, {self.test_studies} test studies per set, {geometry}, {init}; "
                f"training seeds study_seed({TRAIN_SET_SEED}, i), test seeds study_seed({TEST_SET_SEED}, i)")


def check_seeds(scale: Scale) -> None:
    """Refuse a scale whose training and test study seeds, or those of the reserved sets, meet."""
    from pacs_node.ml.phantom import study_seed

    train = {study_seed(TRAIN_SET_SEED, i) for i in range(scale.train_studies)}
    test = {study_seed(TEST_SET_SEED, i) for i in range(scale.test_studies)}
    if train & test:
        raise ProtocolError(f"training and test study seeds meet: {sorted(train & test)[:5]}")
    for seed, owner in RESERVED_SEEDS.items():
        other = {study_seed(seed, i) for i in range(max(1000, scale.train_studies, scale.test_studies))}
        if (train | test) & other:
            raise ProtocolError(f"study seeds meet those of the {owner} set (seed {seed})")


@dataclass(frozen=True)
class Workspace:
    """Where a protocol run keeps its caches, models, test sets, reports and summary."""

    root: Path

    def cache(self, model: Arm) -> Path:
        return self.root / "caches" / model.key

    def model(self, model: Arm) -> Path:
        return self.root / "models" / model.key

    def model_done(self, model: Arm) -> Path:
        return self.root / "models" / f"{model.key}.done.json"

    def test_set(self, test: Arm) -> Path:
        return self.root / "test-sets" / test.key

    def evaluation(self, model: Arm, test: Arm) -> Path:
        return self.root / "evaluations" / f"{model.key}--{test.key}"

    def fold(self, fold: Fold) -> Path:
        return self.root / "folds" / f"{fold.protocol}-{fold.name}.json"

    def held_scale(self) -> Scale:
        """The scale recorded in ``scale.json`` by the first run."""
        path = self.root / "scale.json"
        if not path.is_file():
            raise ProtocolError(f"{self.root}: no scale.json; no protocol run has started there")
        d = json.loads(path.read_text())
        return Scale(d["train_studies"], d["test_studies"], d["epochs"], d["steps_per_epoch"],
                     Path(d["init_weights"]) if d["init_weights"] else None,
                     tuple(d["shape_zyx"]) if d["shape_zyx"] else None,  # type: ignore[arg-type]
                     tuple(d["spacing_zyx_mm"]) if d["spacing_zyx_mm"] else None)  # type: ignore[arg-type]

    def claim(self, scale: Scale) -> None:
        """Record the scale in ``scale.json``; refuse a folder that holds another scale's run."""
        path = self.root / "scale.json"
        if path.is_file():
            held = json.loads(path.read_text())
            if held != scale.to_dict():
                raise ProtocolError(f"{self.root} holds a run at another scale ({held}); use another work folder")
            return
        self.root.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(scale.to_dict(), indent=2) + "\n")


Say = Callable[[str], None]


def train_config(model: Arm, scale: Scale, base: TrainConfig) -> TrainConfig:
    """``base`` with the model's training studies, name, scale and initial weights."""
    template = base.phantoms or PhantomSet(count=1, seed=TRAIN_SET_SEED)
    phantoms = replace(template, count=scale.train_studies, seed=TRAIN_SET_SEED, variation=model.variation,
                       shape_zyx=scale.shape_zyx, spacing_zyx_mm=scale.spacing_zyx_mm)
    return replace(base, name=f"generalisation-{model.key}", phantoms=phantoms,
                   steps_per_epoch=scale.steps_per_epoch, init_weights=scale.init_weights,
                   description=f"Generalisation protocol model trained on {model.description}")


def ensure_model(ws: Workspace, model: Arm, scale: Scale, base: TrainConfig, say: Say) -> Path:
    """Train the model unless it is done; an interrupted training resumes from its checkpoint."""
    from pacs_node.ml.train import train

    out = ws.model(model)
    if ws.model_done(model).is_file():
        return out
    say(f"training {model.key}: {model.description}")
    cfg = train_config(model, scale, base)
    train(ws.cache(model), "phantom", out, epochs=scale.epochs, seed=TRAIN_SEED, resume=True, config=cfg,
          progress=lambda line: say(f"  [{model.key}] {line}"))
    ws.model_done(model).write_text(json.dumps({"model": model.key, "variation": model.variation.to_dict(),
                                                "train_set_seed": TRAIN_SET_SEED, "scale": scale.to_dict()},
                                               indent=2) + "\n")
    return out


def ensure_test_set(ws: Workspace, test: Arm, scale: Scale, say: Say) -> Path:
    """Generate the test set (LUNA16 layout) unless ``generated.json`` says it is complete."""
    from pacs_node.ml.phantom import generate_studies

    out = ws.test_set(test)
    marker = out / "generated.json"
    if marker.is_file():
        return out
    if out.exists():  # an interrupted generation: its annotation files are missing
        shutil.rmtree(out)
    say(f"generating test set {test.key}: {scale.test_studies} studies, {test.description}")
    generate_studies(out, scale.test_studies, TEST_SET_SEED, "luna16", shape_zyx=scale.shape_zyx,
                     spacing_zyx_mm=scale.spacing_zyx_mm, variation=test.variation)
    marker.write_text(json.dumps({"test_set": test.key, "variation": test.variation.to_dict(),
                                  "seed": TEST_SET_SEED, "studies": scale.test_studies}, indent=2) + "\n")
    return out


def ensure_report(ws: Workspace, model: Arm, test: Arm, say: Say) -> dict[str, Any]:
    """The evaluation report of a model on a test set (computed once)."""
    from pacs_node.ml.evaluate import evaluate_model

    out = ws.evaluation(model, test)
    if (out / "report.json").is_file():
        return json.loads((out / "report.json").read_text())
    say(f"evaluating {model.key} on {test.key}")
    return evaluate_model(ws.model(model), ws.test_set(test), "luna16", out, operating_point=1.0,
                          progress=lambda line: say(f"  [{model.key} on {test.key}] {line}"))


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The table's figures of an evaluation report.

    ``sensitivity_1fp``: LUNA16 FROC at 1 FP/scan.  ``sensitivity_ge6mm_1fp`` and
    ``ground_glass_1fp``: nodules >= 6 mm / ground-glass found at the score threshold
    of 1 FP/scan (all nodules' FROC).  ``fps_per_scan_at_operating_point``: at the
    model's own ``report_score``.  ``candidate_recall``: nodules still held after the
    candidate stage.
    """
    op = report["operating_point"]
    large = [op["by_size"][c] for c in ("6-10 mm", ">10 mm")]
    n_large = sum(g["nodules"] for g in large)
    ggo = op["by_type"].get("ground-glass", {"nodules": 0, "detected": 0, "sensitivity": None})
    at = report.get("at_report_score")
    stages = report["stages"]
    return {
        "scans": report["n_scans"], "nodules": report["n_nodules"], "cpm": report["cpm"],
        "sensitivity_1fp": report["sensitivities"][FP_RATES.index(1.0)],
        "nodules_ge6mm": n_large,
        "sensitivity_ge6mm_1fp": sum(g["detected"] for g in large) / n_large if n_large else None,
        "fps_per_scan_at_operating_point": at["false_positives_per_scan"] if at else None,
        "ground_glass_nodules": ggo["nodules"], "ground_glass_1fp": ggo["sensitivity"],
        "candidate_recall": stages["overall"]["recall"]["candidate"] if stages["available"] else None,
    }


@dataclass
class FoldOutcome:
    """A fold's record (``folds/<fold>.json``) and whether this run skipped it."""

    record: dict[str, Any]
    skipped: bool = False


def fold_notes(fold: Fold, scale: Scale) -> list[str]:
    notes = []
    if scale.init_weights is not None and fold.id == "cross-style:classic":
        notes.append(f"initialised from {scale.init_weights}: weights trained on classic-style studies (as v1's) "
                     "have seen the held-out style, so this fold is not a clean test")
    return notes


def run_fold(ws: Workspace, fold: Fold, scale: Scale, base: TrainConfig, say: Say) -> FoldOutcome:
    """Train, generate and evaluate what a fold needs and write its record; skip a finished fold."""
    path = ws.fold(fold)
    if path.is_file():
        say(f"fold {fold.id}: done before, skipped ({path})")
        return FoldOutcome(json.loads(path.read_text()), skipped=True)
    t0 = time.perf_counter()
    say(f"fold {fold.id}: model {fold.model.key} ({fold.model.description})")
    rows: list[dict[str, Any]] = []
    for role, model, test in fold.evaluations():
        ensure_model(ws, model, scale, base, say)
        ensure_test_set(ws, test, scale, say)
        report = ensure_report(ws, model, test, say)
        rows.append({"fold": fold.id, "role": role, "model": model.key, "train_variation": model.description,
                     "test": test.key, "test_variation": test.description,
                     "report": str(ws.evaluation(model, test).relative_to(ws.root) / "report.json"),
                     "metrics": headline(report)})
    cpm = {(r["model"], r["test"]): r["metrics"]["cpm"] for r in rows}
    for r in rows:
        ref = cpm.get((fold.reference.key, r["test"])) if fold.reference and r["role"] == "held-out" else None
        mine = r["metrics"]["cpm"]
        r["delta_cpm_vs_reference"] = mine - ref if ref is not None and mine is not None else None
    record = {"fold": fold.id, "protocol": fold.protocol, "name": fold.name,
              "model": {"key": fold.model.key, "variation": fold.model.variation.to_dict()},
              "reference": fold.reference.key if fold.reference else None,
              "tests": {t.key: t.variation.to_dict() for t in fold.tests},
              "scale": scale.to_dict(), "notes": fold_notes(fold, scale), "rows": rows,
              "wall_s": round(time.perf_counter() - t0, 1)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    say(f"fold {fold.id}: done in {record['wall_s']:.0f} s")
    return FoldOutcome(record)


def run_folds(work: Path, folds: Sequence[Fold], scale: Scale, base: TrainConfig,
              say: Say = print) -> list[FoldOutcome]:
    """Run the folds in order (finished ones are skipped) and rewrite the summary."""
    check_seeds(scale)
    ws = Workspace(Path(work))
    ws.claim(scale)
    say(scale.header())
    outcomes = [run_fold(ws, f, scale, base, say) for f in folds]
    write_summary(ws)
    return outcomes


def write_summary(ws: Workspace) -> dict[str, Any]:
    """``summary.json`` and ``summary.md`` over every finished fold of the work folder, in table order."""
    scale = ws.held_scale()
    done = [f for f in all_folds() if ws.fold(f).is_file()]
    records = [json.loads(ws.fold(f).read_text()) for f in done]
    summary = {"format": SUMMARY_FORMAT, "header": scale.header(), "smoke": scale.is_smoke, "scale": scale.to_dict(),
               "seeds": {"train_set": TRAIN_SET_SEED, "test_set": TEST_SET_SEED, "train": TRAIN_SEED},
               "folds_done": [f.id for f in done],
               "folds_missing": [f.id for f in all_folds() if f not in done], "folds": records}
    (ws.root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (ws.root / "summary.md").write_text(markdown(summary))
    return summary


COLUMNS = ("Fold", "Trained on", "Tested on", "Scans / nodules", "CPM", "ΔCPM vs all-families",
           "Sens. @ 1 FP/scan", "Sens. ≥ 6 mm @ 1 FP/scan", "FPs/scan at op. point", "Ground-glass @ 1 FP/scan",
           "Recall after candidates")


def _num(v: float | None, fmt: str = ".3f") -> str:
    return "n/a" if v is None else format(v, fmt)


def markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown: header, one row per evaluation (a reference shown once), notes."""
    lines = [f"**{summary['header']}**", "", "| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join("---" for _ in COLUMNS) + "|"]
    shown: set[tuple[str, str]] = set()
    notes: list[str] = []
    for rec in summary["folds"]:
        mark = ""
        for note in rec["notes"]:
            notes.append(note)
            mark += "†" * len(notes) + " "
        mark = mark.rstrip()
        for r in rec["rows"]:
            if (r["model"], r["test"]) in shown:
                continue
            shown.add((r["model"], r["test"]))
            m = r["metrics"]
            fold = f"{r['fold']}{mark}" if r["role"] != "reference" else "reference: all-families model"
            lines.append("| " + " | ".join([
                fold, r["train_variation"], f"{r['test']}: {r['test_variation']}", f"{m['scans']} / {m['nodules']}",
                _num(m["cpm"]), _num(r.get("delta_cpm_vs_reference"), "+.3f"), _num(m["sensitivity_1fp"], ".2f"),
                f"{_num(m['sensitivity_ge6mm_1fp'], '.2f')} (n={m['nodules_ge6mm']})",
                _num(m["fps_per_scan_at_operating_point"], ".2f"),
                f"{_num(m['ground_glass_1fp'], '.2f')} (n={m['ground_glass_nodules']})",
                _num(m["candidate_recall"], ".2f")]) + " |")
    lines.append("")
    lines += [f"{'†' * (i + 1)} {n}" for i, n in enumerate(notes)]
    if summary["folds_missing"]:
        lines.append(f"Folds not run yet: {', '.join(summary['folds_missing'])}.")
    return "\n".join(lines) + "\n"


def training_studies(card_phantoms: dict[str, Any]) -> PhantomSet:
    """The :class:`PhantomSet` a model card's ``[training.phantoms]`` records (to regenerate its studies)."""
    d = dict(card_phantoms)
    variation = Variation.from_dict(d.pop("variation", {}))
    tuples = {k: tuple(v) for k, v in d.items() if isinstance(v, list)}
    return PhantomSet(**{**d, **tuples, "variation": variation})
