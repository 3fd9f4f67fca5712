"""Helpers of the reliability suite: reading a node's database, DCMTK logs and processes."""

from __future__ import annotations

import re
import signal
import struct
import subprocess
import sys
from pathlib import Path

from sqlalchemy import Engine, create_engine, func, select

from pacs_node.db.models import Delivery, Instance, Job, ReportObject, Study
from tests.conftest import DCMTK_ENV, STORESCU, RunningNode, wait_until


class NodeDb:
    """Read-only looks at a node's database through one engine of the test's own."""

    def __init__(self, url: str) -> None:
        self.engine: Engine = create_engine(url)

    def close(self) -> None:
        self.engine.dispose()

    def count(self, model: type, *where: object) -> int:
        with self.engine.connect() as connection:
            return connection.scalar(select(func.count()).select_from(model).where(*where)) or 0

    def rows(self, statement: object) -> list:
        """The rows of any ``select``."""
        with self.engine.connect() as connection:
            return connection.execute(statement).all()

    def instances(self) -> dict[str, str]:
        """SOP Instance UID → spool-relative path of every instance row."""
        with self.engine.connect() as connection:
            return dict(connection.execute(select(Instance.sop_instance_uid, Instance.path)).all())

    def jobs(self) -> list:
        with self.engine.connect() as connection:
            return connection.execute(
                select(Job.id, Job.study_pk, Job.state, Job.attempts, Job.result, Job.error).order_by(Job.id)
            ).all()

    def deliveries(self) -> list:
        with self.engine.connect() as connection:
            return connection.execute(
                select(Delivery.id, Delivery.job_pk, Delivery.state, Delivery.attempts, Delivery.last_error)
                .order_by(Delivery.id)
            ).all()

    def report_objects(self) -> list:
        with self.engine.connect() as connection:
            return connection.execute(
                select(ReportObject.job_pk, ReportObject.kind, ReportObject.sop_instance_uid, ReportObject.path)
                .order_by(ReportObject.id)
            ).all()

    def studies(self) -> list:
        with self.engine.connect() as connection:
            return connection.execute(select(Study.id, Study.study_uid, Study.state).order_by(Study.id)).all()


def push(port: int, folder: Path, calling_ae: str = "STORESCU", extra: list[str] | None = None,
         log: Path | None = None) -> subprocess.Popen:
    """Start DCMTK's storescu on ``folder`` in the background (the scanner); its ``-v`` log goes to
    ``log`` when given (read it after the exit), else to pipes (read with ``communicate``)."""
    command = [STORESCU, "-v", "-aet", calling_ae, "-aec", "PACS_NODE", *(extra or []), "127.0.0.1", str(port),
               "+sd", str(folder)]
    if log is not None:
        with log.open("w") as sink:
            return subprocess.Popen(command, env=DCMTK_ENV, stdout=sink, stderr=subprocess.STDOUT)
    return subprocess.Popen(command, env=DCMTK_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def acknowledged(storescu_log: str) -> list[str]:
    """Files storescu sent and got a success response for, from its ``-v`` log."""
    done, current = [], None
    for line in storescu_log.splitlines():
        if match := re.match(r"I: Sending file: (.+)$", line):
            current = match.group(1)
        elif "Received Store Response (Success)" in line and current:
            done.append(current)
            current = None
    return done


def dataset_bytes(path: Path | str) -> bytes:
    """A Part 10 file's data set as encoded, after the File Meta Information (which the node rewrites)."""
    data = Path(path).read_bytes()
    if data[128:132] != b"DICM" or data[132:136] != b"\x02\x00\x00\x00":
        raise ValueError(f"{path}: no File Meta Information Group Length")
    (group_length,) = struct.unpack_from("<I", data, 140)
    return data[144 + group_length:]


def children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def kill_node(node: RunningNode) -> None:
    """SIGKILL the node and, as systemd does before a restart, wait until all its processes are gone."""
    receivers = children(node.process.pid)
    node.process.send_signal(signal.SIGKILL)
    node.process.wait(timeout=30)
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in receivers), timeout=30)


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``pacs-node`` with ``args``."""
    return subprocess.run([sys.executable, "-m", "pacs_node", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)
