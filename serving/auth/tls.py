"""TLS for servegate's listeners (uvicorn and grpc.aio) and for its clients.

Servers: `tls_files(cert, key)` checks a `--tls-cert/--tls-key` pair once, when the command is
parsed, so a wrong path or a key that does not match fails with a clear message before anything
listens; `TlsFiles` then gives uvicorn its options and gRPC its credentials, and `add_port` opens
a gRPC port with TLS or without. Clients: `client_context(ca_cert)` is what httpx verifies with.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from grpc import aio

__all__ = [
    "CA_CERT_ENV",
    "TlsFiles",
    "add_port",
    "ca_cert_from_env",
    "client_context",
    "pinned_context",
    "tls_files",
]

#: the variable the SDK and the CLI read the CA bundle's path from when none is given.
CA_CERT_ENV = "SERVEGATE_CA_CERT"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A server's certificate (PEM, the chain after the leaf) and its unencrypted private key (PEM)."""

    cert: Path
    key: Path

    def uvicorn_options(self) -> dict[str, str]:
        """`uvicorn.Config` keyword arguments for HTTPS."""
        return {"ssl_certfile": str(self.cert), "ssl_keyfile": str(self.key)}

    def grpc_credentials(self) -> Any:
        """`grpc.ServerCredentials` for `server.add_secure_port`."""
        import grpc

        return grpc.ssl_server_credentials([(self.key.read_bytes(), self.cert.read_bytes())])

    def self_context(self) -> ssl.SSLContext:
        """A client context that trusts exactly this certificate, whatever names it carries: for a
        server calling itself (the gateway scraping its own /metrics) by an address its
        certificate need not name. Only this certificate verifies, so nothing else can answer."""
        return pinned_context(self.cert)


def pinned_context(cert: Path | str) -> ssl.SSLContext:
    """A client context that trusts exactly the certificate in `cert` (PEM), whatever names it
    carries: for a server's own parts calling it by an address its certificate need not name."""
    context = ssl.create_default_context(cadata=Path(cert).read_text())
    # The leaf itself is the trust anchor, even when a CA issued it.
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.check_hostname = False
    return context


def tls_files(cert: Path | str | None, key: Path | str | None) -> TlsFiles | None:
    """The checked pair for `--tls-cert` / `--tls-key` (None when neither is given).

    Raises ValueError naming the flag when only one is given, a file cannot be read, or the
    certificate and key cannot be loaded together (wrong format, not a pair, an encrypted key).
    """
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ValueError("give --tls-cert and --tls-key together")
    files = TlsFiles(Path(cert), Path(key))
    for flag, path in (("--tls-cert", files.cert), ("--tls-key", files.key)):
        if not path.is_file() or not os.access(path, os.R_OK):
            raise ValueError(f"{flag} {path}: no such readable file")
    try:
        # A password callback that gives none: an encrypted key fails here instead of prompting later.
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            files.cert, files.key, password=lambda: b""
        )
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(
            f"cannot use --tls-cert {files.cert} with --tls-key {files.key}: {exc} "
            "(both must be PEM, the key unencrypted and matching the certificate)"
        ) from None
    return files


def add_port(server: aio.Server, address: str, tls: TlsFiles | None) -> int:
    """Open `address` (HOST:PORT) on a gRPC server, with TLS when `tls` is given; the bound port."""
    if tls is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, tls.grpc_credentials())


def ca_cert_from_env(ca_cert: str | Path | None) -> Path | None:
    """`ca_cert` if given, else `SERVEGATE_CA_CERT`, else None."""
    chosen = ca_cert or os.environ.get(CA_CERT_ENV)
    return Path(chosen) if chosen else None


def client_context(ca_cert: str | Path | None) -> ssl.SSLContext | bool:
    """What httpx verifies server certificates with: the system's CAs (True) when `ca_cert` is
    None, else a context trusting the CA bundle (PEM) at `ca_cert`."""
    if ca_cert is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(ca_cert))
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"cannot read the CA certificate {ca_cert}: {exc}") from None
