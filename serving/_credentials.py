"""Which token a client sends: one rule for the SDK and every CLI command.

In order: the token given (`--token`, `token=`), a token file given (`--token-file`,
`token_file=`), `SERVEGATE_TOKEN`, `SERVEGATE_TOKEN_FILE`, and last, only for a gateway on this
machine (a loopback host), the admin token that `servegate up` wrote to its state dir
(`SERVEGATE_STATE_DIR`, else `./.servegate`). The admin token is never sent to another host: a URL
pointing elsewhere needs a token given on purpose.

Kept free of heavy imports: the SDK and the CLI import it on every start.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from urllib.parse import urlsplit

__all__ = [
    "STATE_DIR_ENV",
    "TOKEN_ENV",
    "TOKEN_FILE_ENV",
    "CredentialsError",
    "admin_token_path",
    "is_loopback",
    "resolve_token",
]

TOKEN_ENV = "SERVEGATE_TOKEN"
TOKEN_FILE_ENV = "SERVEGATE_TOKEN_FILE"
STATE_DIR_ENV = "SERVEGATE_STATE_DIR"
#: `servegate up`'s state dir when none is named (its `--state-dir` default).
_DEFAULT_STATE_DIR = Path(".servegate")
#: `serving.auth.tokens.ADMIN_TOKEN_FILE`, not imported from there: that module brings SQLAlchemy.
_ADMIN_TOKEN_FILE = "admin.token"


class CredentialsError(ValueError):
    """A token file that was named or found but cannot be used (readable by others, empty, unreadable)."""


def is_loopback(url: str) -> bool:
    """Whether `url` (or a bare `host[:port]`) names this machine: localhost, 127.0.0.0/8 or ::1."""
    host = urlsplit(url if "://" in url else f"//{url}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def admin_token_path(state_dir: Path | str | None = None) -> Path:
    """Where `servegate up` keeps its admin token: `state_dir`, else `SERVEGATE_STATE_DIR`, else
    `./.servegate`."""
    base = state_dir or os.environ.get(STATE_DIR_ENV) or _DEFAULT_STATE_DIR
    return Path(base) / _ADMIN_TOKEN_FILE


def resolve_token(
    explicit: str | None,
    url: str,
    *,
    token_file: Path | str | None = None,
    state_dir: Path | str | None = None,
) -> str | None:
    """The token to send to the gateway at `url`, or None to send none (see the module's rule).

    `state_dir`: where to look for the admin token (default `SERVEGATE_STATE_DIR`, else
    `./.servegate`). A missing admin token file means no token; a token file given but missing,
    and any token file that others can read, raise CredentialsError.
    """
    if explicit and explicit.strip():
        return explicit.strip()
    if token_file:
        return _read(Path(token_file))
    if token := os.environ.get(TOKEN_ENV, "").strip():
        return token
    if named := os.environ.get(TOKEN_FILE_ENV):
        return _read(Path(named))
    if not is_loopback(url):
        return None
    path = admin_token_path(state_dir)
    if not path.is_file():
        return None
    return _read(path)


def _read(path: Path) -> str:
    # Imported here: only a client that reads a token file pays for serving.auth's imports.
    from serving.auth.files import read_token_file

    try:
        return read_token_file(path.expanduser())
    except FileNotFoundError:
        raise CredentialsError(f"token file {path} does not exist") from None
    except PermissionError as exc:
        if exc.errno is None:  # read_token_file's refusal, which names the fix (chmod 600)
            raise CredentialsError(f"refusing the token file: {exc}") from None
        raise CredentialsError(f"cannot read the token file {path}: {exc.strerror}") from None
    except (OSError, ValueError) as exc:
        raise CredentialsError(f"cannot read the token file {path}: {exc}") from None
