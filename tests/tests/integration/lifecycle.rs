//! Graceful shutdown: SIGTERM and SIGINT make the server exit 0 (waited for with a bound that only
//! guards against a hang), and what it acknowledged before is there after the restart.

use anyhow::{ensure, Result};
use keyhold_tests::{Cluster, NodeOptions};
use serde_json::json;

async fn graceful_exit_keeps_data(signal: libc::c_int, name: &str) -> Result<()> {
    let mut cluster = Cluster::single(NodeOptions::default()).await?;
    let node = cluster.node();
    node.init_and_unseal(1, 1).await?;
    let api = node.api();
    api.mount_kv("secret", 2).await?;
    for i in 0..20 {
        api.kv2_put("secret", &format!("k{i}"), json!({ "i": i }))
            .await?
            .expect(200, "write before shutdown")?;
    }

    let status = node.stop_with(signal, 600).await?;
    ensure!(
        status.code() == Some(0),
        "{name}: expected exit code 0, got {status}; log:\n{}",
        node.log_tail(30)
    );

    node.start().await?;
    ensure!(
        node.api().seal_status().await?["sealed"] == json!(true),
        "{name}: a restarted server must come back sealed"
    );
    node.unseal().await?;
    let api = node.api();
    for i in 0..20 {
        assert_eq!(
            api.kv2_get("secret", &format!("k{i}")).await?,
            Some(json!({ "i": i })),
            "{name}: secret k{i} after restart"
        );
    }
    Ok(())
}

#[tokio::test]
async fn sigterm_exits_zero_and_data_survives() -> Result<()> {
    graceful_exit_keeps_data(libc::SIGTERM, "SIGTERM").await
}

#[tokio::test]
async fn sigint_exits_zero_and_data_survives() -> Result<()> {
    graceful_exit_keeps_data(libc::SIGINT, "SIGINT").await
}

#[tokio::test]
async fn sigterm_while_sealed_exits_zero() -> Result<()> {
    let mut cluster = Cluster::single(NodeOptions::default()).await?;
    let node = cluster.node();
    node.init(1, 1).await?;
    let status = node.sigterm().await?;
    ensure!(
        status.code() == Some(0),
        "expected exit code 0 from a sealed server, got {status}; log:\n{}",
        node.log_tail(30)
    );
    Ok(())
}
