"""Connected apps: a tenant's OAuth grants as its people see them, and what each may do.

The console's *Connected apps* page and the admin API call these functions, so an action
leaves the same audit entries whichever door it came through; only the principal differs (a
session or an API key). Who may do what is decided here, from the principal's role at this
request:

* every member sees and disconnects the grants they made; owners and admins
  (:data:`~breeze_mcp.auth.principal.ADMIN_ROLES`) see and disconnect everyone's;
* only owners and admins disconnect an app everywhere, block it or lift its block.

Revocations go through :mod:`.revocation` (one ``oauth.grant_revoked`` entry per grant); a
block is ``oauth.client_blocked`` (with the revocations it makes), lifting it
``oauth.client_unblocked``. A refusal is audited too, under the action it refused:
``forbidden`` (decision ``denied``, ``deny_reason`` ``role``), ``invalid`` (denied,
``invalid_request``) or ``not_found`` (an error). Every function here leaves ``tx`` open,
its entries written in it, for the caller to finish.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa

from breeze_mcp import audit
from breeze_mcp.auth.oauth import blocks
from breeze_mcp.auth.oauth.grants import list_tenant_grants
from breeze_mcp.auth.oauth.registration import redirect_host
from breeze_mcp.auth.oauth.revocation import revoke_client_grants, revoke_grant
from breeze_mcp.auth.principal import ADMIN_ROLES, Principal, RequestContext
from breeze_mcp.db.engine import Transaction
from breeze_mcp.db.models import oauth_client_blocks, oauth_clients, oauth_grants

__all__ = [
    "AppClient",
    "AppGrant",
    "Outcome",
    "Refusal",
    "block_client",
    "connected_apps",
    "disconnect",
    "disconnect_everywhere",
    "governs",
    "refuse",
    "tenant_clients",
    "unblock_client",
]

#: The refusals of these actions (a subset of
#: :data:`~breeze_mcp.auth.principal.RefusalCode`): the role may not, not there, malformed.
Refusal = Literal["role", "not_found", "invalid"]


@dataclass(frozen=True)
class Outcome:
    """What an action did, or why it did nothing (``refused``, with a message to show)."""

    refused: Refusal | None = None
    message: str = ""
    revoked: tuple[uuid.UUID, ...] = ()
    #: The client's block's end, after a block.
    until: dt.datetime | None = None


@dataclass(frozen=True)
class AppGrant:
    """One live grant, as the Connected apps page and the API list it."""

    id: uuid.UUID
    client_id: str
    client_name: str | None
    #: Where its consent sent the code: the redirect URI's host.
    client_host: str
    user_id: uuid.UUID
    user_email: str
    scopes: tuple[str, ...]
    created_at: dt.datetime
    last_used_at: dt.datetime | None


@dataclass(frozen=True)
class AppClient:
    """A client with grants (or a block) in the tenant."""

    client_id: str
    client_name: str | None
    #: The hosts of its registered redirect URIs.
    hosts: tuple[str, ...]
    #: Its live grants in the tenant, and the people who made them.
    grants: int
    people: int
    last_used_at: dt.datetime | None
    blocked_until: dt.datetime | None

    def json(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id, "client_name": self.client_name,
            "hosts": list(self.hosts), "live_grants": self.grants, "people": self.people,
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
            "blocked": self.blocked_until is not None,
            "blocked_until": self.blocked_until.isoformat() if self.blocked_until else None,
        }


def governs(principal: Principal) -> bool:
    """Whether the principal's role governs every member's apps (owner, admin)."""
    return principal.role in ADMIN_ROLES


async def refuse(tx: Transaction, principal: Principal, request: RequestContext, action: str,
                 refusal: Refusal, message: str, client_id: str | None,
                 parameters: dict[str, Any]) -> Outcome:
    """Audit a refused request (in ``tx``, which the caller finishes) and say why, in the one
    shape of a refusal (:meth:`~breeze_mcp.auth.principal.Principal.refusal_entry`), with the
    client it names."""
    entry = principal.refusal_entry(request, action, refusal, message, parameters)
    await audit.write(tx, dataclasses.replace(entry, client_id=client_id))
    return Outcome(refused=refusal, message=message)


def _revoker(principal: Principal, request: RequestContext) -> dict[str, Any]:
    """The revocation entries' actor fields: the principal's."""
    return {"actor_type": principal.actor_type, "actor_id": principal.actor_id,
            "auth_path": principal.auth_path, "acting_user_id": principal.acting_user_id,
            "request": request}


async def connected_apps(tx: Transaction, principal: Principal) -> list[AppGrant]:
    """The tenant's live grants for an owner or admin; the person's own for anyone else."""
    rows = await list_tenant_grants(
        tx, principal.tenant_id,
        user_id=None if governs(principal) else principal.acting_user_id or uuid.UUID(int=0))
    return [AppGrant(id=r.id, client_id=r.client_id, client_name=r.client_name,
                     client_host=redirect_host(r.redirect_uri or r.redirect_uris[0]),
                     user_id=r.user_id, user_email=r.email, scopes=tuple(r.scopes),
                     created_at=r.created_at, last_used_at=r.last_used_at)
            for r in rows]


async def tenant_clients(tx: Transaction, tenant_id: uuid.UUID) -> list[AppClient]:
    """Every client that has had a grant in the tenant, or is blocked in it: its live grants,
    the people who made them, when one was last used, its open block's end. Most used
    first."""
    g = oauth_grants
    live = g.c.revoked_at.is_(None)
    known = sa.union(
        sa.select(g.c.client_id).where(g.c.tenant_id == tenant_id),
        sa.select(oauth_client_blocks.c.client_id)
        .where(oauth_client_blocks.c.tenant_id == tenant_id),
    ).subquery()
    grants = sa.func.count(g.c.id).filter(live)
    query = (
        sa.select(
            oauth_clients.c.client_id, oauth_clients.c.client_name,
            oauth_clients.c.redirect_uris, grants.label("grants"),
            sa.func.count(sa.distinct(g.c.user_id)).filter(live).label("people"),
            sa.func.max(g.c.last_used_at).filter(live).label("last_used_at"),
            blocks.open_block_until(tenant_id, oauth_clients.c.client_id)
            .label("blocked_until"),
        )
        .join(known, known.c.client_id == oauth_clients.c.client_id)
        .outerjoin(g, (g.c.client_id == oauth_clients.c.client_id) & (g.c.tenant_id == tenant_id))
        .group_by(oauth_clients.c.client_id)
        .order_by(grants.desc(), oauth_clients.c.client_name, oauth_clients.c.client_id)
    )
    return [AppClient(client_id=r.client_id, client_name=r.client_name,
                      hosts=tuple(sorted({redirect_host(u) for u in r.redirect_uris})),
                      grants=r.grants, people=r.people, last_used_at=r.last_used_at,
                      blocked_until=r.blocked_until)
            for r in (await tx.execute(query)).all()]


async def disconnect(tx: Transaction, principal: Principal, grant_id: uuid.UUID,
                     request: RequestContext) -> Outcome:
    """Revoke one grant: the person's own, or (an owner or admin) anyone's in the tenant.
    Someone else's grant is, to a member who may not touch it, no grant at all."""
    me = principal.acting_user_id
    revoked = me is not None and await revoke_grant(
        tx, principal.tenant_id, grant_id, owner=me, reason="disconnected_by_user",
        **_revoker(principal, request))
    if not revoked and governs(principal):
        revoked = await revoke_grant(tx, principal.tenant_id, grant_id,
                                     reason="revoked_by_admin", **_revoker(principal, request))
    if revoked:
        return Outcome(revoked=(grant_id,))
    return await refuse(tx, principal, request, "oauth.grant_revoked", "not_found",
                         "no such connection", None, {"grant_id": str(grant_id)})


async def disconnect_everywhere(tx: Transaction, principal: Principal, client_id: str,
                                request: RequestContext) -> Outcome:
    """An owner or admin revokes every live grant of the client in the tenant, all in
    ``tx`` (one ``oauth.grant_revoked`` each)."""
    if not governs(principal):
        return await refuse(tx, principal, request, "oauth.grant_revoked", "role",
                             "only owners and admins disconnect an app everywhere", client_id,
                             {"client_id": client_id, "everywhere": True})
    ids = await revoke_client_grants(tx, principal.tenant_id, client_id,
                                     reason="client_revoked_by_admin",
                                     **_revoker(principal, request))
    return Outcome(revoked=tuple(ids))


async def block_client(tx: Transaction, principal: Principal, client_id: str,
                       request: RequestContext, *, days: object = None, until: object = None,
                       now: dt.datetime | None = None) -> Outcome:
    """An owner or admin blocks the client in the tenant for ``days`` or ``until`` a time
    (:func:`~breeze_mcp.auth.oauth.blocks.block_end`), and revokes its grants in the same
    transaction: no new grant, no code exchanged, no token refreshed until the block ends or
    is lifted. A block while one is open sets its new end."""
    action = "oauth.client_blocked"
    asked = {"client_id": client_id, "days": days, "until": until}
    if not governs(principal):
        return await refuse(tx, principal, request, action, "role",
                             "only owners and admins block an app", client_id, asked)
    try:
        end = blocks.block_end(now or dt.datetime.now(dt.UTC), days=days, until=until)
    except ValueError as exc:
        return await refuse(tx, principal, request, action, "invalid", str(exc), client_id,
                             asked)
    client = await blocks.lock_client(tx, client_id)
    if client is None:
        return await refuse(tx, principal, request, action, "not_found", "no such client",
                             None, asked)
    replaced = await blocks.put_block(tx, principal.tenant_id, client_id, end,
                                      principal.acting_user_id)
    ids = await revoke_client_grants(tx, principal.tenant_id, client_id, reason="client_blocked",
                                     **_revoker(principal, request))
    entry = principal.audit_entry(
        request, action=action, decision="allowed", outcome="success", parameters={
            **asked, "blocked_until": end.isoformat(), "grants_revoked": len(ids),
            "replaced_until": replaced.isoformat() if replaced else None})
    await audit.write(tx, dataclasses.replace(entry, client_id=client_id))
    return Outcome(revoked=tuple(ids), until=end)


async def unblock_client(tx: Transaction, principal: Principal, client_id: str,
                         request: RequestContext) -> Outcome:
    """An owner or admin lifts the client's open block in the tenant: new consents may
    grant it again (the grants the block revoked stay revoked)."""
    action = "oauth.client_unblocked"
    if not governs(principal):
        return await refuse(tx, principal, request, action, "role",
                             "only owners and admins unblock an app", client_id,
                             {"client_id": client_id})
    was = await blocks.lift_block(tx, principal.tenant_id, client_id, principal.acting_user_id)
    if was is None:
        return await refuse(tx, principal, request, action, "not_found",
                             "this app is not blocked", client_id,
                             {"client_id": client_id})
    entry = principal.audit_entry(
        request, action=action, decision="allowed", outcome="success",
        parameters={"client_id": client_id, "was_blocked_until": was.isoformat()})
    await audit.write(tx, dataclasses.replace(entry, client_id=client_id))
    return Outcome(until=was)
