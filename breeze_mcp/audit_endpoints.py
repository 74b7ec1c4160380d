"""The audit log over HTTP: the console's page and export, and the admin API's query and export.

Both doors share :mod:`breeze_mcp.audit_query`: the same filters, the same keyset cursor and
the same export, read in the request's tenant transaction (row-level security walls it into
the caller's tenant). Owners and admins only: a technician is refused (403, audited) by the
console's door (:func:`breeze_mcp.console.open_console`) and by the admin API's
(:mod:`breeze_mcp.admin_api`), which also refuses OAuth access tokens. Every query and every
export writes one audit entry, with the filters as its parameters; a refused filter is
answered 400 and audited as an error.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from breeze_mcp import audit
from breeze_mcp.admin_api import admin_endpoint, refused
from breeze_mcp.audit_query import (
    MAX_PAGE_SIZE,
    MEDIA_TYPES,
    AuditQueryError,
    ExportRequest,
    PageRequest,
    cursor_key,
    entry_json,
    export_chunks,
    json_text,
    parse_request,
    read_batch,
    read_page,
)
from breeze_mcp.auth.principal import Principal, RequestContext
from breeze_mcp.console import ADMIN_ROLES, Console, console_render, open_console
from breeze_mcp.db.engine import Transaction
from breeze_mcp.edge import request_context
from breeze_mcp.forms import Fields, FormError, read_query
from breeze_mcp.http_request import Route
from breeze_mcp.services import Services
from breeze_mcp.web import page_query

__all__ = [
    "ROUTES",
    "audit_export_page",
    "audit_page",
    "export_audit_log",
    "query_audit_log",
]


def _key(services: Services) -> bytes:
    return cursor_key(services.settings.secret("session_key"))


def _entry(principal: Principal, context: RequestContext, action: str,
           parameters: Mapping[str, Any], error: str | None = None) -> audit.AuditEntry:
    """The audit entry of one read of the log (a page or an export), or of a refused one."""
    return principal.audit_entry(context, action=action, parameters=parameters,
                                 decision="allowed", outcome="error" if error else "success",
                                 error=error)


def _given(query: Fields) -> dict[str, str]:
    """What a refused query asked for, for its audit entry (redacted and capped there)."""
    return {name: value for name, value in query.multi_items()}


def _page_parameters(asked: PageRequest) -> dict[str, Any]:
    return {**asked.parameters(), "limit": asked.limit, "cursor": asked.cursor is not None}


def _export_response(services: Services, principal: Principal, asked: ExportRequest,
                     first: list[Any]) -> StreamingResponse:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        export_chunks(services.db, principal.tenant_id, asked, asked.format, first),
        media_type=MEDIA_TYPES[asked.format],
        headers={"Content-Disposition": f'attachment; filename="audit-{stamp}.{asked.format}"',
                 "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


# -- the console ---------------------------------------------------------------------------

_PRINTABLE_JSON_INDENT = 2


def _printable(text: str) -> str:
    """``text`` for the page: characters that are not printable (controls, bidi overrides,
    lone surrogates) shown as their code point, so nothing a caller sent can disguise what
    the page shows."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\n" else
                   (f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}")
                   for c in text)


def _actor_label(entry: Mapping[str, Any]) -> str:
    email = entry["acting_user_email"]
    if entry["actor_type"] == "api_key":
        return f"API key {entry['actor_id']}" + (f" (by {email})" if email else "")
    if entry["actor_type"] == "oauth_client":
        return f"{email or entry['acting_user_id']} via AI client {entry['actor_id']}"
    return str(email or entry["actor_id"] or "")


def _row_view(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry as the page shows it (every text printable)."""
    occurred = dt.datetime.fromisoformat(entry["occurred_at"])
    details = [(label, entry[name]) for label, name in (
        ("Request id", "request_id"), ("Actor type", "actor_type"), ("Actor id", "actor_id"),
        ("Acting user", "acting_user_email"), ("Credential", "credential_id"),
        ("OAuth client", "client_id"), ("Error", "error"), ("User agent", "user_agent"),
        ("Duration (ms)", "duration_ms"), ("Entry id", "id"))
        if entry[name] is not None]
    if entry["scopes"]:
        details.append(("Scopes", " ".join(entry["scopes"])))
    return {
        "occurred_at": entry["occurred_at"],
        "time": occurred.strftime("%Y-%m-%d %H:%M:%S"),
        "actor": _printable(_actor_label(entry)),
        "path": entry["auth_path"],
        "action": _printable(entry["action"]),
        "tier": entry["risk_tier"],
        "decision": entry["decision"],
        "outcome": entry["outcome"],
        "reason": _printable(entry["deny_reason"] or entry["error"] or ""),
        "client_ip": entry["client_ip"] or "",
        "details": [(label, _printable(str(value))) for label, value in details],
        "parameters": _printable(json.dumps(entry["parameters"], ensure_ascii=False,
                                            indent=_PRINTABLE_JSON_INDENT)),
    }


def _audit_render(request: Request, console: Console, *, form: Mapping[str, str],
                  rows: list[Any], next_cursor: str | None,
                  error: AuditQueryError | None = None) -> Response:
    """The audit page: the filter form (as typed), the entries, the next page and the
    export links carrying the same filters."""
    filters = {name: value for name, value in form.items()
               if name not in ("cursor", "format", "limit") and value}
    paged = {**filters, **({"limit": form["limit"]} if form.get("limit") else {})}
    next_query = urlencode({**paged, "cursor": next_cursor}) if next_cursor else None
    return console_render(request, console, "audit.html", {
        "form": form,
        "error": error.message if error else None,
        "error_field": error.name if error else None,
        "entries": [_row_view(entry_json(row)) for row in rows],
        "next_query": next_query,
        "export_jsonl": urlencode({**filters, "format": "jsonl"}),
        "export_csv": urlencode({**filters, "format": "csv"}),
        "max_page_size": MAX_PAGE_SIZE,
    }, page="audit", status=400 if error else 200)


def _form(query: Fields) -> dict[str, str]:
    """The form's fields as typed (the first value of each), to show them again."""
    return {name: query[name] for name in query}


async def audit_page(request: Request) -> Response:
    """``GET /console/audit``: a page of the organization's audit log, filtered; owners and
    admins only."""
    query = page_query(request)
    if isinstance(query, Response):
        return query
    services: Services = request.app.state.services
    async with open_console(request, "audit", roles=ADMIN_ROLES) as console:
        if isinstance(console, Response):
            return console
        try:
            asked = parse_request(PageRequest, query)
            page = await read_page(console.tx, console.principal.tenant_id, asked,
                                   _key(services))
        except AuditQueryError as exc:
            await console.tx.finish(_entry(console.principal, console.context,
                                           "console.audit", _given(query), exc.message))
            return _audit_render(request, console, form=_form(query), rows=[],
                                 next_cursor=None, error=exc)
        await console.tx.finish(_entry(console.principal, console.context, "console.audit",
                                       _page_parameters(asked)))
        return _audit_render(request, console, form=_form(query), rows=page.entries,
                             next_cursor=page.next_cursor)


async def audit_export_page(request: Request) -> Response:
    """``GET /console/audit/export?format=jsonl|csv&…``: every entry the filters select, as
    a download, streamed."""
    query = page_query(request)
    if isinstance(query, Response):
        return query
    services: Services = request.app.state.services
    async with open_console(request, "audit_export", roles=ADMIN_ROLES) as console:
        if isinstance(console, Response):
            return console
        try:
            asked = parse_request(ExportRequest, query)
        except AuditQueryError as exc:
            await console.tx.finish(_entry(console.principal, console.context,
                                           "console.audit_export", _given(query),
                                           exc.message))
            return _audit_render(request, console, form=_form(query), rows=[],
                                 next_cursor=None, error=exc)
        first = await read_batch(console.tx, console.principal.tenant_id, asked, None)
        await console.tx.finish(_entry(console.principal, console.context,
                                       "console.audit_export",
                                       {**asked.parameters(), "format": asked.format}))
        return _export_response(services, console.principal, asked, first)


# -- the admin API -------------------------------------------------------------------------

def _query_parameter(name: str, description: str, schema: dict[str, Any], *,
                     required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema}


_FILTER_PARAMETERS = (
    _query_parameter("from", "Entries from this instant (inclusive): ISO 8601, UTC when no "
                     "offset is given", {"type": "string", "format": "date-time"}),
    _query_parameter("to", "Entries before this instant (exclusive): ISO 8601",
                     {"type": "string", "format": "date-time"}),
    _query_parameter("actor", "A person's email (what they did through any door: their "
                     "sessions, their API keys, the AI clients they connected), or an actor "
                     "id (user, API key, OAuth client, system:cli)",
                     {"type": "string", "maxLength": 320}),
    _query_parameter("path", "The door: the entry's auth_path",
                     {"type": "string", "enum": ["session", "oauth", "api_key", "cli",
                                                 "system"]}),
    _query_parameter("action", "An action name, or a prefix ending in * (admin.*)",
                     {"type": "string", "maxLength": 200}),
    _query_parameter("tier", "Risk tier", {"type": "integer", "minimum": 1, "maximum": 4}),
    _query_parameter("decision", "", {"type": "string", "enum": ["allowed", "denied"]}),
    _query_parameter("outcome", "", {"type": "string", "enum": ["success", "error",
                                                                "blocked", "rate_limited"]}),
)

_ERRORS = {400: "A filter, the cursor, the limit or the format is not valid (the message "
                "names it)"}


def _json(body: Any, status: int = 200) -> Response:
    return Response(json_text(body), status_code=status, media_type="application/json",
                    headers={"Cache-Control": "no-store"})


async def _api_refusal(request: Request, principal: Principal, tx: Transaction,
                       action: str, query: Fields | None, message: str,
                       status: int = 400) -> Response:
    context = request_context(request, request.app.state.services)
    await tx.finish(_entry(principal, context, action,
                           _given(query) if query is not None else {}, message))
    return refused("bad_request", message, status)


@admin_endpoint("GET", "/api/v1/audit", operation_id="query_audit_log",
                summary="A page of the tenant's audit log, newest first, filtered",
                scope="ai:read", errors=_ERRORS, parameters=(
                    *_FILTER_PARAMETERS,
                    _query_parameter("cursor", "next_cursor of the previous page (same "
                                     "filters)", {"type": "string"}),
                    _query_parameter("limit", "Entries per page", {
                        "type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE,
                        "default": 50})))
async def query_audit_log(request: Request, principal: Principal, tx: Transaction) -> Response:
    """``{"entries": [...], "next_cursor": ...}``: one page; ``next_cursor`` is null on the
    last."""
    services: Services = request.app.state.services
    action = "admin.query_audit_log"
    try:
        query = read_query(request, services.settings)
    except FormError as exc:
        return await _api_refusal(request, principal, tx, action, None, exc.message,
                                  exc.status)
    try:
        asked = parse_request(PageRequest, query)
        page = await read_page(tx, principal.tenant_id, asked, _key(services))
    except AuditQueryError as exc:
        return await _api_refusal(request, principal, tx, action, query, exc.message)
    await tx.finish(_entry(principal, request_context(request, services), action,
                           _page_parameters(asked)))
    return _json({"entries": [entry_json(row) for row in page.entries],
                  "next_cursor": page.next_cursor})


@admin_endpoint("GET", "/api/v1/audit/export", operation_id="export_audit_log",
                summary="Every entry of the tenant's audit log the filters select, streamed "
                "as JSON Lines or CSV", scope="ai:read", errors=_ERRORS,
                produces=(MEDIA_TYPES["jsonl"], MEDIA_TYPES["csv"]), parameters=(
                    *_FILTER_PARAMETERS,
                    _query_parameter("format", "jsonl (one JSON entry a line, texts as sent) "
                                     "or csv (texts in the stored escaped form; formula-"
                                     "looking cells prefixed with ')",
                                     {"type": "string", "enum": ["jsonl", "csv"]},
                                     required=True)))
async def export_audit_log(request: Request, principal: Principal,
                           tx: Transaction) -> Response:
    services: Services = request.app.state.services
    action = "admin.export_audit_log"
    try:
        query = read_query(request, services.settings)
    except FormError as exc:
        return await _api_refusal(request, principal, tx, action, None, exc.message,
                                  exc.status)
    try:
        asked = parse_request(ExportRequest, query)
    except AuditQueryError as exc:
        return await _api_refusal(request, principal, tx, action, query, exc.message)
    first = await read_batch(tx, principal.tenant_id, asked, None)
    await tx.finish(_entry(principal, request_context(request, services), action,
                           {**asked.parameters(), "format": asked.format}))
    return _export_response(services, principal, asked, first)


#: The console's audit page and its export.
ROUTES = [
    Route("/console/audit", audit_page, methods=["GET"]),
    Route("/console/audit/export", audit_export_page, methods=["GET"]),
]
