//! The audit entry: one JSON object per line, shaped as Vault's `json` format
//! (`{"time","type","auth","request","response","error"}`), so log pipelines
//! built for Vault parse it unchanged.
//!
//! An [`Entry`] is built once per request or response in the clear and then
//! rendered once per device, because every device hashes with its own salt
//! and options. Empty fields are left out, as Vault's `omitempty` does.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

use super::hash::Salt;
use crate::logical::{Auth, Operation, Request, Response};

/// How one device renders entries (the format-related device options).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FormatOptions {
    /// Log values in the clear (`log_raw=true`).
    pub log_raw: bool,
    /// Hash token accessors (`hmac_accessor`, default true).
    pub hmac_accessor: bool,
    /// Replace list response `keys`/`key_info` by their sizes.
    pub elide_list_responses: bool,
    /// Written before the JSON on each line.
    pub prefix: String,
}

impl Default for FormatOptions {
    fn default() -> Self {
        FormatOptions {
            log_raw: false,
            hmac_accessor: true,
            elide_list_responses: false,
            prefix: String::new(),
        }
    }
}

/// Holds plaintext until rendered, so it deliberately has no `Debug`: it
/// cannot end up in a log message by accident.
#[derive(Clone, Serialize)]
pub(crate) struct Entry {
    time: String,
    #[serde(rename = "type")]
    kind: &'static str,
    auth: AuditAuth,
    request: AuditRequest,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<AuditResponse>,
    #[serde(skip_serializing_if = "String::is_empty")]
    error: String,
}

#[derive(Clone, Default, Serialize)]
struct AuditAuth {
    #[serde(skip_serializing_if = "String::is_empty")]
    client_token: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    accessor: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    display_name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    policies: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    token_policies: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    identity_policies: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    entity_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    token_type: String,
    #[serde(skip_serializing_if = "is_zero_u64")]
    token_ttl: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    token_issue_time: String,
}

#[derive(Debug, Clone, Serialize)]
struct Namespace {
    id: &'static str,
}

#[derive(Clone, Serialize)]
struct AuditRequest {
    id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    client_id: String,
    operation: Operation,
    #[serde(skip_serializing_if = "String::is_empty")]
    mount_point: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    mount_type: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    mount_accessor: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    client_token: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    client_token_accessor: String,
    namespace: Namespace,
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Value>,
    #[serde(skip_serializing_if = "String::is_empty")]
    remote_address: String,
    #[serde(skip_serializing_if = "is_zero_u16")]
    remote_port: u16,
    #[serde(skip_serializing_if = "is_zero_u64")]
    wrap_ttl: u64,
    /// Vault logs only headers an operator configured through
    /// `sys/config/auditing/request-headers`; none are configured here, and
    /// the raw headers carry the token, so this stays empty.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Serialize)]
struct AuditSecret {
    lease_id: String,
}

#[derive(Clone, Default, Serialize)]
struct AuditResponse {
    #[serde(skip_serializing_if = "String::is_empty")]
    mount_point: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    mount_type: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    mount_accessor: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<AuditAuth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<AuditSecret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<String, Vec<String>>,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

fn is_zero_u16(n: &u16) -> bool {
    *n == 0
}

impl AuditAuth {
    fn from_auth(auth: &Auth) -> Self {
        AuditAuth {
            client_token: auth.client_token.clone(),
            accessor: auth.accessor.clone(),
            display_name: auth.display_name.clone(),
            policies: auth.policies.clone(),
            token_policies: auth.token_policies.clone(),
            identity_policies: auth.identity_policies.clone(),
            metadata: auth.metadata.clone(),
            entity_id: auth.entity_id.clone(),
            token_type: auth.token_type.clone(),
            token_ttl: auth.lease_duration,
            token_issue_time: chrono::DateTime::from_timestamp(auth.issue_time, 0)
                .filter(|_| auth.issue_time > 0)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default(),
        }
    }

    fn hash(&mut self, salt: &Salt, hmac_accessor: bool) {
        salt.hash_field(&mut self.client_token);
        if hmac_accessor {
            salt.hash_field(&mut self.accessor);
        }
    }
}

impl AuditRequest {
    fn from_request(req: &Request, auth: Option<&Auth>) -> Self {
        let mount = req.mount.as_ref();
        let mount_field = |f: fn(&crate::logical::MountInfo) -> &String| {
            mount.map(|m| f(m).clone()).unwrap_or_default()
        };
        AuditRequest {
            id: req.id.clone(),
            client_id: auth.map(|a| a.entity_id.clone()).unwrap_or_default(),
            operation: req.operation,
            mount_point: mount_field(|m| &m.path),
            mount_type: mount_field(|m| &m.kind),
            mount_accessor: mount_field(|m| &m.accessor),
            client_token: req.client_token.clone().unwrap_or_default(),
            client_token_accessor: auth.map(|a| a.accessor.clone()).unwrap_or_default(),
            namespace: Namespace { id: "root" },
            path: req.path.clone(),
            data: (!req.data.is_empty()).then(|| Value::Object(req.data.clone())),
            remote_address: req
                .remote_addr
                .map(|a| a.ip().to_string())
                .unwrap_or_default(),
            remote_port: req.remote_addr.map(|a| a.port()).unwrap_or_default(),
            wrap_ttl: req
                .headers
                .get("x-vault-wrap-ttl")
                .and_then(|v| crate::client::go_duration::parse_duration(v).ok())
                .map(|d| d.as_secs())
                .unwrap_or_default(),
            headers: BTreeMap::new(),
        }
    }
}

impl Entry {
    /// A `request` entry: written before the request is routed.
    pub(crate) fn request(req: &Request, auth: Option<&Auth>, error: Option<&str>) -> Self {
        let auth = auth.or(req.auth.as_ref());
        Entry {
            time: now(),
            kind: "request",
            auth: auth.map(AuditAuth::from_auth).unwrap_or_default(),
            request: AuditRequest::from_request(req, auth),
            response: None,
            error: error.unwrap_or_default().to_string(),
        }
    }

    /// A `response` entry: written after the handler answered (or failed).
    pub(crate) fn response(
        req: &Request,
        auth: Option<&Auth>,
        resp: Option<&Response>,
        error: Option<&str>,
    ) -> Self {
        let mut entry = Entry::request(req, auth, error);
        entry.kind = "response";
        let mount = req.mount.clone().unwrap_or_default();
        let mut response = AuditResponse {
            mount_point: mount.path,
            mount_type: mount.kind,
            mount_accessor: mount.accessor,
            ..Default::default()
        };
        if let Some(resp) = resp {
            response.auth = resp.auth.as_ref().map(AuditAuth::from_auth);
            response.secret = resp
                .lease
                .as_ref()
                .filter(|l| !l.lease_id.is_empty())
                .map(|l| AuditSecret {
                    lease_id: l.lease_id.clone(),
                });
            // A raw body (metrics text, a snapshot) is not logged: it is not
            // JSON, can be large, and would be logged unhashed.
            response.data = resp.data.clone().map(Value::Object);
            response.warnings = resp.warnings.clone();
        }
        entry.response = Some(response);
        entry
    }

    /// The line one device writes: its prefix, the entry with that device's
    /// hashing applied, and a newline.
    pub(crate) fn render(&self, salt: &Salt, opts: &FormatOptions) -> Vec<u8> {
        let mut entry = self.clone();
        if opts.elide_list_responses && entry.request.operation == Operation::List {
            if let Some(Value::Object(data)) = entry.response.as_mut().and_then(|r| r.data.as_mut())
            {
                elide_list_data(data);
            }
        }
        if !opts.log_raw {
            entry.hash(salt, opts.hmac_accessor);
        }
        let mut line = opts.prefix.clone().into_bytes();
        serde_json::to_writer(&mut line, &entry).expect("audit entries serialize");
        line.push(b'\n');
        line
    }

    fn hash(&mut self, salt: &Salt, hmac_accessor: bool) {
        self.auth.hash(salt, hmac_accessor);
        salt.hash_field(&mut self.request.client_token);
        if hmac_accessor {
            salt.hash_field(&mut self.request.client_token_accessor);
        }
        if let Some(data) = self.request.data.as_mut() {
            salt.hash_strings(data);
        }
        if let Some(resp) = self.response.as_mut() {
            if let Some(auth) = resp.auth.as_mut() {
                auth.hash(salt, hmac_accessor);
            }
            if let Some(data) = resp.data.as_mut() {
                salt.hash_strings(data);
            }
        }
    }
}

/// Vault's `elide_list_responses`: a list answer keeps the number of keys,
/// not the keys, which can be large and sensitive (user names, secret names).
fn elide_list_data(data: &mut Map<String, Value>) {
    if let Some(keys) = data.get_mut("keys") {
        if let Value::Array(items) = keys {
            *keys = Value::from(items.len());
        }
    }
    if let Some(info) = data.get_mut("key_info") {
        if let Value::Object(map) = info {
            *info = Value::from(map.len());
        }
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logical::MountInfo;
    use serde_json::json;

    fn render(entry: &Entry, opts: &FormatOptions) -> Value {
        let salt = Salt::from_bytes(b"test-salt".to_vec());
        let line = entry.render(&salt, opts);
        let text = String::from_utf8(line).unwrap();
        let json = text.strip_prefix(&opts.prefix).unwrap();
        assert!(json.ends_with('\n'));
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn elides_list_keys_only_for_list_operations() {
        let mut req = Request::new(Operation::List, "secret/metadata/");
        req.mount = Some(MountInfo {
            path: "secret/".into(),
            kind: "kv".into(),
            ..Default::default()
        });
        let resp = Response::data(json!({"keys": ["a", "b", "c"], "key_info": {"a": {}}}));
        let opts = FormatOptions {
            elide_list_responses: true,
            log_raw: true,
            ..Default::default()
        };
        let line = render(&Entry::response(&req, None, Some(&resp), None), &opts);
        assert_eq!(line["response"]["data"], json!({"keys": 3, "key_info": 1}));

        req.operation = Operation::Read;
        let line = render(&Entry::response(&req, None, Some(&resp), None), &opts);
        assert_eq!(line["response"]["data"]["keys"], json!(["a", "b", "c"]));
    }

    #[test]
    fn remote_address_wrap_ttl_and_namespace() {
        let mut req = Request::new(Operation::Read, "secret/data/app");
        req.remote_addr = Some("10.1.2.3:51234".parse().unwrap());
        req.headers.insert("x-vault-wrap-ttl".into(), "5m".into());
        req.headers
            .insert("x-vault-token".into(), "s.secret".into());
        let line = render(
            &Entry::request(&req, None, Some("permission denied")),
            &FormatOptions::default(),
        );
        assert_eq!(line["type"], "request");
        assert_eq!(line["request"]["remote_address"], "10.1.2.3");
        assert_eq!(line["request"]["remote_port"], 51234);
        assert_eq!(line["request"]["wrap_ttl"], 300);
        assert_eq!(line["request"]["namespace"], json!({"id": "root"}));
        assert_eq!(line["request"]["operation"], "read");
        assert_eq!(line["error"], "permission denied");
        assert!(line["request"].get("headers").is_none());
        assert!(!line.to_string().contains("s.secret"));
    }

    #[test]
    fn time_is_rfc3339_with_nanoseconds() {
        let req = Request::new(Operation::Read, "sys/mounts");
        let line = render(&Entry::request(&req, None, None), &FormatOptions::default());
        let time = line["time"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok(), "{time}");
        assert_eq!(time.split('.').nth(1).unwrap().len(), 10, "{time}"); // 9 digits + Z
    }
}
