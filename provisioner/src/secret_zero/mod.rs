//! Secret zero: the output of `operator init` (unseal key shares, root token) and the credentials
//! provision generates, encrypted with age to the environment's recipients. None of it is ever
//! written in plaintext.
//!
//! Files in the secrets directory (0700), each ASCII-armored age, 0600:
//! - `init.age`: the whole init output, to every recipient; or, with one recipient a share,
//!   `share-1.age` .. `share-N.age`, each to its own recipient, and `root-token.age` to all;
//! - `credentials.age`: generated credentials by name (`userpass/admin`), to every recipient.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use age::armor::{ArmoredReader, ArmoredWriter, Format};
use age::secrecy::ExposeSecret;
use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::state::{create_private_dir, write_atomic, write_atomic_new};

pub use age::x25519::{Identity, Recipient};

const INIT_FILE: &str = "init.age";
const ROOT_TOKEN_FILE: &str = "root-token.age";
const CREDENTIALS_FILE: &str = "credentials.age";

fn share_file(number: usize) -> String {
    format!("share-{number}.age")
}

/// What `operator init` returned. Cleared from memory when dropped; `Debug` shows counts only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct InitSecrets {
    /// The unseal key shares, base64, in share order. Loaded from per-share files, only the
    /// shares the given identities could open.
    pub unseal_keys_b64: Vec<String>,
    pub root_token: String,
    #[zeroize(skip)]
    pub created_at: DateTime<Utc>,
    /// The shares are recovery keys (init under an auto seal): they authorise generate-root
    /// and rekey, and cannot unseal.
    #[zeroize(skip)]
    #[serde(default)]
    pub recovery: bool,
}

impl fmt::Debug for InitSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InitSecrets")
            .field("unseal_keys", &self.unseal_keys_b64.len())
            .field("recovery", &self.recovery)
            .field("root_token", &"[redacted]")
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// `share-N.age`.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct ShareFile {
    share: usize,
    unseal_key_b64: String,
    #[zeroize(skip)]
    created_at: DateTime<Utc>,
}

/// `root-token.age`.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct RootTokenFile {
    root_token: String,
    #[zeroize(skip)]
    created_at: DateTime<Utc>,
    /// The share files hold recovery keys.
    #[zeroize(skip)]
    #[serde(default)]
    recovery: bool,
}

/// Writes a new age X25519 identity to `path` (0600), as `age-keygen` lays it out, and returns
/// its recipient (`age1…`). An existing file is never replaced: it may be the only key to an
/// environment's secrets.
pub fn generate_identity(path: &Path) -> Result<String> {
    let exists = path
        .try_exists()
        .with_context(|| format!("look for {}", path.display()))?;
    if exists {
        bail!(
            "{} already exists; not replacing it, as it may be the only key to secrets \
             encrypted to it",
            path.display()
        );
    }
    let identity = Identity::generate();
    let recipient = identity.to_public().to_string();
    let contents = Zeroizing::new(format!(
        "# created: {}\n# public key: {recipient}\n{}\n",
        Utc::now().to_rfc3339_opts(SecondsFormat::Secs, false),
        identity.to_string().expose_secret()
    ));
    write_atomic_new(path, contents.as_bytes(), 0o600)
        .with_context(|| format!("write age identity to {}", path.display()))?;
    Ok(recipient)
}

/// Reads age identity files: one `AGE-SECRET-KEY-1…` a line, any number of them, with blank
/// lines and `#` comments ignored.
pub fn read_identities(paths: &[PathBuf]) -> Result<Vec<Identity>> {
    let mut identities = Vec::new();
    for path in paths {
        let text = Zeroizing::new(
            fs::read_to_string(path)
                .with_context(|| format!("read age identity file {}", path.display()))?,
        );
        let before = identities.len();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // The line itself is never part of an error: it may be a secret key.
            let identity = line.parse::<Identity>().map_err(|_| {
                let hint = if line.starts_with("age1") {
                    "it is a recipient (public key); give the identity file it was made from"
                } else {
                    "identity files hold one `AGE-SECRET-KEY-1…` a line, and `#` comments"
                };
                anyhow!(
                    "{} line {}: not an age identity; {hint}",
                    path.display(),
                    number + 1
                )
            })?;
            identities.push(identity);
        }
        if identities.len() == before {
            bail!("{} holds no age identity", path.display());
        }
    }
    Ok(identities)
}

/// Why an entry of `init.recipients` is not an age recipient.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecipientError {
    #[error(
        "recipients[{index}] is an age identity (a secret key), not a recipient: give its \
         public key `age1…` instead (`age-keygen -y FILE` prints it), and keep the secret key \
         out of the environment file"
    )]
    SecretKey { index: usize },
    #[error(
        "recipients[{index}] is an SSH key; provision encrypts to age X25519 recipients only \
         (`age1…`, as `age-keygen` prints after \"Public key:\")"
    )]
    Ssh { index: usize },
    #[error(
        "recipients[{index}]{} is not an age recipient: an X25519 recipient is `age1` followed \
         by 58 lowercase letters and digits, as `age-keygen` prints after \"Public key:\"",
        shown.as_ref().map_or_else(String::new, |value| format!(" ({value:?})"))
    )]
    Malformed {
        index: usize,
        /// The entry, when it looks like a mistyped recipient; other text is not repeated, in
        /// case it is something secret.
        shown: Option<String>,
    },
}

/// Parses `init.recipients` entries (`age1…`).
pub fn parse_recipients(entries: &[String]) -> Result<Vec<Recipient>, RecipientError> {
    entries
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            let entry = entry.trim();
            entry.parse::<Recipient>().map_err(|_| {
                if entry.to_ascii_uppercase().starts_with("AGE-SECRET-KEY-") {
                    RecipientError::SecretKey { index }
                } else if entry.starts_with("ssh-") {
                    RecipientError::Ssh { index }
                } else {
                    RecipientError::Malformed {
                        index,
                        shown: entry.starts_with("age1").then(|| entry.to_string()),
                    }
                }
            })
        })
        .collect()
}

/// The environment's secrets directory.
#[derive(Debug, Clone)]
pub struct SecretStore {
    dir: PathBuf,
    recipients: Vec<Recipient>,
    per_share: bool,
}

impl SecretStore {
    /// `recipients` are who new files are encrypted to; loading needs none. With `per_share`,
    /// share i goes to `recipients[i]` alone (so there must be one recipient a share).
    pub fn new(dir: PathBuf, recipients: Vec<Recipient>, per_share: bool) -> SecretStore {
        SecretStore {
            dir,
            recipients,
            per_share,
        }
    }

    /// A store in `dir` encrypting to the same recipients, with one file for the whole init
    /// output (the environment's transit unsealer has one share).
    pub fn sibling(&self, dir: PathBuf) -> SecretStore {
        SecretStore {
            dir,
            recipients: self.recipients.clone(),
            per_share: false,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether init output has been saved here (in either layout).
    pub fn has_init(&self) -> bool {
        self.dir.join(INIT_FILE).exists()
            || self.dir.join(ROOT_TOKEN_FILE).exists()
            || self.share_files().is_ok_and(|shares| !shares.is_empty())
    }

    /// Encrypts and writes the init output; returns the files written. Refuses when init output
    /// is already saved: those files may be the only copy of a live cluster's unseal keys.
    pub fn save_init(&self, init: &InitSecrets) -> Result<Vec<PathBuf>> {
        if self.has_init() {
            bail!(
                "init output is already saved in {}; not replacing it, as it may be the only \
                 copy of a cluster's unseal keys (move those files away if their cluster is gone)",
                self.dir.display()
            );
        }
        self.check_recipients()?;
        create_private_dir(&self.dir)?;
        if !self.per_share {
            let path = self.dir.join(INIT_FILE);
            self.seal(&self.recipients, &to_json(init)?, &path)?;
            return Ok(vec![path]);
        }
        if self.recipients.len() != init.unseal_keys_b64.len() {
            bail!(
                "{} recipients for {} unseal key shares: with one recipient a share, give \
                 exactly one recipient for each share",
                self.recipients.len(),
                init.unseal_keys_b64.len()
            );
        }
        let mut written = Vec::new();
        for (index, (key, recipient)) in init
            .unseal_keys_b64
            .iter()
            .zip(&self.recipients)
            .enumerate()
        {
            let share = ShareFile {
                share: index + 1,
                unseal_key_b64: key.clone(),
                created_at: init.created_at,
            };
            let path = self.dir.join(share_file(share.share));
            self.seal(std::slice::from_ref(recipient), &to_json(&share)?, &path)?;
            written.push(path);
        }
        // Last, so that a directory with a root token file holds every share.
        let root = RootTokenFile {
            root_token: init.root_token.clone(),
            created_at: init.created_at,
            recovery: init.recovery,
        };
        let path = self.dir.join(ROOT_TOKEN_FILE);
        self.seal(&self.recipients, &to_json(&root)?, &path)?;
        written.push(path);
        Ok(written)
    }

    /// Decrypts the init output with `identities`. From per-share files, returns the shares the
    /// identities open (at least one) and the root token.
    pub fn load_init(&self, identities: &[Identity]) -> Result<InitSecrets> {
        let whole = self.dir.join(INIT_FILE);
        if whole.exists() {
            let plaintext = open(&whole, identities)?
                .ok_or_else(|| no_match(std::slice::from_ref(&whole), identities))?;
            return from_json(&plaintext, &whole);
        }
        let shares = self.share_files()?;
        let root_path = self.dir.join(ROOT_TOKEN_FILE);
        if shares.is_empty() && !root_path.exists() {
            bail!(
                "no init output in {}: provision has not initialised this cluster, or its \
                 files were moved away",
                self.dir.display()
            );
        }
        let mut unseal_keys_b64 = Vec::new();
        for (_, path) in &shares {
            if let Some(plaintext) = open(path, identities)? {
                let share: ShareFile = from_json(&plaintext, path)?;
                unseal_keys_b64.push(share.unseal_key_b64.clone());
            }
        }
        let mut tried: Vec<PathBuf> = shares.into_iter().map(|(_, path)| path).collect();
        tried.push(root_path.clone());
        if unseal_keys_b64.is_empty() {
            return Err(no_match(&tried, identities));
        }
        let plaintext = open(&root_path, identities)
            .with_context(|| format!("read the root token from {}", root_path.display()))?
            .ok_or_else(|| no_match(std::slice::from_ref(&root_path), identities))?;
        let root: RootTokenFile = from_json(&plaintext, &root_path)?;
        Ok(InitSecrets {
            unseal_keys_b64,
            root_token: root.root_token.clone(),
            created_at: root.created_at,
            recovery: root.recovery,
        })
    }

    /// Encrypts and writes generated credentials (replacing any saved before); returns the file.
    pub fn save_credentials(&self, credentials: &BTreeMap<String, String>) -> Result<PathBuf> {
        self.check_recipients()?;
        create_private_dir(&self.dir)?;
        let path = self.dir.join(CREDENTIALS_FILE);
        self.seal(&self.recipients, &to_json(credentials)?, &path)?;
        Ok(path)
    }

    /// The saved credentials; empty when none were saved.
    pub fn load_credentials(&self, identities: &[Identity]) -> Result<BTreeMap<String, String>> {
        let path = self.dir.join(CREDENTIALS_FILE);
        if !path.exists() {
            return Ok(BTreeMap::new());
        }
        let plaintext = open(&path, identities)?
            .ok_or_else(|| no_match(std::slice::from_ref(&path), identities))?;
        from_json(&plaintext, &path)
    }

    /// Every age file in the directory, sorted; none when it does not exist.
    pub fn files(&self) -> Result<Vec<PathBuf>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("list {}", self.dir.display())),
        };
        let mut files = Vec::new();
        for entry in entries {
            let path = entry
                .with_context(|| format!("list {}", self.dir.display()))?
                .path();
            if path.extension().is_some_and(|ext| ext == "age") {
                files.push(path);
            }
        }
        files.sort();
        Ok(files)
    }

    /// `share-N.age` files by share number.
    fn share_files(&self) -> Result<Vec<(usize, PathBuf)>> {
        let mut shares: Vec<(usize, PathBuf)> = self
            .files()?
            .into_iter()
            .filter_map(|path| {
                let name = path.file_name()?.to_str()?;
                let number = name
                    .strip_prefix("share-")?
                    .strip_suffix(".age")?
                    .parse()
                    .ok()?;
                Some((number, path))
            })
            .collect();
        shares.sort();
        Ok(shares)
    }

    fn check_recipients(&self) -> Result<()> {
        if self.recipients.is_empty() {
            bail!(
                "no age recipients to encrypt secrets to (set init.recipients, or let a local \
                 environment generate an identity)"
            );
        }
        Ok(())
    }

    fn seal(&self, recipients: &[Recipient], plaintext: &[u8], path: &Path) -> Result<()> {
        let encrypt = || -> Result<Vec<u8>> {
            let encryptor = age::Encryptor::with_recipients(
                recipients.iter().map(|r| r as &dyn age::Recipient),
            )?;
            let mut armored = Vec::new();
            let mut writer = encryptor.wrap_output(ArmoredWriter::wrap_output(
                &mut armored,
                Format::AsciiArmor,
            )?)?;
            writer.write_all(plaintext)?;
            writer.finish()?.finish()?;
            Ok(armored)
        };
        let armored = encrypt().with_context(|| format!("encrypt {}", path.display()))?;
        write_atomic(path, &armored, 0o600).with_context(|| format!("write {}", path.display()))
    }
}

/// Decrypts `path`; `None` when none of `identities` is among its recipients.
fn open(path: &Path, identities: &[Identity]) -> Result<Option<Zeroizing<Vec<u8>>>> {
    let ciphertext = fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let damaged = |e: &dyn fmt::Display| {
        anyhow!(
            "{} is not a readable age file ({e}); it may be truncated or damaged: restore it \
             from a backup",
            path.display()
        )
    };
    let decryptor = age::Decryptor::new_buffered(ArmoredReader::new(&ciphertext[..]))
        .map_err(|e| damaged(&e))?;
    let mut reader = match decryptor.decrypt(identities.iter().map(|i| i as &dyn age::Identity)) {
        Ok(reader) => reader,
        Err(age::DecryptError::NoMatchingKeys) => return Ok(None),
        Err(e) => return Err(damaged(&e)),
    };
    // Sized up front: a growing buffer would leave copies of the plaintext behind.
    let mut plaintext = Zeroizing::new(Vec::with_capacity(ciphertext.len()));
    reader
        .read_to_end(&mut plaintext)
        .map_err(|e| damaged(&e))?;
    Ok(Some(plaintext))
}

fn no_match(tried: &[PathBuf], identities: &[Identity]) -> anyhow::Error {
    let files: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
    let keys: Vec<String> = identities
        .iter()
        .map(|i| i.to_public().to_string())
        .collect();
    anyhow!(
        "none of the given identities opens {}: they were encrypted to other recipients (the \
         identities' public keys: {}); give the identity file of one of the environment's init \
         recipients",
        files.join(", "),
        if keys.is_empty() {
            "none given".to_string()
        } else {
            keys.join(", ")
        }
    )
}

/// Serialises into a buffer of the final size, so that no reallocation leaves plaintext behind.
fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<Zeroizing<Vec<u8>>> {
    struct Count(usize);
    impl Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).context("serialise secrets")?;
    let mut json = Zeroizing::new(Vec::with_capacity(count.0));
    serde_json::to_writer(&mut *json, value).context("serialise secrets")?;
    Ok(json)
}

fn from_json<T: DeserializeOwned>(plaintext: &[u8], path: &Path) -> Result<T> {
    serde_json::from_slice(plaintext).map_err(|e| {
        // Only where and what kind: serde's message can quote the decrypted value.
        anyhow!(
            "{} decrypts, but not to what provision wrote there ({:?} error at line {} column \
             {}); restore it from a backup",
            path.display(),
            e.classify(),
            e.line(),
            e.column()
        )
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn keypair() -> (Identity, Recipient) {
        let identity = Identity::generate();
        let recipient = identity.to_public();
        (identity, recipient)
    }

    fn init(shares: usize) -> InitSecrets {
        InitSecrets {
            unseal_keys_b64: (1..=shares)
                .map(|i| format!("c2hhcmUtc2VjcmV0LW51bWJlci0{i}"))
                .collect(),
            root_token: "hvs.ROOTTOKENSECRETVALUE".to_string(),
            created_at: "2026-11-22T07:50:00Z".parse().unwrap(),
            recovery: false,
        }
    }

    /// Every secret `init` holds, each of which must not be on disk.
    fn plaintexts(init: &InitSecrets) -> Vec<String> {
        let mut all = init.unseal_keys_b64.clone();
        all.push(init.root_token.clone());
        all
    }

    fn assert_not_on_disk(dir: &Path, secrets: &[String]) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let bytes = fs::read(&path).unwrap();
            assert!(
                bytes.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----"),
                "{} is not armored age",
                path.display()
            );
            for secret in secrets {
                let found = bytes
                    .windows(secret.len())
                    .any(|window| window == secret.as_bytes());
                assert!(!found, "{} holds {secret:?} in plaintext", path.display());
            }
        }
    }

    fn err<T>(result: Result<T>) -> String {
        match result {
            Ok(_) => panic!("expected an error"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn generated_identity_is_private_and_reads_back() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("state/identity.txt");
        let recipient = generate_identity(&path).unwrap();
        assert!(recipient.starts_with("age1"), "{recipient}");
        assert_eq!(mode(&path), 0o600);
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("# created: "), "{text}");
        assert_eq!(lines[1], format!("# public key: {recipient}"));
        assert!(lines[2].starts_with("AGE-SECRET-KEY-1"));

        let identities = read_identities(std::slice::from_ref(&path)).unwrap();
        assert_eq!(identities.len(), 1);
        assert_eq!(identities[0].to_public().to_string(), recipient);

        let err = err(generate_identity(&path));
        assert!(err.contains("already exists"), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
    }

    #[test]
    fn identity_files_may_hold_several_identities_and_comments() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let first = tmp.path().join("first.txt");
        let second = tmp.path().join("second.txt");
        fs::write(
            &first,
            format!(
                "# two keys\n\n{}\n  # indented comment\n{}\n",
                a.to_string().expose_secret(),
                b.to_string().expose_secret()
            ),
        )
        .unwrap();
        fs::write(&second, c.to_string().expose_secret()).unwrap();
        let read = read_identities(&[first, second]).unwrap();
        let publics: Vec<String> = read.iter().map(|i| i.to_public().to_string()).collect();
        let want: Vec<String> = [a, b, c]
            .iter()
            .map(|i| i.to_public().to_string())
            .collect();
        assert_eq!(publics, want);
    }

    #[test]
    fn bad_identity_files_are_reported_without_their_contents() {
        let secret = Identity::generate().to_string().expose_secret().to_string();
        // One character changed (never to itself: the checksum then fails, whichever it is).
        let last = if secret.ends_with('Q') { 'P' } else { 'Q' };
        let mangled = format!("{}{last}", &secret[..secret.len() - 1]);
        let recipient = Identity::generate().to_public().to_string();
        // (file contents, what the error must say)
        let cases = [
            (format!("# ok\n{mangled}\n"), "line 2: not an age identity"),
            (
                format!("{recipient}\n"),
                "line 1: not an age identity; it is a recipient",
            ),
            ("# nothing\n\n".to_string(), "holds no age identity"),
        ];
        for (contents, want) in cases {
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().join("id.txt");
            fs::write(&path, &contents).unwrap();
            let err = err(read_identities(std::slice::from_ref(&path)));
            assert!(err.contains(want), "{want}: {err}");
            assert!(err.contains("id.txt"), "{err}");
            assert!(!err.contains(&mangled[16..]), "the line was echoed: {err}");
        }
        let missing = err(read_identities(&[PathBuf::from("/nonexistent/id.txt")]));
        assert!(
            missing.contains("read age identity file /nonexistent/id.txt"),
            "{missing}"
        );
    }

    #[test]
    fn recipients_parse_and_bad_ones_say_what_a_recipient_looks_like() {
        let (identity, recipient) = keypair();
        let secret = identity.to_string().expose_secret().to_string();
        let good = recipient.to_string();
        assert_eq!(
            parse_recipients(&[good.clone(), format!(" {good} ")]).unwrap(),
            [recipient.clone(), recipient]
        );

        // One character changed (never to itself: 1 key in 32 already ends in `x`); bech32's
        // checksum catches any single substitution.
        let last = if good.ends_with('x') { 'y' } else { 'x' };
        let typo = format!("{}{last}", &good[..good.len() - 1]);
        // (entry, the error wanted for it at index 1)
        let cases = [
            (secret.clone(), RecipientError::SecretKey { index: 1 }),
            (
                secret.to_lowercase(),
                RecipientError::SecretKey { index: 1 },
            ),
            (
                "ssh-ed25519 AAAAC3Nza".to_string(),
                RecipientError::Ssh { index: 1 },
            ),
            (
                typo.clone(),
                RecipientError::Malformed {
                    index: 1,
                    shown: Some(typo.clone()),
                },
            ),
            (
                "hunter2".to_string(),
                RecipientError::Malformed {
                    index: 1,
                    shown: None,
                },
            ),
        ];
        for (entry, want) in cases {
            let got = parse_recipients(&[good.clone(), entry.clone()]).unwrap_err();
            assert_eq!(got, want, "{entry}");
            let message = got.to_string();
            assert!(message.starts_with("recipients[1]"), "{message}");
            assert!(message.contains("age1"), "{message}");
            if entry != typo {
                assert!(!message.contains(&entry), "the entry was echoed: {message}");
            }
        }
        let message = RecipientError::SecretKey { index: 0 }.to_string();
        assert!(
            message.contains("is an age identity (a secret key)"),
            "{message}"
        );
        assert!(
            message.contains("give its public key `age1…` instead"),
            "{message}"
        );
    }

    #[test]
    fn init_round_trips_for_one_recipient() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("secrets");
        let (identity, recipient) = keypair();
        let store = SecretStore::new(dir.clone(), vec![recipient], false);
        assert!(!store.has_init());
        assert!(store.files().unwrap().is_empty());

        let secrets = init(3);
        let written = store.save_init(&secrets).unwrap();
        assert_eq!(written, [dir.join("init.age")]);
        assert!(store.has_init());
        assert_eq!(store.files().unwrap(), written);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&written[0]), 0o600);
        assert_not_on_disk(&dir, &plaintexts(&secrets));

        // Loading needs no recipients.
        let reader = SecretStore::new(dir, vec![], false);
        assert_eq!(reader.load_init(&[identity]).unwrap(), secrets);
    }

    #[test]
    fn each_of_several_recipients_opens_the_init_output_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let pairs: Vec<_> = (0..3).map(|_| keypair()).collect();
        let store = SecretStore::new(
            tmp.path().to_path_buf(),
            pairs.iter().map(|(_, r)| r.clone()).collect(),
            false,
        );
        let secrets = init(5);
        store.save_init(&secrets).unwrap();
        for (identity, _) in pairs {
            assert_eq!(store.load_init(&[identity]).unwrap(), secrets);
        }
    }

    #[test]
    fn per_share_files_open_only_for_their_own_recipient() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let pairs: Vec<_> = (0..3).map(|_| keypair()).collect();
        let store = SecretStore::new(
            dir.clone(),
            pairs.iter().map(|(_, r)| r.clone()).collect(),
            true,
        );
        let secrets = init(3);
        let written = store.save_init(&secrets).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "share-1.age",
                "share-2.age",
                "share-3.age",
                "root-token.age"
            ]
        );
        assert!(!dir.join("init.age").exists());
        for path in &written {
            assert_eq!(mode(path), 0o600);
        }
        assert_not_on_disk(&dir, &plaintexts(&secrets));

        for (i, (identity, _)) in pairs.iter().enumerate() {
            let loaded = store.load_init(std::slice::from_ref(identity)).unwrap();
            assert_eq!(loaded.unseal_keys_b64, [secrets.unseal_keys_b64[i].clone()]);
            assert_eq!(loaded.root_token, secrets.root_token);
            assert_eq!(loaded.created_at, secrets.created_at);
        }
        let two = [pairs[2].0.clone(), pairs[0].0.clone()];
        let loaded = store.load_init(&two).unwrap();
        assert_eq!(
            loaded.unseal_keys_b64,
            [
                secrets.unseal_keys_b64[0].clone(),
                secrets.unseal_keys_b64[2].clone()
            ]
        );
    }

    #[test]
    fn per_share_needs_one_recipient_a_share() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SecretStore::new(tmp.path().to_path_buf(), vec![keypair().1], true);
        let err = err(store.save_init(&init(3)));
        assert!(
            err.contains("1 recipients for 3 unseal key shares"),
            "{err}"
        );
        assert!(store.files().unwrap().is_empty());
    }

    #[test]
    fn a_wrong_identity_is_told_which_files_it_could_not_open() {
        // (per share, files the error must name)
        let cases: [(bool, &[&str]); 2] = [
            (false, &["init.age"]),
            (true, &["share-1.age", "share-2.age", "root-token.age"]),
        ];
        for (per_share, files) in cases {
            let tmp = tempfile::tempdir().unwrap();
            let recipients = vec![keypair().1, keypair().1];
            let store = SecretStore::new(tmp.path().to_path_buf(), recipients, per_share);
            store.save_init(&init(2)).unwrap();
            let (stranger, stranger_public) = keypair();
            let err = err(store.load_init(&[stranger]));
            assert!(err.contains("none of the given identities opens"), "{err}");
            assert!(err.contains(&stranger_public.to_string()), "{err}");
            for file in files {
                assert!(err.contains(file), "{file}: {err}");
            }
        }
    }

    #[test]
    fn damaged_files_are_named_not_panicked_on() {
        let (identity, recipient) = keypair();
        type Damage = fn(&[u8]) -> Vec<u8>;
        // (what is done to init.age, a description for failures)
        let cases: [(Damage, &str); 4] = [
            (|b| b[..b.len() / 2].to_vec(), "cut in half"),
            (|b| b[..b.len() - 40].to_vec(), "end cut off"),
            (|_| b"not age at all".to_vec(), "not age"),
            (
                |b| {
                    let mut b = b.to_vec();
                    let at = b.len() - 60;
                    b[at] = if b[at] == b'A' { b'B' } else { b'A' };
                    b
                },
                "a byte changed",
            ),
        ];
        for (damage, what) in cases {
            let tmp = tempfile::tempdir().unwrap();
            let store = SecretStore::new(tmp.path().to_path_buf(), vec![recipient.clone()], false);
            store.save_init(&init(1)).unwrap();
            let path = tmp.path().join("init.age");
            fs::write(&path, damage(&fs::read(&path).unwrap())).unwrap();
            let err = err(store.load_init(std::slice::from_ref(&identity)));
            assert!(err.contains(&path.display().to_string()), "{what}: {err}");
            assert!(err.contains("truncated or damaged"), "{what}: {err}");
        }
    }

    #[test]
    fn init_output_is_never_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SecretStore::new(tmp.path().to_path_buf(), vec![keypair().1], false);
        store.save_init(&init(1)).unwrap();
        let before = fs::read(tmp.path().join("init.age")).unwrap();
        let err = err(store.save_init(&init(1)));
        assert!(err.contains("already saved"), "{err}");
        assert_eq!(fs::read(tmp.path().join("init.age")).unwrap(), before);
    }

    #[test]
    fn missing_init_output_and_missing_recipients_are_explained() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SecretStore::new(tmp.path().join("secrets"), vec![], false);
        let message = err(store.load_init(&[keypair().0]));
        assert!(message.contains("no init output in"), "{message}");
        let message = err(store.save_init(&init(1)));
        assert!(message.contains("no age recipients"), "{message}");
        let message = err(store.save_credentials(&BTreeMap::new()));
        assert!(message.contains("no age recipients"), "{message}");
    }

    #[test]
    fn credentials_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let (identity, recipient) = keypair();
        let store = SecretStore::new(tmp.path().to_path_buf(), vec![recipient], false);
        assert!(store
            .load_credentials(std::slice::from_ref(&identity))
            .unwrap()
            .is_empty());
        let mut credentials = BTreeMap::new();
        credentials.insert(
            "userpass/admin".to_string(),
            "correct-horse-battery".to_string(),
        );
        credentials.insert("userpass/ci".to_string(), "staple-9f8e7d".to_string());
        let path = store.save_credentials(&credentials).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_not_on_disk(
            tmp.path(),
            &credentials.values().cloned().collect::<Vec<_>>(),
        );
        assert_eq!(
            store
                .load_credentials(std::slice::from_ref(&identity))
                .unwrap(),
            credentials
        );
        assert!(!store.has_init());

        credentials.insert("userpass/ops".to_string(), "another-one".to_string());
        store.save_credentials(&credentials).unwrap();
        assert_eq!(store.load_credentials(&[identity]).unwrap(), credentials);
        let err = err(store.load_credentials(&[keypair().0]));
        assert!(err.contains("credentials.age"), "{err}");
    }

    #[test]
    fn debug_shows_no_secret() {
        let secrets = init(5);
        let debug = format!("{secrets:?}");
        assert!(debug.contains("unseal_keys: 5"), "{debug}");
        for secret in plaintexts(&secrets) {
            assert!(!debug.contains(&secret), "{debug}");
        }
    }

    #[test]
    fn files_lists_only_age_files() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SecretStore::new(tmp.path().to_path_buf(), vec![keypair().1], false);
        store.save_init(&init(1)).unwrap();
        store.save_credentials(&BTreeMap::new()).unwrap();
        fs::write(tmp.path().join("README"), "not a secret").unwrap();
        assert_eq!(
            store.files().unwrap(),
            [
                tmp.path().join("credentials.age"),
                tmp.path().join("init.age")
            ]
        );
    }
}
