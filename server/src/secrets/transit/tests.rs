//! Behaviour tests for the transit engine: requests against one mount with an
//! in-memory store, checked against the answers Vault gives. Most tests are
//! tables of cases run through a small helper.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

use super::named_key::{parse_ciphertext, CryptoError, KeyType};
use super::{Route, TransitBackend};
use crate::error::{Error, Result};
use crate::logical::{MountInfo, Operation, Response, StorageView, TestMount};

use Operation::{Create as C, Delete as D, List as L, Read as R, Update as W};

struct Mount {
    backend: TransitBackend,
    mount: TestMount,
    storage: StorageView,
}

impl Mount {
    fn new() -> Self {
        let mount = TestMount::new(MountInfo {
            path: "transit/".into(),
            kind: "transit".into(),
            ..MountInfo::default()
        });
        Mount {
            backend: TransitBackend::new(),
            storage: mount.storage.clone(),
            mount,
        }
    }

    async fn call(&self, op: Operation, path: &str, body: Value) -> Result<Response> {
        self.mount.handle(&self.backend, op, path, body).await
    }

    async fn exists(&self, path: &str) -> Option<bool> {
        self.mount.exists(&self.backend, W, path).await.unwrap()
    }

    /// `data` of a request that must succeed with 200.
    async fn ok(&self, op: Operation, path: &str, body: Value) -> Value {
        let resp = self
            .call(op, path, body.clone())
            .await
            .unwrap_or_else(|e| panic!("{op:?} {path} {body}: {e}"));
        assert_eq!(resp.status, None, "{op:?} {path}: status");
        resp.data.map(Value::Object).unwrap_or(Value::Null)
    }

    /// The message of a request that must fail with `status`.
    async fn err(&self, op: Operation, path: &str, body: Value, status: u16) -> String {
        match self.call(op, path, body.clone()).await {
            Ok(resp) => panic!(
                "{op:?} {path} {body}: expected {status}, got {:?}",
                resp.data
            ),
            Err(e) => {
                assert_eq!(e.status(), status, "{op:?} {path} {body}: {e}");
                e.to_string()
            }
        }
    }

    async fn encrypt(&self, key: &str, plaintext: &[u8]) -> String {
        let data = self
            .ok(
                W,
                &format!("encrypt/{key}"),
                json!({"plaintext": b64(plaintext)}),
            )
            .await;
        data["ciphertext"].as_str().unwrap().to_string()
    }

    async fn decrypt(&self, key: &str, ciphertext: &str) -> Result<Vec<u8>> {
        let resp = self
            .call(
                W,
                &format!("decrypt/{key}"),
                json!({"ciphertext": ciphertext}),
            )
            .await?;
        let data = resp.data.unwrap();
        Ok(B64.decode(data["plaintext"].as_str().unwrap()).unwrap())
    }
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

fn assert_contains(haystack: &str, needle: &str) {
    assert!(haystack.contains(needle), "{haystack:?} lacks {needle:?}");
}

#[tokio::test]
async fn round_trips_for_every_key_type() {
    let m = Mount::new();
    let plaintexts: [&[u8]; 4] = [b"", b"hi", &[0u8; 1], &[0xa5; 4096]];
    for kind in KeyType::ALL {
        let name = format!("k-{}", kind.as_str());
        let created = m
            .ok(W, &format!("keys/{name}"), json!({"type": kind.as_str()}))
            .await;
        assert_eq!(created["type"], kind.as_str());
        for plaintext in plaintexts {
            let ciphertext = m.encrypt(&name, plaintext).await;
            let (version, payload) = parse_ciphertext(&ciphertext).unwrap();
            assert_eq!(version, 1, "{ciphertext}");
            assert!(ciphertext.starts_with("vault:v1:"), "{ciphertext}");
            // nonce 12 || ciphertext || tag 16
            assert_eq!(
                B64.decode(payload).unwrap().len(),
                12 + plaintext.len() + 16
            );
            assert_eq!(m.decrypt(&name, &ciphertext).await.unwrap(), plaintext);
            // A fresh nonce every time: the same plaintext never seals the same.
            assert_ne!(m.encrypt(&name, plaintext).await, ciphertext);
        }
    }
}

#[tokio::test]
async fn associated_data_is_authenticated() {
    let m = Mount::new();
    let sealed = m
        .ok(
            C,
            "encrypt/aad",
            json!({"plaintext": b64(b"secret"), "associated_data": b64(b"row-7")}),
        )
        .await;
    let ciphertext = sealed["ciphertext"].as_str().unwrap();
    let opened = m
        .ok(
            W,
            "decrypt/aad",
            json!({"ciphertext": ciphertext, "associated_data": b64(b"row-7")}),
        )
        .await;
    assert_eq!(opened["plaintext"], b64(b"secret"));
    for aad in [json!(b64(b"row-8")), Value::Null] {
        let msg = m
            .err(
                W,
                "decrypt/aad",
                json!({"ciphertext": ciphertext, "associated_data": aad}),
                400,
            )
            .await;
        assert_eq!(msg, "cipher: message authentication failed");
    }
}

#[tokio::test]
async fn rotation_adds_versions_and_old_ciphertexts_still_decrypt() {
    let m = Mount::new();
    m.ok(W, "keys/app", json!({})).await;
    let v1 = m.encrypt("app", b"one").await;
    let rotated = m.ok(W, "keys/app/rotate", json!({})).await;
    assert_eq!(rotated["latest_version"], 2);
    m.ok(W, "keys/app/rotate", json!({})).await;
    let v3 = m.encrypt("app", b"three").await;
    assert!(v3.starts_with("vault:v3:"), "{v3}");
    assert_eq!(m.decrypt("app", &v1).await.unwrap(), b"one");
    assert_eq!(m.decrypt("app", &v3).await.unwrap(), b"three");

    let read = m.ok(R, "keys/app", json!({})).await;
    assert_eq!(read["latest_version"], 3);
    let keys = read["keys"].as_object().unwrap();
    assert_eq!(keys.keys().collect::<Vec<_>>(), ["1", "2", "3"]);
    assert!(keys.values().all(Value::is_i64), "{keys:?}");

    // key_version picks the version to encrypt with, within Vault's bounds.
    for (requested, want) in [(json!(1), 1), (json!("2"), 2), (json!(0), 3)] {
        let data = m
            .ok(
                W,
                "encrypt/app",
                json!({"plaintext": b64(b"x"), "key_version": requested}),
            )
            .await;
        assert_eq!(data["key_version"], want);
    }
    let cases = [
        (
            json!(4),
            "requested version for encryption is higher than the latest key version",
        ),
        (json!(-1), "requested version for encryption is negative"),
    ];
    for (requested, want) in cases {
        let msg = m
            .err(
                W,
                "encrypt/app",
                json!({"plaintext": b64(b"x"), "key_version": requested}),
                400,
            )
            .await;
        assert_eq!(msg, want);
    }

    // Rewrap moves an old ciphertext to the latest version, or to key_version.
    let rewrapped = m.ok(W, "rewrap/app", json!({"ciphertext": v1})).await;
    assert_eq!(rewrapped["key_version"], 3);
    let new = rewrapped["ciphertext"].as_str().unwrap();
    assert!(new.starts_with("vault:v3:"));
    assert_eq!(m.decrypt("app", new).await.unwrap(), b"one");
    let to_v2 = m
        .ok(W, "rewrap/app", json!({"ciphertext": v1, "key_version": 2}))
        .await;
    assert!(to_v2["ciphertext"]
        .as_str()
        .unwrap()
        .starts_with("vault:v2:"));
}

#[tokio::test]
async fn min_decryption_and_encryption_versions() {
    let m = Mount::new();
    m.ok(W, "keys/k", json!({})).await;
    let v1 = m.encrypt("k", b"old").await;
    m.ok(W, "keys/k/rotate", json!({})).await;
    m.ok(W, "keys/k/rotate", json!({})).await;

    let configured = m
        .ok(W, "keys/k/config", json!({"min_decryption_version": 2}))
        .await;
    assert_eq!(configured["min_decryption_version"], 2);
    let msg = m.decrypt("k", &v1).await.unwrap_err().to_string();
    assert_eq!(
        msg,
        "ciphertext or signature version is disallowed by policy (too old)"
    );
    let err = m.err(W, "rewrap/k", json!({"ciphertext": v1}), 400).await;
    assert_contains(&err, "too old");
    // Vault lists only the versions a client may still decrypt with.
    let read = m.ok(R, "keys/k", json!({})).await;
    let versions: Vec<&String> = read["keys"].as_object().unwrap().keys().collect();
    assert_eq!(versions, ["2", "3"]);

    // Lowering it again brings the old ciphertext back: nothing was deleted.
    m.ok(W, "keys/k/config", json!({"min_decryption_version": 1}))
        .await;
    assert_eq!(m.decrypt("k", &v1).await.unwrap(), b"old");

    let zero = m
        .call(W, "keys/k/config", json!({"min_decryption_version": 0}))
        .await
        .unwrap();
    assert_eq!(zero.data.unwrap()["min_decryption_version"], 1);
    assert_contains(&zero.warnings[0], "forcing minimum to 1");

    let refused = [
        (json!({"min_decryption_version": 4}), "cannot set min decryption version of 4, latest key version is 3"),
        (json!({"min_decryption_version": -1}), "min decryption version cannot be negative"),
        (json!({"min_encryption_version": 9}), "cannot set min encryption version of 9, latest key version is 3"),
        (
            json!({"min_decryption_version": 3, "min_encryption_version": 2}),
            "min encryption version of 2 must be greater than or equal to min decryption version of 3",
        ),
        (json!({"auto_rotate_period": "10m"}), "auto rotate period must be 0 to disable or at least an hour"),
    ];
    for (body, want) in refused {
        let msg = m.err(W, "keys/k/config", body.clone(), 400).await;
        assert_contains(&msg, want);
    }
    // A refused config changed nothing.
    let read = m.ok(R, "keys/k", json!({})).await;
    assert_eq!(read["min_decryption_version"], 1);
    assert_eq!(read["min_encryption_version"], 0);

    m.ok(
        W,
        "keys/k/config",
        json!({"min_encryption_version": 2, "auto_rotate_period": "2h"}),
    )
    .await;
    let msg = m
        .err(
            W,
            "encrypt/k",
            json!({"plaintext": b64(b"x"), "key_version": 1}),
            400,
        )
        .await;
    assert_eq!(
        msg,
        "requested version for encryption is less than the minimum encryption key version"
    );
    let read = m.ok(R, "keys/k", json!({})).await;
    assert_eq!(read["auto_rotate_period"], 7200);
    assert_eq!(
        m.err(W, "keys/nope/config", json!({}), 400).await,
        "no existing key named nope could be found"
    );
}

/// Every way a ciphertext can be damaged ends in Vault's error, never in
/// garbage plaintext.
#[tokio::test]
async fn tampered_or_malformed_ciphertexts_are_refused() {
    let m = Mount::new();
    for kind in KeyType::ALL {
        let name = kind.as_str();
        m.ok(W, &format!("keys/{name}"), json!({"type": name}))
            .await;
        m.ok(W, &format!("keys/{name}/rotate"), json!({})).await;
        let good = m.encrypt(name, b"attack at dawn").await; // version 2
        let auth_failed = match kind {
            KeyType::ChaCha20Poly1305 => "chacha20poly1305: message authentication failed",
            _ => "cipher: message authentication failed",
        };
        let payload = good.strip_prefix("vault:v2:").unwrap();
        let blob = B64.decode(payload).unwrap();
        let flip = |at: usize| {
            let mut b = blob.clone();
            b[at] ^= 0x01;
            format!("vault:v2:{}", B64.encode(b))
        };
        let last = blob.len() - 1;
        let cases: Vec<(String, &str)> = vec![
            (flip(0), auth_failed),    // nonce
            (flip(12), auth_failed),   // ciphertext
            (flip(last), auth_failed), // tag
            (
                format!("vault:v2:{}", B64.encode(&blob[..last])),
                auth_failed,
            ),
            (format!("vault:v1:{payload}"), auth_failed), // another version's key
            (
                format!("vault:v2:{}", B64.encode(&blob[..11])),
                "invalid ciphertext length",
            ),
            (
                format!("vault:v3:{payload}"),
                "invalid ciphertext: version is too new",
            ),
            (payload.to_string(), "invalid ciphertext: no prefix"),
            (
                "vault:v2".into(),
                "invalid ciphertext: wrong number of fields",
            ),
            (
                format!("vault:vx:{payload}"),
                "invalid ciphertext: version number could not be decoded",
            ),
            (
                format!("vault:v-1:{payload}"),
                "invalid ciphertext: version number could not be decoded",
            ),
            (
                "vault:v2:not*base64".into(),
                "invalid ciphertext: could not decode base64",
            ),
            ("".into(), "invalid ciphertext: no prefix"),
        ];
        for (ciphertext, want) in cases {
            let msg = m.decrypt(name, &ciphertext).await.unwrap_err();
            assert_eq!(msg.status(), 400, "{name} {ciphertext}");
            assert_eq!(msg.to_string(), want, "{name} {ciphertext}");
        }
    }
    // Version 0 is read as 1, for ciphertexts of Vault's first releases.
    m.ok(W, "keys/zero", json!({})).await;
    let v1 = m.encrypt("zero", b"legacy").await;
    let v0 = v1.replacen("vault:v1:", "vault:v0:", 1);
    assert_eq!(m.decrypt("zero", &v0).await.unwrap(), b"legacy");
}

#[tokio::test]
async fn batches_report_each_item_and_fail_as_vault_does() {
    let m = Mount::new();
    m.ok(W, "keys/b", json!({})).await;
    let good = |text: &str, reference: &str| json!({"plaintext": b64(text.as_bytes()), "reference": reference});
    let batch = json!({"batch_input": [good("a", "r0"), {"plaintext": "***", "reference": "r1"}, good("c", "r2")]});
    let resp = m.call(W, "encrypt/b", batch.clone()).await.unwrap();
    assert_eq!(resp.status, Some(400), "one bad item makes the batch a 400");
    let results = resp.data.unwrap()["batch_results"].clone();
    assert_eq!(
        results[1],
        json!({"error": "illegal base64 data at input byte 0", "reference": "r1"})
    );
    for i in [0, 2] {
        assert_eq!(results[i]["key_version"], 1);
        assert_eq!(results[i]["reference"], format!("r{i}"));
        assert!(results[i].get("error").is_none());
    }

    // partial_failure_response_code applies when some item succeeded...
    let mut overridden = batch.clone();
    overridden["partial_failure_response_code"] = json!(200);
    assert_eq!(
        m.call(W, "encrypt/b", overridden).await.unwrap().status,
        Some(200)
    );
    let mut invalid = batch.clone();
    invalid["partial_failure_response_code"] = json!(999);
    let resp = m.call(W, "encrypt/b", invalid).await.unwrap();
    assert_eq!(resp.status, Some(400));
    assert_contains(&resp.warnings[0], "reverting to 400");
    // ...and not when every item failed.
    let all_bad =
        json!({"batch_input": [{"plaintext": "*"}], "partial_failure_response_code": 200});
    assert_eq!(
        m.call(W, "encrypt/b", all_bad).await.unwrap().status,
        Some(400)
    );

    // Decrypt the good ones back in one batch, with one tampered item.
    let c0 = results[0]["ciphertext"].as_str().unwrap();
    let c2 = results[2]["ciphertext"].as_str().unwrap();
    let mut chars: Vec<char> = c2.chars().collect();
    chars[20] = if chars[20] == 'A' { 'B' } else { 'A' };
    let tampered: String = chars.into_iter().collect();
    let resp = m
        .call(
            W,
            "decrypt/b",
            json!({"batch_input": [{"ciphertext": c0}, {"ciphertext": tampered, "reference": "x"}, {"ciphertext": c2}]}),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, Some(400));
    let results = resp.data.unwrap()["batch_results"].clone();
    assert_eq!(results[0], json!({"plaintext": b64(b"a"), "reference": ""}));
    assert_eq!(results[1]["reference"], "x");
    assert_contains(
        results[1]["error"].as_str().unwrap(),
        "message authentication failed",
    );
    assert_eq!(results[2]["plaintext"], b64(b"c"));

    // A clean batch is a plain 200; rewrap batches too.
    let resp = m
        .call(
            W,
            "rewrap/b",
            json!({"batch_input": [{"ciphertext": c0}, {"ciphertext": c2}]}),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, None);
    let results = resp.data.unwrap()["batch_results"].clone();
    assert_eq!(results.as_array().unwrap().len(), 2);
    assert!(results[0]["ciphertext"]
        .as_str()
        .unwrap()
        .starts_with("vault:v1:"));

    // Malformed batches are refused whole.
    let refused = [
        (json!({"batch_input": []}), "missing batch input to process"),
        (
            json!({"batch_input": {"plaintext": ""}}),
            "source data must be an array or slice",
        ),
        (
            json!({"batch_input": ["x"]}),
            "[0] expected a map, got 'string'",
        ),
        (
            json!({"batch_input": [{"reference": "r"}]}),
            "'[0].plaintext' missing plaintext to encrypt",
        ),
        (
            json!({"batch_input": [{"plaintext": 5}]}),
            "'[0].plaintext' expected type 'string'",
        ),
        (
            json!({"batch_input": [{"plaintext": "", "key_version": "one"}]}),
            "'[0].key_version' expected type 'int'",
        ),
        (
            json!({"batch_input": [{"plaintext": "", "context": "Yw=="}]}),
            "no derived keys",
        ),
    ];
    for (body, want) in refused {
        let msg = m.err(W, "encrypt/b", body, 400).await;
        assert_contains(&msg, want);
    }
    // A batch given as a JSON string (as a CLI may send it) is read too.
    let text = json!({"batch_input": json!([good("s", "")]).to_string()});
    let resp = m.call(W, "encrypt/b", text).await.unwrap();
    assert_eq!(resp.status, None);
}

#[tokio::test]
async fn encrypt_creates_the_key_only_when_the_operation_is_create() {
    let m = Mount::new();
    assert_eq!(m.exists("encrypt/new").await, Some(false));
    assert_eq!(
        m.exists("keys/new").await,
        None,
        "keys/:name has no existence check"
    );
    let msg = m
        .err(W, "encrypt/new", json!({"plaintext": b64(b"x")}), 400)
        .await;
    assert_eq!(msg, "encryption key not found");
    let created = m
        .ok(
            C,
            "encrypt/new",
            json!({"plaintext": b64(b"x"), "type": "chacha20-poly1305"}),
        )
        .await;
    assert!(created["ciphertext"]
        .as_str()
        .unwrap()
        .starts_with("vault:v1:"));
    assert_eq!(m.exists("encrypt/new").await, Some(true));
    assert_eq!(
        m.ok(R, "keys/new", json!({})).await["type"],
        "chacha20-poly1305"
    );
    // A create that finds the key made meanwhile uses it, with Vault's warning.
    let again = m
        .call(C, "encrypt/new", json!({"plaintext": b64(b"y")}))
        .await
        .unwrap();
    assert_contains(&again.warnings[0], "it was created beforehand");
    let refused = [
        (
            json!({"plaintext": "", "type": "rsa-2048"}),
            "key type rsa-2048 is not supported by this build",
        ),
        (
            json!({"plaintext": "", "convergent_encryption": true}),
            "convergent encryption requires derivation",
        ),
        (
            json!({"plaintext": "", "derived": true}),
            "derived keys are not supported",
        ),
        (json!({}), "missing plaintext to encrypt"),
    ];
    for (body, want) in refused {
        let msg = m.err(C, "encrypt/other", body, 400).await;
        assert_contains(&msg, want);
    }
    assert_eq!(
        m.exists("encrypt/other").await,
        Some(false),
        "refused upserts made no key"
    );
    // A nonce is an item's error, found after the upsert (as in Vault).
    let msg = m
        .err(
            C,
            "encrypt/new",
            json!({"plaintext": "", "nonce": b64(&[0; 12])}),
            400,
        )
        .await;
    assert_eq!(msg, "provided nonce not allowed for this key");
    for path in ["decrypt/other", "rewrap/other"] {
        let msg = m
            .err(W, path, json!({"ciphertext": "vault:v1:AAAA"}), 400)
            .await;
        assert_eq!(msg, "encryption key not found");
    }
}

#[tokio::test]
async fn key_creation_reads_lists_and_deletion() {
    let m = Mount::new();
    assert!(matches!(
        m.call(L, "keys", json!({})).await,
        Err(Error::NotFound)
    ));
    let created = m
        .ok(
            W,
            "keys/app-1.prod@eu",
            json!({"exportable": true, "allow_plaintext_backup": "true", "auto_rotate_period": "1h"}),
        )
        .await;
    let expected = json!({
        "name": "app-1.prod@eu",
        "type": "aes256-gcm96",
        "derived": false,
        "deletion_allowed": false,
        "exportable": true,
        "allow_plaintext_backup": true,
        "latest_version": 1,
        "min_available_version": 0,
        "min_decryption_version": 1,
        "min_encryption_version": 0,
        "auto_rotate_period": 3600,
        "imported_key": false,
        "supports_encryption": true,
        "supports_decryption": true,
        "supports_derivation": false,
        "supports_signing": false,
    });
    for (field, want) in expected.as_object().unwrap() {
        assert_eq!(&created[field], want, "{field}");
    }
    let created_at = created["keys"]["1"].as_i64().unwrap();
    assert!((chrono::Utc::now().timestamp() - created_at).abs() < 60);
    assert_eq!(m.ok(R, "keys/app-1.prod@eu", json!({})).await, created);

    // Creating it again changes nothing and says so.
    let again = m
        .call(
            W,
            "keys/app-1.prod@eu",
            json!({"type": "chacha20-poly1305"}),
        )
        .await
        .unwrap();
    assert_eq!(again.warnings, ["key app-1.prod@eu already existed"]);
    assert_eq!(again.data.unwrap()["type"], "aes256-gcm96");

    m.ok(W, "keys/second", json!({"type": "aes128-gcm96"}))
        .await;
    assert_eq!(
        m.ok(L, "keys", json!({})).await,
        json!({"keys": ["app-1.prod@eu", "second"]})
    );
    assert!(matches!(
        m.call(R, "keys/none", json!({})).await,
        Err(Error::NotFound)
    ));

    let refused = [
        (json!({"derived": true}), "derived keys are not supported by this build"),
        (json!({"convergent_encryption": true}), "convergent encryption requires derivation to be enabled"),
        (json!({"derived": true, "convergent_encryption": true}), "derived keys are not supported"),
        (json!({"type": "ed25519"}), "key type ed25519 is not supported by this build; supported: aes128-gcm96, aes256-gcm96, chacha20-poly1305"),
        (json!({"type": "kitty"}), "unknown key type kitty"),
        (json!({"auto_rotate_period": "30m"}), "at least an hour"),
        (json!({"key_size": 64}), "key_size is only valid for hmac keys"),
    ];
    for (body, want) in refused {
        let msg = m.err(W, "keys/refused", body.clone(), 400).await;
        assert_contains(&msg, want);
    }
    assert!(matches!(
        m.call(R, "keys/refused", json!({})).await,
        Err(Error::NotFound)
    ));

    // Deletion needs deletion_allowed; exportable cannot be unset.
    let msg = m.err(D, "keys/second", json!({}), 400).await;
    assert_contains(&msg, "deletion is not allowed for this key");
    let configured = m
        .ok(
            W,
            "keys/second/config",
            json!({"deletion_allowed": true, "exportable": true}),
        )
        .await;
    assert_eq!(configured["deletion_allowed"], true);
    let configured = m
        .ok(W, "keys/second/config", json!({"exportable": false}))
        .await;
    assert_eq!(configured["exportable"], true);
    let gone = m.call(D, "keys/second", json!({})).await.unwrap();
    assert!(gone.data.is_none());
    assert!(matches!(
        m.call(R, "keys/second", json!({})).await,
        Err(Error::NotFound)
    ));
    assert_contains(&m.err(D, "keys/second", json!({}), 400).await, "not found");
    assert_eq!(
        m.err(W, "keys/second/rotate", json!({}), 400).await,
        "key not found"
    );
}

#[tokio::test]
async fn trim_forgets_old_versions_for_good() {
    let m = Mount::new();
    m.ok(W, "keys/t", json!({})).await;
    let v1 = m.encrypt("t", b"first").await;
    for _ in 0..3 {
        m.ok(W, "keys/t/rotate", json!({})).await;
    }
    let refused = [
        (json!({}), "missing min_available_version"),
        (
            json!({"min_available_version": 2}),
            "cannot be set when minimum encryption version is not set",
        ),
    ];
    for (body, want) in refused {
        assert_contains(&m.err(W, "keys/t/trim", body, 400).await, want);
    }
    m.ok(
        W,
        "keys/t/config",
        json!({"min_encryption_version": 3, "min_decryption_version": 2}),
    )
    .await;
    let refused = [
        (
            json!({"min_available_version": 4}),
            "greater than minmum encryption version",
        ),
        (
            json!({"min_available_version": 3}),
            "greater than minimum decryption version",
        ),
        (json!({"min_available_version": 0}), "should be positive"),
    ];
    for (body, want) in refused {
        assert_contains(&m.err(W, "keys/t/trim", body, 400).await, want);
    }
    let trimmed = m
        .ok(W, "keys/t/trim", json!({"min_available_version": 2}))
        .await;
    assert_eq!(trimmed["min_available_version"], 2);
    assert_contains(
        &m.err(W, "keys/t/trim", json!({"min_available_version": 1}), 400)
            .await,
        "cannot be decremented",
    );
    // Version 1 is gone: even lowering min_decryption_version cannot bring it back.
    assert_contains(
        &m.err(
            W,
            "keys/t/config",
            json!({"min_decryption_version": 1}),
            400,
        )
        .await,
        "min decryption version should not be less then min available version",
    );
    assert_contains(
        &m.decrypt("t", &v1).await.unwrap_err().to_string(),
        "too old",
    );
    let stored = m.storage.get("keys/t").await.unwrap().unwrap();
    let stored: Value = serde_json::from_slice(&stored).unwrap();
    let versions: Vec<&String> = stored["versions"].as_object().unwrap().keys().collect();
    assert_eq!(versions, ["2", "3", "4"]);
}

#[tokio::test]
async fn datakeys_random_bytes_and_hashes() {
    let m = Mount::new();
    m.ok(W, "keys/dk", json!({})).await;
    for (bits, len) in [
        (json!(128), 16),
        (json!(256), 32),
        (json!("512"), 64),
        (Value::Null, 32),
    ] {
        let data = m.ok(W, "datakey/plaintext/dk", json!({"bits": bits})).await;
        let plaintext = B64.decode(data["plaintext"].as_str().unwrap()).unwrap();
        assert_eq!(plaintext.len(), len);
        let ciphertext = data["ciphertext"].as_str().unwrap();
        assert_eq!(m.decrypt("dk", ciphertext).await.unwrap(), plaintext);
        assert_eq!(data["key_version"], 1);
    }
    let wrapped = m.ok(W, "datakey/wrapped/dk", json!({})).await;
    assert!(wrapped.get("plaintext").is_none());
    assert!(wrapped["ciphertext"]
        .as_str()
        .unwrap()
        .starts_with("vault:v1:"));
    assert_contains(
        &m.err(W, "datakey/plaintext/dk", json!({"bits": 64}), 400)
            .await,
        "invalid bits value",
    );
    assert_contains(
        &m.err(W, "datakey/other/dk", json!({}), 400).await,
        "invalid data key type",
    );
    assert_eq!(
        m.err(W, "datakey/wrapped/none", json!({}), 400).await,
        "encryption key not found"
    );

    let random_cases = [
        ("random", json!({}), 32, "base64"),
        ("random/16", json!({}), 16, "base64"),
        ("random", json!({"bytes": 8, "format": "hex"}), 8, "hex"),
        ("random/platform/24/hex", json!({}), 24, "hex"),
    ];
    for (path, body, len, format) in random_cases {
        let data = m.ok(W, path, body).await;
        let text = data["random_bytes"].as_str().unwrap();
        let bytes = match format {
            "hex" => hex::decode(text).unwrap(),
            _ => B64.decode(text).unwrap(),
        };
        assert_eq!(bytes.len(), len, "{path}");
    }
    for (path, body, want) in [
        ("random/0", json!({}), "invalid number of bytes"),
        ("random", json!({"bytes": 200_000}), "exceeds the maximum"),
        (
            "random",
            json!({"format": "kitty64"}),
            "unsupported encoding format kitty64",
        ),
        ("random/seal", json!({}), "no entropy source"),
    ] {
        assert_contains(&m.err(W, path, body, 400).await, want);
    }

    let hello = b64(b"hello");
    let hash_cases = [
        (
            "hash",
            json!({"input": hello}),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        ),
        (
            "hash/sha2-224",
            json!({"input": hello}),
            "ea09ae9cc6768c50fcee903ed054556e5bfc8347907f12598aa24193",
        ),
        (
            "hash",
            json!({"input": hello, "algorithm": "sha2-256", "format": "base64"}),
            "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=",
        ),
        (
            "hash",
            json!({"input": ""}),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ),
    ];
    for (path, body, want) in hash_cases {
        assert_eq!(m.ok(W, path, body).await["sum"], want, "{path}");
    }
    assert_eq!(
        m.ok(W, "hash/sha2-512", json!({"input": hello})).await["sum"]
            .as_str()
            .unwrap()
            .len(),
        128
    );
    for (path, body, want) in [
        (
            "hash/meow2-256",
            json!({"input": hello}),
            "unsupported algorithm meow2-256",
        ),
        (
            "hash/sha3-256",
            json!({"input": hello}),
            "not supported by this build",
        ),
        (
            "hash",
            json!({"input": "%%"}),
            "unable to decode input as base64",
        ),
        (
            "hash",
            json!({"input": hello, "format": "kitty64"}),
            "unsupported encoding format",
        ),
    ] {
        assert_contains(&m.err(W, path, body, 400).await, want);
    }
}

#[test]
fn routes_follow_vaults_name_rules() {
    let cases: Vec<(&str, Option<Route>)> = vec![
        ("keys", Some(Route::Keys)),
        ("keys/", Some(Route::Keys)),
        ("keys/a", Some(Route::Key("a"))),
        ("keys/my-key_1.v@x", Some(Route::Key("my-key_1.v@x"))),
        ("keys/a/config", Some(Route::KeyConfig("a"))),
        ("keys/a/rotate", Some(Route::KeyRotate("a"))),
        ("keys/a/trim", Some(Route::KeyTrim("a"))),
        ("encrypt/a", Some(Route::Encrypt("a"))),
        ("decrypt/a", Some(Route::Decrypt("a"))),
        ("rewrap/a", Some(Route::Rewrap("a"))),
        (
            "datakey/wrapped/a",
            Some(Route::Datakey {
                kind: "wrapped",
                name: "a",
            }),
        ),
        ("random", Some(Route::Random(vec![]))),
        ("random/32/hex", Some(Route::Random(vec!["32", "hex"]))),
        ("hash/sha2-512", Some(Route::Hash(Some("sha2-512")))),
        ("keys/-a", None),
        ("keys/a-", None),
        ("keys/a b", None),
        ("keys/a/b", None),
        ("encrypt/", None),
        ("encrypt/a/b", None),
        ("export/encryption-key/a", None),
        ("hmac/a", None),
        ("", None),
    ];
    for (path, want) in cases {
        assert_eq!(Route::parse(path), want, "{path:?}");
    }
}

#[tokio::test]
async fn unknown_paths_and_wrong_verbs() {
    let m = Mount::new();
    m.ok(W, "keys/k", json!({})).await;
    for (op, path, status) in [
        (R, "encrypt/k", 405),
        (D, "keys/k/rotate", 405),
        (L, "keys/k", 405),
        (R, "keys", 405),
        (W, "sign/k", 404),
        (W, "keys/bad name", 404),
    ] {
        let err = m.call(op, path, json!({})).await.unwrap_err();
        assert_eq!(err.status(), status, "{op:?} {path}: {err}");
    }
}

#[tokio::test]
async fn key_material_stays_out_of_debug_and_errors() {
    let m = Mount::new();
    m.ok(W, "keys/secret", json!({})).await;
    let stored = m.storage.get("keys/secret").await.unwrap().unwrap();
    let stored: Value = serde_json::from_slice(&stored).unwrap();
    let key_b64 = stored["versions"]["1"]["key"].as_str().unwrap().to_string();
    assert_eq!(B64.decode(&key_b64).unwrap().len(), 32);

    let key = super::load(&m.storage, "secret").await.unwrap().unwrap();
    let shown = format!("{key:?}");
    assert!(!shown.contains(&key_b64), "{shown}");
    assert_contains(&shown, "redacted");

    // Corrupt storage is reported without quoting what is stored.
    let mut damaged = serde_json::to_vec(&stored).unwrap();
    damaged.truncate(damaged.len() - 3);
    m.storage.put("keys/secret", damaged).await.unwrap();
    let err = super::load(&m.storage, "secret").await.unwrap_err();
    assert_eq!(err.status(), 500);
    assert!(!err.to_string().contains(&key_b64[..8]), "{err}");

    // Every crypto error message is fixed text or a number.
    let errors = [
        CryptoError::Base64(3),
        CryptoError::Authentication("cipher"),
    ];
    for e in errors {
        let text = e.to_string();
        assert!(!text.contains(&key_b64[..8]), "{text}");
    }
}
