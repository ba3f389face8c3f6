//! Test harness for keyhold: starts real `keyhold server` processes on loopback addresses with
//! real TLS (a throw-away CA per test), and drives them over HTTP and signals as an operator would.
//!
//! Layout of one test's files (a temp dir, removed on drop unless `KEYHOLD_KEEP_TEST_DIRS` is set):
//! ```text
//! <tmp>/ca.pem
//! <tmp>/n1/{keyhold.hcl, keyhold.log, server.crt, server.key (0600), data/}
//! <tmp>/n2/...    (node i listens on 127.0.0.i, so clusters need no port juggling per node)
//! ```
//! `provision` (the [`provision`] module) keeps its own layout: a test environment file and a
//! `--state-dir` in a temp dir, nodes on a loopback range of the test's own.
//! [`moto`] runs moto's server mode (S3, KMS) for AWS paths, on 127.0.40.x to 127.0.49.x.
//!
//! Architecture invariant: the harness reaches the server only through its command line, its
//! config file, its HTTP API and signals. It links no server code.

pub mod api;
pub mod cluster;
pub mod moto;
pub mod node;
pub mod nshost;
pub mod pki;
pub mod provision;
pub mod raw;
pub mod slow_disk;
pub mod vm;

pub use api::{list_method, Api, InitKeys, Resp, Session};
pub use cluster::{retry_join_lines, Cluster, RaftServer, Roles};
pub use moto::{moto_ip, Moto};
pub use node::{
    client_builder, eventually, free_port, keyhold_bin, next_keyhold_bin, provision_bin,
    ListenerTls, Node, NodeOptions, Storage, NEXT_VERSION,
};
pub use pki::{CertFiles, IssuedCert, Pki};
pub use raw::{RawResponse, RawTls, RawTlsOptions};

use anyhow::{Context, Result};

/// Whether the slow tier runs (`KEYHOLD_SLOW_TESTS=1`). Slow tests are named `slow_...` and call
/// this first; when it says no they print that they were skipped and pass, never `#[ignore]`d.
pub fn slow_tests_enabled(test: &str) -> bool {
    let enabled = std::env::var_os("KEYHOLD_SLOW_TESTS").is_some_and(|v| v == "1");
    if !enabled {
        eprintln!("{test}: skipped; set KEYHOLD_SLOW_TESTS=1 to run the slow tier");
    }
    enabled
}

/// A test's own directory (`<tmp>/<prefix>XXXXXX`), removed on drop unless
/// `KEYHOLD_KEEP_TEST_DIRS` is set, in which case its path is printed.
pub fn test_dir(prefix: &str) -> Result<tempfile::TempDir> {
    let mut dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .context("create test directory")?;
    if std::env::var_os("KEYHOLD_KEEP_TEST_DIRS").is_some() {
        dir.disable_cleanup(true);
        eprintln!("keeping test directory {}", dir.path().display());
    }
    Ok(dir)
}
