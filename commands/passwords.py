"""Mailbox password hashing in Dovecot's {ARGON2ID} format.

Costs sit near OWASP's argon2id minimum (m=19 MiB, t=2, p=1): argon2-cffi's defaults cost about
200 ms per hash here and Dovecot pays the same again at every login.
"""

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from core.errors import ValidationFailed

SCHEME = "{ARGON2ID}"
MIN_LENGTH = 6
MAX_LENGTH = 1024

hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)


def check_password(password: str, field: str = "password") -> None:
    if len(password) < MIN_LENGTH:
        raise ValidationFailed(field, f"{field} must be at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise ValidationFailed(field, f"{field} must be at most {MAX_LENGTH} characters")
    if "\x00" in password:
        raise ValidationFailed(field, f"{field} must not contain NUL")


async def hash_password(password: str) -> str:
    """Validate, then hash in a worker thread so the event loop never blocks on argon2."""
    check_password(password)
    return SCHEME + await asyncio.to_thread(hasher.hash, password)


def verify_password(stored: str, password: str) -> bool:
    digest = stored.removeprefix(SCHEME)
    try:
        return hasher.verify(digest, password)
    except (VerificationError, InvalidHashError):
        return False
