"""Who may call what: tokens with roles, the scope every route and RPC declares, and the one check
in front of the data plane and the control API (see `guard.py`).

The storage-and-trust policy (what a request may make the server read, fetch or run) lives beside
it in `storage.py`; TLS settings in `tls.py`.
"""

from serving.auth.guard import Authenticator, Guard, StaticTokens, bearer
from serving.auth.scopes import ROLE_SCOPES, Principal, Role, Scope, Target, refusal

__all__ = [
    "ROLE_SCOPES",
    "Authenticator",
    "Guard",
    "Principal",
    "Role",
    "Scope",
    "StaticTokens",
    "Target",
    "bearer",
    "refusal",
]
