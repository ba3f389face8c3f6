"""Init, unseal, seal-status and sys/health through hvac, in every state a server passes through."""

import pytest
import requests


def health_get(server, **params):
    return requests.get(f"{server.url}/v1/sys/health", params=params, verify=server.ca_path, timeout=10)


def health_head(server, **params):
    return requests.head(f"{server.url}/v1/sys/health", params=params, verify=server.ca_path, timeout=10)


def status_of(answer):
    """hvac's JSON adapter gives a dict for a 200 with JSON, else the requests.Response."""
    return 200 if isinstance(answer, dict) else answer.status_code


def test_init_and_unseal_report_progress(fresh_server):
    client = fresh_server.client()
    assert client.sys.is_initialized() is False

    result = client.sys.initialize(secret_shares=5, secret_threshold=3)
    assert len(result["keys"]) == 5
    assert len(result["keys_base64"]) == 5
    assert all(len(k) == 66 for k in result["keys"]), "a share is 33 bytes, 66 hex characters"
    assert result["root_token"]
    assert client.sys.is_initialized() is True

    status = client.sys.read_seal_status()
    assert status["sealed"] is True
    assert (status["t"], status["n"], status["progress"]) == (3, 5, 0)
    assert status["type"] == "shamir"

    status = client.sys.submit_unseal_key(result["keys"][0])
    assert status["sealed"] is True and status["progress"] == 1
    status = client.sys.submit_unseal_key(result["keys_base64"][1])
    assert status["sealed"] is True and status["progress"] == 2
    status = client.sys.submit_unseal_key(result["keys"][2])
    assert status["sealed"] is False and status["progress"] == 0
    assert client.sys.is_sealed() is False


def test_unseal_reset_discards_progress(fresh_server):
    fresh_server.init(3, 2)
    client = fresh_server.client()
    assert client.sys.submit_unseal_key(fresh_server.keys[0])["progress"] == 1
    status = client.sys.submit_unseal_key(reset=True)
    assert status["progress"] == 0 and status["sealed"] is True


def test_health_codes_in_every_state(fresh_server):
    server = fresh_server
    client = server.client()
    failures = []

    def check(state, hvac_answer, want):
        got = status_of(hvac_answer)
        if got != want:
            failures.append(f"{state}: expected {want}, got {got}")

    def check_raw(state, response, want):
        if response.status_code != want:
            failures.append(f"{state}: expected {want}, got {response.status_code} {response.text!r}")

    # Not initialised.
    check("uninit GET", client.sys.read_health_status(method="GET"), 501)
    check("uninit HEAD", client.sys.read_health_status(method="HEAD"), 501)
    check("uninit GET uninitcode=299", client.sys.read_health_status(method="GET", uninit_code=299), 299)
    check_raw("uninit HEAD uninitcode=299", health_head(server, uninitcode=299), 299)
    check("uninit GET sealedcode=299 (not applicable)", client.sys.read_health_status(method="GET", sealed_code=299), 501)
    body = health_get(server).json()
    if (body.get("initialized"), body.get("sealed")) != (False, True):
        failures.append(f"uninit body: {body}")

    server.init(3, 2)
    # Sealed.
    check("sealed GET", client.sys.read_health_status(method="GET"), 503)
    check("sealed HEAD", client.sys.read_health_status(method="HEAD"), 503)
    check("sealed GET sealedcode=299", client.sys.read_health_status(method="GET", sealed_code=299), 299)
    check_raw("sealed HEAD sealedcode=299", health_head(server, sealedcode=299), 299)
    check("sealed GET uninitcode=299 (not applicable)", client.sys.read_health_status(method="GET", uninit_code=299), 503)
    body = health_get(server).json()
    if (body.get("initialized"), body.get("sealed")) != (True, True):
        failures.append(f"sealed body: {body}")

    server.unseal()
    # Active.
    check("active GET", client.sys.read_health_status(method="GET"), 200)
    check("active HEAD", client.sys.read_health_status(method="HEAD"), 200)
    check("active GET standbyok=true", client.sys.read_health_status(method="GET", standby_ok=True), 200)
    check("active GET standbycode=299 (not applicable)", client.sys.read_health_status(method="GET", standby_code=299), 200)
    check("active GET activecode=299", client.sys.read_health_status(method="GET", active_code=299), 299)
    check_raw("active HEAD activecode=299", health_head(server, activecode=299), 299)
    check("active GET sealedcode=299 (not applicable)", client.sys.read_health_status(method="GET", sealed_code=299), 200)
    body = client.sys.read_health_status(method="GET")
    for field in ("initialized", "sealed", "standby", "server_time_utc", "version", "cluster_name", "cluster_id"):
        if field not in body:
            failures.append(f"active body lacks {field}: {body}")
    if (body.get("initialized"), body.get("sealed"), body.get("standby")) != (True, False, False):
        failures.append(f"active body: {body}")
    head = health_head(server)
    if head.content:
        failures.append(f"HEAD carried a body: {head.content!r}")

    # A code that is not an integer is a bad request.
    check_raw("activecode=abc", health_get(server, activecode="abc"), 400)

    assert not failures, "\n".join(failures)


def test_seal_status_fields_when_unsealed(session_server):
    status = session_server.client().sys.read_seal_status()
    for field in ("type", "initialized", "sealed", "t", "n", "progress", "nonce", "version",
                  "cluster_name", "cluster_id", "storage_type"):
        assert field in status, f"seal-status lacks {field}: {status}"
    assert status["storage_type"] == "raft"
    assert (status["t"], status["n"]) == (session_server.threshold, session_server.shares)


def test_leader_reports_the_active_node(session_server):
    """On the active node is_self is true; on a standby (cluster topology) it is false, and both
    name the active node's address."""
    leader = session_server.client().sys.read_leader_status()
    active_url = session_server.active_url
    assert leader["is_self"] is (session_server.url == active_url), leader
    assert leader["ha_enabled"] is True, leader
    assert leader["leader_address"] == active_url, leader


@pytest.mark.single_node(reason="sys/seal seals the active node; the standby the client talks to stays unsealed and forwards to the new active node")
def test_requests_when_sealed_are_503(active_server):
    client = active_server.root_client()
    client.secrets.kv.v2.create_or_update_secret(path="x", secret={"a": "b"})
    client.sys.seal()
    with pytest.raises(Exception) as excinfo:
        client.secrets.kv.v2.read_secret_version(path="x", raise_on_deleted_version=True)
    assert "sealed" in str(excinfo.value).lower(), repr(excinfo.value)
    assert type(excinfo.value).__name__ == "VaultDown", f"hvac maps 503 to VaultDown, got {excinfo.value!r}"
