"""Pure functions: password policy and hashing, audit redaction."""

from __future__ import annotations

import json

import pytest

from breeze_mcp.audit import MAX_PARAMETERS_BYTES, REDACTED, _capped, redact
from breeze_mcp.auth.passwords import (
    WeakPasswordError,
    check_strength,
    hash_password,
    verify_password,
)


@pytest.mark.req("PWD-ARGON2")
def test_argon2id_hash_and_verify() -> None:
    h = hash_password("correct horse battery staple")
    assert h.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert verify_password(h, "correct horse battery staple")
    assert not verify_password(h, "correct horse battery stapl")
    assert not verify_password(None, "anything at all")
    assert not verify_password("not-a-hash", "anything at all")


@pytest.mark.req("PWD-ARGON2", "CLI-BAD-INPUT")
@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("short", "at least 12"),
        ("x" * 300, "at most 256"),
        ("aaaaaaaaaaaaaaaa", "too easy"),
        ("password1234", "too easy"),
        ("alice-is-great-2026", "email"),
    ],
)
def test_weak_passwords_refused(password: str, message: str) -> None:
    with pytest.raises(WeakPasswordError, match=message):
        check_strength(password, email="alice@example.com")


@pytest.mark.req("HARD-COMMON-PASSWORDS")
@pytest.mark.parametrize(
    "password",
    [
        "Password123!",  # a listed word with digits and a symbol appended
        "qwerty123456",  # listed as it is
        "QWERTY123456",  # case does not matter
        "  qwerty123456  ",
        "P@ssw0rd2024",
        "iloveyou!!!!",
        "Summer2024!!",
        "dragon2024!!",
        "zxcvbnm,./12",
        "passwordpassword",  # a listed word typed twice
        "letmeinletmein",
        "PolniyPizdec0211",  # far down the list: the whole list is loaded, not a top slice
        "crossroad123",  # the list's last entry
        "Breeze-MCP-2025",  # the product's own name
    ],
)
def test_common_passwords_refused(password: str) -> None:
    with pytest.raises(WeakPasswordError, match=r"^password is too easy to guess$"):
        check_strength(password)


@pytest.mark.req("HARD-COMMON-PASSWORDS")
@pytest.mark.parametrize(
    "password",
    [
        "correct horse battery staple",
        "a-Strong-passphrase-42",
        "Tr0ub4dor&3-horse",
        "xK9#mP2$vL7!q",
        # A one-letter listed word ("a") before a long random tail is not a common password.
        "a93847261039",
        "\ud800 lone surrogate, still a fine phrase",
    ],
)
def test_good_passwords_accepted(password: str) -> None:
    check_strength(password)


@pytest.mark.req("AUDIT-REDACT")
def test_redaction_by_key_and_value() -> None:
    out = redact({
        "password": "hunter2", "api_key": "x", "Authorization": "Bearer abc",
        "nested": {"client_secret": "s", "note": "token bzk_abcdefghijklmnop inside"},
        "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTYifQ.sig",
        "hostname": "HQ-DC01", "count": 3, "hotpatch": "KB1", "otp_code": "123456",
        "list": ["fine", "Bearer zzz"],
    })
    assert out["password"] == REDACTED and out["api_key"] == REDACTED
    assert out["Authorization"] == REDACTED and out["otp_code"] == REDACTED
    assert out["nested"] == {"client_secret": REDACTED, "note": f"token {REDACTED} inside"}
    assert out["jwt"] == REDACTED
    assert out["hostname"] == "HQ-DC01" and out["count"] == 3 and out["hotpatch"] == "KB1"
    assert out["list"] == ["fine", f"Bearer {REDACTED}"]


@pytest.mark.req("AUDIT-REDACT")
def test_parameters_are_size_capped() -> None:
    big = {f"k{i}": "v" * 1000 for i in range(50)}
    capped = _capped(big)
    assert capped["_truncated"] is True
    assert len(json.dumps(capped).encode()) < MAX_PARAMETERS_BYTES
    long_string = redact({"script": "x" * 5000})["script"]
    assert len(long_string) < 1100 and long_string.endswith("[truncated]")


@pytest.mark.req("AUDIT-ONE-WRITER")
@pytest.mark.parametrize(
    ("actor", "expected"),
    [("system:cli", ("system", "cli")), ("system:cli:admin", ("system", "cli")),
     ("system:serve", ("system", "system")), ("system:demo", ("system", "system")),
     ("user:7d1c", ("user", "session"))],
)
def test_operator_actions_name_their_door(actor: str, expected: tuple[str, str]) -> None:
    from breeze_mcp.audit import operator

    assert operator(actor) == expected


@pytest.mark.req("AUDIT-REDACT")
@pytest.mark.anyio
async def test_database_errors_do_not_echo_parameters(test_db) -> None:
    """A failed statement's error (what gets logged) names the failure, never the values
    bound into the statement, whether a Core statement or a prepared one."""
    import psycopg
    import sqlalchemy as sa

    from breeze_mcp.db import Database
    from breeze_mcp.db.engine import Runnable
    from breeze_mcp.db.statements import prepared

    secret = "bzk_this-must-not-appear"
    failing = prepared("SELECT CAST(%s AS text), 1 / 0")
    db = Database(test_db.runtime_url, pool_size=1)
    try:
        cases: list[tuple[Runnable, tuple[str, ...]]] = [
            (sa.text("SELECT CAST(:secret AS text), 1 / 0").bindparams(secret=secret), ()),
            (failing, (secret,)),
        ]
        for statement, params in cases:
            with pytest.raises(psycopg.Error) as err:
                async with db.system() as tx:
                    await tx.execute(statement, params)
            assert "division by zero" in str(err.value)
            shown = [str(err.value), repr(err.value), *map(str, err.value.args)]
            diag = err.value.diag
            shown += [str(getattr(diag, name)) for name in dir(diag) if not name.startswith("_")]
            assert not [text for text in shown if secret in text]
    finally:
        await db.dispose()


@pytest.mark.req("TOOLS-MCP")
@pytest.mark.parametrize("id_", [1, 0, "abc", 'ü"\\x', 2**53])
def test_the_hand_built_tool_result_is_the_sdk_model(id_: object) -> None:
    import datetime as dt
    import json

    import mcp_types as types

    from breeze_mcp.mcp_endpoint import success_body

    result = {
        "devices": [{"id": "6f1c", "hostname": 'srv-é"\\\n', "tags": ["a", "ü"],
                     "ip_address": None, "seen": dt.datetime(2026, 11, 29, tzinfo=dt.UTC)}],
        "total": 1, "next_offset": None, "ratio": 0.5,
    }
    body = json.loads(success_body(id_, result))
    assert body["jsonrpc"] == "2.0" and body["id"] == id_ and set(body) == {
        "jsonrpc", "id", "result"}
    text = json.dumps(result, default=str)
    expected = types.CallToolResult(content=[types.TextContent(text=text)],
                                    structured_content=json.loads(text))
    assert types.CallToolResult.model_validate(body["result"]) == expected
    assert body["result"] == expected.model_dump(by_alias=True, exclude_none=True, mode="json",
                                                 exclude={"result_type", "ttl_ms", "cache_scope"}
                                                 & set(types.CallToolResult.model_fields))


@pytest.mark.req("AUDIT-REDACT")
def test_redaction_makes_values_storable() -> None:
    from breeze_mcp.audit import redact

    assert redact({"a": float("nan"), "b": float("-inf"), "k\x00": "x\x00y", "n": 1.5}) == {
        "a": "nan", "b": "-inf", "k\\u0000": "x\\u0000y", "n": 1.5}


@pytest.mark.req("SERVE-GC-TUNED")
def test_gc_tuning_freezes_start_up_objects_and_raises_the_young_threshold() -> None:
    """What `breeze-mcp serve` does before serving (see breeze_mcp.gc_tuning)."""
    import gc

    from breeze_mcp import gc_tuning

    before = gc.get_threshold()
    try:
        gc_tuning.tune()
        assert gc.get_freeze_count() > 0  # start-up objects left the collected generations
        assert gc.get_threshold() == (gc_tuning.GEN0_THRESHOLD, before[1], before[2])
        # Cyclic garbage is still collected.
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
