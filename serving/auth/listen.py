"""Where a server may listen: loopback unless authentication is on, or the operator insists.

A server on 0.0.0.0 with authentication off hands the machine to anyone who can reach the port
(apply a python model and it runs). So the CLI refuses that combination unless `--insecure` says
the network is trusted, and the server then says so loudly at start-up.
"""

from __future__ import annotations

import ipaddress

__all__ = ["check_exposure", "exposure_warning", "is_loopback_host"]


def is_loopback_host(host: str) -> bool:
    """True for `localhost`, 127.0.0.0/8 and ::1 (brackets allowed); False for anything else,
    0.0.0.0, :: and "" (every interface) included."""
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name.removesuffix(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_exposure(
    host: str,
    auth_enabled: bool,
    insecure: bool,
    *,
    enable_auth: str = "turn authentication on",
) -> str | None:
    """Why a server must not listen on `host`, or None when it may.

    It may on a loopback address, with authentication on, or with `--insecure`. `enable_auth` is
    the command's own words for turning authentication on, e.g. "give --token-file".
    """
    if auth_enabled or insecure or is_loopback_host(host):
        return None
    return (
        f"refusing to listen on {host} with authentication off: anyone who can reach that address "
        f"could deploy models and run code on this machine. Listen on 127.0.0.1 (the default), "
        f"{enable_auth}, or pass --insecure if every machine that can reach it is trusted."
    )


def exposure_warning(host: str, auth_enabled: bool) -> str | None:
    """The start-up warning of a server that listens on a non-loopback `host` with authentication
    off (only `--insecure` lets that start); None when there is nothing to warn about."""
    if auth_enabled or is_loopback_host(host):
        return None
    return (
        f"INSECURE: listening on {host} with authentication OFF (--insecure): anyone who can reach "
        "this address can deploy models, run code on this machine and read every model"
    )
