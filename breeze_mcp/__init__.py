"""Breeze MCP: an MCP server with built-in authentication and authorization for MSPs."""

__version__ = "0.1.0"
