"""Hot statements, prepared on every connection when it is opened.

PostgreSQL plans a statement sent in a multi-statement message on every call; a statement
prepared once per connection (SQL ``PREPARE``, session-level, surviving rollbacks) is planned
once. :func:`prepared` declares one: its text takes ``%s`` placeholders, and every statement
declared when a connection opens is prepared on it at once
(:meth:`breeze_mcp.db.engine.Database`'s ``configure``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Prepared", "all_prepared", "prepared"]


@dataclass(frozen=True)
class Prepared:
    """A statement prepared by name on each connection."""

    name: str
    sql: str  # with %s placeholders
    count: int  # how many

    @property
    def prepare_sql(self) -> str:
        parts = self.sql.split("%s")
        numbered = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))
        return f"PREPARE {self.name} AS {numbered}"

    def execute_sql(self, params: Sequence[Any]) -> str:
        """``EXECUTE name(%s, ...)`` for ``params`` (bound client-side by psycopg)."""
        if len(params) != self.count:
            raise ValueError(f"{self.name}: {self.count} placeholders, {len(params)} parameters")
        if not self.count:
            return f"EXECUTE {self.name}"
        return f"EXECUTE {self.name}({', '.join(['%s'] * self.count)})"


_registry: dict[str, Prepared] = {}


def prepared(sql: str) -> Prepared:
    """Declare a hot statement (at import time, so that connections prepare it at once)."""
    parts = sql.split("%s")
    if any("%" in part for part in parts):
        raise ValueError("a prepared statement takes only %s placeholders")
    name = "breeze_" + hashlib.blake2b(sql.encode(), digest_size=10).hexdigest()
    statement = _registry.get(name)
    if statement is None:
        statement = _registry[name] = Prepared(name, sql, len(parts) - 1)
    return statement


def all_prepared() -> list[Prepared]:
    return list(_registry.values())
