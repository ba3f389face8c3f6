"""Fixtures for the hvac compatibility suite: real `keyhold server` processes on 127.0.0.x behind
real TLS (a CA made per session with `cryptography`), driven by an unmodified hvac client.

The binary comes from the KEYHOLD_BIN environment variable, which the test runner sets. Every wait
is bounded in count; no test asserts on elapsed time.

KEYHOLD_COMPAT_TOPOLOGY picks what the tests talk to:
- `single` (default): one node, which is the active node;
- `cluster`: three raft nodes on 127.0.0.1-3 that form through `retry_join`, and the client is
  pointed at a standby, so every request the tests make is forwarded to the active node. Tests
  marked `single_node(reason)` are skipped there, with the reason.
- `provisioned`: three nodes made by `provision up` (PROVISION_BIN, else `provision` beside
  KEYHOLD_BIN) from an environment written to the test's directory: like environments/ci.hcl
  (fast autopilot timers, its policies, audit device, KV at kv/, userpass and AppRole), on a
  loopback range of its own (127.250-254.N.1-3), with `init { revoke_root_token = false }` and
  the shares the fixture asks for. The root token comes from `provision up --show-secrets`, the
  client trusts the environment's CA and talks to a standby, `unseal()` is `provision unseal`,
  and `stop()` is `provision down --purge`. The session cluster is one environment; a test that
  needs a cluster of its own (`active_server`) gets an environment of its own, without the audit
  device (the audit tests add theirs and need it to be the only one). `single_node` tests and
  those that need an uninitialised node are skipped, as in `cluster`.
- `vm`: the cluster the VM tier (`tests/vm/run`) deployed with `provision up` onto three VMs
  over SSH: KEYHOLD_COMPAT_ENV names its environment file, KEYHOLD_COMPAT_STATE_DIR its state
  directory, KEYHOLD_COMPAT_URLS its nodes' API addresses (comma-separated). The root token and
  shares come from `provision up --show-secrets` (which changes nothing on a healthy cluster);
  every test shares that one cluster (a test that asks for a cluster of its own gets it too) and
  nothing is torn down. Tests that read an audit file they named on this machine
  (`same_machine`) are skipped. The servers' logs are on the VMs: the searchable secrets the
  run recorded are written to KEYHOLD_COMPAT_SECRETS_OUT (0600) at the end, and the VM tier
  searches each VM's journal and log directory for them over SSH.
"""

import datetime
import ipaddress
import itertools
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import hvac
import pytest
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

def cluster_session(ca_path: str) -> requests.Session:
    """A session that asks again, twice, after a 503: what Vault's Go client does by default
    (VAULT_MAX_RETRIES=2) and what a client of a cluster needs while it elects a new leader
    ("node not active but active cluster node not found"). hvac itself never retries."""
    retry = Retry(total=2, connect=0, read=0, status_forcelist=[503], allowed_methods=None,
                  backoff_factor=1, raise_on_status=False, respect_retry_after_header=True)
    session = requests.Session()
    # hvac applies `verify` only to sessions it makes itself.
    session.verify = ca_path
    session.mount("https://", HTTPAdapter(max_retries=retry))
    return session


WAIT_ATTEMPTS = 400
WAIT_INTERVAL = 0.05
TOPOLOGIES = ("single", "cluster", "provisioned", "vm")
TOPOLOGY = os.environ.get("KEYHOLD_COMPAT_TOPOLOGY", "single")


# --- no secret in any log ----------------------------------------------------------------------
#
# Every secret the run sends or receives is recorded: KV values, passwords, AppRole secret IDs,
# tokens, unseal and recovery shares, root tokens, transit plaintexts (hvac and this file both
# talk through requests.Session). Each server's logs and audit files are searched for all of them
# before the server goes away, and at the end of the session for what is left on disk; a finding
# fails the session. Audit files hold HMACs of these values (Vault's rule), server logs neither.
# Values shorter than MIN_SECRET_LEN are not searched for: a short test value ("bar") is found in
# any log by chance.

MIN_SECRET_LEN = 8
SECRET_FIELDS = {
    "password", "secret_id", "client_token", "token", "root_token", "plaintext", "key", "otp",
    "encoded_token", "encoded_root_token", "recovery_keys", "recovery_keys_b64",
}
# Only in the answers that hand out shares (elsewhere `keys` are the names a LIST returns).
SHARE_FIELDS = {"keys", "keys_base64", "unseal_keys_b64"}
SECRETS: dict[str, str] = {}  # value -> what it was (for the message; the value is never shown)
LOG_FINDINGS: list[str] = []
# Every URL the run requested: a value that is also part of a path was used as a name (paths
# are logged in clear, by Vault's rules too), not kept as a secret.
URLS: set[str] = set()


def _record(value, what: str) -> None:
    if isinstance(value, str):
        if len(value) >= MIN_SECRET_LEN and not value.isdigit():
            SECRETS.setdefault(value, what)
    elif isinstance(value, list):
        for item in value:
            _record(item, what)
    elif isinstance(value, dict):
        for item in value.values():
            _record(item, what)


def _record_fields(body, url: str) -> None:
    if isinstance(body, dict):
        shares = url.rstrip("/").endswith("/sys/init") or "/sys/rekey" in url
        for key, value in body.items():
            if key in SECRET_FIELDS or (shares and key in SHARE_FIELDS):
                _record(value, key)
            else:
                _record_fields(value, url)
    elif isinstance(body, list):
        for item in body:
            _record_fields(item, url)


_session_request = requests.Session.request


def _recording_request(self, method, url, *args, **kwargs):
    URLS.add(str(url))
    for headers in (self.headers, kwargs.get("headers") or {}):
        _record(headers.get("X-Vault-Token"), "a token")
    body = kwargs.get("json")
    if isinstance(body, dict):
        if "/data/" in url and isinstance(body.get("data"), dict):
            _record(body["data"], "a KV secret value")
        _record_fields(body, url)
    response = _session_request(self, method, url, *args, **kwargs)
    try:
        _record_fields(response.json(), url)
    except ValueError:
        pass
    return response


requests.Session.request = _recording_request


def scan_logs_for_secrets(paths) -> None:
    """Searches each file for every recorded secret; findings name the file, the line and what
    the value was, never the value."""
    for path in paths:
        path = Path(path)
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for value, what in searchable_secrets().items():
            at = text.find(value)
            if at >= 0:
                line = text.count("\n", 0, at) + 1
                where = _json_field(text.splitlines()[line - 1], value)
                LOG_FINDINGS.append(
                    f"{path}:{line}: {what} ({len(value)} characters) in clear{where}"
                )


def _json_field(line: str, value: str) -> str:
    """For an audit entry: which field holds `value`, and the request's path and the entry's
    type (never the value)."""
    import json

    try:
        entry = json.loads(line)
    except ValueError:
        return ""

    def find(node, trail):
        if isinstance(node, str):
            return trail if value in node else None
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        for key, child in items:
            found = find(child, f"{trail}.{key}" if trail else str(key))
            if found:
                return found
        return None

    field = find(entry, "")
    request = entry.get("request", {}) if isinstance(entry, dict) else {}
    return f" (field {field} of a {entry.get('type')} entry for {request.get('operation')} {request.get('path')})"


def log_files(root: Path):
    return [p for pattern in ("*.log", "*.out") for p in Path(root).rglob(pattern)]


def searchable_secrets() -> dict:
    """The recorded secrets a log is searched for: those not also used as a name in a URL."""
    return {value: what for value, what in SECRETS.items() if not any(value in url for url in URLS)}


def pytest_sessionfinish(session, exitstatus):
    scan_logs_for_secrets(log_files(session.config._tmp_path_factory.getbasetemp()))
    out = os.environ.get("KEYHOLD_COMPAT_SECRETS_OUT")
    if TOPOLOGY == "vm" and out:
        import json

        _write_private(Path(out), json.dumps(searchable_secrets()).encode())
    if LOG_FINDINGS:
        findings = sorted(set(LOG_FINDINGS))
        print(f"\n{len(findings)} secret(s) found in clear in server logs or audit files:")
        for finding in findings[:50]:
            print("  " + finding)
        session.exitstatus = 1
    else:
        print(f"\nno secret in any log: {len(SECRETS)} recorded secrets searched for")
CLUSTER_SIZE = 3


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
    if TOPOLOGY not in TOPOLOGIES:
        pytest.exit(
            f"KEYHOLD_COMPAT_TOPOLOGY={TOPOLOGY!r}: expected one of {', '.join(TOPOLOGIES)}",
            returncode=2,
        )
    if TOPOLOGY == "vm":
        unset = [v for v in ("KEYHOLD_COMPAT_ENV", "KEYHOLD_COMPAT_STATE_DIR", "KEYHOLD_COMPAT_URLS")
                 if not os.environ.get(v)]
        if unset:
            pytest.exit(
                f"vm topology: {', '.join(unset)} not set; tests/vm/run sets them for the cluster "
                "it deploys onto its VMs",
                returncode=2,
            )
    if TOPOLOGY in ("provisioned", "vm") and not os.access(provision_bin(), os.X_OK):
        pytest.exit(
            f"no provision binary at {provision_bin()}: build it (`cargo build --bins`) or set "
            "PROVISION_BIN",
            returncode=2,
        )


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "single_node(reason): the test needs the node it talks to to be the only node (it "
        "seals it and expects that very address to go down); skipped in cluster topology",
    )
    config.addinivalue_line(
        "markers",
        "same_machine(reason): the test reads a file the server writes where the test names it "
        "(an audit file); skipped in vm topology, whose servers run on other machines",
    )


def pytest_report_header(config):
    return f"keyhold topology: {TOPOLOGY}"


def pytest_collection_modifyitems(config, items):
    if TOPOLOGY == "single":
        return
    for item in items:
        for name in ("single_node", "same_machine"):
            marker = item.get_closest_marker(name)
            if marker is None or (name == "same_machine" and TOPOLOGY != "vm"):
                continue
            reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
            item.add_marker(pytest.mark.skip(reason=f"{TOPOLOGY} topology: {reason}"))


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
    """One `keyhold server -config=...` process with raft storage and a TLS listener on `ip`."""

    def __init__(self, directory: Path, pki: Pki, name: str = "n1", ip: str = "127.0.0.1"):
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.pki = pki
        self.name = name
        self.ip = ip
        self.port = free_port(ip)
        self.url = f"https://{ip}:{self.port}"
        # api_addr of the nodes this one joins through `retry_join` (set before `start`).
        self.retry_join = []
        self.cert_path, self.key_path = pki.issue_server(f"{name}-server", ip)
        self.cert_path = self.cert_path.rename(self.directory / "server.crt")
        self.key_path = self.key_path.rename(self.directory / "server.key")
        self.data_dir = self.directory / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.log_path = self.directory / "keyhold.log"
        self.config_path = self.directory / "keyhold.hcl"
        self.write_config()
        self.process = None
        self.keys = None
        self.keys_base64 = None
        self.root_token = None
        self.threshold = None

    def write_config(self) -> None:
        joins = "".join(
            f'''
  retry_join {{
    leader_api_addr     = "{leader}"
    leader_ca_cert_file = "{self.pki.ca_path}"
  }}'''
            for leader in self.retry_join
        )
        raft_tuning = "\n  performance_multiplier = 1" if self.retry_join else ""
        self.config_path.write_text(
            f'''storage "raft" {{
  path    = "{self.data_dir}"
  node_id = "{self.name}"{raft_tuning}{joins}
}}

listener "tcp" {{
  address       = "{self.ip}:{self.port}"
  tls_cert_file = "{self.cert_path}"
  tls_key_file  = "{self.key_path}"
}}

disable_mlock = true
api_addr      = "{self.url}"
cluster_addr  = "https://{self.ip}:{self.port + 1}"
cluster_name  = "keyhold-compat"
log_level     = "info"
'''
        )

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
            if self.health_code() == 200:
                return
            time.sleep(WAIT_INTERVAL)
        raise RuntimeError(f"not active after {WAIT_ATTEMPTS} attempts:\n{self.log_tail()}")

    @property
    def active_url(self) -> str:
        """The address of the active node: this one, when it is the only node."""
        return self.url

    def health_code(self):
        """What `sys/health` answers (200 active, 429 standby, 503 sealed, 501 uninitialised),
        or None when nothing answers."""
        try:
            return requests.get(f"{self.url}/v1/sys/health", verify=self.ca_path, timeout=5).status_code
        except requests.RequestException:
            return None

    def is_sealed(self) -> bool:
        status = requests.get(f"{self.url}/v1/sys/seal-status", verify=self.ca_path, timeout=5)
        return status.json()["sealed"]

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


class KeyholdCluster:
    """Raft nodes on 127.0.0.1..N that form through `retry_join`, seen through one standby.

    It offers what the tests use of a `KeyholdServer` (url, ca_path, keys, root_token, client(),
    root_client(), init(), unseal(), wait_active(), send_signal(), process, stop()), so a test
    body runs unchanged against either: `url` is a standby's address, chosen when the cluster
    forms, and every request the test sends there is forwarded to the active node.
    """

    def __init__(self, directory: Path, pki: Pki, size: int = CLUSTER_SIZE):
        self.pki = pki
        self.nodes = [
            KeyholdServer(directory / f"n{i + 1}", pki, f"n{i + 1}", ip=f"127.0.0.{i + 1}")
            for i in range(size)
        ]
        for node in self.nodes:
            node.retry_join = [other.url for other in self.nodes if other is not node]
            node.write_config()
        self.entry = self.nodes[0]
        self.keys = None
        self.keys_base64 = None
        self.root_token = None
        self.threshold = None

    @property
    def url(self) -> str:
        return self.entry.url

    @property
    def ca_path(self) -> str:
        return str(self.pki.ca_path)

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    def client(self, token=None) -> hvac.Client:
        return hvac.Client(url=self.url, verify=self.ca_path, token=token, timeout=30,
                           session=cluster_session(self.ca_path))

    def root_client(self) -> hvac.Client:
        return self.client(self.root_token)

    def init(self, shares: int = 5, threshold: int = 3) -> dict:
        """Initialises node 1 and unseals it (it becomes active), then unseals every other node
        once `retry_join` has brought it the cluster's join challenge, and points the client at
        a standby."""
        first = self.nodes[0]
        result = first.init(shares, threshold)
        first.unseal()
        # Joiners become voters once autopilot has seen them stable; 1 s instead of 10 s.
        first.root_client().write_data(
            "sys/storage/raft/autopilot/configuration", data={"server_stabilization_time": "1s"}
        )
        for node in self.nodes:
            node.keys, node.keys_base64 = result["keys"], result["keys_base64"]
            node.root_token, node.threshold = result["root_token"], threshold
        self.keys, self.keys_base64 = result["keys"], result["keys_base64"]
        self.root_token, self.threshold = result["root_token"], threshold
        for node in self.nodes[1:]:
            self._wait_challenge(node)
            node.client().sys.submit_unseal_keys(self.keys[:threshold])
        self.wait_active()
        self._wait_voters()
        self.entry = next(node for node in self.nodes if node.health_code() == 429)
        return result

    def _wait_voters(self) -> None:
        """Waits until every node is a voter, so losing the active node leaves a quorum."""
        servers = []
        for _ in range(WAIT_ATTEMPTS):
            answer = self.nodes[0].root_client().read("sys/storage/raft/configuration")
            servers = answer["data"]["config"]["servers"]
            if len(servers) == len(self.nodes) and all(s["voter"] for s in servers):
                return
            time.sleep(WAIT_INTERVAL)
        raise RuntimeError(f"not every node a voter after {WAIT_ATTEMPTS} attempts: {servers}")

    def _wait_challenge(self, node: KeyholdServer) -> None:
        # retry_join asks every 2 s; a node holding the challenge reports itself initialised.
        for _ in range(WAIT_ATTEMPTS):
            if node.client().sys.is_initialized():
                return
            time.sleep(WAIT_INTERVAL)
        raise RuntimeError(
            f"{node.name} got no join challenge after {WAIT_ATTEMPTS} attempts:\n{node.log_tail()}"
        )

    def unseal(self) -> None:
        """Unseals every sealed node (sys/seal seals the active node only), then waits."""
        for node in self.nodes:
            if node.is_sealed():
                node.client().sys.submit_unseal_keys(self.keys[: self.threshold])
        self.wait_active()

    def roles(self) -> dict:
        return {node.name: node.health_code() for node in self.nodes}

    def wait_active(self) -> None:
        """Waits until exactly one node is active and every other node is a standby."""
        roles = {}
        for _ in range(WAIT_ATTEMPTS):
            roles = self.roles()
            codes = sorted(roles.values(), key=str)
            if codes.count(200) == 1 and codes.count(429) == len(self.nodes) - 1:
                return
            time.sleep(WAIT_INTERVAL)
        tails = "\n".join(f"--- {n.name} ---\n{n.log_tail(20)}" for n in self.nodes)
        raise RuntimeError(
            f"no single active node with {len(self.nodes) - 1} standbys after {WAIT_ATTEMPTS} "
            f"attempts; health codes {roles}\n{tails}"
        )

    def active_node(self) -> KeyholdServer:
        for _ in range(WAIT_ATTEMPTS):
            active = [node for node in self.nodes if node.health_code() == 200]
            if len(active) == 1:
                return active[0]
            time.sleep(WAIT_INTERVAL)
        raise RuntimeError(f"no single active node after {WAIT_ATTEMPTS} attempts: {self.roles()}")

    @property
    def active_url(self) -> str:
        return self.active_node().url

    @property
    def process(self):
        """The active node's process."""
        return self.active_node().process

    def send_signal(self, sig) -> None:
        """Signals every node, as an operator reloading the whole cluster would."""
        for node in self.nodes:
            node.send_signal(sig)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(f"--- {n.name} ---\n{n.log_tail(lines)}" for n in self.nodes)


# --- a cluster made by `provision` --------------------------------------------------------------

POLICIES_DIR = Path(__file__).resolve().parents[2] / "environments" / "policies"
# Beyond provision's own timeouts (a cluster that does not form gives up after 180 s); the VM
# tier gives more (every command goes over SSH to emulated machines).
PROVISION_TIMEOUT = int(os.environ.get("KEYHOLD_COMPAT_PROVISION_TIMEOUT", "300"))
_environments = itertools.count()


def provision_bin() -> str:
    """PROVISION_BIN, else `provision` beside KEYHOLD_BIN (cargo builds both into one directory)."""
    return os.environ.get("PROVISION_BIN") or str(Path(os.environ["KEYHOLD_BIN"]).with_name("provision"))


def provisioned_base(nodes: int) -> str:
    """`127.A.B.1` for the next environment of this session: A (250-254) from the pid, B counting
    environments, moved on while any node's API or cluster port is taken. The Rust tests use
    127.10-249.x.y; the harness and the shipped environments 127.0.x.y."""
    a = 250 + os.getpid() % 5
    for _ in range(64):
        b = next(_environments) % 254 + 1
        taken = False
        for n in range(1, nodes + 1):
            for port in (8200, 8201):
                with socket.socket() as s:
                    try:
                        s.bind((f"127.{a}.{b}.{n}", port))
                    except OSError:
                        taken = True
        if not taken:
            return f"127.{a}.{b}.1"
    raise RuntimeError(f"no free loopback range 127.{a}.B.1-{nodes} in 64 tries")


def provisioned_environment(base: str, shares: int, threshold: int, audit_device: bool) -> str:
    """environments/ci.hcl on `base`, with the keyhold under test, these shares, the root token
    kept, and policy files named by absolute path."""
    audit = 'audit "file" {\n  file_path = "audit.log"\n}\n' if audit_device else ""
    policies = "".join(
        f'policy "{name}" {{\n  file = "{POLICIES_DIR / (name + ".hcl")}"\n}}\n'
        for name in ("vault-admin", "kv-apps", "kv-reader")
    )
    return f"""# Written by the hvac compatibility suite (tests/compat/conftest.py).
provider "local" {{
  address_base = "{base}"
}}
nodes = {CLUSTER_SIZE}
server {{
  binary = "{os.environ['KEYHOLD_BIN']}"
}}
listener {{
  tls_min_version = "tls13"
}}
raft {{
  performance_multiplier = 1
}}
autopilot {{
  cleanup_dead_servers      = false
  server_stabilization_time = "2s"
  last_contact_threshold    = "5s"
}}
log {{
  level = "warn"
}}
init {{
  secret_shares     = {shares}
  secret_threshold  = {threshold}
  revoke_root_token = false
}}
tls {{
  ca_lifetime   = "48h"
  cert_lifetime = "24h"
}}
{audit}{policies}secrets "kv" {{
  path = "kv"
}}
auth "userpass" {{
  user "admin" {{
    policies = ["vault-admin", "kv-apps"]
  }}
}}
auth "approle" {{
  role "ci" {{
    token_policies = ["kv-reader"]
    token_ttl      = "20m"
  }}
}}
"""


class NodeProcess:
    """What the tests ask of a `subprocess.Popen` (`poll()`), for a server `provision` started."""

    def __init__(self, pid: int):
        self.pid = pid

    def poll(self):
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return -1
        return -1 if state in ("Z", "X") else None


class ProvisionedCluster:
    """Three nodes that `provision up` makes from an environment file in `directory`, seen through
    a standby: the same surface as `KeyholdCluster`. The shares are in the environment file, so
    `init(shares, threshold)` is what runs `provision up`; `start()` does nothing."""

    name = "compat"

    def __init__(self, directory: Path, audit_device: bool = True):
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.env_file = directory / f"{self.name}.hcl"
        self.state_dir = directory / "state"
        self.audit_device = audit_device
        self.urls = []
        self.entry_url = None
        self.keys = None
        self.keys_base64 = None
        self.root_token = None
        self.threshold = None

    @property
    def env_dir(self) -> Path:
        return self.state_dir / self.name

    @property
    def url(self) -> str:
        return self.entry_url

    @property
    def ca_path(self) -> str:
        return str(self.env_dir / "tls" / "ca.crt")

    def provision(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [provision_bin(), *args, "--env", str(self.env_file), "--state-dir", str(self.state_dir)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "PROVISION_"))}
        result = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=PROVISION_TIMEOUT,
            cwd=self.directory,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"provision {' '.join(args)} exited {result.returncode}\n--- stdout\n{result.stdout}"
                f"\n--- stderr\n{result.stderr}\n{self.log_tail(20)}"
            )
        return result

    def start(self) -> None:
        pass

    def init(self, shares: int = 5, threshold: int = 3) -> dict:
        base = ipaddress.ip_address(provisioned_base(CLUSTER_SIZE))
        self.urls = [f"https://{base + i}:8200" for i in range(CLUSTER_SIZE)]
        self.env_file.write_text(provisioned_environment(str(base), shares, threshold, self.audit_device))
        self.provision("up")
        shown, keys, roots = self.show_secrets()
        assert len(keys) == shares and roots, f"provision up --show-secrets printed:\n{shown}"
        self.threshold = threshold
        return self.adopt(keys, roots[0])

    def show_secrets(self):
        """What `provision up --show-secrets` (an `up` that changes nothing on a healthy cluster)
        prints, and the unseal shares and root tokens in it."""
        shown = self.provision("up", "--show-secrets").stdout
        keys = [line.split(": ", 1)[1].strip() for line in shown.splitlines() if line.startswith("Unseal Key ")]
        roots = [line.split(": ", 1)[1].strip() for line in shown.splitlines()
                 if line.startswith("Initial Root Token: ")]
        return shown, keys, roots

    def adopt(self, keys, root_token: str) -> dict:
        """Keeps the cluster's shares and root token, waits for its roles and picks a standby to
        talk through."""
        # Base64 shares are accepted wherever hex ones are (unseal, generate-root, rekey).
        self.keys, self.keys_base64, self.root_token = keys, keys, root_token
        self.wait_active()
        self.entry_url = next(url for url in self.urls if self.health_code(url) == 429)
        return {"keys": keys, "keys_base64": keys, "root_token": root_token}

    def client(self, token=None) -> hvac.Client:
        return hvac.Client(url=self.url, verify=self.ca_path, token=token, timeout=30,
                           session=cluster_session(self.ca_path))

    def root_client(self) -> hvac.Client:
        return self.client(self.root_token)

    def unseal(self) -> None:
        """`provision unseal` (it unseals whichever nodes are sealed), then waits."""
        self.provision("unseal")
        self.wait_active()

    def health_code(self, url: str):
        try:
            return requests.get(f"{url}/v1/sys/health", verify=self.ca_path, timeout=5).status_code
        except requests.RequestException:
            return None

    def roles(self) -> dict:
        return {url: self.health_code(url) for url in self.urls}

    def wait_active(self) -> None:
        """Waits until exactly one node is active and every other node is a standby."""
        roles = {}
        for _ in range(WAIT_ATTEMPTS):
            roles = self.roles()
            codes = list(roles.values())
            if codes.count(200) == 1 and codes.count(429) == len(self.urls) - 1:
                return
            time.sleep(WAIT_INTERVAL)
        raise RuntimeError(
            f"no single active node after {WAIT_ATTEMPTS} attempts; health codes {roles}\n"
            f"{self.log_tail(20)}"
        )

    @property
    def active_url(self) -> str:
        for _ in range(WAIT_ATTEMPTS):
            active = [url for url in self.urls if self.health_code(url) == 200]
            if len(active) == 1:
                return active[0]
            time.sleep(WAIT_INTERVAL)
        raise RuntimeError(f"no single active node after {WAIT_ATTEMPTS} attempts: {self.roles()}")

    def node_dir(self, i: int) -> Path:
        return self.env_dir / "nodes" / f"keyhold-{i + 1}"

    def pid(self, i: int) -> int:
        return int((self.node_dir(i) / "run" / "keyhold.pid").read_text().strip())

    @property
    def process(self) -> NodeProcess:
        """The active node's process."""
        return NodeProcess(self.pid(self.urls.index(self.active_url)))

    def send_signal(self, sig) -> None:
        """Signals every node, as an operator reloading the whole cluster would."""
        for i in range(len(self.urls)):
            os.kill(self.pid(i), sig)

    def stop(self) -> None:
        if self.env_dir.exists():
            scan_logs_for_secrets(log_files(self.env_dir))
            self.provision("down", "--purge")

    def log_tail(self, lines: int = 40) -> str:
        tails = []
        for i in range(len(self.urls)):
            log = self.node_dir(i) / "var" / "log" / "keyhold" / "keyhold.out"
            text = log.read_text(errors="replace") if log.exists() else ""
            tails.append(f"--- keyhold-{i + 1} ---\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(tails)


class VmCluster(ProvisionedCluster):
    """The cluster the VM tier deployed (see the module's docstring): `init` only reads its
    root token and shares, `stop` leaves it running, and its logs are searched on the VMs."""

    def __init__(self):
        env_file = Path(os.environ["KEYHOLD_COMPAT_ENV"])
        super().__init__(env_file.parent)
        self.env_file = env_file
        self.state_dir = Path(os.environ["KEYHOLD_COMPAT_STATE_DIR"])
        self.name = env_file.stem

    def init(self, shares: int = 5, threshold: int = 3) -> dict:
        self.urls = [u.strip().rstrip("/") for u in os.environ["KEYHOLD_COMPAT_URLS"].split(",") if u.strip()]
        _, keys, roots = self.show_secrets()
        assert keys and roots, "provision up --show-secrets printed no shares or root token"
        self.shares, self.threshold = len(keys), self.environment_threshold()
        return self.adopt(keys, roots[0])

    def environment_threshold(self) -> int:
        """`secret_threshold` (or `recovery_threshold`) in the environment file's `init` block."""
        import re

        found = re.search(r"^\s*(?:secret|recovery)_threshold\s*=\s*(\d+)", self.env_file.read_text(), re.M)
        assert found, f"no secret_threshold in {self.env_file}"
        return int(found.group(1))

    def stop(self) -> None:
        pass

    def log_tail(self, lines: int = 40) -> str:
        return "(the servers' logs are on the VMs: journalctl -u keyhold there)"


_vm_cluster = None


def make_target(directory: Path, pki: Pki, audit_device: bool = True):
    """What the tests talk to in this run's topology, not started. `audit_device` says whether a
    provisioned environment gets the audit device environments/ci.hcl has. In vm topology every
    test gets the one cluster on the VMs."""
    global _vm_cluster
    if TOPOLOGY == "vm":
        _vm_cluster = _vm_cluster or VmCluster()
        return _vm_cluster
    if TOPOLOGY == "cluster":
        return KeyholdCluster(directory, pki)
    if TOPOLOGY == "provisioned":
        return ProvisionedCluster(directory, audit_device=audit_device)
    return KeyholdServer(directory, pki)


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
    """An uninitialised server of its own. There is no standby before init, and `provision up`
    initialises every cluster it makes, so in cluster and provisioned topology these tests are
    skipped: the single-node pass covers them."""
    if TOPOLOGY == "cluster":
        pytest.skip("cluster topology: an uninitialised node has no standby to talk through")
    if TOPOLOGY in ("provisioned", "vm"):
        pytest.skip(f"{TOPOLOGY} topology: provision up initialises every cluster it makes")
    return server_factory()


@pytest.fixture
def active_server(tmp_path, pki):
    """A server (or, in cluster and provisioned topology, a cluster seen through a standby) of its
    own, initialised (3 shares, threshold 2) and unsealed, with KV v2 at secret/ and no audit
    device."""
    server = make_target(tmp_path / "target", pki, audit_device=False)
    try:
        yield ready(server, shares=3, threshold=2)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def session_server(tmp_path_factory, pki):
    """One server (or cluster, seen through a standby) shared by the tests that leave it as they
    found it: initialised (5 shares, threshold 3), unsealed, KV v2 mounted at secret/. In
    provisioned topology: one `provision up`, removed with `provision down --purge` at the end."""
    server = make_target(tmp_path_factory.mktemp("session"), pki)
    try:
        yield ready(server, shares=5, threshold=3)
    finally:
        server.stop()


def ready(server, shares, threshold):
    """Starts `server`, initialises it with `shares`/`threshold`, unseals it and mounts KV v2 at
    secret/."""
    server.start()
    server.init(shares, threshold)
    if TOPOLOGY != "vm":  # a VmCluster has the shares its environment file names
        server.shares, server.threshold = shares, threshold
    server.unseal()
    root = server.root_client()
    # In vm topology the cluster is shared by every test: KV is mounted once.
    if "secret/" not in root.sys.list_mounted_secrets_engines()["data"]:
        root.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    return server


@pytest.fixture
def client(session_server) -> hvac.Client:
    """An hvac client with the session server's root token."""
    return session_server.root_client()
