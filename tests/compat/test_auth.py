"""Policies, tokens, userpass and AppRole through hvac: who may do what, and for how long."""

import uuid

import hvac
import pytest


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def readonly_policy(client):
    """A policy that may read (only) KV v2 data under secret/data/<prefix>/."""
    prefix = unique("ro")
    name = unique("readonly")
    client.sys.create_or_update_acl_policy(
        name=name,
        policy=f'path "secret/data/{prefix}/*" {{\n  capabilities = ["read", "list"]\n}}\n',
    )
    client.secrets.kv.v2.create_or_update_secret(path=f"{prefix}/x", secret={"v": "visible"})
    return name, prefix


def test_policy_crud(client):
    name = unique("pol")
    rules = 'path "secret/data/crud/*" {\n  capabilities = ["read"]\n}\n'
    client.sys.create_or_update_acl_policy(name=name, policy=rules)
    assert name in client.sys.list_acl_policies()["data"]["keys"]
    read = client.sys.read_acl_policy(name)["data"]
    assert read["name"] == name and read["policy"] == rules
    client.sys.delete_acl_policy(name)
    assert name not in client.sys.list_acl_policies()["data"]["keys"]
    with pytest.raises(hvac.exceptions.InvalidPath):
        client.sys.read_acl_policy(name)


def test_root_and_default_policies_are_protected(client):
    with pytest.raises(hvac.exceptions.InvalidRequest):
        client.sys.create_or_update_acl_policy(name="root", policy='path "*" { capabilities = ["read"] }')
    with pytest.raises(hvac.exceptions.InvalidRequest):
        client.sys.delete_acl_policy("default")
    assert {"root", "default"} <= set(client.sys.list_acl_policies()["data"]["keys"])


def test_readonly_token_cannot_write(client, session_server, readonly_policy):
    name, prefix = readonly_policy
    token = client.auth.token.create(policies=[name], ttl="1h")["auth"]["client_token"]
    limited = session_server.client(token)
    assert limited.secrets.kv.v2.read_secret_version(
        path=f"{prefix}/x", raise_on_deleted_version=True)["data"]["data"] == {"v": "visible"}
    with pytest.raises(hvac.exceptions.Forbidden):
        limited.secrets.kv.v2.create_or_update_secret(path=f"{prefix}/x", secret={"v": "overwritten"})
    with pytest.raises(hvac.exceptions.Forbidden):
        limited.secrets.kv.v2.read_secret_version(path="elsewhere/x", raise_on_deleted_version=True)
    with pytest.raises(hvac.exceptions.Forbidden):
        limited.sys.list_mounted_secrets_engines()
    # The refused write changed nothing.
    assert client.secrets.kv.v2.read_secret_version(
        path=f"{prefix}/x", raise_on_deleted_version=True)["data"]["data"] == {"v": "visible"}


def test_capabilities_self(client, session_server, readonly_policy):
    name, prefix = readonly_policy
    token = client.auth.token.create(policies=[name], ttl="1h")["auth"]["client_token"]
    limited = session_server.client(token)
    allowed = f"secret/data/{prefix}/x"
    caps = limited.sys.get_capabilities(paths=[allowed, "secret/data/other"])
    assert sorted(caps[allowed]) == ["list", "read"], caps
    assert caps["secret/data/other"] == ["deny"], caps
    single = limited.sys.get_capabilities(paths=[allowed])
    assert sorted(single["capabilities"]) == ["list", "read"], single
    assert client.sys.get_capabilities(paths=[allowed])[allowed] == ["root"]


def test_no_token_and_bad_token_are_forbidden(session_server):
    with pytest.raises(hvac.exceptions.Forbidden):
        session_server.client().secrets.kv.v2.read_secret_version(path="x", raise_on_deleted_version=True)
    with pytest.raises(hvac.exceptions.Forbidden):
        session_server.client("hvs.not-a-real-token").auth.token.lookup_self()


def test_token_lifecycle(client, session_server):
    created = client.auth.token.create(policies=["default"], ttl="1h", renewable=True, meta={"team": "a"})
    auth = created["auth"]
    for field in ("client_token", "accessor", "policies", "token_policies", "lease_duration",
                  "renewable", "orphan", "token_type"):
        assert field in auth, f"auth block lacks {field}: {auth}"
    token = auth["client_token"]
    assert auth["lease_duration"] == 3600 and auth["renewable"] is True

    looked = client.auth.token.lookup(token)["data"]
    assert looked["id"] == token
    assert looked["policies"] == ["default"]
    assert looked["meta"] == {"team": "a"}
    assert 0 < looked["ttl"] <= 3600

    renewed = client.auth.token.renew(token, increment="2h")["auth"]
    assert renewed["client_token"] == token
    assert renewed["lease_duration"] == 7200

    own = session_server.client(token)
    assert own.auth.token.lookup_self()["data"]["id"] == token
    assert own.auth.token.renew_self(increment="1h")["auth"]["lease_duration"] == 3600

    client.auth.token.revoke(token)
    with pytest.raises(hvac.exceptions.Forbidden):
        own.auth.token.lookup_self()


def test_child_token_revoked_with_parent(client, session_server):
    # The default policy does not allow creating tokens; the parent gets a policy that does.
    creator = unique("token-creator")
    client.sys.create_or_update_acl_policy(
        name=creator, policy='path "auth/token/create" {\n  capabilities = ["create", "update"]\n}\n')
    parent = client.auth.token.create(policies=[creator], ttl="1h")["auth"]["client_token"]
    parent_client = session_server.client(parent)
    child = parent_client.auth.token.create(policies=["default"], ttl="1h")["auth"]["client_token"]
    orphan = client.auth.token.create_orphan(policies=["default"], ttl="1h")["auth"]["client_token"]
    child_client = session_server.client(child)
    assert child_client.auth.token.lookup_self()["data"]["orphan"] is False

    client.auth.token.revoke(parent)
    with pytest.raises(hvac.exceptions.Forbidden):
        parent_client.auth.token.lookup_self()
    with pytest.raises(hvac.exceptions.Forbidden):
        child_client.auth.token.lookup_self()
    # An orphan has no parent to fall with.
    assert session_server.client(orphan).auth.token.lookup_self()["data"]["orphan"] is True


def test_token_num_uses(client, session_server, readonly_policy):
    name, prefix = readonly_policy
    token = client.auth.token.create(policies=[name], ttl="1h", num_uses=2)["auth"]["client_token"]
    limited = session_server.client(token)
    for _ in range(2):
        limited.secrets.kv.v2.read_secret_version(path=f"{prefix}/x", raise_on_deleted_version=True)
    with pytest.raises(hvac.exceptions.Forbidden):
        limited.secrets.kv.v2.read_secret_version(path=f"{prefix}/x", raise_on_deleted_version=True)


def test_userpass_login(client, session_server, readonly_policy):
    name, prefix = readonly_policy
    mount = unique("userpass")
    client.sys.enable_auth_method("userpass", path=mount)
    client.auth.userpass.create_or_update_user(
        username="alice", password="correct horse", policies=[name], mount_point=mount)

    login_client = session_server.client()
    with pytest.raises(hvac.exceptions.InvalidRequest):
        login_client.auth.userpass.login("alice", "wrong", mount_point=mount)
    with pytest.raises(hvac.exceptions.InvalidRequest):
        login_client.auth.userpass.login("nobody", "correct horse", mount_point=mount)

    auth = login_client.auth.userpass.login("alice", "correct horse", mount_point=mount)["auth"]
    assert name in auth["policies"] and "default" in auth["policies"]
    assert auth["metadata"]["username"] == "alice"
    assert login_client.token == auth["client_token"], "hvac adopts the login token"
    assert login_client.secrets.kv.v2.read_secret_version(
        path=f"{prefix}/x", raise_on_deleted_version=True)["data"]["data"] == {"v": "visible"}
    with pytest.raises(hvac.exceptions.Forbidden):
        login_client.secrets.kv.v2.create_or_update_secret(path=f"{prefix}/x", secret={"v": "no"})


def test_approle_login(client, session_server, readonly_policy):
    name, prefix = readonly_policy
    mount = unique("approle")
    client.sys.enable_auth_method("approle", path=mount)
    client.auth.approle.create_or_update_approle(
        role_name="ci", token_policies=[name], token_ttl="10m", mount_point=mount)
    role_id = client.auth.approle.read_role_id("ci", mount_point=mount)["data"]["role_id"]
    secret = client.auth.approle.generate_secret_id("ci", mount_point=mount)["data"]
    for field in ("secret_id", "secret_id_accessor", "secret_id_ttl", "secret_id_num_uses"):
        assert field in secret, f"secret-id answer lacks {field}: {secret}"

    login_client = session_server.client()
    with pytest.raises(hvac.exceptions.InvalidRequest):
        login_client.auth.approle.login(role_id, "not-the-secret-id", mount_point=mount)
    auth = login_client.auth.approle.login(role_id, secret["secret_id"], mount_point=mount)["auth"]
    assert name in auth["policies"]
    assert auth["lease_duration"] == 600
    assert login_client.secrets.kv.v2.read_secret_version(
        path=f"{prefix}/x", raise_on_deleted_version=True)["data"]["data"] == {"v": "visible"}
