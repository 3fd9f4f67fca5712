"""The optional third input channel: a 96 mm "wide" patch of 4 mm voxels around each candidate.

Models up to v3 take two channels (24 mm fine, 48 mm context), too little to see a 30 mm
nodule with its surroundings.  A three-channel network can start from a two-channel
model's weights (the new channel's stem kernels at zero), so it first scores exactly as
the old model did; a three-channel model trains on a three-channel cache and runs in the
detector like any other.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pacs_node.ml.canonical import Grid
from pacs_node.ml.cases import phantom_volume
from pacs_node.ml.detector import Detector
from pacs_node.ml.modelcard import read_model_card
from pacs_node.ml.network import NetworkConfig, NoduleNet, normalise_hu, widen_input
from pacs_node.ml.patches import HalfGrid, extract_patches
from pacs_node.ml.patchstore import PatchStore
from pacs_node.ml.samples import SampleParams, fingerprint
from pacs_node.ml.preprocess import FrontEndConfig
from pacs_node.ml.train import train

from tests.ml._fixtures import find_phantom
from tests.ml.test_train import TINY


def test_wide_patch_is_the_mean_of_4x4x4_blocks_around_the_same_centre() -> None:
    rng = np.random.default_rng(3)
    grid = Grid(rng.normal(-700, 300, size=(72, 80, 90)).astype(np.float32), np.eye(4))
    inside = np.array([[32, 33, 40], [37, 40, 45], [35, 47, 58]])  # every parity of the block start
    edge = np.array([[0, 3, 89], [71, 79, 1]])
    fine2, context2 = extract_patches(grid, inside, 16)
    fine, context, wide = extract_patches(grid, inside, 16, channels=3)
    np.testing.assert_array_equal(fine, fine2)  # the first two channels do not change
    np.testing.assert_array_equal(context, context2)
    cubes = np.stack([grid.array[z - 32:z + 32, y - 32:y + 32, x - 32:x + 32] for z, y, x in inside])
    expected = F.avg_pool3d(torch.from_numpy(cubes)[:, None], 4, 4)[:, 0].numpy()
    np.testing.assert_allclose(wide, expected, rtol=0, atol=0.5)  # float16 means: within 0.5 HU
    wide16 = extract_patches(grid, inside, 16, dtype=np.int16, channels=3)[2]
    assert np.abs(wide16 - expected).max() <= 1.0
    half = HalfGrid(grid.array)  # cut in several calls from one HalfGrid: the same patches
    again = np.concatenate([extract_patches(grid, inside[i:i + 1], 16, channels=3, half=half)[2] for i in range(3)])
    np.testing.assert_array_equal(again, wide)
    at_edge = extract_patches(grid, edge, 16, channels=3)[2]  # beyond the grid: its edge repeats
    assert np.isfinite(at_edge).all() and at_edge.shape == (2, 16, 16, 16)
    assert np.abs(at_edge.mean() - grid.array.mean()) < 50
    with pytest.raises(ValueError, match="channels"):
        extract_patches(grid, inside, 16, channels=4)


def test_a_widened_network_scores_as_the_narrow_one_until_it_learns_the_new_channel() -> None:
    narrow_cfg = NetworkConfig(patch_size=16, widths=(4, 8, 8, 8), head_channels=8, hidden=16)
    narrow = NoduleNet(narrow_cfg).eval()
    wide = NoduleNet(replace(narrow_cfg, channels=3)).eval()
    wide.load_state_dict(widen_input(narrow.state_dict(), wide), strict=True)
    x = torch.randn(5, 3, 16, 16, 16)
    with torch.no_grad():
        for a, b in zip(narrow(x[:, :2]), wide(x), strict=True):
            torch.testing.assert_close(a, b)
        wide.features[0][0].weight[:, 2] += 0.1  # once the wide channel has weight, it counts
        assert not torch.allclose(narrow(x[:, :2]).logit, wide(x).logit)
    with pytest.raises(RuntimeError):  # anything else that differs is still refused
        NoduleNet(replace(narrow_cfg, hidden=32)).load_state_dict(widen_input(narrow.state_dict(), wide))


def test_two_and_three_channel_samples_are_cached_apart() -> None:
    fe = FrontEndConfig()
    assert fingerprint(fe, SampleParams(), 1) != fingerprint(fe, SampleParams(channels=3), 1)


def test_a_three_channel_model_trains_from_a_two_channel_one_and_detects(tmp_path: Path) -> None:
    narrow = NoduleNet(TINY.network)
    torch.save(narrow.state_dict(), tmp_path / "narrow.pt")
    cfg = replace(TINY, name="tiny-wide", network=replace(TINY.network, channels=3),
                  samples=replace(TINY.samples, channels=3), steps_per_epoch=4,
                  init_weights=tmp_path / "narrow.pt")
    out = tmp_path / "model"
    result = train(tmp_path / "data", "phantom", out, epochs=1, seed=0, config=cfg)
    assert len(result.history) == 1
    card = read_model_card(out)
    assert card.network.channels == 3
    cases = sorted(p for p in (tmp_path / "data").iterdir() if (p / "targets.npz").is_file())
    assert all((p / "wide.npy").is_file() for p in cases)
    with PatchStore(cases, channels=3) as store:
        assert [a.shape[1:] for a in store.read(np.arange(4))] == [(16, 16, 16)] * 3
    (cases[0] / "wide.npy").unlink()  # a cache without the channel is refused by name
    with pytest.raises(ValueError, match="wide.npy"):
        PatchStore(cases, channels=3)

    phantom, _ = find_phantom(lambda n: n.location == "free", first_seed=9000, n_nodules=1,
                              nodule_types=["solid"], diameter_range_mm=(14.0, 18.0))
    detection = Detector.load(out).run(phantom_volume(phantom), min_score=0.0, max_findings=3)
    assert detection.scored is not None and len(detection.scored.score) == len(detection.candidates_lps_mm)
    assert np.all((detection.scored.score >= 0) & (detection.scored.score <= 1))


def test_the_three_channel_input_is_normalised_like_the_others() -> None:
    x = normalise_hu(np.full((1, 3, 8, 8, 8), -1100.0), (-1100.0, 400.0))
    assert torch.all(x == -1.0)


def test_the_train_command_takes_the_wide_channel_and_initial_weights(tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from pacs_node.cli import app

    seen: dict[str, object] = {}
    monkeypatch.setattr("pacs_node.ml.train.train", lambda *args, **kw: seen.update(kw) or "ok")
    weights = tmp_path / "v3.pt"
    weights.write_bytes(b"")
    args = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "m"), "--format", "luna16"]
    result = CliRunner().invoke(app, [*args, "--channels", "3", "--init-weights", str(weights)])
    assert result.exit_code == 0, result.output
    config = seen["config"]
    assert config.network.channels == config.samples.channels == 3  # type: ignore[attr-defined]
    assert config.init_weights == weights  # type: ignore[attr-defined]
    missing = CliRunner().invoke(app, [*args, "--init-weights", str(tmp_path / "nope.pt")])
    assert missing.exit_code == 2 and "no such file" in missing.output
    assert CliRunner().invoke(app, [*args, "--channels", "4"]).exit_code == 2
