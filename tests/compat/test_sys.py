"""System backend through hvac: mounts, keyring rotation, seal/unseal, generate-root, rekey."""

import base64
import uuid

import hvac
import pytest


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_mounts_list_tune_disable(client):
    mounts = client.sys.list_mounted_secrets_engines()["data"]
    assert "sys/" in mounts and mounts["sys/"]["type"] == "system", sorted(mounts)
    secret = mounts["secret/"]
    assert secret["type"] == "kv" and secret["options"]["version"] == "2", secret
    for field in ("accessor", "config", "description", "external_entropy_access", "local",
                  "seal_wrap", "type", "uuid"):
        assert field in secret, f"mount entry lacks {field}: {secret}"
    for field in ("default_lease_ttl", "max_lease_ttl"):
        assert field in secret["config"], secret["config"]

    path = unique("tuned")
    client.sys.enable_secrets_engine("kv", path=path, description="to tune", options={"version": "1"})
    client.sys.tune_mount_configuration(path, default_lease_ttl="1h", max_lease_ttl="2h")
    tuned = client.sys.read_mount_configuration(path)["data"]
    assert (tuned["default_lease_ttl"], tuned["max_lease_ttl"]) == (3600, 7200), tuned
    assert client.sys.list_mounted_secrets_engines()["data"][f"{path}/"]["description"] == "to tune"

    with pytest.raises(hvac.exceptions.InvalidRequest):
        client.sys.enable_secrets_engine("kv", path=path)
    client.sys.disable_secrets_engine(path)
    assert f"{path}/" not in client.sys.list_mounted_secrets_engines()["data"]


def test_auth_methods_list(client):
    methods = client.sys.list_auth_methods()["data"]
    assert methods["token/"]["type"] == "token", methods
    path = unique("up")
    client.sys.enable_auth_method("userpass", path=path)
    assert client.sys.list_auth_methods()["data"][f"{path}/"]["type"] == "userpass"
    client.sys.disable_auth_method(path)
    assert f"{path}/" not in client.sys.list_auth_methods()["data"]


def test_rotate_increments_term_and_keeps_data(active_server):
    client = active_server.root_client()
    kv = client.secrets.kv.v2
    kv.create_or_update_secret(path="before-rotate", secret={"v": "old term"})
    status = client.sys.get_encryption_key_status()
    term = status["data"]["term"]
    assert status["term"] == term, "key-status copies data to the top level, as Vault does"
    assert "install_time" in status["data"]

    client.sys.rotate_encryption_key()
    assert client.sys.get_encryption_key_status()["data"]["term"] == term + 1
    client.sys.rotate_encryption_key()
    assert client.sys.get_encryption_key_status()["data"]["term"] == term + 2
    kv.create_or_update_secret(path="after-rotate", secret={"v": "new term"})

    # Across a seal/unseal, values written under every term still decrypt.
    client.sys.seal()
    active_server.unseal()
    assert client.sys.get_encryption_key_status()["data"]["term"] == term + 2
    assert kv.read_secret_version(path="before-rotate", raise_on_deleted_version=True)["data"]["data"] == {"v": "old term"}
    assert kv.read_secret_version(path="after-rotate", raise_on_deleted_version=True)["data"]["data"] == {"v": "new term"}


@pytest.mark.single_node(reason="sys/seal seals the active node; the standby the client talks to stays unsealed, so is_sealed() and VaultDown do not apply to its address")
def test_seal_then_unseal_keeps_data(active_server):
    client = active_server.root_client()
    client.secrets.kv.v2.create_or_update_secret(path="kept", secret={"v": "across seal"})
    client.sys.seal()
    assert client.sys.is_sealed() is True
    with pytest.raises(hvac.exceptions.VaultDown):
        client.secrets.kv.v2.read_secret_version(path="kept", raise_on_deleted_version=True)
    status = client.sys.submit_unseal_keys(active_server.keys[:2])
    assert status["sealed"] is False
    active_server.wait_active()
    assert client.secrets.kv.v2.read_secret_version(
        path="kept", raise_on_deleted_version=True)["data"]["data"] == {"v": "across seal"}


def test_seal_needs_a_privileged_token(active_server):
    root = active_server.root_client()
    token = root.auth.token.create(policies=["default"], ttl="1h")["auth"]["client_token"]
    with pytest.raises(hvac.exceptions.Forbidden):
        active_server.client(token).sys.seal()
    assert root.sys.is_sealed() is False


def decode_root_token(encoded: str, otp: str) -> str:
    raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4))
    assert len(raw) == len(otp), f"encoded token is {len(raw)} bytes, otp {len(otp)}"
    return bytes(a ^ b for a, b in zip(raw, otp.encode())).decode()


def test_generate_root_with_otp(active_server):
    client = active_server.client()
    threshold = active_server.threshold
    assert threshold >= 2, "the test needs a threshold of at least 2"
    attempt = client.sys.start_root_token_generation()
    assert attempt["started"] is True and attempt["required"] == threshold, attempt
    otp, nonce = attempt["otp"], attempt["nonce"]
    assert otp and attempt["otp_length"] == len(otp), attempt
    assert client.sys.read_root_generation_progress()["progress"] == 0

    with pytest.raises(hvac.exceptions.InvalidRequest):
        client.sys.generate_root(key=active_server.keys[0], nonce="not-the-nonce")
    first = client.sys.generate_root(key=active_server.keys[0], nonce=nonce)
    assert first["progress"] == 1 and first["complete"] is False, first
    for key in active_server.keys[1 : threshold - 1]:
        assert client.sys.generate_root(key=key, nonce=nonce)["complete"] is False
    done = client.sys.generate_root(key=active_server.keys[threshold - 1], nonce=nonce)
    assert done["complete"] is True and done["encoded_token"], done

    token = decode_root_token(done["encoded_token"], otp)
    assert token != active_server.root_token
    me = active_server.client(token).auth.token.lookup_self()["data"]
    assert me["policies"] == ["root"], me
    active_server.client(token).sys.list_mounted_secrets_engines()


def test_generate_root_cancel(active_server):
    client = active_server.client()
    client.sys.start_root_token_generation()
    client.sys.cancel_root_generation()
    assert client.sys.read_root_generation_progress()["started"] is False


@pytest.mark.single_node(reason="after sys/seal the test submits unseal keys to the client's address, which in a cluster is a standby that is still unsealed")
def test_rekey_replaces_shares(active_server):
    client = active_server.client()
    root = active_server.root_client()
    root.secrets.kv.v2.create_or_update_secret(path="rekeyed", secret={"v": "still here"})
    old = list(active_server.keys)

    client.sys.start_rekey(secret_shares=4, secret_threshold=3)
    progress = client.sys.read_rekey_progress()
    assert progress["started"] is True and (progress["n"], progress["t"]) == (4, 3), progress
    nonce = progress["nonce"]
    first = client.sys.rekey(old[0], nonce=nonce)
    assert first["complete"] is False and first["progress"] == 1, first
    done = client.sys.rekey(old[1], nonce=nonce)
    assert done["complete"] is True, done
    new = done["keys"]
    assert len(new) == 4 and not set(new) & set(old), done

    status = client.sys.read_seal_status()
    assert (status["t"], status["n"]) == (3, 4), status

    root.sys.seal()
    # Old shares reach the (new) threshold of 3 and are refused; progress resets.
    client.sys.submit_unseal_key(old[0])
    client.sys.submit_unseal_key(old[1])
    with pytest.raises(hvac.exceptions.InvalidRequest):
        client.sys.submit_unseal_key(old[2])
    status = client.sys.read_seal_status()
    assert status["sealed"] is True and status["progress"] == 0, status

    assert client.sys.submit_unseal_keys(new[1:4])["sealed"] is False
    active_server.wait_active()
    assert root.secrets.kv.v2.read_secret_version(
        path="rekeyed", raise_on_deleted_version=True)["data"]["data"] == {"v": "still here"}
