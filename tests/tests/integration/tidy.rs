//! The rules the team keeps, as a test that fails (after rust-analyzer's `xtask/src/tidy.rs`):
//! every Rust file opens with a `//!` line saying what it is for; the provisioner names no part
//! of the server crate (it reaches servers through `keyhold-client` alone); the README keeps
//! its two commands, the one that brings up the default local cluster and the one that runs the
//! tests, and `.ci/run` runs the latter.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The repository root (this package lives in `tests/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Every `.rs` file below `dir`, skipping build output.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if !matches!(name, "target" | ".git" | "node_modules") && !name.starts_with('.') {
                rust_files(&path, out)?;
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
    Ok(())
}

fn sources(parts: &[&str]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for part in parts {
        rust_files(&root().join(part), &mut files)?;
    }
    files.sort();
    Ok(files)
}

#[test]
fn every_source_file_says_what_it_is_for() -> Result<()> {
    let mut missing = Vec::new();
    let files = sources(&["server", "crates", "provisioner", "tests", "fuzz"])?;
    assert!(files.len() > 100, "found only {} Rust files", files.len());
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        if !text.starts_with("//!") {
            missing.push(file.strip_prefix(root())?.display().to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "these files do not open with a `//!` line saying what they are for:\n  {}",
        missing.join("\n  ")
    );
    Ok(())
}

/// What would put the server's internals within the provisioner's reach.
const SERVER_INTERNALS: &[&str] = &[
    "keyhold::",
    "use keyhold;",
    "extern crate keyhold",
    "sled::",
    "openraft::",
    "axum::",
];

#[test]
fn the_provisioner_names_no_server_internals() -> Result<()> {
    let manifest = std::fs::read_to_string(root().join("provisioner/Cargo.toml"))?;
    let deps: Vec<&str> = manifest
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.starts_with("keyhold.")
                || l.starts_with("keyhold =")
                || l.starts_with("sled")
                || l.starts_with("openraft")
                || l.starts_with("axum")
        })
        .collect();
    assert!(
        deps.is_empty(),
        "provisioner/Cargo.toml depends on the server or its internals: {deps:?}; share what it \
         needs through crates/ instead"
    );
    let mut found = Vec::new();
    for file in sources(&["provisioner"])? {
        let text = std::fs::read_to_string(&file)?;
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for needle in SERVER_INTERNALS {
                if line.contains(needle) {
                    found.push(format!(
                        "{}:{}: {}",
                        file.strip_prefix(root())?.display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "the provisioner names server internals (it may use keyhold_client, keyhold_config and \
         keyhold_snapshot only):\n  {}",
        found.join("\n  ")
    );
    Ok(())
}

#[test]
fn the_readme_keeps_its_two_commands_and_ci_runs_the_test_one() -> Result<()> {
    let readme = std::fs::read_to_string(root().join("README.md"))?;
    let blocks: Vec<&str> = readme.split("```").skip(1).step_by(2).collect();
    let in_a_block = |needle: &str| blocks.iter().any(|b| b.contains(needle));
    assert!(
        in_a_block("provision up"),
        "README.md shows no `provision up` command in a code block"
    );
    assert!(
        in_a_block("scripts/test"),
        "README.md shows no `scripts/test` command in a code block"
    );
    let ci = std::fs::read_to_string(root().join(".ci/run"))?;
    assert!(
        ci.contains("scripts/test"),
        ".ci/run does not run the README's test command (scripts/test)"
    );
    assert!(
        root().join("scripts/test").exists(),
        "scripts/test, the README's test command, is missing"
    );
    Ok(())
}
