"""The OAuth flow end to end over HTTP (the detailed suites live beside this file)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.oauth_support import OAuthWorld, connect, mcp_call, module_world, refresh
from tests.support import ProvisionedDatabase


@pytest.fixture(scope="module")
def world(test_db: ProvisionedDatabase, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[OAuthWorld]:
    yield from module_world(test_db, tmp_path_factory)


@pytest.mark.req("SEED-OAUTH-DCR", "SEED-OAUTH-CONSENT", "SEED-OAUTH-ROTATE")
def test_register_authorize_call_refresh_revoke(world: OAuthWorld) -> None:
    client_id, tokens = connect(world, scopes=["ai:read", "ai:write"])
    assert tokens["scope"] == "ai:read ai:write" and tokens["token_type"] == "Bearer"
    assert tokens["access_token"].startswith("bza_") and tokens["refresh_token"].startswith("bzr_")
    listed = mcp_call(world, tokens["access_token"], "tools/list")
    assert listed.status_code == 200
    names = {t["name"] for t in listed.json()["result"]["tools"]}
    assert "add_note" in names and "run_script" not in names
    rotated = refresh(world, client_id, tokens["refresh_token"])
    assert rotated.status_code == 200
    new = rotated.json()
    assert new["refresh_token"] != tokens["refresh_token"]
    assert mcp_call(world, new["access_token"], "ping").status_code == 200
