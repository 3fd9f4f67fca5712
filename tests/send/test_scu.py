"""C-STORE status classification (PS3.4 B.2.3)."""

from __future__ import annotations

import pytest

from pacs_node.db.models import FailureKind
from pacs_node.send.scu import classify_status


@pytest.mark.parametrize(
    "status,expected",
    [
        (0x0000, None), (0xB000, None), (0xB007, None),
        (0xA700, FailureKind.TRANSIENT), (0xA7FF, FailureKind.TRANSIENT), (0x0110, FailureKind.TRANSIENT),
        (0xA900, FailureKind.PERMANENT), (0xC000, FailureKind.PERMANENT), (0xC123, FailureKind.PERMANENT),
        (0x0122, FailureKind.PERMANENT),
    ],
)
def test_statuses_are_classed_by_cause(status: int, expected: FailureKind | None) -> None:
    assert classify_status(status) == expected
