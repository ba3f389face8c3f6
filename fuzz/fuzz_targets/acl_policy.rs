//! The ACL policy parser (`keyhold_config::policy::parse`) and the server's ACL built from what
//! it accepts. Any text: a policy or an error, never a panic. A policy that parses is written
//! back as Vault's JSON policy form and parsed again: the same rules must come back (HCL and
//! JSON read alike). The ACL of the policy and of its JSON twin grant the same capabilities on
//! every pattern and on paths derived from them, and each exact pattern grants at least what
//! its stanzas say (a deny rule only deny).
#![no_main]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use keyhold::logical::Operation;
use keyhold::policy::{parse, Acl, Capabilities, PathRules, PatternKind, Policy};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = parse("fuzz", text) else {
        return;
    };
    let rendered = to_json_policy(&policy);
    let again = match parse("fuzz", &rendered) {
        Ok(p) => p,
        // A JSON policy nests at most 128 levels (serde_json's limit); the JSON form of an
        // HCL policy nested nearly that deep (a `control_group`) adds a few more.
        Err(e) if e.to_string().contains("recursion limit exceeded") => return,
        Err(e) => panic!("the policy's JSON form does not parse: {e}\n{rendered}"),
    };
    assert_eq!(
        without_lines(&policy.paths),
        without_lines(&again.paths),
        "{rendered}"
    );
    assert_eq!(policy.templated, again.templated);

    let acl = Acl::new(&[Arc::new(policy.clone())]);
    let twin = Acl::new(&[Arc::new(again)]);
    let empty = Map::new();
    let mut data = Map::new();
    for rules in &policy.paths {
        for key in rules
            .allowed_parameters
            .keys()
            .chain(rules.denied_parameters.keys())
        {
            data.insert(key.clone(), json!("fuzz"));
        }
    }
    for path in probe_paths(&policy) {
        assert_eq!(acl.capabilities(&path), twin.capabilities(&path), "{path}");
        for op in [
            Operation::Read,
            Operation::List,
            Operation::Update,
            Operation::Delete,
        ] {
            for body in [&empty, &data] {
                assert_eq!(
                    acl.allow_operation(&path, op, body),
                    twin.allow_operation(&path, op, body),
                    "{path} {op:?}"
                );
            }
        }
    }
    let mut merged: BTreeMap<&str, Capabilities> = BTreeMap::new();
    for rules in policy
        .paths
        .iter()
        .filter(|r| r.kind == PatternKind::Exact && !r.is_templated())
    {
        *merged.entry(rules.pattern.as_str()).or_default() |= rules.capabilities;
    }
    for (pattern, caps) in merged {
        let got = acl.capabilities(pattern);
        let want = if caps.is_deny() {
            vec!["deny".to_string()]
        } else if caps.is_empty() {
            continue;
        } else {
            caps.names()
        };
        assert_eq!(got, want, "exact rule {pattern:?}");
    }
});

/// The rules without the line each was read from (the JSON form is one line).
fn without_lines(paths: &[PathRules]) -> Vec<PathRules> {
    paths
        .iter()
        .cloned()
        .map(|r| PathRules { line: 0, ..r })
        .collect()
}

/// Every pattern, its stem, and a path below it and beside it.
fn probe_paths(policy: &Policy) -> Vec<String> {
    let mut out = vec![String::new(), "sys/policy/x".to_string()];
    for rules in &policy.paths {
        let stem = rules.stem().replace('+', "seg");
        out.extend([
            rules.pattern.clone(),
            stem.clone(),
            format!("{stem}/child"),
            format!("{stem}x"),
            format!("/{stem}"),
        ]);
    }
    out
}

/// `policy` in Vault's JSON policy form: `{"path": [{"<pattern>": {...}}, ...]}` (a list, so a
/// pattern written twice stays two stanzas).
fn to_json_policy(policy: &Policy) -> String {
    let stanzas: Vec<Value> = policy
        .paths
        .iter()
        .map(|r| {
            let mut body = Map::new();
            // One name per capability: `names()` answers `["deny"]` for an empty set.
            let names: Vec<String> = r.capabilities.iter().flat_map(|c| c.names()).collect();
            body.insert("capabilities".into(), json!(names));
            if !r.allowed_parameters.is_empty() {
                body.insert("allowed_parameters".into(), json!(r.allowed_parameters));
            }
            if !r.denied_parameters.is_empty() {
                body.insert("denied_parameters".into(), json!(r.denied_parameters));
            }
            if !r.required_parameters.is_empty() {
                body.insert("required_parameters".into(), json!(r.required_parameters));
            }
            for (key, ttl) in [
                ("min_wrapping_ttl", r.min_wrapping_ttl),
                ("max_wrapping_ttl", r.max_wrapping_ttl),
            ] {
                if let Some(ttl) = ttl {
                    body.insert(key.into(), json!(go_duration(ttl)));
                }
            }
            if !r.mfa_methods.is_empty() {
                body.insert("mfa_methods".into(), json!(r.mfa_methods));
            }
            if let Some(group) = &r.control_group {
                body.insert("control_group".into(), group.clone());
            }
            let mut stanza = Map::new();
            stanza.insert(r.pattern.clone(), Value::Object(body));
            Value::Object(stanza)
        })
        .collect();
    json!({ "path": stanzas }).to_string()
}

fn go_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ns", d.as_nanos())
    }
}
