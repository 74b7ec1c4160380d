"""Database layer: engine and tenant transaction, table definitions, setup and migrations."""

from breeze_mcp.db.engine import Database, sqlalchemy_url

__all__ = ["Database", "sqlalchemy_url"]
