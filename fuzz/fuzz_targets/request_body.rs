//! Request-body parsing of the HTTP layer: the path and query decoders, the streaming JSON-limit
//! scanner and `request_data` (body and query to the request's data), on any bytes. Never a
//! panic; the scanner's verdict does not depend on how the body is cut into chunks; a body the
//! scanner lets through and that parses respects every limit (depth, entries, elements, string
//! length); a refused body is a 400 that quotes none of it; query parameters fill in the data of
//! reads, lists and deletes.
//!
//! Input: an operation byte, a chunk-size byte, then `PATH?QUERY`, a newline, and the body.
#![no_main]

use std::collections::BTreeMap;

use keyhold::fuzzing::{decode_path, parse_query, request_data, JsonScanner};
use keyhold::http::JsonLimits;
use keyhold::logical::Operation;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const LIMITS: JsonLimits = JsonLimits {
    max_depth: 8,
    max_string_value_length: 64,
    max_object_entry_count: 16,
    max_array_element_count: 16,
};

fuzz_target!(|data: &[u8]| {
    let [op, chunk, rest @ ..] = data else {
        return;
    };
    let operation = [
        Operation::Read,
        Operation::List,
        Operation::Update,
        Operation::Patch,
        Operation::Delete,
    ][usize::from(*op) % 5];
    let (target, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let target = String::from_utf8_lossy(target);
    let (raw_path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (&*target, None),
    };
    if let Ok(path) = decode_path(raw_path) {
        assert!(!path.chars().any(char::is_control), "{path:?}");
    }
    let query = parse_query(query);

    let mut whole = JsonScanner::new(LIMITS);
    let verdict = whole.feed(body);
    let mut pieces = JsonScanner::new(LIMITS);
    let chunked = body
        .chunks(usize::from(*chunk).max(1))
        .try_for_each(|piece| pieces.feed(piece));
    assert_eq!(verdict, chunked, "cut into {chunk}-byte chunks");

    // The limits are the body's: query parameters are checked separately (and merged after).
    match request_data(Operation::Update, &BTreeMap::new(), Some(body)) {
        Ok(map) => {
            if verdict.is_ok() {
                within_limits(&Value::Object(map), 1);
            }
        }
        Err(e) => {
            assert_eq!(e.status(), 400, "{e}");
            let shown = e.to_string();
            assert!(shown.starts_with("failed to parse JSON input"), "{shown}");
            let body = String::from_utf8_lossy(body);
            let body = body.trim();
            if body.len() >= 8 {
                assert!(!shown.contains(body), "the error quotes the body: {shown}");
            }
        }
    }
    if let Ok(map) = request_data(operation, &query, Some(body)) {
        if matches!(
            operation,
            Operation::Read | Operation::List | Operation::Delete
        ) {
            for key in query.keys().filter(|k| *k != "list") {
                assert!(map.contains_key(key), "query parameter {key:?} dropped");
            }
        }
    }
});

/// Asserts `value` (at nesting `depth`) keeps within [`LIMITS`].
fn within_limits(value: &Value, depth: usize) {
    match value {
        Value::Object(map) => {
            assert!(depth <= LIMITS.max_depth, "nesting {depth}");
            assert!(
                map.len() <= LIMITS.max_object_entry_count,
                "{} entries",
                map.len()
            );
            for (k, v) in map {
                assert!(
                    k.len() <= LIMITS.max_string_value_length,
                    "key of {} bytes",
                    k.len()
                );
                within_limits(v, depth + 1);
            }
        }
        Value::Array(items) => {
            assert!(depth <= LIMITS.max_depth, "nesting {depth}");
            assert!(
                items.len() <= LIMITS.max_array_element_count,
                "{} elements",
                items.len()
            );
            for v in items {
                within_limits(v, depth + 1);
            }
        }
        Value::String(s) => {
            assert!(
                s.len() <= LIMITS.max_string_value_length,
                "string of {} bytes",
                s.len()
            );
        }
        _ => {}
    }
}
