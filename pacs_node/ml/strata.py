"""Results by what kind of study a scan is: does the operating point hold across styles?

Synthetic studies written by :mod:`pacs_node.ml.phantom.output` carry their truth
(``truth/<seriesuid>.json`` in the LUNA16 layout, ``<study>/truth.json`` beside a
DICOM series) with the generator's record of the study (``acquisition``: style,
wide families, kernel, slice thickness...).  :func:`by_stratum` groups the
per-nodule outcomes and the false positives at the operating point by one of those
attributes, so a score threshold calibrated on a mix of studies can be checked on
each kind alone.  Scans without a truth record fall in the stratum ``"unknown"``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pacs_node.ml.stages import FalsePositive, NoduleTrace

UNKNOWN = "unknown"


def scan_attributes(data_dir: Path, fmt: str) -> dict[str, dict[str, Any]]:
    """The generator's ``acquisition`` record of every scan with a truth file, by series UID.

    Unreadable or foreign truth files are skipped (the evaluation itself checks the
    files it needs).
    """
    paths = sorted((Path(data_dir) / "truth").glob("*.json")) if fmt == "luna16" \
        else sorted(Path(data_dir).glob("study_*/truth.json"))
    out: dict[str, dict[str, Any]] = {}
    for path in paths:
        try:
            truth = json.loads(path.read_text())
            out[str(truth["series_uid"])] = dict(truth.get("acquisition") or {})
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def by_stratum(key: str, scan_ids: Iterable[str], attributes: Mapping[str, Mapping[str, Any]],
               traces: Iterable[NoduleTrace], false_positives: Iterable[FalsePositive]) -> dict[str, dict[str, Any]]:
    """Sensitivity and false positives per scan at the operating point, per value of ``key``.

    Returns
    -------
    dict
        ``{value: {"scans", "nodules", "found", "sensitivity", "false_positives",
        "false_positives_per_scan"}}``; ``sensitivity`` is ``None`` without nodules.
    """
    stratum = {uid: str(attributes.get(uid, {}).get(key, UNKNOWN)) for uid in scan_ids}
    rows: dict[str, dict[str, Any]] = {}
    for value in sorted(set(stratum.values())):
        rows[value] = {"scans": sum(v == value for v in stratum.values()), "nodules": 0, "found": 0,
                       "false_positives": 0}
    for t in traces:
        if t.seriesuid in stratum:
            row = rows[stratum[t.seriesuid]]
            row["nodules"] += 1
            row["found"] += int(t.found)
    for f in false_positives:
        if f.seriesuid in stratum:
            rows[stratum[f.seriesuid]]["false_positives"] += 1
    for row in rows.values():
        row["sensitivity"] = round(row["found"] / row["nodules"], 4) if row["nodules"] else None
        row["false_positives_per_scan"] = round(row["false_positives"] / row["scans"], 3)
    return rows
