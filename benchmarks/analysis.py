"""Analysis compute: our detector against MONAI's lung_nodule_ct_detection RetinaNet.

Both run in the same invocation on the same synthetic chest CT (300 slices of 512 x 512,
``generate_phantom`` at its default field of view, written once as a DICOM series to a
cache folder), each in a fresh subprocess so that its peak memory (``ru_maxrss`` of
that child, from ``os.wait4``) is its own, both on ``--threads`` torch threads (2).

ours
    ``read_dicom_volume`` of the series + ``Detector.load(models/<bundled>).detect``.
MONAI
    The bundle's network with random weights: 3D ResNet-50 (conv1 7x7x7, stride
    (2, 2, 1)), FPN on layers [1, 2], 3 anchors per level (6,8,4), (8,6,5), (10,10,6),
    ``RetinaNetDetector`` with score 0.02, NMS 0.22, 300 boxes, sliding window
    512 x 512 x 192 with overlap 0.25.  The same DICOM load, then the bundle's
    preprocessing (orientation RAS, resampling to 0.703125 x 0.703125 x 1.25 mm, HU
    clipped to -1024..300 and scaled to [0, 1]), then detection.  Times include the
    resampling; network construction is reported apart, as is our model's loading.

``--quick`` times MONAI's detector on one 192 x 192 x 80 patch of the resampled
volume and extrapolates to the full sliding-window run (per-voxel cost times the
window volume times the number of windows); the output says so.

    .venv/bin/python benchmarks/analysis.py [--quick] [--skip-monai] [--monai-timeout S]

Measured here (2 cores, nice 5, beside a training job, load average 3.5 to 5): MONAI
took 2,593 s end to end on the 577 x 577 x 250 resampled grid (8 windows of 228 to
372 s, resampling 6.6 s), peak RSS 11.5 GiB; ``--quick`` on a quieter machine
extrapolated 1,296 s from a 9.5 s patch, so read it as a lower bound.

MONAI is installed for this benchmark only: ``pip install --no-deps monai nibabel``
(monai itself needs only numpy and torch, and must not replace the CPU torch; nibabel
is what its Orientation and Spacing transforms use).  torchvision is not installable beside the CPU torch build; MONAI's
``resnet_fpn_feature_extractor`` uses it only for two helpers (an argument check and
``IntermediateLayerGetter``), which :func:`_stand_in_for_torchvision` provides with the
same behaviour, so the network is built by the bundle's own call.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
SHAPE_ZYX = (300, 512, 512)
SEED = 20240
# The bundle's settings (configs/inference.json of lung_nodule_ct_detection).
MONAI_PIXDIM = (0.703125, 0.703125, 1.25)
MONAI_ROI = (512, 512, 192)
MONAI_OVERLAP = 0.25
MONAI_SIZE_DIVISIBLE = (16, 16, 8)
QUICK_PATCH = (192, 192, 80)
TARGET_RATIO = 0.1


class BenchmarkError(RuntimeError):
    """A benchmark that cannot run; the message says why."""


# --------------------------------------------------------------------------- parent


def bundled_model(models_dir: Path) -> Path:
    """The model folder under ``models/``: the only one, or the node's default among several.

    Raises
    ------
    BenchmarkError
        If there is none, or more than one and none was chosen.
    """
    found = sorted(p for p in models_dir.iterdir() if p.is_dir() and any(p.iterdir())) if models_dir.is_dir() else []
    if not found:
        raise BenchmarkError(
            f"no bundled model under {models_dir}: train one and place it there (models/<name>/), "
            "or pass --model-dir; this benchmark does not time a stand-in for our detector"
        )
    if len(found) > 1:
        from pacs_node.config import AnalysisConfig

        default = AnalysisConfig().model  # the node's default model, when it is among them
        chosen = [p for p in found if p.name == default]
        if chosen:
            return chosen[0]
        names = ", ".join(p.name for p in found)
        raise BenchmarkError(f"several models under {models_dir} ({names}): pass --model-dir")
    return found[0]


def cached_series(cache: Path, seed: int) -> Path:
    """The benchmark's DICOM series folder, generated and written on first use."""
    from pacs_node.ml.phantom import generate_phantom, write_dicom_study

    study = cache / f"chest-{'x'.join(map(str, SHAPE_ZYX))}-seed{seed}"
    done = study / "complete"
    if not done.exists():
        print(f"generating a {'x'.join(map(str, SHAPE_ZYX))} phantom into {study} (once)", flush=True)
        phantom = generate_phantom(seed, shape_zyx=SHAPE_ZYX, keep_labels=False)
        written = write_dicom_study(phantom, study)
        done.write_text(f"{written.n_files}\n")
    return study / "series"


def run_child(role: str, args: argparse.Namespace, series: Path, timeout: float | None) -> dict[str, Any]:
    """Run one side in a fresh process; its result plus wall time and peak RSS (KiB).

    Returns ``{"timed_out": True, ...}`` if it ran past ``timeout`` (then killed).
    """
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", role, "--series", str(series),
               "--result", str(result_path), "--threads", str(args.threads)]
        if args.model_dir:
            cmd += ["--model-dir", str(args.model_dir)]
        started = time.monotonic()
        child = subprocess.Popen(cmd, start_new_session=True)
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if timeout is not None and time.monotonic() - started > timeout:
                os.killpg(child.pid, signal.SIGKILL)
                _, status, usage = os.wait4(child.pid, 0)
                child.returncode = -9
                return {"timed_out": True, "wall_s": time.monotonic() - started, "peak_rss_kib": usage.ru_maxrss,
                        "window_s": _progress(result_path)}
            time.sleep(0.1)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - started
        if child.returncode != 0 or not result_path.exists():
            done = _progress(result_path)
            note = f"; windows finished before: {', '.join(f'{t:.0f} s' for t in done)}" if done else ""
            raise BenchmarkError(f"{role} side failed (exit {child.returncode}) after {wall:.0f} s, "
                                 f"peak RSS {_gib(usage.ru_maxrss)}{note}; its output is above")
        result = json.loads(result_path.read_text())
    return {**result, "timed_out": False, "wall_s": wall, "peak_rss_kib": usage.ru_maxrss}


def _progress(result_path: Path) -> list[float]:
    """Seconds per sliding window that a MONAI child finished (its progress file)."""
    path = result_path.with_suffix(".progress")
    return [float(line) for line in path.read_text().split()] if path.exists() else []


def _gib(kib: float) -> str:
    return f"{kib / 2**20:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="our model (default: the one folder under models/)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "pacs-node-bench",
                        help="where the generated DICOM series is kept between runs")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--threads", type=int, default=2, help="torch threads on both sides")
    parser.add_argument("--quick", action="store_true", help="time MONAI on one 192x192x80 patch and extrapolate")
    parser.add_argument("--skip-monai", action="store_true", help="time our side only")
    parser.add_argument("--monai-only", action="store_true", help="time MONAI only (no ratio)")
    parser.add_argument("--monai-timeout", type=float, default=3600.0, help="seconds before MONAI is stopped")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", choices=("ours", "monai", "monai-quick"), help=argparse.SUPPRESS)
    parser.add_argument("--series", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return
    if args.skip_monai and args.monai_only:
        parser.error("--skip-monai and --monai-only leave nothing to time")
    try:
        if not args.monai_only:
            args.model_dir = args.model_dir or bundled_model(REPO / "models")
        results = compare(args)
    except BenchmarkError as exc:
        print(f"analysis benchmark: {exc}", file=sys.stderr)
        sys.exit(2)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def compare(args: argparse.Namespace) -> dict[str, Any]:
    series = cached_series(args.cache, args.seed)
    n_files = len(list(series.glob("*.dcm")))
    print(f"volume: {n_files} slices of 512x512 from {series}; torch threads {args.threads}", flush=True)
    results: dict[str, Any] = {"series": str(series), "slices": n_files, "threads": args.threads}
    if not args.monai_only:
        print(f"ours: model {args.model_dir}", flush=True)
        ours = results["ours"] = run_child("ours", args, series, None)
        print(f"ours : load {ours['load_s']:.2f} s + detect {ours['detect_s']:.2f} s = {ours['total_s']:.2f} s; "
              f"peak RSS {_gib(ours['peak_rss_kib'])}; {ours['findings']} findings "
              f"(model load {ours['model_load_s']:.2f} s, process {ours['wall_s']:.1f} s)", flush=True)
    if not args.skip_monai:
        role = "monai-quick" if args.quick else "monai"
        print(f"MONAI: {'one patch, extrapolated' if args.quick else 'full sliding window'}; "
              f"timeout {args.monai_timeout:.0f} s", flush=True)
        monai = results["monai"] = run_child(role, args, series, args.monai_timeout)
        if monai["timed_out"]:
            done = monai["window_s"]
            per = f"; {len(done)} window(s) done, {sum(done) / len(done):.0f} s each" if done else ""
            print(f"MONAI: stopped after {monai['wall_s']:.0f} s (--monai-timeout); "
                  f"peak RSS so far {_gib(monai['peak_rss_kib'])}{per}", flush=True)
        else:
            _print_monai(monai)
    if "ours" in results and "monai" in results:
        ours, monai = results["ours"], results["monai"]
        if monai["timed_out"]:
            bound = ours["total_s"] / monai["wall_s"]
            print(f"ratio ours/MONAI (time): < {bound:.4f} (MONAI did not finish; target <= {TARGET_RATIO})")
            results["ratio_time_upper_bound"] = bound
        else:
            ratio = ours["total_s"] / monai["total_s"]
            note = " (MONAI extrapolated)" if monai.get("extrapolated") else ""
            verdict = "meets" if ratio <= TARGET_RATIO else "misses"
            print(f"ratio ours/MONAI (time): {ratio:.4f}{note}; {verdict} the target <= {TARGET_RATIO}")
            results["ratio_time"] = ratio
            if not monai.get("extrapolated"):
                mem = ours["peak_rss_kib"] / monai["peak_rss_kib"]
                print(f"ratio ours/MONAI (peak RSS): {mem:.3f}")
                results["ratio_peak_rss"] = mem
    return results


def _print_monai(m: dict[str, Any]) -> None:
    grid = "x".join(map(str, m["resampled_xyz"]))
    if m.get("extrapolated"):
        print(f"MONAI: one {'x'.join(map(str, QUICK_PATCH))} patch took {m['patch_s']:.2f} s; "
              f"EXTRAPOLATED to {m['windows']} window(s) of {'x'.join(map(str, MONAI_ROI))} "
              f"on the {grid} resampled grid: detect ~{m['detect_s']:.0f} s", flush=True)
    print(f"MONAI: load {m['load_s']:.2f} s + resample/scale {m['preprocess_s']:.2f} s + detect "
          f"{m['detect_s']:.2f} s{' (extrapolated)' if m.get('extrapolated') else ''} = {m['total_s']:.2f} s; "
          f"peak RSS {_gib(m['peak_rss_kib'])}{' (patch run, not a full run)' if m.get('extrapolated') else ''}; "
          f"{m['boxes']} boxes; {m['windows']} window(s) on {grid} voxels; "
          f"{m['parameters'] / 1e6:.1f} M parameters, random weights (built in {m['build_s']:.2f} s)", flush=True)


# --------------------------------------------------------------------------- children


def _peak_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def child_main(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    result = run_ours(args) if args.child == "ours" else run_monai(args, quick=args.child == "monai-quick")
    result["vmhwm_kib"] = _peak_rss_kib()
    args.result.write_text(json.dumps(result))


def _load(series: Path) -> tuple[Any, float]:
    from pacs_node.imaging.volume import read_dicom_volume

    t0 = time.perf_counter()
    volume = read_dicom_volume(sorted(series.glob("*.dcm")))
    return volume, time.perf_counter() - t0


def run_ours(args: argparse.Namespace) -> dict[str, Any]:
    from pacs_node.ml.detector import Detector

    t0 = time.perf_counter()
    detector = Detector.load(args.model_dir)
    model_load_s = time.perf_counter() - t0
    volume, load_s = _load(args.series)
    t1 = time.perf_counter()
    findings = detector.detect(volume)
    detect_s = time.perf_counter() - t1
    return {"model_load_s": model_load_s, "load_s": load_s, "detect_s": detect_s,
            "total_s": load_s + detect_s, "findings": len(findings)}


def _stand_in_for_torchvision() -> None:
    """Give MONAI's FPN builder the two torchvision helpers it uses, when torchvision is absent.

    ``_validate_trainable_layers`` returns ``max_value`` for a backbone that is not
    pretrained (all layers trainable: irrelevant to inference); ``IntermediateLayerGetter``
    runs the backbone's children in order up to the last requested layer and returns
    those layers' outputs by their new names.
    """
    import types
    from collections import OrderedDict

    import monai.apps.detection.networks.retinanet_network as retinanet_network
    import monai.networks.blocks.backbone_fpn_utils as backbone_fpn_utils
    from torch import nn

    try:
        import torchvision  # noqa: F401
        return
    except ImportError:
        pass

    class IntermediateLayerGetter(nn.ModuleDict):
        def __init__(self, model: nn.Module, return_layers: dict[str, str]) -> None:
            pending, layers = dict(return_layers), OrderedDict()
            for name, module in model.named_children():
                layers[name] = module
                pending.pop(name, None)
                if not pending:
                    break
            super().__init__(layers)
            self.return_layers = dict(return_layers)

        def forward(self, x: Any) -> dict[str, Any]:
            out = OrderedDict()
            for name, module in self.items():
                x = module(x)
                if name in self.return_layers:
                    out[self.return_layers[name]] = x
            return out

    def validate_trainable_layers(pretrained: bool, layers: int | None, max_value: int, default_value: int) -> int:
        return max_value if not pretrained else (default_value if layers is None else layers)

    backbone_fpn_utils.torchvision_models = types.SimpleNamespace(
        _utils=types.SimpleNamespace(IntermediateLayerGetter=IntermediateLayerGetter))
    retinanet_network._validate_trainable_layers = validate_trainable_layers


def build_monai_detector() -> Any:
    """The bundle's detector (configs/inference.json), random weights, in eval mode."""
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.networks.retinanet_network import RetinaNet, resnet_fpn_feature_extractor
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
    from monai.networks.nets import resnet

    _stand_in_for_torchvision()
    backbone = resnet.resnet50(spatial_dims=3, n_input_channels=1, conv1_t_stride=[2, 2, 1], conv1_t_size=[7, 7, 7])
    feature_extractor = resnet_fpn_feature_extractor(backbone, 3, False, [1, 2], None)
    network = RetinaNet(spatial_dims=3, num_classes=1, num_anchors=3, feature_extractor=feature_extractor,
                        size_divisible=list(MONAI_SIZE_DIVISIBLE))
    anchors = AnchorGeneratorWithAnchorShape(feature_map_scales=[1, 2, 4],
                                             base_anchor_shapes=[[6, 8, 4], [8, 6, 5], [10, 10, 6]])
    detector = RetinaNetDetector(network=network, anchor_generator=anchors, debug=False)
    detector.set_target_keys(box_key="box", label_key="label")
    detector.set_box_selector_parameters(score_thresh=0.02, topk_candidates_per_level=1000, nms_thresh=0.22,
                                         detections_per_img=300)
    detector.set_sliding_window_inferer(roi_size=list(MONAI_ROI), overlap=MONAI_OVERLAP, sw_batch_size=1,
                                        mode="constant", device="cpu")
    detector.eval()
    return detector


def monai_preprocess(volume: Any) -> Any:
    """The bundle's preprocessing on our volume: RAS, 0.703125 x 0.703125 x 1.25 mm, [0, 1].

    ``volume`` is indexed [slice, row, column] with an LPS affine; MONAI (like ITK's
    reader with ``affine_lps_to_ras``) wants channel-first [x, y, z] with a RAS affine.
    """
    import numpy as np
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Compose, Orientation, ScaleIntensityRange, Spacing

    array = np.ascontiguousarray(np.transpose(volume.array, (2, 1, 0)))[None]  # [1, col, row, slice]
    affine = np.array(volume.affine, dtype=np.float64)[:, [2, 1, 0, 3]]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS -> RAS
    image = MetaTensor(torch.from_numpy(array.astype(np.float32)), affine=torch.from_numpy(affine))
    transforms = Compose([
        Orientation(axcodes="RAS"),
        Spacing(pixdim=MONAI_PIXDIM),
        ScaleIntensityRange(a_min=-1024.0, a_max=300.0, b_min=0.0, b_max=1.0, clip=True),
    ])
    return transforms(image)


def sliding_windows(shape_xyz: tuple[int, ...]) -> int:
    """Windows MONAI's sliding-window inferer runs over an image of this size."""
    count = 1
    for size, roi, div in zip(shape_xyz, MONAI_ROI, MONAI_SIZE_DIVISIBLE):
        size = math.ceil(size / div) * div  # RetinaNetDetector pads to size_divisible first
        interval = int(roi * (1 - MONAI_OVERLAP))
        count *= 1 if size <= roi else math.ceil((size - roi) / interval) + 1
    return count


def _time_each_window(network: Any, progress: Path) -> None:
    """Append the seconds of each network call (one sliding window) to ``progress``."""
    forward = network.forward

    def timed(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        out = forward(*a, **k)
        seconds = time.perf_counter() - t0
        with open(progress, "a") as fh:
            fh.write(f"{seconds:.3f}\n")
        print(f"MONAI: window done in {seconds:.1f} s", file=sys.stderr, flush=True)
        return out

    network.forward = timed


def run_monai(args: argparse.Namespace, quick: bool) -> dict[str, Any]:
    import numpy as np
    import torch

    t0 = time.perf_counter()
    detector = build_monai_detector()
    build_s = time.perf_counter() - t0
    parameters = sum(p.numel() for p in detector.network.parameters())
    volume, load_s = _load(args.series)
    t1 = time.perf_counter()
    image = monai_preprocess(volume)
    preprocess_s = time.perf_counter() - t1
    del volume
    shape = tuple(int(v) for v in image.shape[1:])
    windows = sliding_windows(shape)
    result: dict[str, Any] = {"build_s": build_s, "parameters": parameters, "load_s": load_s,
                              "preprocess_s": preprocess_s, "resampled_xyz": list(shape), "windows": windows}
    tensor = image.as_tensor()
    _time_each_window(detector.network, args.result.with_suffix(".progress"))
    with torch.no_grad():
        if quick:
            start = [max(0, (s - p) // 2) for s, p in zip(shape, QUICK_PATCH)]
            patch = tensor[:, start[0]:start[0] + QUICK_PATCH[0], start[1]:start[1] + QUICK_PATCH[1],
                           start[2]:start[2] + QUICK_PATCH[2]].contiguous()
            t2 = time.perf_counter()
            out = detector([patch], use_inferer=False)
            patch_s = time.perf_counter() - t2
            scale = float(np.prod(MONAI_ROI)) / float(np.prod(patch.shape[1:]))
            detect_s = patch_s * scale * windows
            result.update(extrapolated=True, patch_s=patch_s, patch_xyz=list(patch.shape[1:]))
        else:
            # the bundle's RetinaNetInferer slides only over images larger than one window
            use_inferer = tensor[0].numel() >= int(np.prod(MONAI_ROI))
            result["windows"] = windows if use_inferer else 1
            t2 = time.perf_counter()
            out = detector([tensor], use_inferer=use_inferer)
            detect_s = time.perf_counter() - t2
    result.update(detect_s=detect_s, total_s=load_s + preprocess_s + detect_s, boxes=int(out[0]["box"].shape[0]),
                  window_s=_progress(args.result))
    return result


if __name__ == "__main__":
    main()
