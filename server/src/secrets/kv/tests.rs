//! Behaviour tests for the kv engine, written as scripts of requests and the
//! answers Vault gives to them. A step reads
//! `OP "mount-relative path" {json body} => expectation`, where the
//! expectation is `ok {subset of data}` (200), `gone {subset of data}` (404
//! with a body), `no_content()` (204) or `err(status, "part of the message")`.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{json, Value};

use super::KvBackend;
use crate::error::Result;
use crate::logical::{MountInfo, Operation, Response, TestMount};

use Operation::{Create as C, Delete as D, List as L, Patch as P, Read as R, Update as W};

/// A mount with its own storage and a clock the test moves by hand.
struct Mount {
    backend: KvBackend,
    mount: TestMount,
    now: Arc<Mutex<DateTime<Utc>>>,
}

impl Mount {
    fn new(version: u8) -> Self {
        let start = Utc.with_ymd_and_hms(2018, 3, 22, 2, 24, 6).unwrap()
            + Duration::nanoseconds(945_319_214);
        let now = Arc::new(Mutex::new(start));
        let clock = now.clone();
        Mount {
            backend: KvBackend::with_clock(version, Arc::new(move || *clock.lock().unwrap())),
            mount: TestMount::new(MountInfo {
                path: "secret/".into(),
                kind: "kv".into(),
                default_lease_ttl: std::time::Duration::from_secs(768 * 3600),
                ..MountInfo::default()
            }),
            now,
        }
    }

    fn advance(&self, secs: i64) {
        *self.now.lock().unwrap() += Duration::seconds(secs);
    }

    async fn call(&self, op: Operation, path: &str, body: Value) -> Result<Response> {
        self.mount.handle(&self.backend, op, path, body).await
    }

    async fn exists(&self, op: Operation, path: &str) -> Option<bool> {
        self.mount.exists(&self.backend, op, path).await.unwrap()
    }

    /// `data` of a request that must succeed.
    async fn data(&self, op: Operation, path: &str, body: Value) -> Value {
        let resp = self.call(op, path, body).await.unwrap();
        resp.data.map(Value::Object).unwrap_or(Value::Null)
    }

    /// Every key the engine has stored, for checking what really left storage.
    async fn stored(&self) -> Vec<String> {
        self.mount.storage.list_recursive("").await.unwrap()
    }

    /// Runs the steps in order; the first that does not answer as expected
    /// fails the test, naming its index.
    async fn check(&self, steps: Vec<Step>) {
        for (i, (op, path, body, expect)) in steps.into_iter().enumerate() {
            let got = self.call(op, path, body.clone()).await;
            let context = format!("step {i}: {op:?} {path} {body}");
            match (expect, got) {
                (Expect::Ok(status, want), Ok(resp)) => {
                    let sent = resp
                        .status
                        .unwrap_or(if resp.data.is_some() { 200 } else { 204 });
                    assert_eq!(sent, status, "{context}: status");
                    let data = resp.data.map(Value::Object).unwrap_or(Value::Null);
                    assert!(
                        subset(&data, &want),
                        "{context}: data\n  got:  {data}\n  want: {want}"
                    );
                }
                (Expect::Err(status, message), Err(err)) => {
                    assert_eq!(err.status(), status, "{context}: {err}");
                    assert!(
                        err.to_string().contains(message),
                        "{context}: error {err:?} should say {message:?}"
                    );
                }
                (Expect::Ok(..), Err(err)) => panic!("{context}: unexpected error {err:?}"),
                (Expect::Err(..), Ok(resp)) => {
                    panic!("{context}: expected an error, got {:?}", resp.data)
                }
            }
        }
    }
}

type Step = (Operation, &'static str, Value, Expect);

enum Expect {
    /// Status the HTTP layer sends, and a subset of `data` (`null`: no data).
    Ok(u16, Value),
    /// Status of the error, and part of its message.
    Err(u16, &'static str),
}

/// A script of [`Step`]s; see the module doc for the row syntax.
macro_rules! steps {
    ($($op:ident $path:literal $body:tt => $kind:ident $arg:tt),* $(,)?) => {
        vec![$(($op, $path, json!($body), expect!($kind $arg))),*]
    };
}

macro_rules! expect {
    (ok $want:tt) => {
        Expect::Ok(200, json!($want))
    };
    (gone $want:tt) => {
        Expect::Ok(404, json!($want))
    };
    (no_content ()) => {
        Expect::Ok(204, Value::Null)
    };
    (err ($status:literal, $message:literal)) => {
        Expect::Err($status, $message)
    };
}

/// Whether `actual` holds everything in `expected`. In `expected`, the
/// string `"<time>"` stands for any non-empty timestamp.
fn subset(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::String(s), Value::String(want)) if want == "<time>" => {
            DateTime::parse_from_rfc3339(s).is_ok() && s.ends_with('Z')
        }
        (Value::Object(got), Value::Object(want)) => want
            .iter()
            .all(|(k, v)| got.get(k).is_some_and(|g| subset(g, v))),
        (Value::Array(got), Value::Array(want)) => {
            got.len() == want.len() && got.iter().zip(want).all(|(g, w)| subset(g, w))
        }
        _ => actual == expected,
    }
}

#[tokio::test]
async fn v2_write_read_versions_and_cas() {
    let kv = Mount::new(2);
    kv.check(steps![
        R "data/app/db" {} => err(404, "not found"),
        W "data/app/db" {"data": {"pw": "one"}} => ok {
            "version": 1, "created_time": "2018-03-22T02:24:06.945319214Z",
            "deletion_time": "", "destroyed": false, "custom_metadata": null,
        },
        W "data/app/db" {"data": {"pw": "two"}} => ok {"version": 2},
        C "data/app/db" {"data": {"pw": "three", "n": 3}} => ok {"version": 3},
        R "data/app/db" {} => ok {
            "data": {"pw": "three", "n": 3},
            "metadata": {"version": 3, "created_time": "<time>", "deletion_time": "",
                         "destroyed": false, "custom_metadata": null},
        },
        R "data/app/db" {"version": "1"} => ok {"data": {"pw": "one"}, "metadata": {"version": 1}},
        R "data/app/db" {"version": 2} => ok {"data": {"pw": "two"}},
        R "data/app/db" {"version": 0} => ok {"metadata": {"version": 3}},
        R "data/app/db" {"version": 9} => err(404, "not found"),
        R "data/app/db" {"version": "x"} => err(400, "version"),
        // Check-and-set.
        W "data/app/db" {"data": {"pw": "x"}, "options": {"cas": 2}} => err(400, "check-and-set parameter did not match the current version"),
        W "data/app/db" {"data": {"pw": "x"}, "options": {"cas": 0}} => err(400, "did not match"),
        W "data/app/db" {"data": {"pw": "x"}, "options": {"cas": "nope"}} => err(400, "error parsing check-and-set parameter"),
        W "data/app/db" {"data": {"pw": "four"}, "options": {"cas": 3}} => ok {"version": 4},
        W "data/app/new" {"data": {"k": "v"}, "options": {"cas": 0}} => ok {"version": 1},
        W "data/app/new" {"data": {"k": "v"}, "options": {"cas": 0}} => err(400, "did not match"),
        W "data/app/new" {"data": {"k": "v"}, "options": {"cas": "1"}} => ok {"version": 2},
        // Bodies Vault refuses.
        W "data/app/db" {"options": {}} => err(400, "no data provided"),
        W "data/app/db" {"data": null} => err(400, "no data provided"),
        W "data/app/db" {"data": "flat"} => err(400, "data"),
        W "data/app/db" {"data": {}, "options": 1} => err(400, "options"),
    ])
    .await;
}

/// Concurrent writes to one key share transactions (`v2::queue`): each still gets a version of
/// its own, in some order, with its own data; of concurrent `cas: 0` writes exactly one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_concurrent_writes_to_one_key_each_get_their_own_version() {
    const WRITES: u64 = 40;
    let kv = Arc::new(Mount::new(2));
    // Every version kept, so each can be read back.
    kv.data(W, "config", json!({"max_versions": WRITES})).await;
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..WRITES {
        let kv = kv.clone();
        writes.spawn(async move {
            let data = kv.data(W, "data/busy", json!({"data": {"i": i}})).await;
            (i, data["version"].as_u64().unwrap())
        });
    }
    let mut versions = Vec::new();
    while let Some(done) = writes.join_next().await {
        let (i, version) = done.unwrap();
        let read = kv.data(R, "data/busy", json!({"version": version})).await;
        assert_eq!(read["data"], json!({"i": i}), "version {version}");
        versions.push(version);
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=WRITES).collect::<Vec<_>>());
    let meta = kv.data(R, "metadata/busy", json!({})).await;
    assert_eq!(meta["current_version"], json!(WRITES));

    let mut creates = tokio::task::JoinSet::new();
    for i in 0..8 {
        let kv = kv.clone();
        creates.spawn(async move {
            kv.call(
                W,
                "data/once",
                json!({"data": {"i": i}, "options": {"cas": 0}}),
            )
            .await
            .map(|_| ())
            .map_err(|e| e.status())
        });
    }
    let mut outcomes = Vec::new();
    while let Some(done) = creates.join_next().await {
        outcomes.push(done.unwrap());
    }
    assert_eq!(
        outcomes.iter().filter(|o| o.is_ok()).count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes.iter().all(|o| *o == Ok(()) || *o == Err(400)),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn v2_cas_required_by_mount_or_by_key() {
    let kv = Mount::new(2);
    kv.check(steps![
        W "config" {"cas_required": true} => no_content(),
        W "data/a" {"data": {"k": 1}} => err(400, "check-and-set parameter required for this call"),
        W "data/a" {"data": {"k": 1}, "options": {"cas": 0}} => ok {"version": 1},
        P "data/a" {"data": {"k": 2}} => err(400, "check-and-set parameter required"),
        P "data/a" {"data": {"k": 2}, "options": {"cas": 1}} => ok {"version": 2},
        // A key cannot opt out of what the mount requires.
        W "metadata/a" {"cas_required": false} => no_content(),
        W "data/a" {"data": {"k": 3}} => err(400, "required"),
        W "config" {"cas_required": "false"} => no_content(),
        W "data/a" {"data": {"k": 3}} => ok {"version": 3},
        // Now required by the key alone.
        W "metadata/a" {"cas_required": true} => no_content(),
        W "data/a" {"data": {"k": 4}} => err(400, "required"),
        W "data/a" {"data": {"k": 4}, "options": {"cas": 3}} => ok {"version": 4},
        W "data/b" {"data": {"k": 1}} => ok {"version": 1},
    ])
    .await;

    kv.call(W, "config", json!({"cas_required": true}))
        .await
        .unwrap();
    let resp = kv
        .call(W, "metadata/a", json!({"cas_required": false}))
        .await
        .unwrap();
    assert_eq!(
        resp.warnings,
        ["\"cas_required\" set to false, but is mandated by backend config. This value will be ignored."]
    );
}

#[tokio::test]
async fn v2_patch_merges_like_rfc7386() {
    let kv = Mount::new(2);
    kv.check(steps![
        P "data/p" {"data": {"a": 1}} => err(404, "not found"),
        W "data/p" {"data": {"a": 1, "gone": true, "nested": {"x": 1, "y": 2}}} => ok {"version": 1},
        P "data/p" {"data": {"b": 2, "gone": null, "nested": {"y": null, "z": 3}}} => ok {"version": 2},
        R "data/p" {} => ok {"data": {"a": 1, "b": 2, "nested": {"x": 1, "z": 3}}},
        P "data/p" {} => err(400, "no data provided"),
        P "data/p" {"data": {"a": 5}, "options": {"cas": 1}} => err(400, "did not match"),
        P "data/p" {"data": {"a": 5}, "options": {"cas": 2}} => ok {"version": 3},
        R "data/p" {"version": 1} => ok {"data": {"a": 1, "gone": true}},
        // A deleted latest version cannot be patched: 404 with its metadata.
        D "data/p" {} => no_content(),
        P "data/p" {"data": {"a": 6}} => gone {"version": 3, "deletion_time": "<time>", "destroyed": false},
    ])
    .await;
    let read = kv.data(R, "data/p", json!({"version": 2})).await;
    assert!(read["data"].get("gone").is_none(), "null removed the key");
}

#[tokio::test]
async fn v2_delete_undelete_destroy() {
    let kv = Mount::new(2);
    for n in 1..=3 {
        kv.call(W, "data/s", json!({"data": {"n": n}}))
            .await
            .unwrap();
    }
    kv.check(steps![
        D "data/s" {} => no_content(),
        R "data/s" {} => gone {
            "data": null,
            "metadata": {"version": 3, "deletion_time": "2018-03-22T02:24:06.945319214Z", "destroyed": false},
        },
        R "data/s" {"version": 2} => ok {"data": {"n": 2}},
        // Deleting what is already deleted, or a missing secret, is a no-op.
        D "data/s" {} => no_content(),
        D "data/nothing" {} => no_content(),
        W "undelete/s" {"versions": [3]} => no_content(),
        R "data/s" {} => ok {"data": {"n": 3}, "metadata": {"deletion_time": ""}},
        W "delete/s" {"versions": [1, 2]} => no_content(),
        R "data/s" {"version": 1} => gone {"data": null},
        R "data/s" {"version": 2} => gone {"data": null},
        R "data/s" {} => ok {"data": {"n": 3}},
        W "undelete/s" {"versions": "1"} => no_content(),
        R "data/s" {"version": 1} => ok {"data": {"n": 1}},
        W "destroy/s" {"versions": [2, 3]} => no_content(),
        R "data/s" {} => gone {"data": null, "metadata": {"version": 3, "destroyed": true, "deletion_time": ""}},
        R "data/s" {"version": 2} => gone {"metadata": {"destroyed": true, "deletion_time": "<time>"}},
        // Destroyed stays destroyed.
        W "undelete/s" {"versions": [3]} => no_content(),
        R "data/s" {} => gone {"metadata": {"destroyed": true}},
        D "data/s" {} => no_content(),
        R "metadata/s" {} => ok {"versions": {
            "1": {"destroyed": false, "deletion_time": ""},
            "2": {"destroyed": true},
            "3": {"destroyed": true, "deletion_time": ""},
        }},
        W "delete/s" {} => err(400, "No version number provided"),
        W "undelete/s" {"versions": []} => err(400, "No version number provided"),
        W "destroy/s" {} => err(400, "no version number provided"),
        W "destroy/s" {"versions": ["x"]} => err(400, "versions"),
        W "destroy/nothing" {"versions": [1]} => no_content(),
    ])
    .await;
    assert_eq!(
        kv.stored().await,
        ["metadata/s", "versions/s/1"],
        "destroyed versions' data is gone from storage"
    );
}

#[tokio::test]
async fn v2_metadata_read_write_patch_delete() {
    let kv = Mount::new(2);
    kv.call(W, "data/m", json!({"data": {"k": "v"}}))
        .await
        .unwrap();
    kv.advance(5);
    kv.call(W, "data/m", json!({"data": {"k": "w"}}))
        .await
        .unwrap();
    kv.check(steps![
        R "metadata/m" {} => ok {
            "cas_required": false,
            "created_time": "2018-03-22T02:24:06.945319214Z",
            "current_version": 2,
            "custom_metadata": null,
            "delete_version_after": "0s",
            "max_versions": 0,
            "oldest_version": 0,
            "updated_time": "2018-03-22T02:24:11.945319214Z",
            "versions": {
                "1": {"created_time": "2018-03-22T02:24:06.945319214Z", "deletion_time": "", "destroyed": false},
                "2": {"created_time": "2018-03-22T02:24:11.945319214Z", "deletion_time": "", "destroyed": false},
            },
        },
        W "metadata/m" {"max_versions": 5, "delete_version_after": "1h30m",
                        "custom_metadata": {"owner": "ops", "tier": 1}} => no_content(),
        R "metadata/m" {} => ok {
            "max_versions": 5, "delete_version_after": "1h30m0s",
            "custom_metadata": {"owner": "ops", "tier": "1"},
        },
        // custom_metadata shows on every version read and write.
        R "data/m" {} => ok {"metadata": {"custom_metadata": {"owner": "ops", "tier": "1"}}},
        P "metadata/m" {"custom_metadata": {"tier": null, "team": "infra"}, "cas_required": true} => no_content(),
        R "metadata/m" {} => ok {
            "cas_required": true, "max_versions": 5,
            "custom_metadata": {"owner": "ops", "team": "infra"},
        },
        P "metadata/none" {"max_versions": 1} => err(404, "not found"),
        // A write with no known field does nothing, not even create metadata.
        W "metadata/empty" {"unknown": 1} => no_content(),
        R "metadata/empty" {} => err(404, "not found"),
        // Metadata alone makes a secret with no versions.
        W "metadata/fresh" {"max_versions": 3} => no_content(),
        R "metadata/fresh" {} => ok {"current_version": 0, "versions": {}, "created_time": "<time>"},
        R "data/fresh" {} => err(404, "not found"),
        W "data/fresh" {"data": {"a": 1}, "options": {"cas": 0}} => ok {"version": 1},
        // What Vault refuses.
        W "metadata/m" {"custom_metadata": {"": "x"}} => err(400, "custom_metadata validation failed: length of key \"\" is 0"),
        W "metadata/m" {"custom_metadata": {"a": "", "b": "\u{7}"}} => err(400, "2 errors occurred"),
        W "metadata/m" {"custom_metadata": {"a": {"b": 1}}} => err(400, "custom_metadata validation failed"),
        W "metadata/m" {"max_versions": -1} => err(400, "max_versions"),
        W "metadata/m" {"delete_version_after": "-1s"} => err(400, "delete_version_after"),
        W "metadata/" {"max_versions": 1} => err(400, "missing path"),
        R "metadata/" {} => err(404, "not found"),
        // Delete removes the secret entirely.
        D "metadata/m" {} => no_content(),
        R "metadata/m" {} => err(404, "not found"),
        R "data/m" {} => err(404, "not found"),
        D "metadata/m" {} => no_content(),
    ])
    .await;
    let too_many: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    let err = kv
        .call(W, "metadata/x", json!({"custom_metadata": too_many}))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("payload must contain at most 64 keys, provided 65"),
        "{err}"
    );
    let stored = kv.stored().await;
    assert!(
        !stored
            .iter()
            .any(|k| k.ends_with("/m") || k.contains("/m/")),
        "metadata delete removed every version: {stored:?}"
    );
}

#[tokio::test]
async fn v2_max_versions_prunes_oldest() {
    let kv = Mount::new(2);
    let write = |n: u64| kv.call(W, "data/d", json!({"data": {"n": n}}));
    // Unset everywhere: Vault keeps 10, and oldest_version stays 0 until the
    // window first fills.
    for n in 1..=9 {
        write(n).await.unwrap();
    }
    assert_eq!(
        kv.data(R, "metadata/d", json!({})).await["oldest_version"],
        0
    );
    write(10).await.unwrap();
    let meta = kv.data(R, "metadata/d", json!({})).await;
    assert_eq!(meta["oldest_version"], 1);
    assert_eq!(meta["versions"].as_object().unwrap().len(), 10);
    write(11).await.unwrap();
    let meta = kv.data(R, "metadata/d", json!({})).await;
    assert_eq!(meta["oldest_version"], 2);
    assert_eq!(meta["versions"].as_object().unwrap().len(), 10);

    // Lowering the key's max prunes on the next write, data and history both.
    kv.call(W, "metadata/d", json!({"max_versions": 2}))
        .await
        .unwrap();
    write(12).await.unwrap();
    let meta = kv.data(R, "metadata/d", json!({})).await;
    assert_eq!(meta["oldest_version"], 11);
    assert_eq!(meta["current_version"], 12);
    let versions: Vec<&String> = meta["versions"].as_object().unwrap().keys().collect();
    assert_eq!(versions, ["11", "12"]);
    assert_eq!(
        kv.stored().await,
        ["metadata/d", "versions/d/11", "versions/d/12"]
    );
    kv.check(steps![
        R "data/d" {"version": 10} => err(404, "not found"),
        R "data/d" {"version": 11} => ok {"data": {"n": 11}},
    ])
    .await;

    // The effective limit is the larger of the key's and the mount's.
    kv.call(W, "config", json!({"max_versions": 3}))
        .await
        .unwrap();
    for n in 13..=15 {
        write(n).await.unwrap();
    }
    let meta = kv.data(R, "metadata/d", json!({})).await;
    assert_eq!(meta["oldest_version"], 13);
    assert_eq!(meta["versions"].as_object().unwrap().len(), 3);
    assert_eq!(
        kv.stored().await.len(),
        1 + 1 + 3,
        "config, metadata, 3 versions"
    );
}

#[tokio::test]
async fn v2_delete_version_after() {
    let kv = Mount::new(2);
    kv.check(steps![
        R "config" {} => ok {"cas_required": false, "delete_version_after": "0s", "max_versions": 0},
        W "config" {"delete_version_after": "10s", "max_versions": 4} => no_content(),
        R "config" {} => ok {"delete_version_after": "10s", "max_versions": 4},
        W "config" {} => no_content(),
        W "data/t" {"data": {"k": 1}} => ok {"version": 1, "deletion_time": "2018-03-22T02:24:16.945319214Z"},
        R "data/t" {} => ok {"data": {"k": 1}, "metadata": {"deletion_time": "2018-03-22T02:24:16.945319214Z"}},
    ])
    .await;
    kv.advance(11);
    kv.check(steps![
        R "data/t" {} => gone {"data": null, "metadata": {"version": 1, "deletion_time": "2018-03-22T02:24:16.945319214Z"}},
        P "data/t" {"data": {"k": 2}} => gone {"version": 1},
        // Undelete restarts the clock from now.
        W "undelete/t" {"versions": [1]} => no_content(),
        R "data/t" {} => ok {"metadata": {"deletion_time": "2018-03-22T02:24:27.945319214Z"}},
        // The smaller of the key's and the mount's setting wins.
        W "metadata/t" {"delete_version_after": 3} => no_content(),
        R "metadata/t" {} => ok {"delete_version_after": "3s"},
        W "data/t" {"data": {"k": 3}} => ok {"version": 2, "deletion_time": "2018-03-22T02:24:20.945319214Z"},
        // A negative mount setting turns it off for every key.
        W "config" {"delete_version_after": -1} => no_content(),
        R "config" {} => ok {"delete_version_after": "-1s"},
        W "data/t" {"data": {"k": 4}} => ok {"version": 3, "deletion_time": ""},
        W "config" {"delete_version_after": "0s", "max_versions": "x"} => err(400, "max_versions"),
    ])
    .await;
    kv.advance(3600);
    kv.check(steps![
        R "data/t" {"version": 2} => gone {"data": null},
        R "data/t" {} => ok {"data": {"k": 4}},
    ])
    .await;
}

#[tokio::test]
async fn v2_list_folders() {
    let kv = Mount::new(2);
    for path in ["data/a", "data/b/c", "data/b/d/e", "data/b/d/f", "data/z"] {
        kv.call(W, path, json!({"data": {"k": 1}})).await.unwrap();
    }
    kv.call(D, "data/z", json!({})).await.unwrap();
    kv.check(steps![
        L "metadata/" {} => ok {"keys": ["a", "b/", "z"]},
        L "metadata" {} => ok {"keys": ["a", "b/", "z"]},
        L "metadata/b/" {} => ok {"keys": ["c", "d/"]},
        L "metadata/b" {} => ok {"keys": ["c", "d/"]},
        L "metadata/b/d/" {} => ok {"keys": ["e", "f"]},
        L "metadata/" {"exclude_deleted": true} => ok {"keys": ["a", "b/"]},
        L "metadata/nothing/" {} => err(404, "not found"),
        L "metadata/../" {} => err(400, "invalid path"),
    ])
    .await;
}

#[tokio::test]
async fn v2_subkeys() {
    let kv = Mount::new(2);
    let secret = json!({"foo": "abc", "bar": {"baz": "def", "qux": {"x": 1}}, "empty": {}});
    kv.call(W, "data/s", json!({ "data": secret }))
        .await
        .unwrap();
    kv.check(steps![
        R "subkeys/s" {} => ok {
            "subkeys": {"foo": null, "bar": {"baz": null, "qux": {"x": null}}, "empty": null},
            "metadata": {"version": 1, "destroyed": false},
        },
        R "subkeys/s" {"depth": 1} => ok {"subkeys": {"foo": null, "bar": null, "empty": null}},
        R "subkeys/s" {"depth": "2"} => ok {"subkeys": {"bar": {"baz": null, "qux": null}}},
        R "subkeys/s" {"version": 2} => err(404, "not found"),
        R "subkeys/none" {} => err(404, "not found"),
        W "subkeys/s" {} => err(405, "unsupported operation"),
        D "data/s" {} => no_content(),
        R "subkeys/s" {} => gone {"subkeys": null, "metadata": {"deletion_time": "<time>"}},
    ])
    .await;
}

#[tokio::test]
async fn v2_unknown_paths_and_verbs() {
    let kv = Mount::new(2);
    kv.call(W, "data/a", json!({"data": {"k": 1}}))
        .await
        .unwrap();
    kv.check(steps![
        R "foo" {} => err(404, "no handler for route \"secret/foo\""),
        W "a/b" {"k": 1} => err(404, "no handler for route"),
        R "data" {} => err(404, "no handler for route"),
        R "data/" {} => err(404, "no handler for route"),
        W "data/dir/" {"data": {"k": 1}} => err(404, "no handler for route"),
        R "config/x" {} => err(404, "no handler for route"),
        L "data/a" {} => err(405, "unsupported operation"),
        D "config" {} => err(405, "unsupported operation"),
        P "config" {} => err(405, "unsupported operation"),
        R "destroy/a" {} => err(405, "unsupported operation"),
        D "delete/a" {} => err(405, "unsupported operation"),
        R "data/../a" {} => err(400, "invalid path"),
        W "data/x/../a" {"data": {"k": 1}} => err(400, "invalid path"),
        W "data/x//a" {"data": {"k": 1}} => err(400, "invalid path"),
        W "metadata/./a" {"max_versions": 1} => err(400, "invalid path"),
        W "destroy/../a" {"versions": [1]} => err(400, "invalid path"),
    ])
    .await;
}

#[tokio::test]
async fn v2_existence_checks() {
    let kv = Mount::new(2);
    kv.call(W, "data/a", json!({"data": {"k": 1}}))
        .await
        .unwrap();
    kv.call(W, "metadata/m", json!({"max_versions": 2}))
        .await
        .unwrap();
    let cases = [
        ("data/a", Some(true)),
        ("metadata/a", Some(true)),
        ("data/m", Some(true)),
        ("data/b", Some(false)),
        ("metadata/b", Some(false)),
        ("data/../a", Some(false)),
        ("config", None),
        ("destroy/a", None),
        ("delete/a", None),
    ];
    for (path, expected) in cases {
        assert_eq!(kv.exists(W, path).await, expected, "{path}");
    }
}

#[tokio::test]
async fn v1_crud_and_list() {
    let kv = Mount::new(1);
    kv.check(steps![
        R "app/db" {} => err(404, "not found"),
        C "app/db" {"user": "u", "pw": "p", "port": 5432, "tags": ["a"], "nested": {"x": null}} => no_content(),
        R "app/db" {} => ok {"user": "u", "pw": "p", "port": 5432, "tags": ["a"], "nested": {"x": null}},
        W "app/db" {"pw": "q"} => no_content(),
        R "app/db" {} => ok {"pw": "q"},
        W "app/cache" {"k": "v"} => no_content(),
        W "app/deep/one" {"k": "v"} => no_content(),
        W "top" {"k": "v"} => no_content(),
        L "" {} => ok {"keys": ["app/", "top"]},
        L "app/" {} => ok {"keys": ["cache", "db", "deep/"]},
        L "app" {} => ok {"keys": ["cache", "db", "deep/"]},
        L "none/" {} => err(404, "not found"),
        W "app/empty" {} => err(400, "missing data fields"),
        W "" {"k": "v"} => err(400, "missing path"),
        W "app/../x" {"k": "v"} => err(400, "invalid path"),
        W "dir/" {"k": "v"} => err(400, "invalid path"),
        P "app/db" {"k": "v"} => err(405, "unsupported operation"),
        D "app/db" {} => no_content(),
        R "app/db" {} => err(404, "not found"),
        D "app/db" {} => no_content(),
    ])
    .await;
    // The stored map is returned exactly: v1 has no `data`/`metadata` wrapper.
    let resp = kv.call(R, "top", json!({})).await.unwrap();
    assert_eq!(Value::Object(resp.data.unwrap()), json!({"k": "v"}));
    assert_eq!(resp.lease.unwrap().lease_duration, 768 * 3600);
    kv.call(W, "ttl", json!({"k": "v", "ttl": "1h"}))
        .await
        .unwrap();
    let resp = kv.call(R, "ttl", json!({})).await.unwrap();
    assert_eq!(resp.lease.unwrap().lease_duration, 3600);

    assert_eq!(kv.exists(W, "top").await, Some(true));
    assert_eq!(kv.exists(W, "app/db").await, Some(false));
    assert_eq!(kv.backend.version(), 1);
}
