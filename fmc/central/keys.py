"""API keys for ``fmc api``: scoped, random, stored hashed (``fmc keys create|list|revoke``).

A key reads ``fmc_<id>_<secret>``: ``id`` is public (12 hex digits: it names the key in
``fmc keys list`` and in logs), ``secret`` is ``secrets.token_urlsafe(32)`` (256 random bits).
The keys file (SQLite, ``[api] keys_file``) keeps the SHA-256 of the secret, never the key: a
key is shown once, when it is created.

Scopes (DESIGN §5): ``province`` (everything), ``region:<prefix>`` (a GB/T 2260 code prefix of 2,
4 or 6 digits: the enterprises whose region code starts with it) and ``enterprise:<id>`` (one
enterprise). ``KeyScope`` holds the access rules as pure functions; the API asks it what a request
may read and turns its answers into 403s.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from fmc.core.config import ID_PATTERN
from fmc.core.regions import REGION_PREFIX

KEY_PREFIX = "fmc"
KEY_ID_HEX = 12
_KEY_RE = re.compile(r"fmc_([0-9a-f]{12})_([A-Za-z0-9_\-]{20,128})")
_ID_RE = re.compile(ID_PATTERN)
# Digits of a region code at each group level (GB/T 2260): province 33, city 3306, county 330602.
LEVEL_DIGITS = {"province": 2, "city": 4, "county": 6}
NAME_MAX = 200
SCOPE_HELP = "province, region:<2, 4 or 6 digits> (region:3306) or enterprise:<id> (enterprise:91330602MA2BXXXX1X)"

ScopeKind = Literal["province", "region", "enterprise"]
Decision = Literal["ok", "forbidden", "not_found"]


class ScopeError(ValueError):
    """A scope text that is not one of the three forms; the message says which forms exist."""


class AccessDenied(Exception):
    """The key may not read or write this: the API answers 403 with the message."""


class BadCombination(ValueError):
    """Parameters that are each valid but together would give a misleading figure: 422."""


# --- scopes and the access rules (pure) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyScope:
    """What one key may see. ``region``: the code prefix of a region key; ``enterprise``: the id
    of an enterprise key."""

    kind: ScopeKind
    region: str | None = None
    enterprise: str | None = None

    def __post_init__(self) -> None:
        if self.kind == "province" and (self.region is not None or self.enterprise is not None):
            raise ScopeError("a province scope takes no code or id")
        if self.kind == "region" and (self.region is None or not REGION_PREFIX.fullmatch(self.region)):
            raise ScopeError(f"region scope {self.region!r}: a code prefix of 2, 4 or 6 digits (33, 3306, 330602)")
        if self.kind == "enterprise" and (self.enterprise is None or not _ID_RE.fullmatch(self.enterprise)):
            raise ScopeError(
                f"enterprise scope {self.enterprise!r}: an id of letters, digits, '_', '.', '-' (at most 64)"
            )

    @property
    def text(self) -> str:
        """The form ``parse_scope`` reads (what the keys file stores)."""
        if self.kind == "region":
            return f"region:{self.region}"
        if self.kind == "enterprise":
            return f"enterprise:{self.enterprise}"
        return "province"

    # -- reads of levels and groups

    def level_allowed(self, level: str, region_filter: str | None = None) -> None:
        """Raise ``AccessDenied`` when the key may not read ``level``; ``BadCombination`` when
        the region filter is narrower than the level's groups (a partial group's figure).

        An enterprise key reads only its own enterprise row. A region key P reads enterprise rows
        and industry rows (pooled within P), county and city rows whose code lies inside P (code
        length ≥ len(P)), and the province row only when P is the province: a group wider than P
        would pool enterprises the key may not see.
        """
        self.region_allowed(region_filter)
        if self.kind == "enterprise":
            if level != "enterprise":
                raise AccessDenied(
                    f"an enterprise key reads only its own enterprise (level=enterprise), not level {level}"
                )
            return
        digits = LEVEL_DIGITS.get(level)
        if digits is None:
            return  # enterprise and industry rows: pooled within the scope, never wider
        if self.kind == "region" and self.region is not None and digits < len(self.region):
            raise AccessDenied(
                f"this key (region {self.region}) may not read level {level}: a {level} figure pools "
                f"enterprises outside region {self.region}; use level "
                f"{'county' if len(self.region) > 4 else 'city or county'}, enterprise or industry"
            )
        if region_filter is not None and digits < len(region_filter):
            raise BadCombination(
                f"level {level} with region={region_filter}: a {level} figure pooled from region "
                f"{region_filter} alone is not that {level}'s figure; use a level of at least "
                f"{len(region_filter)} digits or a shorter region"
            )

    def region_allowed(self, region_filter: str | None) -> None:
        """A region filter must lie inside a region key's prefix (it narrows, never widens)."""
        if region_filter is None or self.kind != "region" or self.region is None:
            return
        if not region_filter.startswith(self.region):
            raise AccessDenied(f"region {region_filter} is outside this key's region {self.region}")

    def enterprise_filter_allowed(self, enterprise: str | None) -> None:
        if enterprise is not None and self.kind == "enterprise" and enterprise != self.enterprise:
            raise AccessDenied("this key reads only its own enterprise")

    def effective_region(self, region_filter: str | None) -> str | None:
        """The region prefix a request reads: its filter (inside the key's region), else the key's."""
        self.region_allowed(region_filter)
        if region_filter is not None:
            return region_filter
        return self.region if self.kind == "region" else None

    def scope_parts(
        self, region_filter: str | None = None, industry: str | None = None, enterprise: str | None = None
    ) -> tuple[str | None, tuple[str, ...], tuple[str, ...]]:
        """(region prefix, industries, enterprises) of the store ``Scope`` a request reads: the
        key's scope narrowed by the filters, never widened (``AccessDenied`` when a filter lies
        outside the key's scope)."""
        region = self.effective_region(region_filter)
        self.enterprise_filter_allowed(enterprise)
        enterprises: tuple[str, ...] = ()
        if self.kind == "enterprise" and self.enterprise is not None:
            enterprises = (self.enterprise,)
        elif enterprise is not None:
            enterprises = (enterprise,)
        return region, ((industry,) if industry is not None else ()), enterprises

    def row_visible(self, level: str, region: str, enterprise: str | None) -> bool:
        """Defence in depth after the store: may this row be shown to the key at all?"""
        if self.kind == "province":
            return True
        if self.kind == "enterprise":
            return level == "enterprise" and enterprise == self.enterprise
        return self.region is not None and region.startswith(self.region)

    # -- one enterprise (its page, its indicators, its reports)

    def enterprise_access(self, enterprise: str, region: str | None) -> Decision:
        """May the key read or write ``enterprise``, whose region code is ``region`` (None: no
        such enterprise)? A region key gets ``forbidden`` for an enterprise outside its prefix
        whether it exists or not, so that existence outside the scope is never revealed."""
        if self.kind == "enterprise":
            if enterprise != self.enterprise:
                return "forbidden"
            return "ok" if region is not None else "not_found"
        if self.kind == "region":
            if region is None or self.region is None or not region.startswith(self.region):
                return "forbidden"
            return "ok"
        return "ok" if region is not None else "not_found"


def parse_scope(text: str) -> KeyScope:
    """``province``, ``region:<prefix>`` or ``enterprise:<id>``; ``ScopeError`` names the forms."""
    if not isinstance(text, str):
        raise ScopeError(f"scope {text!r}: write {SCOPE_HELP}")
    if text == "province":
        return KeyScope("province")
    kind, sep, value = text.partition(":")
    if sep and kind == "region":
        if not REGION_PREFIX.fullmatch(value):
            raise ScopeError(
                f"scope {text!r}: the region is a GB/T 2260 code prefix of 2, 4 or 6 digits "
                "(region:33 the province, region:3306 a city, region:330602 a county)"
            )
        return KeyScope("region", region=value)
    if sep and kind == "enterprise":
        if not _ID_RE.fullmatch(value):
            raise ScopeError(
                f"scope {text!r}: the enterprise id is letters, digits, '_', '.', '-', starting with a letter "
                "or digit, at most 64 characters (e.g. the 统一社会信用代码)"
            )
        return KeyScope("enterprise", enterprise=value)
    raise ScopeError(f"scope {text!r} is not one of: {SCOPE_HELP}")


# --- the keys file -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A key as ``fmc keys list`` shows it (never the secret)."""

    id: str
    scope: KeyScope
    name: str
    created: datetime
    revoked: datetime | None


class KeyStoreError(Exception):
    """The keys file cannot be opened or is not an fmc keys file; the message names it."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id            TEXT PRIMARY KEY,
    secret_sha256 BLOB NOT NULL,
    scope         TEXT NOT NULL,
    name          TEXT NOT NULL,
    created       TEXT NOT NULL,
    revoked       TEXT
) WITHOUT ROWID;
"""
# Marks the file as an fmc keys file, so pointing keys_file at another SQLite file is refused.
APPLICATION_ID = 0x666D634B  # "fmcK"


def _digest(secret: str) -> bytes:
    # A plain SHA-256 suffices: the secret is 256 random bits, so there is nothing to guess that a
    # slow password KDF (bcrypt, scrypt) would protect; those exist for low-entropy passwords.
    return hashlib.sha256(secret.encode("ascii")).digest()


_DUMMY_DIGEST = _digest("x" * 43)


def split_key(bearer: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    m = _KEY_RE.fullmatch(bearer.strip()) if isinstance(bearer, str) else None
    return (m.group(1), m.group(2)) if m else None


class KeyStore:
    """The keys file. Every call reads the file, so a key revoked by ``fmc keys revoke`` in
    another process is refused at the next request."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = not self.path.exists()
            if new:
                # Only hashes are inside, but a keys file is nobody else's business either.
                fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
                os.close(fd)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=5.0)
        except (OSError, sqlite3.Error) as e:
            raise KeyStoreError(f"{self.path}: cannot open the keys file: {e}") from None
        try:
            app_id = self._db.execute("PRAGMA application_id").fetchone()[0]
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if app_id not in (0, APPLICATION_ID) or (app_id == 0 and tables - {"api_keys"}):
                self._db.close()
                raise KeyStoreError(
                    f"{self.path}: not an fmc keys file (another program's database?); point [api] keys_file "
                    "at a file of its own"
                )
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        except sqlite3.Error as e:
            self._db.close()
            raise KeyStoreError(f"{self.path}: not a usable keys file: {e}") from None

    def create(self, scope: KeyScope | str, name: str = "") -> tuple[str, str]:
        """A new key: (id, full key). The full key is returned once and stored only as a hash."""
        if isinstance(scope, str):
            scope = parse_scope(scope)
        name = _clean_name(name)
        secret = secrets.token_urlsafe(32)
        created = datetime.now(UTC).isoformat(timespec="seconds")
        with self._lock:
            for _ in range(5):  # 48-bit ids: a collision is a once-in-a-lifetime event, retried
                key_id = secrets.token_hex(KEY_ID_HEX // 2)
                try:
                    self._db.execute(
                        "INSERT INTO api_keys (id, secret_sha256, scope, name, created) VALUES (?, ?, ?, ?, ?)",
                        (key_id, _digest(secret), scope.text, name, created),
                    )
                except sqlite3.IntegrityError:
                    continue
                return key_id, f"{KEY_PREFIX}_{key_id}_{secret}"
        raise KeyStoreError(f"{self.path}: could not find a free key id")

    def list(self) -> list[KeyInfo]:
        with self._lock:
            rows = self._db.execute("SELECT id, scope, name, created, revoked FROM api_keys ORDER BY created, id")
            return [_info(*row) for row in rows.fetchall()]

    def revoke(self, key_id: str) -> bool:
        """Revoke a key; False when there is no such key. Revoking twice keeps the first time."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with self._lock:
            cur = self._db.execute("UPDATE api_keys SET revoked = COALESCE(revoked, ?) WHERE id = ?", (now, key_id))
            return cur.rowcount > 0

    def authenticate(self, bearer: str | None) -> KeyScope | None:
        """The scope of a valid, unrevoked key; None otherwise (unknown, malformed, revoked)."""
        parts = split_key(bearer) if bearer else None
        key_id, secret = parts if parts else ("", "x" * 43)
        with self._lock:
            row = self._db.execute(
                "SELECT secret_sha256, scope, revoked FROM api_keys WHERE id = ?", (key_id,)
            ).fetchone()
        stored = row[0] if row else _DUMMY_DIGEST
        # compare even when the id is unknown, so timing tells nothing about which ids exist
        ok = hmac.compare_digest(_digest(secret), stored)
        if parts is None or row is None or not ok or row[2] is not None:
            return None
        try:
            return parse_scope(row[1])
        except ScopeError:
            return None  # a hand-edited row: refuse rather than guess

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _clean_name(name: str) -> str:
    name = (name or "").strip()
    if len(name) > NAME_MAX or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError(f"key name: at most {NAME_MAX} printable characters")
    return name


def _info(key_id: str, scope: str, name: str, created: str, revoked: str | None) -> KeyInfo:
    return KeyInfo(
        key_id,
        parse_scope(scope),
        name,
        datetime.fromisoformat(created),
        datetime.fromisoformat(revoked) if revoked else None,
    )


# --- fmc keys ----------------------------------------------------------------------------------------------



