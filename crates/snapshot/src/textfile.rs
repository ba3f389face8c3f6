//! Prometheus textfiles in node_exporter's textfile-collector format: the one way the
//! snapshot agent (`keyhold_snapshot_*`) and the provisioner's restore drill
//! (`keyhold_restore_drill_*`) report to Prometheus, since neither runs long enough to be
//! scraped. Written whole to a temporary file beside the target and renamed over it, so the
//! collector never reads half a file. Values a later run must keep (the last success time,
//! after a failure) are read back from the file itself.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The metrics the snapshot agent writes, each with its help text.
pub const SNAPSHOT_METRICS: &[(&str, &str)] = &[
    (
        "keyhold_snapshot_last_run_timestamp_seconds",
        "When the snapshot agent last ran (Unix time).",
    ),
    (
        "keyhold_snapshot_last_result",
        "1 if the agent's last run succeeded (stored a snapshot, or found this node a standby), 0 if it failed.",
    ),
    (
        "keyhold_snapshot_last_success_timestamp_seconds",
        "When this agent last stored a snapshot (Unix time).",
    ),
    (
        "keyhold_snapshot_last_failure_timestamp_seconds",
        "When this agent last failed (Unix time).",
    ),
    (
        "keyhold_snapshot_last_size_bytes",
        "Size of the last snapshot this agent stored.",
    ),
];

/// The metrics a restore drill (`provision snapshot verify`) writes.
pub const DRILL_METRICS: &[(&str, &str)] = &[
    (
        "keyhold_restore_drill_last_run_timestamp_seconds",
        "When the last restore drill ran (Unix time).",
    ),
    (
        "keyhold_restore_drill_last_result",
        "1 if the last restore drill passed, 0 if it failed.",
    ),
    (
        "keyhold_restore_drill_last_success_timestamp_seconds",
        "When a restore drill last passed (Unix time).",
    ),
    (
        "keyhold_restore_drill_last_verified_snapshot_age_seconds",
        "Age of the snapshot the last passing drill verified, when it verified it.",
    ),
];

/// The value of the unlabelled-or-labelled sample `name` in the textfile at `path`, if the
/// file exists and has one.
pub fn read_value(path: &Path, name: &str) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let rest = match rest.chars().next()? {
            '{' => &rest[rest.find('}')? + 1..],
            ' ' => rest,
            _ => return None,
        };
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Writes `samples` (name and value), each labelled `cluster`, to `path` atomically. Every
/// name must be in `known`, which gives its help text: the lists above are then exactly what
/// the files can hold, and the dashboard test checks its queries against them.
pub fn write(
    path: &Path,
    cluster: &str,
    known: &[(&str, &str)],
    samples: &[(&str, f64)],
) -> std::io::Result<()> {
    let mut text = String::new();
    let label = cluster.replace('\\', "\\\\").replace('"', "\\\"");
    for (name, value) in samples {
        let Some((_, help)) = known.iter().find(|(n, _)| n == name) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{name} is not a metric this textfile declares"),
            ));
        };
        let _ = writeln!(text, "# HELP {name} {help}");
        let _ = writeln!(text, "# TYPE {name} gauge");
        let _ = writeln!(text, "{name}{{cluster=\"{label}\"}} {value}");
    }
    // node_exporter runs as another user, and the agent's unit sets UMask=0077: the file
    // (and a directory made for it) are readable by all, whatever the umask. Metrics hold
    // no secret.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_values_read_back_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/x.prom");
        write(
            &path,
            "prod \"a\"",
            SNAPSHOT_METRICS,
            &[
                ("keyhold_snapshot_last_result", 1.0),
                ("keyhold_snapshot_last_success_timestamp_seconds", 1.7e9),
            ],
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o644, "node_exporter, another user, reads it");
        assert_eq!(mode(path.parent().unwrap()), 0o755);
        assert!(
            text.contains("keyhold_snapshot_last_result{cluster=\"prod \\\"a\\\"\"} 1\n"),
            "{text}"
        );
        assert_eq!(
            read_value(&path, "keyhold_snapshot_last_success_timestamp_seconds"),
            Some(1.7e9)
        );
        assert_eq!(read_value(&path, "keyhold_snapshot_last_result"), Some(1.0));
        assert_eq!(read_value(&path, "keyhold_snapshot_last_size_bytes"), None);
        assert_eq!(read_value(&dir.path().join("none.prom"), "x"), None);

        let undeclared = write(
            &path,
            "a",
            DRILL_METRICS,
            &[("keyhold_snapshot_last_result", 1.0)],
        );
        assert!(
            undeclared.is_err(),
            "a name the list does not declare is refused"
        );
    }
}
