"""The first hour of a new user, from a clean clone: the README's commands as printed, an
install without warnings, and ``make conformance`` after only ``make run``."""

from __future__ import annotations

import ast
import asyncio
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from breeze_mcp.cli import _first_run_demo
from breeze_mcp.config import load_settings
from breeze_mcp.db import Database
from breeze_mcp.db.engine import sqlalchemy_url
from tests.support import REPO, ProvisionedDatabase

README_MARKER = "<!-- tests/test_first_hour.py runs the next block -->"


def readme_commands() -> str:
    """The README's tested block of CLI examples, as a shell script."""
    after = (REPO / "README.md").read_text().split(README_MARKER, 1)[1]
    return after.split("```sh\n", 1)[1].split("\n```", 1)[0]


@pytest.mark.req("FH-README-CLI")
def test_readme_cli_examples_work_as_printed(scratch: ProvisionedDatabase, tmp_path: Path) -> None:
    env = scratch.env(tmp_path / "state")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"

    async def first_run() -> None:  # what `make run` leaves behind: the demo tenant
        db = Database(scratch.runtime_url, pool_size=1)
        try:
            settings = load_settings(state_dir=tmp_path / "state")
            assert await _first_run_demo(db, settings)
        finally:
            await db.dispose()

    asyncio.run(first_run())
    first_key = (f"\"$(breeze-mcp api-key list --tenant acme --json | {sys.executable} -c "
                 "'import json, sys; print(json.load(sys.stdin)[\"api_keys\"][0][\"id\"])')\"")
    lines = [line.replace("KEY_ID", first_key) for line in readme_commands().splitlines()
             if "# prompts" not in line]  # those need a terminal
    assert sum("breeze-mcp " in line for line in lines) >= 10
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(lines)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "error" not in proc.stderr

    engine = sa.create_engine(
        make_url(sqlalchemy_url(scratch.admin_url)).set(database=scratch.name))
    try:
        with engine.connect() as conn:
            slugs = set(conn.execute(sa.text("SELECT slug FROM tenants")).scalars())
            keys = {(name, revoked is not None) for name, revoked in conn.execute(sa.text(
                "SELECT name, revoked_at FROM api_keys"))}
            devices = conn.execute(sa.text(
                "SELECT count(*) FROM devices d JOIN tenants t ON t.id = d.tenant_id"
                " WHERE t.slug = 'acme'")).scalar_one()
    finally:
        engine.dispose()
    assert slugs == {"demo", "acme-it", "acme"}
    assert keys == {("nightly-report", True), ("patch-bot", False), ("first-key", False)}
    assert devices == 10


def build_output(tmp_path: Path, *pip_args: str) -> str:
    """pip's verbose output for a build of a copy of this checkout (the checkout is left as
    it is: builds write egg-info and build/ folders)."""
    source = tmp_path / "src"
    if not source.exists():
        shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
            ".venv", ".git", "node_modules", "results", "*.egg-info", "build", "dist",
            "__pycache__", ".*_cache"))
    proc = subprocess.run([*pip_args, str(source)], capture_output=True, text=True,
                          timeout=600, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


@pytest.mark.req("FH-INSTALL-CLEAN")
def test_wheel_and_editable_install_build_without_warnings(tmp_path: Path) -> None:
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    wheel = build_output(tmp_path, *pip, "wheel", "-v", "--no-deps", "-w",
                         str(tmp_path / "dist"))
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True,
                   timeout=300)
    editable = build_output(tmp_path, str(tmp_path / "venv" / "bin" / "python"), "-m", "pip",
                            "install", "-v", "--no-deps", "-e")
    for output in (wheel, editable):
        for warning in ("SetuptoolsDeprecationWarning", "deprecated", "Package would be ignored",
                        "is absent from the `packages` configuration"):
            assert warning not in output, output
    import zipfile

    (built,) = (tmp_path / "dist").glob("breeze_mcp-*.whl")
    names = set(zipfile.ZipFile(built).namelist())
    assert "breeze_mcp/templates/login.html" in names
    assert "breeze_mcp/migrations/versions/0001_foundation.py" in names
    metadata = zipfile.ZipFile(built).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata


def third_party_imports(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m != "__future__"}


@pytest.mark.req("FH-CONFORMANCE-DEPS")
def test_make_conformance_installs_what_its_driver_imports(tmp_path: Path) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    installed = {req.split(">")[0].split("[")[0].split(";")[0].strip().replace("-", "_")
                 for req in [*project["dependencies"],
                             *project["optional-dependencies"]["conformance"]]}
    needed = third_party_imports(REPO / "conformance" / "run.py")
    assert needed and needed <= installed, needed - installed

    # After `make run` only (a venv with the plain install), the target installs that extra.
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    (venv / ".installed").touch()
    dry = subprocess.run(["make", "-n", "conformance", f"VENV={venv}"], capture_output=True,
                         text=True, cwd=REPO, timeout=60, check=False)
    assert dry.returncode == 0, dry.stderr
    assert f"{venv}/bin/python -m pip install --quiet -e '.[conformance]'" in dry.stdout
    assert dry.stdout.index("[conformance]") < dry.stdout.index("conformance/run.py")
