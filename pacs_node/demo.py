"""``pacs-node demo``: a scanner and a PACS around a running node, in one command.

It generates a synthetic chest CT with known nodules, pushes it to the node with
C-STORE, listens as the PACS the node reports to (the ``local-demo`` destination of
``config/pacs-node.toml``), and prints the findings beside the truth when the SR arrives.
"""

from __future__ import annotations

import queue
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt

from pacs_node.config import Destination
from pacs_node.ml.phantom import generate_phantom, write_dicom_study
from pacs_node.report.sr import read_findings, read_study_summary
from pacs_node.send.scu import send_files

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


@dataclass(frozen=True)
class DemoResult:
    """What the demo saw: the report, the key images, and the truth it planted."""

    summary: dict
    findings: list[dict]
    key_images: int
    truth: list[dict]
    seconds_to_report: float


class _ReceivingPacs:
    """A minimal storage SCP that hands received data sets to a queue."""

    def __init__(self, ae_title: str, port: int) -> None:
        self.received: queue.Queue[Dataset] = queue.Queue()
        ae = AE(ae_title=ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        self._server = ae.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )

    def _on_store(self, event: evt.Event) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        self.received.put(dataset)
        return 0x0000

    def stop(self) -> None:
        self._server.shutdown()


def run_demo(
    node: Destination,
    pacs_ae_title: str,
    pacs_port: int,
    *,
    seed: int = 2026,
    timeout_s: float = 300.0,
    say: Callable[[str], None] = print,
) -> DemoResult:
    """Push one synthetic study to ``node`` and wait for its report on ``pacs_port``."""
    pacs = _ReceivingPacs(pacs_ae_title, pacs_port)
    try:
        with tempfile.TemporaryDirectory(prefix="pacs-node-demo-") as folder:
            say(f"generating a synthetic chest CT (seed {seed}) ...")
            phantom = generate_phantom(seed)
            study = write_dicom_study(phantom, Path(folder) / "study")
            paths = sorted(Path(study.series_dir).glob("*.dcm"))
            say(f"  {len(paths)} slices, {len(phantom.nodules)} planted nodule(s)")
            say(f"pushing it to {node.ae_title}@{node.host}:{node.port} with C-STORE ...")
            outcome = send_files(node, paths, "DEMO_SCANNER", timeout_s=30)
            if outcome.failure is not None:
                raise RuntimeError(f"the node did not take the study: {outcome.reason}")
            pushed = time.monotonic()
            say(f"  {outcome.sent} instances acknowledged; waiting for the report "
                f"(quiet period, analysis, sending) on port {pacs_port} ...")
            return _wait_for_report(pacs, phantom, pushed, timeout_s)
    finally:
        pacs.stop()


def _wait_for_report(pacs: _ReceivingPacs, phantom, pushed: float, timeout_s: float) -> DemoResult:  # noqa: ANN001
    deadline = pushed + timeout_s
    sr, key_images = None, 0
    while time.monotonic() < deadline:
        try:
            dataset = pacs.received.get(timeout=1.0)
        except queue.Empty:
            if sr is not None:
                break  # key images come right after the SR on the same association
            continue
        if dataset.StudyInstanceUID != phantom.study_uid:
            continue
        if dataset.SOPClassUID == COMPREHENSIVE_3D_SR:
            sr, arrived = dataset, time.monotonic()
        else:
            key_images += 1
    if sr is None:
        raise TimeoutError(f"no report within {timeout_s:.0f} s: is `make run` running with the local-demo destination?")
    truth = [
        {"center_lps_mm": tuple(round(v, 1) for v in n.centre_xyz_mm), "diameter_mm": round(n.diameter_mm, 1),
         "type": n.type}
        for n in phantom.nodules
    ]
    return DemoResult(read_study_summary(sr), read_findings(sr), key_images, truth, arrived - pushed)


def format_result(result: DemoResult) -> str:
    """The demo's printout: findings, Lung-RADS, and how each planted nodule fared."""
    lines = [f"report arrived {result.seconds_to_report:.0f} s after the last image "
             f"(with {result.key_images} key image(s))",
             f"study Lung-RADS (AI, baseline table): {result.summary.get('lung_rads')}", ""]
    if not result.findings:
        lines.append("findings: none")
    for finding in result.findings:
        x, y, z = finding["center_lps_mm"]
        lines.append(
            f"  {finding['name']}: {finding['diameter_mm']:.1f} mm {finding['nodule_type']}, "
            f"Lung-RADS {finding['lung_rads']}, score {finding['score']:.2f}, at ({x:.0f}, {y:.0f}, {z:.0f}) mm LPS"
        )
    lines += ["", "planted (truth):"]
    for nodule in result.truth:
        found = any(
            np.linalg.norm(np.subtract(f["center_lps_mm"], nodule["center_lps_mm"])) <= nodule["diameter_mm"] / 2
            for f in result.findings
        )
        x, y, z = nodule["center_lps_mm"]
        lines.append(f"  {nodule['diameter_mm']:.1f} mm {nodule['type']} at ({x:.0f}, {y:.0f}, {z:.0f}): "
                     f"{'found' if found else 'missed'}")
    if not result.truth:
        lines.append("  none")
    lines += ["", "NOT FOR DIAGNOSTIC USE: synthetic data, model trained on synthetic phantoms only."]
    return "\n".join(lines)
