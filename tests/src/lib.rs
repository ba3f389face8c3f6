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
//!
//! Architecture invariant: the harness reaches the server only through its command line, its
//! config file, its HTTP API and signals. It links no server code.

pub mod api;
pub mod cluster;
pub mod node;
pub mod pki;
pub mod provision;
pub mod raw;

pub use api::{list_method, Api, InitKeys, Resp};
pub use cluster::{retry_join_lines, Cluster, RaftServer, Roles};
pub use node::{
    client_builder, eventually, free_port, keyhold_bin, test_dir, ListenerTls, Node, NodeOptions,
    Storage,
};
pub use pki::{CertFiles, IssuedCert, Pki};
pub use raw::{RawResponse, RawTls, RawTlsOptions};
