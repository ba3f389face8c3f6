//! KV v2 check-and-set under concurrency: of several writers racing with the same `cas`, exactly
//! one wins each round, the rest get 400, and the version history has no gaps or duplicates.

use anyhow::{ensure, Result};
use keyhold_tests::{Cluster, NodeOptions};
use serde_json::json;

const ROUNDS: u64 = 15;
const RACERS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cas_writes_have_one_winner_per_version() -> Result<()> {
    let mut cluster = Cluster::single_active(NodeOptions::default()).await?;
    let api = cluster.node().api();
    api.mount_kv("secret", 2).await?;
    api.post(
        "secret/data/race",
        json!({"options": {"cas": 0}, "data": {"winner": "seed"}}),
    )
    .await?
    .expect(200, "seed write")?;

    for round in 0..ROUNDS {
        let version = round + 1;
        let tasks: Vec<_> = (0..RACERS)
            .map(|racer| {
                let api = api.clone();
                tokio::spawn(async move {
                    api.post(
                        "secret/data/race",
                        json!({"options": {"cas": version}, "data": {"winner": format!("{round}-{racer}")}}),
                    )
                    .await
                })
            })
            .collect();
        let mut winners = Vec::new();
        let mut others = Vec::new();
        for (racer, task) in tasks.into_iter().enumerate() {
            let r = task.await??;
            match r.status.as_u16() {
                200 => winners.push(racer),
                400 => {}
                _ => others.push(format!("racer {racer}: {} {}", r.status, r.text)),
            }
        }
        ensure!(
            others.is_empty(),
            "round {round}: unexpected answers: {others:#?}"
        );
        ensure!(
            winners.len() == 1,
            "round {round}: {} writers won with cas={version} (racers {winners:?}); exactly one may",
            winners.len()
        );
        let current = api.get("secret/data/race").await?.expect(200, "read")?;
        assert_eq!(
            current.json["data"]["metadata"]["version"],
            json!(version + 1)
        );
        assert_eq!(
            current.json["data"]["data"]["winner"],
            json!(format!("{round}-{}", winners[0])),
            "the stored value is the winner's"
        );
    }
    let meta = api
        .get("secret/metadata/race")
        .await?
        .expect(200, "metadata")?;
    assert_eq!(meta.json["data"]["current_version"], json!(ROUNDS + 1));
    Ok(())
}
