"""The requirement manifest and the tests agree: every done requirement is proven by a test,
and every test names only requirements that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\| ([A-Z][A-Z0-9-]+) \| [^|]+ \| [^|]+ \| (done|planned) \|$")
MARK = re.compile(r"req\(([^)]*)\)")
ID = re.compile(r'"([A-Z][A-Z0-9-]+)"')


def manifest() -> dict[str, str]:
    rows: dict[str, str] = {}
    for line in (ROOT / "docs" / "requirements.md").read_text().splitlines():
        if m := ROW.match(line):
            assert m.group(1) not in rows, f"duplicate requirement id {m.group(1)}"
            rows[m.group(1)] = m.group(2)
    return rows


def tagged() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        if path.name == "test_requirements.py":
            continue
        for mark in MARK.findall(path.read_text()):
            for rid in ID.findall(mark):
                found.setdefault(rid, set()).add(path.name)
    return found


def test_manifest_parses() -> None:
    rows = manifest()
    assert len(rows) > 30
    assert "SEED-RLS" in rows


def test_every_done_requirement_has_a_test() -> None:
    proven = tagged()
    missing = [rid for rid, status in manifest().items() if status == "done" and rid not in proven]
    assert not missing, f"requirements marked done without a test: {missing}"


def test_every_tag_is_a_requirement() -> None:
    unknown = sorted(set(tagged()) - set(manifest()))
    assert not unknown, f"tests name requirements missing from docs/requirements.md: {unknown}"


def test_planned_requirements_have_no_tests() -> None:
    """A requirement with tests is done: keep the manifest honest both ways."""
    rows = manifest()
    premature = sorted(rid for rid in tagged() if rows.get(rid) == "planned")
    if premature:
        pytest.fail(f"requirements with tests still marked planned: {premature}")
