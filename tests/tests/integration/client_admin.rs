//! `keyhold-client`'s typed configuration calls against a real server over TLS: policies,
//! engines, audit devices, auth methods, userpass, AppRole, transit keys and tokens, each
//! checked by what the server then answers (not by what the client sent).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Result};
use keyhold::client::admin::{AppRoleRole, TokenRequest, TokenSettings};
use keyhold::client::{CaCert, Client, ClientConfig};
use keyhold_tests::{Cluster, NodeOptions};

#[tokio::test]
async fn typed_admin_calls_configure_a_real_server() -> Result<()> {
    let mut cluster = Cluster::single(NodeOptions::default()).await?;
    let node = cluster.node();
    let keys = node.init(1, 1).await?;
    node.unseal().await?;
    let mut config = ClientConfig::new(node.api_addr());
    config.ca_cert = Some(CaCert::Pem(node.ca_pem().as_bytes().to_vec()));
    config.token = Some(keys.root_token.clone());
    let root = Client::new(&config)?;

    root.policy_write(
        "apps",
        "path \"kv/data/apps/*\" {\n  capabilities = [\"read\"]\n}\n",
    )
    .await?;
    let read = root
        .read("sys/policies/acl/apps")
        .await?
        .and_then(|s| s.data);
    ensure!(
        read.as_ref()
            .and_then(|d| d["policy"].as_str())
            .is_some_and(|p| p.contains("kv/data/apps/*")),
        "policy read back: {read:?}"
    );

    let policies = root.policies().await?;
    ensure!(
        policies.contains(&"apps".to_string()) && policies.contains(&"default".to_string()),
        "policies: {policies:?}"
    );

    let kv_options = BTreeMap::from([("version".to_string(), "2".to_string())]);
    root.mount("kv", "kv", &kv_options).await?;
    let mounts = root.mounts().await?;
    ensure!(
        mounts.get("kv/").map(String::as_str) == Some("kv"),
        "{mounts:?}"
    );
    ensure!(
        root.mount("kv", "kv", &kv_options).await.is_err(),
        "a second mount"
    );

    let audit_path = node.dir.join("audit-admin.log");
    let audit_options =
        BTreeMap::from([("file_path".to_string(), audit_path.display().to_string())]);
    root.enable_audit("file", "file", &audit_options).await?;
    ensure!(
        root.audit_devices().await?.get("file/").map(String::as_str) == Some("file"),
        "audit devices"
    );

    root.enable_auth("userpass", "userpass").await?;
    root.enable_auth("approle", "approle").await?;
    let methods = root.auth_methods().await?;
    ensure!(
        methods.get("userpass/").map(String::as_str) == Some("userpass")
            && methods.get("approle/").map(String::as_str) == Some("approle"),
        "{methods:?}"
    );

    let token = TokenSettings {
        policies: vec!["apps".into()],
        ttl: Some(Duration::from_secs(600)),
        max_ttl: Some(Duration::from_secs(3600)),
    };
    root.userpass_write("userpass", "alice", "correct horse", token.clone())
        .await?;
    let login = root
        .userpass_login("userpass", "alice", "correct horse")
        .await?;
    ensure!(
        login.token_policies.contains(&"apps".to_string()) && login.lease_duration == 600,
        "login: {login:?}"
    );
    ensure!(
        root.userpass_login("userpass", "alice", "wrong")
            .await
            .is_err(),
        "a wrong password logs in"
    );

    let role = AppRoleRole {
        token,
        secret_id_ttl: Some(Duration::from_secs(300)),
        secret_id_num_uses: Some(5),
    };
    root.approle_role_write("approle", "ci", role).await?;
    let role_id = root.approle_role_id("approle", "ci").await?;
    let secret_id = root.approle_secret_id("approle", "ci").await?;
    ensure!(!role_id.is_empty() && !secret_id.is_empty());
    ensure!(
        root.approle_secret_id_live("approle", "ci", &secret_id)
            .await?,
        "a fresh secret id is not live"
    );
    ensure!(
        !root
            .approle_secret_id_live("approle", "ci", "00000000-0000-0000-0000-000000000000")
            .await?,
        "an unknown secret id is live"
    );

    root.mount("transit", "transit", &BTreeMap::new()).await?;
    ensure!(!root.transit_key_exists("transit", "seal").await?);
    root.transit_key_create("transit", "seal", "aes256-gcm96")
        .await?;
    ensure!(root.transit_key_exists("transit", "seal").await?);

    let made = root
        .token_create(&TokenRequest {
            policies: vec!["apps".into()],
            period: Some(Duration::from_secs(86_400)),
            display_name: Some("seal".into()),
            orphan: true,
        })
        .await?;
    ensure!(made.orphan && made.renewable, "token: {made:?}");
    let mut as_made = config.clone();
    as_made.token = Some(made.client_token.clone());
    let made_client = Client::new(&as_made)?;
    let me = made_client.token_lookup_self().await?.and_then(|s| s.data);
    ensure!(
        me.as_ref().is_some_and(|d| d["period"] == 86_400),
        "lookup-self: {me:?}"
    );
    made_client.token_revoke_self().await?;
    ensure!(
        made_client.token_lookup_self().await?.is_none(),
        "a revoked token still looks itself up"
    );
    Ok(())
}
