"""Object identities: valid by construction, fresh UIDs per call."""

from __future__ import annotations

import pytest

from pacs_node.report.identity import ObjectIdentity, SeriesIdentity


def test_fresh_identities_have_new_valid_uids_and_the_numbers_asked_for() -> None:
    first, second = ObjectIdentity.fresh(9901), ObjectIdentity.fresh(9901)
    assert first.series.series_number == 9901 and first.instance_number == 1
    assert first.sop_instance_uid != second.sop_instance_uid
    assert first.series.series_instance_uid != second.series.series_instance_uid
    series = SeriesIdentity.fresh(902)
    image = series.instance(instance_number=3)
    assert image.attributes() == {"series_instance_uid": series.series_instance_uid, "series_number": 902,
                                  "sop_instance_uid": image.sop_instance_uid, "instance_number": 3}


@pytest.mark.parametrize(("build", "message"), [
    (lambda: SeriesIdentity("1.2.3.abc", 901), "series_instance_uid is not a valid UID"),
    (lambda: SeriesIdentity("1.2.3", 0), "series_number must be 1 or more"),
    (lambda: SeriesIdentity("1.2.3", 901).instance("1.2..4"), "sop_instance_uid is not a valid UID"),
    (lambda: SeriesIdentity("1.2.3", 901).instance("1.2.4", 0), "instance_number must be 1 or more"),
])
def test_a_bad_uid_or_number_is_refused_with_its_name(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()
