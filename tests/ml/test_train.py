"""Training: the streamed patch cache, resumable cache builds and runs, precision, the CLI options.

A tiny real run learns, checkpoints, resumes, and its model finds a large nodule;
the other tests replace the front end by made-up patches (:func:`_fake_samples`) so
that they take seconds.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pacs_node.cli import app
from pacs_node.imaging.luna16 import write_luna16_annotations, write_mhd
from pacs_node.ml import patchcache
from pacs_node.ml.augment import AugmentParams
from pacs_node.ml.batches import batches, make_batch, training_batches
from pacs_node.ml.calibrate import froc_points
from pacs_node.ml.cases import Case, PhantomSet, list_cases, load_case_volume, phantom_volume
from pacs_node.ml.detector import Detector
from pacs_node.ml.mining import MiningParams, hard_pool, score_samples
from pacs_node.ml.modelcard import Inference, read_model_card
from pacs_node.ml.network import NetworkConfig, NoduleNet, normalise_hu
from pacs_node.ml.patchstore import INDEX_BYTES_PER_SAMPLE, PatchStore, write_case
from pacs_node.ml.phantom.variation import FAMILIES, STYLES, Variation
from pacs_node.ml.precision import select_device, select_precision
from pacs_node.ml.preprocess import FrontEndConfig
from pacs_node.ml.samples import SampleParams, case_fingerprint, fingerprint
from pacs_node.ml.train import TrainConfig, train

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
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "cache"), "--format", "phantom",
                                      "--out", str(tmp_path / "model")])
    assert result.exit_code == 2
    assert "--format phantom needs --phantoms N" in result.output
    assert not (tmp_path / "model").exists()


# --- made-up samples: the shape of build_case's output without running the front end ---------------


def _fake_samples(case: Case, front_end: FrontEndConfig, params: SampleParams, seed: int,
                  n_pos: int = 6, n_neg: int = 14) -> dict[str, np.ndarray]:
    """Samples as :func:`pacs_node.ml.samples.build_case` returns them; positives hold a bright ball."""
    rng = np.random.default_rng([seed, int(hashlib.sha256(case.case_id.encode()).hexdigest()[:8], 16)])
    n, p = n_pos + n_neg, params.patch_size
    z, y, x = np.mgrid[:p, :p, :p] - (p - 1) / 2
    ball = (z**2 + y**2 + x**2) <= (p / 5) ** 2
    fine = rng.normal(-750, 80, (n, p, p, p))
    fine[:n_pos, ball] += 700
    label = np.r_[np.ones(n_pos), np.zeros(n_neg)].astype(np.int8)
    return {
        "fine": fine.astype(np.int16), "context": (fine * 0.9).astype(np.int16), "label": label,
        "type": np.where(label == 1, 0, -1).astype(np.int8),
        "diameter": np.where(label == 1, 2 * p / 5, 0).astype(np.float32),
        "offset": np.where(label[:, None] == 1, rng.normal(0, 1, (n, 3)), 0).astype(np.float32),
        "kind": np.where(label == 1, 0, 2).astype(np.int8),
        "n_candidates": np.array(n_neg + 2), "n_nodules": np.array(1), "n_found": np.array(1), "scale": np.array(1.0),
    }


def _fake_cases(folder: Path, sizes: list[tuple[int, int]], patch_size: int = 16) -> tuple[list[Path], list[dict]]:
    paths, arrays = [], []
    for i, (n_pos, n_neg) in enumerate(sizes):
        a = _fake_samples(Case(f"case{i}", ("mhd", ""), ()), FrontEndConfig(), SampleParams(patch_size=patch_size),
                          0, n_pos, n_neg)
        write_case(folder / f"case{i}-fp", a)
        paths.append(folder / f"case{i}-fp")
        arrays.append(a)
    return paths, arrays


def test_patch_store_streams_the_same_samples_as_the_cases_hold(tmp_path: Path) -> None:
    paths, arrays = _fake_cases(tmp_path, [(3, 5), (0, 0), (2, 7), (1, 4)])
    # what the former in-memory PatchSet.load held: every case concatenated
    whole = {k: np.concatenate([a[k] for a in arrays]) for k in ("fine", "context", "label", "type", "diameter",
                                                                   "offset", "kind")}
    with PatchStore(paths, max_open_cases=2) as store:
        assert len(store) == 22
        for k in ("label", "type", "diameter", "offset", "kind"):
            np.testing.assert_array_equal(getattr(store, k), whole[k])
        assert store.stats == {"cases": 4, "nodules": 4, "found": 4, "candidates": sum(n + 2 for _, n in
                                                                                         [(3, 5), (0, 0), (2, 7), (1, 4)])}
        idx = np.array([21, 0, 5, 5, 13, 8, 2, 17])  # across cases, out of order, repeated
        fine, context = store.read(idx)
        np.testing.assert_array_equal(fine, whole["fine"][idx])
        np.testing.assert_array_equal(context, whole["context"][idx])
        batch = make_batch(store, idx, None, 8, (-1100.0, 400.0))
        expected = normalise_hu(torch.from_numpy(np.stack([whole["fine"][idx], whole["context"][idx]], 1)
                                                 [..., 4:12, 4:12, 4:12].astype(np.float32)), (-1100.0, 400.0))
        assert torch.equal(batch.x, expected)
        drawn = list(batches(store, np.random.default_rng(1), 8, 0.25, 5))
        assert all((store.label[b] == 1).sum() == 2 and len(b) == 8 for b in drawn)


def test_patch_store_holds_targets_only_and_a_bounded_number_of_open_cases(tmp_path: Path) -> None:
    paths, arrays = _fake_cases(tmp_path, [(2, 10)] * 6)
    store = PatchStore(paths, max_open_cases=2)
    rng = np.random.default_rng(0)
    for _ in range(12):
        idx = rng.integers(0, len(store), 16)
        store.read(idx)
        assert store.open_cases <= 2
    held = sum(v.nbytes for v in vars(store).values() if isinstance(v, np.ndarray))
    assert held == store.index_bytes == INDEX_BYTES_PER_SAMPLE * len(store)
    patch_bytes = sum(a["fine"].nbytes + a["context"].nbytes for a in arrays)
    assert store.index_bytes * 100 < patch_bytes
    assert store.bytes_read == 12 * 16 * 2 * 16**3 * 2
    store.close()
    assert store.open_cases == 0


def test_prefetched_batches_are_the_batches_made_inline_and_leave_the_same_random_state(tmp_path: Path) -> None:
    paths, _ = _fake_cases(tmp_path, [(2, 10)] * 3)
    with PatchStore(paths) as store:
        kw = {"batch_size": 8, "positive_fraction": 0.25, "steps": 5, "patch_size": 16,
              "hu_window": (-1100.0, 400.0), "params": AugmentParams()}
        rng_inline, rng_thread = np.random.default_rng(3), np.random.default_rng(3)
        inline = list(training_batches(store, rng_inline, prefetch=0, **kw))
        threaded = list(training_batches(store, rng_thread, prefetch=2, **kw))
        assert len(inline) == len(threaded) == 5
        assert all(torch.equal(a.x, b.x) and torch.equal(a.offset, b.offset) for a, b in zip(inline, threaded))
        assert rng_inline.bit_generator.state == rng_thread.bit_generator.state
        store.close()  # files reopen on the next read: a truncated one fails in the producer thread ...
        paths[0].joinpath("fine.npy").write_bytes(b"")
        with pytest.raises(OSError, match="truncated"):  # ... and the error reaches the consumer
            list(training_batches(store, np.random.default_rng(3), prefetch=2, **kw))


def test_mined_negatives_are_the_highest_scored_and_fill_their_share_of_every_batch(tmp_path: Path) -> None:
    paths, _ = _fake_cases(tmp_path, [(2, 30)] * 3)
    with PatchStore(paths) as store:
        neg = np.nonzero(store.label == 0)[0]
        model = NoduleNet(NetworkConfig(patch_size=16, widths=(4, 8, 8, 8), head_channels=8, hidden=16))
        scores = score_samples(model, store, neg, "cpu", chunk=7)
        whole = torch.sigmoid(model.eval()(make_batch(store, neg, None, 16, (-1100.0, 400.0)).x).logit).detach()
        np.testing.assert_allclose(scores, whole.numpy(), rtol=1e-4, atol=1e-6)  # chunking keeps the order
        pool = hard_pool(neg, scores, 0.1)
        assert len(pool) == 9 and scores[np.isin(neg, pool)].min() >= scores[~np.isin(neg, pool)].max()
        # 16 per batch: 8 positives, 8 negatives of which 6 (share 0.75) from the pool
        for idx in batches(store, np.random.default_rng(0), 16, 0.5, 20, hard=pool, hard_share=0.75):
            assert (store.label[idx] == 1).sum() == 8
            assert np.isin(idx[store.label[idx] == 0], pool).sum() >= 6
        drawn = np.concatenate(list(batches(store, np.random.default_rng(0), 16, 0.5, 20)))
        assert np.isin(drawn, pool).sum() < 0.3 * 20 * 8  # without a pool: uniform, about a tenth


def _tiny_luna16(folder: Path, n: int) -> list[Path]:
    volume = np.full((8, 8, 8), -800, dtype=np.int16)
    mhds = [write_mhd(volume, (1.0, 1.0, 1.0), (0.0, 0.0, float(i)), folder / "subset0" / f"1.2.3.{i}.mhd")
            for i in range(n)]
    write_luna16_annotations([], folder)
    return mhds


def test_cache_build_resumes_and_skips_a_broken_case_with_one_line(tmp_path: Path, monkeypatch) -> None:
    mhds = _tiny_luna16(tmp_path / "luna", 3)
    mhds[1].with_suffix(".raw").unlink()  # a study whose pixel data is missing
    built: list[str] = []

    def build(case: Case, front_end: FrontEndConfig, params: SampleParams, seed: int) -> dict[str, np.ndarray]:
        load_case_volume(case)  # the real reader: fails for the broken study
        built.append(case.case_id)
        return _fake_samples(case, front_end, params, seed)

    monkeypatch.setattr(patchcache, "build_case", build)
    cases = list_cases(tmp_path / "luna", "luna16")
    cache = tmp_path / "cache"
    (cache / "1.2.3.0-abc.tmp-999999999").mkdir(parents=True)  # left by a killed run
    params = SampleParams(patch_size=16)
    lines: list[str] = []
    first = patchcache.build_cache(cases, cache, FrontEndConfig(), params, 0, workers=1, say=lines.append)
    assert list(first) == ["1.2.3.0", "1.2.3.2"] and sorted(built) == ["1.2.3.0", "1.2.3.2"]
    failed = [line for line in lines if "case_failed" in line]
    assert len(failed) == 1 and "1.2.3.1" in failed[0] and "\n" not in failed[0]
    assert not (cache / "1.2.3.0-abc.tmp-999999999").exists()

    built.clear()
    lines.clear()
    again = patchcache.build_cache(cases, cache, FrontEndConfig(), params, 0, workers=1, say=lines.append)
    assert again == first and built == []
    assert [line for line in lines if "case_skipped" in line and "1.2.3.1" in line]
    assert "to_build=0 cached=2 failed_before=1" in " ".join(lines)
    with PatchStore(list(again.values())) as store:
        assert len(store) == 40


FAST = TrainConfig(
    name="fast-test-model",
    network=NetworkConfig(patch_size=16, widths=(4, 8, 8, 8), head_channels=8, hidden=16, dropout=0.0),
    samples=SampleParams(patch_size=16),
    batch_size=16, lr=3e-3, positive_fraction=0.5, steps_per_epoch=6, val_fraction=0.25, calibrate_cases=0,
    workers=1, threads=1,
)


def test_interrupted_training_resumes_to_the_same_model_and_the_card_records_the_variation(
        tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(patchcache, "build_case", _fake_samples)
    variation = Variation.wide(without=("nodules",), styles=("classic", "lobular"))
    cfg = TrainConfig(**{**FAST.__dict__, "phantoms": PhantomSet(count=4, seed=5, variation=variation),
                         "extra_phantoms": (PhantomSet(count=2, seed=6),), "mining": MiningParams(first_epoch=1),
                         "inference": Inference(flips=2, rescore_above=0.3)})
    lines: list[str] = []
    whole = train(tmp_path / "cache", "phantom", tmp_path / "whole", epochs=2, seed=0, config=cfg,
                  progress=lines.append)

    class Killed(Exception):
        pass

    def kill_in_epoch_2(line: str) -> None:
        if line.startswith("epoch 2/2 step"):
            raise Killed  # after epoch 1's checkpoint, as a kill would

    with pytest.raises(Killed):
        train(tmp_path / "cache", "phantom", tmp_path / "split", epochs=2, seed=0, config=cfg, progress=kill_in_epoch_2)
    split = train(tmp_path / "cache", "phantom", tmp_path / "split", epochs=2, seed=0, resume=True, config=cfg)

    a = torch.load(tmp_path / "whole" / "weights.pt")
    b = torch.load(tmp_path / "split" / "weights.pt")
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    assert len(split.history) == len(whole.history) == 2
    for r_split, r_whole in zip(split.history, whole.history, strict=True):
        losses = {k: v for k, v in r_whole.items() if k.startswith(("train_", "val_loss"))}
        assert {k: r_split[k] for k in losses} == pytest.approx(losses, rel=1e-6)
    record = whole.history[-1]
    assert record["samples_per_s"] > 0 and record["epoch_s"] > 0
    assert any(line.startswith("epoch 2/2 ") and "samples_per_s=" in line for line in lines)

    assert "mine_s" not in whole.history[0] and 0.0 <= whole.history[1]["mined_min_score"] <= 1.0
    assert any(line.startswith("epoch 2/2 mined ") for line in lines)

    card = read_model_card(tmp_path / "split")
    phantoms = card.extra["training"]["phantoms"]
    assert phantoms["variation"] == {"families": sorted(set(FAMILIES) - {"nodules"}), "styles": ["classic", "lobular"]}
    assert card.extra["training"]["cases_total"] == 6
    assert card.inference == Inference(flips=2, rescore_above=0.3)
    assert card.extra["training"]["extra_phantoms"]["set1"]["seed"] == 6
    assert card.extra["training"]["extra_phantoms"]["set1"]["variation"]["families"] == []
    assert card.extra["training"]["mining"] == {"share": 0.5, "pool_fraction": 0.1, "first_epoch": 1}
    same = TrainConfig(**{**cfg.__dict__, "extra_phantoms": (PhantomSet(count=2, seed=5),)})
    with pytest.raises(ValueError, match="share studies"):
        train(tmp_path / "cache", "phantom", tmp_path / "dup", epochs=1, seed=0, config=same)
    assert card.extra["training"]["precision"] == "fp32" and card.extra["training"]["device"] == "cpu"


def test_precision_is_mixed_on_cuda_and_float32_on_the_cpu() -> None:
    assert select_precision("cpu").dtype is None and select_precision("cpu").name == "fp32"
    assert select_precision("cpu", "bf16").dtype == torch.bfloat16
    bf16 = select_precision("cuda", bf16_supported=True)
    assert (bf16.name, bf16.scale_gradients) == ("bf16", False)
    fp16 = select_precision("cuda:0", bf16_supported=False)
    assert (fp16.name, fp16.scale_gradients, fp16.device_type) == ("fp16", True, "cuda")
    assert select_precision("cuda", "off").dtype is None
    with pytest.raises(ValueError, match="fp16"):
        select_precision("cpu", "fp16")
    with pytest.raises(ValueError, match="amp"):
        select_precision("cpu", "fp8")
    assert select_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            select_device("cuda")


def test_train_options_choose_the_generator_variation_and_the_cache_fingerprint(tmp_path: Path, monkeypatch) -> None:
    seen: dict[str, object] = {}
    monkeypatch.setattr("pacs_node.ml.train.train", lambda *args, **kw: seen.update(kw) or "ok")
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "m"), "--format",
                                      "phantom", "--phantoms", "3", "--wide", "--without", "nodules",
                                      "--without", "pleura", "--styles", "classic,mottled"])
    assert result.exit_code == 0, result.output
    wide = seen["config"].phantoms  # type: ignore[attr-defined]
    assert seen["config"].mining == MiningParams()  # type: ignore[attr-defined]
    assert wide.variation == Variation(frozenset(FAMILIES) - {"nodules", "pleura"}, ("classic", "mottled"))
    classic = PhantomSet(count=3, seed=wide.seed)
    assert classic.variation.is_classic
    fe, sp = FrontEndConfig(), SampleParams()
    assert fingerprint(fe, sp, 0, wide) != fingerprint(fe, sp, 0, classic)
    assert fingerprint(fe, sp, 0, classic) != fingerprint(fe, sp, 0)
    case_w, case_c = list_cases(tmp_path, "phantom", wide)[0], list_cases(tmp_path, "phantom", classic)[0]
    assert case_w.case_id == case_c.case_id and case_fingerprint(case_w, fe, sp, 0) != case_fingerprint(case_c, fe, sp, 0)

    class Generated(Exception):
        pass

    def generate(seed: int, **kw: object) -> None:
        seen["generator_variation"] = kw["variation"]
        raise Generated

    monkeypatch.setattr("pacs_node.ml.phantom.generate_phantom", generate)
    with pytest.raises(Generated):
        load_case_volume(case_w)
    assert seen["generator_variation"] == wide.variation


def test_phantom_command_passes_the_variation_to_the_generator(tmp_path: Path, monkeypatch) -> None:
    from pacs_node.ml.phantom import output

    real = output.generate_phantom
    seen: list[Variation] = []

    def generate(seed: int, **kw: object) -> object:
        seen.append(kw["variation"])  # type: ignore[arg-type]
        return real(seed, **SMALL, n_nodules=1)  # type: ignore[arg-type]

    monkeypatch.setattr(output, "generate_phantom", generate)
    result = CliRunner().invoke(app, ["phantom", "--out", str(tmp_path), "--format", "luna16", "--wide",
                                      "--without", "acquisition"])
    assert result.exit_code == 0, result.output
    assert seen == [Variation.wide(without=("acquisition",))]
    assert seen[0].styles == STYLES and len(list((tmp_path / "subset0").glob("*.mhd"))) == 1


@pytest.mark.parametrize("args", [
    ["phantom", "--without", "nodules"],
    ["phantom", "--wide", "--without", "spleen"],
    ["phantom", "--styles", "classic,cartoon"],
    ["phantom", "--wide", "--styles", "classic,"],
    ["train", "--format", "phantom", "--phantoms", "2", "--wide", "--without", "spleen"],
    ["train", "--format", "luna16", "--wide"],
    ["train", "--format", "phantom", "--phantoms", "2", "--amp", "fp8"],
])
def test_bad_generator_options_exit_2_with_one_line(tmp_path: Path, args: list[str]) -> None:
    out = ["--out", str(tmp_path / "out")] + (["--data", str(tmp_path / "data")] if args[0] == "train" else [])
    result = CliRunner().invoke(app, args + out)
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "out").exists()
