"""Incidents: what the scheduled checks found wrong, opened and resolved by the checks' outcomes.

A check of one subject ("server:prod-1", "app:notes") reports pass or fail each tick
(:func:`record_check`). Failures in a row are counted per (kind, subject) in ``check_streaks``;
the ``threshold``-th opens an incident, unless one is open already (a partial unique index holds
at most one open per kind and subject). A pass resets the count and resolves the open incident.
Opening and resolving each enqueue one note per chat to tell, through the outbox, in the same
transaction: a note's id is the incident's id and what happened, so the bot sends it once however
often it is written.

A tick counts once: the streak keeps the tick that counted last, so an activity retried within
the same tick (its worker killed after the commit) changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.contracts.base import as_utc, utcnow
from core.contracts.chat import ChatNote, encode_chat_entry
from core.enums import IncidentKind
from core.ids import chat_stream
from core.logging import get_logger
from db import outbox
from db.errors import Conflict, NotFound
from db.tables import CheckStreak, Incident, OutboxMessage

log = get_logger(__name__)

# Who the notes say sent them (ChatNote.source).
NOTE_SOURCE = "orchestrator-schedules"


@dataclass(frozen=True)
class Check:
    """One check's outcome for one subject."""

    kind: IncidentKind
    subject: str
    ok: bool
    title: str = ""  # what is wrong, for the incident it opens ("server prod-1 is unreachable")
    evidence: dict[str, Any] = field(default_factory=dict)  # the error, an app's log tail, ...
    server_id: str | None = None
    project_id: str | None = None


@dataclass(frozen=True)
class CheckRecorded:
    failures: int  # failed checks in a row, this one included
    opened: int | None = None  # the incident this check opened
    resolved: int | None = None  # the incident this check resolved
    open_incident: int | None = None  # the one open after this check
    notes: list[int] = field(default_factory=list)  # their outbox entries, to publish at once


async def record_check(
    session: AsyncSession, check: Check, *, tick: str, threshold: int, chats: list[int]
) -> CheckRecorded:
    """Count ``check`` (once per ``tick``), open or resolve its incident, enqueue the notes to
    ``chats``; commits. :class:`Conflict` if another writer opened the same incident meanwhile
    (a retry then finds it open)."""
    streak = await session.get(CheckStreak, (check.kind, check.subject))
    if check.ok and (streak is None or streak.failures == 0):
        # The usual case: it passed, and nothing failed before it (no incident can be open:
        # one closes in the transaction that resets its streak). Nothing to write.
        return CheckRecorded(failures=0)
    if streak is None:
        streak = CheckStreak(kind=check.kind, subject=check.subject)
    if streak.last_tick != tick:
        streak.failures = 0 if check.ok else streak.failures + 1
        streak.last_tick = tick
        streak.updated_at = utcnow()
        session.add(streak)
    failures = streak.failures
    current = await open_incident(session, check.kind, check.subject)
    opened = resolved = None
    notes: list[OutboxMessage] = []
    if check.ok and current is not None:
        current.resolved_at = utcnow()
        session.add(current)
        notes = _tell(session, current, "resolved", chats)
        resolved, current = current.id, None
    elif not check.ok and current is None and failures >= threshold:
        current = Incident(
            kind=check.kind,
            subject=check.subject,
            server_id=check.server_id,
            project_id=check.project_id,
            title=check.title[:500],
            evidence={**check.evidence, "failed_checks": failures},
        )
        session.add(current)
        await session.flush()  # its id names the notes
        notes = _tell(session, current, "opened", chats)
        opened = current.id
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise Conflict(
            f"an incident of {check.kind} for {check.subject} was opened meanwhile"
        ) from None
    if opened is not None or resolved is not None:
        log.info(
            "incident opened" if opened is not None else "incident resolved",
            incident=opened or resolved,
            kind=check.kind.value,
            subject=check.subject,
        )
    return CheckRecorded(
        failures=failures,
        opened=opened,
        resolved=resolved,
        open_incident=None if current is None else current.id,
        notes=[note.id for note in notes if note.id is not None],
    )


async def failures_before(
    session: AsyncSession, kind: IncidentKind, subject: str, tick: str
) -> int:
    """Failed checks in a row before ``tick``'s (a retry of the tick sees the same number)."""
    streak = await session.get(CheckStreak, (kind, subject))
    if streak is None:
        return 0
    if streak.last_tick == tick:
        return max(0, streak.failures - 1)
    return streak.failures


async def open_incident(session: AsyncSession, kind: IncidentKind, subject: str) -> Incident | None:
    query = select(Incident).where(
        col(Incident.kind) == kind,
        col(Incident.subject) == subject,
        col(Incident.resolved_at).is_(None),
    )
    return (await session.exec(query)).first()


async def list_incidents(
    session: AsyncSession,
    *,
    open_only: bool = False,
    project_ids: list[str] | None = None,
    server_id: str | None = None,
    kind: IncidentKind | None = None,
    limit: int = 100,
) -> list[Incident]:
    """Newest first; ``project_ids``: only those of these projects (none: no incident)."""
    query = select(Incident)
    if open_only:
        query = query.where(col(Incident.resolved_at).is_(None))
    if project_ids is not None:
        query = query.where(col(Incident.project_id).in_(project_ids))
    if server_id is not None:
        query = query.where(col(Incident.server_id) == server_id)
    if kind is not None:
        query = query.where(col(Incident.kind) == kind)
    query = query.order_by(col(Incident.id).desc()).limit(limit)
    return list((await session.exec(query)).all())


async def get_incident(session: AsyncSession, incident_id: int) -> Incident:
    incident = await session.get(Incident, incident_id)
    if incident is None:
        raise NotFound(f"no incident {incident_id}")
    return incident


async def ack_incident(session: AsyncSession, incident_id: int, by: str) -> Incident:
    """Someone looks into it: the first acknowledgement is kept (a second changes nothing)."""
    incident = await get_incident(session, incident_id)
    if incident.acked_at is None:
        incident.acked_at = utcnow()
        incident.acked_by = by[:200]
        session.add(incident)
        await session.commit()
        await session.refresh(incident)
        log.info("incident acknowledged", incident=incident_id, by=by)
    return incident


def note_text(incident: Incident, event: str, now: datetime | None = None) -> str:
    """The chat's note of an incident ``opened`` or ``resolved`` (Markdown)."""
    if event == "opened":
        error = str(incident.evidence.get("error") or "").strip()
        lines = [f"🔴 **Incident #{incident.id}**: {incident.title}"]
        if error:
            lines += ["", f"```\n{error[:1500]}\n```"]
        tail = str(incident.evidence.get("log_tail") or "").strip()
        if tail:
            lines += ["", "Its last log lines:", f"```\n{tail[-1500:]}\n```"]
        lines += ["", f"`orchestrator incident show {incident.id}`"]
        return "\n".join(lines)
    lasted = _duration(as_utc(now or incident.resolved_at or utcnow()) - as_utc(incident.opened_at))
    return (
        f"🟢 **Resolved #{incident.id}**: {incident.title}: the check passes again after {lasted}."
    )


def _tell(
    session: AsyncSession, incident: Incident, event: str, chats: list[int]
) -> list[OutboxMessage]:
    notes = []
    for chat in dict.fromkeys(chats):
        note = ChatNote(
            chat_id=chat,
            note_id=f"incident-{incident.id}-{event}",
            text=note_text(incident, event),
            source=NOTE_SOURCE,
        )
        notes.append(outbox.enqueue(session, chat_stream(chat), encode_chat_entry(note)))
    return notes


def _duration(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
