"""A tiny training run learns, checkpoints, resumes, and its model finds a large nodule."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pacs_node.ml.datasets import PhantomSet, SampleParams, phantom_volume
from pacs_node.ml.detector import Detector
from pacs_node.ml.modelcard import read_model_card
from pacs_node.ml.network import NetworkConfig
from pacs_node.ml.train import TrainConfig, froc_points, train

from tests.ml._fixtures import SMALL, find_phantom

TINY = TrainConfig(
    name="tiny-test-model",
    phantoms=PhantomSet(count=5, seed=3, nodules=(2, 3), shape_zyx=SMALL["shape_zyx"],
                        spacing_zyx_mm=SMALL["spacing_zyx_mm"], diameter_range_mm=(9.0, 18.0),
                        balanced_fraction=0.0, varied_fraction=0.0),
    network=NetworkConfig(patch_size=16, widths=(8, 16, 32, 48), head_channels=16, hidden=32, dropout=0.0),
    samples=SampleParams(patch_size=16, negatives_per_case=40, hard_negatives=20, pos_jitters=6),
    batch_size=32,
    lr=5e-3,
    positive_fraction=0.5,
    steps_per_epoch=16,
    val_fraction=0.2,
    calibrate_cases=0,
)


def test_tiny_training_learns_resumes_and_finds_a_held_out_nodule(tmp_path: Path) -> None:
    out = tmp_path / "model"
    first = train(tmp_path / "data", "phantom", out, epochs=3, seed=0, config=TINY)
    assert len(first.history) == 3
    assert first.history[-1]["train_loss"] < first.history[0]["train_loss"]
    assert (out / "checkpoints" / "last.pt").is_file()
    card = read_model_card(out)
    assert card.name == "tiny-test-model" and card.extra["training"]["epochs_completed"] == 3

    resumed = train(tmp_path / "data", "phantom", out, epochs=4, seed=0, resume=True, config=TINY)
    assert len(resumed.history) == 4
    assert resumed.history[:3] == first.history

    phantom, nodule = find_phantom(lambda n: n.location == "free", first_seed=9000, n_nodules=1,
                                   nodule_types=["solid"], diameter_range_mm=(14.0, 18.0))
    detection = Detector.load(out).run(phantom_volume(phantom), min_score=0.0, max_findings=3)
    top = detection.findings
    distances = [np.linalg.norm(np.array(f.center_lps_mm) - np.array(nodule.centre_xyz_mm)) for f in top]
    assert min(distances) <= nodule.diameter_mm / 2, distances


def test_froc_counts_hits_once_and_everything_else_as_false_positives() -> None:
    truth = [[(np.zeros(3), 10.0)], [(np.array([50.0, 0, 0]), 6.0)]]
    findings = [
        [(np.array([1.0, 0, 0]), 0.9), (np.array([2.0, 0, 0]), 0.8), (np.array([30.0, 0, 0]), 0.7)],
        [(np.array([60.0, 0, 0]), 0.95)],
    ]
    froc = froc_points(findings, truth, fp_rates=(0.5, 1.0))
    assert froc["n_nodules"] == 2 and froc["n_scans"] == 2
    # one FP allowed (0.5/scan): threshold at the 2nd FP (0.7) -> the 0.9 hit counts
    assert froc["sensitivity"] == [0.5, 0.5]


def test_train_command_asks_how_many_phantoms_to_generate(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pacs_node.cli import app

    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "cache"), "--format", "phantom",
                                      "--out", str(tmp_path / "model")])
    assert result.exit_code == 2
    assert "--format phantom needs --phantoms N" in result.output
    assert not (tmp_path / "model").exists()
