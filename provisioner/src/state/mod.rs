//! What provision remembers about an environment: `.provision/<env>/state.json`, the lock that
//! keeps two commands from working on one environment at once, and the atomic file writes that
//! certificates, secrets and state all go through.
//!
//! The state records what was created, with which versions and fingerprints; never key material.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::providers::NodeRecord;

/// The state file format this build reads and writes.
pub const STATE_VERSION: u32 = 2;

/// `.provision/<env>`: the state file, its lock, and what provision generated for the
/// environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: PathBuf) -> StateDir {
        StateDir { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn state_file(&self) -> PathBuf {
        self.root.join("state.json")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.root.join("lock")
    }

    /// Written just before `sys/init` is sent and removed once its output is saved: while it
    /// exists without the init output, an interrupted `up` may have lost the cluster's keys.
    pub fn init_pending_file(&self) -> PathBuf {
        self.root.join("init.pending")
    }

    /// The environment's CA and the certificates it issued.
    pub fn tls_dir(&self) -> PathBuf {
        self.root.join("tls")
    }

    /// Secret zero, age-encrypted (see [`crate::secrets`]).
    pub fn secrets_dir(&self) -> PathBuf {
        self.root.join("secrets")
    }

    /// One directory a node (local provider): data, config, TLS and logs.
    pub fn nodes_dir(&self) -> PathBuf {
        self.root.join("nodes")
    }

    /// The age identity generated for local and ci environments that name no recipients.
    pub fn identity_file(&self) -> PathBuf {
        self.root.join("identity.txt")
    }

    /// Takes the environment's lock, creating the directory (0700) if needed. Fails at once,
    /// with [`LockError::Held`], when another command holds it.
    ///
    /// The lock is an `flock` on the lock file: it goes when the [`Lock`] is dropped or the
    /// process exits, however it exits, so a crashed command never leaves a stale lock.
    pub fn lock(&self, command: &str) -> Result<Lock, LockError> {
        let io_error = |source| LockError::Io {
            dir: self.root.clone(),
            source,
        };
        create_dir_0700(&self.root).map_err(io_error)?;
        // Not truncated on open: until the lock is ours, the file holds the holder's details.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(self.lock_file())
            .map_err(io_error)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(LockError::Held {
                    dir: self.root.clone(),
                    holder: LockHolder::read(&mut file),
                })
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_error(e)),
        }
        let holder = LockHolder {
            pid: std::process::id(),
            command: command.to_string(),
            started_at: Utc::now(),
        };
        holder.write(&mut file).map_err(io_error)?;
        Ok(Lock { file, holder })
    }
}

/// The environment's lock, held until dropped.
#[derive(Debug)]
pub struct Lock {
    file: File,
    holder: LockHolder,
}

impl Lock {
    pub fn holder(&self) -> &LockHolder {
        &self.holder
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Cleared while still held, so nobody reads a finished command as the holder. Closing
        // the file releases the lock whatever happens here.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// Who holds an environment's lock, as written into the lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    pub pid: u32,
    /// The command line, as `provision up`.
    pub command: String,
    pub started_at: DateTime<Utc>,
}

impl LockHolder {
    /// `None` when the file is empty or half written (the holder has only just taken it).
    fn read(file: &mut File) -> Option<LockHolder> {
        let mut text = String::new();
        file.rewind().ok()?;
        file.read_to_string(&mut text).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn write(&self, file: &mut File) -> io::Result<()> {
        file.set_len(0)?;
        file.rewind()?;
        file.write_all(&serde_json::to_vec(self).map_err(io::Error::other)?)?;
        file.write_all(b"\n")?;
        file.sync_all()
    }
}

impl fmt::Display for LockHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {}, {:?}, started {}",
            self.pid,
            self.command,
            self.started_at.to_rfc3339_opts(SecondsFormat::Secs, true)
        )
    }
}

/// Why [`StateDir::lock`] failed. `Held` is the one a user meets and a script may wait on.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another provision command holds the lock on {} ({}); wait for it to finish, or if that \
         process is gone, run again (the lock is released when a process exits)",
        dir.display(),
        holder.as_ref().map_or_else(|| "holder unknown".to_string(), ToString::to_string)
    )]
    Held {
        dir: PathBuf,
        holder: Option<LockHolder>,
    },
    #[error("take the lock on {}", dir.display())]
    Io {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// `state.json`. Fields added later take `#[serde(default)]`, so that older state files still
/// load; fields this build does not know (from a newer one of the same version) are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// [`STATE_VERSION`]; a file with a higher one is refused.
    pub version: u32,
    /// The environment's name (`local`).
    pub environment: String,
    /// The environment file the state was last applied from.
    pub env_file: PathBuf,
    /// SHA-256 of the environment file's contents, hex, as last applied.
    pub env_fingerprint_sha256: String,
    /// The provider's kind (`local`).
    pub provider: String,
    pub created_at: DateTime<Utc>,
    /// Set by [`State::save`].
    pub updated_at: DateTime<Utc>,
    /// The environment's CA, once created.
    #[serde(default)]
    pub ca: Option<CertRecord>,
    /// Nodes by name (`keyhold-1`).
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeState>,
    #[serde(default)]
    pub cluster: ClusterState,
    /// The last `provision upgrade` (in progress while `finished_at` is unset), kept for
    /// resuming it and for `--rollback`.
    #[serde(default)]
    pub upgrade: Option<UpgradeRecord>,
    /// A `provision certs rotate --ca` under way: running it again continues from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_rotation: Option<CaRotation>,
}

/// One rolling upgrade: what it installs, where it stands, and the snapshot taken before it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpgradeRecord {
    /// The binary installed (`--binary`), its SHA-256 and the version it reports.
    pub binary: PathBuf,
    pub binary_sha256: String,
    pub version: String,
    /// The version each node ran before (what `--rollback` returns to).
    pub from_versions: BTreeMap<String, String>,
    /// The snapshot taken before the first node was touched (0600, in the state directory).
    pub snapshot: PathBuf,
    /// Nodes running the new binary, in the order they were upgraded.
    pub nodes_done: Vec<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Set when `--rollback` put the previous binaries back.
    pub rolled_back_at: Option<DateTime<Utc>>,
}

/// Where a CA rotation stands. Each phase is finished on every node before the next begins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRotation {
    pub phase: CaRotationPhase,
    pub old_ca_fingerprint_sha256: String,
    pub new_ca_fingerprint_sha256: String,
    pub started_at: DateTime<Utc>,
    /// Nodes that already present a certificate from the new CA.
    #[serde(default)]
    pub moved: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaRotationPhase {
    /// Nodes and clients get the bundle of the old and the new CA as their trust anchor.
    TrustBoth,
    /// Node by node, certificates from the new CA.
    Issue,
    /// The old CA is dropped from every bundle.
    DropOld,
}

/// A certificate, by fingerprint: enough to tell whether the file on disk is still the one
/// provision made, and when it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// SHA-256 of the certificate's DER, hex.
    pub fingerprint_sha256: String,
    pub not_after: DateTime<Utc>,
}

/// One node as provision last left it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    /// The address the node listens on (`127.0.1.1`, or a host name).
    pub address: String,
    /// Its API address (`https://127.0.1.1:8200`).
    pub api_addr: String,
    /// The `keyhold` binary the node runs.
    pub binary: PathBuf,
    pub binary_sha256: String,
    /// SHA-256 of the rendered server config.
    pub config_sha256: String,
    pub cert_fingerprint_sha256: String,
    pub cert_not_after: DateTime<Utc>,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    /// What the node's provider keeps about it (the local provider: its processes).
    #[serde(default)]
    pub provider: Option<NodeRecord>,
    /// The version the node reported when provision last started or upgraded it.
    #[serde(default)]
    pub version: String,
}

/// What was done to the cluster as a whole through its API.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterState {
    /// When `operator init` ran; its output is in the secrets directory.
    pub initialized_at: Option<DateTime<Utc>>,
    pub root_token_revoked: bool,
    /// The environment fingerprint whose policies, auth methods, engines and audit devices were
    /// last applied.
    pub configured_fingerprint: Option<String>,
    /// When `provision up` last finished.
    pub last_up: Option<DateTime<Utc>>,
    /// The last restore drill (`provision snapshot verify`).
    pub last_drill: Option<crate::workflows::drill::DrillReport>,
}

impl State {
    /// A state for an environment provision has not touched before.
    pub fn new(
        environment: &str,
        env_file: PathBuf,
        env_fingerprint_sha256: String,
        provider: &str,
    ) -> State {
        let now = Utc::now();
        State {
            version: STATE_VERSION,
            environment: environment.to_string(),
            env_file,
            env_fingerprint_sha256,
            provider: provider.to_string(),
            created_at: now,
            updated_at: now,
            ca: None,
            nodes: BTreeMap::new(),
            cluster: ClusterState::default(),
            upgrade: None,
            ca_rotation: None,
        }
    }

    /// The environment's state, or `None` when provision has not created it yet.
    ///
    /// A file that cannot be read as state is an error, never a fresh start: forgetting what
    /// was created would have provision create it again beside the old.
    pub fn load(dir: &StateDir) -> Result<Option<State>> {
        let path = dir.state_file();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        let unreadable = |what: String| {
            anyhow::anyhow!(
                "{} is not a state file provision can read ({what}); fix it or remove it \
                 (without it provision forgets what it created for this environment)",
                path.display()
            )
        };
        // The version first, so that a newer layout is reported as such, not as a bad field.
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| unreadable(e.to_string()))?;
        let version = value
            .get("version")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| unreadable("no \"version\" number".to_string()))?;
        if version > u64::from(STATE_VERSION) {
            bail!(
                "{} was written by a newer provision (state version {version}; this one reads \
                 up to {STATE_VERSION}): use that provision, or a newer build of this one",
                path.display()
            );
        }
        let value = migrate(value, version);
        let state: State = serde_json::from_value(value).map_err(|e| unreadable(e.to_string()))?;
        Ok(Some(state))
    }

    /// Sets `updated_at` and writes the state atomically, 0600.
    pub fn save(&mut self, dir: &StateDir) -> Result<()> {
        self.updated_at = Utc::now();
        let mut json = serde_json::to_vec_pretty(self).context("serialise state")?;
        json.push(b'\n');
        let path = dir.state_file();
        write_atomic(&path, &json, 0o600)
            .with_context(|| format!("save state to {}", path.display()))
    }
}

/// A state file of an older `version` in today's layout (saved in it by the next `save`):
/// version 1 kept the local provider's process ids at `nodes.NAME.pid` and
/// `nodes.NAME.snapshot_agent_pid`; version 2 keeps them in the provider's own record,
/// `nodes.NAME.provider.local`.
fn migrate(mut value: serde_json::Value, version: u64) -> serde_json::Value {
    if version < 2 {
        if let Some(nodes) = value.get_mut("nodes").and_then(|n| n.as_object_mut()) {
            for node in nodes.values_mut().filter_map(|n| n.as_object_mut()) {
                let pid = node.remove("pid").unwrap_or(serde_json::Value::Null);
                let agent = node
                    .remove("snapshot_agent_pid")
                    .unwrap_or(serde_json::Value::Null);
                if !pid.is_null() || !agent.is_null() {
                    node.insert(
                        "provider".into(),
                        serde_json::json!({ "local": { "pid": pid, "snapshot_agent_pid": agent } }),
                    );
                }
            }
        }
        value["version"] = serde_json::json!(STATE_VERSION);
    }
    value
}

/// SHA-256 of `bytes`, lowercase hex: how state fingerprints files, certificates and the
/// environment.
pub fn fingerprint(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// [`fingerprint`] of a file's contents, read in pieces (a server binary is large).
pub fn fingerprint_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).with_context(|| format!("read {}", path.display()))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Creates `dir` and any missing parents with mode 0700. An existing directory is left as it is.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    create_dir_0700(dir).with_context(|| format!("create directory {}", dir.display()))
}

fn create_dir_0700(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Replaces `path` with `bytes`, so that a reader (or a crash) sees the old file or the new one,
/// never half of one. The file has `mode` from the moment it exists; missing parent directories
/// are created 0700.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let temp = TempFile::write(path, bytes, mode)?;
    fs::rename(&temp.path, path)
        .with_context(|| format!("rename {} to {}", temp.path.display(), path.display()))?;
    temp.persisted()
}

/// Like [`write_atomic`], but fails if `path` already exists rather than replacing it.
pub fn write_atomic_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let temp = TempFile::write(path, bytes, mode)?;
    // A hard link, unlike a rename, fails on an existing name: no window in which two writers
    // both see the name free.
    fs::hard_link(&temp.path, path).with_context(|| format!("create {}", path.display()))?;
    fs::remove_file(&temp.path).with_context(|| format!("remove {}", temp.path.display()))?;
    temp.persisted()
}

/// A fully written, synced file beside its final name; removed if dropped before it is moved.
struct TempFile {
    path: PathBuf,
    dir: PathBuf,
    done: bool,
}

impl TempFile {
    fn write(dest: &Path, bytes: &[u8], mode: u32) -> Result<TempFile> {
        let name = dest
            .file_name()
            .with_context(|| format!("{} names no file", dest.display()))?
            .to_string_lossy();
        let dir = match dest.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        create_private_dir(&dir)?;
        let suffix: u32 = rand::thread_rng().gen();
        let temp = TempFile {
            path: dir.join(format!(".{name}.{}.{suffix:08x}.tmp", std::process::id())),
            dir,
            done: false,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp.path)
            .with_context(|| format!("create {}", temp.path.display()))?;
        // The umask may have taken bits from `mode` (a certificate is meant to be 0644).
        file.set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("set the mode of {}", temp.path.display()))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("write {}", temp.path.display()))?;
        Ok(temp)
    }

    /// Makes the new name durable (best effort: not every file system syncs directories).
    fn persisted(mut self) -> Result<()> {
        self.done = true;
        let _ = File::open(&self.dir).and_then(|dir| dir.sync_all());
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::local::LocalRecord;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn full_state() -> State {
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let mut state = State::new(
            "local",
            PathBuf::from("environments/local.hcl"),
            fingerprint(b"environment"),
            "local",
        );
        state.ca = Some(CertRecord {
            fingerprint_sha256: fingerprint(b"ca"),
            not_after: at("2036-11-22T07:50:00Z"),
        });
        for i in 1..=3 {
            state.nodes.insert(
                format!("keyhold-{i}"),
                NodeState {
                    address: format!("127.0.1.{i}"),
                    api_addr: format!("https://127.0.1.{i}:8200"),
                    binary: PathBuf::from("/usr/local/bin/keyhold"),
                    binary_sha256: fingerprint(b"binary"),
                    config_sha256: fingerprint(b"config"),
                    cert_fingerprint_sha256: fingerprint(b"cert"),
                    cert_not_after: at("2027-11-22T07:50:00Z"),
                    started_at: Some(at("2026-11-22T07:51:00Z")),
                    provider: Some(NodeRecord::Local(LocalRecord {
                        pid: Some(1000 + i),
                        snapshot_agent_pid: None,
                    })),
                    version: "0.1.0".into(),
                },
            );
        }
        state.cluster = ClusterState {
            initialized_at: Some(at("2026-11-22T07:52:00Z")),
            root_token_revoked: true,
            configured_fingerprint: Some(fingerprint(b"environment")),
            last_up: Some(at("2026-11-22T07:53:00Z")),
            last_drill: None,
        };
        state
    }

    #[test]
    fn state_dir_paths() {
        let dir = StateDir::new(PathBuf::from(".provision/local"));
        let cases = [
            (dir.state_file(), ".provision/local/state.json"),
            (dir.lock_file(), ".provision/local/lock"),
            (dir.tls_dir(), ".provision/local/tls"),
            (dir.secrets_dir(), ".provision/local/secrets"),
            (dir.nodes_dir(), ".provision/local/nodes"),
            (dir.identity_file(), ".provision/local/identity.txt"),
        ];
        for (got, want) in cases {
            assert_eq!(got, Path::new(want));
        }
    }

    #[test]
    fn load_of_a_missing_state_is_none() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join("local"));
        assert_eq!(State::load(&dir).unwrap(), None);
    }

    #[test]
    fn state_round_trips_and_is_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join(".provision/local"));
        let mut state = full_state();
        state.save(&dir).unwrap();
        assert_eq!(State::load(&dir).unwrap(), Some(state));
        assert_eq!(mode(&dir.state_file()), 0o600);
        assert_eq!(mode(dir.root()), 0o700);
        let leftovers: Vec<_> = fs::read_dir(dir.root())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|name| name != "state.json")
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }

    #[test]
    fn save_sets_updated_at() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().to_path_buf());
        let mut state = full_state();
        state.updated_at = "2000-01-01T00:00:00Z".parse().unwrap();
        state.save(&dir).unwrap();
        assert!(state.updated_at >= state.created_at);
    }

    #[test]
    fn serialised_state_holds_no_key_material() {
        let json = serde_json::to_string_pretty(&full_state()).unwrap();
        // No field holds a key, a token or a password, so none of their shapes can appear.
        let needles = [
            "PRIVATE KEY",
            "AGE-SECRET-KEY",
            "hvs.",
            "hvb.",
            "\"token\"",
            "unseal",
            "password",
        ];
        for needle in needles {
            assert!(
                !json.contains(needle),
                "state JSON contains {needle:?}:\n{json}"
            );
        }
        assert!(json.contains("\"version\": 2"), "{json}");
    }

    #[test]
    fn unknown_fields_are_ignored_and_missing_optional_ones_default() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().to_path_buf());
        let json = r#"{
            "version": 1,
            "environment": "local",
            "env_file": "environments/local.hcl",
            "env_fingerprint_sha256": "ab",
            "provider": "local",
            "created_at": "2026-11-22T07:50:00Z",
            "updated_at": "2026-11-22T07:50:00Z",
            "a_field_from_the_future": {"x": 1}
        }"#;
        fs::write(dir.state_file(), json).unwrap();
        let state = State::load(&dir).unwrap().unwrap();
        assert_eq!(state.environment, "local");
        assert_eq!(state.ca, None);
        assert!(state.nodes.is_empty());
        assert_eq!(state.cluster, ClusterState::default());
    }

    /// A state file as provision wrote it before providers had records of their own (version
    /// 1, the local provider's pids on the node): read, moved into the record, saved as 2.
    #[test]
    fn a_version_1_state_file_is_migrated() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().to_path_buf());
        let json = r#"{
            "version": 1,
            "environment": "local",
            "env_file": "environments/local.hcl",
            "env_fingerprint_sha256": "ab",
            "provider": "local",
            "created_at": "2026-11-22T07:50:00Z",
            "updated_at": "2026-11-22T07:50:00Z",
            "ca": {"fingerprint_sha256": "cd", "not_after": "2036-11-22T07:50:00Z"},
            "nodes": {
                "keyhold-1": {
                    "address": "127.0.1.1", "api_addr": "https://127.0.1.1:8200", "pid": 4242,
                    "binary": "/usr/local/bin/keyhold", "binary_sha256": "ef", "config_sha256": "01",
                    "cert_fingerprint_sha256": "23", "cert_not_after": "2027-11-22T07:50:00Z",
                    "started_at": "2026-11-22T07:51:00Z", "snapshot_agent_pid": 4343
                },
                "keyhold-2": {
                    "address": "127.0.1.2", "api_addr": "https://127.0.1.2:8200", "pid": null,
                    "binary": "/usr/local/bin/keyhold", "binary_sha256": "ef", "config_sha256": "01",
                    "cert_fingerprint_sha256": "45", "cert_not_after": "2027-11-22T07:50:00Z"
                }
            },
            "cluster": {"initialized_at": "2026-11-22T07:52:00Z", "root_token_revoked": true}
        }"#;
        fs::write(dir.state_file(), json).unwrap();
        let mut state = State::load(&dir).unwrap().unwrap();
        assert_eq!(state.version, STATE_VERSION);
        assert_eq!(
            state.nodes["keyhold-1"].provider,
            Some(NodeRecord::Local(LocalRecord {
                pid: Some(4242),
                snapshot_agent_pid: Some(4343),
            }))
        );
        assert_eq!(state.nodes["keyhold-2"].provider, None);
        assert_eq!(state.nodes["keyhold-2"].config_sha256, "01");
        assert!(state.cluster.root_token_revoked);
        state.save(&dir).unwrap();
        let saved: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.state_file()).unwrap()).unwrap();
        assert_eq!(saved["version"], 2);
        assert_eq!(
            saved["nodes"]["keyhold-1"]["provider"]["local"]["pid"],
            4242
        );
        assert!(saved["nodes"]["keyhold-1"].get("pid").is_none());
        assert_eq!(State::load(&dir).unwrap().unwrap(), state, "round trip");
    }

    #[test]
    fn unreadable_state_is_an_error_naming_the_file() {
        // (file contents, what the error must say)
        let cases = [
            ("", "fix it or remove it"),
            ("{\"version\": 1, \"environ", "fix it or remove it"),
            ("[1, 2]", "no \"version\" number"),
            ("{\"version\": 1}", "missing field"),
            ("{\"version\": 3}", "newer provision (state version 3"),
        ];
        for (contents, want) in cases {
            let tmp = tempfile::tempdir().unwrap();
            let dir = StateDir::new(tmp.path().to_path_buf());
            fs::write(dir.state_file(), contents).unwrap();
            let err = format!("{:#}", State::load(&dir).unwrap_err());
            assert!(err.contains("state.json"), "{contents:?}: {err}");
            assert!(err.contains(want), "{contents:?}: {err}");
            // Never reset: the bad file is still there for the user to look at.
            assert_eq!(fs::read_to_string(dir.state_file()).unwrap(), contents);
        }
    }

    #[test]
    fn a_held_lock_is_refused_with_the_holder_and_freed_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join(".provision/local"));
        let first = dir.lock("provision up").unwrap();
        assert_eq!(mode(dir.root()), 0o700);
        assert_eq!(mode(&dir.lock_file()), 0o600);

        // flock locks belong to an open file description: a second open in this process
        // conflicts just as another process would.
        let err = dir.lock("provision down").unwrap_err();
        match &err {
            LockError::Held { holder, .. } => {
                let holder = holder.as_ref().expect("holder details");
                assert_eq!(holder.pid, std::process::id());
                assert_eq!(holder.command, "provision up");
            }
            other => panic!("expected Held, got {other:?}"),
        }
        let message = err.to_string();
        let want = format!(
            "another provision command holds the lock on {} (pid {}, \"provision up\", started ",
            dir.root().display(),
            std::process::id()
        );
        assert!(message.starts_with(&want), "{message}");
        assert!(
            message.ends_with("(the lock is released when a process exits)"),
            "{message}"
        );

        drop(first);
        let again = dir.lock("provision down").unwrap();
        assert_eq!(again.holder().command, "provision down");
    }

    #[test]
    fn a_held_lock_without_details_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().to_path_buf());
        // Someone holding the lock before writing its details.
        let raw = File::create(dir.lock_file()).unwrap();
        raw.try_lock().unwrap();
        let err = dir.lock("provision up").unwrap_err();
        assert!(err.to_string().contains("(holder unknown)"), "{err}");
    }

    #[test]
    fn write_atomic_sets_the_mode_and_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a/b/file");
        for (mode_wanted, contents) in [(0o600, "one"), (0o644, "two")] {
            write_atomic(&path, contents.as_bytes(), mode_wanted).unwrap();
            assert_eq!(fs::read_to_string(&path).unwrap(), contents);
            assert_eq!(mode(&path), mode_wanted);
        }
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        assert_eq!(mode(&tmp.path().join("a/b")), 0o700);
        assert_eq!(fs::read_dir(tmp.path().join("a/b")).unwrap().count(), 1);
    }

    #[test]
    fn write_atomic_new_refuses_an_existing_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("identity.txt");
        write_atomic_new(&path, b"first", 0o600).unwrap();
        let err = write_atomic_new(&path, b"second", 0o600).unwrap_err();
        assert_eq!(
            err.downcast_ref::<io::Error>().map(io::Error::kind),
            Some(io::ErrorKind::AlreadyExists),
            "{err:#}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "first");
        assert_eq!(
            fs::read_dir(tmp.path()).unwrap().count(),
            1,
            "temporary file left"
        );
    }

    #[test]
    fn fingerprints() {
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(fingerprint(b""), empty);
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        fs::write(&path, b"").unwrap();
        assert_eq!(fingerprint_file(&path).unwrap(), empty);
    }
}
