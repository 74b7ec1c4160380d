"""Password hashing (argon2id, OWASP parameters) and the password policy."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["MAX_LENGTH", "MIN_LENGTH", "WeakPasswordError", "check_strength", "hash_password",
           "needs_rehash", "verify_password"]

MIN_LENGTH = 12
MAX_LENGTH = 256

# OWASP Password Storage Cheat Sheet: argon2id, m=19 MiB, t=2, p=1.
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)

# A hash of a random password, verified against when the account does not exist, so a failed
# login takes the same time either way (no account enumeration by timing).
_DUMMY_HASH = _hasher.hash("breeze-dummy-password-for-timing")

_COMMON = {
    "password1234", "123456789012", "qwertyuiopas", "passwordpassword", "letmeinletmein",
    "changemechangeme", "adminadminadmin", "welcome12345", "iloveyou1234", "breezebreeze",
}


class WeakPasswordError(ValueError):
    """The password does not meet the policy; the message says which rule."""


def check_strength(password: str, *, email: str | None = None) -> None:
    if len(password) < MIN_LENGTH:
        raise WeakPasswordError(f"password must be at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise WeakPasswordError(f"password must be at most {MAX_LENGTH} characters")
    lowered = password.lower()
    if lowered in _COMMON or len(set(password)) < 5:
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
