"""What the database layer refuses, in words a person can act on.

Queries raise these; the API turns them into problem+json in one place (api/problems.py: 404,
409, 422) and activities into Temporal failures. They carry no HTTP or Temporal notion.
"""

from __future__ import annotations


class DomainError(Exception):
    """A refusal whose message is meant to be shown as it is."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(DomainError, LookupError):
    """What was asked for does not exist."""


class Conflict(DomainError):
    """The change clashes with what is stored (a taken name, a state that forbids it)."""


class Invalid(DomainError, ValueError):
    """The values given cannot be stored as they are."""
