//! The HTTP face of the server: Vault's `/v1/` API over axum, with the
//! envelope (the three response shapes), the one error-to-response mapping,
//! body limits and request timeouts. TLS listeners live in `listener`.

mod client_cert;
mod idle;
pub(crate) mod json_limits;
mod listener;
mod sys_raw;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::Router;
use serde_json::{json, Map, Value};

use crate::core::ha::{ForwardedRequest, ForwardedResponse};
use crate::core::{Core, Role, StandbyRead};
use crate::error::Error;
use crate::logical::{Auth, Operation, RawContent, Request, Response};

pub use json_limits::{JsonLimitError, JsonLimits};
pub use listener::{serve_listener, tls_server_config, ListenerHandle};

/// Per-listener request settings.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    pub max_request_size: u64,
    pub max_request_duration: Duration,
    pub unauthenticated_metrics_access: bool,
    pub json_limits: JsonLimits,
    /// The listener has a `tls_client_ca_file`: the join challenge routes then need a client
    /// certificate it signed, whether or not other routes do.
    pub join_needs_client_cert: bool,
}

impl Default for ListenerSettings {
    fn default() -> Self {
        ListenerSettings {
            max_request_size: 32 << 20,
            max_request_duration: Duration::from_secs(90),
            unauthenticated_metrics_access: false,
            json_limits: JsonLimits::default(),
            join_needs_client_cert: false,
        }
    }
}

/// Headers Vault sends on every API answer: nothing a client receives from a secrets server may
/// be kept by a cache, and browsers are told to use HTTPS only.
fn harden_headers(response: &mut HttpResponse) {
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    headers.insert(
        header::STRICT_TRANSPORT_SECURITY,
        header::HeaderValue::from_static("max-age=31536000; includeSubDomains"),
    );
}

#[derive(Clone)]
struct AppState {
    core: Arc<Core>,
    settings: Arc<ListenerSettings>,
}

/// The axum app for one listener.
pub fn router(core: Arc<Core>, settings: ListenerSettings) -> Router {
    Router::new().fallback(entry).with_state(AppState {
        core,
        settings: Arc::new(settings),
    })
}

async fn entry(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    client_cert: Option<axum::Extension<client_cert::ClientCertificate>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> HttpResponse {
    let limit = state.settings.max_request_duration;
    // The request runs as its own task: when it outlives the limit the
    // client gets its answer, and the work still runs to completion instead
    // of being dropped at an arbitrary await point (which could leave a
    // mount or audit table half-changed).
    let caller = Caller {
        remote,
        client_cert: client_cert.is_some_and(|axum::Extension(c)| c.0),
        forwarded: false,
    };
    let logged = (method.clone(), loggable_path(uri.path()));
    let task = tokio::spawn(async move { serve(&state, caller, method, uri, headers, body).await });
    let mut response = match tokio::time::timeout(limit, task).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(join)) => {
            error_response(&Error::Internal(format!("request handler failed: {join}")))
        }
        Err(_) => error_response(&Error::Internal(format!(
            "request exceeded the listener's max_request_duration ({}s) and was cancelled",
            limit.as_secs()
        ))),
    };
    harden_headers(&mut response);
    tracing::debug!(
        method = %logged.0,
        path = %logged.1,
        status = response.status().as_u16(),
        remote = %remote.ip(),
        "request"
    );
    response
}

/// The path of a request as the debug log shows it: no query string, and nothing after
/// `auth/token/<operation>/`, where a token id may sit (`auth/token/lookup/<token>`).
fn loggable_path(path: &str) -> String {
    match path.find("/auth/token/") {
        Some(at) => {
            let rest = &path[at + "/auth/token/".len()..];
            match rest.split_once('/') {
                Some((operation, tail)) if !tail.is_empty() => {
                    format!("{}/auth/token/{operation}/...", &path[..at])
                }
                _ => path.to_string(),
            }
        }
        None => path.to_string(),
    }
}

/// Why a request body was not accepted.
enum BodyError {
    TooLarge,
    Json(JsonLimitError),
    Read(String),
}

/// Reads a body of at most `limit` bytes, counting JSON structure as it arrives when `json` is
/// given, so a body past a JSON limit is refused before the rest is buffered. After a refusal
/// the remainder is read and dropped (still bounded by `limit`), and past `limit` by
/// [`linger`], so the client gets its answer instead of a reset connection.
async fn read_body(
    body: Body,
    limit: usize,
    json: Option<JsonLimits>,
) -> Result<Vec<u8>, BodyError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut scanner = json.map(json_limits::JsonScanner::new);
    let mut bytes = Vec::new();
    let mut refusal = None;
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        seen = seen.saturating_add(chunk.len());
        if seen > limit {
            linger(body, limit);
            return Err(refusal.unwrap_or(BodyError::TooLarge));
        }
        if refusal.is_some() {
            continue;
        }
        if let Some(Err(e)) = scanner.as_mut().map(|s| s.feed(&chunk)) {
            refusal = Some(BodyError::Json(e));
            bytes = Vec::new();
            continue;
        }
        bytes.extend_from_slice(&chunk);
    }
    match refusal {
        Some(e) => Err(e),
        None => Ok(bytes),
    }
}

/// Reads and drops a body the server will not use, up to `limit` bytes, and past it by
/// [`linger`].
async fn discard_body(mut body: Body, limit: usize) {
    if drain(&mut body, limit).await == Drained::Cut {
        linger(body, limit);
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Drained {
    /// The body ended (or its connection failed).
    Ended,
    /// More than the bytes allowed arrived.
    Cut,
}

/// Reads and drops `body` until it ends or more than `bytes` arrived.
async fn drain(body: &mut Body, bytes: usize) -> Drained {
    use http_body_util::BodyExt;
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(chunk) = frame.into_data() {
            seen = seen.saturating_add(chunk.len());
            if seen > bytes {
                return Drained::Cut;
            }
        }
    }
    Drained::Ended
}

/// How much more of a refused body [`linger`] reads at least (past the listener's limit).
const LINGER_BYTES: usize = 64 << 20;
/// How long [`linger`] reads at most.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads and drops the rest of a body refused for its size, beside the answer, for at most
/// [`LINGER_TIME`] and `max(limit, LINGER_BYTES)` more bytes. A client that sends its whole
/// body before reading (Python's requests, most HTTP/1.1 clients without `Expect:
/// 100-continue`) otherwise writes into a closed connection and sees a reset instead of the
/// 413 (over TLS always; over plain TCP when the kernel's buffers fill). Nothing is kept, and
/// past either bound the connection is closed as before, so a stranger gains no more than a
/// bounded read per request.
fn linger(mut body: Body, limit: usize) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(LINGER_TIME, drain(&mut body, limit.max(LINGER_BYTES))).await;
    });
}

/// Who sent a request, and how it reached this node.
struct Caller {
    remote: SocketAddr,
    /// The TLS peer presented a certificate the listener's client CA signed.
    client_cert: bool,
    /// Relayed by a standby over the cluster port (checked on the listener it arrived on).
    forwarded: bool,
}

async fn serve(
    state: &AppState,
    caller: Caller,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> HttpResponse {
    let Caller {
        remote,
        client_cert,
        forwarded,
    } = caller;
    let Some(raw_path) = uri.path().strip_prefix("/v1/") else {
        return error_response(&Error::UnsupportedPath(
            uri.path().trim_start_matches('/').to_string(),
        ));
    };
    let path = match decode_path(raw_path) {
        Ok(p) => p,
        Err(e) => return error_response(&e),
    };
    let query = parse_query(uri.query());
    let token = request_token(&headers);

    // The join handshake needs no token; where the listener names a client CA, the caller must
    // at least hold a certificate it signed (checked on the listener the request arrived on).
    if !forwarded
        && state.settings.join_needs_client_cert
        && !client_cert
        && sys_raw::is_join_handshake(&path)
    {
        return (
            StatusCode::FORBIDDEN,
            axum::Json(json!({"errors": ["this listener has a tls_client_ca_file: the Raft join handshake needs a client certificate signed by it (retry_join leader_client_cert_file and leader_client_key_file)"]})),
        )
            .into_response();
    }

    // Without a valid token the request is refused whatever its body says: the body is not
    // parsed, kept or audited, so an unauthenticated flood of large bodies costs nothing.
    let limit = state.settings.max_request_size as usize;
    let refused = !forwarded
        && state.core.role() == Role::Active
        && !sys_raw::is_raw_path(&path)
        && !unauthenticated_metrics(state, &path)
        && state
            .core
            .refused_without_token(&path, token.as_deref())
            .await;
    // A snapshot restore carries the archive itself as the body; a forwarded body was
    // checked against the limits of the listener it arrived on.
    let raw_upload = matches!(method.as_str(), "PUT" | "POST")
        && matches!(
            path.trim_end_matches('/'),
            "sys/storage/raft/snapshot" | "sys/storage/raft/snapshot-force"
        );
    let json_limits = (!raw_upload && !forwarded).then_some(state.settings.json_limits);
    let mut bytes = if refused {
        discard_body(body, limit).await;
        axum::body::Bytes::new()
    } else {
        match read_body(body, limit, json_limits).await {
            Ok(b) => axum::body::Bytes::from(b),
            Err(BodyError::TooLarge) => return error_response(&Error::TooLarge),
            Err(BodyError::Json(e)) => {
                return error_response(&Error::invalid(format!("failed to parse JSON input: {e}")))
            }
            Err(BodyError::Read(e)) => {
                return error_response(&Error::invalid(format!("failed to read request body: {e}")))
            }
        }
    };

    // A standby answers only the node-local paths and the reads it may serve from its own
    // replica; the active node serves the rest. A request already forwarded is never
    // forwarded again.
    let mut standby_read = false;
    if !sys_raw::served_locally(&path) && !unauthenticated_metrics(state, &path) {
        match (state.core.role(), forwarded) {
            (Role::Standby, false) if method == Method::GET && is_metrics(&path) => {
                // Each node's metrics are its own (a scrape of a standby must not show the
                // active node's), but only the active node can check the token: it checks,
                // authorises and audits the request as usual, and on its yes this node
                // answers with its own metrics.
                let verdict = forward(state, remote, &method, &uri, &headers, &bytes).await;
                if verdict.status() != StatusCode::OK {
                    return verdict;
                }
                return local_metrics(state, &query);
            }
            (Role::Standby, false)
                if sys_raw::is_raw_path(&path)
                    || !state
                        .core
                        .may_serve_standby_reads(header_str(&headers, "x-vault-forward")) =>
            {
                return forward(state, remote, &method, &uri, &headers, &bytes).await
            }
            // Served here when it is a pure read and this node is fresh enough
            // (`core/standby.rs`); forwarded below otherwise.
            (Role::Standby, false) => standby_read = true,
            (Role::Standby, true) => return error_response(&Error::NoActiveNode),
            _ => {}
        }
    }

    let list_query = query.get("list").is_some_and(|v| v == "true" || v == "1");
    let operation = match (method.as_str(), list_query) {
        ("GET", true) | ("LIST", _) => Operation::List,
        ("GET", false) | ("HEAD", _) => Operation::Read,
        ("POST" | "PUT", _) => Operation::Update,
        ("PATCH", _) => Operation::Patch,
        ("DELETE", _) => Operation::Delete,
        _ => return error_response(&Error::UnsupportedOperation),
    };

    if operation == Operation::Patch {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !content_type.starts_with("application/merge-patch+json") {
            return (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                axum::Json(json!({"errors": [format!("PATCH requires Content-Type application/merge-patch+json, got {content_type:?}")]})),
            )
                .into_response();
        }
    }

    let body = (!raw_upload).then_some(&bytes[..]);
    let data = match request_data(operation, &query, body) {
        Ok(d) => d,
        Err(e) => return error_response(&e),
    };

    if let Some(resp) = sys_raw::handle(
        state,
        &method,
        &path,
        &query,
        &data,
        token.as_deref(),
        remote,
    )
    .await
    {
        return resp;
    }

    let path = path.trim_end_matches('/').to_string()
        + if operation == Operation::List && !path.ends_with('/') {
            "/"
        } else {
            ""
        };
    let path = if operation == Operation::List
        || raw_path.ends_with('/') && operation != Operation::Read
    {
        ensure_trailing_slash(&path, operation)
    } else {
        path
    };
    let mut req = Request::new(operation, path.clone());
    req.data = data;
    // Moved, not copied: a restore's archive is the largest body a node takes (hundreds of
    // megabytes at 100,000 secrets), and only a standby read (never an upload) forwards
    // `bytes` after this.
    req.raw_body = raw_upload.then(|| std::mem::take(&mut bytes));
    req.client_token = token;
    req.remote_addr = Some(remote);
    req.headers = headers
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "x-vault-token" | "authorization" | "cookie"))
        .filter_map(|(name, value)| {
            Some((name.as_str().to_string(), value.to_str().ok()?.to_string()))
        })
        .collect();

    let index = header_str(&headers, "x-vault-index");
    let result = if standby_read {
        let inconsistent = header_str(&headers, "x-vault-inconsistent");
        match state
            .core
            .handle_standby_read(req, index, inconsistent)
            .await
        {
            StandbyRead::Served(result) => *result,
            StandbyRead::Forward => {
                return forward(state, remote, &method, &uri, &headers, &bytes).await
            }
        }
    } else {
        match state.core.await_index(index).await {
            Ok(()) => state.core.handle_request(req).await,
            Err(e) => Err(e),
        }
    };
    let mut response = if method == Method::HEAD {
        let status = match &result {
            Ok(r) => StatusCode::from_u16(r.status.unwrap_or(200)).unwrap_or(StatusCode::OK),
            Err(e) => StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        };
        status.into_response()
    } else {
        match result {
            Ok(resp) => logical_response(&path, resp),
            Err(e) => error_response(&e),
        }
    };
    // The state this node answered from, for a client's next request (read-your-writes).
    if let Some(index) = state.core.index_header().await {
        if let Ok(value) = header::HeaderValue::from_str(&index) {
            response.headers_mut().insert("x-vault-index", value);
        }
    }
    // The answer waits until the other requests that are ready on this worker have run. A
    // request whose every step completes at once (an audit line written on this task, a
    // read from the replica) never lets go of its worker otherwise, and the answers go out
    // one wake-up of the client each; yielding here lets them go out together. Measured
    // with tests/bench/costs: reads c=16/64 +15-45%, CPU per read -20-30%; writes +2-8%.
    tokio::task::yield_now().await;
    response
}

/// A request header as text, if present and printable.
fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The client token: `X-Vault-Token`, or `Authorization: Bearer`.
fn request_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-vault-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(|t| t.trim().to_string())
        })
        .filter(|t| !t.is_empty())
}

fn is_metrics(path: &str) -> bool {
    path.trim_end_matches('/') == "sys/metrics"
}

/// This node's `sys/metrics`, in the format the query asks for.
fn local_metrics(state: &AppState, query: &BTreeMap<String, String>) -> HttpResponse {
    let mut req = crate::logical::Request::new(crate::logical::Operation::Read, "sys/metrics");
    for (k, v) in query {
        req.data.insert(k.clone(), Value::String(v.clone()));
    }
    match state.core.metrics_unauthenticated(&req) {
        Ok(resp) => logical_response("sys/metrics", resp),
        Err(e) => error_response(&e),
    }
}

fn unauthenticated_metrics(state: &AppState, path: &str) -> bool {
    state.settings.unauthenticated_metrics_access && path.trim_end_matches('/') == "sys/metrics"
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Headers that describe one hop, not the request.
fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "host" | "content-length" | "connection" | "transfer-encoding" | "keep-alive" | "upgrade"
    )
}

/// Relays a request to the active node over the cluster port.
async fn forward(
    state: &AppState,
    remote: SocketAddr,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> HttpResponse {
    use base64::Engine;
    let Some(ha) = &state.core.ha else {
        return error_response(&Error::NoActiveNode);
    };
    let request = ForwardedRequest {
        method: method.as_str().to_string(),
        uri: uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| uri.path().to_string()),
        headers: headers
            .iter()
            .filter(|(name, _)| !hop_by_hop(name.as_str()))
            .filter_map(|(name, value)| {
                Some((name.as_str().to_string(), value.to_str().ok()?.to_string()))
            })
            .collect(),
        body: b64().encode(body),
        remote_addr: remote.to_string(),
    };
    match ha.forward(&request).await {
        Ok(answer) => {
            let mut response =
                HttpResponse::new(Body::from(b64().decode(answer.body).unwrap_or_default()));
            *response.status_mut() =
                StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
            for (name, value) in answer.headers {
                if let (Ok(name), Ok(value)) = (
                    header::HeaderName::from_bytes(name.as_bytes()),
                    header::HeaderValue::from_str(&value),
                ) {
                    if !hop_by_hop(name.as_str()) {
                        response.headers_mut().append(name, value);
                    }
                }
            }
            // Read-your-writes through this node for clients that do not pass X-Vault-Index
            // along (hvac, curl scripts): the answer waits until this standby has applied the
            // state the active node answered from, so its next read here sees the write.
            if state.core.may_serve_standby_reads(None) {
                if let Some(index) = response
                    .headers()
                    .get("x-vault-index")
                    .and_then(|v| v.to_str().ok())
                {
                    state.core.catch_up_to(index).await;
                }
            }
            response
        }
        Err(e) => error_response(&e),
    }
}

/// Routes the active node serves on the cluster port: requests relayed by
/// standbys, handled exactly as if they had arrived on the API listener.
pub fn cluster_routes(core: Arc<Core>) -> Router {
    let settings = ListenerSettings {
        max_request_size: 64 << 20,
        ..ListenerSettings::default()
    };
    Router::new()
        .route("/v1/cluster/forward", axum::routing::post(forwarded))
        .layer(axum::extract::DefaultBodyLimit::max(128 << 20))
        .with_state(AppState {
            core,
            settings: Arc::new(settings),
        })
}

async fn forwarded(
    State(state): State<AppState>,
    axum::Json(request): axum::Json<ForwardedRequest>,
) -> HttpResponse {
    use base64::Engine;
    let bad = |what: &str| {
        error_response(&Error::invalid(format!(
            "malformed forwarded request: {what}"
        )))
    };
    let Ok(method) = Method::from_bytes(request.method.as_bytes()) else {
        return bad("method");
    };
    let Ok(uri) = request.uri.parse::<Uri>() else {
        return bad("uri");
    };
    let Ok(body) = b64().decode(&request.body) else {
        return bad("body");
    };
    let remote = request
        .remote_addr
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut headers = HeaderMap::new();
    for (name, value) in &request.headers {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            header::HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
    let caller = Caller {
        remote,
        client_cert: false,
        forwarded: true,
    };
    let response = serve(&state, caller, method, uri, headers, Body::from(body)).await;
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let answer = ForwardedResponse {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .filter_map(|(name, value)| {
                Some((name.as_str().to_string(), value.to_str().ok()?.to_string()))
            })
            .collect(),
        body: b64().encode(&bytes),
    };
    axum::Json(answer).into_response()
}

fn ensure_trailing_slash(path: &str, operation: Operation) -> String {
    if operation == Operation::List && !path.ends_with('/') && !path.is_empty() {
        format!("{path}/")
    } else {
        path.to_string()
    }
}

/// A request's data: its JSON body (`None` for a raw upload, which has no fields), and for
/// reads, lists and deletes its query parameters where the body does not set them, as Vault does.
pub(crate) fn request_data(
    operation: Operation,
    query: &BTreeMap<String, String>,
    body: Option<&[u8]>,
) -> Result<Map<String, Value>, Error> {
    let mut data = match body {
        Some(bytes) => parse_body(bytes)?,
        None => Map::new(),
    };
    if matches!(
        operation,
        Operation::Read | Operation::List | Operation::Delete
    ) {
        for (k, v) in query {
            if k != "list" {
                data.entry(k.clone())
                    .or_insert_with(|| Value::String(v.clone()));
            }
        }
    }
    Ok(data)
}

/// Vault accepts an empty body, or a JSON object.
fn parse_body(bytes: &[u8]) -> Result<Map<String, Value>, Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(Value::Null) => Ok(Map::new()),
        Ok(_) => Err(Error::invalid(
            "failed to parse JSON input: the body must be a JSON object",
        )),
        Err(e) => Err(Error::invalid(format!("failed to parse JSON input: {e}"))),
    }
}

pub(crate) fn parse_query(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

/// The request path after `/v1/`, percent-decoded. A path that decodes to invalid UTF-8 or
/// holds a control character (NUL, CR, LF, ...) is refused: such a key could not be listed or
/// typed back, and lossy decoding would make distinct paths (`%fe`, `%ff`) name one key.
pub(crate) fn decode_path(raw: &str) -> Result<String, Error> {
    let bytes = percent_decode_bytes(raw);
    let path = String::from_utf8(bytes)
        .map_err(|_| Error::invalid("invalid request path: it is not valid UTF-8 once decoded"))?;
    if path.chars().any(char::is_control) {
        return Err(Error::invalid(
            "invalid request path: it contains a control character (NUL, CR, LF, ...)",
        ));
    }
    Ok(path)
}

fn percent_decode(s: &str) -> String {
    String::from_utf8_lossy(&percent_decode_bytes(s)).into_owned()
}

fn percent_decode_bytes(s: &str) -> Vec<u8> {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Routes whose `data` Vault also copies to the top level of the body.
fn injects_data(path: &str) -> bool {
    const EXACT: &[&str] = &[
        "sys/audit",
        "sys/auth",
        "sys/capabilities",
        "sys/capabilities-accessor",
        "sys/capabilities-self",
        "sys/key-status",
        "sys/mounts",
        "sys/policy",
        "sys/rekey/backup",
        "sys/remount",
        "sys/rotate",
        "sys/wrapping/wrap",
        "sys/config/cors",
    ];
    const PREFIX: &[&str] = &[
        "sys/audit/",
        "sys/audit-hash/",
        "sys/auth/",
        "sys/mounts/",
        "sys/policy/",
    ];
    let path = path.trim_end_matches('/');
    EXACT.contains(&path) || PREFIX.iter().any(|p| path.starts_with(p))
}

fn auth_json(auth: &Auth) -> Value {
    json!({
        "client_token": auth.client_token,
        "accessor": auth.accessor,
        "policies": auth.policies,
        "token_policies": auth.token_policies,
        "identity_policies": if auth.identity_policies.is_empty() { Value::Null } else { json!(auth.identity_policies) },
        "metadata": if auth.metadata.is_empty() { Value::Null } else { json!(auth.metadata) },
        "lease_duration": auth.lease_duration,
        "renewable": auth.renewable,
        "entity_id": auth.entity_id,
        "token_type": if auth.token_type.is_empty() { "service" } else { &auth.token_type },
        "orphan": auth.orphan,
        "mfa_requirement": Value::Null,
        "num_uses": auth.num_uses,
    })
}

/// `len` bytes of `file` from its start, read as they are sent (through a handle of its own:
/// the file's offset is shared with `file`, which nothing else reads).
fn file_body(file: &std::fs::File, len: u64) -> std::io::Result<axum::body::Body> {
    use std::io::Seek;
    use tokio::io::AsyncReadExt;
    let mut own = file.try_clone()?;
    own.rewind()?;
    let reader = tokio::fs::File::from_std(own).take(len);
    Ok(axum::body::Body::from_stream(
        tokio_util::io::ReaderStream::with_capacity(reader, 256 << 10),
    ))
}

/// The normal wrapper (and the injector variant) for a logical response.
fn logical_response(path: &str, resp: Response) -> HttpResponse {
    if let Some(raw) = resp.raw {
        let status = StatusCode::from_u16(resp.status.unwrap_or(200)).unwrap_or(StatusCode::OK);
        let body = match raw.body {
            RawContent::Bytes(bytes) => axum::body::Body::from(bytes),
            RawContent::File(file, len) => match file_body(&file, len) {
                Ok(body) => body,
                Err(e) => {
                    return error_response(&Error::internal(format!("sending the response: {e}")))
                }
            },
        };
        return (status, [(header::CONTENT_TYPE, raw.content_type)], body).into_response();
    }
    let has_content = resp.data.is_some() || resp.auth.is_some() || !resp.warnings.is_empty();
    let status = resp.status.unwrap_or(if has_content { 200 } else { 204 });
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    if !has_content {
        return status.into_response();
    }
    let lease = resp.lease.clone().unwrap_or_default();
    let mount_type = path.split('/').next().unwrap_or("").to_string();
    let mut body = json!({
        "request_id": uuid::Uuid::new_v4().to_string(),
        "lease_id": lease.lease_id,
        "renewable": lease.renewable,
        "lease_duration": lease.lease_duration,
        "data": resp.data.clone().map(Value::Object).unwrap_or(Value::Null),
        "wrap_info": Value::Null,
        "warnings": if resp.warnings.is_empty() { Value::Null } else { json!(resp.warnings) },
        "auth": resp.auth.as_ref().map(auth_json).unwrap_or(Value::Null),
        "mount_type": if mount_type == "sys" { "system".to_string() } else { String::new() },
    });
    if injects_data(path) {
        if let (Some(data), Some(top)) = (resp.data, body.as_object_mut()) {
            for (k, v) in data {
                top.entry(k).or_insert(v);
            }
        }
    }
    (status, axum::Json(body)).into_response()
}

/// The one place errors become HTTP responses: Vault's `{"errors":[...]}`.
pub fn error_response(err: &Error) -> HttpResponse {
    let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_server_error()
        && !matches!(
            err,
            Error::Sealed
                | Error::NoActiveNode
                | Error::Storage(crate::physical::StorageError::Sealed)
        )
    {
        tracing::error!(error = %err, "request failed");
    }
    let errors: Vec<String> = match err {
        Error::NotFound => Vec::new(),
        Error::Storage(e) => vec![public_storage_message(e)],
        other => vec![other.to_string()],
    };
    (status, axum::Json(json!({ "errors": errors }))).into_response()
}

/// What a client is told of a storage failure: what went wrong, never where. Storage keys hold
/// mount UUIDs and secret names (`logical/<uuid>/versions/...`); the log keeps the full error.
fn public_storage_message(err: &crate::physical::StorageError) -> String {
    use crate::physical::StorageError;
    match err {
        StorageError::Io(_) => "internal error: storage I/O failed; see the server log".into(),
        StorageError::Integrity { .. } => {
            "the stored value failed its integrity check; it was not returned".into()
        }
        StorageError::InvalidKey { reason, .. } => format!("invalid storage key: {reason}"),
        StorageError::TooLarge { size, limit, .. } => {
            format!("the value is {size} bytes, over the {limit}-byte limit")
        }
        StorageError::NoSpace {
            available, reserve, ..
        } => format!(
            "the server's data directory is full ({available} bytes free, under the {reserve} \
             bytes kept in reserve); writes are refused until space is freed there"
        ),
        StorageError::Sealed | StorageError::NotLeader { .. } => err.to_string(),
    }
}

/// A bare JSON body (the raw `sys/` handlers).
fn raw_json<T: serde::Serialize>(status: StatusCode, value: &T) -> HttpResponse {
    (status, axum::Json(value)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_paths_hide_token_ids() {
        for (path, want) in [
            (
                "/v1/auth/token/lookup/hvs.secret",
                "/v1/auth/token/lookup/...",
            ),
            ("/v1/auth/token/lookup-self", "/v1/auth/token/lookup-self"),
            ("/v1/auth/token/roles/", "/v1/auth/token/roles/"),
            ("/v1/secret/data/app", "/v1/secret/data/app"),
        ] {
            assert_eq!(loggable_path(path), want, "{path}");
        }
    }

    #[test]
    fn injector_routes() {
        for (path, want) in [
            ("sys/mounts", true),
            ("sys/mounts/secret", true),
            ("sys/policy/foo", true),
            ("sys/policies/acl/foo", false),
            ("sys/capabilities-self", true),
            ("sys/audit-hash/file", true),
            ("secret/data/x", false),
            ("sys/auth/userpass/tune", true),
        ] {
            assert_eq!(injects_data(path), want, "{path}");
        }
    }

    #[test]
    fn bodies() {
        assert!(parse_body(b"").unwrap().is_empty());
        assert!(parse_body(b"  \n").unwrap().is_empty());
        assert_eq!(parse_body(br#"{"a":1}"#).unwrap()["a"], 1);
        for bad in [&b"{"[..], b"[1,2]", b"\"x\"", b"{\"a\":"] {
            let err = parse_body(bad).unwrap_err();
            assert_eq!(err.status(), 400);
            assert!(
                err.to_string().starts_with("failed to parse JSON input"),
                "{err}"
            );
        }
    }

    #[test]
    fn query_and_percent_decoding() {
        let q = parse_query(Some("list=true&version=2&a%2Fb=c%20d"));
        assert_eq!(q["list"], "true");
        assert_eq!(q["version"], "2");
        assert_eq!(q["a/b"], "c d");
        assert_eq!(percent_decode("secret/data/a%20b"), "secret/data/a b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%e2%82%ac%zz\u{e9}%"), "\u{20ac}%zz\u{e9}%");
    }

    #[test]
    fn paths_refused() {
        assert_eq!(decode_path("secret/data/a%20b").unwrap(), "secret/data/a b");
        assert_eq!(
            decode_path("secret/data/%e2%82%ac").unwrap(),
            "secret/data/\u{20ac}"
        );
        for bad in [
            "secret/data/a%00b",
            "secret/data/a%0d%0ab",
            "secret/data/a%0a",
            "secret/data/%fe",
            "secret/data/%ff",
            "secret/data/%7f",
        ] {
            let err = decode_path(bad).unwrap_err();
            assert_eq!(err.status(), 400, "{bad}");
        }
    }

    /// Vault clients retry a 503; a write that reached a follower (or a
    /// leader handing over) must answer one, saying what to do.
    #[test]
    fn not_leader_is_a_retryable_503() {
        use crate::physical::StorageError;
        for leader in [None, Some("node-1 at https://127.0.0.2:8200".to_string())] {
            let err = Error::Storage(StorageError::NotLeader {
                leader: leader.clone(),
            });
            assert_eq!(
                error_response(&err).status(),
                StatusCode::SERVICE_UNAVAILABLE
            );
            let message = public_storage_message(&StorageError::NotLeader { leader });
            assert!(
                message.starts_with("leadership is changing") && message.contains("retry"),
                "{message}"
            );
        }
    }
}
