"""Where SQL may live, read off the package's source (ARCH-SQL-PLACES).

Statements are built and run only in ``db/``, the ``auth/`` services (accounts, keys, OAuth,
sessions), ``tools/`` (and their sample data), the audit writer and the audit log's reader;
the HTTP modules and the entry points call service functions. The runtime has one database
stack: nothing imports SQLAlchemy's asyncio extension.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import breeze_mcp

PACKAGE = Path(breeze_mcp.__file__).parent
# Packages and modules allowed to build and run statements.
SQL_PLACES = ("db/", "auth/", "tools/", "audit.py",
              # The audit log's reader (query, cursor, export) beside its one writer: the
              # console page and the admin API share it.
              "audit_query.py",
              # The sealer and the verifier read and append the chain, and the canonical form
              # of an entry is an expression PostgreSQL computes next to the row.
              "audit_chain.py")
_SQL_IMPORTS = ("sqlalchemy", "breeze_mcp.db.models", "breeze_mcp.db.statements")


def _modules() -> list[tuple[str, ast.Module]]:
    return [(str(path.relative_to(PACKAGE)), ast.parse(path.read_text(), str(path)))
            for path in sorted(PACKAGE.rglob("*.py"))]


def _imports(tree: ast.Module) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def _executes(tree: ast.Module) -> list[int]:
    """Lines that call ``<something>.execute(...)``: running a statement."""
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "execute"]


@pytest.mark.req("ARCH-SQL-PLACES")
def test_sql_only_in_its_places() -> None:
    offenders = []
    for name, tree in _modules():
        if name.startswith(SQL_PLACES):
            continue
        sql = sorted(i for i in _imports(tree) if i.startswith(_SQL_IMPORTS))
        if sql:
            offenders.append(f"{name} imports {', '.join(sql)}")
        if lines := _executes(tree):
            offenders.append(f"{name} runs statements (lines {lines})")
    assert offenders == []


@pytest.mark.req("ARCH-SQL-PLACES")
def test_one_database_stack() -> None:
    for name, tree in _modules():
        assert not any(i.startswith("sqlalchemy.ext.asyncio") for i in _imports(tree)), name


@pytest.mark.req("ARCH-SQL-PLACES")
def test_the_check_sees_a_violation() -> None:
    """The source check is not blind: an HTTP module running a statement is caught."""
    tree = ast.parse("import sqlalchemy as sa\n"
                     "async def f(tx):\n    await tx.execute(sa.text('x'))\n")
    assert _imports(tree) == {"sqlalchemy"}
    assert _executes(tree) == [3]
