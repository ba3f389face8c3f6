//! The `provision` binary.
fn main() {}
