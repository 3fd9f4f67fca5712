"""Fixtures of the reliability suite: each test records what it tried and what happened.

``scripts/reliability_report.py`` runs this suite with ``PACS_NODE_RELIABILITY_LOG`` set and
turns the records (with each test's pass or fail) into the table of ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import pytest

LOG_VARIABLE = "PACS_NODE_RELIABILITY_LOG"


@dataclass(frozen=True)
class Outcome:
    """One row of the reliability table."""

    area: str  #: e.g. "Crash safety", "Outages", "Load", "Hostile input", "Access", "Housekeeping"
    fault: str  #: the fault or input class, e.g. "PACS stopped for 20 s"
    tried: str  #: what the test did
    cases: int  #: how many cases (instances, inputs, associations...) it covered
    outcome: str  #: what the node did, with figures


Record = Callable[..., None]


@pytest.fixture
def record_outcome(request: pytest.FixtureRequest) -> Iterator[Record]:
    """Call ``record_outcome(area=..., fault=..., tried=..., cases=..., outcome=...)`` once the
    assertions that back the row have passed; rows of a test that fails later are marked so."""
    rows: list[Outcome] = []

    def record(**fields: object) -> None:
        rows.append(Outcome(**fields))  # type: ignore[arg-type]

    yield record
    target = os.environ.get(LOG_VARIABLE)
    if not target or not rows:
        return
    report = getattr(request.node, "rep_call", None)
    passed = bool(report and report.passed)
    with open(target, "a", encoding="utf-8") as log:
        for row in rows:
            log.write(json.dumps({**asdict(row), "test": request.node.nodeid, "passed": passed}) + "\n")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report
