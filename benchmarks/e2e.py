"""End to end: last instance acknowledged -> SR stored in the PACS, minus the quiet period.

DCMTK storescu pushes a synthetic 300-slice 512x512 chest CT into a pacs-node running
the bundled model; Orthanc is the PACS.  Prints the time from storescu's last
acknowledged instance to the SR being stored in Orthanc, less the configured quiet
period, with the job's own step timings.  Target: <= 20 s on 2 cores.

``--followup``: the same for a follow-up CT.  Orthanc holds last year's CT of the same
synthetic patient (``generate_followup``); the node, with ``[priors]`` on, fetches it over
C-MOVE from Orthanc, detects on it, registers, matches and compares; the clock stops when
this year's SR with the comparison is stored in Orthanc.  Target: <= 30 s on 2 cores.

    .venv/bin/python benchmarks/e2e.py [--quiet-period 5] [--seed 4242] [--followup]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pacs_node.ml.phantom import generate_followup, generate_phantom, write_dicom_study, write_followup  # noqa: E402
from tests.orthanc import Orthanc  # noqa: E402

TARGET_S = 20.0
FOLLOWUP_TARGET_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quiet-period", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--model", default="lung-nodule-synthetic-v3")
    parser.add_argument("--followup", action="store_true", help="a follow-up CT whose prior is in the PACS")
    args = parser.parse_args()
    target = FOLLOWUP_TARGET_S if args.followup else TARGET_S
    with tempfile.TemporaryDirectory(prefix="pacs-node-e2e-") as tmp:
        work = Path(tmp)
        port = free_port()
        node_ae = {"AET": "PACS_NODE", "Host": "127.0.0.1", "Port": port, "AllowFind": True, "AllowGet": True,
                   "AllowMove": True, "AllowStore": True, "AllowEcho": True}
        orthanc = Orthanc(work / "orthanc", dicom_port=free_port(), http_port=free_port(), modalities={"node": node_ae})
        orthanc.start()
        priors = ""
        if args.followup:
            fu = generate_followup(args.seed, 2, interval_days=365, shape_zyx=(300, 512, 512),
                                   spacing_zyx_mm=(1.0, 0.7, 0.7), nodule_types=["solid"], courses=["growing", "stable"])
            write_followup(fu, work / "patient")
            phantom = fu.timepoints[1].phantom
            series = work / "patient" / "t1" / "series"
            prior = subprocess.run(["/usr/bin/storescu", "-aec", orthanc.ae_title, "127.0.0.1", str(orthanc.dicom_port),
                                    "+sd", str(work / "patient" / "t0" / "series")],
                                   env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True)
            if prior.returncode != 0:
                raise SystemExit(prior.stderr)
            priors = (f"[priors]\nenabled = true\nmax_wait_s = 120\n[[priors.sources]]\nname = \"orthanc\"\n"
                      f'ae_title = "{orthanc.ae_title}"\nhost = "127.0.0.1"\nport = {orthanc.dicom_port}\n'
                      f'retrieve = "move"\n')
        else:
            phantom = generate_phantom(args.seed, shape_zyx=(300, 512, 512), spacing_zyx_mm=(1.0, 0.7, 0.7))
            series = Path(write_dicom_study(phantom, work / "study").series_dir)
        config = work / "node.toml"
        config.write_text(
            f'[node]\nport = {port}\nname = "e2e"\n'
            f'[storage]\nspool_dir = "{work / "spool"}"\ndatabase_url = "sqlite:///{work / "node.db"}"\nmin_free_mb = 0\n'
            f"[completion]\nquiet_period_s = {args.quiet_period}\nsweep_interval_s = 0.2\n"
            f"[worker]\npoll_interval_s = 0.2\n"
            f'[analysis]\nmodel = "{args.model}"\nmodels_dir = "{REPO / "models"}"\n'
            f'[[destinations]]\nname = "orthanc"\nae_title = "{orthanc.ae_title}"\nhost = "127.0.0.1"\n'
            f"port = {orthanc.dicom_port}\n[sending]\npoll_interval_s = 0.2\n" + priors
        )
        log = (work / "node.log").open("w")
        node = subprocess.Popen([sys.executable, "-m", "pacs_node", "serve", "--config", str(config)],
                                stdout=log, stderr=log, cwd=REPO)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if node.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit((work / "node.log").read_text()[-3000:])
                    time.sleep(0.1)
            push = subprocess.run(["/usr/bin/storescu", "-aec", "PACS_NODE", "127.0.0.1", str(port), "+sd",
                                   str(series)], env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True)
            acknowledged = time.monotonic()
            if push.returncode != 0:
                raise SystemExit(push.stderr)
            while True:
                tags = [orthanc.get(f"/instances/{i}/simplified-tags") for i in orthanc.get("/instances")]
                if any(t.get("Modality") == "SR" and t.get("StudyInstanceUID") == phantom.study_uid for t in tags):
                    stored = time.monotonic()
                    break
                if time.monotonic() - acknowledged > 600 or node.poll() is not None:
                    raise SystemExit("no SR in Orthanc after 600 s:\n" + (work / "node.log").read_text()[-3000:])
                time.sleep(0.1)
        finally:
            node.terminate()
            node.wait()
            orthanc.stop()
        import sqlite3

        result = json.loads(sqlite3.connect(work / "node.db").execute(
            "select result from jobs where state='done' order by id desc").fetchone()[0])
    elapsed = stored - acknowledged - args.quiet_period
    kind = "follow-up " if args.followup else ""
    print(f"300-slice 512x512 {kind}study, {len(phantom.nodules)} planted nodule(s); {os.cpu_count()} CPUs")
    print(f"last instance acknowledged -> SR stored in Orthanc: {stored - acknowledged:.1f} s")
    print(f"minus the quiet period ({args.quiet_period:.0f} s): {elapsed:.1f} s   (target <= {target:.0f} s, "
          f"ratio {elapsed / target:.2f})")
    print(f"job steps: {result.get('timings_s')}, findings {result.get('findings')}, Lung-RADS {result.get('lung_rads')}")
    if args.followup:
        comparison = (result.get("series") or [{}])[0].get("comparison", {})
        print(f"prior: {result.get('prior', {}).get('status')} ({result.get('prior', {}).get('instances')} images); "
              f"comparison: {json.dumps({k: v for k, v in comparison.items() if k != 'registration'})}")


if __name__ == "__main__":
    main()
