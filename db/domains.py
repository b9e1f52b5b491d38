"""Custom domains: the names a project's app is served at besides its base-domain name."""

from __future__ import annotations

import re

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.logging import get_logger
from db.errors import Conflict, Invalid, NotFound
from db.tables import Domain

log = get_logger(__name__)

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
# At least two labels: a name a certificate can be issued for (not "localhost", not an IP).
DOMAIN_NAME = re.compile(rf"^{_LABEL}(\.{_LABEL})+$")
# What a request may say: any case, and a final dot (normalized() takes both away).
DOMAIN_INPUT = rf"^{_LABEL.replace('a-z', 'A-Za-z')}(\.{_LABEL.replace('a-z', 'A-Za-z')})+\.?$"
DOMAIN_RULE = (
    "a domain is a DNS name of two labels or more: letters, digits and inner '-', "
    "joined by '.', at most 253 characters (e.g. shop.example.com)"
)


def normalized(name: str) -> str:
    """The name as DNS compares it (lower case, no trailing dot), or Invalid saying the rule."""
    name = name.strip().rstrip(".").lower()
    if len(name) > 253 or not DOMAIN_NAME.match(name):
        raise Invalid(f"invalid domain {name!r}: {DOMAIN_RULE}")
    return name


async def list_domains(session: AsyncSession, project_id: str) -> list[Domain]:
    query = select(Domain).where(col(Domain.project_id) == project_id).order_by(col(Domain.name))
    return list((await session.exec(query)).all())


async def names_of(session: AsyncSession, project_id: str) -> list[str]:
    return [domain.name for domain in await list_domains(session, project_id)]


async def add_domain(session: AsyncSession, project_id: str, name: str) -> tuple[Domain, bool]:
    """The project's domain (True when new); Conflict when another project has it."""
    name = normalized(name)
    found = await session.get(Domain, name)
    if found is not None:
        if found.project_id != project_id:
            raise Conflict(f"the domain {name} belongs to another project")
        return found, False
    domain = Domain(name=name, project_id=project_id)
    session.add(domain)
    try:
        await session.commit()
    except IntegrityError:  # another request took it between the check and the commit
        await session.rollback()
        raise Conflict(f"the domain {name} belongs to another project") from None
    log.info("domain added", project_id=project_id, domain=name)
    return domain, True


async def remove_domain(session: AsyncSession, project_id: str, name: str) -> None:
    try:
        name = normalized(name)
    except Invalid:  # no DNS name is no domain of the project's either
        raise NotFound(f"the project has no domain {name!r}") from None
    found = await session.get(Domain, name)
    if found is None or found.project_id != project_id:
        raise NotFound(f"the project has no domain {name}")
    await session.delete(found)
    await session.commit()
    log.info("domain removed", project_id=project_id, domain=name)
