//! Tests for the kv engine.
