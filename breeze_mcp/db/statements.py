"""Hot statements, prepared on every connection when it is opened.

PostgreSQL plans a statement sent in a multi-statement message on every call; a statement
prepared once per connection (SQL ``PREPARE``, session-level, surviving rollbacks) is planned
once. :func:`prepared` declares one: its text takes ``%s`` placeholders, and every statement
declared when a connection opens is prepared on it at once
(:meth:`breeze_mcp.db.engine.Database`'s ``configure``).
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass

__all__ = ["Prepared", "all_prepared", "prepared"]


@dataclass(frozen=True)
class Prepared:
    """A statement prepared by name on each connection."""

    name: str
    sql: str  # with numbered placeholders ($1, $2, ...)
    count: int  # how many parameters

    @property
    def prepare_sql(self) -> str:
        return f"PREPARE {self.name} AS {self.sql}"

    @functools.cached_property
    def execute(self) -> str:
        """``EXECUTE name(%s, ...)``, its parameters bound client-side by psycopg."""
        if not self.count:
            return f"EXECUTE {self.name}"
        return f"EXECUTE {self.name}({', '.join(['%s'] * self.count)})"


_registry: dict[str, Prepared] = {}


_NUMBERED = re.compile(r"\$([0-9]+)")


def prepared(sql: str) -> Prepared:
    """Declare a hot statement (at import time, so that connections prepare it at once).

    Its parameters are ``%s`` placeholders, in order, or PostgreSQL's numbered ones (``$1``),
    which a statement may use more than once; not both."""
    parts = sql.split("%s")
    if any("%" in part for part in parts):
        raise ValueError("a prepared statement takes only %s (or $n) placeholders")
    numbers = {int(n) for n in _NUMBERED.findall(sql)}
    if numbers and len(parts) > 1:
        raise ValueError("use %s or $n placeholders, not both")
    if numbers:
        if numbers != set(range(1, max(numbers) + 1)):
            raise ValueError(f"numbered placeholders must be $1..$n: {sorted(numbers)}")
        numbered, count = sql, max(numbers)
    else:
        numbered = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))
        count = len(parts) - 1
    name = "breeze_" + hashlib.blake2b(numbered.encode(), digest_size=10).hexdigest()
    statement = _registry.get(name)
    if statement is None:
        statement = _registry[name] = Prepared(name, numbered, count)
    return statement


def all_prepared() -> list[Prepared]:
    return list(_registry.values())
