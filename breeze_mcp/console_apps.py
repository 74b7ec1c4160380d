"""The console's Connected apps page (``/console/apps``) and its actions.

Every member sees the OAuth grants they made in the organization and may disconnect them;
owners and admins see everyone's, and may also disconnect an app everywhere, block it for a
while and lift its block. Each action is a CSRF-protected form (no JavaScript needed) that
calls the service the admin API calls (:mod:`breeze_mcp.auth.oauth.apps`), which decides
what the person's role allows and audits the action, or its refusal, in the request's tenant
transaction; a refusal is a 403 (or 404) page, never just a hidden button.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from breeze_mcp.auth.accounts import REFUSAL_STATUS
from breeze_mcp.auth.oauth import apps, blocks, plausible_client_id
from breeze_mcp.console import Console, console_render, open_console
from breeze_mcp.forms import Fields
from breeze_mcp.http_request import Route
from breeze_mcp.web import checked_form, error_page, page_query

__all__ = [
    "BLOCK_PERIODS",
    "ROUTES",
    "apps_page",
    "block_submit",
    "disconnect_everywhere_submit",
    "disconnect_submit",
    "unblock_submit",
]

#: The periods the page offers for a block, in days, with their words.
BLOCK_PERIODS: tuple[tuple[int, str], ...] = (
    (1, "1 day"), (7, "7 days"), (30, "30 days"), (90, "90 days"),
    (blocks.MAX_BLOCK_DAYS, f"{blocks.MAX_BLOCK_DAYS} days"),
)

_DONE = {
    "disconnected": "Disconnected: the app's access ended at once.",
    "everywhere": "Disconnected everywhere: every connection of the app in this organization "
                  "ended at once.",
    "blocked": "Blocked: the app's connections ended, and nobody can connect it to this "
               "organization until the block ends.",
    "unblocked": "Unblocked: members may connect the app again.",
}
_REFUSED_TITLE: dict[apps.Refusal, str] = {
    "role": "Not allowed", "not_found": "Not found", "invalid": "Bad request"}


def _when(moment: dt.datetime | None) -> str:
    return blocks.utc_text(moment) if moment is not None else "never"


def _app_name(name: str | None, client_id: str) -> str:
    return name or client_id


async def apps_page(request: Request) -> Response:
    """``GET /console/apps``: the connections the person may see, and for owners and admins
    the organization's apps and blocks."""
    query = page_query(request)
    if isinstance(query, Response):
        return query
    async with open_console(request, "apps") as console:
        if isinstance(console, Response):
            return console
        principal, tx = console.principal, console.tx
        governing = apps.governs(principal)
        grants = await apps.connected_apps(tx, principal)
        clients = await apps.tenant_clients(tx, principal.tenant_id) if governing else []
        open_blocks = await blocks.list_blocks(tx, principal.tenant_id) if governing else []
        await tx.finish(principal.audit_entry(
            console.context, action="console.apps", decision="allowed", outcome="success",
            parameters={"everyone": governing}))
        return console_render(request, console, "apps.html", {
            "governing": governing,
            "message": _DONE.get(query.get("done") or ""),
            "grants": [{
                "id": str(g.id), "app": _app_name(g.client_name, g.client_id),
                "host": g.client_host, "person": g.user_email, "scopes": ", ".join(g.scopes),
                "created": _when(g.created_at), "last_used": _when(g.last_used_at),
            } for g in grants],
            "clients": [{
                "id": c.client_id, "app": _app_name(c.client_name, c.client_id),
                "hosts": ", ".join(c.hosts), "grants": c.grants, "people": c.people,
                "last_used": _when(c.last_used_at),
                "blocked_until": _when(c.blocked_until) if c.blocked_until else None,
            } for c in clients],
            "blocks": [{
                "id": b.client_id, "app": _app_name(b.client_name, b.client_id),
                "until": _when(b.until), "since": _when(b.created_at),
                "by": b.created_by_email or "someone no longer here",
            } for b in open_blocks],
            "periods": BLOCK_PERIODS,
        }, page="apps")


Action = Callable[[Console, Fields], Awaitable[apps.Outcome]]


async def _act(request: Request, action: Action, done: str) -> Response:
    """A Connected apps form: CSRF first, then the service in the request's transaction,
    committed with the entries it wrote (the action's, or its refusal's)."""
    form = await checked_form(request)
    if isinstance(form, Response):
        return form
    async with open_console(request, "apps") as console:
        if isinstance(console, Response):
            return console
        outcome = await action(console, form)
        await console.tx.finish(None)
        if outcome.refused is not None:
            title, status = (_REFUSED_TITLE[outcome.refused],
                             REFUSAL_STATUS[outcome.refused])
            return console_render(request, console, "apps_refused.html", {
                "title": title, "message": outcome.message[:1].upper() + outcome.message[1:]},
                page="apps", status=status)
    return RedirectResponse(f"/console/apps?done={done}", status_code=303)


def _grant_id(request: Request) -> uuid.UUID | None:
    try:
        return uuid.UUID(request.path_params["grant_id"])
    except ValueError:
        return None


def _client_id(request: Request) -> str | None:
    client_id: str = request.path_params["client_id"]
    return client_id if plausible_client_id(client_id) else None


def _not_found(request: Request, what: str) -> Response:
    return error_page(request, "Not found", f"No such {what}.", status=404)


async def disconnect_submit(request: Request) -> Response:
    """``POST /console/apps/grants/{grant_id}/disconnect``: one grant, the person's own or
    (owner, admin) anyone's."""
    grant_id = _grant_id(request)
    if grant_id is None:
        return _not_found(request, "connection")

    async def act(console: Console, form: Fields) -> apps.Outcome:
        return await apps.disconnect(console.tx, console.principal, grant_id, console.context)

    return await _act(request, act, "disconnected")


async def disconnect_everywhere_submit(request: Request) -> Response:
    """``POST /console/apps/clients/{client_id}/disconnect``: every grant of the app in the
    organization, in one transaction (owner, admin)."""
    client_id = _client_id(request)
    if client_id is None:
        return _not_found(request, "app")

    async def act(console: Console, form: Fields) -> apps.Outcome:
        return await apps.disconnect_everywhere(console.tx, console.principal, client_id,
                                                console.context)

    return await _act(request, act, "everywhere")


def _days(value: str | None) -> Any:
    """The form's period: a whole number of days, or what was typed, for the service to
    refuse."""
    return int(value) if value is not None and value.isdigit() and len(value) < 6 else value


async def block_submit(request: Request) -> Response:
    """``POST /console/apps/clients/{client_id}/block`` (``days``): block the app in the
    organization and end its connections (owner, admin)."""
    client_id = _client_id(request)
    if client_id is None:
        return _not_found(request, "app")

    async def act(console: Console, form: Fields) -> apps.Outcome:
        return await apps.block_client(console.tx, console.principal, client_id,
                                       console.context, days=_days(form.get("days")))

    return await _act(request, act, "blocked")


async def unblock_submit(request: Request) -> Response:
    """``POST /console/apps/clients/{client_id}/unblock``: lift the app's block (owner,
    admin)."""
    client_id = _client_id(request)
    if client_id is None:
        return _not_found(request, "blocked app")

    async def act(console: Console, form: Fields) -> apps.Outcome:
        return await apps.unblock_client(console.tx, console.principal, client_id,
                                         console.context)

    return await _act(request, act, "unblocked")


#: The Connected apps page and its forms.
ROUTES = [
    Route("/console/apps", apps_page, methods=["GET"]),
    Route("/console/apps/grants/{grant_id}/disconnect", disconnect_submit, methods=["POST"]),
    Route("/console/apps/clients/{client_id:path}/disconnect", disconnect_everywhere_submit,
          methods=["POST"]),
    Route("/console/apps/clients/{client_id:path}/block", block_submit, methods=["POST"]),
    Route("/console/apps/clients/{client_id:path}/unblock", unblock_submit, methods=["POST"]),
]
