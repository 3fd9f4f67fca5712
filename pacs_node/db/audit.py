"""The audit log: who did what to which object, when, and how it went."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, func, insert, select

from pacs_node.db.models import AuditEntry, utcnow


@dataclass(frozen=True)
class Audited:
    """One row of the audit log."""

    id: int
    at: str
    actor: str
    action: str
    target: str
    outcome: str
    detail: str


def record(engine: Engine, actor: str, action: str, target: str, outcome: str, detail: str = "") -> None:
    """Write one row; ``target`` and ``detail`` must name objects by internal id, never a patient identifier."""
    with engine.begin() as connection:
        connection.execute(insert(AuditEntry).values(at=utcnow(), actor=actor[:64], action=action[:32],
                                                     target=target[:128], outcome=outcome[:16], detail=detail))


def recent(engine: Engine, limit: int = 50, offset: int = 0) -> tuple[list[Audited], int]:
    """The newest rows first, and how many there are in all."""
    with engine.connect() as connection:
        total = connection.scalar(select(func.count()).select_from(AuditEntry)) or 0
        rows = connection.execute(
            select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit).offset(offset)
        ).all()
    return [Audited(r.id, r.at.isoformat(timespec="seconds"), r.actor, r.action, r.target, r.outcome, r.detail)
            for r in rows], total
