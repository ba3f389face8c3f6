//! Vault's listener JSON limits (`max_json_depth`, `max_json_string_value_length`,
//! `max_json_object_entry_count`, `max_json_array_element_count`), checked by a single-pass byte
//! scanner fed chunk by chunk as the body arrives, so a hostile body is refused before it is
//! buffered whole or turned into a `serde_json::Value` (which costs far more memory than its bytes).
//!
//! The scanner only counts: it does not validate JSON. Syntax errors are left to `serde_json`,
//! which runs only on bodies the scanner let through.

/// The four limits, with Vault's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonLimits {
    pub max_depth: usize,
    pub max_string_value_length: usize,
    pub max_object_entry_count: usize,
    pub max_array_element_count: usize,
}

impl Default for JsonLimits {
    fn default() -> Self {
        JsonLimits {
            max_depth: 300,
            max_string_value_length: 1 << 20,
            max_object_entry_count: 10_000,
            max_array_element_count: 10_000,
        }
    }
}

/// Which limit a body broke; the message says which listener key raises it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonLimitError {
    #[error("JSON input exceeds allowed nesting depth of {0} (listener max_json_depth)")]
    Depth(usize),
    #[error("JSON string value exceeds allowed length of {0} bytes (listener max_json_string_value_length)")]
    StringLength(usize),
    #[error(
        "JSON object exceeds allowed entry count of {0} (listener max_json_object_entry_count)"
    )]
    ObjectEntries(usize),
    #[error(
        "JSON array exceeds allowed element count of {0} (listener max_json_array_element_count)"
    )]
    ArrayElements(usize),
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    object: bool,
    count: usize,
    /// The next value-start (object: key-start) begins a new element.
    expecting: bool,
}

/// Scans a JSON text in pieces; state carries across [`JsonScanner::feed`] calls.
#[derive(Debug)]
pub struct JsonScanner {
    limits: JsonLimits,
    stack: Vec<Frame>,
    in_string: bool,
    escaped: bool,
    string_len: usize,
}

impl JsonScanner {
    pub fn new(limits: JsonLimits) -> Self {
        JsonScanner {
            limits,
            stack: Vec::new(),
            in_string: false,
            escaped: false,
            string_len: 0,
        }
    }

    /// Counts `chunk`; the first broken limit ends the scan.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), JsonLimitError> {
        for &b in chunk {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                    continue;
                }
                self.string_len += 1;
                if self.string_len > self.limits.max_string_value_length {
                    return Err(JsonLimitError::StringLength(
                        self.limits.max_string_value_length,
                    ));
                }
                continue;
            }
            match b {
                b' ' | b'\t' | b'\n' | b'\r' | b':' => {}
                b',' => {
                    if let Some(top) = self.stack.last_mut() {
                        top.expecting = true;
                    }
                }
                b'}' | b']' => {
                    self.stack.pop();
                }
                _ => {
                    self.element_start()?;
                    match b {
                        b'"' => {
                            self.in_string = true;
                            self.string_len = 0;
                        }
                        b'{' | b'[' => {
                            if self.stack.len() >= self.limits.max_depth {
                                return Err(JsonLimitError::Depth(self.limits.max_depth));
                            }
                            self.stack.push(Frame {
                                object: b == b'{',
                                count: 0,
                                expecting: true,
                            });
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// A token that may begin an element of the innermost container: counts it when it does.
    fn element_start(&mut self) -> Result<(), JsonLimitError> {
        let Some(top) = self.stack.last_mut() else {
            return Ok(());
        };
        if !top.expecting {
            return Ok(());
        }
        top.expecting = false;
        top.count += 1;
        match top.object {
            true if top.count > self.limits.max_object_entry_count => Err(
                JsonLimitError::ObjectEntries(self.limits.max_object_entry_count),
            ),
            false if top.count > self.limits.max_array_element_count => Err(
                JsonLimitError::ArrayElements(self.limits.max_array_element_count),
            ),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> JsonLimits {
        JsonLimits {
            max_depth: 3,
            max_string_value_length: 5,
            max_object_entry_count: 2,
            max_array_element_count: 3,
        }
    }

    fn check(input: &str, want: Result<(), JsonLimitError>) {
        // Whole, and one byte at a time: the chunking must not change the answer.
        let mut whole = JsonScanner::new(small());
        assert_eq!(whole.feed(input.as_bytes()), want, "whole: {input}");
        let mut bytewise = JsonScanner::new(small());
        let got = input
            .as_bytes()
            .chunks(1)
            .try_for_each(|c| bytewise.feed(c));
        assert_eq!(got, want, "bytewise: {input}");
    }

    #[test]
    fn limits() {
        use JsonLimitError::*;
        for (input, want) in [
            (r#"{"a":1,"b":2}"#, Ok(())),
            (r#"{"a":1,"b":2,"c":3}"#, Err(ObjectEntries(2))),
            (r#"{"a":{"x":1,"y":2},"b":[1,2,3]}"#, Ok(())),
            (r#"{"a":[1,2,3,4]}"#, Err(ArrayElements(3))),
            (r#"{"a":["x,y,z"]}"#, Ok(())),
            (r#"{"a":"12345"}"#, Ok(())),
            (r#"{"a":"123456"}"#, Err(StringLength(5))),
            (r#"{"a":"1\"34"}"#, Ok(())),
            (r#"{"123456":1}"#, Err(StringLength(5))),
            (r#"{"a":[[1]]}"#, Ok(())),
            (r#"{"a":[[[1]]]}"#, Err(Depth(3))),
            (r#"{"a":[],"b":{}}"#, Ok(())),
            (r#"[{},{},{}]"#, Ok(())),
            (r#"[{},{},{},{}]"#, Err(ArrayElements(3))),
            (r#"{"a": true , "b" : null}"#, Ok(())),
            ("", Ok(())),
        ] {
            check(input, want);
        }
    }

    #[test]
    fn defaults_are_vaults() {
        let d = JsonLimits::default();
        assert_eq!(
            (
                d.max_depth,
                d.max_string_value_length,
                d.max_object_entry_count,
                d.max_array_element_count
            ),
            (300, 1_048_576, 10_000, 10_000)
        );
    }
}
