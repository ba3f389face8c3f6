//! Reads served by standbys, and Vault's consistency contract for them.
//!
//! A standby builds the services of an unsealed node (router, policies, token store, audit
//! devices) from its own replica, read-only ([`Core::build_services`] with `read_only`), and
//! serves a request itself only when all of these hold:
//!
//! - the request is a pure read this module knows ([`pure_read`]: KV v1/v2 reads and lists,
//!   policy reads, `sys/mounts`, `sys/auth`, capabilities, token lookups); anything else,
//!   and anything whose handling turns out to write, goes to the active node;
//! - its token exists here and has no use limit (uses are counted on the active node); an
//!   unknown token is forwarded too, since it may have been created a moment ago. Expiry (and
//!   the TTL a lookup reports) is judged by the active node's clock as the leader's last
//!   append carried it, advanced by this node's monotonic clock (`raft/follower_reads.rs`):
//!   a standby whose wall clock jumped neither refuses a live token nor accepts an expired
//!   one;
//! - the node heard from the leader within `standby_read_max_staleness` (an append or
//!   heartbeat it accepted: `raft/follower_reads.rs`) and has applied everything that leader
//!   told it was committed; otherwise it forwards, and without an active node it answers as
//!   any standby without one does;
//! - a request carrying `X-Vault-Index` waits (at most `standby_read_index_wait`) until this
//!   node has applied that index; if it does not, `X-Vault-Inconsistent: forward-active-node`
//!   forwards it and anything else is answered 412, as Vault Enterprise and OpenBao do.
//!
//! Every answer a node gives carries `X-Vault-Index` (OpenBao returns it on every response,
//! Vault on writes): base64 of `<cluster id>:<raft index>:<tag>`, the tag an HMAC-SHA256 under a
//! key kept behind the barrier (`core/index-hmac-key`), so a client cannot forge an index
//! (to make a node wait for one that never comes). An index of another cluster id is ignored:
//! a client keeps its last index across a restore of another cluster's snapshot, after which
//! the cluster id and key are the snapshot's.
//!
//! Caches: the services are rebuilt when the state machine applied a change to what they keep
//! in memory (`SledStore::service_changes`: mount and audit tables, policies, salts, or a
//! restored snapshot); token entries are not cached, so a revoked token is refused here as
//! soon as its revocation is applied.

use std::sync::Arc;
use std::time::Instant;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::mounts::{Mount, Table};
use super::{Core, Role, Unsealed};
use crate::error::{Error, Result};
use crate::logical::{Operation, Request, Response};
use crate::physical::StorageError;

/// Barrier path of the key that signs `X-Vault-Index` values.
const INDEX_KEY: &str = "core/index-hmac-key";
/// Bytes of HMAC kept in an index.
const TAG_BYTES: usize = 16;

/// What a standby does with a request it was asked to serve itself.
pub enum StandbyRead {
    /// Answered here (a 412 included).
    Served(Box<Result<Response>>),
    /// The active node must answer it.
    Forward,
}

/// The standby's services and the change count they were built at.
pub(super) type StandbyServices = Option<(u64, Arc<Unsealed>)>;

impl Core {
    /// The key signing `X-Vault-Index` values: created by the active node on first use, read
    /// (never created) by a standby.
    pub(super) async fn index_key(&self, read_only: bool) -> Result<Zeroizing<Vec<u8>>> {
        if let Some(key) = self.view("").get(INDEX_KEY).await? {
            return Ok(Zeroizing::new(key));
        }
        if read_only {
            return Err(Error::ForwardToActive);
        }
        let mut key = Zeroizing::new(vec![0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut key);
        self.view("").put(INDEX_KEY, key.to_vec()).await?;
        Ok(key)
    }

    /// Whether this node may try to serve a request itself instead of forwarding it: a
    /// standby with standby reads on, and a client that did not ask for the active node
    /// (Vault's `X-Vault-Forward: active-node`).
    pub fn may_serve_standby_reads(&self, forward_header: Option<&str>) -> bool {
        self.config.standby_reads
            && self.ha.is_some()
            && self.role() == Role::Standby
            && forward_header != Some("active-node")
    }

    /// The `X-Vault-Index` of this node's state now, for a response.
    pub async fn index_header(&self) -> Option<String> {
        let ha = self.ha.as_ref()?;
        let node = ha.running().await?;
        let services = match self.role() {
            Role::Active => self.state.read().expect("state lock").clone()?,
            Role::Standby => self.cached_standby_services()?,
            Role::Sealed => return None,
        };
        Some(encode_index(
            &services.index_key,
            &services.cluster.id,
            node.applied_index(),
        ))
    }

    /// On the active node: waits until a request's `X-Vault-Index` is applied here (it
    /// normally is: the active node applied everything it ever acknowledged).
    pub async fn await_index(&self, header: Option<&str>) -> Result<()> {
        let (Some(header), Some(ha)) = (header, &self.ha) else {
            return Ok(());
        };
        let u = self.unsealed()?;
        let index = decode_index(&u.index_key, &u.cluster.id, header)?;
        let Some(node) = ha.running().await else {
            return Err(Error::NoActiveNode);
        };
        if node.wait_applied(index, self.config.index_wait).await {
            Ok(())
        } else {
            Err(not_applied(index, node.applied_index()))
        }
    }

    /// Serves `req` on a standby from its own replica, or says it must be forwarded.
    pub async fn handle_standby_read(
        self: &Arc<Self>,
        mut req: Request,
        index: Option<&str>,
        inconsistent: Option<&str>,
    ) -> StandbyRead {
        let Some(ha) = &self.ha else {
            return StandbyRead::Forward;
        };
        let Some(node) = ha.running().await else {
            return StandbyRead::Forward;
        };
        if self.role() != Role::Standby {
            return StandbyRead::Forward;
        }
        // Fresh enough: an accepted contact from the leader within the bound, and everything
        // that leader said was committed applied here.
        let bound = self
            .config
            .standby_read_max_staleness
            .unwrap_or(node.timing().election_timeout_max);
        let Some(contact) = node.leader_contact() else {
            return StandbyRead::Forward;
        };
        // Token expiry is judged by the active node's clock, which its appends carry; a
        // leader that does not send it (an older version, mid-upgrade) gets everything.
        if contact.leader_time_ms.is_none() {
            metrics::counter!("keyhold.standby_read.forwarded", "reason" => "clock").increment(1);
            return StandbyRead::Forward;
        }
        let age = contact.at.elapsed();
        if age > bound {
            metrics::counter!("keyhold.standby_read.forwarded", "reason" => "stale").increment(1);
            return StandbyRead::Forward;
        }
        if !node
            .wait_applied(contact.leader_commit, bound.saturating_sub(age))
            .await
        {
            metrics::counter!("keyhold.standby_read.forwarded", "reason" => "behind").increment(1);
            return StandbyRead::Forward;
        }
        let Some(mut u) = self.standby_services_or_none().await else {
            return StandbyRead::Forward;
        };
        if let Some(header) = index {
            let wanted = match decode_index(&u.index_key, &u.cluster.id, header) {
                Ok(index) => index,
                Err(e) => return StandbyRead::Served(Box::new(Err(e))),
            };
            if !node.wait_applied(wanted, self.config.index_wait).await {
                if inconsistent == Some("forward-active-node") {
                    metrics::counter!("keyhold.standby_read.forwarded", "reason" => "index")
                        .increment(1);
                    return StandbyRead::Forward;
                }
                return StandbyRead::Served(Box::new(Err(not_applied(
                    wanted,
                    node.applied_index(),
                ))));
            }
            // What was applied while this request waited may have changed the services (a
            // policy deleted, a mount disabled): take them as they are now.
            let Some(now) = self.standby_services_or_none().await else {
                return StandbyRead::Forward;
            };
            u = now;
        }
        // A token this node knows, without a use limit; an unknown one may be newer than this
        // replica, and the active node decides.
        let Some(token) = req.client_token.clone().filter(|t| !t.is_empty()) else {
            return StandbyRead::Forward;
        };
        match u.tokens.lookup(&token).await {
            Ok(Some(entry)) if entry.num_uses == 0 => {}
            Ok(_) | Err(Error::ForwardToActive) => return StandbyRead::Forward,
            Err(e) => return StandbyRead::Served(Box::new(Err(e))),
        }
        let Some((mount, rel)) = u.route(&req.path) else {
            return StandbyRead::Forward;
        };
        if !pure_read(&mount, &rel, req.operation) {
            return StandbyRead::Forward;
        }
        let started = Instant::now();
        let result = self.handle_unsealed(&u, &mut req).await;
        match result {
            // Something on the way wanted to write: nothing was written here (a follower's
            // backend refuses writes), so the active node can take the request whole.
            Err(Error::ForwardToActive | Error::Storage(StorageError::NotLeader { .. })) => {
                tracing::debug!(path = %req.path, "a standby read would write: forwarding");
                metrics::counter!("keyhold.standby_read.forwarded", "reason" => "write")
                    .increment(1);
                StandbyRead::Forward
            }
            result => {
                metrics::counter!("keyhold.standby_read.served").increment(1);
                metrics::histogram!("vault.core.handle_request")
                    .record(started.elapsed().as_secs_f64() * 1000.0);
                StandbyRead::Served(Box::new(result))
            }
        }
    }

    /// After forwarding a request: waits, at most `standby_read_index_wait`, until this standby
    /// has applied the index the active node answered with. Without it a client that does not
    /// send `X-Vault-Index` (hvac, curl) could write through this node and read the old value
    /// back from it a moment later. An index this node cannot decode is not waited for.
    pub async fn catch_up_to(self: &Arc<Self>, header: &str) {
        let Some(ha) = &self.ha else { return };
        let Ok(u) = self.standby_services().await else {
            return;
        };
        let Ok(index) = decode_index(&u.index_key, &u.cluster.id, header) else {
            return;
        };
        let Some(node) = ha.running().await else {
            return;
        };
        if !node.wait_applied(index, self.config.index_wait).await {
            metrics::counter!("keyhold.standby_read.catch_up_timeouts").increment(1);
            tracing::debug!(
                index,
                applied = node.applied_index(),
                "a forwarded answer returned before this standby applied its index"
            );
        }
    }

    /// The standby's services as last built, if they still match the replica.
    fn cached_standby_services(&self) -> Option<Arc<Unsealed>> {
        let changes = self.ha.as_ref()?.store().service_changes();
        match &*self.standby_services.lock().expect("standby services lock") {
            Some((built_at, u)) if *built_at == changes => Some(u.clone()),
            _ => None,
        }
    }

    /// [`Self::standby_services`], or `None` (logged) when the request must be forwarded.
    async fn standby_services_or_none(self: &Arc<Self>) -> Option<Arc<Unsealed>> {
        self.standby_services()
            .await
            .inspect_err(|e| {
                tracing::debug!(error = %e, "standby read services unavailable: forwarding");
            })
            .ok()
    }

    /// The standby's services, rebuilt when the replica changed what they hold.
    async fn standby_services(self: &Arc<Self>) -> Result<Arc<Unsealed>> {
        if let Some(u) = self.cached_standby_services() {
            return Ok(u);
        }
        let ha = self.ha.as_ref().ok_or(Error::ForwardToActive)?;
        let _building = self.standby_build.lock().await;
        if let Some(u) = self.cached_standby_services() {
            return Ok(u);
        }
        // Counted before the build reads storage: a change applied meanwhile moves the count
        // past this one, and the next request builds again.
        let changes = ha.store().service_changes();
        let built = Arc::new(self.build_services(true).await?);
        if self.role() != Role::Standby {
            return Err(Error::ForwardToActive);
        }
        *self.standby_services.lock().expect("standby services lock") =
            Some((changes, built.clone()));
        tracing::debug!(changes, "standby read services built");
        Ok(built)
    }

    /// SIGHUP: reopens the audit files of the services this node has: the active node's, and
    /// the read-only ones a standby audits its reads with (otherwise a standby would go on
    /// writing to a rotated, or removed, file).
    pub async fn reopen_audit_files(&self) {
        if let Ok(u) = self.unsealed() {
            u.audit.reopen().await;
        }
        let standby = self
            .standby_services
            .lock()
            .expect("standby services lock")
            .as_ref()
            .map(|(_, u)| u.clone());
        if let Some(u) = standby {
            u.audit.reopen().await;
        }
    }

    /// Drops the standby's services (sealed, or now active).
    pub(super) fn drop_standby_services(&self) {
        self.standby_services
            .lock()
            .expect("standby services lock")
            .take();
    }
}

/// The answer when an index is not applied in time: Vault's 412, saying what to do.
fn not_applied(wanted: u64, applied: u64) -> Error {
    Error::IndexNotApplied(format!(
        "this node has applied index {applied}, not yet the requested X-Vault-Index ({wanted}); \
         retry, or send X-Vault-Inconsistent: forward-active-node to have it forwarded"
    ))
}

/// Whether a request to `rel` in `mount` only reads: what a standby may serve.
fn pure_read(mount: &Mount, rel: &str, op: Operation) -> bool {
    use Operation::{List, Read, Update};
    match (mount.entry.table, mount.entry.kind.as_str()) {
        (Table::Secret, "kv") => {
            let v2 = mount.entry.options.get("version").map(String::as_str) == Some("2");
            match (v2, op) {
                (false, Read | List) => true,
                (true, Read) => {
                    rel == "config"
                        || ["data/", "metadata/", "subkeys/"]
                            .iter()
                            .any(|p| rel.starts_with(p))
                }
                (true, List) => rel == "metadata" || rel.starts_with("metadata/"),
                _ => false,
            }
        }
        (Table::Secret, "system") => match op {
            Read | List => {
                matches!(rel, "policy" | "policies/acl" | "mounts" | "auth")
                    || rel.starts_with("policy/")
                    || rel.starts_with("policies/acl/")
            }
            Update => matches!(rel, "capabilities-self" | "capabilities"),
            _ => false,
        },
        (Table::Auth, "token") => {
            matches!(op, Read | Update) && matches!(rel, "lookup-self" | "lookup")
        }
        _ => false,
    }
}

fn tag(key: &[u8], payload: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(payload.as_bytes());
    mac
}

/// `X-Vault-Index` for `index` of cluster `cluster_id`.
fn encode_index(key: &[u8], cluster_id: &str, index: u64) -> String {
    use base64::Engine;
    let payload = format!("{cluster_id}:{index}");
    let tag = tag(key, &payload).finalize().into_bytes();
    base64::engine::general_purpose::STANDARD
        .encode(format!("{payload}:{}", hex::encode(&tag[..TAG_BYTES])))
}

/// The Raft index an `X-Vault-Index` names; 400 when it is malformed or its tag does not verify.
/// An index of another cluster (a client's state from before a restore of another cluster's
/// snapshot, or from another cluster altogether) names nothing here: it is ignored (0, which
/// every node has applied), as a request without the header would be.
fn decode_index(key: &[u8], cluster_id: &str, header: &str) -> Result<u64> {
    use base64::Engine;
    let invalid = || {
        Error::invalid(
            "X-Vault-Index is not an index this cluster issued; send back the value of a \
             response's X-Vault-Index header unchanged",
        )
    };
    let text = base64::engine::general_purpose::STANDARD
        .decode(header.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(invalid)?;
    let (payload, tag_hex) = text.rsplit_once(':').ok_or_else(invalid)?;
    let given = hex::decode(tag_hex).map_err(|_| invalid())?;
    if given.len() != TAG_BYTES {
        return Err(invalid());
    }
    let (cluster, index) = payload.rsplit_once(':').ok_or_else(invalid)?;
    if cluster != cluster_id {
        tracing::debug!("an X-Vault-Index of another cluster was ignored");
        metrics::counter!("keyhold.standby_read.foreign_index").increment(1);
        return Ok(0);
    }
    tag(key, payload)
        .verify_truncated_left(&given)
        .map_err(|_| invalid())?;
    index.parse().map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_round_trip_and_refuse_forgeries() {
        let key = b"0123456789abcdef0123456789abcdef";
        let header = encode_index(key, "cluster-a", 42);
        assert_eq!(decode_index(key, "cluster-a", &header).unwrap(), 42);
        // Another cluster's index is ignored (0: nothing to wait for).
        assert_eq!(decode_index(key, "cluster-b", &header).unwrap(), 0);
        // Another key, a changed index, garbage: all 400.
        let forged = {
            use base64::Engine;
            let text = String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(&header)
                    .unwrap(),
            )
            .unwrap();
            base64::engine::general_purpose::STANDARD.encode(text.replace(":42:", ":4200:"))
        };
        for (key, cluster, value) in [
            (&b"another key"[..], "cluster-a", header.as_str()),
            (&key[..], "cluster-a", forged.as_str()),
            (&key[..], "cluster-a", "not base64!"),
            (&key[..], "cluster-a", ""),
        ] {
            let err = decode_index(key, cluster, value).unwrap_err();
            assert_eq!(err.status(), 400, "{value}");
        }
    }
}
