"""Password hashing (argon2id, OWASP parameters) and the password policy.

The policy refuses the 100,000 most common passwords (``breeze_mcp/data/README.md`` names the
list and its licence), compared case-folded, and also a common password with a short run of
digits or symbols appended (``Password123!``), the way people meet composition rules.
"""

from __future__ import annotations

import gzip
import re
from functools import cache
from importlib.resources import files

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["MAX_LENGTH", "MIN_LENGTH", "WeakPasswordError", "check_strength",
           "hash_password", "is_common", "needs_rehash", "verify_password"]

MIN_LENGTH = 12
MAX_LENGTH = 256

# OWASP Password Storage Cheat Sheet: argon2id, m=19 MiB, t=2, p=1.
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)

# A hash of a random password, verified against when the account does not exist, so a failed
# login takes the same time either way (no account enumeration by timing).
_DUMMY_HASH = _hasher.hash("breeze-dummy-password-for-timing")

# Guesses aimed at this product in particular, on top of the shipped list.
_PRODUCT_WORDS = ("breeze", "breezemcp", "breeze-mcp")

# Only the last six digits or symbols are stripped to find the base word: with the
# 12-character minimum the base keeps at least six characters, so a one-letter "common
# password" never refuses a random string.
_APPENDED = re.compile(r"[\W\d_]{1,6}\Z")


@cache
def _common_lines() -> bytes:
    """The shipped list, case-folded, one password per line, with a newline at both ends: one
    bytes value holds it in far less memory than a set of strings, read on first use."""
    source = files("breeze_mcp") / "data" / "common-passwords.txt.gz"
    text = gzip.decompress(source.read_bytes()).decode("utf-8").casefold()
    return b"\n" + text.encode("utf-8") + b"\n".join(w.encode() for w in _PRODUCT_WORDS) + b"\n"


def _listed(word: str) -> bool:
    if not word or "\n" in word:
        return False
    return b"\n" + word.encode("utf-8", "surrogatepass") + b"\n" in _common_lines()


def is_common(password: str) -> bool:
    """The password, or its base before a short appended tail, is a common password.

    A common word typed twice (``passwordpassword``) counts as the word.
    """
    folded = password.strip().casefold()
    tail = _APPENDED.search(folded)
    candidates = {folded, folded[: tail.start()] if tail else folded}
    for word in list(candidates):
        half = len(word) // 2
        if half and word[:half] == word[half:]:
            candidates.add(word[:half])
    return any(_listed(word) for word in candidates)


class WeakPasswordError(ValueError):
    """The password does not meet the policy; the message says which rule."""


def check_strength(password: str, *, email: str | None = None) -> None:
    if len(password) < MIN_LENGTH:
        raise WeakPasswordError(f"password must be at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise WeakPasswordError(f"password must be at most {MAX_LENGTH} characters")
    lowered = password.lower()
    if len(set(password)) < 5 or is_common(password):
        raise WeakPasswordError("password is too easy to guess")
    if email and email.split("@", 1)[0].lower() in lowered and len(email.split("@", 1)[0]) > 3:
        raise WeakPasswordError("password must not contain the email address")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Constant-work check; a missing hash still costs one verification."""
    if len(password) > MAX_LENGTH:
        return False
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)
