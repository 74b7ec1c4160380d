"""Each module's ``__all__`` is its public surface, pinned: every name it lists exists, and
every public function or class the module defines is listed, or exempted below with the reason.

Like ``test_requirements``, this guards the code base itself rather than a behaviour, so it
names no requirement.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import breeze_mcp

#: Public names a module defines but does not export, each with why.
EXEMPT: dict[str, dict[str, str]] = {
    "breeze_mcp.cli": dict.fromkeys(
        ["CliError", "build_parser", "cmd_api_key_create", "cmd_api_key_list",
         "cmd_api_key_revoke", "cmd_audit_seal", "cmd_audit_verify", "cmd_demo_data",
         "cmd_migrate", "cmd_serve",
         "cmd_member_remove", "cmd_tenant_create", "cmd_tenant_list",
         "cmd_tenant_require_mfa", "cmd_user_create",
         "cmd_user_set_password", "cmd_user_suspend"],
        "the command line is the interface: `main` runs it, the commands are its parts"),
    "breeze_mcp.edge": {"prm_url": "a part of the exported bearer_challenge"},
    "breeze_mcp.forms": {"parse": "the core of the exported read_form and read_query"},
    "breeze_mcp.oauth_endpoints": dict.fromkeys(
        ["authorization_server_document", "protected_resource_document"],
        "the bodies behind the exported metadata endpoints"),
    "breeze_mcp.rest": {"openapi_document": "the body behind the exported openapi_endpoint"},
    "breeze_mcp.tools.alerts": dict.fromkeys(
        ["manage_alert", "query_alerts"], "handlers, reached through the exported ToolSpec"),
    "breeze_mcp.tools.devices": {
        **dict.fromkeys(["get_device", "get_device_health", "list_devices"],
                        "handlers, reached through the exported ToolSpec"),
        "metrics_summary": "a part of get_device's answer, used nowhere else",
    },
    "breeze_mcp.tools.jobs": dict.fromkeys(
        ["deploy_patches", "isolate_device", "manage_device", "run_script"],
        "handlers, reached through the exported ToolSpec"),
    "breeze_mcp.tools.notes": dict.fromkeys(
        ["add_note", "list_notes"], "handlers, reached through the exported ToolSpec"),
    "breeze_mcp.web": dict.fromkeys(
        ["cookies", "csrf_binding", "page_form", "page_query",
         "pre_session_cookie", "safe_next", "set_cookie"],
        "helpers of the console's own pages, used nowhere else"),
}

#: Modules left out whole, each with why.
SKIPPED = {
    # Running it is the command line itself (argparse exits on import).
    "breeze_mcp.__main__": "runs on import",
}


def _modules_with_all() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(breeze_mcp.__path__, "breeze_mcp."):
        if info.name in SKIPPED:
            continue
        if hasattr(importlib.import_module(info.name), "__all__"):
            names.append(info.name)
    return sorted(names)


MODULES = _modules_with_all()


def _defined_public(module: ModuleType) -> set[str]:
    """Functions and classes whose home is ``module`` (imports from elsewhere do not count)."""
    return {name for name, obj in vars(module).items()
            if not name.startswith("_")
            and (inspect.isfunction(obj) or inspect.isclass(obj))
            and obj.__module__ == module.__name__}


def test_the_package_is_covered() -> None:
    """The walk found the modules (an empty list would pass every case below)."""
    assert {"breeze_mcp.pipeline", "breeze_mcp.tools.registry", "breeze_mcp.db"} <= set(MODULES)
    assert set(EXEMPT) <= set(MODULES), "an exemption names a module without __all__"


@pytest.mark.parametrize("name", MODULES)
def test_all_lists_what_exists_once(name: str) -> None:
    module = importlib.import_module(name)
    listed = list(module.__all__)
    assert len(listed) == len(set(listed)), f"{name}.__all__ repeats a name"
    missing = [n for n in listed if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ lists names it does not have: {missing}"


@pytest.mark.parametrize("name", MODULES)
def test_every_public_definition_is_exported(name: str) -> None:
    module = importlib.import_module(name)
    unlisted = _defined_public(module) - set(module.__all__) - set(EXEMPT.get(name, {}))
    assert not unlisted, (
        f"{name} defines public names missing from __all__: {sorted(unlisted)} "
        "(export them, make them private with a leading underscore, or exempt them here)")
