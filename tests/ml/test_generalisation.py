"""Generalisation protocols: what each fold trains on and tests on, and a tiny end-to-end run that resumes.

The end-to-end test runs one leave-one-family-out fold and one cross-style fold at a
tiny scale (40 x 80 x 80 voxels of 2.5 mm, 2 training studies, 1 epoch of 2 steps, 2 test
studies) and reads the generator's own record (``acquisition``: ``style`` and
``wide_families``) of the studies each model was trained and tested on.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from pacs_node.ml.candidates import CandidateParams
from pacs_node.ml.cases import PhantomSet, list_cases
from pacs_node.ml.modelcard import read_model_card
from pacs_node.ml.network import NetworkConfig
from pacs_node.ml.phantom import generate_phantom
from pacs_node.ml.phantom.variation import FAMILIES, STYLES
from pacs_node.ml.preprocess import FrontEndConfig
from pacs_node.ml.protocols import (
    RESERVED_SEEDS,
    TEST_SET_SEED,
    TRAIN_SET_SEED,
    ProtocolError,
    Scale,
    Workspace,
    all_folds,
    check_seeds,
    run_folds,
    select_folds,
    training_studies,
)
from pacs_node.ml.samples import SampleParams
from pacs_node.ml.train import TrainConfig

GEOMETRY = {"shape_zyx": (40, 80, 80), "spacing_zyx_mm": (2.5, 2.5, 2.5)}
SCALE = Scale(train_studies=2, test_studies=2, epochs=1, steps_per_epoch=2, **GEOMETRY)  # type: ignore[arg-type]
_CANDIDATES = CandidateParams()
BASE = TrainConfig(
    phantoms=PhantomSet(count=1, seed=0, nodules=(2, 3), diameter_range_mm=(8.0, 14.0), balanced_fraction=0.0,
                        varied_fraction=0.0),
    network=NetworkConfig(patch_size=16, widths=(8, 16, 32, 48), head_channels=16, hidden=32, dropout=0.0),
    samples=SampleParams(patch_size=16, negatives_per_case=20, hard_negatives=10, pos_jitters=2),
    front_end=replace(FrontEndConfig(), candidates=replace(
        _CANDIDATES, passes=tuple(replace(p, max_candidates=30) for p in _CANDIDATES.passes))),
    batch_size=16, calibrate_cases=0, workers=1,
)


def _acquisitions(test_set: Path) -> list[dict]:
    return [json.loads(p.read_text())["acquisition"] for p in sorted((test_set / "truth").glob("*.json"))]


def _trained_on(model_dir: Path) -> list[dict]:
    """The acquisition record of every study the model's card says it was trained on, regenerated."""
    ps = training_studies(read_model_card(model_dir).extra["training"]["phantoms"])
    assert ps.seed == TRAIN_SET_SEED and ps.count == SCALE.train_studies
    return [generate_phantom(case.source[1], shape_zyx=ps.shape_zyx, spacing_zyx_mm=ps.spacing_zyx_mm,
                             variation=ps.variation, keep_labels=False).acquisition
            for case in list_cases(model_dir, "phantom", ps)]


def test_every_fold_trains_without_what_it_tests_on() -> None:
    folds = {f.id: f for f in all_folds()}
    assert len(folds) == 1 + len(FAMILIES) + len(STYLES)
    for family in FAMILIES:
        fold = folds[f"lofo:{family}"]
        assert fold.model.variation.families == frozenset(FAMILIES) - {family}
        assert set(fold.model.variation.styles) == set(STYLES)
        assert all(t.variation.is_wide(family) for t in fold.tests)
        assert [t.key for t in fold.tests] == ["wide", f"only-{family}"]
        assert fold.tests[1].variation.families == {family}
        assert fold.reference is not None and fold.reference.variation.families == frozenset(FAMILIES)
    for style in STYLES:
        fold = folds[f"cross-style:{style}"]
        assert style not in fold.model.variation.styles and len(fold.model.variation.styles) == len(STYLES) - 1
        assert [t.variation.styles for t in fold.tests] == [(style,)]
        assert fold.model.variation.families == frozenset(FAMILIES)
    base = folds["in-distribution:wide"]
    assert base.reference is None and base.tests[0].variation == base.model.variation


def test_seeds_are_disjoint_and_reserved_ones_unused() -> None:
    assert TRAIN_SET_SEED != TEST_SET_SEED
    assert {TRAIN_SET_SEED, TEST_SET_SEED}.isdisjoint(RESERVED_SEEDS)
    assert {777000, 990000, 30300, 20250, 555000} <= set(RESERVED_SEEDS)
    check_seeds(Scale(train_studies=96, test_studies=40, epochs=6, steps_per_epoch=200))


def test_folds_are_chosen_by_protocol_id_or_name_and_unknown_names_are_refused() -> None:
    assert [f.id for f in select_folds("cross-style")] == [f"cross-style:{s}" for s in STYLES]
    assert [f.id for f in select_folds("mottled,lofo:nodules,wide")] == [
        "in-distribution:wide", "lofo:nodules", "cross-style:mottled"]
    with pytest.raises(ProtocolError, match="unknown fold 'lungs'"):
        select_folds("lofo,lungs")


def test_the_header_calls_a_reduced_scale_a_smoke_run() -> None:
    assert SCALE.header().startswith("Generalisation, SMOKE RUN at reduced scale: NOT the model card's figures")
    assert "2 training studies per model, 1 epoch x 2 steps, 2 test studies per set" in SCALE.header()
    full = Scale(train_studies=96, test_studies=40, epochs=6, steps_per_epoch=200)
    assert not full.is_smoke and "SMOKE" not in full.header()
    assert replace(full, test_studies=10).is_smoke


def test_a_work_folder_refuses_a_run_at_another_scale(tmp_path: Path) -> None:
    Workspace(tmp_path).claim(SCALE)
    Workspace(tmp_path).claim(SCALE)
    with pytest.raises(ProtocolError, match="another scale"):
        Workspace(tmp_path).claim(replace(SCALE, epochs=2))


def test_tiny_lofo_and_cross_style_folds_hold_out_what_they_test_and_resume(tmp_path: Path) -> None:
    work = tmp_path / "work"
    folds = select_folds("lofo:nodules,cross-style:mottled")
    lines: list[str] = []
    outcomes = run_folds(work, folds, SCALE, BASE, say=lines.append)
    assert [o.skipped for o in outcomes] == [False, False]
    assert lines[0] == SCALE.header()
    ws = Workspace(work)
    lofo, cross = folds

    # what the models were trained on lacks the held-out family / style ...
    trained = _trained_on(ws.model(lofo.model))
    assert all(a["wide_families"] == "acquisition,airways,body,parenchyma,pleura,vessels" for a in trained)
    assert all(a["style"] != "mottled" for a in _trained_on(ws.model(cross.model)))
    assert all(a["wide_families"] == ",".join(sorted(FAMILIES)) for a in _trained_on(ws.model(lofo.reference)))
    # ... and what they were tested on has it
    assert [a["wide_families"] for a in _acquisitions(ws.test_set(lofo.tests[0]))] == [",".join(sorted(FAMILIES))] * 2
    assert [a["wide_families"] for a in _acquisitions(ws.test_set(lofo.tests[1]))] == ["nodules"] * 2
    assert [a["style"] for a in _acquisitions(ws.test_set(cross.tests[0]))] == ["mottled"] * 2

    reports = sorted((work / "evaluations").glob("*/report.json"))
    assert [p.parent.name for p in reports] == [
        "all-families--only-nodules", "all-families--style-mottled", "all-families--wide",
        "without-nodules--only-nodules", "without-nodules--wide", "without-style-mottled--style-mottled"]
    summary = json.loads((work / "summary.json").read_text())
    assert summary["folds_done"] == ["lofo:nodules", "cross-style:mottled"] and summary["smoke"] is True
    rows = [r for rec in summary["folds"] for r in rec["rows"]]
    assert [(r["role"], r["model"], r["test"]) for r in rows[:2]] == [
        ("held-out", "without-nodules", "wide"), ("reference", "all-families", "wide")]
    assert rows[0]["delta_cpm_vs_reference"] == pytest.approx(rows[0]["metrics"]["cpm"] - rows[1]["metrics"]["cpm"])
    assert all(r["metrics"]["scans"] == 2 and r["metrics"]["cpm"] is not None for r in rows)
    table = (work / "summary.md").read_text().splitlines()
    assert table[0] == f"**{SCALE.header()}**"
    body = [line for line in table if line.startswith("| ") and "---" not in line][1:]
    assert len(body) == 6  # each model-on-test-set pair once
    assert [line.split(" | ")[0] for line in body].count("| reference: all-families model") == 3
    assert any(line.startswith("| lofo:nodules | all families wide except nodules; all styles | only-nodules")
               for line in body)

    stamps = {p: p.stat().st_mtime_ns for p in [*reports, ws.model(lofo.model) / "weights.pt"]}
    again: list[str] = []
    outcomes = run_folds(work, folds, SCALE, BASE, say=again.append)
    assert [o.skipped for o in outcomes] == [True, True]
    assert not [line for line in again if line.startswith(("training", "evaluating", "generating"))]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
