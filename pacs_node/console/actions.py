"""What an admin can do from the console; each action is written to the audit log.

Pages and the REST API call these with the acting user; targets are internal ids or
destination names, so the audit log never holds a patient identifier.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import select

from pacs_node.config import Destination
from pacs_node.console.context import NodeView
from pacs_node.console.schemas import ActionResult
from pacs_node.db import audit, operator
from pacs_node.db.deliveries import resend_study
from pacs_node.db.models import Study
from pacs_node.db.retention import reports_purged

log = logging.getLogger(__name__)


class UnknownTarget(LookupError):
    """The study, delivery or destination named does not exist."""


def _done(view: NodeView, actor: str, action: str, target: str, outcome: str, message: str) -> ActionResult:
    audit.record(view.engine, actor, action, target, outcome, message)
    log.info("event=console_action actor=%s action=%s target=%r outcome=%s", actor, action, target, outcome)
    return ActionResult(action=action, target=target, outcome=outcome, message=message)


def _destination(view: NodeView, name: str) -> Destination:
    found = next((d for d in view.settings.destinations if d.name == name), None)
    if found is None:
        raise UnknownTarget(f"no destination {name!r}")
    return found


def resend(view: NodeView, actor: str, study_pk: int) -> ActionResult:
    """Owe the study's newest report to every destination again (the same objects and UIDs)."""
    target = f"study {study_pk}"
    with view.engine.connect() as connection:
        study_uid = connection.scalar(select(Study.study_uid).where(Study.id == study_pk))
    if study_uid is None:
        raise UnknownTarget(f"no study {study_pk}")
    if not view.settings.destinations:
        return _done(view, actor, "resend", target, "refused", "no destinations are configured")
    if reports_purged(view.engine, study_uid):
        return _done(view, actor, "resend", target, "refused",
                     "retention deleted the report files ([retention] keep_reports = false); nothing to resend")
    queued = resend_study(view.engine, study_uid, view.settings.destinations)
    if not queued:
        return _done(view, actor, "resend", target, "refused", "the study has no finished report")
    return _done(view, actor, "resend", target, "ok", f"queued {queued} deliver{'y' if queued == 1 else 'ies'}")


def reanalyse(view: NodeView, actor: str, study_pk: int) -> ActionResult:
    """Queue a new analysis job for the study."""
    why_not = operator.requeue_analysis(view.engine, study_pk)
    if why_not == "no such study":
        raise UnknownTarget(f"no study {study_pk}")
    if why_not:
        return _done(view, actor, "reanalyse", f"study {study_pk}", "refused", why_not)
    return _done(view, actor, "reanalyse", f"study {study_pk}", "ok", "analysis queued")


def retry(view: NodeView, actor: str, delivery_id: int) -> ActionResult:
    """Send a failed or retrying delivery now, with a fresh set of attempts."""
    target = f"delivery {delivery_id}"
    if operator.retry_delivery(view.engine, delivery_id):
        return _done(view, actor, "retry", target, "ok", "due now")
    return _done(view, actor, "retry", target, "refused", "no failed or retrying delivery with that id")


def pause(view: NodeView, actor: str, name: str) -> ActionResult:
    """Hold every delivery to a destination until it is resumed."""
    _destination(view, name)
    paused = operator.pause_destination(view.engine, name, actor)
    return _done(view, actor, "pause", f"destination {name}", "ok" if paused else "refused",
                 "deliveries wait until resumed" if paused else "paused already")


def resume(view: NodeView, actor: str, name: str) -> ActionResult:
    """Lift a manual pause; waiting deliveries go at once."""
    _destination(view, name)
    resumed = operator.resume_destination(view.engine, name)
    return _done(view, actor, "resume", f"destination {name}", "ok" if resumed else "refused",
                 "waiting deliveries go now" if resumed else "was not paused")


def echo(view: NodeView, actor: str, name: str) -> ActionResult:
    """C-ECHO the destination (QIDO-RS for DICOMweb), as ``pacs-node echo --destination`` does."""
    from pacs_node.send.dicomweb import dicomweb_echo
    from pacs_node.send.echo import EchoError, c_echo

    destination = _destination(view, name)
    timeout_s = destination.timeout_s or view.settings.sending.timeout_s
    probe = "QIDO-RS" if destination.protocol == "dicomweb" else "C-ECHO"
    try:
        if destination.protocol == "dicomweb":
            seconds = dicomweb_echo(destination, timeout_s)
        else:
            seconds = c_echo(destination.ae_title, destination.host, destination.port,  # type: ignore[arg-type]
                             calling_ae=view.settings.node.ae_title, timeout_s=timeout_s, tls=destination.tls)
    except (EchoError, OSError, ValueError) as exc:
        return _done(view, actor, "echo", f"destination {name}", "failed", f"{probe} failed: {exc}")
    return _done(view, actor, "echo", f"destination {name}", "ok", f"{probe} answered in {seconds * 1000:.0f} ms")


#: Actions by name, with how their target is parsed from a form or path.
ACTIONS: dict[str, tuple[Callable[[NodeView, str, object], ActionResult], Callable[[str], object]]] = {
    "resend": (resend, int), "reanalyse": (reanalyse, int), "retry": (retry, int),
    "pause": (pause, str), "resume": (resume, str), "echo": (echo, str),
}
