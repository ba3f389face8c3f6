//! The CI job the README documents, run as written: its script block is taken from README.md
//! (and must stand unchanged in the GitHub Actions and GitLab CI jobs beside it), run by bash
//! with no terminal in a directory holding only `environments/`, with `provision` and `keyhold`
//! on PATH; it must pass and leave no process, port, file or directory behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context, Result};
use keyhold_tests::{keyhold_bin, provision_bin, test_dir};

/// The fenced block after the `<!-- ci-job-script -->` marker.
fn documented_script(readme: &str) -> Result<String> {
    let (_, after) = readme
        .split_once("<!-- ci-job-script -->")
        .context("README.md has no <!-- ci-job-script --> marker")?;
    let body = after
        .trim_start()
        .strip_prefix("```sh\n")
        .context("the marker is not followed by a ```sh block")?;
    let (script, _) = body.split_once("```").context("unterminated block")?;
    Ok(script.to_string())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Whether anything listens on the ci environment's addresses (127.0.3.1-3, 8200/8201).
fn ci_ports_in_use() -> bool {
    (1..=3).any(|n| {
        [8200, 8201].iter().any(|port| {
            std::net::TcpListener::bind((std::net::Ipv4Addr::new(127, 0, 3, n), *port)).is_err()
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_ci_job_runs_as_written_and_leaves_nothing() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("repository root")?
        .to_path_buf();
    let readme = std::fs::read_to_string(root.join("README.md"))?;
    let script = documented_script(&readme)?;
    // The YAML jobs carry the same lines (indented), so they cannot drift from what runs here.
    for line in script.lines().filter(|l| !l.trim().is_empty()) {
        let occurrences = readme.matches(line.trim()).count();
        ensure!(
            occurrences >= 3,
            "{line:?} is not in both CI jobs of README.md (found {occurrences} times)"
        );
    }
    if ci_ports_in_use() {
        bail!("127.0.3.1-3:8200/8201 (the ci environment) are in use: stop what runs there");
    }

    let dir = test_dir("ci-job")?;
    let work = dir.path().join("job");
    copy_dir(&root.join("environments"), &work.join("environments"))?;
    let bin_dir: PathBuf = provision_bin()?
        .parent()
        .context("provision's directory")?
        .to_path_buf();
    let keyhold_dir = keyhold_bin()?
        .parent()
        .context("keyhold's directory")?
        .to_path_buf();
    let path = format!(
        "{}:{}:{}",
        bin_dir.display(),
        keyhold_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg("-c")
            .arg(&script)
            .current_dir(&work)
            .env("PATH", path)
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .env_remove("PROVISION_STATE_DIR")
            .env_remove("PROVISION_ENV")
            .stdin(Stdio::null())
            .output()
    })
    .await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stderr}");
    ensure!(
        out.status.success(),
        "the documented CI job failed: {stderr}"
    );
    let job = dir.path().join("job");
    let up: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job.join("provision-up.json"))?)?;
    ensure!(
        up["nodes"].as_array().is_some_and(|n| n.len() == 3),
        "provision up --json: {up}"
    );
    ensure!(
        !job.join(".provision").exists(),
        "the job left .provision/ behind"
    );
    ensure!(!ci_ports_in_use(), "the job left a server listening");
    Ok(())
}
