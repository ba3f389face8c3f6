//! The mount tables (`sys/mounts`, `sys/auth`) and the router that picks the
//! mount serving a path by longest prefix.
//!
//! Tables are persisted behind the barrier at `core/mounts` and `core/auth`.
//! Each mount owns a storage view (`logical/<uuid>/` or `auth/<uuid>/`) so
//! disabling it can clear exactly its data.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::logical::{LogicalBackend, MountInfo, StorageView};

pub const MOUNTS_KEY: &str = "core/mounts";
pub const AUTH_KEY: &str = "core/auth";

/// Which table a mount lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    Secret,
    Auth,
}

/// Tunables of a mount (`config` in `sys/mounts`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MountConfig {
    /// Seconds; 0 = the system default.
    #[serde(default)]
    pub default_lease_ttl: u64,
    #[serde(default)]
    pub max_lease_ttl: u64,
    #[serde(default)]
    pub force_no_cache: bool,
    #[serde(default)]
    pub audit_non_hmac_request_keys: Vec<String>,
    #[serde(default)]
    pub audit_non_hmac_response_keys: Vec<String>,
    #[serde(default)]
    pub listing_visibility: String,
    #[serde(default)]
    pub token_type: String,
    /// Auth mounts: user lockout settings (`user_lockout_config` tune).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_lockout_config: Option<super::lockout::LockoutTune>,
}

/// One row of a mount table, as persisted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MountEntry {
    /// Path relative to its table, with trailing slash: `secret/`, `userpass/`.
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub description: String,
    pub accessor: String,
    pub uuid: String,
    #[serde(default)]
    pub config: MountConfig,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    #[serde(default)]
    pub local: bool,
    #[serde(default)]
    pub seal_wrap: bool,
    pub table: Table,
}

impl MountEntry {
    pub fn new(table: Table, path: &str, kind: &str, description: &str) -> Self {
        let uuid = uuid::Uuid::new_v4().to_string();
        let accessor_kind = match table {
            Table::Secret => kind.to_string(),
            Table::Auth => format!("auth_{kind}"),
        };
        MountEntry {
            path: normalize_mount_path(path),
            kind: kind.to_string(),
            description: description.to_string(),
            accessor: format!("{accessor_kind}_{}", &uuid.replace('-', "")[..8]),
            uuid,
            config: MountConfig::default(),
            options: BTreeMap::new(),
            local: false,
            seal_wrap: false,
            table,
        }
    }

    /// The path requests use: `secret/` or `auth/userpass/`.
    pub fn route_path(&self) -> String {
        match self.table {
            Table::Secret => self.path.clone(),
            Table::Auth => format!("auth/{}", self.path),
        }
    }

    /// Where the mount keeps its data, under the barrier.
    pub fn view_prefix(&self) -> String {
        match (self.table, self.kind.as_str()) {
            // The system backend and token store keep their data under
            // `sys/`, as Vault does, so policies and tokens survive remounts.
            (_, "system") => "sys/".to_string(),
            (_, "token") => "sys/token/".to_string(),
            (Table::Secret, _) => format!("logical/{}/", self.uuid),
            (Table::Auth, _) => format!("auth/{}/", self.uuid),
        }
    }

    pub fn info(&self, system_default: Duration, system_max: Duration) -> MountInfo {
        let default = match self.config.default_lease_ttl {
            0 => system_default,
            s => Duration::from_secs(s),
        };
        let max = match self.config.max_lease_ttl {
            0 => system_max,
            s => Duration::from_secs(s),
        };
        MountInfo {
            path: self.route_path(),
            kind: self.kind.clone(),
            accessor: self.accessor.clone(),
            uuid: self.uuid.clone(),
            options: self.options.clone(),
            default_lease_ttl: default,
            max_lease_ttl: max,
        }
    }

    /// The JSON Vault shows for this mount in `sys/mounts` / `sys/auth`.
    pub fn to_json(&self) -> Value {
        let mut config = json!({
            "default_lease_ttl": self.config.default_lease_ttl,
            "max_lease_ttl": self.config.max_lease_ttl,
            "force_no_cache": self.config.force_no_cache,
        });
        if self.table == Table::Auth {
            let token_type = if self.config.token_type.is_empty() {
                "default-service"
            } else {
                &self.config.token_type
            };
            config["token_type"] = json!(token_type);
        }
        if !self.config.listing_visibility.is_empty() {
            config["listing_visibility"] = json!(self.config.listing_visibility);
        }
        if !self.config.audit_non_hmac_request_keys.is_empty() {
            config["audit_non_hmac_request_keys"] = json!(self.config.audit_non_hmac_request_keys);
        }
        if !self.config.audit_non_hmac_response_keys.is_empty() {
            config["audit_non_hmac_response_keys"] =
                json!(self.config.audit_non_hmac_response_keys);
        }
        let options = if self.options.is_empty() {
            Value::Null
        } else {
            json!(self.options)
        };
        json!({
            "type": self.kind,
            "description": self.description,
            "accessor": self.accessor,
            "uuid": self.uuid,
            "local": self.local,
            "seal_wrap": self.seal_wrap,
            "external_entropy_access": false,
            "options": options,
            "plugin_version": "",
            "running_plugin_version": format!("v{}+builtin.keyhold", crate::VERSION),
            "running_sha256": "",
            "deprecation_status": "supported",
            "config": config,
        })
    }
}

/// `foo` -> `foo/`, `/foo/` -> `foo/`.
pub fn normalize_mount_path(path: &str) -> String {
    let trimmed = path.trim_matches('/');
    format!("{trimmed}/")
}

/// A mounted backend, ready to serve.
#[derive(Clone)]
pub struct Mount {
    pub entry: MountEntry,
    pub backend: Arc<dyn LogicalBackend>,
    pub view: StorageView,
}

/// The routing table: every mount of both tables, matched by longest prefix.
#[derive(Clone, Default)]
pub struct Router {
    mounts: BTreeMap<String, Mount>,
}

/// Paths that may never be mounted over.
const RESERVED: &[&str] = &["sys/", "auth/", "cubbyhole/", "identity/"];

impl Router {
    pub fn insert(&mut self, mount: Mount) -> Result<()> {
        let route = mount.entry.route_path();
        if let Some(existing) = self.conflict(&route) {
            return Err(Error::invalid(format!(
                "path is already in use at {existing}"
            )));
        }
        self.mounts.insert(route, mount);
        Ok(())
    }

    /// A mount at `route`, or one that would shadow or be shadowed by it.
    fn conflict(&self, route: &str) -> Option<String> {
        self.mounts
            .keys()
            .find(|existing| route.starts_with(existing.as_str()) || existing.starts_with(route))
            .cloned()
    }

    pub fn check_mountable(&self, table: Table, path: &str) -> Result<()> {
        let path = normalize_mount_path(path);
        if path == "/" {
            return Err(Error::invalid("mount path cannot be empty"));
        }
        if path.contains("..") {
            return Err(Error::invalid("mount path cannot contain '..'"));
        }
        let route = match table {
            Table::Secret => {
                if RESERVED.iter().any(|r| path.starts_with(r)) {
                    return Err(Error::invalid(format!(
                        "cannot mount at {path:?}: the path is reserved"
                    )));
                }
                path
            }
            Table::Auth => format!("auth/{path}"),
        };
        match self.conflict(&route) {
            Some(existing) => Err(Error::invalid(format!(
                "path is already in use at {existing}"
            ))),
            None => Ok(()),
        }
    }

    pub fn remove(&mut self, route: &str) -> Option<Mount> {
        self.mounts.remove(route)
    }

    pub fn get(&self, route: &str) -> Option<&Mount> {
        self.mounts.get(route)
    }

    /// The mount serving `path` and the path relative to it. `secret` (no
    /// trailing slash) routes to `secret/` with an empty relative path.
    pub fn route(&self, path: &str) -> Option<(&Mount, String)> {
        let with_slash = format!("{path}/");
        self.mounts
            .iter()
            .rev()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()) || with_slash == **prefix)
            .map(|(prefix, mount)| (mount, path.get(prefix.len()..).unwrap_or("").to_string()))
    }

    pub fn entries(&self, table: Table) -> Vec<MountEntry> {
        self.mounts
            .values()
            .filter(|m| m.entry.table == table)
            .map(|m| m.entry.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logical::{BackendRequest, Response};
    use async_trait::async_trait;

    struct Nop;

    #[async_trait]
    impl LogicalBackend for Nop {
        async fn handle(&self, _req: BackendRequest<'_>) -> Result<Response> {
            Ok(Response::empty())
        }
    }

    fn router(paths: &[(Table, &str)]) -> Router {
        let mut r = Router::default();
        for (table, path) in paths {
            let entry = MountEntry::new(*table, path, "kv", "");
            r.insert(Mount {
                entry,
                backend: Arc::new(Nop),
                view: StorageView::inmem(),
            })
            .unwrap();
        }
        r
    }

    #[test]
    fn longest_prefix_routing() {
        let r = router(&[
            (Table::Secret, "secret"),
            (Table::Secret, "team/a"),
            (Table::Auth, "userpass"),
        ]);
        let cases = [
            ("secret/data/x", Some(("secret/", "data/x"))),
            ("secret", Some(("secret/", ""))),
            ("secret/", Some(("secret/", ""))),
            ("team/a/foo", Some(("team/a/", "foo"))),
            ("team/b/foo", None),
            (
                "auth/userpass/login/bob",
                Some(("auth/userpass/", "login/bob")),
            ),
            ("secretive/x", None),
        ];
        for (path, want) in cases {
            let got = r.route(path).map(|(m, rel)| (m.entry.route_path(), rel));
            assert_eq!(
                got,
                want.map(|(a, b)| (a.to_string(), b.to_string())),
                "{path}"
            );
        }
    }

    #[test]
    fn overlapping_and_reserved_mounts_are_refused() {
        let r = router(&[(Table::Secret, "team/a")]);
        for (table, path) in [
            (Table::Secret, "team/a/b"),
            (Table::Secret, "team"),
            (Table::Secret, "sys"),
            (Table::Secret, ""),
        ] {
            assert!(r.check_mountable(table, path).is_err(), "{path}");
        }
        assert!(r.check_mountable(Table::Secret, "team/b").is_ok());
        assert!(r.check_mountable(Table::Auth, "team/a").is_ok());
    }
}
