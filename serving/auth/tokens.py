"""The gateway's tokens: stored hashed in the state dir's `auth.db`, checked in constant time, an
expired or revoked token refused from the next request on.

A token reads `sgt_<id>_<secret>`: the id finds its row without a scan, the secret is compared with
`hmac.compare_digest` against its stored sha256 (a 256-bit random secret needs no slow hash). The
secret is shown once, when the token is made, and kept nowhere but in the caller's hands (and, for
the first admin token, in `<state-dir>/admin.token`, mode 0600).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from serving import sqldb
from serving.auth.files import ADMIN_TOKEN_FILE, METRICS_TOKEN_FILE, read_token_file, write_secret
from serving.auth.scopes import Principal, Role
from serving.errors import InvalidInput, ModelNotFound, Unauthenticated

__all__ = [
    "ADMIN_TOKEN_FILE",
    "METRICS_TOKEN_FILE",
    "TokenConflict",
    "TokenInfo",
    "TokenStore",
    "parse_duration",
    "read_token_file",
    "write_secret",
]

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_PREFIX = "sgt_"
_ID_HEX = 12
#: tokens remembered as verified (forgotten all at once past this).
_VERIFIED_KEPT = 4096
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

_meta = sa.MetaData()
_tokens = sa.Table(
    "tokens",
    _meta,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("namespaces", sa.Text, nullable=False),
    sa.Column("services", sa.Text, nullable=False),
    sa.Column("secret_sha256", sa.String(64), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("expires", sa.Float),
    sa.Column("created_by", sa.String(128), nullable=False),
)


def _create_schema(conn: Connection) -> None:
    _meta.create_all(conn)


_MIGRATIONS = sqldb.Migrations("auth", [_create_schema])


class TokenConflict(InvalidInput):
    """A token of that name exists already (409 on the control API)."""


def parse_duration(text: str) -> float:
    """Seconds in `30d`, `12h`, `90m`, `3600s` or `2w`; ValueError for anything else."""
    match = _DURATION.match(text)
    if match is None or int(match.group(1)) <= 0:
        raise ValueError(f"'{text}' is not a duration: use a positive number with s, m, h, d or w (30d)")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token as `token list` shows it: never its secret."""

    name: str
    role: Role
    namespaces: tuple[str, ...]
    services: tuple[str, ...]
    created: float
    expires: float | None
    created_by: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role.value,
            "namespaces": list(self.namespaces),
            "services": list(self.services),
            "created": self.created,
            "expires": self.expires,
            "createdBy": self.created_by,
        }

    def principal(self) -> Principal:
        return Principal.of_role(
            self.name, self.role, frozenset(self.namespaces) or None, frozenset(self.services) or None
        )


@dataclass(frozen=True, slots=True)
class _Entry:
    info: TokenInfo
    principal: Principal
    secret_sha256: bytes


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenStore:
    """Tokens in a database (SQLite in the state dir), mirrored in memory for the per-request check.

    Writes go through this object, which updates the mirror in the same call: a revoked token stops
    working at the next request. `clock` is for tests.
    """

    def __init__(self, url: str, clock: Any = time.time) -> None:
        self._engine = sqldb.connect(url, _MIGRATIONS)
        self._clock = clock
        self._lock = threading.Lock()
        self._by_id: dict[str, _Entry] = {}
        #: token -> (the mirror it was verified against, its entry): the per-request fast path.
        self._verified: dict[str, tuple[dict[str, _Entry], _Entry]] = {}
        self._load()

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> TokenStore:
        return cls(f"sqlite:///{Path(state_dir).resolve() / 'auth.db'}")

    def close(self) -> None:
        self._engine.dispose()

    def _load(self) -> None:
        with sqldb.reading(self._engine) as conn:
            rows = conn.execute(sa.select(_tokens)).mappings().all()
        self._by_id = {row["id"]: self._entry(row) for row in rows}

    @staticmethod
    def _entry(row: Any) -> _Entry:
        info = TokenInfo(
            name=row["name"],
            role=Role(row["role"]),
            namespaces=tuple(json.loads(row["namespaces"])),
            services=tuple(json.loads(row["services"])),
            created=row["created"],
            expires=row["expires"],
            created_by=row["created_by"],
        )
        return _Entry(info, info.principal(), row["secret_sha256"].encode())

    # -- the per-request check --------------------------------------------------------------------

    def authenticate(self, token: str) -> Principal:
        # A token seen before skips the hash: the mirror it came from is checked by identity, so a
        # revoke (a new mirror) drops it at once; expiry is checked every time.
        by_id = self._by_id
        seen = self._verified.get(token)
        entry = seen[1] if seen is not None and seen[0] is by_id else self._verify(token, by_id)
        if entry.info.expires is not None and self._clock() >= entry.info.expires:
            raise Unauthenticated(f"token '{entry.info.name}' has expired")
        return entry.principal

    def _verify(self, token: str, by_id: dict[str, _Entry]) -> _Entry:
        if not token.startswith(_PREFIX) or len(token) < len(_PREFIX) + _ID_HEX + 2:
            raise Unauthenticated("invalid token")
        entry = by_id.get(token[len(_PREFIX) : len(_PREFIX) + _ID_HEX])
        presented = _sha256(token[len(_PREFIX) + _ID_HEX + 1 :]).encode()
        if entry is None or not hmac.compare_digest(entry.secret_sha256, presented):
            raise Unauthenticated("invalid or revoked token")
        if len(self._verified) >= _VERIFIED_KEPT:
            self._verified.clear()
        self._verified[token] = (by_id, entry)
        return entry

    # -- management -------------------------------------------------------------------------------

    def create(
        self,
        name: str,
        role: Role,
        *,
        namespaces: Iterable[str] = (),
        services: Iterable[str] = (),
        expires_in_s: float | None = None,
        actor: str = "",
    ) -> tuple[TokenInfo, str]:
        """A new token and its secret (shown once). Raises InvalidInput for a bad name, TokenConflict
        for one taken."""
        if not NAME_PATTERN.match(name):
            raise InvalidInput(
                f"token name '{name}' must be lower-case letters, digits, '.', '_' or '-' (at most 63)"
            )
        token_id = secrets.token_hex(_ID_HEX // 2)
        secret = secrets.token_urlsafe(32)
        now = self._clock()
        row = {
            "id": token_id,
            "name": name,
            "role": role.value,
            "namespaces": json.dumps(sorted(set(namespaces))),
            "services": json.dumps(sorted(set(services))),
            "secret_sha256": _sha256(secret),
            "created": now,
            "expires": now + expires_in_s if expires_in_s is not None else None,
            "created_by": actor,
        }
        with self._lock:
            try:
                with sqldb.writing(self._engine) as conn:
                    conn.execute(_tokens.insert().values(**row))
            except sa.exc.IntegrityError:
                raise TokenConflict(f"a token named '{name}' exists; revoke it first") from None
            entry = self._entry(row)
            self._by_id = {**self._by_id, token_id: entry}
        return entry.info, f"{_PREFIX}{token_id}_{secret}"

    def list(self) -> list[TokenInfo]:
        return sorted((e.info for e in self._by_id.values()), key=lambda info: info.name)

    def revoke(self, name: str) -> TokenInfo:
        """Delete the token named `name`: it stops working now. ModelNotFound (404) when there is none."""
        with self._lock:
            with sqldb.writing(self._engine) as conn:
                row = conn.execute(sa.select(_tokens).where(_tokens.c.name == name)).mappings().first()
                if row is None:
                    raise ModelNotFound(f"no token named '{name}'")
                conn.execute(_tokens.delete().where(_tokens.c.id == row["id"]))
            self._by_id = {k: v for k, v in self._by_id.items() if k != row["id"]}
        return self._entry(row).info

    def ensure_admin_file(self, path: Path, name: str = "admin") -> bool:
        """Make sure `path` holds a working admin token, making one (named `name`) when it does not.
        Returns True when a new token was written. Whoever can write the state dir is admin anyway,
        so a lost admin token is recovered by deleting the file and restarting."""
        try:
            token = read_token_file(path)
            principal = self.authenticate(token)
            if principal.role is Role.ADMIN:
                return False
        except (OSError, ValueError, Unauthenticated):
            pass
        with self._lock:
            with sqldb.writing(self._engine) as conn:
                ids = conn.execute(sa.select(_tokens.c.id).where(_tokens.c.name == name)).scalars().all()
                conn.execute(_tokens.delete().where(_tokens.c.name == name))
            self._by_id = {k: v for k, v in self._by_id.items() if k not in ids}
        _, token = self.create(name, Role.ADMIN, actor="servegate up")
        write_secret(path, token)
        return True
