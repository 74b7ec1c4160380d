"""OAuth 2.1 HTTP endpoints: discovery, registration, authorization, token, revocation.

* ``/.well-known/oauth-protected-resource[/mcp]`` (RFC 9728) and
  ``/.well-known/oauth-authorization-server`` (RFC 8414, also served as
  ``/.well-known/openid-configuration``) with one issuer string everywhere.
* ``POST /register`` (RFC 7591), rate-limited per source and capped globally.
* ``GET/POST /authorize``: sign-in, then consent; PKCE S256 only; exact redirect URI match
  (any port for loopback); ``resource`` validated and bound (RFC 8707); ``iss`` (RFC 9207)
  and ``state`` in the response; an organization that blocked the client is neither offered
  nor accepted. A bad client or redirect URI is an error page, never a
  redirect; so is any other error before the user approved, unless the signed-in user already
  holds a live grant for the client (RFC 9700 §4.11.2: no open redirector).
* ``POST /token``: ``authorization_code`` and ``refresh_token``; ``Cache-Control: no-store``.
* ``POST /revoke`` (RFC 7009).

A ``client_id`` that is an ``https`` URL names the client's metadata document (CIMD), which
:class:`~breeze_mcp.auth.oauth.ClientDocuments` resolves; everything after that is the same
for both kinds of client, but that the consent page names a document client's verified
domain and marks a registered one unverified.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import uuid
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from breeze_mcp.auth import oauth
from breeze_mcp.auth.oauth.errors import (
    InvalidClient,
    InvalidClientMetadata,
    InvalidRequest,
    InvalidTarget,
    OAuthError,
    TemporarilyUnavailable,
    UnsupportedResponseType,
)
from breeze_mcp.auth.oauth.registration import (
    is_loopback_redirect,
    parse_registration_body,
    redirect_host,
    redirect_uri_matches,
    validate_registration,
)
from breeze_mcp.auth.principal import ALL_SCOPES, RequestContext, effective_scopes
from breeze_mcp.edge import read_body, request_context
from breeze_mcp.forms import Fields, FormError, read_form, read_query
from breeze_mcp.http_request import RepeatedCredential, authorization
from breeze_mcp.services import Services
from breeze_mcp.web import (
    check_csrf,
    current_user,
    error_page,
    form_error_page,
    form_target_for,
    login_form,
    render,
)

__all__ = [
    "authorization_server_metadata",
    "authorize",
    "protected_resource_metadata",
    "register",
    "revoke",
    "token",
]

log = logging.getLogger(__name__)

SCOPE_WORDS = {
    "ai:read": "Read devices, alerts, device health and notes (Tier 1).",
    "ai:write": "Acknowledge, resolve and suppress alerts, add notes and switch maintenance "
    "mode (Tier 2).",
    "ai:execute": "Run scripts, deploy patches, isolate and reboot devices (Tier 3).",
}
#: What the protected resource advertises (``scopes_supported``) and what a consent request
#: without a usable ``scope`` asks for (ChatGPT reconnects without one).
RESOURCE_SCOPES = ALL_SCOPES
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# A refused body (413, 415) may be partly unread: the connection is not reused for another request.
_CLOSE = {"Connection": "close"}
AUTHORIZE_PARAMS = ("response_type", "client_id", "redirect_uri", "scope", "state",
                    "code_challenge", "code_challenge_method", "resource")


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _json(body: dict[str, Any], status: int = 200,
          headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers={**NO_STORE, **(headers or {})})


# Discovery ----------------------------------------------------------------------------------


def protected_resource_document(services: Services) -> dict[str, Any]:
    settings = services.settings
    return {
        "resource": settings.mcp_url,
        "authorization_servers": [settings.issuer],
        "scopes_supported": list(RESOURCE_SCOPES),
        "bearer_methods_supported": ["header"],
        "resource_name": "Breeze MCP",
    }


def authorization_server_document(services: Services) -> dict[str, Any]:
    issuer = services.settings.issuer
    auth_methods = ["none", "client_secret_post", "client_secret_basic", "private_key_jwt"]
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "registration_endpoint": f"{issuer}/register",
        "revocation_endpoint": f"{issuer}/revoke",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "token_endpoint_auth_signing_alg_values_supported": list(oauth.ALGORITHMS),
        "revocation_endpoint_auth_signing_alg_values_supported": list(oauth.ALGORITHMS),
        "client_id_metadata_document_supported": True,
        "scopes_supported": [*ALL_SCOPES, "offline_access"],
        "authorization_response_iss_parameter_supported": True,
        "service_documentation": f"{issuer}/",
    }


async def protected_resource_metadata(request: Request) -> Response:
    return JSONResponse(protected_resource_document(_services(request)),
                        headers={"Access-Control-Allow-Origin": "*"})


async def authorization_server_metadata(request: Request) -> Response:
    return JSONResponse(authorization_server_document(_services(request)),
                        headers={"Access-Control-Allow-Origin": "*"})


# Registration -------------------------------------------------------------------------------


async def register(request: Request) -> Response:
    services = _services(request)
    ctx = request_context(request, services)
    decision = await services.limiter.hit(
        f"dcr-ip:{ctx.rate_key}", services.settings.dcr_rate_limit)
    try:
        if not decision.allowed:
            raise TemporarilyUnavailable("too many registrations from this address",
                                         status=429, headers=decision.headers())
        global_decision = await services.limiter.hit("dcr-global",
                                                     services.settings.dcr_global_rate_limit)
        if not global_decision.allowed:
            raise TemporarilyUnavailable("registration is busy; try again shortly",
                                         status=429, headers=global_decision.headers())
        raw = await read_body(request, 64 * 1024)
        if raw is None:
            raise InvalidClientMetadata("body exceeds 65536 bytes")
        body = parse_registration_body(raw)
        reg = validate_registration(body, private_schemes=frozenset(
            services.settings.oauth_private_schemes))
        response, _ = await oauth.register_client(
            services.db, reg, client_ip=ctx.client_ip, request_id=ctx.request_id,
            max_pending=services.settings.dcr_max_pending)
    except OAuthError as exc:
        return _error_response(exc, request)
    return _json(response, 201)


# Authorization ------------------------------------------------------------------------------


def _redirect(redirect_uri: str, params: dict[str, str]) -> RedirectResponse:
    sep = "&" if urlsplit(redirect_uri).query else "?"
    return RedirectResponse(f"{redirect_uri}{sep}{urlencode(params)}", status_code=303,
                            headers=NO_STORE)


def _single(params: Fields, name: str) -> str | None:
    values = params.getlist(name)
    if len(values) > 1:
        raise InvalidRequest(f"{name} must not be repeated")
    return values[0] if values else None


async def _refused_before_approval(request: Request, services: Services, client: oauth.Client,
                                   redirect_uri: str, error: str, description: str,
                                   base: dict[str, str]) -> Response:
    """An error before the user approved. Anyone may register any redirect URI, so it is
    shown on our own page, naming where the client wanted to go; only a client the signed-in
    user has already approved (a live grant) gets it at its redirect URI."""
    user = await current_user(request)
    if user is not None and await oauth.user_has_live_grant(services.db, user.user_id,
                                                            client.client_id):
        return _redirect(redirect_uri, {"error": error, "error_description": description,
                                        **base})
    return error_page(
        request, "Request not accepted",
        f"{client.display_name} sent a request Breeze cannot accept ({error}: {description}).",
        hint=f"You were not sent back to {redirect_host(redirect_uri)}, because this "
        "application has not been approved from your account yet. Tell its developer, or "
        "reconnect from the application.")


async def authorize(request: Request) -> Response:
    services = _services(request)
    ctx = request_context(request, services)
    form: Fields | None = None
    try:
        if request.method == "POST":
            form = params = await read_form(request, services.settings)
        else:
            params = read_query(request, services.settings)
    except FormError as exc:
        return form_error_page(request, exc)

    # 1. Client and redirect URI: errors here are pages, never redirects.
    client_ids = params.getlist("client_id")
    redirect_uris = params.getlist("redirect_uri")
    if len(client_ids) != 1 or not client_ids[0]:
        return error_page(request, "Unknown application",
                          "The request does not name exactly one client_id.")
    try:
        client = await services.client_documents.find_client(client_ids[0], ctx)
    except InvalidClient as exc:  # a metadata document that cannot be had or used
        return error_page(request, "Application not recognised",
                          f"Breeze could not verify this application: {exc.description}.",
                          hint="Try again later; if it keeps failing, tell the application's "
                          "developer.")
    if client is None:
        return error_page(request, "Unknown application",
                          "This application is not registered (or its registration expired).",
                          hint="Reconnect from the application to register it again.")
    if len(redirect_uris) != 1 or not redirect_uri_matches(client.redirect_uris,
                                                           redirect_uris[0]):
        return error_page(request, "Invalid redirect",
                          "The redirect_uri is missing or is not registered for "
                          f"{client.display_name}.")
    redirect_uri = redirect_uris[0]
    state = params.get("state")
    base: dict[str, str] = {"iss": services.settings.issuer}
    if state is not None:
        base["state"] = state

    # 2. Everything else before approval: see _refused_before_approval.
    try:
        checked = _check_request(services, params, client)
    except OAuthError as exc:
        return await _refused_before_approval(request, services, client, redirect_uri,
                                              exc.error, exc.description, base)

    user = await current_user(request)
    if user is None:
        if request.method == "POST":
            return error_page(request, "Session expired", "Sign in again to continue.",
                              status=401)
        next_url = "/authorize?" + urlencode([(k, v) for k in AUTHORIZE_PARAMS
                                              for v in params.getlist(k)])
        return login_form(request, next_url=next_url, client_name=client.display_name)

    choices = await _tenant_choices(services, user.user_id)
    if not choices:
        return await _refused_before_approval(request, services, client, redirect_uri,
                                              "access_denied", "no active organization", base)
    # Organizations that blocked the client are not offered, nor accepted.
    blocked = await oauth.blocks.open_blocks(services.db, user.user_id, client.client_id,
                                             [uuid.UUID(c["id"]) for c in choices])
    offered = [c for c in choices if uuid.UUID(c["id"]) not in blocked]
    if not offered:
        return _blocked_page(request, client, choices, blocked)

    if form is None:
        return _consent_page(request, client, redirect_uri, checked, offered, user.email,
                             params, _blocked_in(choices, blocked))

    if not check_csrf(request, form):
        return error_page(request, "Form expired",
                          "This consent form is no longer valid. Start again from the "
                          "application.", status=403)
    if form.get("decision") != "approve":
        return _redirect(redirect_uri, {"error": "access_denied",
                                        "error_description": "the user denied the request",
                                        **base})
    try:
        tenant_id = uuid.UUID(form.get("tenant_id") or "")
    except ValueError:
        return error_page(request, "Bad request", "No organization was chosen.")
    if tenant_id in blocked:
        return _blocked_page(request, client, choices, {tenant_id: blocked[tenant_id]})
    role = next((c["role"] for c in offered if c["id"] == str(tenant_id)), None)
    if role is None:
        return error_page(request, "Bad request", "You are not a member of that organization.",
                          status=403)
    chosen = form.getlist("scope_choice")
    allowed = effective_scopes(role, checked["scopes"])
    granted = [s for s in ALL_SCOPES if s in chosen and s in allowed]
    if not granted:
        return _redirect(redirect_uri, {"error": "access_denied",
                                        "error_description": "no scope was granted", **base})
    try:
        code = await oauth.create_authorization(
            services.db, services.settings, tenant_id=tenant_id, client=client,
            user_id=user.user_id, scopes=granted, resource=checked["resource"],
            redirect_uri=redirect_uri, code_challenge=checked["code_challenge"],
            request=ctx, requested_scopes=checked["scopes"],
        )
    except oauth.ClientBlocked as exc:  # blocked since the page was shown
        return _blocked_page(request, client, choices, {tenant_id: exc.until})
    except OAuthError as exc:
        return _redirect(redirect_uri, {"error": exc.error,
                                        "error_description": exc.description, **base})
    return _redirect(redirect_uri, {"code": code, **base})


def _check_request(services: Services, params: Fields, client: oauth.Client) -> dict[str, Any]:
    response_type = _single(params, "response_type")
    if not response_type:
        raise InvalidRequest("response_type is required")
    if response_type != "code":
        raise UnsupportedResponseType("only response_type=code is supported")
    challenge = _single(params, "code_challenge")
    method = _single(params, "code_challenge_method")
    if not challenge:
        raise InvalidRequest("code_challenge is required (PKCE)")
    if method != "S256":
        raise InvalidRequest("code_challenge_method must be S256")
    if not oauth.CODE_CHALLENGE_PATTERN.match(challenge):
        raise InvalidRequest("code_challenge must be 43 base64url characters")
    resources = params.getlist("resource")
    if len(resources) > 1:
        raise InvalidTarget("only one resource may be requested")
    bound = services.settings.mcp_url
    if resources and oauth.normalize_resource(resources[0]) != bound:
        raise InvalidTarget(f"unknown resource; this server is {bound}")
    asked = [s for s in oauth.parse_scope(_single(params, "scope")) if s in ALL_SCOPES]
    if not asked:
        # No scope, or only unknown ones ("claudeai", "openid", dropped): the resource's
        # default scopes, and the human decides on the consent screen.
        asked = list(RESOURCE_SCOPES)
    state = _single(params, "state")
    if state is not None and len(state) > 2000:
        raise InvalidRequest("state is too long")
    return {"scopes": asked, "resource": bound, "code_challenge": challenge}


async def _tenant_choices(services: Services, user_id: uuid.UUID) -> list[dict[str, str]]:
    rows = await oauth.consentable_tenants(services.db, user_id)
    return [{"id": str(r.id), "name": r.name, "role": r.role} for r in rows]


def _blocked_in(choices: list[dict[str, str]],
                blocked: dict[uuid.UUID, dt.datetime]) -> list[dict[str, str]]:
    """The organizations of ``choices`` that blocked the client, with their blocks' ends."""
    return [{"name": c["name"], "until": oauth.blocks.utc_text(blocked[uuid.UUID(c["id"])])}
            for c in choices if uuid.UUID(c["id"]) in blocked]


def _blocked_page(request: Request, client: oauth.Client, choices: list[dict[str, str]],
                  blocked: dict[uuid.UUID, dt.datetime]) -> Response:
    """The client is blocked in the organization chosen, or in every one the person has."""
    where = "; ".join(f"{b['name']} until {b['until']}" for b in _blocked_in(choices, blocked))
    return error_page(
        request, "Application blocked",
        f"An administrator has blocked {client.display_name} in your organization ({where}).",
        hint="It cannot be connected there until then. An owner or admin can lift the block "
        "under Connected apps in the console.", status=403)


def _consent_page(request: Request, client: oauth.Client, redirect_uri: str,
                  checked: dict[str, Any], choices: list[dict[str, str]],
                  email: str, params: Fields, blocked: list[dict[str, str]]) -> Response:
    tenant_id = choices[0]["id"]
    role = choices[0]["role"]
    allowed = effective_scopes(role, checked["scopes"])
    scopes = [{"name": s, "words": SCOPE_WORDS[s], "allowed": s in allowed}
              for s in checked["scopes"]]
    hidden = [(k, v) for k in AUTHORIZE_PARAMS for v in params.getlist(k)]
    return render(request, "consent.html", {
        "client_name": client.display_name, "redirect_host": redirect_host(redirect_uri),
        "verified_domain": client.verified_domain,
        "only_loopback": all(is_loopback_redirect(uri) for uri in client.redirect_uris),
        "user_email": email, "tenants": choices, "tenant_id": tenant_id, "scopes": scopes,
        "params": hidden, "error": None, "blocked": blocked,
    }, form_targets=[form_target_for(redirect_uri)])


# Token and revocation -----------------------------------------------------------------------


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    try:
        header = authorization(request.headers) or ""
    except RepeatedCredential as exc:
        raise InvalidRequest(str(exc)) from None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (ValueError, UnicodeDecodeError):  # binascii.Error, and non-ASCII input
        raise InvalidClient("malformed Basic credentials") from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise InvalidClient("malformed Basic credentials")
    return unquote(client_id), unquote(secret)  # RFC 6749 §2.3.1: form-urlencoded first


async def _client_from_form(request: Request, services: Services, form: Fields,
                            endpoint: str, ctx: RequestContext) -> oauth.Client:
    """The client that sent ``form`` to ``endpoint`` (``token`` or ``revoke``),
    authenticated."""
    presented = oauth.PresentedClient(
        client_id=form.get("client_id"), basic=_basic_credentials(request),
        secret=form.get("client_secret"), assertion_type=form.get("client_assertion_type"),
        assertion=form.get("client_assertion"))
    return await services.client_documents.authenticate(
        presented, endpoint=f"{services.settings.issuer}/{endpoint}",
        request=ctx)


async def _read_form(request: Request, services: Services) -> Fields:
    """The body through the one form reader; its refusals become OAuth errors (the 413 and
    415 keep their status, and close the connection so an unread body is never received)."""
    try:
        form = await read_form(request, services.settings)
    except FormError as exc:
        raise InvalidRequest(exc.message, status=exc.status,
                             headers=_CLOSE if exc.status != 400 else None) from None
    if len(form.multi_items()) != len(form):
        repeated = next(key for key in form if len(form.getlist(key)) > 1)
        raise InvalidRequest(f"{repeated} must not be repeated")
    return form


def _error_response(exc: OAuthError, request: Request) -> JSONResponse:
    """Any OAuth error as its JSON body and status, with the headers it carries; a failed
    Basic authentication also gets its challenge (RFC 6749 §5.2)."""
    headers = exc.headers
    if isinstance(exc, InvalidClient) and request.headers.get(
            "authorization", "").lower().startswith("basic"):
        headers = {**headers, "WWW-Authenticate": 'Basic realm="breeze-mcp"'}
    return _json(exc.body(), exc.status, headers)


async def token(request: Request) -> Response:
    services = _services(request)
    ctx = request_context(request, services)
    try:
        form = await _read_form(request, services)
        client = await _client_from_form(request, services, form, "token", ctx)
        asked = oauth.parse_token_request(form)
        if isinstance(asked, oauth.AuthorizationCodeRequest):
            result = await oauth.exchange_code(services.db, services.settings, client, asked,
                                               request=ctx)
        else:
            result = await oauth.refresh(services.db, services.settings, client, asked,
                                         request=ctx)
    except OAuthError as exc:
        return _error_response(exc, request)
    return _json(result.body())


async def revoke(request: Request) -> Response:
    services = _services(request)
    ctx = request_context(request, services)
    try:
        form = await _read_form(request, services)
        client = await _client_from_form(request, services, form, "revoke", ctx)
        value = form.get("token")
        if not value:
            raise InvalidRequest("token is required")
        await oauth.revoke_token(services.db, client, value, form.get("token_type_hint"), ctx)
    except OAuthError as exc:
        return _error_response(exc, request)
    return Response(status_code=200, headers=NO_STORE)
