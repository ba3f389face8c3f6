//! The server side of the cluster transport: an axum router for the Raft
//! RPCs ([`raft_routes`]) and the mutual-TLS listener that serves it
//! ([`serve`]).
//!
//! Extension point: the lead mounts more cluster routes (request
//! forwarding, join) by passing a router to `RaftNode::serve_cluster`; it is
//! merged with [`raft_routes`] on the same mTLS listener, so every route on
//! the cluster port is reachable only with the cluster certificate. Keep
//! new routes under `/v1/cluster/`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use axum_server::accept::NoDelayAcceptor;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use axum_server::Handle;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest};

use super::follower_reads::LeaderContact;
use super::network::{
    decode_chunk, APPEND_PATH, ELECT_PATH, MAX_RPC_BYTES, SENT_AT_HEADER, SNAPSHOT_PATH,
    VERSION_PATH, VOTE_PATH,
};
use super::tls::{ClusterTls, PROBE_PATH};
use super::types::{NodeId, Raft, TypeConfig};
use super::ClusterError;

/// The Raft RPC endpoints, calling into the local `raft`; each append accepted from a leader
/// is noted in `contact` (standby reads), with when it arrived and the leader's clock then.
/// Once `stopping` is set they answer 503 (the node is shutting down its Raft).
pub fn raft_routes(raft: Raft, contact: Arc<LeaderContact>, stopping: Arc<AtomicBool>) -> Router {
    let append_route = post(
        move |State(raft): State<Raft>,
              headers: HeaderMap,
              Json(req): Json<AppendEntriesRequest<TypeConfig>>| {
            let contact = contact.clone();
            async move {
                let arrived = std::time::Instant::now();
                let leader_time_ms = headers
                    .get(SENT_AT_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i64>().ok());
                let leader_commit = req.leader_commit.map_or(0, |l| l.index);
                let answer = raft.append_entries(req).await;
                if matches!(
                    answer,
                    Ok(AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_))
                ) {
                    contact.record(leader_commit, arrived, leader_time_ms);
                }
                Json(answer).into_response()
            }
        },
    );
    Router::new()
        .route(APPEND_PATH, append_route)
        .route(VOTE_PATH, post(vote))
        .route(SNAPSHOT_PATH, post(snapshot))
        .route(ELECT_PATH, post(elect))
        .route(VERSION_PATH, post(version))
        // Answered by any node whose listener accepted the caller's handshake:
        // a rotation's proof that the node has taken its current step.
        .route(PROBE_PATH, get(|| async { "ok" }))
        .route_layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let stopping = stopping.load(Ordering::SeqCst);
                async move {
                    if stopping {
                        return (StatusCode::SERVICE_UNAVAILABLE, "this node is stopping")
                            .into_response();
                    }
                    next.run(request).await
                }
            },
        ))
        // Headroom over the largest request a peer sends (its own limit).
        .layer(DefaultBodyLimit::max(MAX_RPC_BYTES + 4 * 1024 * 1024))
        .with_state(raft)
}

async fn vote(State(raft): State<Raft>, Json(req): Json<VoteRequest<NodeId>>) -> Response {
    Json(raft.vote(req).await).into_response()
}

async fn snapshot(State(raft): State<Raft>, body: Bytes) -> Response {
    match decode_chunk(&body) {
        Ok(req) => Json(raft.install_snapshot(req).await).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

/// Asks this node to stand for election now: the leader calls it on an
/// up-to-date follower to hand leadership over (`RaftNode::transfer_leadership`).
async fn elect(State(raft): State<Raft>) -> Response {
    match raft.trigger().elect().await {
        Ok(()) => Json(()).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// The version this node runs: a leader handing over picks the caught-up
/// voter with the newest, so leadership never moves back to an older build
/// during a rolling upgrade.
async fn version() -> Response {
    Json(crate::VERSION).into_response()
}

/// A running cluster listener.
#[derive(Clone)]
pub struct ClusterListener {
    pub address: SocketAddr,
    handle: Handle<SocketAddr>,
    tls: RustlsConfig,
}

impl ClusterListener {
    /// Stops accepting and closes every open connection now.
    /// Stops accepting; requests in flight (a forwarded `sys/seal` whose
    /// answer is still on its way) get a moment to finish.
    pub fn shutdown(&self) {
        self.handle
            .graceful_shutdown(Some(std::time::Duration::from_secs(2)));
    }

    /// New handshakes use `tls` from now on (certificate rotation).
    pub fn reload_tls(&self, tls: &ClusterTls) -> Result<(), ClusterError> {
        self.tls.reload_from_config(Arc::new(tls.server_config()?));
        Ok(())
    }
}

/// Serves `app` with mutual TLS on an already bound listener; returns once
/// it is accepting.
pub async fn serve(
    listener: std::net::TcpListener,
    tls: &ClusterTls,
    app: Router,
) -> Result<ClusterListener, ClusterError> {
    let address = listener
        .local_addr()
        .map_err(|e| ClusterError::Io(format!("cluster listener address: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| ClusterError::Io(format!("cluster listener {address}: {e}")))?;
    let config = RustlsConfig::from_config(Arc::new(tls.server_config()?));
    let handle: Handle<SocketAddr> = Handle::new();
    // TCP_NODELAY: an append's answer must not wait for the leader's delayed ACK of the
    // segment before it (Nagle's algorithm).
    let acceptor = RustlsAcceptor::new(config.clone()).acceptor(NoDelayAcceptor::new());
    let server = axum_server::from_tcp_rustls(listener, config.clone())
        .map_err(|e| ClusterError::Io(format!("cluster listener {address}: {e}")))?
        .acceptor(acceptor)
        .handle(handle.clone());
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move {
        if let Err(e) = server.serve(service).await {
            tracing::error!(%address, error = %e, "cluster listener stopped");
        }
    });
    handle.listening().await;
    Ok(ClusterListener {
        address,
        handle,
        tls: config,
    })
}
