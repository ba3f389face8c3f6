//! Telemetry and the monitoring files, from outside: every node of a 3-node cluster scraped at
//! `sys/metrics?format=prometheus` (with and without a token, per the listener's
//! `unauthenticated_metrics_access`), each node answering with its own metrics, and the metrics
//! moving as operations happen (KV writes, tokens, a seal and unseal, a step-down); the
//! Grafana dashboard `provision render` writes queries only metrics a live scrape shows; the
//! alert rules it writes pass `promtool check rules` and fire in a `promtool test rules` unit
//! test (`monitoring/alerts.test.yml`); the `telemetry` stanza's `disable_hostname` and
//! `prometheus_retention_time` as Vault reads them.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use keyhold_tests::provision::{EnvSpec, Provisioned};
use keyhold_tests::{Cluster, Node, NodeOptions};
use serde_json::{json, Value};

/// This module's loopback range for `provision` environments (see `loopback_base`).
const SLOT_MONITORING: u8 = 26;

// ------------------------------------------------------------------------------- scraping

/// One scrape: the status and the Prometheus text.
async fn scrape(node: &Node, token: bool) -> Result<(u16, String)> {
    let api = if token {
        node.api()
    } else {
        node.api().with_token(None)
    };
    let r = api.get("sys/metrics?format=prometheus").await?;
    Ok((r.status.as_u16(), r.text))
}

/// One scrape that must succeed (with the root token).
async fn metrics(node: &Node) -> Result<String> {
    let (status, text) = scrape(node, true).await?;
    ensure!(
        status == 200,
        "scrape of {} with the root token: {status} {text}",
        node.id
    );
    Ok(text)
}

/// The sum of every sample of `name` whose labels include all of `labels` (`key="value"`);
/// `None` when there is none.
fn value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labelset, number) = match rest.chars().next() {
            Some('{') => match rest.find('}') {
                Some(end) => (&rest[1..end], &rest[end + 1..]),
                None => continue,
            },
            Some(' ') => ("", rest),
            _ => continue,
        };
        if !labels.iter().all(|l| labelset.split(',').any(|p| p == *l)) {
            continue;
        }
        if let Some(v) = number
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

/// `value`, or 0 when the series does not exist yet (a summary before its first sample).
fn count(text: &str, name: &str) -> f64 {
    value(text, name, &[]).unwrap_or(0.0)
}

/// Every metric name a scrape shows.
fn names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Scrapes `node` (bounded: 100 polls, 100 ms apart) until `check` holds on its metrics;
/// fails with `what` and the last values otherwise.
async fn wait_metrics(node: &Node, what: &str, check: impl Fn(&str) -> bool) -> Result<String> {
    let mut last = String::new();
    for _ in 0..100 {
        last = metrics(node).await?;
        if check(&last) {
            return Ok(last);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let relevant: Vec<&str> = last
        .lines()
        .filter(|l| l.starts_with("vault_") || l.starts_with("keyhold_"))
        .filter(|l| !l.contains("quantile"))
        .collect();
    bail!(
        "{}: {what} never held in 100 scrapes; last scrape:\n{}",
        node.id,
        relevant.join("\n")
    )
}

// ------------------------------------------------------------------------------ the cluster

#[tokio::test]
async fn every_node_is_scraped_and_its_metrics_move_with_operations() -> Result<()> {
    let options = NodeOptions {
        extra_top: [
            "telemetry {",
            "  disable_hostname   = true",
            "  usage_gauge_period = \"1s\"",
            "}",
        ]
        .map(String::from)
        .to_vec(),
        ..NodeOptions::default()
    };
    let mut cluster = Cluster::prepare_ha(3, options)?;
    // Node 0 alone lets Prometheus in without a token.
    cluster.nodes[0].options.extra_listener.extend(
        [
            "telemetry {",
            "  unauthenticated_metrics_access = true",
            "}",
        ]
        .map(String::from),
    );
    cluster.nodes[0].write_config()?;
    let keys = cluster.form(3, 2).await?;
    let first = cluster.active().await?;
    ensure!(
        first == 0,
        "node 0 initialised the cluster but {first} is active"
    );

    // Without a token: only the listener with unauthenticated_metrics_access answers. With
    // one, every node answers, and each with its own metrics (a standby is not active).
    for (i, node) in cluster.nodes.iter().enumerate() {
        let (status, text) = scrape(node, false).await?;
        let want = if i == 0 { 200 } else { 403 };
        ensure!(
            status == want,
            "{} without a token: expected {want}, got {status} {}",
            node.id,
            text.chars().take(300).collect::<String>()
        );
        let text = metrics(node).await?;
        ensure!(
            value(&text, "vault_core_unsealed", &[]) == Some(1.0),
            "{}: vault_core_unsealed is not 1 on an unsealed node",
            node.id
        );
        let active = if i == first { 1.0 } else { 0.0 };
        ensure!(
            value(&text, "vault_core_active", &[]) == Some(active),
            "{}: vault_core_active should be {active} (its own metrics, not the active node's)",
            node.id
        );
        let expiry = value(&text, "keyhold_tls_certificate_expiry_seconds", &[])
            .with_context(|| format!("{}: no keyhold_tls_certificate_expiry_seconds", node.id))?;
        ensure!(
            expiry > chrono::Utc::now().timestamp() as f64,
            "{}: the certificate's not-after {expiry} is in the past",
            node.id
        );
        ensure!(
            count(&text, "vault_runtime_alloc_bytes") > 0.0
                && count(&text, "vault_runtime_sys_bytes") > 0.0,
            "{}: no runtime memory gauges",
            node.id
        );
    }

    // KV writes move the active node's barrier puts and Raft applies, and every follower's
    // state-machine applies.
    let active = &cluster.nodes[first];
    let follower = &cluster.nodes[(first + 1) % 3];
    let before = metrics(active).await?;
    let before_follower = metrics(follower).await?;
    active.api().mount_kv("kv", 2).await?;
    for i in 0..20 {
        active
            .api()
            .kv2_put("kv", &format!("app/{i}"), json!({"v": i}))
            .await?
            .expect(200, "kv write")?;
    }
    let after = metrics(active).await?;
    for name in [
        "vault_barrier_put_count",
        "vault_raft_apply",
        "vault_raft_commitTime_count",
        "vault_core_handle_request_count",
    ] {
        let (b, a) = (count(&before, name), count(&after, name));
        ensure!(
            a >= b + 20.0,
            "{name} on the active node went from {b} to {a} over 20 KV writes"
        );
    }
    let kv_writes =
        count(&after, "vault_route_create_kv_count") + count(&after, "vault_route_update_kv_count");
    ensure!(
        kv_writes >= 20.0,
        "KV write operations counted on the active node: {kv_writes}"
    );
    cluster.wait_caught_up().await?;
    let b = count(&before_follower, "vault_raft_fsm_apply_count");
    let b_index = count(&before_follower, "vault_raft_storage_stats_applied_index");
    wait_metrics(
        follower,
        "state-machine applies and applied index grew",
        |t| {
            count(t, "vault_raft_fsm_apply_count") > b
                && count(t, "vault_raft_storage_stats_applied_index") >= b_index + 20.0
        },
    )
    .await?;
    wait_metrics(
        active,
        "the leader sampled its followers' last contact",
        |t| count(t, "vault_raft_leader_lastContact_count") > 0.0,
    )
    .await?;
    wait_metrics(active, "autopilot reports a healthy cluster", |t| {
        value(t, "vault_autopilot_healthy", &[]) == Some(1.0)
    })
    .await?;

    // Tokens: creation is counted at once; the usage gauges (every second here) follow.
    let tokens_before = wait_metrics(active, "vault.token.count was collected", |t| {
        value(t, "vault_token_count", &[]).is_some()
    })
    .await?;
    let count_before = count(&tokens_before, "vault_token_count");
    let leases_before = count(&tokens_before, "vault_expire_num_leases");
    let created_before = count(&tokens_before, "vault_token_creation");
    for _ in 0..5 {
        active
            .api()
            .create_token(json!({"policies": ["default"], "ttl": "1h"}))
            .await?;
    }
    let t = wait_metrics(active, "vault_token_count grew by the 5 new tokens", |t| {
        count(t, "vault_token_count") >= count_before + 5.0
            && count(t, "vault_expire_num_leases") >= leases_before + 5.0
    })
    .await?;
    let created = value(&t, "vault_token_creation", &["mount_point=\"auth/token/\""])
        .context("no vault_token_creation{mount_point=\"auth/token/\"}")?;
    ensure!(
        count(&t, "vault_token_creation") >= created_before + 5.0 && created >= 5.0,
        "vault_token_creation: {created_before} before, {} after 5 tokens",
        count(&t, "vault_token_creation")
    );

    // Seal the active node: it says so (without a token, as it allows), hands leadership on,
    // and counts the unseal when it comes back.
    let unseals_before = count(&metrics(active).await?, "vault_core_unseal_count");
    active
        .api()
        .put("sys/seal", json!({}))
        .await?
        .expect_ok("seal the active node")?;
    let (status, sealed) = scrape(&cluster.nodes[0], false).await?;
    ensure!(
        status == 200,
        "scrape of the sealed node 0: {status} {sealed}"
    );
    ensure!(
        value(&sealed, "vault_core_unsealed", &[]) == Some(0.0)
            && value(&sealed, "vault_core_active", &[]) == Some(0.0),
        "sealed node 0 reports unsealed {:?} active {:?}",
        value(&sealed, "vault_core_unsealed", &[]),
        value(&sealed, "vault_core_active", &[])
    );
    let second = cluster.active().await?;
    ensure!(second != 0, "node 0 is sealed but still active");
    cluster.nodes[0]
        .unseal_member(&keys.keys[..keys.threshold])
        .await?;
    cluster.wait_roles("after unsealing node 0 again").await?;
    let back = metrics(&cluster.nodes[0]).await?;
    ensure!(
        value(&back, "vault_core_unsealed", &[]) == Some(1.0)
            && count(&back, "vault_core_unseal_count") > unseals_before,
        "node 0 after its unseal: unsealed {:?}, unseals {} (before {unseals_before})",
        value(&back, "vault_core_unsealed", &[]),
        count(&back, "vault_core_unseal_count")
    );

    // A step-down: the new leader counts its election, the old one is no longer active.
    let old = cluster.active().await?;
    let leader_before: Vec<f64> = {
        let mut v = Vec::new();
        for node in &cluster.nodes {
            v.push(count(&metrics(node).await?, "vault_raft_state_leader"));
        }
        v
    };
    cluster.nodes[old]
        .api()
        .put("sys/step-down", json!({}))
        .await?
        .expect_ok("step-down")?;
    let new = cluster.wait_new_active(old, "step-down").await?;
    wait_metrics(
        &cluster.nodes[new],
        "the new leader counted its election",
        |t| {
            count(t, "vault_raft_state_leader") > leader_before[new]
                && value(t, "vault_core_active", &[]) == Some(1.0)
        },
    )
    .await?;
    wait_metrics(
        &cluster.nodes[old],
        "the old leader is not active and no longer counts tokens",
        |t| {
            value(t, "vault_core_active", &[]) == Some(0.0)
                && count(t, "vault_raft_state_follower") >= 1.0
                && value(t, "vault_token_count", &[]) == Some(0.0)
        },
    )
    .await?;

    // The dashboard queries only what the nodes export.
    let mut exported = BTreeSet::new();
    for node in &cluster.nodes {
        exported.extend(names(&metrics(node).await?));
    }
    let mut p = Provisioned::new("mon", SLOT_MONITORING, EnvSpec::nodes(3))?;
    let out = render(&mut p).await?;
    check_dashboard(&out.join("monitoring/keyhold-dashboard.json"), &exported)?;
    Ok(())
}

/// `telemetry { ... }` as Vault reads it: without `disable_hostname`, gauges carry the host
/// name (`vault_HOST_core_unsealed`) and nothing else does; `prometheus_retention_time` drops a
/// timing that stopped moving, while counters and gauges stay; a retention of 0 turns the
/// Prometheus format off and leaves Vault's JSON.
#[tokio::test]
async fn the_telemetry_stanza_is_honoured() -> Result<()> {
    let telemetry = |lines: &[&str]| NodeOptions {
        extra_top: ["telemetry {"]
            .iter()
            .chain(lines)
            .chain(&["}"])
            .map(|l| l.to_string())
            .collect(),
        ..NodeOptions::default()
    };
    let mut with_host =
        Cluster::single_active(telemetry(&["  prometheus_retention_time = \"2s\""])).await?;
    let node = with_host.node();
    let host: String = std::fs::read_to_string("/proc/sys/kernel/hostname")?
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let text = metrics(node).await?;
    let gauge = format!("vault_{host}_core_unsealed");
    ensure!(
        value(&text, &gauge, &[]) == Some(1.0)
            && value(&text, "vault_core_unsealed", &[]).is_none(),
        "without disable_hostname the gauge is {gauge}; scrape:\n{text}"
    );

    node.api().mount_kv("kv", 2).await?;
    node.api()
        .kv2_put("kv", "app", json!({"v": 1}))
        .await?
        .expect(200, "kv write")?;
    let kv_timing = |t: &str| {
        names(t)
            .iter()
            .any(|n| n.starts_with("vault_route_") && n.ends_with("_kv_count"))
    };
    let text = metrics(node).await?;
    ensure!(
        kv_timing(&text) && count(&text, "vault_core_handle_request_count") > 0.0,
        "the KV write was timed, under names without the host:\n{text}"
    );
    let text = wait_metrics(node, "the idle KV timing aged out", |t| !kv_timing(t)).await?;
    ensure!(
        value(&text, "vault_audit_log_request_failure", &[]) == Some(0.0)
            && value(&text, &gauge, &[]) == Some(1.0),
        "counters and gauges outlive the retention time:\n{text}"
    );

    let mut off =
        Cluster::single_active(telemetry(&["  prometheus_retention_time = \"0s\""])).await?;
    let (status, text) = scrape(off.node(), true).await?;
    ensure!(
        status == 400 && text.contains("prometheus_retention_time"),
        "retention 0: format=prometheus should be refused, got {status} {text}"
    );
    let json = off
        .node()
        .api()
        .get("sys/metrics")
        .await?
        .expect(200, "JSON metrics with retention 0")?;
    ensure!(
        json.json["Gauges"].is_array() && json.json["Samples"].is_array(),
        "Vault's JSON format: {}",
        json.text
    );
    Ok(())
}

// ----------------------------------------------------------------------- monitoring files

async fn render(p: &mut Provisioned) -> Result<std::path::PathBuf> {
    let out = p.dir().join("render");
    let out_arg = out.display().to_string();
    p.run(&["render", "--out", &out_arg]).await?.expect(0)?;
    Ok(out)
}

/// Metric names in a PromQL expression: every `vault_...` or `keyhold_...` identifier, except
/// inside a `__name__=~"..."` matcher, whose regex is returned apart.
fn promql_metrics(expr: &str) -> (BTreeSet<String>, Vec<String>) {
    let mut rest = expr.to_string();
    let mut regexes = Vec::new();
    while let Some(start) = rest.find("__name__=~\"") {
        let from = start + "__name__=~\"".len();
        let Some(len) = rest[from..].find('"') else {
            break;
        };
        regexes.push(rest[from..from + len].to_string());
        rest.replace_range(start..from + len + 1, "");
    }
    let mut names = BTreeSet::new();
    let mut word = String::new();
    for c in rest.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            if word.starts_with("vault_") || word.starts_with("keyhold_") {
                names.insert(word.clone());
            }
            word.clear();
        }
    }
    (names, regexes)
}

/// The names the snapshot agent and the restore drill write into their textfiles.
fn textfile_metrics() -> BTreeSet<String> {
    use keyhold::snapshot_agent::textfile::{DRILL_METRICS, SNAPSHOT_METRICS};
    SNAPSHOT_METRICS
        .iter()
        .chain(DRILL_METRICS)
        .map(|(n, _)| n.to_string())
        .collect()
}

/// Valid JSON with the fields Grafana's dashboard schema requires, every panel with a
/// position and queries, and every metric it queries exported by a node (or written by the
/// snapshot agent or the drill).
fn check_dashboard(path: &Path, exported: &BTreeSet<String>) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let dash: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    for field in [
        "uid",
        "title",
        "schemaVersion",
        "panels",
        "time",
        "templating",
    ] {
        ensure!(dash.get(field).is_some(), "the dashboard has no {field:?}");
    }
    ensure!(dash["schemaVersion"].as_u64().is_some_and(|v| v >= 30));
    let panels = dash["panels"]
        .as_array()
        .context("panels is not an array")?;
    ensure!(panels.len() >= 10, "only {} panels", panels.len());
    let textfiles = textfile_metrics();
    let mut ids = BTreeSet::new();
    let mut queried = BTreeSet::new();
    let mut missing = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("?");
        ensure!(
            ids.insert(panel["id"].as_u64().context("a panel without an id")?),
            "two panels share an id ({title})"
        );
        ensure!(
            panel["type"].is_string()
                && ["x", "y", "w", "h"]
                    .iter()
                    .all(|k| panel["gridPos"][k].is_u64()),
            "panel {title}: no type or gridPos"
        );
        let targets = panel["targets"]
            .as_array()
            .context("a panel without targets")?;
        ensure!(!targets.is_empty(), "panel {title} queries nothing");
        for target in targets {
            let expr = target["expr"].as_str().context("a target without expr")?;
            ensure!(
                target["refId"].is_string(),
                "panel {title}: a target without refId"
            );
            let (names, regexes) = promql_metrics(expr);
            for name in names {
                if !exported.contains(&name) && !textfiles.contains(&name) {
                    missing.push(format!("{name} (panel {title:?})"));
                }
                queried.insert(name);
            }
            for regex in regexes {
                let prefix = regex.split(".*").next().unwrap_or_default();
                let suffix = regex.rsplit(".*").next().unwrap_or_default();
                ensure!(
                    exported
                        .iter()
                        .any(|n| n.starts_with(prefix) && n.ends_with(suffix)),
                    "panel {title:?}: no exported metric matches {regex:?}"
                );
            }
        }
    }
    ensure!(
        missing.is_empty(),
        "the dashboard queries metrics no node exports:\n{}",
        missing.join("\n")
    );
    for core in [
        "vault_core_unsealed",
        "vault_core_handle_request",
        "vault_raft_commitTime",
        "vault_raft_leader_lastContact",
        "vault_token_count",
    ] {
        ensure!(queried.contains(core), "the dashboard does not show {core}");
    }
    Ok(())
}

/// `promtool`, or an error saying how to get it: never a silent pass.
fn promtool() -> Result<&'static str> {
    let found = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    ensure!(
        found,
        "promtool is not installed: `apt-get install -y --no-install-recommends prometheus` \
         (scripts/test installs it); the alert rules cannot be checked without it"
    );
    Ok("promtool")
}

fn run_promtool(args: &[&str], dir: &Path) -> Result<String> {
    let out = std::process::Command::new(promtool()?)
        .args(args)
        .current_dir(dir)
        .output()
        .with_context(|| format!("run promtool {args:?}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "promtool {args:?} failed:\n{text}");
    Ok(text)
}

#[tokio::test]
async fn rendered_alert_rules_pass_promtool_and_fire() -> Result<()> {
    let mut p = Provisioned::new("mon", SLOT_MONITORING, EnvSpec::nodes(3))?;
    let out = render(&mut p).await?;
    let monitoring = out.join("monitoring");

    let checked = run_promtool(&["check", "rules", "keyhold-alerts.yml"], &monitoring)?;
    ensure!(
        checked.contains("SUCCESS: 17 rules found"),
        "promtool check rules: {checked}"
    );

    let scrape_config = std::fs::read_to_string(monitoring.join("prometheus.yml"))?;
    for n in 1..=p.nodes {
        let target = format!("\"{}:8200\"", p.node_addr(n));
        ensure!(
            scrape_config.contains(&target),
            "the scrape config does not name {target}:\n{scrape_config}"
        );
    }
    ensure!(
        scrape_config.contains(&format!("ca_file: {}", p.ca_file().display())),
        "the scrape config does not trust the environment's CA:\n{scrape_config}"
    );
    run_promtool(
        &["check", "config", "--syntax-only", "prometheus.yml"],
        &monitoring,
    )?;

    // Every alert fires on the series that should fire it, and the healthy ones stay quiet.
    let test = include_str!("monitoring/alerts.test.yml");
    std::fs::write(monitoring.join("alerts.test.yml"), test)?;
    let tested = run_promtool(&["test", "rules", "alerts.test.yml"], &monitoring)?;
    ensure!(tested.contains("SUCCESS"), "promtool test rules: {tested}");
    let rules = std::fs::read_to_string(monitoring.join("keyhold-alerts.yml"))?;
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        ensure!(
            test.contains(&format!("alertname: {alert}\n")),
            "alerts.test.yml does not test {alert}"
        );
    }
    Ok(())
}
