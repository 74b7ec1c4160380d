"""The web console: the third front door of the one call pipeline, and its device and alert pages.

A console request is authenticated by the web session; its :class:`Principal` is built in the
organization's own tenant transaction (:func:`breeze_mcp.auth.sessions.console_principal`): the
actor is the person, the path ``session``, the credential the session, and the scopes every
scope the person's role allows, through the table that caps API keys and consent (readonly →
Tier 1, every other role → Tiers 1-3; Tier 4 never). :func:`open_console` is the one place
this happens, for every console page.

Every device and alert action, and every list and view, is a tool call through
:func:`breeze_mcp.pipeline.call_tool`, as over MCP and REST: the same gate, the same limits,
the same audit entry. Form fields become the tool's arguments by the tool's own JSON schema
(:func:`form_arguments`), so a browser's call is the same call a script makes. A Tier 3
action asks the person to confirm who they are (password, or a two-factor code) unless they
did within the last five minutes (:data:`breeze_mcp.auth.sessions.STEP_UP_SECONDS`); the
confirmation is audited (``auth.step_up``).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from breeze_mcp.auth import mfa, sessions
from breeze_mcp.auth.accounts import Organization, organizations_of
from breeze_mcp.auth.credentials import CredentialRejected
from breeze_mcp.auth.passwords import verify_password
from breeze_mcp.auth.principal import ADMIN_ROLES, Principal, RequestContext
from breeze_mcp.db.engine import State, Transaction
from breeze_mcp.edge import meter, request_context
from breeze_mcp.http_request import Route
from breeze_mcp.pipeline import CallResult, call_tool
from breeze_mcp.rest import ERROR_STATUS
from breeze_mcp.services import Services
from breeze_mcp.tools.registry import BLOCKED_TIER, ToolSpec
from breeze_mcp.web import (
    checked_form,
    current_user,
    error_page,
    page_query,
    render,
)

__all__ = [
    "ADMIN_ROLES",
    "ROUTES",
    "Console",
    "alerts_page",
    "call_submit",
    "console_home",
    "console_render",
    "device_page",
    "devices_page",
    "form_arguments",
    "open_console",
    "step_up_submit",
    "switch_organization",
]

#: The console's sections: (key, path, label, roles that see it; None: every member).
NAV: tuple[tuple[str, str, str, tuple[str, ...] | None], ...] = (
    ("devices", "/console/devices", "Devices", None),
    ("alerts", "/console/alerts", "Alerts", None),
    ("apps", "/console/apps", "Connected apps", None),
    ("keys", "/console/keys", "API keys", None),
    ("members", "/console/members", "Members", ADMIN_ROLES),
    ("audit", "/console/audit", "Audit log", ADMIN_ROLES),
    ("security", "/account", "Security", None),
)

STEP_UP_LIMIT = "10/15minute"


@dataclass
class Console:
    """One console request, authenticated: who, in which organization, and the tenant
    transaction its Principal was built in (the page finishes it, or the first tool call
    does)."""

    user: sessions.SessionUser
    principal: Principal
    tx: Transaction
    organization: Organization
    organizations: list[Organization]
    context: RequestContext
    services: Services

    async def call(self, name: str, arguments: Mapping[str, Any]) -> CallResult:
        """A tool call through the one pipeline: in the request's transaction while it is
        open, else in a tenant transaction of its own (make such calls after leaving
        :func:`open_console`'s block, so its connection is back in the pool first)."""
        tx = self.tx if self.tx.state is State.OPEN else None
        return await call_tool(self.services, self.principal, name, arguments, self.context,
                               tx)


def _sign_in(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)


@asynccontextmanager
async def open_console(request: Request, page: str, *,
                       roles: tuple[str, ...] | None = None,
                       metered: bool = True) -> AsyncIterator[Console | Response]:
    """The console's one door: the signed-in person, their organization, their Principal.

    Yields a :class:`Console`, or the response to send instead: sign-in for no session; a
    page saying what is missing when no organization of theirs is active; 403 when their
    role is not one of ``roles`` (audited: a refused page is a refused action); 429 when
    ``metered`` and the person's console limit is reached (tool calls are metered by the
    pipeline instead)."""
    services: Services = request.app.state.services
    user = await current_user(request)
    if user is None:
        yield _sign_in(request)
        return
    organizations = await organizations_of(services.db, user.user_id)
    active = [o for o in organizations if o.status == "active"]
    chosen = next((o for o in active if o.id == user.console_tenant_id),
                  active[0] if active else None)
    if chosen is None:
        yield render(request, "console_inactive.html",
                     {"organizations": organizations, "user_email": user.email}, status=403)
        return
    if chosen.id != user.console_tenant_id:
        await sessions.set_console_tenant(services.db, user, chosen.id)
    context = request_context(request, services)
    async with services.db.tenant(chosen.id, user_id=user.user_id) as tx:
        try:
            principal = await sessions.console_principal(
                tx, user, chosen.id, rate_limit=services.settings.console_rate_limit)
        except CredentialRejected:
            yield error_page(request, "No access", "You are no longer a member of this "
                             "organization.", status=403)
            return
        if roles is not None and principal.role not in roles:
            message = ("Only " + " and ".join(f"{r}s" for r in roles)
                       + " of the organization can open this page.")
            await tx.finish(principal.refusal_entry(context, f"console.{page}", "role",
                                                    message, {}))
            yield error_page(request, "Not allowed", message, status=403)
            return
        if metered:
            rate = await meter(request, services, principal, f"console.{page}", tx)
            if rate is not None and not rate.allowed:
                response = error_page(request, "Too many requests",
                                      "Wait a moment and try again.", status=429)
                response.headers.update(rate.headers())
                yield response
                return
        yield Console(user, principal, tx, chosen, organizations, context, services)


def console_render(request: Request, console: Console, template: str,
                   context: dict[str, Any], *, page: str, status: int = 200) -> HTMLResponse:
    """A console page: the template with the console's header (organization switcher,
    the sections the person's role may open, who is signed in)."""
    role = console.principal.role
    return render(request, template, {
        "console": {
            "page": page,
            "email": console.user.email,
            "organization": console.organization,
            "organizations": [o for o in console.organizations if o.status == "active"],
            "role": role,
            "tier_ceiling": console.principal.tier_ceiling,
            "nav": [(key, path, label) for key, path, label, roles in NAV
                    if roles is None or role in roles],
        },
        **context,
    }, status=status)


def _json_type(schema: Mapping[str, Any]) -> str | None:
    if isinstance(schema.get("type"), str):
        return str(schema["type"])
    for option in schema.get("anyOf", ()):
        if isinstance(option, Mapping) and option.get("type") not in (None, "null"):
            return str(option["type"])
    return None


def form_arguments(spec: ToolSpec, form: Mapping[str, str]) -> dict[str, Any]:
    """The tool's arguments from a form, by the tool's JSON schema: integers as numbers,
    arrays split on commas, spaces or lines, other values as typed; empty fields left out
    (the tool's defaults apply); fields the tool does not take are ignored. Whatever does not
    convert is passed as typed, for the pipeline to refuse with its usual message."""
    properties = spec.input_model.model_json_schema().get("properties", {})
    arguments: dict[str, Any] = {}
    for name, schema in properties.items():
        raw = form.get(name)
        if raw is None or not raw.strip():
            continue
        kind = _json_type(schema)
        if kind == "integer" and re.fullmatch(r"-?\d{1,12}", raw.strip()):
            arguments[name] = int(raw.strip())
        elif kind == "array":
            arguments[name] = [part for part in re.split(r"[\s,]+", raw) if part]
        elif kind == "boolean":
            arguments[name] = raw in ("true", "on", "1")
        else:
            arguments[name] = raw
    return arguments


async def console_home(request: Request) -> Response:
    return RedirectResponse("/console/devices", status_code=303)


async def switch_organization(request: Request) -> Response:
    """``POST /console/organization``: act in another of the person's active organizations
    (a preference of this session; membership is checked on every request)."""
    services: Services = request.app.state.services
    form = await checked_form(request)
    if isinstance(form, Response):
        return form
    user = await current_user(request)
    if user is None:
        return _sign_in(request)
    active = {str(o.id): o for o in await organizations_of(services.db, user.user_id)
              if o.status == "active"}
    chosen = active.get(form.get("tenant_id") or "")
    if chosen is None:
        return error_page(request, "Not found", "No such organization of yours.", status=404)
    await sessions.set_console_tenant(services.db, user, chosen.id)
    return RedirectResponse("/console/devices", status_code=303)


def _query_arguments(spec: ToolSpec | None, query: Mapping[str, str]) -> dict[str, Any]:
    return form_arguments(spec, query) if spec is not None else {}


async def _tool_page(request: Request, page: str, calls: list[tuple[str, dict[str, Any]]],
                     template: str, context: dict[str, Any]) -> Response:
    """A page made of tool calls (each through the pipeline, each audited); the first
    refused call is the page's answer. The first call runs in the door's transaction; the
    others each in their own, once the door's connection is back in the pool (a page never
    holds two connections, so a busy pool cannot deadlock on pages waiting for a second)."""
    async with open_console(request, page, metered=False) as console:
        if isinstance(console, Response):
            return console
        results = [await console.call(*calls[0])]
    for name, arguments in calls[1:]:
        if results[-1].status != "ok":
            break
        results.append(await console.call(name, arguments))
    if results[-1].status != "ok":
        return _call_failed(request, console, results[-1], page=page)
    return console_render(request, console, template, {
        **context, "results": [r.result or {} for r in results], "tools": _tools(console)},
        page=page)


def _tools(console: Console) -> dict[str, ToolSpec]:
    return {spec.name: spec for spec in console.services.registry}


async def _listing_page(request: Request, page: str, tool: str, template: str) -> Response:
    """A page of one listing tool's results, the query string its filters (the arguments
    its schema has)."""
    query = page_query(request)
    if isinstance(query, Response):
        return query
    services: Services = request.app.state.services
    arguments = _query_arguments(services.registry.get(tool), query)
    return await _tool_page(request, page, [(tool, arguments)], template,
                            {"filters": _filters(arguments)})


async def devices_page(request: Request) -> Response:
    """``/console/devices``: ``list_devices`` with the page's filters."""
    return await _listing_page(request, "devices", "list_devices", "devices.html")


async def device_page(request: Request) -> Response:
    """``/console/devices/{id}``: ``get_device``, its alerts and notes, and every device
    action as a form, each button showing its tier."""
    try:
        device_id = str(uuid.UUID(request.path_params["device_id"]))
    except ValueError:
        return error_page(request, "Not found", "No such device.", status=404)
    return await _tool_page(request, "devices", [
        ("get_device", {"device_id": device_id}),
        ("query_alerts", {"device_id": device_id}),
        ("list_notes", {"device_id": device_id}),
    ], "device.html", {"device_id": device_id})


async def alerts_page(request: Request) -> Response:
    """``/console/alerts``: ``query_alerts`` with the page's filters, and the alert actions."""
    return await _listing_page(request, "alerts", "query_alerts", "alerts.html")


def _filters(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """A list page's filters, for its links (paging is added by the link itself)."""
    return {k: v for k, v in arguments.items() if k not in ("offset", "limit")}


def _safe_back(value: str | None) -> str:
    if value and value.startswith("/console/") and not value.startswith("//") \
            and "\\" not in value and len(value) < 2000:
        return value
    return "/console/devices"


def _call_failed(request: Request, console: Console, result: CallResult, *,
                 page: str, back: str = "/console/devices") -> HTMLResponse:
    code = result.error_code if result.status == "tool_error" and result.error_code \
        else result.status
    status = ERROR_STATUS.get(code, 400)
    response = console_render(request, console, "call_result.html", {
        "ok": False, "result": result, "back": back, "facts": []}, page=page, status=status)
    if result.rate is not None and result.status == "rate_limited":
        response.headers.update(result.rate.headers())
    return response


def _facts(result: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """The top-level plain values of a tool's result, for the confirmation page."""
    return [(key.replace("_", " "), str(value)) for key, value in (result or {}).items()
            if isinstance(value, str | int | float) and not isinstance(value, bool)]


async def _run(request: Request, console: Console, name: str, arguments: dict[str, Any],
               back: str) -> Response:
    result = await console.call(name, arguments)
    if result.status != "ok":
        return _call_failed(request, console, result, page="call", back=back)
    return console_render(request, console, "call_result.html", {
        "ok": True, "result": result, "back": back, "facts": _facts(result.result)},
        page="call")


async def call_submit(request: Request) -> Response:
    """``POST /console/tools/{name}``: one tool call from a console form, through the
    pipeline. A Tier 3 call the person may make asks them to confirm who they are first,
    unless they did within the last five minutes."""
    services: Services = request.app.state.services
    form = await checked_form(request)
    if isinstance(form, Response):
        return form
    name = request.path_params["name"]
    spec = services.registry.get(name)
    arguments = form_arguments(spec, form) if spec is not None else {}
    tier = spec.effective_tier(arguments) if spec is not None else BLOCKED_TIER
    back = _safe_back(form.get("next"))
    async with open_console(request, "call", metered=False) as console:
        if isinstance(console, Response):
            return console
        if tier == 3 and console.principal.tier_ceiling >= 3 and not console.user.stepped_up:
            return _step_up_form(request, console, name, arguments, back, error=None)
        return await _run(request, console, name, arguments, back)


def _step_up_form(request: Request, console: Console, name: str, arguments: dict[str, Any],
                  back: str, *, error: str | None, status: int = 200) -> HTMLResponse:
    return console_render(request, console, "step_up.html", {
        "tool": name, "arguments": json.dumps(arguments, sort_keys=True), "back": back,
        "summary": urlencode(arguments, doseq=True).replace("&", ", ").replace("=", ": "),
        "error": error}, page="call", status=status)


async def step_up_submit(request: Request) -> Response:
    """``POST /console/step-up``: the person confirms who they are with their password or a
    two-factor code (audited ``auth.step_up`` either way), then the Tier 3 call they asked
    for runs."""
    services: Services = request.app.state.services
    form = await checked_form(request)
    if isinstance(form, Response):
        return form
    name = form.get("tool") or ""
    back = _safe_back(form.get("next"))
    try:
        arguments = json.loads(form.get("arguments") or "{}")
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        return error_page(request, "Bad request", "The form was altered.", status=400)
    async with open_console(request, "step_up", metered=False) as console:
        if isinstance(console, Response):
            return console
        user = console.user
        decision = await services.limiter.hit(f"step-up:{user.user_id}", STEP_UP_LIMIT)
        if not decision.allowed:
            response = error_page(request, "Too many attempts", "Wait a while and try again.",
                                  status=429)
            response.headers.update(decision.headers())
            return response
        code, password = (form.get("code") or "").strip(), form.get("password") or ""
        method = "code" if code else "password"
        if code:
            confirmed = await mfa.verify(services.db, services.settings, user.user_id,
                                         code) is not None
        else:
            candidate = await sessions.login_candidate(services.db, user.email)
            confirmed = bool(password) and verify_password(
                candidate.password_hash if candidate else None, password)
        entry = console.principal.audit_entry(
            console.context, action="auth.step_up", parameters={"method": method, "for": name},
            decision="allowed" if confirmed else "denied",
            outcome="success" if confirmed else "blocked",
            deny_reason=None if confirmed else f"wrong_{method}")
        if not confirmed:
            await console.tx.finish(entry)
            return _step_up_form(request, console, name, arguments, back, status=401,
                                 error="That did not match. Try again.")
        await sessions.mark_stepped_up(console.tx, user)
        await console.tx.finish(entry)
    return await _run(request, console, name, arguments, back)  # the door's connection is back


#: The console's device and alert pages, and its one tool-call form target.
ROUTES = [
    Route("/console", console_home, methods=["GET"]),
    Route("/console/organization", switch_organization, methods=["POST"]),
    Route("/console/devices", devices_page, methods=["GET"]),
    Route("/console/devices/{device_id}", device_page, methods=["GET"]),
    Route("/console/alerts", alerts_page, methods=["GET"]),
    Route("/console/tools/{name}", call_submit, methods=["POST"]),
    Route("/console/step-up", step_up_submit, methods=["POST"]),
]
