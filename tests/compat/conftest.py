"""Fixtures for the hvac compatibility suite: real `keyhold server` processes on 127.0.0.1 behind
real TLS (a CA made per session with `cryptography`), driven by an unmodified hvac client.

The binary comes from the KEYHOLD_BIN environment variable, which the test runner sets. Every wait
is bounded in count; no test asserts on elapsed time.
"""

import datetime
import ipaddress
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import hvac
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

WAIT_ATTEMPTS = 400
WAIT_INTERVAL = 0.05


def pytest_sessionstart(session):
    binary = os.environ.get("KEYHOLD_BIN")
    if not binary:
        pytest.exit(
            "KEYHOLD_BIN is not set: point it at the keyhold binary, e.g. "
            "KEYHOLD_BIN=$CARGO_TARGET_DIR/debug/keyhold pytest tests/compat",
            returncode=2,
        )
    if not os.access(binary, os.X_OK):
        pytest.exit(f"KEYHOLD_BIN={binary} is not an executable file", returncode=2)


# --- PKI ---------------------------------------------------------------------------------------


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


class Pki:
    """A throw-away CA that issues server certificates for 127.0.0.1 and localhost."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyhold compat CA")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.ca_name = name
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca_path = directory / "ca.pem"
        self.ca_path.write_bytes(self.ca_cert.public_bytes(serialization.Encoding.PEM))

    def issue_server(self, stem: str, ip: str = "127.0.0.1"):
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, stem)]))
            .issuer_name(self.ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(ip))]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )
        cert_path = self.directory / f"{stem}.crt"
        key_path = self.directory / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_private(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        return cert_path, key_path


# --- the server process ------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A free port whose successor is free too (Vault's default cluster port is api port + 1)."""
    for _ in range(64):
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        with socket.socket() as s2:
            try:
                s2.bind((host, port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no pair of free ports found in 64 tries")


class KeyholdServer:
    """One `keyhold server -config=...` process with raft storage and a TLS listener."""

    def __init__(self, directory: Path, pki: Pki, name: str = "n1"):
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.pki = pki
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.cert_path, self.key_path = pki.issue_server(f"{name}-server")
        self.cert_path = self.cert_path.rename(self.directory / "server.crt")
        self.key_path = self.key_path.rename(self.directory / "server.key")
        self.data_dir = self.directory / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.log_path = self.directory / "keyhold.log"
        self.config_path = self.directory / "keyhold.hcl"
        self.config_path.write_text(
            f'''storage "raft" {{
  path    = "{self.data_dir}"
  node_id = "{name}"
}}

listener "tcp" {{
  address       = "127.0.0.1:{self.port}"
  tls_cert_file = "{self.cert_path}"
  tls_key_file  = "{self.key_path}"
}}

disable_mlock = true
api_addr      = "{self.url}"
cluster_addr  = "https://127.0.0.1:{self.port + 1}"
cluster_name  = "keyhold-compat"
log_level     = "info"
'''
        )
        self.process = None
        self.keys = None
        self.keys_base64 = None
        self.root_token = None

    @property
    def ca_path(self) -> str:
        return str(self.pki.ca_path)

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        log = open(self.log_path, "ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
        self.process = subprocess.Popen(
            [os.environ["KEYHOLD_BIN"], "server", f"-config={self.config_path}"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        log.close()
        self.wait_serving()

    def wait_serving(self) -> None:
        for _ in range(WAIT_ATTEMPTS):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"keyhold exited with {self.process.returncode} before serving:\n{self.log_tail()}"
                )
            try:
                requests.get(f"{self.url}/v1/sys/health", verify=self.ca_path, timeout=2)
                return
            except requests.RequestException:
                time.sleep(WAIT_INTERVAL)
        raise RuntimeError(f"keyhold did not answer after {WAIT_ATTEMPTS} attempts:\n{self.log_tail()}")

    def client(self, token=None) -> hvac.Client:
        return hvac.Client(url=self.url, verify=self.ca_path, token=token, timeout=30)

    def root_client(self) -> hvac.Client:
        return self.client(self.root_token)

    def init(self, shares: int = 5, threshold: int = 3) -> dict:
        result = self.client().sys.initialize(shares, threshold)
        self.keys = result["keys"]
        self.keys_base64 = result["keys_base64"]
        self.root_token = result["root_token"]
        self.threshold = threshold
        return result

    def unseal(self) -> None:
        self.client().sys.submit_unseal_keys(self.keys[: self.threshold])
        self.wait_active()

    def wait_active(self) -> None:
        for _ in range(WAIT_ATTEMPTS):
            status = requests.get(f"{self.url}/v1/sys/health", verify=self.ca_path, timeout=5)
            if status.status_code == 200:
                return
            time.sleep(WAIT_INTERVAL)
        raise RuntimeError(f"not active after {WAIT_ATTEMPTS} attempts:\n{self.log_tail()}")

    def send_signal(self, sig) -> None:
        self.process.send_signal(sig)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def server_factory(tmp_path, pki):
    """Starts fresh, uninitialised servers for one test; stops them all afterwards."""
    servers = []

    def make(name: str = "n1") -> KeyholdServer:
        server = KeyholdServer(tmp_path / f"{name}-{len(servers)}", pki, name)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def fresh_server(server_factory) -> KeyholdServer:
    """An uninitialised server of its own."""
    return server_factory()


@pytest.fixture
def active_server(server_factory) -> KeyholdServer:
    """A server of its own, initialised (3 shares, threshold 2) and unsealed, with KV v2 at secret/."""
    server = server_factory()
    server.init(3, 2)
    server.unseal()
    server.root_client().sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    return server


@pytest.fixture(scope="session")
def session_server(tmp_path_factory, pki):
    """One server shared by the tests that leave it as they found it: initialised (5 shares,
    threshold 3), unsealed, KV v2 mounted at secret/."""
    server = KeyholdServer(tmp_path_factory.mktemp("session"), pki)
    server.start()
    try:
        server.init(5, 3)
        server.unseal()
        server.root_client().sys.enable_secrets_engine(
            "kv", path="secret", options={"version": "2"}
        )
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(session_server) -> hvac.Client:
    """An hvac client with the session server's root token."""
    return session_server.root_client()
