"""Load: eight scanners push at once, within and beyond the association limit."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select

from pacs_node.db.models import Instance, JobState, Series, Study, StudyState
from tests.conftest import make_series, wait_until
from tests.reliability.support import NodeDb, acknowledged, push

pytestmark = pytest.mark.integration

SCANNERS = 8
PER_STUDY = 300
SIZE = 64


@pytest.fixture(scope="session")
def scanner_studies(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, str]]:
    """One study per scanner (300 CT instances of 64 x 64), made once per session: (folder, study UID)."""
    root = tmp_path_factory.mktemp("load-studies")
    studies = []
    for index in range(SCANNERS):
        files = make_series(root / f"scanner-{index}", slices=PER_STUDY, size=SIZE, seed=index)
        studies.append((files[0].parent, str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)))
    return studies


@dataclass
class Push:
    """One scanner's storescu run."""

    study_uid: str
    log: Path
    started: float
    finished: float = 0.0
    returncode: int | None = None

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    def output(self) -> str:
        return self.log.read_text()


def _push_all(port: int, studies: list[tuple[Path, str]], logs: Path, timeout: float = 240) -> tuple[list[Push], float]:
    """Start one storescu per study at once and wait for all; returns the runs and the wall time."""
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    running = []
    for index, (folder, study_uid) in enumerate(studies):
        log = logs / f"storescu-{index}.log"
        running.append((push(port, folder, calling_ae=f"CT_{index}", log=log),
                        Push(study_uid, log, time.monotonic())))
    deadline = started + timeout
    while any(run.returncode is None for _, run in running):
        assert time.monotonic() < deadline, "a storescu hung"
        for process, run in running:
            if run.returncode is None and process.poll() is not None:
                run.returncode, run.finished = process.returncode, time.monotonic()
        time.sleep(0.02)
    return [run for _, run in running], time.monotonic() - started


def _instances_by_study(db: NodeDb) -> dict[str, int]:
    with db.engine.connect() as connection:
        return dict(connection.execute(
            select(Study.study_uid, func.count(Instance.id))
            .join(Series, Series.study_pk == Study.id).join(Instance, Instance.series_pk == Series.id)
            .group_by(Study.study_uid)
        ).all())


def _processed(db: NodeDb, expected: int) -> dict[int, int]:
    """Instances per done job, once ``expected`` studies are complete with a done job each."""
    studies = db.studies()
    done = {j.study_pk: json.loads(j.result)["instances"] for j in db.jobs() if j.state == JobState.DONE}
    if len(studies) != expected or any(s.state != StudyState.COMPLETE for s in studies) or len(done) != expected:
        return {}
    return done


def test_eight_scanners_at_once_all_land(node_factory, scanner_studies, tmp_path: Path, record_outcome) -> None:
    node = node_factory(node={"max_associations": 16}, completion={"quiet_period_s": 2, "sweep_interval_s": 0.3})
    db = NodeDb(node.database_url)
    runs, seconds = _push_all(node.port, scanner_studies, tmp_path / "logs")
    for run in runs:
        assert run.returncode == 0, run.output()[-2000:]
        assert len(acknowledged(run.output())) == PER_STUDY
    total = SCANNERS * PER_STUDY
    assert db.count(Instance) == total
    assert len(list((node.spool / "studies").rglob("*.dcm"))) == total
    assert _instances_by_study(db) == {uid: PER_STUDY for _, uid in scanner_studies}
    done = wait_until(lambda: _processed(db, SCANNERS), timeout=60, interval=0.3)
    assert sorted(done.values()) == [PER_STUDY] * SCANNERS and len(db.jobs()) == SCANNERS
    rate = total / seconds
    db.close()
    record_outcome(
        area="Load", fault=f"{SCANNERS} scanners at once",
        tried=f"{SCANNERS} × storescu, {PER_STUDY} CT instances each ({SIZE}×{SIZE}), max_associations 16, SQLite",
        cases=total,
        outcome=f"{total} stored (rows and files), {SCANNERS} studies complete, {SCANNERS} jobs; "
                f"{rate:.0f} instances/s ({seconds:.1f} s for all pushes)",
    )


def test_pushes_beyond_the_association_limit_are_rejected_at_once(node_factory, scanner_studies, tmp_path: Path,
                                                                   record_outcome) -> None:
    limit = 4
    node = node_factory(node={"max_associations": limit}, completion={"quiet_period_s": 2, "sweep_interval_s": 0.3})
    db = NodeDb(node.database_url)
    runs, _ = _push_all(node.port, scanner_studies, tmp_path / "logs")
    rejected = [run for run in runs if "Association Rejected" in run.output()]
    accepted = [run for run in runs if run not in rejected]
    # the first four hold their associations while the others ask: those are turned away
    assert len(accepted) >= limit and len(rejected) >= 1 and len(accepted) + len(rejected) == SCANNERS
    for run in rejected:
        text = run.output()
        assert run.returncode != 0
        assert "Result: Rejected Transient" in text and "Reason: Local Limit Exceeded" in text, text[-1000:]
        assert acknowledged(text) == []
        assert run.seconds < 10, f"rejection took {run.seconds:.1f} s"
    for run in accepted:
        assert run.returncode == 0, run.output()[-2000:]
        assert len(acknowledged(run.output())) == PER_STUDY
    assert _instances_by_study(db) == {run.study_uid: PER_STUDY for run in accepted}, "whole pushes, or nothing"
    done = wait_until(lambda: _processed(db, len(accepted)), timeout=60, interval=0.3)
    assert sorted(done.values()) == [PER_STUDY] * len(accepted)
    assert node.output().count("reason=LOCAL_LIMIT_EXCEEDED") == len(rejected)
    slowest = max(run.seconds for run in rejected)
    db.close()
    record_outcome(
        area="Load", fault=f"{SCANNERS} scanners, association limit {limit}",
        tried=f"{SCANNERS} × storescu at once, {PER_STUDY} instances each, max_associations {limit}",
        cases=SCANNERS,
        outcome=f"{len(rejected)} rejected with A-ASSOCIATE-RJ (transient, local limit exceeded) within "
                f"{slowest:.2f} s, none hung; {len(accepted)} accepted pushes landed whole "
                f"({len(accepted) * PER_STUDY} instances) and were processed",
    )
