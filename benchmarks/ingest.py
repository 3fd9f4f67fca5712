"""Ingest throughput: pacs-node against DCMTK's storescp, in alternating runs.

DCMTK's storescu pushes a 300-slice 512x512 CT series (about 160 MB) into each
receiver, over one association and over 4 parallel associations (4 copies of the
series with their own UIDs, as 4 scanners would send them).  Our node writes every
instance durably (fsync, atomic rename, committed row) before answering; storescp
writes without fsync.  Both DCMTK tools run with TCP_NODELAY=1.

    .venv/bin/python benchmarks/ingest.py [--rounds 3] [--database-url URL]

Prints instances/s for both receivers and the ratio ours / storescp.

    .venv/bin/python benchmarks/ingest.py --console [--rounds 3]

measures the cost of the IT console instead: our node with ``[console]`` off, and with it
on while a scraper fetches ``/metrics`` every second (as Prometheus would), in
alternating runs; prints the ratio console on / off (target: at least 0.95).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pacs_node.ml.ct_series import SeriesIdentity, write_ct_series  # noqa: E402

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
SLICES, SIZE = 300, 512
#: storescp as the reference measured it (TCP_NODELAY, default 16 KiB PDU), and with
#: a 128 KiB maximum PDU; pacs-node advertises 256 KiB (storescu sends at most 128 KiB).
RECEIVERS = ("storescp", "storescp-128k", "pacs-node")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"receiver exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("receiver did not start")


def make_series(folder: Path, copies: int) -> list[Path]:
    """One CT series, plus copies of it with new study/series/instance UIDs."""
    first = folder / "series0"
    if not first.exists():
        rng = np.random.default_rng(0)
        volume = rng.normal(-600, 300, size=(SLICES, SIZE, SIZE)).astype(np.float32)
        write_ct_series(volume, (1.0, 0.7, 0.7), (-179.0, -179.0, -150.0), first, SeriesIdentity())
    folders = [first]
    for index in range(1, copies):
        copy = folder / f"series{index}"
        folders.append(copy)
        if copy.exists():
            continue
        copy.mkdir()
        study, series = generate_uid(), generate_uid()
        for path in sorted(first.glob("*.dcm")):
            ds = dcmread(path)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.save_as(copy / path.name)
    return folders


def push(port: int, called_ae: str, folders: list[Path]) -> float:
    """Push each folder on its own association at once; returns the wall time."""
    started = time.perf_counter()
    pushes = [
        subprocess.Popen(
            ["/usr/bin/storescu", "-aec", called_ae, "127.0.0.1", str(port), "+sd", str(folder)],
            env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        for folder in folders
    ]
    for process in pushes:
        _, stderr = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"storescu failed: {stderr[-500:]}")
    return time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by process ``pid`` and its child processes."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        pids += [int(child) for child in children.read_text().split()]
    total = 0.0
    for one in pids:
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def timed_push(
    process: subprocess.Popen, port: int, called_ae: str, folders: list[Path], count_stored: Callable[[], int],
    cpu: list[float] | None = None,
) -> float:
    """Push into a started receiver, stop it, check that it kept everything; returns seconds.

    With ``cpu``, appends the CPU seconds the receiver (and its child processes) used during the push.
    """
    try:
        wait_listening(port, process)
        before = cpu_seconds(process.pid) if cpu is not None else 0.0
        seconds = push(port, called_ae, folders)
        if cpu is not None:
            cpu.append(cpu_seconds(process.pid) - before)
    finally:
        process.terminate()
        process.wait()
    stored, expected = count_stored(), sum(len(list(f.glob("*.dcm"))) for f in folders)
    if stored != expected:
        raise RuntimeError(f"{called_ae} stored {stored} of {expected}")
    return seconds


def run_storescp(work: Path, folders: list[Path], max_pdu: int | None) -> float:
    out = work / "storescp-out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    port = free_port()
    pdu = ["-pdu", str(max_pdu)] if max_pdu else []
    process = subprocess.Popen(
        ["/usr/bin/storescp", "--fork", *pdu, "-od", str(out), str(port)],
        env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return timed_push(process, port, "STORESCP", folders, lambda: sum(1 for _ in out.iterdir()))


class Scraper:
    """Fetches ``/metrics`` every second in a thread, as Prometheus would."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    response.read()
                self.scrapes += 1
            except OSError:
                pass

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def run_ours(work: Path, folders: list[Path], database_url: str | None, processes: int,
             console_port: int | None = None, cpu: list[float] | None = None) -> float:
    """Push into our node; with ``console_port``, the console is on and scraped every second.
    With ``cpu``, appends the node's CPU seconds during the push (see :func:`timed_push`)."""
    node_dir = work / "node"
    shutil.rmtree(node_dir, ignore_errors=True)
    node_dir.mkdir()
    port = free_port()
    url = database_url or f"sqlite:///{node_dir / 'node.db'}"
    config = node_dir / "node.toml"
    config.write_text(
        f'[node]\nae_title = "PACS_NODE"\nport = {port}\nname = "bench"\nreceive_processes = {processes}\n'
        f'[storage]\nspool_dir = "{node_dir / "spool"}"\ndatabase_url = "{url}"\nmin_free_mb = 0\n'
        "[completion]\nquiet_period_s = 600\n[worker]\nenabled = false\n[analysis]\nenabled = false\n[logging]\nlevel = \"INFO\"\n"
        + (f"[console]\nenabled = true\nport = {console_port}\n" if console_port else "")
    )
    log = node_dir / "node.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "pacs_node", "serve", "--config", str(config)], stdout=output, stderr=output
        )
    # measure a node that has finished starting, all its receiver processes included
    deadline = time.monotonic() + 60
    while log.read_text().count("event=receiver_started") < processes - 1:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"node did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)
    stored = lambda: sum(1 for _ in (node_dir / "spool" / "studies").rglob("*.dcm"))  # noqa: E731
    if console_port is None:
        return timed_push(process, port, "PACS_NODE", folders, stored, cpu)
    wait_listening(console_port, process)
    with Scraper(console_port) as scraper:
        seconds = timed_push(process, port, "PACS_NODE", folders, stored, cpu)
    if scraper.scrapes < int(seconds) - 1:
        raise RuntimeError(f"only {scraper.scrapes} scrapes in {seconds:.1f} s")
    return seconds


def compare_console(work: Path, folders: list[Path], args: argparse.Namespace) -> None:
    """Our node with the console off, and on with /metrics scraped every second, alternating.

    Wall-clock rates on a shared machine vary from run to run; the node's CPU time per
    instance (its own and its receiver processes') is the steadier measure of the cost.
    """
    modes = ("console off", "console on + scrape")
    results: dict[tuple[str, str], list[float]] = {}
    cpu_ms: dict[tuple[str, str], list[float]] = {}
    for round_index in range(args.rounds):
        for label, chosen in (("1 association", folders[:1]), ("4 associations", folders)):
            for mode in (modes if round_index % 2 == 0 else modes[::-1]):
                os.sync()
                console_port = free_port() if mode != "console off" else None
                cpu: list[float] = []
                seconds = run_ours(work, chosen, args.database_url, args.receive_processes, console_port, cpu)
                count = SLICES * len(chosen)
                rate = count / seconds
                results.setdefault((label, mode), []).append(rate)
                cpu_ms.setdefault((label, mode), []).append(cpu[0] * 1000 / count)
                print(f"round {round_index + 1}  {label:<15} {mode:<20} {rate:8.0f} instances/s"
                      f"  {cpu[0] * 1000 / count:6.2f} CPU ms/instance", flush=True)
    print("\nmedians              console off   console on + scrape   ratio on / off (target >= 0.95)")
    for label in ("1 association", "4 associations"):
        off, on = (statistics.median(results[(label, mode)]) for mode in modes)
        print(f"{label:<15} {off:>10.0f} inst/s {on:>14.0f} inst/s {on / off:>18.3f}")
        off, on = (statistics.median(cpu_ms[(label, mode)]) for mode in modes)
        print(f"{'':<15} {off:>7.2f} CPU ms {on:>14.2f} CPU ms {off / on:>18.3f}  (CPU per instance, off / on)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per configuration")
    parser.add_argument("--database-url", help="database for our node (default: a fresh SQLite file per run)")
    parser.add_argument("--data", type=Path, help="where to cache the generated series")
    parser.add_argument("--receive-processes", type=int, default=1, help="node.receive_processes for our node")
    parser.add_argument("--console", action="store_true",
                        help="compare our node with the console off and on (scraped every second) instead")
    args = parser.parse_args()
    data = args.data or Path(tempfile.gettempdir()) / "pacs-node-bench-ingest"
    data.mkdir(parents=True, exist_ok=True)
    print(f"generating/reusing {SLICES}-slice {SIZE}x{SIZE} CT series in {data} ...", flush=True)
    folders = make_series(data, copies=4)
    megabytes = sum(p.stat().st_size for p in folders[0].glob("*.dcm")) / 1e6
    print(f"series: {SLICES} instances, {megabytes:.0f} MB; {os.cpu_count()} CPUs\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="pacs-node-bench-") as tmp:
        work = Path(tmp)
        if args.console:
            compare_console(work, folders, args)
            return
        results: dict[tuple[str, str], list[float]] = {}
        for round_index in range(args.rounds):
            for label, chosen in (("1 association", folders[:1]), ("4 associations", folders)):
                count = SLICES * len(chosen)
                for receiver in RECEIVERS:
                    os.sync()  # neither receiver waits behind the other's dirty pages
                    if receiver == "pacs-node":
                        seconds = run_ours(work, chosen, args.database_url, args.receive_processes)
                    else:
                        seconds = run_storescp(work, chosen, 131072 if "128k" in receiver else None)
                    rate = count / seconds
                    results.setdefault((label, receiver), []).append(rate)
                    print(f"round {round_index + 1}  {label:<15} {receiver:<14} {rate:8.0f} instances/s", flush=True)
    print("\nmedian instances/s   storescp  storescp-128k  pacs-node   ratio vs storescp   vs storescp-128k")
    for label in ("1 association", "4 associations"):
        median = {receiver: statistics.median(results[(label, receiver)]) for receiver in RECEIVERS}
        ours = median["pacs-node"]
        print(
            f"{label:<18} {median['storescp']:>10.0f} {median['storescp-128k']:>14.0f} {ours:>10.0f}"
            f"   {ours / median['storescp']:>17.2f}   {ours / median['storescp-128k']:>16.2f}"
        )


if __name__ == "__main__":
    main()
