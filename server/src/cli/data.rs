//! `key=value` arguments into a JSON body, as vault's kvbuilder does: `k=@file` reads a file,
//! `k=-` reads stdin, a lone `-` merges a JSON object from stdin, `\@` escapes a literal `@`,
//! and a repeated key collects its values into a list. Values stay strings; the server coerces.

use std::io::Read;

use serde_json::{Map, Value};

use super::CliError;

pub fn parse_kv_args(
    args: &[String],
    stdin: &mut dyn Read,
) -> Result<Map<String, Value>, CliError> {
    let mut map = Map::new();
    let mut stdin_used = false;
    let mut read_stdin = |what: &str| -> Result<String, CliError> {
        if stdin_used {
            return Err(CliError::Usage(format!(
                "Failed to parse K=V data: stdin already consumed, cannot read {what} from it"
            )));
        }
        stdin_used = true;
        let mut text = String::new();
        stdin
            .read_to_string(&mut text)
            .map_err(|e| CliError::Local(format!("Failed to read stdin: {e}")))?;
        Ok(text)
    };
    for arg in args {
        if arg == "-" {
            let text = read_stdin("a JSON object")?;
            let value: Value = serde_json::from_str(&text).map_err(|e| {
                CliError::Usage(format!(
                    "Failed to parse K=V data: invalid JSON on stdin: {e}"
                ))
            })?;
            let Value::Object(obj) = value else {
                return Err(CliError::Usage(
                    "Failed to parse K=V data: stdin must hold a JSON object".into(),
                ));
            };
            for (k, v) in obj {
                insert(&mut map, k, v);
            }
            continue;
        }
        let Some((key, value)) = arg.split_once('=') else {
            return Err(CliError::Usage(format!(
                "Failed to parse K=V data: invalid key/value pair \"{arg}\": format must be key=value"
            )));
        };
        let value = if value == "-" {
            read_stdin(key)?
        } else if let Some(path) = value.strip_prefix('@') {
            std::fs::read_to_string(path).map_err(|e| {
                CliError::Local(format!(
                    "Failed to parse K=V data: error reading file {path}: {e}"
                ))
            })?
        } else if let Some(escaped) = value.strip_prefix("\\@") {
            format!("@{escaped}")
        } else {
            value.to_string()
        };
        insert(&mut map, key.to_string(), Value::String(value));
    }
    Ok(map)
}

fn insert(map: &mut Map<String, Value>, key: String, value: Value) {
    match map.get_mut(&key) {
        Some(Value::Array(list)) => list.push(value),
        Some(existing) => {
            let first = existing.take();
            *existing = Value::Array(vec![first, value]);
        }
        None => {
            map.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(args: &[&str], stdin: &str, expect: Result<Value, &str>) {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let got = parse_kv_args(&args, &mut stdin.as_bytes());
        match (got, expect) {
            (Ok(map), Ok(expect)) => assert_eq!(Value::Object(map), expect, "{args:?}"),
            (Err(e), Err(part)) => assert!(e.to_string().contains(part), "{args:?}: {e}"),
            (got, expect) => panic!("{args:?}: got {got:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn key_values() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cert.pem");
        std::fs::write(&file, "PEM DATA\n").unwrap();
        let at_file = format!("c=@{}", file.display());
        check(&["a=b", "c=d=e"], "", Ok(json!({"a": "b", "c": "d=e"})));
        check(
            &["a=b", &at_file],
            "",
            Ok(json!({"a": "b", "c": "PEM DATA\n"})),
        );
        check(&["a=-"], "from stdin", Ok(json!({"a": "from stdin"})));
        check(
            &["-"],
            r#"{"x": 1, "y": [true]}"#,
            Ok(json!({"x": 1, "y": [true]})),
        );
        check(&["-", "z=1"], r#"{"x": 1}"#, Ok(json!({"x": 1, "z": "1"})));
        check(&["a=\\@not-a-file"], "", Ok(json!({"a": "@not-a-file"})));
        check(
            &["p=a", "p=b", "p=c"],
            "",
            Ok(json!({"p": ["a", "b", "c"]})),
        );
        check(&["a="], "", Ok(json!({"a": ""})));
        check(&["novalue"], "", Err("format must be key=value"));
        check(&["a=-", "b=-"], "x", Err("stdin already consumed"));
        check(&["a=@/nonexistent/file"], "", Err("error reading file"));
        check(&["-"], "[1]", Err("JSON object"));
    }
}
