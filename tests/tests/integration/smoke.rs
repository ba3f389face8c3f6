//! The two ways to run a server answer at all: `-dev` (in memory, plain HTTP, unsealed with a
//! chosen root token) and a config file with raft storage over TLS (uninitialised, then active).

use anyhow::Result;
use keyhold_tests::{Cluster, NodeOptions};
use serde_json::json;

#[tokio::test]
async fn config_server_goes_from_uninitialised_to_active() -> Result<()> {
    let mut cluster = Cluster::single(NodeOptions::default()).await?;
    let node = cluster.node();
    let api = node.api();
    api.get("sys/health")
        .await?
        .expect(501, "health before init")?;
    let init = api.get("sys/init").await?.expect(200, "GET sys/init")?;
    assert_eq!(init.json["initialized"], json!(false), "{}", init.text);

    node.init(3, 2).await?;
    api.get("sys/health")
        .await?
        .expect(503, "health after init (sealed)")?;
    let status = api.seal_status().await?;
    assert_eq!(status["sealed"], json!(true), "{status}");
    assert_eq!(status["t"], json!(2), "{status}");
    assert_eq!(status["n"], json!(3), "{status}");

    node.unseal().await?;
    let api = node.api();
    api.get("sys/health")
        .await?
        .expect(200, "health when active")?;
    api.mount_kv("secret", 2).await?;
    api.kv2_put("secret", "hello", json!({"who": "world"}))
        .await?
        .expect(200, "write secret/data/hello")?;
    assert_eq!(
        api.kv2_get("secret", "hello").await?,
        Some(json!({"who": "world"}))
    );
    Ok(())
}

#[tokio::test]
async fn dev_server_serves_unsealed_with_chosen_root_token() -> Result<()> {
    let mut cluster = Cluster::prepare(
        1,
        NodeOptions {
            tls: None,
            ..NodeOptions::default()
        },
    )?;
    let node = cluster.node();
    // `-dev` ignores the config file's listener; give it the same address so the harness finds it.
    let listen = format!("-dev-listen-address={}:{}", node.ip, node.port);
    node.set_dev_args(&["-dev", "-dev-root-token-id=root", &listen]);
    node.start().await?;
    let api = node.api().with_token(Some("root"));
    api.get("sys/health").await?.expect(200, "dev health")?;
    let me = api
        .get("auth/token/lookup-self")
        .await?
        .expect(200, "lookup-self with the dev root token")?;
    assert_eq!(me.json["data"]["policies"], json!(["root"]), "{}", me.text);
    Ok(())
}
