//! Tests for `keyhold::policy`: data-driven ACL cases (`check`), the vault-admin
//! fixture, the default policy, parse errors, properties, and the store.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::*;
use crate::logical::{Operation, StorageView};
use Operation::{Create, Delete, List, Patch, Read, Update};

const VAULT_ADMIN: &str = include_str!("../../../environments/policies/vault-admin.hcl");

fn acl_of(policies: &[(&str, &str)]) -> Acl {
    let parsed: Vec<Arc<Policy>> = policies
        .iter()
        .map(|(name, text)| Arc::new(parse(name, text).unwrap_or_else(|e| panic!("{name}: {e}"))))
        .collect();
    Acl::new(&parsed)
}

fn data(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// `op` on `path` with no data is `expected` under `policies`.
fn check(policies: &[(&str, &str)], path: &str, op: Operation, expected: bool) {
    check_data(policies, path, op, json!({}), expected)
}

fn check_data(policies: &[(&str, &str)], path: &str, op: Operation, body: Value, expected: bool) {
    let result = acl_of(policies).allow_operation(path, op, &data(body.clone()));
    assert_eq!(
        result.allowed,
        expected,
        "{} {path} with {body} under {policies:?}: {result:?}",
        op.as_str()
    );
}

fn one(text: &str) -> Vec<(&'static str, &str)> {
    vec![("p", text)]
}

#[test]
fn globs_and_segment_wildcards() {
    let zip = r#"path "secret/zip-*" { capabilities = ["read"] }"#;
    let teamb = r#"path "secret/+/teamb" { capabilities = ["read"] }"#;
    let plus_prefix = r#"path "secret/+/team*" { capabilities = ["read"] }"#;
    let everything = r#"path "*" { capabilities = ["read"] }"#;
    let leading_slash = r#"path "/secret/foo" { capabilities = ["read"] }"#;
    let cases: &[(&str, &str, bool)] = &[
        (zip, "secret/zip-zap", true),
        (zip, "secret/zip-zap/zong", true),
        (zip, "secret/zip-", true),
        (zip, "secret/zip", false),
        (zip, "secret/zap-zip", false),
        (teamb, "secret/foo/teamb", true),
        (teamb, "secret/bar/teamb", true),
        (teamb, "secret/foo/teamb/x", false),
        (teamb, "secret/foo/bar/teamb", false),
        (teamb, "secret/teamb", false),
        (plus_prefix, "secret/a/teambravo/x", true),
        (plus_prefix, "secret/a/tea", false),
        (everything, "anything/at/all", true),
        (everything, "", true),
        (leading_slash, "secret/foo", true),
        (leading_slash, "/secret/foo", true),
    ];
    for (policy, path, expected) in cases {
        check(&one(policy), path, Read, *expected);
    }
}

#[test]
fn exact_rule_beats_globs_and_does_not_merge() {
    let policy = r#"
        path "secret/*" { capabilities = ["read", "create"] }
        path "secret/foo" { capabilities = ["update"] }
        path "secret/super-secret" { capabilities = ["deny"] }
    "#;
    let cases = [
        ("secret/bar", Read, true),
        ("secret/bar", Create, true),
        ("secret/foo", Update, true),
        ("secret/foo", Read, false),
        ("secret/foo", Create, false),
        ("secret/super-secret", Read, false),
        ("secret/foo/bar", Read, true),
    ];
    for (path, op, expected) in cases {
        check(&one(policy), path, op, expected);
    }
}

/// Priority rules (a)-(e) of vault-api.md §2. Each case lists a winner (granting
/// read) and a loser (deny) that both match the path; both orders are tried.
#[test]
fn priority_between_non_exact_rules() {
    let cases = [
        // (a) the rule whose first wildcard comes later wins.
        ("secret/a*", "secret/+", "secret/ab"),
        ("foo/bar/+/baz", "foo/+/+/baz", "foo/bar/x/baz"),
        ("secret/foo/*", "secret/*", "secret/foo/bar"),
        // (b) same position: the rule not ending in `*` wins.
        ("foo/+/bar", "foo/+/ba*", "foo/x/bar"),
        ("secret/+", "secret/*", "secret/x"),
        // (c) fewer `+` segments wins.
        ("foo/+/bar/baz", "foo/+/bar/+", "foo/x/bar/baz"),
        // (d) the longer pattern wins.
        ("foo/+/bar/ba*", "foo/+/bar/b*", "foo/x/bar/baz"),
        // (e) the lexicographically greater pattern wins.
        ("a/+/c/+", "a/+/+/d", "a/x/c/d"),
    ];
    for (winner, loser, path) in cases {
        let win = format!(r#"path "{winner}" {{ capabilities = ["read"] }}"#);
        let lose = format!(r#"path "{loser}" {{ capabilities = ["deny"] }}"#);
        check(&[("w", &win), ("l", &lose)], path, Read, true);
        check(&[("l", &lose), ("w", &win)], path, Read, true);
        let both = format!("{lose}\n{win}");
        check(&one(&both), path, Read, true);
    }
}

#[test]
fn list_tries_the_path_without_trailing_slash() {
    let exact = r#"path "secret/foo" { capabilities = ["list"] }"#;
    check(&one(exact), "secret/foo/", List, true);
    check(&one(exact), "secret/foo", List, true);
    check(&one(exact), "secret/foo/", Read, false);

    // The non-exact rules for `secret/foo` are consulted before those for `secret/foo/`.
    let globs = r#"
        path "secret/fo*" { capabilities = ["list"] }
        path "secret/foo/*" { capabilities = ["deny"] }
    "#;
    check(&one(globs), "secret/foo/", List, true);
    check(&one(globs), "secret/foo/x", Read, false);

    let acl = acl_of(&one(exact));
    assert_eq!(acl.capabilities("secret/foo/"), vec!["list"]);
}

#[test]
fn identical_patterns_merge_across_policies() {
    let a = r#"path "secret/*" { capabilities = ["read"] }"#;
    let b = r#"path "secret/*" { capabilities = ["create", "sudo"] }"#;
    let c = r#"path "secret/foo" { capabilities = ["update"] }"#;
    check(&[("a", a), ("b", b)], "secret/x", Read, true);
    check(&[("a", a), ("b", b)], "secret/x", Create, true);
    check(&[("a", a), ("b", b)], "secret/x", Update, false);
    // Different patterns never merge: the exact rule alone decides.
    check(&[("a", a), ("c", c)], "secret/foo", Read, false);
    check(&[("a", a), ("c", c)], "secret/foo", Update, true);

    let acl = acl_of(&[("a", a), ("b", b), ("a2", a)]);
    let read = acl.allow_operation("secret/x", Read, &Map::new());
    assert_eq!(read.granting_policies, vec!["a", "a2"]);
    assert!(read.root_privs);
    assert_eq!(read.capabilities, vec!["create", "read", "sudo"]);
    let create = acl.allow_operation("secret/x", Create, &Map::new());
    assert_eq!(create.granting_policies, vec!["b"]);
}

#[test]
fn deny_wins_over_everything() {
    let same_stanza = r#"path "sys/auth/*" { capabilities = ["sudo", "read", "deny"] }"#;
    let grant = r#"path "sys/*" { capabilities = ["sudo", "read", "update"] }"#;
    let deny = r#"path "sys/*" { capabilities = ["deny"] }"#;
    let legacy_deny = r#"path "sys/*" { policy = "deny" }"#;
    for policies in [
        vec![("p", same_stanza)],
        vec![("g", grant), ("d", deny)],
        vec![("d", deny), ("g", grant)],
        vec![("g", grant), ("d", legacy_deny), ("g2", grant)],
    ] {
        for op in [Read, Update, Create, List, Delete, Patch] {
            check(&policies, "sys/auth/userpass", op, false);
        }
        let acl = acl_of(&policies);
        let result = acl.allow_operation("sys/auth/userpass", Update, &Map::new());
        assert!(!result.root_privs, "{policies:?}");
        assert_eq!(acl.capabilities("sys/auth/userpass"), vec!["deny"]);
    }
}

#[test]
fn parameter_constraints() {
    let restricted = r#"
        path "secret/restricted" {
          capabilities = ["create", "update", "read", "delete"]
          allowed_parameters = {
            "foo" = []
            "bar" = ["zip", "zap"]
          }
        }
    "#;
    let wildcard_plus = r#"
        path "secret/w" {
          capabilities = ["create"]
          allowed_parameters = { "*" = [], "bar" = ["zip"] }
        }
    "#;
    let only_wildcard = r#"path "secret/w" {
          capabilities = ["create"]
          allowed_parameters = { "*" = [] }
        }"#;
    let denied = r#"path "secret/d" {
          capabilities = ["create", "delete", "list"]
          denied_parameters = { "foo" = [] }
        }"#;
    let denied_over_allowed = r#"path "secret/d" {
          capabilities = ["update"]
          allowed_parameters = { "foo" = [] }
          denied_parameters = { "foo" = ["bad", "worse*"] }
        }"#;
    let denied_all = r#"path "secret/d" {
          capabilities = ["create", "delete"]
          denied_parameters = { "*" = [] }
        }"#;
    let required = r#"path "secret/r" {
          capabilities = ["create"]
          required_parameters = ["bar"]
        }"#;
    let globbed = r#"path "auth/token/create" {
          capabilities = ["update"]
          allowed_parameters = { "policies" = ["app-*", "default"], "ttl" = [] }
        }"#;
    let numbers = r#"path "secret/n" {
          capabilities = ["update"]
          allowed_parameters = { "max_versions" = [5, 10], "cas_required" = [true] }
        }"#;
    let cases: &[(&str, &str, Operation, Value, bool)] = &[
        (restricted, "secret/restricted", Create, json!({}), true),
        (
            restricted,
            "secret/restricted",
            Create,
            json!({"foo": "anything"}),
            true,
        ),
        (
            restricted,
            "secret/restricted",
            Create,
            json!({"FOO": 1}),
            true,
        ),
        (
            restricted,
            "secret/restricted",
            Create,
            json!({"bar": "zip"}),
            true,
        ),
        (
            restricted,
            "secret/restricted",
            Update,
            json!({"bar": "zap", "foo": 2}),
            true,
        ),
        (
            restricted,
            "secret/restricted",
            Create,
            json!({"bar": "nope"}),
            false,
        ),
        (
            restricted,
            "secret/restricted",
            Create,
            json!({"baz": "x"}),
            false,
        ),
        (
            restricted,
            "secret/restricted",
            Read,
            json!({"baz": "x"}),
            false,
        ),
        (
            restricted,
            "secret/restricted",
            Delete,
            json!({"baz": "x"}),
            true,
        ),
        (
            wildcard_plus,
            "secret/w",
            Create,
            json!({"anything": 1}),
            true,
        ),
        (
            wildcard_plus,
            "secret/w",
            Create,
            json!({"bar": "zip"}),
            true,
        ),
        (
            wildcard_plus,
            "secret/w",
            Create,
            json!({"bar": "zap"}),
            false,
        ),
        (
            only_wildcard,
            "secret/w",
            Create,
            json!({"a": 1, "b": [1]}),
            true,
        ),
        (denied, "secret/d", Create, json!({"foo": 1}), false),
        (denied, "secret/d", Create, json!({"bar": 1}), true),
        (denied, "secret/d", Delete, json!({"foo": 1}), true),
        (
            denied_over_allowed,
            "secret/d",
            Update,
            json!({"foo": "bad"}),
            false,
        ),
        (
            denied_over_allowed,
            "secret/d",
            Update,
            json!({"foo": "worse-still"}),
            false,
        ),
        (
            denied_over_allowed,
            "secret/d",
            Update,
            json!({"foo": "good"}),
            true,
        ),
        (
            denied_over_allowed,
            "secret/d",
            Update,
            json!({"foo": ["good", "bad"]}),
            false,
        ),
        (denied_all, "secret/d", Create, json!({"x": 1}), false),
        (denied_all, "secret/d", Create, json!({}), true),
        (denied_all, "secret/d", Delete, json!({"x": 1}), true),
        (required, "secret/r", Create, json!({}), false),
        (required, "secret/r", Create, json!({"foo": 1}), false),
        (required, "secret/r", Create, json!({"bar": 1}), true),
        (
            globbed,
            "auth/token/create",
            Update,
            json!({"policies": "app-web"}),
            true,
        ),
        (
            globbed,
            "auth/token/create",
            Update,
            json!({"policies": "app-web, default"}),
            true,
        ),
        (
            globbed,
            "auth/token/create",
            Update,
            json!({"policies": ["app-a", "default"]}),
            true,
        ),
        (
            globbed,
            "auth/token/create",
            Update,
            json!({"policies": "root,app-web"}),
            false,
        ),
        // Vault quirk, kept: the whole string is matched against the globs first.
        (
            globbed,
            "auth/token/create",
            Update,
            json!({"policies": "app-web,root"}),
            true,
        ),
        (
            globbed,
            "auth/token/create",
            Update,
            json!({"policies": ["root"]}),
            false,
        ),
        (
            globbed,
            "auth/token/create",
            Update,
            json!({"ttl": "1h"}),
            true,
        ),
        (
            numbers,
            "secret/n",
            Update,
            json!({"max_versions": 10}),
            true,
        ),
        (
            numbers,
            "secret/n",
            Update,
            json!({"max_versions": 10.0}),
            true,
        ),
        (
            numbers,
            "secret/n",
            Update,
            json!({"max_versions": 7}),
            false,
        ),
        (
            numbers,
            "secret/n",
            Update,
            json!({"cas_required": true}),
            true,
        ),
        (
            numbers,
            "secret/n",
            Update,
            json!({"cas_required": false}),
            false,
        ),
    ];
    for (policy, path, op, body, expected) in cases {
        check_data(&one(policy), path, *op, body.clone(), *expected);
    }
}

#[test]
fn parameter_maps_merge_like_vault() {
    let a = r#"path "secret/x" {
        capabilities = ["update"]
        allowed_parameters = { "color" = ["red"], "size" = ["s"] }
    }"#;
    let b = r#"path "secret/x" {
        capabilities = ["update"]
        allowed_parameters = { "color" = ["blue"], "size" = [] }
        required_parameters = ["color"]
    }"#;
    let cases = [
        (json!({"color": "red"}), true),
        (json!({"color": "blue"}), true),
        (json!({"color": "green"}), false),
        (json!({"color": "red", "size": "xxl"}), true), // [] absorbs ["s"]
        (json!({"size": "s"}), false),                  // required from b
    ];
    for (body, expected) in cases {
        check_data(
            &[("a", a), ("b", b)],
            "secret/x",
            Update,
            body.clone(),
            expected,
        );
        check_data(&[("b", b), ("a", a)], "secret/x", Update, body, expected);
    }
}

#[test]
fn wrapping_ttl_bounds() {
    let policy = parse(
        "w",
        r#"path "secret/w" {
            capabilities = ["read"]
            min_wrapping_ttl = 60
            max_wrapping_ttl = "1h"
        }"#,
    )
    .unwrap();
    let acl = Acl::new(&[Arc::new(policy)]);
    let body = Map::new();
    for (wrap_ttl, expected) in [
        (None, false),
        (Some(Duration::from_secs(30)), false),
        (Some(Duration::from_secs(1800)), true),
        (Some(Duration::from_secs(7200)), false),
    ] {
        let req = AclRequest {
            path: "secret/w",
            operation: Read,
            data: &body,
            wrap_ttl,
        };
        assert_eq!(acl.allow(&req).allowed, expected, "{wrap_ttl:?}");
    }
}

#[test]
fn vault_admin_fixture() {
    let policies = [("vault-admin", VAULT_ADMIN)];
    let cases = [
        ("sys/mounts/foo", Create, true),
        ("sys/mounts/foo", Delete, true),
        ("sys/mounts", Read, true),
        ("sys/mounts", Update, false),
        ("sys/auth/userpass", Update, true),
        ("sys/auth/userpass", Create, true),
        ("sys/auth", Read, true),
        ("sys/policies/acl", List, true),
        ("sys/policies/acl/", List, true),
        ("sys/policies/acl/dev", Update, true),
        ("sys/audit/file", Update, true),
        ("sys/audit", Read, true),
        ("sys/health", Read, true),
        ("sys/leader", Read, true),
        ("sys/metrics", Read, true),
        ("sys/leases/lookup/database/", List, true),
        ("sys/storage/raft/configuration", Read, true),
        ("sys/storage/raft/snapshot", Update, false),
        ("secret/data/app", Read, false),
        ("secret/metadata/app", List, false),
        ("database/creds/x", Read, false),
        ("sys/rotate", Update, false),
        ("sys/seal", Update, false),
        ("auth/token/lookup-self", Read, false),
    ];
    for (path, op, expected) in cases {
        check(&policies, path, op, expected);
    }

    let acl = acl_of(&policies);
    let sudo_paths = ["sys/auth/userpass", "sys/audit/file"];
    for path in sudo_paths {
        let result = acl.allow_operation(path, Update, &Map::new());
        assert!(result.allowed && result.root_privs, "{path}: {result:?}");
        assert_eq!(result.granting_policies, vec!["vault-admin"]);
    }
    assert!(
        !acl.allow_operation("sys/mounts/foo", Update, &Map::new())
            .root_privs
    );
    assert_eq!(
        acl.capabilities("sys/auth/userpass"),
        vec!["create", "delete", "list", "read", "sudo", "update"]
    );
    assert_eq!(acl.capabilities("secret/data/app"), vec!["deny"]);
    assert_eq!(acl.capabilities("sys/rotate"), vec!["deny"]);
}

#[test]
fn default_policy() {
    let policies = [("default", DEFAULT_POLICY)];
    let cases = [
        ("auth/token/lookup-self", Read, true),
        ("auth/token/renew-self", Update, true),
        ("auth/token/revoke-self", Update, true),
        ("auth/token/lookup-self", Update, false),
        ("sys/capabilities-self", Update, true),
        ("sys/leases/renew", Update, true),
        ("sys/leases/lookup", Update, true),
        ("sys/internal/ui/resultant-acl", Read, true),
        ("sys/wrapping/unwrap", Update, true),
        ("sys/tools/hash/sha2-256", Update, true),
        ("identity/oidc/provider/default/authorize", Read, true),
        ("cubbyhole/x", Create, true),
        ("cubbyhole/x", Read, true),
        ("cubbyhole/x", Update, true),
        ("cubbyhole/x", Delete, true),
        ("cubbyhole/", List, true),
        ("secret/foo", Read, false),
        ("sys/mounts", Read, false),
        // Templated paths need an entity; without one they match nothing.
        ("identity/entity/id/abc", Read, false),
    ];
    for (path, op, expected) in cases {
        check(&policies, path, op, expected);
    }
    let policy = parse("default", DEFAULT_POLICY).unwrap();
    assert!(policy.templated);
}

#[test]
fn root_acl() {
    let root = Arc::new(Policy::root());
    let acl = Acl::new(std::slice::from_ref(&root));
    let result = acl.allow_operation("sys/seal", Update, &data(json!({"x": 1})));
    assert_eq!(
        result,
        AclResult {
            allowed: true,
            root_privs: true,
            is_root: true,
            capabilities: vec!["root".into()],
            granting_policies: vec!["root".into()],
        }
    );
    assert_eq!(acl.capabilities("anything"), vec!["root"]);

    // Vault refuses root next to another policy; `Acl::new` fails closed.
    let default = Arc::new(parse("default", DEFAULT_POLICY).unwrap());
    let mixed = [root.clone(), default];
    assert_eq!(Acl::try_new(&mixed).unwrap_err(), PolicyError::RootCombined);
    let acl = Acl::new(&mixed);
    assert!(!acl.is_root());
    assert!(
        !acl.allow_operation("cubbyhole/x", Read, &Map::new())
            .allowed
    );
    assert_eq!(acl.capabilities("cubbyhole/x"), vec!["deny"]);

    // Nothing attached: nothing allowed.
    assert_eq!(Acl::new(&[]).capabilities("cubbyhole/x"), vec!["deny"]);
}

#[test]
fn capabilities_are_sorted_and_deny_when_nothing_matches() {
    let acl = acl_of(&one(
        r#"path "secret/*" { capabilities = ["update", "list", "read", "create", "delete", "patch", "sudo", "subscribe", "recover"] }"#,
    ));
    assert_eq!(
        acl.capabilities("secret/x"),
        vec![
            "create",
            "delete",
            "list",
            "patch",
            "read",
            "recover",
            "subscribe",
            "sudo",
            "update"
        ]
    );
    assert_eq!(acl.capabilities("other/x"), vec!["deny"]);
    let denied = acl.allow_operation("other/x", Read, &Map::new());
    assert_eq!(denied.capabilities, vec!["deny"]);
    assert!(denied.granting_policies.is_empty());
}

#[test]
fn legacy_policy_form() {
    let cases = [
        ("deny", vec!["deny"]),
        ("read", vec!["list", "read"]),
        ("write", vec!["create", "delete", "list", "read", "update"]),
        (
            "sudo",
            vec!["create", "delete", "list", "read", "sudo", "update"],
        ),
    ];
    for (legacy, expected) in cases {
        let text = format!(r#"path "secret/*" {{ policy = "{legacy}" }}"#);
        assert_eq!(
            acl_of(&one(&text)).capabilities("secret/a"),
            expected,
            "{legacy}"
        );
    }
    // The legacy form adds to `capabilities`.
    let both = r#"path "secret/*" {
        policy = "read"
        capabilities = ["patch"]
    }"#;
    assert_eq!(
        acl_of(&one(both)).capabilities("secret/a"),
        vec!["list", "patch", "read"]
    );
}

#[test]
fn json_policies_match_hcl() {
    let hcl = r#"
        path "secret/*" {
          capabilities = ["create", "read"]
          allowed_parameters = { "foo" = ["a", 1] }
          min_wrapping_ttl = "1m"
        }
        path "sys/+/x" { policy = "write" }
        path "secret/super-secret" { capabilities = ["deny"] }
    "#;
    let json_text = r#"{
      "path": {
        "secret/*": {
          "capabilities": ["create", "read"],
          "allowed_parameters": {"foo": ["a", 1]},
          "min_wrapping_ttl": "1m"
        },
        "sys/+/x": {"policy": "write"},
        "secret/super-secret": {"capabilities": ["deny"]}
      }
    }"#;
    // HCL 1's JSON also allows a repeated key as an array of objects.
    let json_array = r#"{"path": [
        {"secret/*": {"capabilities": ["create", "read"], "allowed_parameters": {"foo": ["a", 1]}, "min_wrapping_ttl": 60}},
        {"sys/+/x": {"policy": "write"}},
        {"secret/super-secret": {"capabilities": ["deny"]}}
    ]}"#;
    let strip_lines = |p: Policy| -> Vec<PathRules> {
        p.paths
            .into_iter()
            .map(|mut r| {
                r.line = 0;
                r
            })
            .collect()
    };
    let from_hcl = strip_lines(parse("p", hcl).unwrap());
    assert_eq!(from_hcl.len(), 3);
    assert_eq!(from_hcl, strip_lines(parse("p", json_text).unwrap()));
    assert_eq!(from_hcl, strip_lines(parse("p", json_array).unwrap()));
    // JSON errors still name their line.
    let bad = "{\n  \"path\": {\n    \"secret/*\": {\"capabilities\": [\"reed\"]}\n  }\n}";
    assert_eq!(parse("p", bad).unwrap_err().line(), Some(3));
}

#[test]
fn parsed_shape() {
    let policy = parse(
        "  MyPolicy ",
        r#"
name = "ignored"
path "/secret/+/config*" {
  comment = "team configs"
  capabilities = ["read"]
  allowed_parameters = { "Version" = [] }
  required_parameters = ["version"]
  mfa_methods = ["totp"]
  control_group = { ttl = "4h" }
}
path "kv/*" { capabilities = ["list"] }
path "kv/exact" { capabilities = ["read"] }
"#,
    )
    .unwrap();
    assert_eq!(policy.name, "mypolicy");
    assert!(!policy.is_root());
    let [seg, prefix, exact] = &policy.paths[..] else {
        panic!("{:?}", policy.paths)
    };
    assert_eq!(seg.pattern, "secret/+/config*");
    assert_eq!(seg.kind, PatternKind::SegmentWildcard);
    assert_eq!(seg.line, 3);
    assert!(seg.allowed_parameters.contains_key("version"));
    assert_eq!(seg.mfa_methods, vec!["totp"]);
    assert_eq!(seg.control_group, Some(json!({"ttl": "4h"})));
    assert_eq!((prefix.kind, prefix.stem()), (PatternKind::Prefix, "kv/"));
    assert_eq!(exact.kind, PatternKind::Exact);
    assert_eq!(exact.line, 12);
}

#[test]
fn parse_errors_name_the_line() {
    let cases: &[(&str, usize, &str)] = &[
        (
            "path \"secret/*\" {\n  capabilities = [\"read\",\n    \"reed\"]\n}",
            3,
            r#"path "secret/*": invalid capability "reed""#,
        ),
        (
            "\npath \"secret/+*\" {\n  capabilities = [\"read\"]\n}",
            2,
            "'+*' is forbidden",
        ),
        (
            "path \"secret/*/foo\" {\n  capabilities = [\"read\"]\n}",
            1,
            "'*' is only allowed as the last character",
        ),
        (
            "path \"secret/**\" { capabilities = [\"read\"] }",
            1,
            "'*' is only allowed as the last character",
        ),
        (
            "path \"secret/*\" {\n  capabilities = [\"read\"]\n  capabilites = [\"list\"]\n}",
            3,
            r#"path "secret/*": invalid key "capabilites" on line 3"#,
        ),
        (
            "path \"a\" { capabilities = [\"read\"] }\n\nrules = \"x\"",
            3,
            r#"invalid key "rules" on line 3"#,
        ),
        (
            "path \"a\" {\n  policy = \"admin\"\n}",
            2,
            r#"invalid policy "admin""#,
        ),
        (
            "path \"a\" {\n  capabilities = \"read\"\n}",
            2,
            "capabilities: expected a list of strings",
        ),
        (
            "path \"a\" {\n  capabilities = [\"read\"]\n  min_wrapping_ttl = \"1h\"\n  max_wrapping_ttl = \"1m\"\n}",
            1,
            "max_wrapping_ttl cannot be less than min_wrapping_ttl",
        ),
        (
            "path \"a\" {\n  capabilities = [\"read\"]\n  allowed_parameters = { \"foo\" = \"bar\" }\n}",
            3,
            "expected a list of values",
        ),
        (
            "path \"a\" {\n  capabilities = [\"read\"]\n  min_wrapping_ttl = \"soon\"\n}",
            3,
            "invalid duration",
        ),
        (
            "path \"a\" {\n  capabilities = [\"read\"\n}",
            3,
            "syntax error on line 3",
        ),
        (
            "path \"a\" {\n  capabilities = [var.caps]\n}",
            2,
            "not supported in policies",
        ),
        (
            "path \"a\" {\n  policy = \"read\"\n  policy = \"write\"\n}",
            3,
            "each key may appear only once",
        ),
        (
            "path \"a\" { capabilities = [\"read\"] comment = \"x\" }",
            1,
            "put each attribute on its own line",
        ),
    ];
    for (text, line, message) in cases {
        let err = parse("p", text).unwrap_err();
        let shown = err.to_string();
        assert_eq!(err.line(), Some(*line), "{text}: {shown}");
        assert!(
            shown.contains(message),
            "{text}: {shown:?} lacks {message:?}"
        );
        assert!(shown.contains(&format!("line {line}")), "{shown}");
    }
}

#[test]
fn accepted_spellings() {
    let cases: &[(&str, &[&str])] = &[
        // One-line stanzas, trailing commas, `//` and `/* */` comments.
        ("path \"a\" { capabilities = [\"read\",] } // x\n/* y */", &["a"]),
        // Parameters as a nested block.
        ("path \"a\" {\n  capabilities = [\"read\"]\n  allowed_parameters {\n    foo = []\n  }\n}", &["a"]),
        // The same pattern twice in one policy is kept twice (merged by the ACL).
        ("path \"a\" { capabilities = [\"read\"] }\npath \"a\" { capabilities = [\"list\"] }", &["a", "a"]),
        // A stanza without capabilities grants nothing (and shadows broader rules).
        ("path \"a\" {}", &["a"]),
        // JSON with surrounding whitespace, and JSON's `\/` escape.
        ("  {\"path\": {\"a\\/b\": {\"capabilities\": [\"read\"]}}}  \n", &["a/b"]),
        // Heredoc values.
        ("path \"a\" {\n  capabilities = [\"read\"]\n  comment = <<EOT\nhello\nEOT\n}", &["a"]),
    ];
    for (text, patterns) in cases {
        let policy = parse("p", text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let got: Vec<&str> = policy.paths.iter().map(|r| r.pattern.as_str()).collect();
        assert_eq!(&got, patterns, "{text}");
    }
    let acl = acl_of(&one(
        "path \"a\" { capabilities = [\"read\"] }\npath \"a\" { capabilities = [\"list\"] }",
    ));
    assert_eq!(acl.capabilities("a"), vec!["list", "read"]);
    let acl = acl_of(&one(
        "path \"*\" { capabilities = [\"read\"] }\npath \"a\" {}",
    ));
    assert_eq!(acl.capabilities("a"), vec!["deny"]);
}

#[test]
fn names_and_error_mapping() {
    assert!(matches!(
        parse("root", "").unwrap_err(),
        PolicyError::InvalidName(_)
    ));
    assert!(matches!(
        parse("ROOT", "").unwrap_err(),
        PolicyError::InvalidName(_)
    ));
    assert!(matches!(
        parse(" ", "").unwrap_err(),
        PolicyError::InvalidName(_)
    ));
    // An empty policy is a valid policy that grants nothing.
    assert!(parse("empty", "# nothing\n").unwrap().paths.is_empty());

    let err: crate::error::Error = parse("p", "path \"a\" { capabilities = [\"x\"] }")
        .unwrap_err()
        .into();
    assert_eq!(err.status(), 400);
    assert!(
        err.to_string()
            .starts_with("failed to parse policy: path \"a\""),
        "{err}"
    );

    let err: crate::error::Error = PolicyError::RootCombined.into();
    assert_eq!(err.status(), 500);
}

#[test]
fn sanitizing_token_policies() {
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let cases: &[(&[&str], bool, &[&str])] = &[
        (
            &["Dev", " ops ", "", "dev"],
            true,
            &["default", "dev", "ops"],
        ),
        (&["dev", "default"], true, &["default", "dev"]),
        (&["dev"], false, &["dev"]),
        (&["dev", "Root"], true, &["root"]),
        (&[], true, &["default"]),
    ];
    for (input, add_default, expected) in cases {
        assert_eq!(
            sanitize_policies(&names(input), *add_default),
            names(expected),
            "{input:?}"
        );
    }
}

fn path_strategy() -> impl Strategy<Value = String> {
    (
        prop::collection::vec("[a-z0-9_.+*-]{1,8}", 1..6),
        any::<bool>(),
    )
        .prop_map(|(segments, trailing)| {
            let mut path = segments.join("/");
            if trailing {
                path.push('/');
            }
            path
        })
}

fn op_strategy() -> impl Strategy<Value = Operation> {
    prop::sample::select(vec![Read, Create, Update, Patch, Delete, List])
}

proptest! {
    #[test]
    fn star_read_allows_reading_every_path(path in path_strategy()) {
        let acl = acl_of(&one(r#"path "*" { capabilities = ["read"] }"#));
        prop_assert!(acl.allow_operation(&path, Read, &Map::new()).allowed);
        prop_assert!(!acl.allow_operation(&path, Update, &Map::new()).allowed);
        prop_assert_eq!(acl.capabilities(&path), vec!["read".to_string()]);
    }

    #[test]
    fn a_deny_rule_always_denies(path in path_strategy(), op in op_strategy(), sudo_first in any::<bool>()) {
        // The exact path is denied by one policy and granted everything by others,
        // on the same and on broader patterns.
        let pattern = path.replace(['*', '+'], "x");
        let grant = format!(
            r#"path "*" {{ capabilities = ["create", "read", "update", "patch", "delete", "list", "sudo"] }}
               path "{pattern}" {{ capabilities = ["create", "read", "update", "patch", "delete", "list", "sudo"] }}"#
        );
        let deny = format!(r#"path "{pattern}" {{ capabilities = ["deny"] }}"#);
        let policies = if sudo_first {
            vec![("grant", grant.as_str()), ("deny", deny.as_str())]
        } else {
            vec![("deny", deny.as_str()), ("grant", grant.as_str())]
        };
        let acl = acl_of(&policies);
        let result = acl.allow_operation(&pattern, op, &Map::new());
        prop_assert!(!result.allowed);
        prop_assert!(!result.root_privs);
        prop_assert_eq!(acl.capabilities(&pattern), vec!["deny".to_string()]);
    }

    #[test]
    fn parsing_never_panics(text in ".{0,200}") {
        let _ = parse("p", &text);
    }
}

#[tokio::test]
async fn store_crud() {
    let view = StorageView::inmem();
    let store = PolicyStore::new(view.clone());
    store.setup().await.unwrap();

    // Built-ins after setup; response-wrapping is stored but not listed.
    assert_eq!(store.list().await.unwrap(), vec!["default", "root"]);
    let default = store.get("default").await.unwrap().unwrap();
    assert_eq!(default.raw, DEFAULT_POLICY);
    assert!(store.get("response-wrapping").await.unwrap().is_some());
    let root = store.get("Root").await.unwrap().unwrap();
    assert!(root.is_root() && root.raw.is_empty());
    assert!(store.get("missing").await.unwrap().is_none());

    // Create, read back verbatim, list, update, delete.
    let text = "path \"secret/*\" {\n  capabilities = [\"read\"]\n}\n";
    store.set("Dev", text).await.unwrap();
    assert_eq!(store.get("dev").await.unwrap().unwrap().raw, text);
    assert_eq!(store.list().await.unwrap(), vec!["default", "dev", "root"]);
    let stored: Value = view.get_json("policy/dev").await.unwrap().unwrap();
    assert_eq!(stored["Raw"], text);
    assert_eq!(stored["Version"], 2);

    let acl = store
        .acl(&["dev".into(), "nope".into(), "default".into()])
        .await
        .unwrap();
    assert!(acl.allow_operation("secret/x", Read, &Map::new()).allowed);
    assert!(
        acl.allow_operation("cubbyhole/x", Read, &Map::new())
            .allowed
    );

    store
        .set("dev", r#"path "secret/*" { capabilities = ["list"] }"#)
        .await
        .unwrap();
    let acl = store.acl(&["dev".into()]).await.unwrap();
    assert!(!acl.allow_operation("secret/x", Read, &Map::new()).allowed);

    // Base64 text is accepted, as Vault's API does.
    let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, text);
    store.set("b64", &encoded).await.unwrap();
    assert_eq!(store.get("b64").await.unwrap().unwrap().raw, text);

    store.delete("dev").await.unwrap();
    store.delete("dev").await.unwrap();
    assert!(store.get("dev").await.unwrap().is_none());
    assert_eq!(store.list().await.unwrap(), vec!["b64", "default", "root"]);

    // A fresh store over the same storage sees what was written.
    let again = PolicyStore::new(view.clone());
    assert_eq!(again.get("b64").await.unwrap().unwrap().raw, text);
}

#[tokio::test]
async fn store_protections() {
    let store = PolicyStore::new(StorageView::inmem());
    store.setup().await.unwrap();
    assert!(is_assignable("dev") && is_assignable("root"));
    assert!(!is_assignable("Response-Wrapping"));

    let invalid = |r: crate::error::Result<()>| match r {
        Err(crate::error::Error::InvalidRequest(msg)) => msg,
        other => panic!("expected a 400, got {other:?}"),
    };
    let text = r#"path "a" { capabilities = ["read"] }"#;
    assert_eq!(
        invalid(store.set("root", text).await),
        "cannot update \"root\" policy"
    );
    assert_eq!(
        invalid(store.set(" ROOT", text).await),
        "cannot update \"root\" policy"
    );
    assert_eq!(
        invalid(store.set("response-wrapping", text).await),
        "cannot update \"response-wrapping\" policy"
    );
    assert_eq!(
        invalid(store.delete("root").await),
        "cannot delete \"root\" policy"
    );
    assert_eq!(
        invalid(store.delete("Default").await),
        "cannot delete default policy"
    );
    assert!(invalid(store.set("", text).await).contains("name"));
    assert!(invalid(store.set("x", "  ").await).contains("empty"));
    let msg = invalid(
        store
            .set("x", "path \"a\" {\n capabilities = [\"nope\"]\n}")
            .await,
    );
    assert!(msg.starts_with("failed to parse policy: "), "{msg}");
    assert!(msg.contains("line 2"), "{msg}");
    assert!(store.get("x").await.unwrap().is_none());

    // `default` can be edited, and setup keeps the edit.
    store.set("default", text).await.unwrap();
    store.setup().await.unwrap();
    assert_eq!(store.get("default").await.unwrap().unwrap().raw, text);

    // Root alone is the root ACL; root with another existing policy is Vault's error.
    assert!(store
        .acl(&["root".into(), "ghost".into()])
        .await
        .unwrap()
        .is_root());
    let err = store
        .acl(&["root".into(), "default".into()])
        .await
        .unwrap_err();
    assert_eq!(err.status(), 500);

    // Invalidation drops the cached copy, so a write by another node is seen.
    let view = StorageView::inmem();
    let a = PolicyStore::new(view.clone());
    let b = PolicyStore::new(view);
    a.set("shared", text).await.unwrap();
    assert_eq!(b.get("shared").await.unwrap().unwrap().raw, text);
    a.set("shared", "path \"b\" { capabilities = [\"list\"] }")
        .await
        .unwrap();
    assert_eq!(b.get("shared").await.unwrap().unwrap().raw, text);
    b.invalidate("Shared");
    assert!(b
        .get("shared")
        .await
        .unwrap()
        .unwrap()
        .raw
        .contains("\"b\""));
}
