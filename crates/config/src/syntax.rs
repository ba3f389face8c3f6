//! The syntax layer: HCL or JSON text becomes one small tree of values that
//! remember the byte offset they were written at, so that the decoder has a
//! single shape to read and every error can name a line.
//!
//! The tree follows HCL1's model, which Vault's JSON form also uses: a block
//! `listener "tcp" { ... }` is the key `listener` holding an object keyed by
//! the label `tcp`, so `{"listener": {"tcp": {...}}}` reads the same way.
//! Repeated blocks are repeated entries; nothing is merged here.

use super::error::{ConfigError, Location};
use hcl_edit::expr::{Expression, ObjectKey, UnaryOperator};
use hcl_edit::structure::{Body, Structure};
use hcl_edit::template::{Element, Template};
use hcl_edit::Span;

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    /// Byte offset in the source where the value starts.
    pub pos: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Node>),
    Object(Object),
    /// An HCL expression Keyhold does not evaluate (interpolation, a function
    /// call, a variable): Vault does not evaluate them in config files either.
    Expr(&'static str),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub entries: Vec<Entry>,
    /// True for the body of an HCL block (`{ ... }` after the labels), false
    /// for a label level or a JSON/HCL object value. Lets the decoder tell
    /// `listener { ... }` (label missing) from `listener "tcp" { ... }`.
    pub is_block_body: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_pos: usize,
    pub value: Node,
}

impl Value {
    /// What kind of value this is, for "expected X, got Y" messages. Never
    /// the value itself: it may be a secret.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::List(_) => "a list",
            Value::Object(_) => "a block",
            Value::Expr(what) => what,
        }
    }
}

/// Turns byte offsets into 1-based lines and columns (columns count characters).
pub struct Source<'a> {
    pub file: &'a str,
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> Source<'a> {
    pub fn new(file: &'a str, text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Source {
            file,
            text,
            line_starts,
        }
    }

    pub fn location(&self, pos: usize) -> Location {
        let pos = pos.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= pos);
        let start = self.line_starts[line - 1];
        let column = self
            .text
            .get(start..pos)
            .map_or(pos - start, |s| s.chars().count())
            + 1;
        Location::new(self.file, line, column)
    }

    pub fn error(&self, pos: usize, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.location(pos), key, message)
    }
}

/// Whether `file_name` and `text` are Vault's JSON form rather than HCL.
pub fn is_json(file_name: &str, text: &str) -> bool {
    let lower = file_name.to_ascii_lowercase();
    if lower.ends_with(".json") {
        return true;
    }
    if lower.ends_with(".hcl") {
        return false;
    }
    text.trim_start().starts_with('{')
}

/// Parses a whole file into its root object.
pub fn parse(src: &Source<'_>, text: &str, json: bool) -> Result<Object, ConfigError> {
    if json {
        parse_json(src, text)
    } else {
        parse_hcl(src, text)
    }
}

fn parse_hcl(src: &Source<'_>, text: &str) -> Result<Object, ConfigError> {
    let strict = hcl_edit::parser::parse_body(text);
    // HCL1 (which Vault reads) also takes commas between attributes and
    // several attributes on one line; HCL2 does not. Retry with those
    // separators turned into newlines, keeping every byte offset.
    let parsed = match strict {
        Err(e) => match relax_hcl1(text).map(|t| hcl_edit::parser::parse_body(&t)) {
            Some(Ok(body)) => Ok(body),
            _ => Err(e),
        },
        ok => ok,
    };
    let body = parsed.map_err(|e| {
        let loc = e.location();
        // A quote left open makes the parser fail lines later, where the
        // string finally ends; point at the line where it starts instead.
        if let Some((line, column)) = unterminated_string(text, loc.line()) {
            return ConfigError::new(
                Location::new(src.file, line, column),
                "",
                "HCL syntax error: unterminated string: this quote is not closed on its line",
            );
        }
        // The parser's message says what it expected; its copy of the source
        // line is left out because that line may hold a secret.
        ConfigError::new(
            Location::new(src.file, loc.line(), loc.column()),
            "",
            format!("HCL syntax error: {}", e.message()),
        )
    })?;
    hcl_body(src, &body)
}

/// The first line (1-based, up to and including `upto`) whose quoted string
/// is not closed on that line, with the column of its opening quote. Comments
/// and heredoc bodies are skipped.
fn unterminated_string(text: &str, upto: usize) -> Option<(usize, usize)> {
    let mut heredoc: Option<String> = None;
    for (idx, line) in text.lines().enumerate().take(upto) {
        if let Some(marker) = &heredoc {
            if line.trim() == marker {
                heredoc = None;
            }
            continue;
        }
        let bytes = line.as_bytes();
        let (mut i, mut open) = (0, None);
        while i < bytes.len() {
            match (open, bytes[i]) {
                (None, b'#') => break,
                (None, b'/') if bytes.get(i + 1) == Some(&b'/') => break,
                (None, b'<') if bytes.get(i + 1) == Some(&b'<') => {
                    let marker = line[i + 2..].trim_start_matches('-').trim();
                    if !marker.is_empty()
                        && marker
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    {
                        heredoc = Some(marker.to_string());
                    }
                    break;
                }
                (None, b'"') => open = Some(i),
                (Some(_), b'\\') => i += 1,
                (Some(_), b'"') => open = None,
                _ => {}
            }
            i += 1;
        }
        if let Some(col) = open {
            return Some((idx + 1, col + 1));
        }
    }
    None
}

/// Rewrites HCL1 separators into HCL2 ones without moving any byte: inside
/// `{ }`, a `,` after a value becomes a newline, and so does the blank before
/// an attribute that follows a value on the same line; a brace pair that saw
/// such a rewrite also gets newlines just inside it. `None` if nothing changed.
fn relax_hcl1(text: &str) -> Option<String> {
    let mut out: Vec<u8> = text.as_bytes().to_vec();
    let bytes = text.as_bytes();
    // Open brackets: (byte, position, whether a separator inside was rewritten).
    let mut stack: Vec<(u8, usize, bool)> = Vec::new();
    let mut changed = false;
    let mut last_significant = b'\n';
    let mut i = 0;
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                last_significant = b'"';
            }
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let end = text[i + 2..].find("*/").map_or(bytes.len(), |e| i + 4 + e);
                i = end;
                continue;
            }
            b'<' if bytes.get(i + 1) == Some(&b'<') => {
                // Heredoc: skip to the line holding only the delimiter.
                let rest = text[i + 2..].trim_start_matches('-');
                let delim: String = rest.chars().take_while(|c| is_ident(*c as u8)).collect();
                let body_start = text[i..].find('\n').map_or(bytes.len(), |n| i + n + 1);
                let mut at = body_start;
                while at < bytes.len() {
                    let line_end = text[at..].find('\n').map_or(bytes.len(), |n| at + n);
                    if !delim.is_empty() && text[at..line_end].trim() == delim {
                        at = line_end;
                        break;
                    }
                    at = line_end + 1;
                }
                i = at;
                last_significant = b'"';
                continue;
            }
            b'{' | b'[' | b'(' => {
                stack.push((b, i, false));
                last_significant = b;
            }
            b'}' | b']' | b')' => {
                // HCL1 also takes a multi-line block whose first attribute
                // sits on the `{` line (`storage "raft" { path = "/x"`) or
                // whose `}` ends the last attribute's line.
                if let Some((b'{', open, rewritten)) = stack.pop() {
                    let multiline = bytes[open..i].contains(&b'\n');
                    if rewritten || multiline {
                        for at in [open + 1, i.wrapping_sub(1)] {
                            if matches!(out.get(at), Some(b' ' | b'\t')) {
                                out[at] = b'\n';
                                changed |= multiline;
                            }
                        }
                    }
                }
                last_significant = b;
            }
            b',' if matches!(stack.last(), Some((b'{', _, _))) => {
                out[i] = b'\n';
                changed = true;
                if let Some(top) = stack.last_mut() {
                    top.2 = true;
                }
                last_significant = b'\n';
            }
            b'\n' => last_significant = b'\n',
            b' ' | b'\t' | b'\r' => {}
            _ if is_ident(b) => {
                let start = i;
                while i < bytes.len() && is_ident(bytes[i]) {
                    i += 1;
                }
                let after = text[i..].trim_start_matches([' ', '\t']);
                let is_attribute = after.starts_with('=') && !after.starts_with("==");
                let follows_value = matches!(last_significant, b'"' | b']' | b'}' | b')')
                    || is_ident(last_significant);
                if is_attribute
                    && follows_value
                    && start > 0
                    && matches!(bytes[start - 1], b' ' | b'\t')
                    && matches!(stack.last(), Some((b'{', _, _)))
                {
                    out[start - 1] = b'\n';
                    changed = true;
                    if let Some(top) = stack.last_mut() {
                        top.2 = true;
                    }
                }
                last_significant = bytes[i - 1];
                continue;
            }
            _ => last_significant = b,
        }
        i += 1;
    }
    if changed {
        String::from_utf8(out).ok()
    } else {
        None
    }
}

fn start(span: Option<std::ops::Range<usize>>) -> usize {
    span.map_or(0, |r| r.start)
}

fn hcl_body(src: &Source<'_>, body: &Body) -> Result<Object, ConfigError> {
    let mut entries = Vec::with_capacity(body.len());
    for structure in body.iter() {
        match structure {
            Structure::Attribute(attr) => entries.push(Entry {
                key: attr.key.as_str().to_string(),
                key_pos: start(attr.key.span()),
                value: hcl_expr(src, &attr.value)?,
            }),
            Structure::Block(block) => {
                let block_pos = start(block.span());
                let mut value = Node {
                    value: Value::Object(Object {
                        is_block_body: true,
                        ..hcl_body(src, &block.body)?
                    }),
                    pos: block_pos,
                };
                // Wrap the body in one object level per label, innermost first.
                for label in block.labels.iter().rev() {
                    let label_pos = start(label.span());
                    value = Node {
                        value: Value::Object(Object {
                            entries: vec![Entry {
                                key: label.as_str().to_string(),
                                key_pos: label_pos,
                                value,
                            }],
                            is_block_body: false,
                        }),
                        pos: label_pos,
                    };
                }
                entries.push(Entry {
                    key: block.ident.as_str().to_string(),
                    key_pos: start(block.ident.span()),
                    value,
                });
            }
        }
    }
    Ok(Object {
        entries,
        is_block_body: true,
    })
}

fn literal(template: &Template) -> Option<String> {
    let mut out = String::new();
    for element in template.iter() {
        match element {
            Element::Literal(s) => out.push_str(s.value()),
            _ => return None,
        }
    }
    Some(out)
}

fn hcl_expr(src: &Source<'_>, expr: &Expression) -> Result<Node, ConfigError> {
    let pos = start(expr.span());
    let value = match expr {
        Expression::Null(_) => Value::Null,
        Expression::Bool(b) => Value::Bool(*b.value()),
        Expression::Number(n) => {
            let n = n.value();
            match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            }
        }
        Expression::String(s) => Value::Str(s.value().clone()),
        Expression::Array(items) => Value::List(
            items
                .iter()
                .map(|item| hcl_expr(src, item))
                .collect::<Result<_, _>>()?,
        ),
        Expression::Object(object) => {
            let mut entries = Vec::with_capacity(object.len());
            for (key, value) in object.iter() {
                let name = match key {
                    ObjectKey::Ident(ident) => ident.as_str().to_string(),
                    ObjectKey::Expression(Expression::String(s)) => s.value().clone(),
                    ObjectKey::Expression(other) => {
                        return Err(src.error(
                            start(other.span()),
                            "",
                            "an object key must be a name or a quoted string",
                        ))
                    }
                };
                entries.push(Entry {
                    key: name,
                    key_pos: start(key.span()),
                    value: hcl_expr(src, value.expr())?,
                });
            }
            Value::Object(Object {
                entries,
                is_block_body: false,
            })
        }
        Expression::StringTemplate(t) => match literal(t) {
            Some(s) => Value::Str(s),
            None => Value::Expr("an interpolated string (\"${...}\")"),
        },
        Expression::HeredocTemplate(h) => match literal(&h.template) {
            Some(s) => Value::Str(s),
            None => Value::Expr("an interpolated heredoc (\"${...}\")"),
        },
        Expression::Parenthesis(p) => return hcl_expr(src, p.inner()),
        Expression::UnaryOp(op) if *op.operator.value() == UnaryOperator::Neg => {
            match hcl_expr(src, &op.expr)?.value {
                Value::Int(i) => Value::Int(-i),
                Value::Float(f) => Value::Float(-f),
                _ => Value::Expr("an expression"),
            }
        }
        Expression::Variable(_) => Value::Expr("a bare name (put strings in double quotes)"),
        Expression::FuncCall(_) => Value::Expr("a function call"),
        _ => Value::Expr("an expression"),
    };
    Ok(Node { value, pos })
}

/// JSON: serde_json decides whether the text is valid (and words the syntax
/// error); a small scanner then walks the same text again to keep offsets,
/// handing each string and number token back to serde_json to decode.
fn parse_json(src: &Source<'_>, text: &str) -> Result<Object, ConfigError> {
    if text.trim().is_empty() {
        return Ok(Object {
            entries: Vec::new(),
            is_block_body: true,
        });
    }
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
        let message = e.to_string();
        // serde_json appends " at line L column C"; the location says that already.
        let message = message
            .rsplit_once(" at line ")
            .map_or(message.as_str(), |(m, _)| m);
        return Err(ConfigError::new(
            Location::new(src.file, e.line(), e.column()),
            "",
            format!("JSON syntax error: {message}"),
        ));
    }
    let mut scanner = JsonScanner { text, at: 0 };
    let root = scanner.value()?;
    match root.value {
        Value::Object(object) => Ok(Object {
            is_block_body: true,
            ..object
        }),
        other => Err(src.error(
            root.pos,
            "",
            format!("a JSON config must be an object, got {}", other.kind()),
        )),
    }
}

struct JsonScanner<'a> {
    text: &'a str,
    at: usize,
}

impl JsonScanner<'_> {
    fn bug(&self) -> ConfigError {
        // Unreachable for text serde_json accepted; kept as an error, not a panic.
        ConfigError::new(Location::default(), "", "JSON could not be read")
    }

    fn skip_ws(&mut self) {
        let rest = &self.text[self.at..];
        self.at += rest.len() - rest.trim_start().len();
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        self.skip_ws();
        if self.peek() == Some(byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn string(&mut self) -> Result<String, ConfigError> {
        let bytes = self.text.as_bytes();
        let begin = self.at;
        let mut i = begin + 1;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b'"' => {
                    self.at = i + 1;
                    return serde_json::from_str(&self.text[begin..self.at])
                        .map_err(|_| self.bug());
                }
                _ => i += 1,
            }
        }
        Err(self.bug())
    }

    fn value(&mut self) -> Result<Node, ConfigError> {
        self.skip_ws();
        let pos = self.at;
        let value = match self.peek().ok_or_else(|| self.bug())? {
            b'{' => {
                self.at += 1;
                let mut entries = Vec::new();
                if !self.eat(b'}') {
                    loop {
                        self.skip_ws();
                        let key_pos = self.at;
                        let key = self.string()?;
                        if !self.eat(b':') {
                            return Err(self.bug());
                        }
                        let value = self.value()?;
                        entries.push(Entry {
                            key,
                            key_pos,
                            value,
                        });
                        if self.eat(b'}') {
                            break;
                        }
                        if !self.eat(b',') {
                            return Err(self.bug());
                        }
                    }
                }
                Value::Object(Object {
                    entries,
                    is_block_body: false,
                })
            }
            b'[' => {
                self.at += 1;
                let mut items = Vec::new();
                if !self.eat(b']') {
                    loop {
                        items.push(self.value()?);
                        if self.eat(b']') {
                            break;
                        }
                        if !self.eat(b',') {
                            return Err(self.bug());
                        }
                    }
                }
                Value::List(items)
            }
            b'"' => Value::Str(self.string()?),
            _ => {
                let rest = &self.text[self.at..];
                let len = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || "+-.".contains(c)))
                    .unwrap_or(rest.len());
                let token = &rest[..len];
                self.at += len;
                match token {
                    "true" => Value::Bool(true),
                    "false" => Value::Bool(false),
                    "null" => Value::Null,
                    _ => match token.parse::<i64>() {
                        Ok(i) => Value::Int(i),
                        Err(_) => Value::Float(token.parse().map_err(|_| self.bug())?),
                    },
                }
            }
        };
        Ok(Node { value, pos })
    }
}
