"""Secrets at rest: Fernet encryption under `STRIPESYNC_ENCRYPTION_KEYS`.

The first key encrypts, every key decrypts (MultiFernet), so keys rotate in three steps:
put a new key first, run `stripesync rotate-keys` (re-encrypts every stored secret under the
first key), then drop the old key.

Store ciphertext in a `Text` column marked `info=ENCRYPTED` (stripesync.models): that
marker is how `rotate_encrypted_columns` finds every secret, in any feature's table.
Never log plaintext; log row ids.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import SecretStr
from sqlalchemy import Column, Table, select, tuple_, update

from stripesync.config import Settings
from stripesync.db import SessionFactory, transaction

__all__ = [
    "DecryptionError",
    "InvalidToken",
    "decrypt",
    "encrypt",
    "encrypted_columns",
    "open_sealed",
    "rotate_encrypted_columns",
    "seal",
]


class DecryptionError(RuntimeError):
    """Ciphertext that no configured key opens (wrong keys, or tampered data)."""


@lru_cache(maxsize=8)
def _multi_fernet(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise RuntimeError("missing setting STRIPESYNC_ENCRYPTION_KEYS")
    return MultiFernet([Fernet(key.encode()) for key in keys])


def cipher(settings: Settings) -> MultiFernet:
    """The MultiFernet of the configured keys (first encrypts, all decrypt)."""
    keys: Sequence[SecretStr] = settings.encryption_keys
    return _multi_fernet(tuple(key.get_secret_value() for key in keys))


def encrypt(settings: Settings, plaintext: str) -> str:
    """Ciphertext (URL-safe text) of `plaintext` under the first key."""
    return cipher(settings).encrypt(plaintext.encode()).decode()


def decrypt(settings: Settings, ciphertext: str) -> str:
    """The plaintext; raises `DecryptionError` when no configured key opens it."""
    try:
        return cipher(settings).decrypt(ciphertext.encode()).decode()
    except InvalidToken as exc:
        raise DecryptionError("stored secret cannot be decrypted with the configured keys") from exc


def encrypt_optional(settings: Settings, plaintext: str | None) -> str | None:
    return None if plaintext is None else encrypt(settings, plaintext)


def decrypt_optional(settings: Settings, ciphertext: str | None) -> str | None:
    return None if ciphertext is None else decrypt(settings, ciphertext)


def seal(settings: Settings, payload: dict[str, Any]) -> str:
    """A tamper-proof, opaque, URL-safe token carrying `payload` (authenticated encryption).

    Used for values handed to browsers that must come back unchanged (the OAuth `state`).
    """
    data = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    return cipher(settings).encrypt(data).decode()


def open_sealed(settings: Settings, token: str) -> dict[str, Any]:
    """The payload of a `seal()` token; raises `InvalidToken` when forged or unreadable.

    Expiry is the caller's business (payloads carry their own `exp`, checked against
    kit.clock so tests can move time).
    """
    try:
        payload = json.loads(cipher(settings).decrypt(token.encode()))
    except (InvalidToken, ValueError, UnicodeError) as exc:
        raise InvalidToken from exc
    if not isinstance(payload, dict):
        raise InvalidToken
    return payload


def encrypted_columns(metadata_tables: Sequence[Table]) -> list[tuple[Table, list[Column[Any]]]]:
    """(table, its encrypted columns) for every table holding ciphertext."""
    found = []
    for table in metadata_tables:
        columns = [column for column in table.columns if column.info.get("encrypted")]
        if columns:
            found.append((table, columns))
    return found


async def rotate_encrypted_columns(
    session_factory: SessionFactory, settings: Settings, *, batch_size: int = 500
) -> int:
    """Re-encrypt every stored secret under the first key; returns how many values changed.

    Walks each table with `info=ENCRYPTED` columns in primary-key order, one short
    transaction per batch, so it can run while the service is up. Idempotent.
    """
    from stripesync.models import Base

    fernet = cipher(settings)
    rotated = 0
    for table, columns in encrypted_columns(Base.metadata.sorted_tables):
        pk = list(table.primary_key.columns)
        after: tuple[Any, ...] | None = None
        while True:
            async with transaction(session_factory) as session:
                stmt = select(*pk, *columns).order_by(*pk).limit(batch_size)
                if after is not None:
                    stmt = stmt.where(tuple_(*pk) > tuple_(*after))
                rows = (await session.execute(stmt.with_for_update())).all()
                for row in rows:
                    key = tuple(row[: len(pk)])
                    values: dict[str, str] = {}
                    for column, value in zip(columns, row[len(pk) :], strict=True):
                        if value is not None:
                            try:
                                values[column.name] = fernet.rotate(value.encode()).decode()
                            except InvalidToken as exc:
                                raise DecryptionError(
                                    f"{table.name}.{column.name} of row {key} cannot be "
                                    "decrypted with the configured keys"
                                ) from exc
                    if values:
                        where = [col == val for col, val in zip(pk, key, strict=True)]
                        await session.execute(update(table).where(*where).values(**values))
                        rotated += len(values)
            if len(rows) < batch_size:
                break
            after = tuple(rows[-1][: len(pk)])
    return rotated
