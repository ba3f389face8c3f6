"""Audit devices through hvac: entries are HMAC'd, never plaintext; sys/audit-hash matches them;
and the server fails closed when its only device cannot write, and recovers when it can again."""

import json
import os
import signal
import time
import uuid

import hvac
import pytest

pytestmark = pytest.mark.same_machine(
    reason="each test has the server write an audit file where the test can read it, and signals its process"
)

def entries(path):
    text = path.read_text()
    parsed = [json.loads(line) for line in text.splitlines() if line.strip()]
    return text, parsed


def test_audit_entries_are_hashed(active_server, tmp_path):
    client = active_server.root_client()
    log = tmp_path / "audit.log"
    client.sys.enable_audit_device("file", path="file", options={"file_path": str(log)})
    devices = client.sys.list_enabled_audit_devices()["data"]
    assert devices["file/"]["type"] == "file", devices
    assert devices["file/"]["options"]["file_path"] == str(log), devices

    secret = f"plaintext-{uuid.uuid4().hex}"
    client.secrets.kv.v2.create_or_update_secret(path="audited", secret={"password": secret})
    client.secrets.kv.v2.read_secret_version(path="audited", raise_on_deleted_version=True)

    text, parsed = entries(log)
    assert secret not in text, "the audit log carries the secret in plaintext"
    assert active_server.root_token not in text, "the audit log carries the root token in plaintext"
    assert {e["type"] for e in parsed} <= {"request", "response"}, parsed

    hashed = client.sys.calculate_hash("file", secret)["data"]["hash"]
    assert hashed.startswith("hmac-sha256:"), hashed
    assert hashed != client.sys.calculate_hash("file", secret + "x")["data"]["hash"]
    writes = [e for e in parsed
              if e["type"] == "request" and e["request"]["path"] == "secret/data/audited"
              and e["request"]["operation"] in ("create", "update")]
    assert writes, f"no request entry for the write in {parsed}"
    assert writes[0]["request"]["data"]["data"]["password"] == hashed
    reads = [e for e in parsed
             if e["type"] == "response" and e["request"]["path"] == "secret/data/audited"
             and e["request"]["operation"] == "read"]
    assert reads, f"no response entry for the read in {parsed}"
    assert reads[0]["response"]["data"]["data"]["password"] == hashed

    token_hash = client.sys.calculate_hash("file", active_server.root_token)["data"]["hash"]
    assert writes[0]["auth"]["client_token"] == token_hash
    assert writes[0]["request"]["client_token"] == token_hash


def wait_for(what, check, attempts=200, interval=0.05):
    for _ in range(attempts):
        result = check()
        if result:
            return result
        time.sleep(interval)
    pytest.fail(f"{what}: not reached after {attempts} attempts")


def test_audit_fails_closed_and_recovers(active_server, tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full to make the audit file unwritable")
    client = active_server.root_client()
    kv = client.secrets.kv.v2
    log = tmp_path / "audit.log"
    client.sys.enable_audit_device("file", path="file", options={"file_path": str(log)})
    kv.create_or_update_secret(path="guarded", secret={"v": "before"})

    # Break the only device. The suite may run as root, for whom permission bits do not stop a
    # write, so the file is swapped for /dev/full (every write fails with ENOSPC) and reopened.
    log.unlink()
    os.symlink("/dev/full", log)
    active_server.send_signal(signal.SIGHUP)

    def refused():
        try:
            kv.read_secret_version(path="guarded", raise_on_deleted_version=True)
            return False
        except hvac.exceptions.InternalServerError:
            return True
    wait_for("requests refused while the audit device cannot write", refused)
    with pytest.raises(hvac.exceptions.InternalServerError):
        kv.create_or_update_secret(path="guarded", secret={"v": "during outage"})
    # Unaudited endpoints still answer.
    assert client.sys.read_health_status(method="GET", standby_ok=True)["sealed"] is False

    # Repair it: a writable file again, reopened.
    log.unlink()
    log.touch()
    active_server.send_signal(signal.SIGHUP)

    def served():
        try:
            return kv.read_secret_version(path="guarded", raise_on_deleted_version=True)
        except hvac.exceptions.InternalServerError:
            return None
    answer = wait_for("requests served once the audit device can write", served)
    assert answer["data"]["data"] == {"v": "before"}, "a write refused for audit must not be applied"
    kv.create_or_update_secret(path="guarded", secret={"v": "after"})
    text, parsed = entries(log)
    assert any(e["request"]["path"] == "secret/data/guarded" for e in parsed), text


def test_audit_device_disable(active_server, tmp_path):
    client = active_server.root_client()
    log = tmp_path / "audit.log"
    client.sys.enable_audit_device("file", path="tmp", options={"file_path": str(log)})
    client.sys.disable_audit_device("tmp")
    assert "tmp/" not in client.sys.list_enabled_audit_devices()["data"]
    size = log.stat().st_size if log.exists() else 0
    client.secrets.kv.v2.create_or_update_secret(path="unaudited", secret={"v": "x"})
    assert (log.stat().st_size if log.exists() else 0) == size, "a disabled device kept logging"


def test_sighup_reopens_rotated_audit_file(active_server, tmp_path):
    """logrotate's way: rename the file, SIGHUP, and new entries go to a new file of the old name."""
    client = active_server.root_client()
    log = tmp_path / "audit.log"
    client.sys.enable_audit_device("file", path="file", options={"file_path": str(log)})
    client.secrets.kv.v2.create_or_update_secret(path="rot", secret={"v": "1"})
    rotated = tmp_path / "audit.log.1"
    log.rename(rotated)
    active_server.send_signal(signal.SIGHUP)

    def reopened():
        client.secrets.kv.v2.read_secret_version(path="rot", raise_on_deleted_version=True)
        return log.exists() and log.stat().st_size > 0
    wait_for("a new audit.log after SIGHUP", reopened)
    size = rotated.stat().st_size
    client.secrets.kv.v2.read_secret_version(path="rot", raise_on_deleted_version=True)
    assert rotated.stat().st_size == size, "entries still go to the rotated file after SIGHUP"
    assert active_server.process.poll() is None, "SIGHUP stopped the server"
