//! Policy text (HCL or JSON) to [`Policy`].
//!
//! Both syntaxes are first read into one small tree that remembers the line of
//! every key ([`Node`]), and a single walker validates that tree against the
//! policy language. JSON is read with the HCL expression parser (a JSON object
//! is an HCL object expression), so JSON errors carry line numbers too.

use std::collections::BTreeMap;
use std::time::Duration;

use hcl_edit::expr::{Expression, ObjectKey};
use hcl_edit::structure::{Body, Structure};
use hcl_edit::template::{Element, Template};
use hcl_edit::Span;
use serde_json::Value as Json;

use super::{normalize_name, Capabilities, PathRules, PatternKind, Policy, PolicyError};

/// Parses policy `text` (HCL or JSON) into the policy called `name`.
///
/// `name` is normalised (trimmed, lower-cased) as Vault does. `root` is refused:
/// the root policy is built in ([`Policy::root`]) and can never come from text.
pub fn parse(name: &str, text: &str) -> Result<Policy, PolicyError> {
    let name = normalize_name(name);
    if name.is_empty() {
        return Err(PolicyError::InvalidName(
            "policy name must be provided".to_string(),
        ));
    }
    if name == super::ROOT_POLICY_NAME {
        return Err(PolicyError::InvalidName(
            "cannot update \"root\" policy".to_string(),
        ));
    }
    let lines = Lines::new(text);
    let top = if text.trim_start().starts_with('{') {
        json_tree(text, &lines)?
    } else {
        hcl_tree(text, &lines)?
    };
    let paths = policy_paths(&top)?;
    let templated = paths.iter().any(PathRules::is_templated);
    Ok(Policy {
        name,
        raw: text.to_string(),
        paths,
        templated,
        root: false,
    })
}

/// A value of the policy tree, with the line it starts on.
#[derive(Debug, Clone)]
struct Node {
    line: usize,
    value: Value,
}

#[derive(Debug, Clone)]
enum Value {
    /// Keys in source order; a key may repeat (several `path` blocks).
    Object(Vec<Entry>),
    Array(Vec<Node>),
    String(String),
    Number(serde_json::Number),
    Bool(bool),
    Null,
}

#[derive(Debug, Clone)]
struct Entry {
    key: String,
    line: usize,
    value: Node,
}

impl Node {
    fn to_json(&self) -> Json {
        match &self.value {
            Value::Object(entries) => Json::Object(
                entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.to_json()))
                    .collect(),
            ),
            Value::Array(items) => Json::Array(items.iter().map(Node::to_json).collect()),
            Value::String(s) => Json::String(s.clone()),
            Value::Number(n) => Json::Number(n.clone()),
            Value::Bool(b) => Json::Bool(*b),
            Value::Null => Json::Null,
        }
    }
}

/// Byte offset to one-based line and column.
struct Lines {
    starts: Vec<usize>,
}

impl Lines {
    fn new(text: &str) -> Lines {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Lines { starts }
    }

    fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&start| start <= offset)
    }

    fn column(&self, offset: usize) -> usize {
        let line = self.line(offset);
        offset - self.starts[line - 1] + 1
    }

    fn of(&self, span: Option<std::ops::Range<usize>>) -> usize {
        self.line(span.map(|r| r.start).unwrap_or(0))
    }
}

fn hcl_tree(text: &str, lines: &Lines) -> Result<Node, PolicyError> {
    let body = hcl_edit::parser::parse_body(text).map_err(|e| PolicyError::Syntax {
        line: e.location().line(),
        column: e.location().column(),
        message: format!("{}{}", e.message(), hcl1_hint(e.message())),
    })?;
    Ok(Node {
        line: 1,
        value: Value::Object(body_entries(&body, lines)?),
    })
}

/// HCL 1 (Vault's parser) accepted a few spellings HCL 2 does not; say how to fix them.
fn hcl1_hint(message: &str) -> &'static str {
    if message.contains("redefined attribute") {
        " (each key may appear only once in a block; Vault deprecates repeated keys too)"
    } else if message.contains("newline") {
        " (put each attribute on its own line, and separate object entries with commas or newlines)"
    } else {
        ""
    }
}

fn json_tree(text: &str, lines: &Lines) -> Result<Node, PolicyError> {
    // serde_json first: it reads any text in linear time, where hcl-edit's expression parser
    // can take minutes on a few kilobytes of invalid text (it retries object keys as every
    // kind of expression, hcl-rs#82), so it only ever sees valid JSON.
    let json = serde_json::from_str::<Json>(text).map_err(|e| PolicyError::Syntax {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    // The HCL parser again for line numbers, unless it would read the text differently: it
    // takes `${` and `%{` in a string as a template (and `$${` as an escape), and refuses a
    // few JSON spellings (the `\/` escape). Then serde's tree, without lines.
    if text.contains("${") || text.contains("%{") {
        return Ok(json_node(&json));
    }
    let node = hcl_edit::parser::parse_expr(text.trim_end())
        .ok()
        .and_then(|expr| expr_node(&expr, lines).ok());
    Ok(node.unwrap_or_else(|| json_node(&json)))
}

fn json_node(json: &Json) -> Node {
    let value = match json {
        Json::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Entry {
                    key: k.clone(),
                    line: 1,
                    value: json_node(v),
                })
                .collect(),
        ),
        Json::Array(items) => Value::Array(items.iter().map(json_node).collect()),
        Json::String(s) => Value::String(s.clone()),
        Json::Number(n) => Value::Number(n.clone()),
        Json::Bool(b) => Value::Bool(*b),
        Json::Null => Value::Null,
    };
    Node { line: 1, value }
}

/// An HCL body as object entries: `key = value` and `ident "label" { ... }`
/// (a block becomes `ident -> label -> { body }`, as HCL 1 reads it).
fn body_entries(body: &Body, lines: &Lines) -> Result<Vec<Entry>, PolicyError> {
    let mut entries = Vec::with_capacity(body.len());
    for structure in body.iter() {
        match structure {
            Structure::Attribute(attr) => entries.push(Entry {
                key: attr.key.as_str().to_string(),
                line: lines.of(attr.span()),
                value: expr_node(&attr.value, lines)?,
            }),
            Structure::Block(block) => {
                let line = lines.of(block.span());
                let mut node = Node {
                    line,
                    value: Value::Object(body_entries(&block.body, lines)?),
                };
                for label in block.labels.iter().rev() {
                    node = Node {
                        line,
                        value: Value::Object(vec![Entry {
                            key: label.as_str().to_string(),
                            line: lines.of(label.span()),
                            value: node,
                        }]),
                    };
                }
                entries.push(Entry {
                    key: block.ident.as_str().to_string(),
                    line,
                    value: node,
                });
            }
        }
    }
    Ok(entries)
}

fn expr_node(expr: &Expression, lines: &Lines) -> Result<Node, PolicyError> {
    let offset = expr.span().map(|r| r.start).unwrap_or(0);
    let line = lines.line(offset);
    let unsupported = |what: &str| PolicyError::Syntax {
        line,
        column: lines.column(offset),
        message: format!("{what} are not supported in policies; write a literal value"),
    };
    let value = match expr {
        Expression::Null(_) => Value::Null,
        Expression::Bool(b) => Value::Bool(*b.value()),
        Expression::Number(n) => Value::Number(hcl_number(n.value())),
        Expression::String(s) => Value::String(s.value().clone()),
        Expression::Array(array) => Value::Array(
            array
                .iter()
                .map(|item| expr_node(item, lines))
                .collect::<Result<_, _>>()?,
        ),
        Expression::Object(object) => {
            let mut entries = Vec::with_capacity(object.len());
            for (key, value) in object.iter() {
                let name = match key {
                    ObjectKey::Ident(ident) => ident.as_str().to_string(),
                    ObjectKey::Expression(Expression::String(s)) => s.value().clone(),
                    ObjectKey::Expression(Expression::StringTemplate(t)) => {
                        literal_template(t).ok_or_else(|| unsupported("template interpolations"))?
                    }
                    ObjectKey::Expression(_) => return Err(unsupported("computed object keys")),
                };
                entries.push(Entry {
                    key: name,
                    line: lines.of(key.span()),
                    value: expr_node(value.expr(), lines)?,
                });
            }
            Value::Object(entries)
        }
        Expression::StringTemplate(t) => Value::String(
            literal_template(t).ok_or_else(|| unsupported("template interpolations"))?,
        ),
        Expression::HeredocTemplate(h) => Value::String(
            literal_template(&h.template).ok_or_else(|| unsupported("template interpolations"))?,
        ),
        Expression::Parenthesis(p) => return expr_node(p.inner(), lines),
        Expression::Variable(_) => return Err(unsupported("variables")),
        _ => return Err(unsupported("expressions")),
    };
    Ok(Node { line, value })
}

fn hcl_number(n: &hcl_edit::Number) -> serde_json::Number {
    if let Some(u) = n.as_u64() {
        u.into()
    } else if let Some(i) = n.as_i64() {
        i.into()
    } else {
        n.as_f64()
            .and_then(serde_json::Number::from_f64)
            .unwrap_or_else(|| 0.into())
    }
}

/// The text of a template made only of literal parts.
fn literal_template(template: &Template) -> Option<String> {
    let mut out = String::new();
    for element in template.iter() {
        match element {
            Element::Literal(s) => out.push_str(s.value()),
            _ => return None,
        }
    }
    Some(out)
}

/// The entries of an object, or of every object in an array of objects (HCL 1's JSON
/// form writes a repeated key as an array).
fn object_entries<'a>(node: &'a Node, key: &str) -> Result<Vec<&'a Entry>, PolicyError> {
    let wrong = || PolicyError::InvalidValue {
        path: None,
        key: key.to_string(),
        expected: "expected an object".to_string(),
        line: node.line,
    };
    match &node.value {
        Value::Object(entries) => Ok(entries.iter().collect()),
        Value::Array(items) => {
            let mut all = Vec::new();
            for item in items {
                match &item.value {
                    Value::Object(entries) => all.extend(entries.iter()),
                    _ => return Err(wrong()),
                }
            }
            Ok(all)
        }
        _ => Err(wrong()),
    }
}

fn policy_paths(top: &Node) -> Result<Vec<PathRules>, PolicyError> {
    let mut paths = Vec::new();
    for entry in object_entries(top, "policy")? {
        match entry.key.as_str() {
            "path" => {
                for stanza in object_entries(&entry.value, "path")? {
                    paths.push(path_rules(stanza)?);
                }
            }
            // Vault accepts and ignores a top-level name; the store names the policy.
            "name" => {}
            other => {
                return Err(PolicyError::UnknownKey {
                    path: None,
                    key: other.to_string(),
                    line: entry.line,
                })
            }
        }
    }
    Ok(paths)
}

/// Reads one `path "<pattern>" { ... }` stanza.
fn path_rules(stanza: &Entry) -> Result<PathRules, PolicyError> {
    let written = stanza.key.as_str();
    // Every leading `/`, as the ACL trims them from request paths: `//a` is `a`, not a rule
    // for `/a` that no request could reach.
    let pattern = written.trim_start_matches('/').to_string();
    let kind = pattern_kind(&pattern, written, stanza.line)?;
    let in_path = |key: &str, expected: &str, line: usize| PolicyError::InvalidValue {
        path: Some(written.to_string()),
        key: key.to_string(),
        expected: expected.to_string(),
        line,
    };

    let mut rules = PathRules {
        pattern,
        kind,
        capabilities: Capabilities::NONE,
        allowed_parameters: BTreeMap::new(),
        denied_parameters: BTreeMap::new(),
        required_parameters: Vec::new(),
        min_wrapping_ttl: None,
        max_wrapping_ttl: None,
        mfa_methods: Vec::new(),
        control_group: None,
        line: stanza.line,
    };
    let mut capabilities: Vec<(String, usize)> = Vec::new();
    let mut legacy: Option<(String, usize)> = None;

    for entry in object_entries(&stanza.value, written)? {
        let key = entry.key.as_str();
        match key {
            "capabilities" => {
                capabilities = string_list(&entry.value)
                    .ok_or_else(|| in_path(key, "expected a list of strings", entry.line))?;
            }
            "policy" => match &entry.value.value {
                Value::String(s) => legacy = Some((s.clone(), entry.value.line)),
                _ => return Err(in_path(key, "expected a string", entry.line)),
            },
            "allowed_parameters" | "denied_parameters" => {
                let map = parameter_map(&entry.value)
                    .map_err(|expected| in_path(key, &expected, entry.line))?;
                let target = if key == "allowed_parameters" {
                    &mut rules.allowed_parameters
                } else {
                    &mut rules.denied_parameters
                };
                target.extend(map);
            }
            "required_parameters" => {
                rules.required_parameters = string_list(&entry.value)
                    .ok_or_else(|| in_path(key, "expected a list of strings", entry.line))?
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect();
            }
            "min_wrapping_ttl" | "max_wrapping_ttl" => {
                let ttl = duration(&entry.value).map_err(|e| in_path(key, &e, entry.line))?;
                if key == "min_wrapping_ttl" {
                    rules.min_wrapping_ttl = Some(ttl);
                } else {
                    rules.max_wrapping_ttl = Some(ttl);
                }
            }
            "mfa_methods" => {
                rules.mfa_methods = string_list(&entry.value)
                    .ok_or_else(|| in_path(key, "expected a list of strings", entry.line))?
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect();
            }
            "control_group" => match &entry.value.value {
                Value::Object(_) | Value::Array(_) => {
                    rules.control_group = Some(entry.value.to_json())
                }
                _ => return Err(in_path(key, "expected a block", entry.line)),
            },
            "comment" => {}
            other => {
                return Err(PolicyError::UnknownKey {
                    path: Some(written.to_string()),
                    key: other.to_string(),
                    line: entry.line,
                })
            }
        }
    }

    // The legacy `policy = "..."` form adds to `capabilities`, as in Vault.
    if let Some((value, line)) = legacy {
        let names: &[&str] = match value.as_str() {
            "deny" => &["deny"],
            "read" => &["read", "list"],
            "write" => &["create", "read", "update", "delete", "list"],
            "sudo" => &["create", "read", "update", "delete", "list", "sudo"],
            _ => {
                return Err(PolicyError::InvalidLegacyPolicy {
                    path: written.to_string(),
                    value,
                    line,
                })
            }
        };
        capabilities.extend(names.iter().map(|n| (n.to_string(), line)));
    }
    for (name, line) in &capabilities {
        let cap = Capabilities::from_name(name).ok_or_else(|| PolicyError::InvalidCapability {
            path: written.to_string(),
            capability: name.clone(),
            line: *line,
        })?;
        rules.capabilities |= cap;
    }

    if let (Some(min), Some(max)) = (rules.min_wrapping_ttl, rules.max_wrapping_ttl) {
        if max < min {
            return Err(in_path(
                "max_wrapping_ttl",
                "max_wrapping_ttl cannot be less than min_wrapping_ttl",
                stanza.line,
            ));
        }
    }

    // `deny` discards every other capability and every constraint of the stanza.
    if rules.capabilities.is_deny() {
        rules.capabilities = Capabilities::DENY;
        rules.allowed_parameters.clear();
        rules.denied_parameters.clear();
        rules.required_parameters.clear();
        rules.min_wrapping_ttl = None;
        rules.max_wrapping_ttl = None;
    }
    Ok(rules)
}

/// Classifies a pattern as Vault does, refusing the globs Vault's matcher cannot honour.
fn pattern_kind(pattern: &str, written: &str, line: usize) -> Result<PatternKind, PolicyError> {
    let bad = |reason| PolicyError::InvalidWildcard {
        path: written.to_string(),
        reason,
        line,
    };
    if pattern.contains("+*") {
        return Err(bad("invalid use of wildcards ('+*' is forbidden)"));
    }
    if pattern.trim_end_matches('*').contains('*') || pattern.ends_with("**") {
        return Err(bad(
            "'*' is only allowed as the last character (use '+' to match one segment)",
        ));
    }
    let segment = pattern == "+" || pattern.contains("/+") || pattern.starts_with("+/");
    Ok(if segment {
        PatternKind::SegmentWildcard
    } else if pattern.ends_with('*') {
        PatternKind::Prefix
    } else {
        PatternKind::Exact
    })
}

/// A list of strings, each with its line.
fn string_list(node: &Node) -> Option<Vec<(String, usize)>> {
    match &node.value {
        Value::Array(items) => items
            .iter()
            .map(|item| match &item.value {
                Value::String(s) => Some((s.clone(), item.line)),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// `{ "name" = [values...] }`, names lower-cased as Vault matches them.
fn parameter_map(node: &Node) -> Result<BTreeMap<String, Vec<Json>>, String> {
    let mut map = BTreeMap::new();
    for entry in object_entries(node, "parameters").map_err(|_| "expected an object of lists")? {
        if entry.key.contains('*') && entry.key != "*" {
            return Err(format!(
                "parameter key {:?}: only \"*\" may be used as a wildcard key",
                entry.key
            ));
        }
        let values = match &entry.value.value {
            Value::Array(items) => items.iter().map(Node::to_json).collect(),
            _ => {
                return Err(format!(
                    "parameter {:?}: expected a list of values (use [] for any value)",
                    entry.key
                ))
            }
        };
        map.insert(entry.key.to_lowercase(), values);
    }
    Ok(map)
}

/// Vault's `ParseDurationSecond`: whole seconds, or a duration string (`"30m"`).
fn duration(node: &Node) -> Result<Duration, String> {
    match &node.value {
        Value::Number(n) => n
            .as_u64()
            .map(Duration::from_secs)
            .ok_or_else(|| "expected a non-negative number of seconds".to_string()),
        Value::String(s) => keyhold_client::go_duration::parse_duration(s),
        _ => Err("expected a duration such as \"300\" or \"5m\"".to_string()),
    }
}
