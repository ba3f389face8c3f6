"""KV v2 and KV v1 through hvac's own secrets-engine clients."""

import uuid

import hvac
import pytest
import requests


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_kv2_full_cycle(client, session_server):
    kv = client.secrets.kv.v2
    path = unique("app/db")

    v1 = kv.create_or_update_secret(path=path, secret={"user": "alice", "password": "p1"}, cas=0)
    assert v1["data"]["version"] == 1
    for field in ("created_time", "deletion_time", "destroyed", "version"):
        assert field in v1["data"], f"write answer lacks {field}: {v1}"

    # cas=0 means "only if absent": a second cas=0 write is refused.
    with pytest.raises(hvac.exceptions.InvalidRequest):
        kv.create_or_update_secret(path=path, secret={"user": "mallory"}, cas=0)
    # A stale cas is refused; the current one is accepted.
    v2 = kv.create_or_update_secret(path=path, secret={"user": "alice", "password": "p2"}, cas=1)
    assert v2["data"]["version"] == 2
    with pytest.raises(hvac.exceptions.InvalidRequest):
        kv.create_or_update_secret(path=path, secret={"user": "x"}, cas=1)

    latest = kv.read_secret_version(path=path, raise_on_deleted_version=True)
    assert latest["data"]["data"] == {"user": "alice", "password": "p2"}
    assert latest["data"]["metadata"]["version"] == 2
    old = kv.read_secret_version(path=path, version=1, raise_on_deleted_version=True)
    assert old["data"]["data"] == {"user": "alice", "password": "p1"}

    # hvac's patch (read, merge, cas write) makes version 3.
    v3 = kv.patch(path=path, secret={"password": "p3"})
    assert v3["data"]["version"] == 3
    assert kv.read_secret_version(path=path, raise_on_deleted_version=True)["data"]["data"] == {
        "user": "alice", "password": "p3"}

    # The server-side PATCH (JSON merge patch), as the vault CLI's `kv patch` sends it.
    patched = requests.patch(
        f"{session_server.url}/v1/secret/data/{path}",
        json={"data": {"role": "admin"}},
        headers={"X-Vault-Token": session_server.root_token,
                 "Content-Type": "application/merge-patch+json"},
        verify=session_server.ca_path, timeout=10,
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["data"]["version"] == 4
    assert kv.read_secret_version(path=path, raise_on_deleted_version=True)["data"]["data"] == {
        "user": "alice", "password": "p3", "role": "admin"}

    # Soft delete of the latest version, then undelete.
    kv.delete_latest_version_of_secret(path=path)
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_version(path=path, raise_on_deleted_version=True)
    deleted = kv.read_secret_version(path=path, raise_on_deleted_version=False)
    assert deleted["data"]["data"] is None
    assert deleted["data"]["metadata"]["deletion_time"] != ""
    kv.undelete_secret_versions(path=path, versions=[4])
    assert kv.read_secret_version(path=path, raise_on_deleted_version=True)["data"]["metadata"]["version"] == 4

    # Delete and destroy specific versions.
    kv.delete_secret_versions(path=path, versions=[2])
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_version(path=path, version=2, raise_on_deleted_version=True)
    kv.destroy_secret_versions(path=path, versions=[1])
    meta = kv.read_secret_metadata(path=path)["data"]
    assert meta["current_version"] == 4
    assert meta["oldest_version"] == 0, meta
    assert meta["versions"]["1"]["destroyed"] is True
    assert meta["versions"]["2"]["deletion_time"] != ""
    assert meta["versions"]["2"]["destroyed"] is False
    # A destroyed (not deleted) version is a 404 whose body still carries its metadata; hvac only
    # swallows the 404 for deleted versions, so it raises here, as it does against Vault.
    with pytest.raises(hvac.exceptions.InvalidPath) as destroyed:
        kv.read_secret_version(path=path, version=1, raise_on_deleted_version=False)
    assert destroyed.value.json["data"]["data"] is None
    assert destroyed.value.json["data"]["metadata"]["destroyed"] is True

    # Metadata: max_versions, cas_required and custom metadata.
    kv.update_metadata(path=path, max_versions=2, cas_required=True, custom_metadata={"owner": "team-a"})
    meta = kv.read_secret_metadata(path=path)["data"]
    assert meta["max_versions"] == 2 and meta["cas_required"] is True
    assert meta["custom_metadata"] == {"owner": "team-a"}
    with pytest.raises(hvac.exceptions.InvalidRequest):
        kv.create_or_update_secret(path=path, secret={"no": "cas"})
    kv.create_or_update_secret(path=path, secret={"with": "cas"}, cas=4)
    versions = kv.read_secret_metadata(path=path)["data"]["versions"]
    assert sorted(versions) == ["4", "5"], f"max_versions=2 keeps the newest two: {sorted(versions)}"

    # Everything gone.
    kv.delete_metadata_and_all_versions(path=path)
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_metadata(path=path)


def test_kv2_list(client):
    kv = client.secrets.kv.v2
    root = unique("list")
    for key in ("a", "b", "sub/c", "sub/deeper/d"):
        kv.create_or_update_secret(path=f"{root}/{key}", secret={"k": key})
    assert sorted(kv.list_secrets(path=root)["data"]["keys"]) == ["a", "b", "sub/"]
    assert sorted(kv.list_secrets(path=f"{root}/sub")["data"]["keys"]) == ["c", "deeper/"]
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.list_secrets(path=unique("empty"))


def test_kv2_config(client):
    mount = unique("kvcfg")
    client.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
    kv = client.secrets.kv.v2
    kv.configure(max_versions=3, cas_required=False, mount_point=mount)
    config = kv.read_configuration(mount_point=mount)["data"]
    assert config["max_versions"] == 3 and config["cas_required"] is False


def test_kv1_cycle(client):
    mount = unique("kv1")
    client.sys.enable_secrets_engine("kv", path=mount, options={"version": "1"})
    kv = client.secrets.kv.v1
    kv.create_or_update_secret(path="svc/token", secret={"value": "t1"}, mount_point=mount)
    kv.create_or_update_secret(path="svc/other", secret={"value": "o"}, mount_point=mount)
    assert kv.read_secret(path="svc/token", mount_point=mount)["data"] == {"value": "t1"}
    kv.create_or_update_secret(path="svc/token", secret={"value": "t2"}, mount_point=mount)
    assert kv.read_secret(path="svc/token", mount_point=mount)["data"] == {"value": "t2"}
    assert sorted(kv.list_secrets(path="svc", mount_point=mount)["data"]["keys"]) == ["other", "token"]
    kv.delete_secret(path="svc/token", mount_point=mount)
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret(path="svc/token", mount_point=mount)
