//! The raw `sys/` handlers: answered with bare JSON (no envelope), without a
//! token, and mostly while sealed — init, seal-status, unseal, seal, health,
//! leader, step-down, generate-root and rekey. None of these are audited
//! (Vault does not audit them either).

use std::collections::BTreeMap;

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use serde_json::{json, Map, Value};

use super::{error_response, raw_json, AppState};
use crate::core::RekeyTarget;
use crate::error::Error;

/// `Some(response)` when `path` is a raw handler.
pub(super) async fn handle(
    state: &AppState,
    method: &Method,
    path: &str,
    query: &BTreeMap<String, String>,
    body: &Map<String, Value>,
    token: Option<&str>,
    remote: std::net::SocketAddr,
) -> Option<HttpResponse> {
    let core = &state.core;
    let write = matches!(method.as_str(), "PUT" | "POST");
    let get = method == Method::GET;
    let str_field = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    let resp = match path.trim_end_matches('/') {
        "sys/health" if get || method == Method::HEAD => health(state, query, method == Method::HEAD).await,
        "sys/seal-status" if get => result(core.seal_status().await),
        "sys/init" if get => match core.is_initialized().await {
            Ok(init) => raw_json(StatusCode::OK, &json!({ "initialized": init })),
            Err(e) => error_response(&e),
        },
        "sys/init" if write => match serde_json::from_value::<crate::core::InitRequest>(Value::Object(body.clone())) {
            Ok(req) => result(core.init(req).await),
            Err(e) => error_response(&Error::invalid(format!("invalid init request: {e}"))),
        },
        "sys/unseal" if write => {
            let reset = body.get("reset").and_then(Value::as_bool).unwrap_or(false);
            let migrate = body.get("migrate").and_then(Value::as_bool).unwrap_or(false);
            result(core.unseal(str_field("key").as_deref(), reset, migrate).await)
        }
        "sys/seal" if write => match core.seal(token).await {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => error_response(&e),
        },
        "sys/step-down" if write => match core.step_down(token).await {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => error_response(&e),
        },
        "sys/leader" if get => leader(state).await,
        "sys/metrics" if get && state.settings.unauthenticated_metrics_access => {
            let mut req = crate::logical::Request::new(crate::logical::Operation::Read, "sys/metrics");
            req.data = body.clone();
            for (k, v) in query {
                req.data.insert(k.clone(), Value::String(v.clone()));
            }
            match core.metrics_unauthenticated(&req) {
                Ok(resp) => super::logical_response("sys/metrics", resp),
                Err(e) => error_response(&e),
            }
        }
        "sys/generate-root/attempt" => match method.as_str() {
            "GET" => result(core.generate_root_status().await),
            "PUT" | "POST" => result(core.generate_root_start(str_field("otp"), str_field("pgp_key")).await),
            "DELETE" => {
                core.generate_root_cancel();
                StatusCode::NO_CONTENT.into_response()
            }
            _ => error_response(&Error::UnsupportedOperation),
        },
        "sys/generate-root/update" if write => match str_field("key") {
            Some(key) => result(core.generate_root_update(&key, str_field("nonce").as_deref()).await),
            None => error_response(&Error::invalid("'key' must be specified in request body as JSON")),
        },
        "sys/rekey/init" | "sys/rekey-recovery-key/init" | "sys/rekey/update" | "sys/rekey-recovery-key/update" | "sys/rekey/verify" | "sys/rekey-recovery-key/verify" => {
            let trimmed = path.trim_end_matches('/');
            let target = if trimmed.starts_with("sys/rekey-recovery-key/") { RekeyTarget::Recovery } else { RekeyTarget::Barrier };
            let step = trimmed.rsplit('/').next().unwrap_or_default();
            rekey(core, target, step, method, body).await
        }
        "sys/storage/raft/bootstrap/challenge" if write => match str_field("server_id") {
            Some(id) => result(core.raft_challenge(&id, remote.ip()).await),
            None => error_response(&Error::invalid("server_id is required")),
        },
        "sys/storage/raft/bootstrap/answer" if write => {
            let joiner = crate::raft::ClusterNode {
                name: str_field("server_id").unwrap_or_default(),
                api_addr: str_field("api_addr").unwrap_or_default(),
                cluster_addr: str_field("cluster_addr").unwrap_or_default(),
            };
            match str_field("answer") {
                Some(answer) if !joiner.name.is_empty() => result(core.raft_answer(joiner, &answer, remote.ip()).await),
                _ => error_response(&Error::invalid("server_id and answer are required")),
            }
        }
        "sys/storage/raft/join" if write => join(state, body).await,
        "sys/rekey/backup" | "sys/rekey/recovery-key-backup" => {
            error_response(&Error::invalid("rekey backups are only made for PGP-encrypted shares, which this build does not support"))
        }
        _ => return None,
    };
    Some(resp)
}

/// `sys/rekey/*` and `sys/rekey-recovery-key/*`: `step` is `init`, `update` or `verify`.
async fn rekey(
    core: &std::sync::Arc<crate::core::Core>,
    target: RekeyTarget,
    step: &str,
    method: &Method,
    body: &Map<String, Value>,
) -> HttpResponse {
    let str_field = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    let write = matches!(method.as_str(), "PUT" | "POST");
    let key_required = || {
        error_response(&Error::invalid(
            "'key' must be specified in request body as JSON",
        ))
    };
    match (step, method.as_str()) {
        ("init", "GET") => result(core.rekey_status(target).await),
        ("init", "PUT" | "POST") => {
            let num = |k: &str| body.get(k).and_then(Value::as_u64).unwrap_or(0).min(255) as u8;
            let flag = |k: &str| body.get(k).and_then(Value::as_bool).unwrap_or(false);
            let pgp = body
                .get("pgp_keys")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty());
            result(
                core.rekey_start(
                    target,
                    num("secret_shares"),
                    num("secret_threshold"),
                    flag("require_verification"),
                    pgp,
                    flag("backup"),
                )
                .await,
            )
        }
        ("init", "DELETE") => {
            core.rekey_cancel(target);
            StatusCode::NO_CONTENT.into_response()
        }
        ("update", _) if write => match str_field("key") {
            Some(key) => result(
                core.rekey_update(target, &key, str_field("nonce").as_deref())
                    .await,
            ),
            None => key_required(),
        },
        ("verify", "GET") => result(core.rekey_verify_status(target).await),
        ("verify", "PUT" | "POST") => match str_field("key") {
            Some(key) => result(
                core.rekey_verify_update(target, &key, str_field("nonce").as_deref())
                    .await,
            ),
            None => key_required(),
        },
        ("verify", "DELETE") => match core.rekey_verify_cancel(target) {
            Ok(()) => result(core.rekey_verify_status(target).await),
            Err(e) => error_response(&e),
        },
        _ => error_response(&Error::UnsupportedOperation),
    }
}

/// Whether `handle` answers `path` (for some method): these answer without a token, each
/// checking what it needs itself (sys/seal and sys/step-down their token, generate-root and
/// rekey their key shares), so the HTTP layer must not refuse them for want of a token.
pub(super) fn is_raw_path(path: &str) -> bool {
    matches!(
        path.trim_end_matches('/'),
        "sys/health"
            | "sys/seal-status"
            | "sys/init"
            | "sys/unseal"
            | "sys/seal"
            | "sys/step-down"
            | "sys/leader"
            | "sys/generate-root/attempt"
            | "sys/generate-root/update"
            | "sys/rekey/init"
            | "sys/rekey-recovery-key/init"
            | "sys/rekey/update"
            | "sys/rekey-recovery-key/update"
            | "sys/rekey/verify"
            | "sys/rekey-recovery-key/verify"
            | "sys/storage/raft/bootstrap/challenge"
            | "sys/storage/raft/bootstrap/answer"
            | "sys/storage/raft/join"
            | "sys/rekey/backup"
            | "sys/rekey/recovery-key-backup"
    )
}

/// Paths a standby answers itself; everything else goes to the active node.
/// The two routes of the Raft join handshake (answered by the active node, without a token).
pub(super) fn is_join_handshake(path: &str) -> bool {
    matches!(
        path.trim_end_matches('/'),
        "sys/storage/raft/bootstrap/challenge" | "sys/storage/raft/bootstrap/answer"
    )
}

pub(super) fn served_locally(path: &str) -> bool {
    matches!(
        path.trim_end_matches('/'),
        "sys/health"
            | "sys/seal-status"
            | "sys/init"
            | "sys/unseal"
            | "sys/leader"
            | "sys/storage/raft/join"
    )
}

/// `sys/storage/raft/join`: runs on the joining node.
async fn join(state: &AppState, body: &Map<String, Value>) -> HttpResponse {
    let text = |k: &str| {
        body.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let Some(leader_api_addr) = text("leader_api_addr") else {
        return error_response(&Error::invalid(
            "leader_api_addr is required (auto_join is not supported by this build)",
        ));
    };
    let target = crate::core::ha::JoinTarget {
        leader_api_addr,
        ca_cert_pem: text("leader_ca_cert"),
        client_cert_pem: text("leader_client_cert"),
        client_key_pem: text("leader_client_key").map(zeroize::Zeroizing::new),
        tls_server_name: text("leader_tls_servername"),
        non_voter: body
            .get("non_voter")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    let retry = body.get("retry").and_then(Value::as_bool).unwrap_or(false);
    match state.core.raft_join(&target).await {
        Ok(()) => raw_json(StatusCode::OK, &json!({ "joined": true })),
        Err(e) if retry => {
            tracing::info!(error = %e, "join will be retried in the background");
            tokio::spawn(state.core.clone().retry_join(vec![target]));
            raw_json(StatusCode::OK, &json!({ "joined": true }))
        }
        Err(e) => error_response(&e),
    }
}

fn result<T: serde::Serialize>(r: Result<T, Error>) -> HttpResponse {
    match r {
        Ok(v) => raw_json(StatusCode::OK, &v),
        Err(e) => error_response(&e),
    }
}

/// `sys/health`: status codes chosen by state, each overridable by a query
/// parameter, as Vault does (first match wins).
async fn health(state: &AppState, query: &BTreeMap<String, String>, head: bool) -> HttpResponse {
    let code = |name: &str, default: u16| -> Result<u16, Error> {
        match query.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<u16>()
                .ok()
                .filter(|c| (100..600).contains(c))
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "bad code value {v:?} for {name}: use an HTTP status code"
                    ))
                }),
        }
    };
    // Go's strconv.ParseBool, as Vault parses these (hvac sends "True").
    let flag = |name: &str| {
        query
            .get(name)
            .is_some_and(|v| matches!(v.as_str(), "" | "1" | "t" | "T" | "true" | "TRUE" | "True"))
    };
    for name in [
        "activecode",
        "standbycode",
        "sealedcode",
        "uninitcode",
        "drsecondarycode",
        "performancestandbycode",
        "removedcode",
    ] {
        if let Err(e) = code(name, 200) {
            return error_response(&e);
        }
    }
    let core = &state.core;
    let initialized = match core.is_initialized().await {
        Ok(i) => i,
        Err(e) => return error_response(&e),
    };
    let sealed = core.is_sealed();
    let standby = core.role() == crate::core::Role::Standby;
    let status = (|| -> Result<u16, Error> {
        Ok(if !initialized {
            code("uninitcode", 501)?
        } else if sealed {
            code("sealedcode", 503)?
        } else if standby && !flag("standbyok") {
            code("standbycode", 429)?
        } else {
            code("activecode", 200)?
        })
    })();
    let status = match status {
        Ok(s) => StatusCode::from_u16(s).unwrap_or(StatusCode::OK),
        Err(e) => return error_response(&e),
    };
    if head {
        return status.into_response();
    }
    let cluster = core.unsealed().ok().map(|u| u.cluster.clone());
    let body = json!({
        "initialized": initialized,
        "sealed": sealed,
        "standby": standby,
        "performance_standby": false,
        "replication_performance_mode": "disabled",
        "replication_dr_mode": "disabled",
        "server_time_utc": chrono::Utc::now().timestamp(),
        "version": crate::VERSION,
        "enterprise": false,
        "cluster_name": cluster.as_ref().map(|c| c.name.clone()).unwrap_or_default(),
        "cluster_id": cluster.as_ref().map(|c| c.id.clone()).unwrap_or_default(),
        "echo_duration_ms": 0,
        "clock_skew_ms": 0,
        "replication_primary_canary_age_ms": 0,
        "removed_from_cluster": false,
    });
    (status, axum::Json(body)).into_response()
}

async fn leader(state: &AppState) -> HttpResponse {
    let core = &state.core;
    if core.is_sealed() {
        return error_response(&Error::Sealed);
    }
    let never = "0001-01-01T00:00:00Z".to_string();
    let body = match core.leader_info().await {
        Some((is_self, leader, committed, applied)) => {
            let active_time = match core.unsealed() {
                Ok(u) if is_self => u
                    .active_time
                    .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                _ => never,
            };
            json!({
                "ha_enabled": true,
                "is_self": is_self,
                "active_time": active_time,
                "leader_address": leader.as_ref().map(|l| l.api_addr.clone()).unwrap_or_default(),
                "leader_cluster_address": leader.as_ref().map(|l| format!("https://{}", l.cluster_addr)).unwrap_or_default(),
                "performance_standby": false,
                "performance_standby_last_remote_wal": 0,
                "raft_committed_index": committed.unwrap_or(0),
                "raft_applied_index": applied.unwrap_or(0),
            })
        }
        None => json!({
            "ha_enabled": core.config.ha_enabled,
            "is_self": false,
            "active_time": never,
            "leader_address": "",
            "leader_cluster_address": "",
            "performance_standby": false,
            "performance_standby_last_remote_wal": 0,
            "raft_committed_index": 0,
            "raft_applied_index": 0,
        }),
    };
    raw_json(StatusCode::OK, &body)
}
