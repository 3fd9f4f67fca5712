"""A re-report's findings keep the Tracking UIDs of the same nodules in our earlier report."""

from __future__ import annotations

from pydicom import Dataset
from pydicom.uid import generate_uid

from pacs_node.analyze.revision import SAME_NODULE_MM, EarlierReport
from pacs_node.imaging.findings import Finding, NoduleType


def _finding(x: float, y: float = 0.0) -> Finding:
    return Finding((x, y, -100.0), 8.0, 7.0, 250.0, NoduleType.SOLID, 0.9)


def test_each_nodule_found_again_keeps_its_tracking_uid_one_to_one() -> None:
    earlier = EarlierReport(Dataset(), (((0.0, 0.0, -100.0), "1.2.1"), ((30.0, 0.0, -100.0), "1.2.2"),
                                        ((60.0, 0.0, -100.0), "1.2.3")))
    now = [_finding(30.4), _finding(0.3), _finding(0.9), _finding(90.0)]
    kept, count = earlier.keep_tracking(now)
    assert [f.tracking_uid for f in kept[:2]] == ["1.2.2", "1.2.1"]
    assert kept[2].tracking_uid == now[2].tracking_uid, "the nearer finding took 1.2.1; no UID is given twice"
    assert kept[3].tracking_uid == now[3].tracking_uid, "a nodule not in the earlier report keeps its own"
    assert count == 2 and [f.center_lps_mm for f in kept] == [f.center_lps_mm for f in now]


def test_a_nodule_further_than_the_tolerance_is_another_nodule() -> None:
    uid = generate_uid()
    earlier = EarlierReport(Dataset(), (((0.0, 0.0, -100.0), uid),))
    kept, count = earlier.keep_tracking([_finding(SAME_NODULE_MM + 0.1)])
    assert count == 0 and kept[0].tracking_uid != uid
