"""STOW-RS (PS3.18 10.5): store report objects at a DICOMweb destination in one request.

The spool's Part 10 files are posted unchanged as ``multipart/related; type="application/dicom"``
to ``{url}/studies``: the same objects, and the same UIDs, that C-STORE sends.  The response's
FailedSOPSequence and ReferencedSOPSequence (DICOM JSON or XML) say what was stored; failures
are classed like C-STORE statuses (see :mod:`pacs_node.send.dicomweb` for the HTTP side).
Reasons name instances by position and SOP class, never by UID or anything from the response
body; those are logged at DEBUG only.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from pydicom import dcmread
from pydicom.uid import UID

from pacs_node.db.models import FailureKind
from pacs_node.send.dicomweb import (
    classify_http,
    classify_transport,
    describe_http,
    describe_transport,
    open_client,
    request_extensions,
)
from pacs_node.send.scu import SendOutcome, classify_status

if TYPE_CHECKING:
    from pacs_node.config import Destination

log = logging.getLogger(__name__)

FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
#: Failure reasons listed in a reason before "and N more".
_LISTED = 3


@dataclass(frozen=True)
class Part:
    """One object to store: its Part 10 bytes and what it is."""

    sop_class_uid: str
    sop_instance_uid: str
    data: bytes


@dataclass(frozen=True)
class StowResponse:
    """What a STOW-RS response body says: stored SOP Instance UIDs, and failed ones with their reason."""

    stored: tuple[str, ...] = ()
    failed: tuple[tuple[str, int | None], ...] = ()


def read_part(path: Path) -> Part:
    """A spool file as a part; ``ValueError`` when it is not a DICOM Part 10 file."""
    data = path.read_bytes()
    if data[128:132] != b"DICM":
        raise ValueError(f"{path.name} is not a DICOM Part 10 file")
    header = dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
    return Part(str(header.SOPClassUID), str(header.SOPInstanceUID), data)


def multipart_body(parts: Sequence[bytes]) -> tuple[bytes, str]:
    """The request body and its Content-Type: one ``application/dicom`` part per object."""
    boundary = uuid.uuid4().hex
    while any(boundary.encode() in part for part in parts):
        boundary = uuid.uuid4().hex
    chunks = []
    for part in parts:
        chunks += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), part, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="application/dicom"; boundary={boundary}'


# --- the response: DICOM JSON (PS3.18 F.2) or Native DICOM Model XML (PS3.19 A.1) -------------------

def _from_json(element: Any) -> dict[str, list]:
    """A DICOM JSON data set as ``{tag: [values or nested data sets]}``."""
    if isinstance(element, list):  # some servers wrap the one data set in an array
        element = element[0] if element else {}
    if not isinstance(element, dict):
        raise ValueError("not a DICOM JSON data set")
    dataset: dict[str, list] = {}
    for tag, attribute in element.items():
        values = attribute.get("Value", []) if isinstance(attribute, dict) else []
        if isinstance(attribute, dict) and attribute.get("vr") == "SQ":
            values = [_from_json(item) for item in values]
        dataset[tag.upper()] = values
    return dataset


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _from_xml(element: ElementTree.Element) -> dict[str, list]:
    """A NativeDicomModel (or Item) element as ``{tag: [values or nested data sets]}``."""
    dataset: dict[str, list] = {}
    for attribute in element:
        if _local(attribute.tag) != "DicomAttribute":
            continue
        values: list = []
        for child in attribute:
            if _local(child.tag) == "Item":
                values.append(_from_xml(child))
            elif _local(child.tag) == "Value":
                values.append(child.text or "")
        dataset[attribute.get("tag", "").upper()] = values
    return dataset


def _first(item: dict[str, list], tag: str) -> Any:
    values = item.get(tag) or [None]
    return values[0]


def parse_stow_response(body: bytes) -> StowResponse | None:
    """The stored and failed instances a response lists; ``None`` when the body is neither JSON nor XML."""
    text = body.lstrip()
    try:
        if text.startswith((b"{", b"[")):
            dataset = _from_json(json.loads(text))
        elif text.startswith(b"<"):
            dataset = _from_xml(ElementTree.fromstring(text))
        else:
            return None
    except (ValueError, ElementTree.ParseError, AttributeError, TypeError):
        return None
    failed = []
    for item in dataset.get(FAILED_SOP_SEQUENCE, []):
        if isinstance(item, dict):
            reason = _first(item, FAILURE_REASON)
            failed.append((str(_first(item, REFERENCED_SOP_INSTANCE_UID)), int(reason) if reason not in (None, "") else None))
    stored = tuple(str(_first(item, REFERENCED_SOP_INSTANCE_UID))
                   for item in dataset.get(REFERENCED_SOP_SEQUENCE, []) if isinstance(item, dict))
    return StowResponse(stored, tuple(failed))


# --- classification --------------------------------------------------------------------------------

def describe_status(code: int | None) -> str:
    """A FailureReason (the C-STORE status codes, PS3.18 Table I.2-1) in words."""
    if code is None:
        return "no reason given"
    if (code & 0xFF00) == 0xA700:
        words = "out of resources"
    elif (code & 0xFF00) == 0xA900:
        words = "data set does not match SOP class"
    elif (code & 0xF000) == 0xC000:
        words = "cannot understand"
    else:
        words = {0x0110: "processing failure", 0x0122: "SOP class not supported", 0x0124: "not authorized",
                 0x0211: "unrecognized operation"}.get(code, "failure")
    return f"0x{code:04X} {words}"


def _failure_kind(code: int | None) -> FailureKind:
    return classify_status(0x0110 if code is None else code) or FailureKind.TRANSIENT


def _failures_reason(failed: Sequence[tuple[str, int | None]], parts: Sequence[Part]) -> str:
    index = {part.sop_instance_uid: (number, part) for number, part in enumerate(parts, 1)}
    listed = []
    for uid, code in failed[:_LISTED]:
        if uid in index:
            number, part = index[uid]
            listed.append(f"instance {number} ({UID(part.sop_class_uid).name}): {describe_status(code)}")
        else:
            listed.append(f"an instance we did not send: {describe_status(code)}")
    more = f" and {len(failed) - _LISTED} more" if len(failed) > _LISTED else ""
    return f"{len(failed)} of {len(parts)} instances not stored: {'; '.join(listed)}{more}"


def classify_stow(response: httpx.Response, parsed: StowResponse | None, parts: Sequence[Part]) -> SendOutcome:
    """How a STOW-RS request went, from its response.

    2xx without failures: stored (warnings count as stored, as for C-STORE).  2xx or 409 with
    a FailedSOPSequence: per instance, by FailureReason; a 409 (nothing stored: the request
    conflicts) is permanent unless the server is out of resources.  Anything else: by HTTP status.
    """
    status = response.status_code
    failed = parsed.failed if parsed is not None else ()
    kind = classify_http(status)
    if kind is None and not failed:
        return SendOutcome(len(parts))
    if kind is None or status == 409:
        if status == 409:
            out_of_resources = any(code is not None and (code & 0xFF00) == 0xA700 for _, code in failed)
            kind = FailureKind.TRANSIENT if out_of_resources else FailureKind.PERMANENT
        else:
            retry = any(_failure_kind(code) == FailureKind.TRANSIENT for _, code in failed)
            kind = FailureKind.TRANSIENT if retry else FailureKind.PERMANENT
        detail = _failures_reason(failed, parts) if failed else "no instance stored"
        stored = len(parts) - len(failed) if status != 409 else 0
        return SendOutcome(stored, kind, f"{describe_http(response)}: {detail}")
    reason = describe_http(response)
    if failed:
        reason += f": {_failures_reason(failed, parts)}"
    elif parsed is not None and parsed.stored:
        reason += f" ({len(parsed.stored)} of {len(parts)} instances stored)"
    return SendOutcome(len(parsed.stored) if parsed is not None else 0, kind, reason)


def send_stow(destination: Destination, paths: Sequence[Path], timeout_s: float) -> SendOutcome:
    """Store ``paths`` at a DICOMweb destination with one STOW-RS request and say how it went."""
    try:
        parts = [read_part(path) for path in paths]
    except ValueError as exc:
        return SendOutcome(0, FailureKind.PERMANENT, str(exc))
    body, content_type = multipart_body([part.data for part in parts])
    try:
        client = open_client(destination, timeout_s)
    except ValueError as exc:  # a secret file or variable went away since start-up
        return SendOutcome(0, FailureKind.TRANSIENT, f"credentials: {exc}")
    with client:
        try:
            response = client.post(f"{destination.url}/studies", content=body,
                                   headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
                                   extensions=request_extensions(destination))
        except httpx.TransportError as exc:
            log.debug("event=stow_no_answer destination=%s error=%r", destination.name, exc)
            return SendOutcome(0, classify_transport(exc), describe_transport(exc))
    parsed = parse_stow_response(response.content)
    outcome = classify_stow(response, parsed, parts)
    if outcome.failure is not None:
        log.debug("event=stow_response destination=%s status=%d failed=%r stored=%r body=%r", destination.name,
                  response.status_code, parsed and parsed.failed, parsed and parsed.stored, response.content[:2000])
    return outcome
