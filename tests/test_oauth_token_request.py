"""The ``/token`` request model and the OAuth error tree, as pure functions (the end-to-end
behaviour is in test_oauth_security.py and test_hostile_forms.py)."""

from __future__ import annotations

import pytest
from starlette.datastructures import ImmutableMultiDict

from breeze_mcp.auth import oauth
from breeze_mcp.auth.oauth import errors


def form(**fields: str) -> ImmutableMultiDict[str, str]:
    return ImmutableMultiDict(fields)


@pytest.mark.req("HARD-NO-5XX")
def test_each_grant_type_is_its_own_typed_request() -> None:
    code = oauth.parse_token_request(form(
        grant_type="authorization_code", client_id="bzi_x", code="bzc_1", code_verifier="v",
        redirect_uri="http://127.0.0.1/cb"))
    assert isinstance(code, oauth.AuthorizationCodeRequest)
    assert (code.code, code.code_verifier, code.resource) == ("bzc_1", "v", None)
    refresh = oauth.parse_token_request(form(grant_type="refresh_token", refresh_token="bzr_1",
                                             scope="ai:read", client_secret="s"))
    assert isinstance(refresh, oauth.RefreshTokenRequest)
    assert (refresh.refresh_token, refresh.scope) == ("bzr_1", "ai:read")


@pytest.mark.req("HARD-NO-5XX")
@pytest.mark.parametrize(("fields", "error", "description"), [
    ({}, errors.InvalidRequest, "grant_type is required"),
    ({"grant_type": ""}, errors.InvalidRequest, "grant_type is required"),
    ({"grant_type": "password"}, errors.UnsupportedGrantType,
     "use authorization_code or refresh_token"),
    ({"grant_type": "client_credentials", "code": "bzc_1"}, errors.UnsupportedGrantType,
     "use authorization_code or refresh_token"),
    ({"grant_type": "authorization_code"}, errors.InvalidRequest, "code is required"),
    ({"grant_type": "authorization_code", "code": ""}, errors.InvalidRequest,
     "code is required"),
    ({"grant_type": "refresh_token"}, errors.InvalidRequest, "refresh_token is required"),
    ({"grant_type": "refresh_token", "refresh_token": ""}, errors.InvalidRequest,
     "refresh_token is required"),
])
def test_a_missing_or_wrong_field_is_one_clear_error(
        fields: dict[str, str], error: type[errors.OAuthError], description: str) -> None:
    with pytest.raises(error) as raised:
        oauth.parse_token_request(form(**fields))
    assert type(raised.value) is error
    assert raised.value.status == 400
    assert raised.value.body() == {"error": error.error, "error_description": description}


@pytest.mark.req("OAUTH-INVALID-CLIENT")
def test_every_error_code_has_one_class_with_its_status() -> None:
    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, errors.OAuthError)
               and c not in (errors.OAuthError, errors.RegistrationError)]
    codes = [c.error for c in classes]
    assert len(codes) == len(set(codes))
    assert {c.error: c.status for c in classes if c.status != 400} == {
        "invalid_client": 401, "temporarily_unavailable": 503}
    assert issubclass(errors.InvalidRedirectUri, errors.RegistrationError)
    # A status can be overridden where the protocol says so (a refused body, a rate limit).
    refused = errors.InvalidRequest("too big", status=413, headers={"Connection": "close"})
    assert (refused.status, refused.headers) == (413, {"Connection": "close"})
    assert errors.InvalidRequest("x").status == 400
