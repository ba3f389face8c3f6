//! Server log output: stderr, or `log_file` with Vault's rotation settings
//! (`log_rotate_duration`, `log_rotate_bytes`, `log_rotate_max_files`), and
//! the level filter behind a reload handle ([`LevelReload`]) so that SIGHUP
//! applies the config file's `log_level` without a restart.
//!
//! A rotated file is renamed `<stem>-<unix nanos>.<ext>` beside the live one,
//! as Vault does, and the oldest rotated files beyond `log_rotate_max_files`
//! are removed (0 keeps none, unset keeps all).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// When to start a new file.
#[derive(Debug, Clone, Default)]
pub struct RotationPolicy {
    pub every: Option<Duration>,
    pub max_bytes: Option<u64>,
    pub max_files: Option<u32>,
}

/// An append-only log file that rotates itself; share it behind a `Mutex`.
pub struct RotatingFile {
    path: PathBuf,
    policy: RotationPolicy,
    file: File,
    opened: SystemTime,
    written: u64,
}

impl RotatingFile {
    /// Opens (creating, mode 0600) the log at `path`; a directory gets
    /// `keyhold.log` inside it.
    pub fn open(path: &Path, policy: RotationPolicy) -> io::Result<RotatingFile> {
        let path = if path.is_dir() || path.to_string_lossy().ends_with('/') {
            path.join("keyhold.log")
        } else {
            path.to_path_buf()
        };
        let file = open_append(&path)?;
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(RotatingFile {
            path,
            policy,
            file,
            opened: SystemTime::now(),
            written,
        })
    }

    fn due(&self, incoming: usize) -> bool {
        let by_age = self.policy.every.is_some_and(|every| {
            !every.is_zero() && self.opened.elapsed().unwrap_or_default() >= every
        });
        let by_size = self
            .policy
            .max_bytes
            .is_some_and(|max| max > 0 && self.written > 0 && self.written + incoming as u64 > max);
        by_age || by_size
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "keyhold".into());
        let ext = self
            .path
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_default();
        let rotated = self.path.with_file_name(format!("{stem}-{nanos}{ext}"));
        std::fs::rename(&self.path, &rotated)?;
        self.file = open_append(&self.path)?;
        self.opened = SystemTime::now();
        self.written = 0;
        if let Some(keep) = self.policy.max_files {
            self.prune(&stem, &ext, keep as usize)?;
        }
        Ok(())
    }

    fn prune(&self, stem: &str, ext: &str, keep: usize) -> io::Result<()> {
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let prefix = format!("{stem}-");
        let mut rotated: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                name.strip_prefix(&prefix)
                    .and_then(|rest| {
                        rest.strip_suffix(ext)
                            .or(if ext.is_empty() { Some(rest) } else { None })
                    })
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
            .collect();
        rotated.sort();
        let excess = rotated.len().saturating_sub(keep);
        for old in &rotated[..excess] {
            std::fs::remove_file(old)?;
        }
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.due(buf.len()) {
            // A failed rotation must not lose the line: keep writing where we are.
            let _ = self.rotate();
        }
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The filter Keyhold logs through: `warn` for dependencies, `level` for
/// Keyhold itself. `err` and `warning` are Vault's spellings.
pub fn level_filter(level: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    let level = match level.trim().to_ascii_lowercase().as_str() {
        "err" => "error".to_string(),
        "warning" => "warn".to_string(),
        other => other.to_string(),
    };
    if !["trace", "debug", "info", "warn", "error"].contains(&level.as_str()) {
        return Err(format!(
            "log_level {level:?}: use trace, debug, info, warn or error"
        ));
    }
    tracing_subscriber::EnvFilter::try_new(format!("warn,keyhold={level}"))
        .map_err(|e| format!("log_level {level:?}: {e}"))
}

/// Changes the level of the installed subscriber (SIGHUP).
pub struct LevelReload(
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>,
);

impl LevelReload {
    pub fn new(
        handle: tracing_subscriber::reload::Handle<
            tracing_subscriber::EnvFilter,
            tracing_subscriber::Registry,
        >,
    ) -> Self {
        LevelReload(handle)
    }

    /// Sets Keyhold's log level; the error says what levels exist.
    pub fn set(&self, level: &str) -> Result<(), String> {
        let filter = level_filter(level)?;
        self.0
            .reload(filter)
            .map_err(|e| format!("change the log level: {e}"))
    }
}

/// `MakeWriter` for tracing: one shared rotating file.
pub struct SharedLog(pub Mutex<RotatingFile>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for SharedLog {
    type Writer = SharedLogGuard<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        SharedLogGuard(
            self.0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}

pub struct SharedLogGuard<'a>(std::sync::MutexGuard<'a, RotatingFile>);

impl Write for SharedLogGuard<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn rotates_by_size_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.log");
        let policy = RotationPolicy {
            every: None,
            max_bytes: Some(10),
            max_files: Some(2),
        };
        let mut log = RotatingFile::open(&path, policy).unwrap();
        for line in [
            "aaaaaaaa\n",
            "bbbbbbbb\n",
            "cccccccc\n",
            "dddddddd\n",
            "eeeeeeee\n",
        ] {
            log.write_all(line.as_bytes()).unwrap();
        }
        log.flush().unwrap();
        let names = files(dir.path());
        assert_eq!(names.len(), 3, "live file plus two rotated: {names:?}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "eeeeeeee\n");
        let rotated: Vec<String> = names
            .iter()
            .filter(|n| n.starts_with("server-"))
            .map(|n| std::fs::read_to_string(dir.path().join(n)).unwrap())
            .collect();
        assert_eq!(
            rotated,
            vec!["cccccccc\n", "dddddddd\n"],
            "the two newest rotated files survive, oldest removed"
        );
    }

    #[test]
    fn rotates_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut log = RotatingFile::open(
            &path,
            RotationPolicy {
                every: Some(Duration::from_millis(20)),
                ..Default::default()
            },
        )
        .unwrap();
        log.write_all(b"first\n").unwrap();
        std::thread::sleep(Duration::from_millis(30));
        log.write_all(b"second\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second\n");
        assert_eq!(files(dir.path()).len(), 2);
    }

    #[test]
    fn directory_gets_default_file_name_and_private_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut log = RotatingFile::open(dir.path(), RotationPolicy::default()).unwrap();
        log.write_all(b"x\n").unwrap();
        let path = dir.path().join("keyhold.log");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
