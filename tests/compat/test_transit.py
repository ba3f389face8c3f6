"""The transit secrets engine through hvac's own client (`client.secrets.transit`): keys, their
versions and settings, encrypt/decrypt/rewrap singly and in batches, data keys, random bytes,
hashes, and Vault's errors for what is refused."""

import base64
import json
import uuid

import hvac
import pytest


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


@pytest.fixture
def transit(client):
    """hvac's transit client and a fresh transit mount of this test's own."""
    mount = f"transit-{uuid.uuid4().hex[:8]}"
    client.sys.enable_secrets_engine("transit", path=mount)
    try:
        yield client.secrets.transit, mount
    finally:
        client.sys.disable_secrets_engine(path=mount)


def test_mount_is_listed_as_transit(client, transit):
    _, mount = transit
    mounts = client.sys.list_mounted_secrets_engines()["data"]
    assert mounts[f"{mount}/"]["type"] == "transit", mounts


def test_key_lifecycle_and_read_fields(transit):
    t, mount = transit
    created = t.create_key(name="app", exportable=True, auto_rotate_period="1h", mount_point=mount)
    assert created["data"]["name"] == "app", created

    key = t.read_key(name="app", mount_point=mount)["data"]
    expected = {
        "name": "app",
        "type": "aes256-gcm96",
        "latest_version": 1,
        "min_decryption_version": 1,
        "min_encryption_version": 0,
        "min_available_version": 0,
        "deletion_allowed": False,
        "derived": False,
        "exportable": True,
        "allow_plaintext_backup": False,
        "auto_rotate_period": 3600,
        "supports_encryption": True,
        "supports_decryption": True,
        "supports_signing": False,
    }
    assert {k: key[k] for k in expected} == expected, key
    assert list(key["keys"]) == ["1"] and isinstance(key["keys"]["1"], int), key

    t.create_key(name="other", key_type="chacha20-poly1305", mount_point=mount)
    assert sorted(t.list_keys(mount_point=mount)["data"]["keys"]) == ["app", "other"]

    # Deletion is refused until the key's config allows it.
    with pytest.raises(hvac.exceptions.InvalidRequest, match="deletion is not allowed"):
        t.delete_key(name="app", mount_point=mount)
    config = t.update_key_configuration(name="app", deletion_allowed=True, mount_point=mount)
    assert config["data"]["deletion_allowed"] is True, config
    t.delete_key(name="app", mount_point=mount)
    with pytest.raises(hvac.exceptions.InvalidPath):
        t.read_key(name="app", mount_point=mount)
    assert t.list_keys(mount_point=mount)["data"]["keys"] == ["other"]


@pytest.mark.parametrize("key_type", ["aes256-gcm96", "aes128-gcm96", "chacha20-poly1305"])
def test_encrypt_decrypt_round_trip(client, transit, key_type):
    t, mount = transit
    # hvac's create_key does not know aes128-gcm96, which Vault has.
    client.write_data(f"{mount}/keys/k", data={"type": key_type})
    for message in [b"hi itsame hvac", b"", bytes(range(256)) * 8]:
        sealed = t.encrypt_data(name="k", plaintext=b64(message), mount_point=mount)["data"]
        assert sealed["ciphertext"].startswith("vault:v1:"), sealed
        assert sealed["key_version"] == 1
        opened = t.decrypt_data(name="k", ciphertext=sealed["ciphertext"], mount_point=mount)
        assert unb64(opened["data"]["plaintext"]) == message


def test_encrypt_creates_a_missing_key(transit):
    t, mount = transit
    sealed = t.encrypt_data(name="made-on-use", plaintext=b64(b"x"), mount_point=mount)
    assert sealed["data"]["ciphertext"].startswith("vault:v1:")
    assert t.read_key(name="made-on-use", mount_point=mount)["data"]["type"] == "aes256-gcm96"
    with pytest.raises(hvac.exceptions.InvalidRequest, match="encryption key not found"):
        t.decrypt_data(name="never-made", ciphertext=sealed["data"]["ciphertext"],
                       mount_point=mount)


def test_rotate_rewrap_and_key_version(transit):
    t, mount = transit
    t.create_key(name="r", mount_point=mount)
    v1 = t.encrypt_data(name="r", plaintext=b64(b"old"), mount_point=mount)["data"]["ciphertext"]
    t.rotate_key(name="r", mount_point=mount)
    key = t.read_key(name="r", mount_point=mount)["data"]
    assert key["latest_version"] == 2 and sorted(key["keys"]) == ["1", "2"], key

    rewrapped = t.rewrap_data(name="r", ciphertext=v1, mount_point=mount)["data"]
    assert rewrapped["ciphertext"].startswith("vault:v2:"), rewrapped
    assert rewrapped["key_version"] == 2
    for ciphertext in (v1, rewrapped["ciphertext"]):
        opened = t.decrypt_data(name="r", ciphertext=ciphertext, mount_point=mount)
        assert unb64(opened["data"]["plaintext"]) == b"old"

    pinned = t.encrypt_data(name="r", plaintext=b64(b"p"), key_version=1, mount_point=mount)
    assert pinned["data"]["ciphertext"].startswith("vault:v1:")
    with pytest.raises(hvac.exceptions.InvalidRequest, match="higher than the latest key version"):
        t.encrypt_data(name="r", plaintext=b64(b"p"), key_version=3, mount_point=mount)


def test_min_decryption_version(transit):
    t, mount = transit
    t.create_key(name="m", mount_point=mount)
    v1 = t.encrypt_data(name="m", plaintext=b64(b"v1"), mount_point=mount)["data"]["ciphertext"]
    t.rotate_key(name="m", mount_point=mount)
    t.update_key_configuration(name="m", min_decryption_version=2, mount_point=mount)

    key = t.read_key(name="m", mount_point=mount)["data"]
    assert key["min_decryption_version"] == 2
    assert list(key["keys"]) == ["2"], "Vault lists only the versions that still decrypt"
    with pytest.raises(hvac.exceptions.InvalidRequest, match=r"disallowed by policy \(too old\)"):
        t.decrypt_data(name="m", ciphertext=v1, mount_point=mount)
    with pytest.raises(hvac.exceptions.InvalidRequest, match="cannot set min decryption version"):
        t.update_key_configuration(name="m", min_decryption_version=3, mount_point=mount)

    t.update_key_configuration(name="m", min_decryption_version=1, mount_point=mount)
    opened = t.decrypt_data(name="m", ciphertext=v1, mount_point=mount)
    assert unb64(opened["data"]["plaintext"]) == b"v1"


def test_tampered_ciphertext_is_refused(transit):
    t, mount = transit
    t.create_key(name="t", mount_point=mount)
    ciphertext = t.encrypt_data(name="t", plaintext=b64(b"msg"), mount_point=mount)["data"]["ciphertext"]
    prefix, payload = ciphertext.rsplit(":", 1)
    blob = bytearray(unb64(payload))
    blob[-1] ^= 1
    tampered = f"{prefix}:{b64(bytes(blob))}"
    with pytest.raises(hvac.exceptions.InvalidRequest, match="message authentication failed"):
        t.decrypt_data(name="t", ciphertext=tampered, mount_point=mount)
    with pytest.raises(hvac.exceptions.InvalidRequest, match="invalid ciphertext: no prefix"):
        t.decrypt_data(name="t", ciphertext=payload, mount_point=mount)


def test_batches(client, transit):
    t, mount = transit
    t.create_key(name="b", mount_point=mount)
    messages = [b"one", b"two", b"three"]
    batch = [{"plaintext": b64(m), "reference": f"ref-{i}"} for i, m in enumerate(messages)]
    sealed = t.encrypt_data(name="b", batch_input=batch, mount_point=mount)["data"]["batch_results"]
    assert [r["reference"] for r in sealed] == ["ref-0", "ref-1", "ref-2"]
    assert all(r["ciphertext"].startswith("vault:v1:") for r in sealed), sealed

    opened = t.decrypt_data(
        name="b", batch_input=[{"ciphertext": r["ciphertext"]} for r in sealed], mount_point=mount
    )["data"]["batch_results"]
    assert [unb64(r["plaintext"]) for r in opened] == messages

    t.rotate_key(name="b", mount_point=mount)
    rewrapped = t.rewrap_data(
        name="b", ciphertext=None, batch_input=[{"ciphertext": r["ciphertext"]} for r in sealed], mount_point=mount
    )["data"]["batch_results"]
    assert all(r["ciphertext"].startswith("vault:v2:") for r in rewrapped), rewrapped

    # One bad item: Vault answers 400 with every item's result in the body...
    mixed = [{"ciphertext": sealed[0]["ciphertext"]}, {"ciphertext": "garbage", "reference": "bad"}]
    with pytest.raises(hvac.exceptions.InvalidRequest):
        t.decrypt_data(name="b", batch_input=mixed, mount_point=mount)
    # ...or the status the caller names in partial_failure_response_code.
    resp = client.write_data(
        f"{mount}/decrypt/b", data={"batch_input": mixed, "partial_failure_response_code": 200}
    )
    results = resp["data"]["batch_results"]
    assert unb64(results[0]["plaintext"]) == b"one"
    assert results[1] == {"error": "invalid ciphertext: no prefix", "reference": "bad"}


def test_refused_key_options(client, transit):
    t, mount = transit
    with pytest.raises(hvac.exceptions.InvalidRequest, match="derived keys are not supported"):
        t.create_key(name="d", derived=True, mount_point=mount)
    # hvac itself refuses convergent encryption without derivation; the server does too.
    with pytest.raises(hvac.exceptions.InvalidRequest, match="convergent encryption requires"):
        client.write_data(f"{mount}/keys/d", data={"convergent_encryption": True})
    with pytest.raises(hvac.exceptions.InvalidRequest, match="not supported by this build"):
        t.create_key(name="e", key_type="ed25519", mount_point=mount)
    with pytest.raises(hvac.exceptions.InvalidRequest, match="context"):
        t.encrypt_data(name="d", plaintext=b64(b"x"), context=b64(b"ctx"), mount_point=mount)
    with pytest.raises(hvac.exceptions.InvalidPath):
        t.read_key(name="d", mount_point=mount)


def test_datakey_random_and_hash(transit):
    t, mount = transit
    t.create_key(name="dk", mount_point=mount)
    plain = t.generate_data_key(name="dk", key_type="plaintext", bits=512, mount_point=mount)["data"]
    assert len(unb64(plain["plaintext"])) == 64
    opened = t.decrypt_data(name="dk", ciphertext=plain["ciphertext"], mount_point=mount)
    assert opened["data"]["plaintext"] == plain["plaintext"]
    wrapped = t.generate_data_key(name="dk", key_type="wrapped", mount_point=mount)["data"]
    assert "plaintext" not in wrapped and wrapped["ciphertext"].startswith("vault:v1:")

    random = t.generate_random_bytes(n_bytes=24, output_format="hex", mount_point=mount)["data"]
    assert len(bytes.fromhex(random["random_bytes"])) == 24

    digest = t.hash_data(hash_input=b64(b"hello"), algorithm="sha2-256", output_format="hex",
                         mount_point=mount)["data"]["sum"]
    assert digest == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"


@pytest.mark.same_machine(reason="the server writes an audit file where the test reads it")
def test_transit_fields_are_hashed_in_audit_entries(active_server, tmp_path):
    client = active_server.root_client()
    log = tmp_path / "audit.log"
    client.sys.enable_audit_device("file", path="file", options={"file_path": str(log)})
    client.sys.enable_secrets_engine("transit", path="transit")
    t = client.secrets.transit
    secret = f"plaintext-{uuid.uuid4().hex}".encode()
    ciphertext = t.encrypt_data(name="audited", plaintext=b64(secret))["data"]["ciphertext"]
    t.decrypt_data(name="audited", ciphertext=ciphertext)
    t.encrypt_data(name="audited", batch_input=[{"plaintext": b64(secret)}])

    text = log.read_text()
    assert b64(secret) not in text and ciphertext not in text, "transit fields logged in clear"
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    hashed = client.sys.calculate_hash("file", b64(secret))["data"]["hash"]
    logged = [e["request"].get("data") or {} for e in entries if e["type"] == "request"]
    assert [d for d in logged if d.get("plaintext") == hashed], logged
    assert [d for d in logged if d.get("batch_input") == [{"plaintext": hashed}]], logged
