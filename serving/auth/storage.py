"""The storage policy: what a request may make the server read or fetch.

A manifest's `storageUri`, a registration's `source` and a repository load's `storage_uri` come
from whoever may call the API; without a policy they could read any file of the machine or make it
fetch from addresses only it can reach (a cloud metadata service at 169.254.169.254, a database
on loopback). `StoragePolicy` allows:

- local paths and `file://` URIs only under its `roots`, after resolving `..` and symlinks;
- `http(s)://` URLs (and the `grpc://` servers of the triton format) only when every address their
  host resolves to is public, unless the host is one the operator allowed (`allowed_hosts`: names,
  addresses or CIDRs, optionally with a port);
- `s3://` and `registry://` always: their endpoints are the operator's configuration.

The decisions are pure (`forbidden_reason`, `StoragePolicy.check_path`); name resolution is one
injectable function, so tests need no DNS. Checks run when a manifest is applied or a model
registered, and again when the artifact is fetched: a name may resolve elsewhere by then.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import SplitResult, urlsplit
from urllib.request import url2pathname

from serving.errors import InvalidInput

__all__ = [
    "ALLOWED_HOSTS_ENV",
    "STORAGE_ROOTS_ENV",
    "Address",
    "Resolver",
    "StoragePolicy",
    "StorageRefused",
    "forbidden_reason",
    "is_forbidden_address",
    "resolve_host",
]

#: how a gateway hands its policy to the replicas it starts: roots joined with os.pathsep ...
STORAGE_ROOTS_ENV = "SERVEGATE_STORAGE_ROOTS"
#: ... and the allowed hosts joined with commas.
ALLOWED_HOSTS_ENV = "SERVEGATE_ALLOWED_HOSTS"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: (host, port) -> the addresses it resolves to, as strings.
Resolver = Callable[[str, int], Sequence[str]]

_DEFAULT_PORTS = {"http": 80, "https": 443}
#: servers a model is reached at rather than fetched from (the triton format's storageUri).
_SERVER_PORTS = {**_DEFAULT_PORTS, "grpc": 443}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# "package.module:Class" or "path/to/file.py:Class": the python format's storageUri.
_IMPORT_PATH = re.compile(r"^([\w./-]+):[A-Za-z_]\w*$")
_HOST_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")
_ALLOW_HOW = "the operator can allow it with --allow-host"


class StorageRefused(InvalidInput):
    """A path or URL the storage policy does not allow (400 / INVALID_ARGUMENT)."""


# -- addresses ------------------------------------------------------------------------------------


def forbidden_reason(ip: Address) -> str | None:
    """Why the server must not fetch from `ip` ("a loopback address", ...); None when it is a
    public address. IPv6 forms that carry an IPv4 address (IPv4-mapped, 6to4, Teredo, NAT64) are
    judged by the IPv4 address they reach."""
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        inner = forbidden_reason(embedded)
        return f"{inner} ({embedded} inside {ip})" if inner else None
    for reason, hit in (
        ("the unspecified address", ip.is_unspecified),
        ("a loopback address", ip.is_loopback),
        ("a link-local address", ip.is_link_local),
        ("a multicast address", ip.is_multicast),
        ("a private address", ip.is_private),
        ("a reserved address", ip.is_reserved),
        # Shared (100.64/10), documentation, benchmarking ...: not reachable from the internet.
        ("not a public address", not ip.is_global),
    ):
        if hit:
            return reason
    return None


def is_forbidden_address(ip: Address) -> bool:
    """Whether fetching from `ip` is refused unless the operator allowed it."""
    return forbidden_reason(ip) is not None


def _embedded_ipv4(ip: Address) -> ipaddress.IPv4Address | None:
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client: where the packets end up
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (the system resolver, as a connection would use it)."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


# -- allowed hosts --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _HostRule:
    """One `--allow-host` entry: a host name, or an address or network; optionally one port."""

    name: str | None
    network: Network | None
    port: int | None

    def allows_name(self, host: str, port: int) -> bool:
        return self.name is not None and self.name == host and self.port in (None, port)

    def allows_address(self, ip: Address, port: int) -> bool:
        return (
            self.network is not None
            and ip.version == self.network.version
            and ip in self.network
            and self.port in (None, port)
        )


def _parse_rule(entry: str) -> _HostRule:
    """`host`, `host:port`, `10.0.0.5`, `10.0.0.0/8`, `[::1]:9000`, `fd00::/8` ..."""
    text = entry.strip().lower().rstrip(".")
    if not text:
        raise ValueError("an allowed host must not be empty")
    port_text = None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"allowed host '{entry}': use [IPv6] or [IPv6]:PORT")
        port_text = rest[1:] or None
    elif text.count(":") == 1:  # host:port (an IPv6 address has more colons)
        host, port_text = text.split(":")
    else:
        host = text
    port = None
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"allowed host '{entry}': the port must be 1-65535")
        port = int(port_text)
    try:
        return _HostRule(None, ipaddress.ip_network(host, strict=False), port)
    except ValueError:
        pass
    if not _HOST_NAME.match(host):
        raise ValueError(f"allowed host '{entry}' is not a host name, an address or a network (CIDR)")
    return _HostRule(host, None, port)


# -- the policy -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoragePolicy:
    """Where requests may make the server read (`roots`) and fetch from (`allowed_hosts`).

    roots: folders whose contents may be read; resolved (absolute, symlinks followed) when the
    policy is made. allowed_hosts: host names, addresses or CIDR networks, each optionally with
    `:port`, that may be fetched from although they are loopback, private or link-local (an
    internal model store). A name entry trusts that name wherever it resolves.

    "No policy" (every path and URL allowed) is `None` where a policy is taken, never an instance.
    """

    roots: tuple[Path, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    _rules: tuple[_HostRule, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        roots = tuple(dict.fromkeys(Path(r).expanduser().resolve() for r in self.roots))
        hosts = tuple(h.strip() for h in self.allowed_hosts if h.strip())
        object.__setattr__(self, "roots", roots)
        object.__setattr__(self, "allowed_hosts", hosts)
        object.__setattr__(self, "_rules", tuple(_parse_rule(h) for h in hosts))

    # -- environment (gateway -> replicas) ----------------------------------------------------

    def to_env(self) -> dict[str, str]:
        """The variables that make `from_env` in a replica process return this policy."""
        return {
            STORAGE_ROOTS_ENV: os.pathsep.join(str(r) for r in self.roots),
            ALLOWED_HOSTS_ENV: ",".join(self.allowed_hosts),
        }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StoragePolicy | None:
        """The policy a gateway handed down, or None when $SERVEGATE_STORAGE_ROOTS is not set (an
        empty value is a policy with no roots: every local path refused)."""
        env = os.environ if environ is None else environ
        roots = env.get(STORAGE_ROOTS_ENV)
        if roots is None:
            return None
        return cls(
            roots=tuple(Path(r) for r in roots.split(os.pathsep) if r),
            allowed_hosts=tuple(h for h in env.get(ALLOWED_HOSTS_ENV, "").split(",") if h.strip()),
        )

    # -- checks ---------------------------------------------------------------------------------

    def check_uri(self, uri: str, resolve: Resolver = resolve_host) -> None:
        """Raise StorageRefused unless `uri` (a storageUri, a registration source, a logger or graph
        URL) is allowed. Schemes the policy does not judge pass: storage reports unsupported ones."""
        if "://" not in uri and not uri.startswith("file:"):
            target = _import_target(uri)
            if target is not None:  # a python model: the file that holds the class
                if _is_module_name(target):
                    return  # an installed module, not storage (code trust decides on it)
                uri = target
            self.check_path(uri)
            return
        parts = urlsplit(uri)
        scheme = parts.scheme.lower()
        if scheme == "file":
            self.check_path(_file_path(uri, parts))
        elif scheme in _SERVER_PORTS:
            host, port = _host_port(uri, parts, _SERVER_PORTS)
            self.addresses(host, port, resolve, uri)

    def check_path(self, path: str | Path) -> Path:
        """`path` resolved (`~`, relative to the working directory, `..` and symlinks), if it lies
        under one of the roots; else StorageRefused."""
        try:
            resolved = Path(path).expanduser().resolve(strict=False)
        except (RuntimeError, OSError, ValueError) as exc:  # ~nobody/, a NUL byte, a symlink loop
            raise StorageRefused(f"path '{path}' cannot be resolved: {exc}") from None
        if any(resolved.is_relative_to(root) for root in self.roots):
            return resolved
        roots = ", ".join(str(r) for r in self.roots) or "none"
        shown = f"'{path}'" + (f" (resolved: {resolved})" if str(resolved) != str(path) else "")
        raise StorageRefused(
            f"path {shown} is outside the storage roots ({roots}); "
            "the operator can allow its folder with --storage-root"
        )

    def check_url(self, url: str, resolve: Resolver = resolve_host) -> None:
        """Raise StorageRefused unless `url` is http(s) and its host is allowed or resolves only to
        public addresses."""
        host, port = _host_port(url, urlsplit(url), _DEFAULT_PORTS)
        self.addresses(host, port, resolve, url)

    def addresses(
        self, host: str, port: int, resolve: Resolver = resolve_host, url: str | None = None
    ) -> list[Address]:
        """The addresses of `host` a fetch may connect to (all of them), or StorageRefused when any
        is forbidden and not allowed. A fetch connects only to what this returned, so a name cannot
        resolve to one address for the check and another for the connection."""
        what = url or f"{host}:{port}"
        host = host.lower().rstrip(".")
        named = any(rule.allows_name(host, port) for rule in self._rules)
        try:
            found = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                found = [ipaddress.ip_address(a) for a in resolve(host, port)]
            except (OSError, UnicodeError, ValueError) as exc:
                raise StorageRefused(f"cannot check {what}: host '{host}' does not resolve ({exc})") from None
        if not found:
            raise StorageRefused(f"cannot check {what}: host '{host}' has no address")
        if named:
            return found
        for ip in found:
            reason = forbidden_reason(ip)
            if reason is not None and not any(rule.allows_address(ip, port) for rule in self._rules):
                why = f"'{host}' resolves to {ip}, {reason}" if str(ip) != host else f"{ip} is {reason}"
                raise StorageRefused(f"refusing to fetch {what}: {why}; {_ALLOW_HOW} {_suggest(host, port)}")
        return found

    def connectable(self, host: str, port: int) -> list[Address]:
        """`addresses` as a connection wants them: a refusal is an OSError saying why (the calls a
        manifest's URLs make, checked again at every connection: DNS may have changed)."""
        try:
            return self.addresses(host, port)
        except StorageRefused as exc:
            raise OSError(errno.EACCES, exc.message) from None  # strerror: aiohttp shows it


def _suggest(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _host_port(url: str, parts: SplitResult, ports: Mapping[str, int]) -> tuple[str, int]:
    scheme = parts.scheme.lower()
    if scheme not in ports:
        raise StorageRefused(f"refusing to fetch {url}: only http:// and https:// URLs may be fetched")
    netloc = parts.netloc
    # Parsers disagree on such authorities; the one that connects might not read the host we checked.
    if netloc.count("@") > 1 or any(c in netloc for c in "\\ \t\r\n") or any(ord(c) < 32 for c in netloc):
        raise StorageRefused(f"refusing to fetch {url}: its host part is ambiguous")
    try:
        port = parts.port
    except ValueError:
        raise StorageRefused(f"refusing to fetch {url}: bad port") from None
    if not parts.hostname:
        raise StorageRefused(f"refusing to fetch {url}: it names no host")
    return parts.hostname, port or ports[scheme]


def _file_path(uri: str, parts: SplitResult) -> Path:
    if parts.netloc not in ("", "localhost"):
        raise StorageRefused(f"file URI '{uri}' names host '{parts.netloc}'; use file:///absolute/path")
    return Path(url2pathname(parts.path))


def _import_target(uri: str) -> str | None:
    match = _IMPORT_PATH.match(uri)
    return match.group(1) if match else None


def _is_module_name(target: str) -> bool:
    # The python runtime imports FILE.py:Class (or anything with a slash) from a file, else a module.
    return not (target.endswith(".py") or "/" in target)
