"""Alembic environment: runs with the connection handed over by breeze_mcp.db.migrate."""

from __future__ import annotations

from alembic import context

from breeze_mcp.db.models import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `breeze-mcp migrate`, which supplies the connection")

context.configure(
    connection=connection,
    target_metadata=metadata,
    transaction_per_migration=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
