"""Shared test helpers: free ports, polling, a real `servegate model serve` process on loopback, the
fakes the storage tests fetch from (a static HTTP server and moto's S3), a real Prometheus and a real
PostgreSQL, all on 127.0.0.1."""

from __future__ import annotations

import contextlib
import functools
import glob
import http.server
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Self

import httpx

ROOT = Path(__file__).resolve().parent.parent

__all__ = [
    "ROOT",
    "FileServer",
    "GatewayProcess",
    "ReplicaProcess",
    "ServerProcess",
    "TlsCertificates",
    "free_port",
    "fresh_database",
    "make_certificates",
    "moto_server",
    "postgres_server",
    "processes_using",
    "prometheus_server",
    "serve_files",
    "until",
]


def until(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy, and return that; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class FileServer:
    url: str
    root: Path
    #: the paths of every GET, in order.
    gets: list[str] = field(default_factory=list)


class _FileHandler(http.server.SimpleHTTPRequestHandler):
    gets: list[str]

    def do_GET(self) -> None:
        self.gets.append(self.path)
        if self.path == "/truncated":
            # Promise more than is sent, then hang up: the client sees a broken stream.
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"partial")
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve_files(root: Path) -> Iterator[FileServer]:
    """A static HTTP server for `root` on a free loopback port; `/truncated` answers a broken body."""
    gets: list[str] = []
    handler = type("Handler", (_FileHandler,), {"gets": gets})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=root))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield FileServer(f"http://127.0.0.1:{server.server_address[1]}", root, gets)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 (and the rest of AWS) on a free loopback port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class TlsCertificates:
    """A throwaway CA and a server certificate it issued for localhost, 127.0.0.1 and ::1 (PEM files)."""

    ca: Path
    cert: Path
    key: Path

    def context(self) -> ssl.SSLContext:
        """A client context that trusts the CA."""
        return ssl.create_default_context(cafile=self.ca)

    def server_args(self) -> list[str]:
        return ["--tls-cert", str(self.cert), "--tls-key", str(self.key)]


def make_certificates(folder: Path) -> TlsCertificates:
    """Make a CA and a server certificate (made here, with `cryptography`) under `folder`."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def issue(subject: str, key: Any, issuer: str, signer: Any, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
            )
        )
        if ca:
            usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
            builder = builder.add_extension(usage, critical=True)
        else:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            names.append(x509.IPAddress(ipaddress.ip_address("::1")))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
            usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
            builder = builder.add_extension(usage, critical=True)
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = issue("servegate test CA", ca_key, "servegate test CA", ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = issue("127.0.0.1", server_key, "servegate test CA", ca_key, ca=False)

    folder.mkdir(parents=True, exist_ok=True)
    files = TlsCertificates(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return files


class ServerProcess:
    """A `servegate` sub-command, its output kept in a file; always stopped by `stop()`."""

    url: str
    #: the CA its https certificate is checked against while waiting for it (None: plain http).
    ca_cert: Path | None = None

    def __init__(self, command: list[str], env: dict[str, str] | None = None) -> None:
        # A file, not a pipe: a pipe nobody reads fills up and blocks a chatty server.
        self._log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving", *command],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_live(self, timeout: float = 60.0) -> Self:
        self._wait("/v2/health/live", timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> Self:
        self._wait("/v2/health/ready", timeout)
        return self

    def _wait(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()}")
            try:
                verify = ssl.create_default_context(cafile=self.ca_cert) if self.ca_cert else True
                if httpx.get(self.url + path, timeout=1.0, verify=verify).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"server not answering 200 on {path} after {timeout}s:\n{self.output()}")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.process.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def output(self) -> str:
        """Everything the server has printed so far."""
        self._log.flush()
        self._log.seek(0)
        return self._log.read()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ReplicaProcess(ServerProcess):
    """`servegate model serve ARGS` on 127.0.0.1 and free ports; over TLS with `tls`."""

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        grpc: bool = True,
        tls: TlsCertificates | None = None,
    ) -> None:
        self.http_port = free_port()
        self.grpc_port = free_port() if grpc else None
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.http_port}"
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        self.ca_cert = tls.ca if tls else None
        ports = ["--grpc-port", str(self.grpc_port)] if grpc else ["--no-grpc"]
        ports += tls.server_args() if tls else []
        command = ["model", "serve", "--host", "127.0.0.1", "--http-port", str(self.http_port), *ports, *args]
        super().__init__(command, env)


class GatewayProcess(ServerProcess):
    """`servegate up ARGS` on 127.0.0.1 and free ports, its state under `state_dir`; over TLS with `tls`.

    `token` is the admin token the gateway writes into its state dir (None with --no-auth), and
    `headers` carry it, for tests that call the gateway as its operator.
    """

    def __init__(
        self,
        state_dir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        tls: TlsCertificates | None = None,
    ) -> None:
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.http_port}"
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        self.ca_cert = tls.ca if tls else None
        self.state_dir = state_dir
        command = ["up", "--host", "127.0.0.1", "--http-port", str(self.http_port)]
        command += ["--grpc-port", str(self.grpc_port), "--state-dir", str(state_dir), *args]
        command += tls.server_args() if tls else []
        super().__init__(command, env)

    @property
    def token(self) -> str | None:
        path = self.state_dir / "admin.token"
        return path.read_text().strip() if path.exists() else None

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"} if self.token else {}


def processes_using(folder: Path) -> set[int]:
    """Live processes whose command line names `folder` (replicas' --port-file lies under the state dir)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):  # gone meanwhile
            continue
        if str(folder).encode() in cmdline and state != "Z":
            found.add(int(entry.name))
    return found


def _missing_tool(message: str) -> NoReturn:
    """Skip the test for want of a test tool, or fail it under CI=true, where a skip must not pass."""
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"{message} (CI=true: a missing test tool fails the run)")
    import pytest

    pytest.skip(message)


@contextlib.contextmanager
def prometheus_server(config_text: str, timeout: float = 30.0) -> Iterator[str]:
    """A real Prometheus (`make test-tools` installs it) running `config_text` on a free loopback port,
    its storage in a temporary folder; yields its base URL. Without the binary the test is skipped,
    or fails under CI=true, where a missing tool must not pass as a skip."""
    binary = shutil.which("prometheus")
    if binary is None:
        _missing_tool("prometheus is not installed: run make test-tools")
    with tempfile.TemporaryDirectory(prefix="prometheus-") as folder, open(f"{folder}/log", "w+") as log:
        config = Path(folder) / "prometheus.yml"
        config.write_text(config_text)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--storage.tsdb.path={folder}/data",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        def output() -> str:
            log.flush()
            log.seek(0)
            return log.read()

        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"prometheus exited with {process.returncode}:\n{output()}")
                try:
                    if httpx.get(f"{url}/-/ready", timeout=1.0, trust_env=False).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"prometheus not ready after {timeout}s:\n{output()}")
                time.sleep(0.05)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(10.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _postgres_bindir() -> Path | None:
    """Debian's newest PostgreSQL major version: /usr/lib/postgresql/NN/bin, if it has initdb and postgres."""
    found = [Path(initdb).parent for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    found = [bindir for bindir in found if (bindir / "postgres").is_file()]

    def version(bindir: Path) -> tuple[int, ...]:
        try:
            return tuple(int(part) for part in bindir.parent.name.split("."))
        except ValueError:
            return ()

    return max(found, key=version, default=None)


@contextlib.contextmanager
def postgres_server(timeout: float = 30.0) -> Iterator[str]:
    """A real, throwaway PostgreSQL (`make test-tools` installs Debian's package) on a free loopback
    port, its data and unix socket in a temporary folder, with a trusted superuser and a database both
    named servegate; yields its SQLAlchemy URL. Without the binaries the test is skipped, or fails under
    CI=true. initdb and postgres refuse to run as root, so as root they run as the package's `postgres`
    user."""
    import psycopg

    bindir = _postgres_bindir()
    if bindir is None:
        _missing_tool("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): make test-tools")
    run_as: dict[str, Any] = {}
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            _missing_tool("running as root, and no postgres user to run PostgreSQL as: make test-tools")
        run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    with tempfile.TemporaryDirectory(prefix="postgres-") as folder, open(f"{folder}/log", "w+") as log:
        if run_as:
            os.chown(folder, run_as["user"], run_as["group"])
        data = f"{folder}/data"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
        initdb = subprocess.run(
            [
                bindir / "initdb", "-D", data, "-U", "servegate", "--auth=trust",
                "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions",
            ],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False, **run_as,
        )  # fmt: skip
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb exited with {initdb.returncode}:\n{initdb.stdout[-4000:]}")
        port = free_port()
        process = subprocess.Popen(
            [
                bindir / "postgres", "-D", data, "-h", "127.0.0.1", "-p", str(port), "-k", folder,
                "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "synchronous_commit=off",
                "-c", "shared_buffers=16MB", "-c", "max_connections=50",
            ],
            env=env, stdout=log, stderr=subprocess.STDOUT, **run_as,
        )  # fmt: skip

        def output() -> str:
            log.flush()
            log.seek(0)
            return log.read()[-4000:]

        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"postgres exited with {process.returncode}:\n{output()}")
                try:
                    connection = psycopg.connect(
                        host="127.0.0.1", port=port, user="servegate", dbname="postgres",
                        connect_timeout=1, autocommit=True,
                    )  # fmt: skip
                    break
                except psycopg.OperationalError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"postgres not accepting connections after {timeout}s:\n{output()}")
                time.sleep(0.05)
            with connection:
                connection.execute("CREATE DATABASE servegate")
            yield f"postgresql+psycopg://servegate@127.0.0.1:{port}/servegate"
        finally:
            # SIGINT is postgres' fast shutdown (it ends open sessions); SIGQUIT its immediate one.
            for stop, wait in ((signal.SIGINT, 15.0), (signal.SIGQUIT, 5.0), (signal.SIGKILL, None)):
                if process.poll() is None:
                    process.send_signal(stop)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(wait)


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the PostgreSQL at `server_url`; its URL, dropped afterwards."""
    import uuid

    import sqlalchemy as sa

    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield server_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
        admin.dispose()
