"""The spool: validated UIDs only, files visible only when complete, leftovers cleaned."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacs_node.receive.spool import InvalidUID, Spool, SpoolFull, validate_uid


@pytest.mark.parametrize("uid", ["../../etc/passwd", "1.2.3/4", "", "1.2." + "3" * 70, "1..2", "1.2.3a", " "])
def test_path_like_or_invalid_uids_are_refused(uid: str) -> None:
    with pytest.raises(InvalidUID):
        validate_uid(uid, "StudyInstanceUID")


def test_padding_is_stripped() -> None:
    assert validate_uid("1.2.840.10008\x00", "x") == "1.2.840.10008"


def test_file_is_visible_only_after_commit(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    partial = spool.begin()
    partial.write(b"x" * 1000)
    relative = spool.relative_path("1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert not spool.path_of(relative).exists()
    stored = spool.commit(partial, relative)
    assert stored.size_bytes == 1000
    assert spool.path_of(relative).read_bytes() == b"x" * 1000
    assert relative == "studies/1.2.3/1.2.3.4/1.2.3.4.5.dcm"
    spool.close()
    assert list(spool.incoming.iterdir()) == []


def test_leftover_partial_files_are_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.begin().write(b"half")
    spool.close()
    assert Spool(tmp_path).clean_incoming() >= 1
    assert list((tmp_path / "incoming").rglob("*.part")) == []


def test_below_free_space_minimum_refuses(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_bytes=10**18)
    with pytest.raises(SpoolFull):
        spool.begin()
    spool.close()
