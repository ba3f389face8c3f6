//! Regressions found by fuzzing the policy parser (`fuzz/fuzz_targets/acl_policy.rs`): each
//! case is the input the fuzzer found, reduced, and what the parser must answer.

use super::{parse, PathRules};

/// `text` parses, and reads the same as `twin` (its other spelling), lines aside.
fn check_same(text: &str, twin: &str) {
    let rules = |text: &str| -> Vec<PathRules> {
        let policy = parse("p", text).unwrap_or_else(|e| panic!("{text}: {e}"));
        policy
            .paths
            .into_iter()
            .map(|r| PathRules { line: 0, ..r })
            .collect()
    };
    assert_eq!(rules(text), rules(twin), "{text}");
}

#[test]
fn json_strings_are_not_templates() {
    // HCL reads `${` and `%{` in a string as a template; in a JSON policy they are text.
    check_same(
        r#"{"path": {"secret/${x}": {"capabilities": ["read"], "allowed_parameters": {"a": ["${y}"]}}}}"#,
        r#"path "secret/$${x}" {
             capabilities = ["read"]
             allowed_parameters = { "a" = ["$${y}"] }
           }"#,
    );
}

#[test]
fn invalid_json_is_refused_before_the_hcl_parser_sees_it() {
    // 1.9 KB of invalid JSON the HCL expression parser took over 100 s to refuse.
    let text = include_str!("testdata/fuzz-slow-json");
    let err = parse("p", text).unwrap_err();
    assert_eq!(err.line(), Some(1), "{err}");
    // A JSON `$${` is two dollars, not HCL's escape for one.
    check_same(
        r#"{"path": {"a": {"capabilities": ["read"], "allowed_parameters": {"b": ["$${c}"]}}}}"#,
        r#"path "a" {
             capabilities = ["read"]
             allowed_parameters = { "b" = ["$$${c}"] }
           }"#,
    );
}

#[test]
fn leading_slashes_are_all_trimmed() {
    // One was: `//a` became the pattern `/a`, which no request path (trimmed of every leading
    // `/` by the ACL) could match, and which read back as `a`.
    check_same(
        r#"path "//a" { capabilities = ["read"] }"#,
        r#"path "a" { capabilities = ["read"] }"#,
    );
    check_same(
        r#"path "///" { capabilities = ["read"] }"#,
        r#"path "" { capabilities = ["read"] }"#,
    );
}
