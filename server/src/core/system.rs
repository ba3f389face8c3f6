//! The system backend (`sys/`): mount and auth tables, policies,
//! capabilities, audit devices, keyring rotation, metrics and the UI's mount
//! lookups. The raw handlers (`sys/init`, `sys/unseal`, `sys/health`, ...)
//! live in `http::sys_raw` because they run without a token or while sealed.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use super::mounts::{normalize_mount_path, Mount, MountEntry, Table};
use super::{AuditTableEntry, Core, Unsealed, AUDIT_TABLE_KEY};
use crate::error::{Error, Result};
use crate::logical::{
    parse_duration_field, BackendRequest, LogicalBackend, Operation, Request, Response,
};

/// Stands in the router for `sys/`; the core serves those paths itself
/// because they need the core's state.
pub(super) struct Placeholder;

#[async_trait]
impl LogicalBackend for Placeholder {
    async fn handle(&self, req: BackendRequest<'_>) -> Result<Response> {
        Err(Error::UnsupportedPath(format!("sys/{}", req.path)))
    }
}

/// `sys/` paths that need no token.
pub(super) fn is_unauthenticated(rel: &str) -> bool {
    rel == "internal/ui/mounts" || rel.starts_with("internal/ui/mounts/")
}

/// Root-protected `sys/` paths: the caller needs `sudo` as well.
pub(super) fn needs_sudo(rel: &str) -> bool {
    const EXACT: &[&str] = &[
        "audit",
        "rotate",
        "remount",
        "seal",
        "step-down",
        "raw",
        "storage/raft/cluster-tls/rotate",
    ];
    const PREFIX: &[&str] = &[
        "audit/",
        "auth/",
        "raw/",
        "config/",
        "plugins/catalog/",
        "leases/revoke-prefix/",
        "leases/revoke-force/",
        "leases/lookup/",
    ];
    EXACT.contains(&rel) || PREFIX.iter().any(|p| rel.starts_with(p))
}

/// Existence check for `sys/` writes, so a policy can grant `create` alone.
pub(super) async fn exists(core: &Core, u: &Unsealed, rel: &str) -> Option<bool> {
    if let Some(name) = rel
        .strip_prefix("policies/acl/")
        .or_else(|| rel.strip_prefix("policy/"))
    {
        return Some(matches!(u.policies.get(name).await, Ok(Some(_))));
    }
    let router = u.router.read().expect("router lock");
    if let Some(path) = rel
        .strip_prefix("mounts/")
        .filter(|p| !p.ends_with("/tune"))
    {
        return Some(router.get(&normalize_mount_path(path)).is_some());
    }
    if let Some(path) = rel.strip_prefix("auth/").filter(|p| !p.ends_with("/tune")) {
        return Some(
            router
                .get(&format!("auth/{}", normalize_mount_path(path)))
                .is_some(),
        );
    }
    let _ = core;
    None
}

fn injected(value: Value) -> Response {
    Response::data(value)
}

fn str_field(req: &Request, key: &str) -> Option<String> {
    req.get_str(key).filter(|s| !s.is_empty())
}

fn string_map(value: Option<&Value>) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    match value {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (k, v) in map {
                let s = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return Err(Error::invalid(format!("option {k:?} must be a string"))),
                };
                out.insert(k.clone(), s);
            }
        }
        Some(_) => return Err(Error::invalid("options must be a JSON object")),
    }
    Ok(out)
}

impl Core {
    pub(super) async fn system(&self, u: &Unsealed, req: &Request, rel: &str) -> Result<Response> {
        let op = req.operation;
        let write = matches!(op, Operation::Create | Operation::Update);
        match rel {
            "mounts" if op == Operation::Read => Ok(injected(self.mounts_json(u, Table::Secret))),
            "auth" if op == Operation::Read => Ok(injected(self.mounts_json(u, Table::Auth))),
            "audit" if op == Operation::Read => Ok(injected(audit_json(u))),
            "policy" if matches!(op, Operation::Read | Operation::List) => {
                let names = u.policies.list().await?;
                Ok(injected(json!({ "policies": names, "keys": names })))
            }
            "policies/acl" | "policies/acl/" if matches!(op, Operation::List | Operation::Read) => {
                // Vault lists `root` here too.
                let names = u.policies.list().await?;
                Response::list(names)
            }
            "capabilities-self" if write => {
                self.capabilities(u, req, req.client_token.clone()).await
            }
            "capabilities" if write => self.capabilities(u, req, str_field(req, "token")).await,
            "capabilities-accessor" if write => {
                let accessor =
                    str_field(req, "accessor").ok_or_else(|| Error::invalid("missing accessor"))?;
                let entry = u
                    .tokens
                    .lookup_accessor(&accessor)
                    .await?
                    .ok_or_else(|| Error::invalid("invalid accessor"))?;
                self.capabilities(u, req, Some(entry.id)).await
            }
            "rotate" | "rotate/keyring" if write => {
                let status = self.rotate().await?;
                tracing::info!(term = status.term, "keyring rotated");
                Ok(Response::empty())
            }
            "key-status" | "rotate/keyring/status" if op == Operation::Read => {
                Ok(injected(super::key_status_json(&self.key_status()?)))
            }
            "metrics" if op == Operation::Read => self.metrics_response(req),
            "storage/raft/snapshot" if op == Operation::Read => Ok(Response {
                raw: Some(crate::logical::RawBody {
                    content_type: "application/octet-stream".into(),
                    body: self.raft_snapshot_save().await?,
                }),
                ..Default::default()
            }),
            "storage/raft/snapshot" | "storage/raft/snapshot-force" if write => {
                let body = req.raw_body.clone().unwrap_or_default();
                self.raft_snapshot_restore(body, rel.ends_with("-force"))
                    .await?;
                Ok(Response::empty())
            }
            "ha-status" if op == Operation::Read => Ok(Response::data(self.ha_status().await?)),
            "storage/raft/configuration" if op == Operation::Read => {
                Ok(Response::data(self.raft_configuration().await?))
            }
            "storage/raft/remove-peer" if write => {
                let id = str_field(req, "server_id")
                    .ok_or_else(|| Error::invalid("server_id is required"))?;
                self.raft_remove_peer(&id).await?;
                Ok(Response::empty())
            }
            "storage/raft/cluster-tls" if op == Operation::Read => {
                Ok(Response::data(self.cluster_tls_status().await?))
            }
            "storage/raft/cluster-tls/rotate" if write => {
                Ok(Response::data(self.rotate_cluster_tls().await?))
            }
            "storage/raft/autopilot/state" if op == Operation::Read => {
                Ok(Response::data(self.autopilot_state().await?))
            }
            "storage/raft/autopilot/configuration" => match op {
                Operation::Read => Ok(Response::data(
                    serde_json::to_value(self.autopilot_config().await?)
                        .map_err(|e| Error::internal(e.to_string()))?,
                )),
                Operation::Create | Operation::Update => {
                    self.set_autopilot_config(&req.data).await?;
                    Ok(Response::empty())
                }
                _ => Err(Error::UnsupportedOperation),
            },
            "locked-users" if matches!(op, Operation::Read | Operation::List) => {
                Ok(Response::data(self.locked_users_json(u)))
            }
            "internal/ui/mounts" if op == Operation::Read => {
                let acl = self.ui_acl(u, req).await?;
                Ok(Response::data(json!({
                    "secret": self.visible_mounts_json(u, Table::Secret, acl.as_ref()),
                    "auth": self.visible_mounts_json(u, Table::Auth, acl.as_ref()),
                })))
            }
            _ => self.system_prefixed(u, req, rel).await,
        }
    }

    async fn system_prefixed(&self, u: &Unsealed, req: &Request, rel: &str) -> Result<Response> {
        let op = req.operation;
        let write = matches!(op, Operation::Create | Operation::Update);
        if let Some(rest) = rel.strip_prefix("mounts/") {
            if let Some(path) = rest.strip_suffix("/tune") {
                return self.tune(u, req, &normalize_mount_path(path)).await;
            }
            let path = normalize_mount_path(rest);
            return match op {
                Operation::Create | Operation::Update => {
                    self.enable_mount(u, req, Table::Secret, rest).await
                }
                Operation::Delete => self.disable_mount(u, Table::Secret, &path).await,
                Operation::Read => self.mount_json(u, &path).map(Response::data),
                _ => Err(Error::UnsupportedOperation),
            };
        }
        if let Some(rest) = rel.strip_prefix("auth/") {
            if let Some(path) = rest.strip_suffix("/tune") {
                return self
                    .tune(u, req, &format!("auth/{}", normalize_mount_path(path)))
                    .await;
            }
            let route = format!("auth/{}", normalize_mount_path(rest));
            return match op {
                Operation::Create | Operation::Update => {
                    self.enable_mount(u, req, Table::Auth, rest).await
                }
                Operation::Delete => self.disable_mount(u, Table::Auth, &route).await,
                Operation::Read => self.mount_json(u, &route).map(Response::data),
                _ => Err(Error::UnsupportedOperation),
            };
        }
        if let Some(name) = rel
            .strip_prefix("policies/acl/")
            .or_else(|| rel.strip_prefix("policy/"))
        {
            let legacy = rel.starts_with("policy/");
            return match op {
                Operation::Read => {
                    let policy = u.policies.get(name).await?.ok_or(Error::NotFound)?;
                    let field = if legacy { "rules" } else { "policy" };
                    let mut data = Map::new();
                    data.insert("name".into(), json!(policy.name));
                    data.insert(field.into(), json!(policy.raw));
                    Ok(if legacy {
                        injected(Value::Object(data))
                    } else {
                        Response::data(Value::Object(data))
                    })
                }
                Operation::Create | Operation::Update => {
                    let text = str_field(req, "policy")
                        .or_else(|| str_field(req, "rules"))
                        .ok_or_else(|| {
                            Error::invalid("'policy' parameter not supplied or empty")
                        })?;
                    let text = decode_maybe_base64(&text);
                    u.policies.set(name, &text).await?;
                    Ok(Response::empty())
                }
                Operation::Delete => {
                    u.policies.delete(name).await?;
                    Ok(Response::empty())
                }
                _ => Err(Error::UnsupportedOperation),
            };
        }
        if let Some(path) = rel.strip_prefix("audit/") {
            let path = normalize_mount_path(path);
            if let Some(declared) = self.config_audit_at(&path) {
                if write || op == Operation::Delete {
                    return Err(Error::invalid(format!(
                        "audit device {declared:?} is declared in the server config file ({}); it cannot be enabled, replaced or disabled through the API. Change the audit stanza there and restart the node",
                        self.config.config_source
                    )));
                }
            }
            return match op {
                Operation::Create | Operation::Update => self.enable_audit(u, req, &path).await,
                Operation::Delete => self.disable_audit(u, &path).await,
                _ => Err(Error::UnsupportedOperation),
            };
        }
        if let Some(path) = rel.strip_prefix("audit-hash/") {
            if !write {
                return Err(Error::UnsupportedOperation);
            }
            let input = req
                .get_str("input")
                .ok_or_else(|| Error::invalid("the \"input\" parameter is required"))?;
            let hash = u.audit.hash(&normalize_mount_path(path), &input).await?;
            return Ok(Response::data(json!({ "hash": hash })));
        }
        if let Some(rest) = rel.strip_prefix("locked-users/") {
            let Some((accessor, alias)) = rest.split_once("/unlock/") else {
                return Err(Error::UnsupportedPath(format!("sys/{rel}")));
            };
            if !write {
                return Err(Error::UnsupportedOperation);
            }
            let known = u
                .router
                .read()
                .expect("router lock")
                .entries(Table::Auth)
                .iter()
                .any(|e| e.accessor == accessor);
            if !known {
                return Err(Error::invalid(format!(
                    "no auth mount with accessor {accessor:?}"
                )));
            }
            u.lockout.unlock(accessor, alias);
            return Ok(Response::empty());
        }
        if let Some(path) = rel
            .strip_prefix("internal/ui/mounts/")
            .or_else(|| rel.strip_prefix("mounts-all/"))
        {
            if op != Operation::Read {
                return Err(Error::UnsupportedOperation);
            }
            let acl = self.ui_acl(u, req).await?;
            let Some((mount, _)) = u.route(path) else {
                // Without a token, whether a path is mounted is itself not told.
                if acl.is_none() {
                    return Err(Error::PermissionDenied);
                }
                return Err(Error::invalid(format!(
                    "Path {path:?} does not exist: no mount serves it"
                )));
            };
            if !mount_visible(&mount.entry, acl.as_ref()) {
                return Err(Error::PermissionDenied);
            }
            let mut data = mount.entry.to_json();
            data["path"] = json!(mount.entry.route_path().trim_start_matches("auth/"));
            return Ok(Response::data(data));
        }
        Err(Error::UnsupportedPath(format!("sys/{rel}")))
    }

    /// `sys/locked-users`, in Vault's shape (one namespace: root).
    fn locked_users_json(&self, u: &Unsealed) -> Value {
        let mounts = u.router.read().expect("router lock").entries(Table::Auth);
        let policy_of = |accessor: &str| {
            mounts
                .iter()
                .find(|e| e.accessor == accessor)
                .map(|e| self.lockout_policy(e))
                .unwrap_or_default()
        };
        let mut by_accessor: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for locked in u.lockout.locked(policy_of) {
            by_accessor
                .entry(locked.mount_accessor)
                .or_default()
                .push(locked.alias);
        }
        let total: usize = by_accessor.values().map(Vec::len).sum();
        let accessors: Vec<Value> = by_accessor
            .into_iter()
            .map(|(accessor, aliases)| {
                json!({"mount_accessor": accessor, "counts": aliases.len(), "alias_identifiers": aliases})
            })
            .collect();
        let by_namespace = if accessors.is_empty() {
            json!([])
        } else {
            json!([{"namespace_id": "root", "namespace_path": "", "counts": total, "mount_accessors": accessors}])
        };
        json!({"by_namespace": by_namespace, "total": total})
    }

    /// The ACL of the caller of `sys/internal/ui/mounts` (an unauthenticated path), or `None`
    /// when it sent no valid token.
    async fn ui_acl(&self, u: &Unsealed, req: &Request) -> Result<Option<crate::policy::Acl>> {
        match &req.auth {
            Some(auth) => Ok(Some(u.policies.acl(&auth.policies).await?)),
            None => Ok(None),
        }
    }

    /// The mounts `sys/internal/ui/mounts` shows, as Vault: without a token only those tuned
    /// `listing_visibility = "unauth"` (none by default); with one, also those its policies
    /// grant anything on.
    fn visible_mounts_json(
        &self,
        u: &Unsealed,
        table: Table,
        acl: Option<&crate::policy::Acl>,
    ) -> Value {
        let router = u.router.read().expect("router lock");
        let mut out = Map::new();
        for entry in router.entries(table) {
            if mount_visible(&entry, acl) {
                out.insert(entry.path.clone(), entry.to_json());
            }
        }
        Value::Object(out)
    }

    fn mounts_json(&self, u: &Unsealed, table: Table) -> Value {
        let router = u.router.read().expect("router lock");
        let mut out = Map::new();
        for entry in router.entries(table) {
            out.insert(entry.path.clone(), entry.to_json());
        }
        Value::Object(out)
    }

    fn mount_json(&self, u: &Unsealed, route: &str) -> Result<Value> {
        let router = u.router.read().expect("router lock");
        router
            .get(route)
            .map(|m| m.entry.to_json())
            .ok_or(Error::NotFound)
    }

    async fn enable_mount(
        &self,
        u: &Unsealed,
        req: &Request,
        table: Table,
        path: &str,
    ) -> Result<Response> {
        let mut kind = str_field(req, "type").ok_or_else(|| {
            Error::invalid(
                "the \"type\" parameter is required (e.g. kv, kv-v2, transit, userpass, approle)",
            )
        })?;
        let mut options = string_map(req.data.get("options"))?;
        if kind == "kv-v2" {
            kind = "kv".into();
            options.insert("version".into(), "2".into());
        }
        match (table, kind.as_str()) {
            (Table::Secret, "kv") => {
                let version = options
                    .entry("version".into())
                    .or_insert_with(|| "1".into());
                if version != "1" && version != "2" {
                    return Err(Error::invalid(format!(
                        "invalid kv version {version:?}: use 1 or 2"
                    )));
                }
            }
            (Table::Secret, "transit") | (Table::Auth, "userpass" | "approle") => {}
            (Table::Auth, "token") => {
                return Err(Error::invalid(
                    "token credential backend cannot be instantiated",
                ))
            }
            (Table::Secret, "system" | "cubbyhole" | "identity") => {
                return Err(Error::invalid(format!(
                    "cannot mount {kind:?} of type {kind:?}"
                )))
            }
            (Table::Secret, other) => {
                return Err(Error::invalid(format!("secrets engine type {other:?} is not supported by this build; supported: kv, kv-v2, transit")));
            }
            (Table::Auth, other) => {
                return Err(Error::invalid(format!("auth method type {other:?} is not supported by this build; supported: userpass, approle")));
            }
        }
        let description = req.get_str("description").unwrap_or_default();
        let mut entry = MountEntry::new(table, path, &kind, &description);
        entry.options = options;
        entry.local = req
            .data
            .get("local")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        entry.seal_wrap = req
            .data
            .get("seal_wrap")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if let Some(Value::Object(config)) = req.data.get("config") {
            apply_tune(&mut entry, config)?;
        }

        let _guard = u.table_lock.lock().await;
        u.router
            .read()
            .expect("router lock")
            .check_mountable(table, path)?;
        let tokens = u.tokens.clone();
        let backend = super::backend_factory(&entry, &tokens)?;
        let view = self.view(&entry.view_prefix());
        let mut entries = u.router.read().expect("router lock").entries(table);
        entries.push(entry.clone());
        self.view("").put_json(table_key(table), &entries).await?;
        u.router.write().expect("router lock").insert(Mount {
            entry: entry.clone(),
            backend,
            view,
        })?;
        tracing::info!(path = %entry.route_path(), kind = %entry.kind, "mount enabled");
        Ok(Response::empty())
    }

    async fn disable_mount(&self, u: &Unsealed, table: Table, route: &str) -> Result<Response> {
        if route == "sys/" || route == "auth/token/" {
            return Err(Error::invalid(format!("cannot unmount {route:?}")));
        }
        let _guard = u.table_lock.lock().await;
        let Some(mount) = u.router.read().expect("router lock").get(route).cloned() else {
            // Vault answers 204 for a path that is not mounted.
            return Ok(Response::empty());
        };
        let entries: Vec<MountEntry> = u
            .router
            .read()
            .expect("router lock")
            .entries(table)
            .into_iter()
            .filter(|e| e.route_path() != route)
            .collect();
        self.view("").put_json(table_key(table), &entries).await?;
        u.router.write().expect("router lock").remove(route);
        mount.backend.cleanup(&mount.view).await?;
        mount.view.clear("").await?;
        tracing::info!(path = %route, "mount disabled");
        Ok(Response::empty())
    }

    async fn tune(&self, u: &Unsealed, req: &Request, route: &str) -> Result<Response> {
        let mount = u
            .router
            .read()
            .expect("router lock")
            .get(route)
            .cloned()
            .ok_or_else(|| Error::invalid(format!("no mount at {route:?}")))?;
        match req.operation {
            Operation::Read => {
                let info = mount
                    .entry
                    .info(self.config.default_lease_ttl, self.config.max_lease_ttl);
                let mut data = json!({
                    "default_lease_ttl": info.default_lease_ttl.as_secs(),
                    "max_lease_ttl": info.max_lease_ttl.as_secs(),
                    "force_no_cache": mount.entry.config.force_no_cache,
                    "description": mount.entry.description,
                });
                if !mount.entry.options.is_empty() {
                    data["options"] = json!(mount.entry.options);
                }
                if mount.entry.table == Table::Auth {
                    data["token_type"] = json!(if mount.entry.config.token_type.is_empty() {
                        "default-service"
                    } else {
                        &mount.entry.config.token_type
                    });
                }
                if mount.entry.config.user_lockout_config.is_some() {
                    let policy = self.lockout_policy(&mount.entry);
                    data["user_lockout_config"] = json!({
                        "lockout_threshold": policy.threshold,
                        "lockout_duration": policy.duration.as_secs(),
                        "lockout_counter_reset_duration": policy.counter_reset.as_secs(),
                        "lockout_disable": policy.disabled,
                    });
                }
                Ok(Response::data(data))
            }
            Operation::Create | Operation::Update => {
                let _guard = u.table_lock.lock().await;
                let mut entry = mount.entry.clone();
                apply_tune(&mut entry, &req.data)?;
                if let Some(description) = req.get_str("description") {
                    entry.description = description;
                }
                if let Some(Value::Object(options)) = req.data.get("options") {
                    for (k, v) in string_map(Some(&Value::Object(options.clone())))? {
                        if k == "version"
                            && entry.kind == "kv"
                            && v != entry.options.get("version").cloned().unwrap_or_default()
                        {
                            return Err(Error::invalid("changing the kv version of an existing mount is not supported by this build"));
                        }
                        entry.options.insert(k, v);
                    }
                }
                let table = entry.table;
                let entries: Vec<MountEntry> = u
                    .router
                    .read()
                    .expect("router lock")
                    .entries(table)
                    .into_iter()
                    .map(|e| {
                        if e.uuid == entry.uuid {
                            entry.clone()
                        } else {
                            e
                        }
                    })
                    .collect();
                self.view("").put_json(table_key(table), &entries).await?;
                let mut router = u.router.write().expect("router lock");
                router.remove(route);
                router.insert(Mount {
                    entry,
                    backend: mount.backend.clone(),
                    view: mount.view.clone(),
                })?;
                Ok(Response::empty())
            }
            _ => Err(Error::UnsupportedOperation),
        }
    }

    async fn capabilities(
        &self,
        u: &Unsealed,
        req: &Request,
        token: Option<String>,
    ) -> Result<Response> {
        let mut paths: Vec<String> = match req.data.get("paths") {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            Some(Value::String(s)) => s.split(',').map(|p| p.trim().to_string()).collect(),
            _ => Vec::new(),
        };
        if let Some(path) = str_field(req, "path") {
            paths.push(path);
        }
        if paths.is_empty() {
            return Err(Error::invalid("missing paths"));
        }
        let token = token.ok_or_else(|| Error::invalid("missing token"))?;
        let entry = u
            .tokens
            .lookup(&token)
            .await?
            .ok_or_else(|| Error::invalid("invalid token"))?;
        let acl = u.policies.acl(&entry.policies).await?;
        let mut data = Map::new();
        let mut first = None;
        for path in &paths {
            let caps = acl.capabilities(path.trim_start_matches('/'));
            first.get_or_insert_with(|| caps.clone());
            data.insert(path.clone(), json!(caps));
        }
        data.insert("capabilities".into(), json!(first.unwrap_or_default()));
        Ok(injected(Value::Object(data)))
    }

    async fn enable_audit(&self, u: &Unsealed, req: &Request, path: &str) -> Result<Response> {
        let kind = str_field(req, "type")
            .ok_or_else(|| Error::invalid("the \"type\" parameter is required (e.g. file)"))?;
        let config = crate::audit::AuditDeviceConfig {
            path: path.to_string(),
            r#type: kind,
            description: req.get_str("description").unwrap_or_default(),
            options: string_map(req.data.get("options"))?,
            local: req
                .data
                .get("local")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        };
        let _guard = u.table_lock.lock().await;
        let mut table: Vec<AuditTableEntry> = self
            .view("")
            .get_json(AUDIT_TABLE_KEY)
            .await?
            .unwrap_or_default();
        if table.iter().any(|e| e.config.path == path) {
            return Err(Error::invalid(format!("path already in use: {path}")));
        }
        let entry = AuditTableEntry {
            config,
            uuid: uuid::Uuid::new_v4().to_string(),
        };
        u.audit
            .enable(&entry.config, self.view(&format!("audit/{}/", entry.uuid)))
            .await?;
        table.push(entry);
        if let Err(e) = self.view("").put_json(AUDIT_TABLE_KEY, &table).await {
            u.audit.disable(path).await;
            return Err(e);
        }
        tracing::info!(path, "audit device enabled");
        Ok(Response::empty())
    }

    async fn disable_audit(&self, u: &Unsealed, path: &str) -> Result<Response> {
        let _guard = u.table_lock.lock().await;
        let mut table: Vec<AuditTableEntry> = self
            .view("")
            .get_json(AUDIT_TABLE_KEY)
            .await?
            .unwrap_or_default();
        let Some(pos) = table.iter().position(|e| e.config.path == path) else {
            return Ok(Response::empty());
        };
        let removed = table.remove(pos);
        self.view("").put_json(AUDIT_TABLE_KEY, &table).await?;
        u.audit.disable(path).await;
        // A re-enabled device gets a new salt, as in Vault.
        self.view(&format!("audit/{}/", removed.uuid))
            .clear("")
            .await?;
        tracing::info!(path, "audit device disabled");
        Ok(Response::empty())
    }

    pub(super) fn metrics_response(&self, req: &Request) -> Result<Response> {
        match req.get_str("format").as_deref() {
            Some("prometheus") => {
                if !self.config.prometheus_enabled {
                    return Err(Error::invalid("prometheus is not enabled: set telemetry { prometheus_retention_time } to a non-zero duration"));
                }
                Ok(Response {
                    raw: Some(crate::logical::RawBody {
                        content_type: "text/plain; version=0.0.4".into(),
                        body: self.telemetry.render_prometheus().into_bytes().into(),
                    }),
                    ..Default::default()
                })
            }
            None | Some("") | Some("json") => Ok(Response {
                raw: Some(crate::logical::RawBody {
                    content_type: "application/json".into(),
                    body: serde_json::to_vec(&self.telemetry.render_json())
                        .map_err(|e| Error::internal(e.to_string()))?
                        .into(),
                }),
                ..Default::default()
            }),
            Some(other) => Err(Error::invalid(format!(
                "unknown metrics format {other:?}: use prometheus or json"
            ))),
        }
    }
}

/// `user_lockout_config` of `sys/auth/<mount>/tune`, Vault's field names; unset fields inherit.
fn parse_lockout_tune(entry: &MountEntry, value: &Value) -> Result<super::lockout::LockoutTune> {
    if entry.table != Table::Auth || !super::lockout::LOCKOUT_METHODS.contains(&entry.kind.as_str())
    {
        return Err(Error::invalid(format!(
            "user_lockout_config is only supported on auth methods of type {}",
            super::lockout::LOCKOUT_METHODS.join(", ")
        )));
    }
    let Value::Object(fields) = value else {
        return Err(Error::invalid("user_lockout_config must be an object"));
    };
    let mut tune = entry.config.user_lockout_config.clone().unwrap_or_default();
    match fields.get("lockout_threshold") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) => tune.lockout_threshold = n.as_u64(),
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) => {
            tune.lockout_threshold = Some(s.parse().map_err(|_| {
                Error::invalid("user_lockout_config.lockout_threshold must be a number")
            })?)
        }
        Some(_) => {
            return Err(Error::invalid(
                "user_lockout_config.lockout_threshold must be a number",
            ))
        }
    }
    if let Some(d) = parse_duration_field(fields, "lockout_duration")? {
        tune.lockout_duration = Some(d.as_secs());
    }
    if let Some(d) = parse_duration_field(fields, "lockout_counter_reset_duration")? {
        tune.lockout_counter_reset = Some(d.as_secs());
    }
    match fields.get("lockout_disable") {
        Some(Value::Bool(b)) => tune.lockout_disable = Some(*b),
        Some(Value::String(s)) if !s.is_empty() => {
            tune.lockout_disable = Some(s.parse().map_err(|_| {
                Error::invalid("user_lockout_config.lockout_disable must be a boolean")
            })?)
        }
        _ => {}
    }
    Ok(tune)
}

/// Applies `config` / tune fields to a mount entry.
fn apply_tune(entry: &mut MountEntry, config: &Map<String, Value>) -> Result<()> {
    if let Some(d) = parse_duration_field(config, "default_lease_ttl")? {
        entry.config.default_lease_ttl = d.as_secs();
    }
    if let Some(d) = parse_duration_field(config, "max_lease_ttl")? {
        entry.config.max_lease_ttl = d.as_secs();
    }
    if let Some(b) = config.get("force_no_cache").and_then(Value::as_bool) {
        entry.config.force_no_cache = b;
    }
    for (field, target) in [
        (
            "audit_non_hmac_request_keys",
            &mut entry.config.audit_non_hmac_request_keys,
        ),
        (
            "audit_non_hmac_response_keys",
            &mut entry.config.audit_non_hmac_response_keys,
        ),
    ] {
        if let Some(Value::Array(items)) = config.get(field) {
            *target = items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
        }
    }
    if let Some(v) = config.get("listing_visibility").and_then(Value::as_str) {
        entry.config.listing_visibility = v.to_string();
    }
    if let Some(v) = config.get("token_type").and_then(Value::as_str) {
        entry.config.token_type = v.to_string();
    }
    if let Some(lockout) = config.get("user_lockout_config") {
        entry.config.user_lockout_config = Some(parse_lockout_tune(entry, lockout)?);
    }
    let (d, m) = (entry.config.default_lease_ttl, entry.config.max_lease_ttl);
    if d > 0 && m > 0 && d > m {
        return Err(Error::invalid(
            "default_lease_ttl cannot be greater than max_lease_ttl",
        ));
    }
    Ok(())
}

fn table_key(table: Table) -> &'static str {
    match table {
        Table::Secret => super::mounts::MOUNTS_KEY,
        Table::Auth => super::mounts::AUTH_KEY,
    }
}

fn audit_json(u: &Unsealed) -> Value {
    let mut out = Map::new();
    for device in u.audit.devices() {
        out.insert(
            device.path.clone(),
            json!({
                "type": device.r#type,
                "description": device.description,
                "options": device.options,
                "path": device.path,
                "local": device.local,
            }),
        );
    }
    Value::Object(out)
}

/// Policies may arrive base64-encoded (the API allows it).
fn decode_maybe_base64(text: &str) -> String {
    use base64::Engine;
    if text.contains('{') || text.contains('"') {
        return text.to_string();
    }
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|s| s.contains("path"))
        .unwrap_or_else(|| text.to_string())
}

/// Whether `sys/internal/ui/mounts` may show `entry` to a caller with `acl` (`None`: no token).
fn mount_visible(entry: &super::mounts::MountEntry, acl: Option<&crate::policy::Acl>) -> bool {
    entry.config.listing_visibility == "unauth"
        || acl.is_some_and(|acl| acl.has_mount_access(&entry.route_path()))
}
