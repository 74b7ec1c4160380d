"""The tool registry: tools are data.

A :class:`ToolSpec` names a tool, describes it, gives its pydantic input model, its base risk
tier and — for tools with an ``action`` argument — a tier per action, and the handler that
runs it. The effective tier of a call is the maximum of the base tier and the tier of the
action its arguments select; an action the registry does not know is Tier 4, and so is a tool
it does not know. Tier 4 tools are registered so that calls are recognised, refused and
audited, and never executed: they have no handler at all.

JSON schemas for ``tools/list`` come from the models; MCP annotations come from the tier.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, get_args

from pydantic import BaseModel

from breeze_mcp.db.engine import Row, Transaction
from breeze_mcp.db.statements import Prepared

__all__ = [
    "BLOCKED_TIER",
    "FinalRead",
    "Handler",
    "Outcome",
    "Registry",
    "ToolContext",
    "ToolError",
    "ToolSpec",
]

BLOCKED_TIER = 4
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ToolError(Exception):
    """A tool ran and failed in a way the caller should see (not found, conflict, ...).

    ``code`` is stable (``not_found``, ``conflict``, ``invalid_state``); ``message`` is safe to
    show. An id of another tenant must produce exactly the same error as a non-existent one.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class FinalRead:
    """What a read-only tool returns instead of its result: its last statement, and the pure
    function that shapes that statement's rows into the result.

    The pipeline sends the statement with the call's audit entry and ``COMMIT`` in one
    message (:meth:`breeze_mcp.db.engine.Transaction.finish`), so everything that can fail
    (a :class:`ToolError`, a failed statement) happens before; ``shape`` only formats."""

    statement: Prepared
    params: tuple[Any, ...]
    shape: Callable[[list[Row]], Mapping[str, Any]]


@dataclass(frozen=True)
class ToolContext:
    """What a handler may use: the call's tenant transaction and who is acting."""

    tx: Transaction
    tenant_id: uuid.UUID
    actor: str  # "api_key:<id>", "user:<id>", ... - stored in requested_by / author columns


#: What a handler gives back: its result, or (read-only tools) the read that makes it.
Outcome = Mapping[str, Any] | FinalRead
Handler = Callable[[ToolContext, Any], Awaitable[Outcome]]


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    input_model: type[BaseModel]
    base_tier: int
    handler: Handler | None
    action_tiers: Mapping[str, int] = field(default_factory=dict)
    title: str | None = None
    #: Optional stricter per-tool rate limit (``limits`` notation, per tenant), e.g. "5/5minute".
    rate_limit: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.base_tier <= BLOCKED_TIER:
            raise ValueError(f"{self.name}: tier must be 1..4")
        if (self.base_tier == BLOCKED_TIER) != (self.handler is None):
            raise ValueError(f"{self.name}: Tier 4 tools have no handler; others must have one")
        if not _TOOL_NAME.fullmatch(self.name):
            raise ValueError(f"{self.name!r}: tool names are 1-64 of [A-Za-z0-9_-]")
        if not self.description.strip():
            raise ValueError(f"{self.name}: a description is required")
        if self.action_tiers:
            field = self.input_model.model_fields.get("action")
            if field is None:
                raise ValueError(f"{self.name}: action tiers need an 'action' argument")
            accepted = set(get_args(field.annotation))
            if accepted and accepted != set(self.action_tiers):
                raise ValueError(
                    f"{self.name}: the model's actions {sorted(accepted)} must be exactly the "
                    f"tiered actions {sorted(self.action_tiers)}"
                )

    def effective_tier(self, arguments: Mapping[str, Any] | None) -> int:
        """max(base tier, the selected action's tier); an unknown action is Tier 4."""
        if not self.action_tiers:
            return self.base_tier
        action = (arguments or {}).get("action")
        if not isinstance(action, str) or action not in self.action_tiers:
            return BLOCKED_TIER
        return max(self.base_tier, self.action_tiers[action])

    @property
    def max_tier(self) -> int:
        """The highest tier any call of this tool can have (what a lister must reach)."""
        return max([self.base_tier, *self.action_tiers.values()])

    @property
    def min_tier(self) -> int:
        """The lowest tier some call of this tool has (listed once a caller reaches it)."""
        if not self.action_tiers:
            return self.base_tier
        return max(self.base_tier, min(self.action_tiers.values()))

    def input_schema(self) -> dict[str, Any]:
        schema = self.input_model.model_json_schema()
        schema.setdefault("type", "object")
        schema.setdefault("properties", {})
        schema.pop("title", None)
        return schema


class Registry:
    def __init__(self, tools: Iterable[ToolSpec] = ()) -> None:
        self._tools: dict[str, ToolSpec] = {}
        for tool in tools:
            self.add(tool)

    def add(self, tool: ToolSpec) -> None:
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name!r} registered twice")
        self._tools[tool.name] = tool

    def get(self, name: str) -> ToolSpec | None:
        return self._tools.get(name)

    def __iter__(self) -> Iterator[ToolSpec]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def listable(self, ceiling: int) -> list[ToolSpec]:
        """Tools a caller whose scopes reach ``ceiling`` can call at all (never Tier 4)."""
        return [t for t in self._tools.values()
                if t.base_tier < BLOCKED_TIER and t.min_tier <= ceiling]
