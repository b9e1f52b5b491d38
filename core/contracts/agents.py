"""What a coding agent's turn returns, and what a task's agents may spend and have spent.

The agent adapters (infra/agents) produce :class:`AgentResult` and :class:`AgentEvent`; the
Worker activities return them to workflows. The model gateway counts :class:`TaskUsage` against a
:class:`Budget` per task; workflows read both.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field, computed_field

# Agents that call no model run without the gateway.
MODEL_FREE_AGENTS = frozenset({"scripted"})

AgentStatus = Literal["completed", "failed", "blocked"]
EventKind = Literal["message", "tool", "file_change", "command", "error"]


def uses_model(agent: str) -> bool:
    return agent not in MODEL_FREE_AGENTS


class AgentEvent(BaseModel):
    kind: EventKind
    text: str
    data: dict[str, Any] = Field(default_factory=dict)


class AgentResult(BaseModel):
    status: AgentStatus
    summary: str = ""
    question: str | None = None  # set when blocked
    files_changed: list[str] = Field(default_factory=list)  # relative to the workdir
    commit: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float | None = None  # None when the CLI does not report it
    raw_error: str | None = None


class UsageRow(Protocol):
    """One model call as the gateway's ledger records it (a ``model_usage`` row)."""

    refused: bool
    error: str | None
    tokens_in: int
    tokens_out: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: float | None


class Budget(BaseModel):
    """What one task may spend on model calls; None is no limit."""

    max_tokens: int | None = Field(default=None, gt=0)
    max_cost_usd: float | None = Field(default=None, gt=0)

    def exhausted(self, usage: TaskUsage) -> str | None:
        """Why the next call must be refused, or None. At the limit counts as spent."""
        if self.max_tokens is not None and usage.tokens >= self.max_tokens:
            return f"task budget exhausted: {usage.tokens} of {self.max_tokens} tokens used"
        if self.max_cost_usd is not None and usage.cost_usd >= self.max_cost_usd:
            return f"task budget exhausted: ${usage.cost_usd:.4f} of ${self.max_cost_usd:.4f} spent"
        return None


class TaskUsage(BaseModel):
    task_id: str
    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_calls: int = Field(default=0, description="Calls of models with no known price")
    refusals: int = 0
    last_refusal: str | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out

    def add(self, row: UsageRow) -> None:
        if row.refused:
            self.refusals += 1
            self.last_refusal = row.error
            return
        self.calls += 1
        self.tokens_in += row.tokens_in
        self.tokens_out += row.tokens_out
        self.cache_read_tokens += row.cache_read_tokens
        self.cache_write_tokens += row.cache_write_tokens
        if row.cost_usd is not None:
            self.cost_usd = round(self.cost_usd + row.cost_usd, 8)
        elif row.tokens_in or row.tokens_out:
            self.unpriced_calls += 1
