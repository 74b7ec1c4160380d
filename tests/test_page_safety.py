"""Every page is safe by construction (issue 12, item 6), read off the application's routes.

Each HTML page the application serves — whatever its section, present or added later —
answers with the content-security policy (no framing, nonce'd styles and scripts only), the
referrer policy and no caching; and each state-changing form target refuses a post without
its CSRF token, signed in or not, changing nothing.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest
from starlette.routing import Route

from breeze_mcp.app import create_app
from tests.oauth_support import OAuthWorld, module_world
from tests.support import ProvisionedDatabase
from tests.test_console import signed_in

#: Surfaces that are not pages: JSON, OAuth protocol endpoints, MCP.
NOT_PAGES = ("/api/", "/.well-known/", "/mcp", "/token", "/register", "/revoke", "/healthz")


@pytest.fixture(scope="module")
def world(test_db: ProvisionedDatabase,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthWorld]:
    yield from module_world(test_db, tmp_path_factory)


def _routes(world: OAuthWorld, method: str) -> list[str]:
    app = create_app(world.settings, world.test_db.runtime_url)
    paths = []
    for route in app.routes:
        if not isinstance(route, Route) or method not in (route.methods or ()):
            continue
        if route.path == "/" or route.path.startswith(NOT_PAGES):
            continue
        paths.append(re.sub(r"\{[^}]+\}", str(uuid.uuid4()), route.path))
    assert paths
    return sorted(set(paths))


@pytest.mark.req("CONSOLE-SAFE-PAGES")
def test_every_page_carries_the_protective_headers(world: OAuthWorld) -> None:
    owner = signed_in(world, world.tech_email.replace("tech-", "owner-"))
    try:
        for path in _routes(world, "GET"):
            r = owner.http.get(path)
            if r.status_code in (301, 302, 303, 307):
                continue
            assert r.headers["content-type"].startswith("text/html"), (path, r.status_code)
            csp = r.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp, path
            assert re.search(r"script-src 'nonce-[^']+'", csp) or "script-src" not in csp
            assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, path
            assert r.headers["referrer-policy"] == "same-origin", path
            assert r.headers["x-frame-options"] == "DENY", path
            assert "no-store" in r.headers["cache-control"], path
    finally:
        owner.close()


@pytest.mark.req("CONSOLE-SAFE-PAGES", "HARD-CSRF-BOUND")
def test_every_form_target_refuses_a_post_without_its_csrf_token(world: OAuthWorld) -> None:
    owner = signed_in(world, world.tech_email.replace("tech-", "owner-"))
    try:
        before = world.owner_sql("SELECT count(*) FROM audit_log")[0][0]
        for path in _routes(world, "POST"):
            r = owner.http.post(path, data={"email": "x@example.com", "password": "x" * 20})
            # /authorize names no known client here: refused as such before its CSRF check.
            expected = (400, 403) if path == "/authorize" else (403,)
            assert r.status_code in expected, (path, r.status_code, r.text[:200])
        # Nothing a form does happened (a refused form is not an action of the tenant).
        assert world.owner_sql("SELECT count(*) FROM audit_log")[0][0] == before
    finally:
        owner.close()
