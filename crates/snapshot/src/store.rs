//! `S3Store`: snapshots in an S3 bucket, through the real aws-sdk-s3 client. Shared by the agent
//! and `provision snapshot save|list|restore`.
//!
//! An object is written with one PutObject carrying its SHA-256 twice: as S3's own
//! `x-amz-checksum-sha256` (AWS recomputes it and refuses a body that does not match) and as the
//! user metadata `keyhold-sha256` (hex), which travels with the object whatever the store does
//! with checksums. After the upload the object is checked ([`S3Store::upload_verified`]): size,
//! metadata, SSE-KMS when asked for, and the stored checksum; a store that returns no whole-object
//! checksum gets the object downloaded and hashed instead. An object that fails is deleted.
//! Downloads ([`S3Store::download`]) hash what they receive and refuse anything that does not
//! match `keyhold-sha256`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use aws_config::BehaviorVersion;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::Region;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, Delete, ObjectIdentifier, ServerSideEncryption,
};
use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::config::S3Settings;
use super::naming::{parse_object_key, SnapshotObject};
use super::AgentError;
use keyhold_client::error_chain;
use keyhold_client::snapshot::{self, InspectOptions, SnapshotError, SnapshotMeta};

/// The user metadata key holding an object's hex SHA-256 (`x-amz-meta-keyhold-sha256`).
pub const SHA256_METADATA: &str = "keyhold-sha256";
/// S3's limit for one PutObject.
const MAX_PUT_SIZE: u64 = 5 * 1024 * 1024 * 1024;
/// The behaviour version every client is built with: pinned, so an SDK update cannot change
/// retries or timeouts under us (`latest()` moves with the SDK).
pub fn behavior_version() -> BehaviorVersion {
    BehaviorVersion::v2026_01_12()
}

/// What HeadObject says about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    /// `keyhold-sha256` metadata (hex), if the object has it.
    pub sha256: Option<String>,
    /// S3's base64 `ChecksumSHA256` when it keeps one; a multipart object's ends in `-N`.
    pub checksum_sha256: Option<String>,
    /// Encrypted with SSE-KMS.
    pub sse_kms: bool,
}

/// A snapshot archive on local disk and its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: [u8; 32],
}

impl Archive {
    /// Reads and hashes the file at `path`.
    pub fn hash_file(path: &Path) -> Result<Archive, AgentError> {
        let mut file = std::fs::File::open(path)
            .map_err(|e| AgentError::io(format!("open {}", path.display()), e))?;
        let mut hasher = Sha256::new();
        let size = std::io::copy(&mut file, &mut hasher)
            .map_err(|e| AgentError::io(format!("read {}", path.display()), e))?;
        Ok(Archive {
            path: path.to_path_buf(),
            size,
            sha256: hasher.finalize().into(),
        })
    }

    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }

    fn sha256_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.sha256)
    }
}

/// How an upload was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// The store's own SHA-256 of the object (which AWS computes from the bytes it received)
    /// matched.
    Checksum,
    /// The store keeps no whole-object checksum: the object was downloaded and hashed.
    Download,
}

impl std::fmt::Display for Verification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verification::Checksum => "checksum",
            Verification::Download => "download",
        })
    }
}

/// Which snapshot to download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotRef {
    /// The newest agent-named object.
    Latest,
    /// This object key (the whole key, prefix included).
    Key(String),
}

/// A downloaded, verified snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    pub key: String,
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    /// The archive's `meta.json` (Raft index and term of the snapshot).
    pub meta: SnapshotMeta,
}

/// One bucket and prefix.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    settings: S3Settings,
}

impl S3Store {
    /// A store using the standard AWS credential chain (environment, profile, web identity,
    /// ECS, instance role) and `settings.region`; with `settings.endpoint`, that endpoint and
    /// path-style addressing (moto, MinIO).
    pub async fn connect(settings: &S3Settings) -> S3Store {
        let sdk = aws_config::defaults(behavior_version())
            .region(Region::new(settings.region.clone()))
            .load()
            .await;
        S3Store::from_sdk_config(&sdk, settings)
    }

    /// A store from an already-loaded AWS config (credentials and retry settings of the
    /// caller's choosing); `settings.region` and `settings.endpoint` still apply.
    pub fn from_sdk_config(sdk: &aws_config::SdkConfig, settings: &S3Settings) -> S3Store {
        let mut config =
            aws_sdk_s3::config::Builder::from(sdk).region(Region::new(settings.region.clone()));
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint).force_path_style(true);
        }
        S3Store {
            client: aws_sdk_s3::Client::from_conf(config.build()),
            settings: settings.clone(),
        }
    }

    pub fn settings(&self) -> &S3Settings {
        &self.settings
    }

    /// The underlying client, for calls this type does not wrap.
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// `s3://bucket/key`, for messages.
    pub fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.settings.bucket)
    }

    /// HeadBucket: the bucket exists and these credentials may use it. A cheap check made
    /// before a snapshot is taken, so a wrong bucket fails fast.
    pub async fn check_bucket(&self) -> Result<(), AgentError> {
        self.client
            .head_bucket()
            .bucket(&self.settings.bucket)
            .send()
            .await
            .map_err(|e| self.failure(&format!("open bucket s3://{}", self.settings.bucket), e))?;
        Ok(())
    }

    /// PutObject of `archive` at `key`, with its SHA-256 as checksum and metadata, and SSE-KMS
    /// when `kms_key_id` is set.
    pub async fn put(&self, key: &str, archive: &Archive) -> Result<(), AgentError> {
        if archive.size > MAX_PUT_SIZE {
            return Err(AgentError::S3(format!(
                "the snapshot is {} bytes, more than the 5 GiB one S3 PutObject takes; \
                 multipart upload is not implemented",
                archive.size
            )));
        }
        let body = ByteStream::from_path(&archive.path)
            .await
            .map_err(|e| AgentError::S3(format!("read {}: {e}", archive.path.display())))?;
        let mut put = self
            .client
            .put_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .body(body)
            .content_type("application/gzip")
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(archive.sha256_base64())
            .metadata(SHA256_METADATA, archive.sha256_hex());
        if let Some(kms) = &self.settings.kms_key_id {
            put = put
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .ssekms_key_id(kms);
        }
        put.send()
            .await
            .map_err(|e| self.failure(&format!("upload {}", self.url(key)), e))?;
        Ok(())
    }

    /// HeadObject (with checksums); `None` when there is no such object.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, AgentError> {
        let out = match self
            .client
            .head_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => return Ok(None),
            Err(e) => return Err(self.failure(&format!("look up {}", self.url(key)), e)),
        };
        Ok(Some(ObjectInfo::new(
            out.content_length(),
            out.metadata(),
            out.checksum_sha256(),
            out.server_side_encryption(),
        )))
    }

    /// GetObject into `sink`, hashing on the way; returns what HeadObject would have said and
    /// the SHA-256 of the bytes received. With a stored checksum the SDK also checks the body.
    pub async fn get(
        &self,
        key: &str,
        sink: &mut (dyn Write + Send),
    ) -> Result<(ObjectInfo, [u8; 32]), AgentError> {
        let what = format!("download {}", self.url(key));
        let out = self
            .client
            .get_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .map_err(|e| self.failure(&what, e))?;
        let info = ObjectInfo::new(
            out.content_length(),
            out.metadata(),
            out.checksum_sha256(),
            out.server_side_encryption(),
        );
        let mut body = out.body;
        let mut hasher = Sha256::new();
        loop {
            match body.try_next().await {
                Ok(Some(chunk)) => {
                    hasher.update(&chunk);
                    sink.write_all(&chunk)
                        .map_err(|e| AgentError::io(format!("{what}: write"), e))?;
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(AgentError::Integrity(format!(
                        "{what}: the transfer failed or the body did not match S3's checksum: \
                         {}",
                        error_chain(&e)
                    )))
                }
            }
        }
        sink.flush()
            .map_err(|e| AgentError::io(format!("{what}: write"), e))?;
        Ok((info, hasher.finalize().into()))
    }

    /// Every object under `s3.prefix` followed by `below`, with its size (every page).
    pub async fn list(&self, below: &str) -> Result<Vec<(String, u64)>, AgentError> {
        let prefix = format!("{}{below}", self.settings.prefix);
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.settings.bucket)
            .prefix(&prefix)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.failure(&format!("list {}", self.url(&prefix)), e))?;
            for object in page.contents() {
                if let Some(key) = object.key() {
                    out.push((key.to_string(), object.size().unwrap_or(0).max(0) as u64));
                }
            }
        }
        Ok(out)
    }

    /// DeleteObjects, 1000 keys a request; fails if S3 reports any key it could not delete.
    pub async fn delete(&self, keys: &[String]) -> Result<(), AgentError> {
        for batch in keys.chunks(1000) {
            let objects = batch
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| AgentError::S3(format!("build a delete request: {e}")))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| AgentError::S3(format!("build a delete request: {e}")))?;
            let what = format!(
                "delete {} object(s) from s3://{}",
                batch.len(),
                self.settings.bucket
            );
            let out = self
                .client
                .delete_objects()
                .bucket(&self.settings.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| self.failure(&what, e))?;
            if let Some(first) = out.errors().first() {
                return Err(AgentError::S3(format!(
                    "{what}: S3 could not delete {} of them, e.g. {}: {} {}",
                    out.errors().len(),
                    first.key().unwrap_or("?"),
                    first.code().unwrap_or(""),
                    first.message().unwrap_or("")
                )));
            }
        }
        Ok(())
    }

    /// The snapshots the agent stored with `name_prefix`, oldest first. Objects whose names
    /// the agent did not make are left out.
    pub async fn list_snapshots(
        &self,
        name_prefix: &str,
    ) -> Result<Vec<SnapshotObject>, AgentError> {
        let mut snapshots: Vec<SnapshotObject> = self
            .list(&format!("{name_prefix}-"))
            .await?
            .into_iter()
            .filter_map(|(key, size)| {
                parse_object_key(&key, &self.settings.prefix, name_prefix)
                    .map(|time| SnapshotObject { key, size, time })
            })
            .collect();
        snapshots.sort_by(|a, b| a.time.cmp(&b.time).then_with(|| a.key.cmp(&b.key)));
        Ok(snapshots)
    }

    /// Uploads `archive` to `key` and checks what S3 stored (see [`Verification`]). On any
    /// failure the object is deleted again, so a failed upload leaves nothing behind.
    pub async fn upload_verified(
        &self,
        key: &str,
        archive: &Archive,
    ) -> Result<Verification, AgentError> {
        let result = match self.put(key, archive).await {
            Ok(()) => self.verify(key, archive).await,
            Err(e) => Err(e),
        };
        let Err(error) = result else {
            return result;
        };
        // PutObject is all or nothing, but its answer can be lost after S3 stored the object.
        match self.delete(&[key.to_string()]).await {
            Ok(()) => Err(error),
            Err(_) if !matches!(self.head(key).await, Ok(Some(_))) => Err(error),
            Err(delete) => Err(AgentError::S3(format!(
                "{error}\nThe object could not be deleted ({delete}); delete {} by hand.",
                self.url(key)
            ))),
        }
    }

    /// Checks the object at `key` against `archive`.
    async fn verify(&self, key: &str, archive: &Archive) -> Result<Verification, AgentError> {
        let url = self.url(key);
        let info = self.head(key).await?.ok_or_else(|| {
            AgentError::Integrity(format!("{url} is not there right after its upload"))
        })?;
        let bad = |what: String| {
            AgentError::Integrity(format!(
                "{url} was uploaded but S3 holds something else: {what}; the object was deleted, \
                 try again"
            ))
        };
        if info.size != archive.size {
            return Err(bad(format!(
                "{} bytes instead of {}",
                info.size, archive.size
            )));
        }
        if info.sha256.as_deref() != Some(archive.sha256_hex().as_str()) {
            return Err(bad(format!(
                "its {SHA256_METADATA} metadata is {:?}, not {}",
                info.sha256,
                archive.sha256_hex()
            )));
        }
        if self.settings.kms_key_id.is_some() && !info.sse_kms {
            return Err(bad("it is not encrypted with SSE-KMS".into()));
        }
        match info.checksum_sha256.as_deref() {
            Some(sum) if !sum.contains('-') => {
                if sum == archive.sha256_base64() {
                    Ok(Verification::Checksum)
                } else {
                    Err(bad(format!(
                        "its SHA-256 checksum is {sum}, not {}",
                        archive.sha256_base64()
                    )))
                }
            }
            _ => {
                let (_, digest) = self.get(key, &mut std::io::sink()).await?;
                if digest == archive.sha256 {
                    Ok(Verification::Download)
                } else {
                    Err(bad(format!(
                        "the bytes read back hash to {}, not {}",
                        hex::encode(digest),
                        archive.sha256_hex()
                    )))
                }
            }
        }
    }

    /// Downloads a snapshot to `dest` (written beside it first, 0600, and renamed only once
    /// verified): its SHA-256 must match the `keyhold-sha256` it was stored with (and S3's
    /// own checksum when there is one), and it must be a complete archive.
    pub async fn download(
        &self,
        name_prefix: &str,
        which: &SnapshotRef,
        dest: &Path,
    ) -> Result<Downloaded, AgentError> {
        let key = match which {
            SnapshotRef::Key(key) => key.clone(),
            SnapshotRef::Latest => self
                .list_snapshots(name_prefix)
                .await?
                .pop()
                .map(|s| s.key)
                .ok_or_else(|| {
                    AgentError::S3(format!(
                        "no snapshots in {}: no object is named {}{name_prefix}-<time>-<id>.snap; \
                         check s3.bucket, s3.prefix and snapshot.name_prefix",
                        self.url(&self.settings.prefix),
                        self.settings.prefix
                    ))
                })?,
        };
        let url = self.url(&key);
        if self.head(&key).await?.is_none() {
            return Err(AgentError::S3(format!(
                "{url} does not exist; list the snapshots there are with their keys"
            )));
        }
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut staged = tempfile::Builder::new()
            .prefix(".keyhold-download-")
            .tempfile_in(dir)
            .map_err(|e| AgentError::io(format!("create a file in {}", dir.display()), e))?;
        let (info, digest) = self.get(&key, staged.as_file_mut()).await?;
        let actual = hex::encode(digest);
        let corrupt = |what: String| {
            AgentError::Integrity(format!(
                "{url} is corrupted: {what}. Do not restore it; pick another snapshot"
            ))
        };
        let expected = info.sha256.clone().ok_or_else(|| {
            corrupt(format!(
                "it has no {SHA256_METADATA} metadata to check it against (not stored by the \
                 snapshot agent?)"
            ))
        })?;
        if actual != expected {
            return Err(corrupt(format!(
                "its content hashes to SHA-256 {actual}, but it was stored with {expected}"
            )));
        }
        if let Some(sum) = info.checksum_sha256.as_deref().filter(|s| !s.contains('-')) {
            if sum != base64::engine::general_purpose::STANDARD.encode(digest) {
                return Err(corrupt(format!(
                    "S3's checksum {sum} does not match its content"
                )));
            }
        }
        let file = staged
            .reopen()
            .map_err(|e| AgentError::io(format!("read back {}", staged.path().display()), e))?;
        let meta = check_archive(file)
            .await
            .map_err(|e| corrupt(format!("it is not a valid snapshot archive ({e})")))?;
        let size = staged.as_file().metadata().map(|m| m.len()).unwrap_or(0);
        staged
            .persist(dest)
            .map_err(|e| AgentError::io(format!("write {}", dest.display()), e.error))?;
        Ok(Downloaded {
            key,
            path: dest.to_path_buf(),
            size,
            sha256: actual,
            meta,
        })
    }

    /// An SDK failure as a message that says what was being done and what to check.
    fn failure<E>(&self, what: &str, err: SdkError<E, HttpResponse>) -> AgentError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let s = &self.settings;
        let place = match &s.endpoint {
            Some(endpoint) => format!("S3 at {endpoint} (s3.endpoint)"),
            None => format!("S3 in {}", s.region),
        };
        let detail = error_chain(&err);
        let hint = match &err {
            SdkError::TimeoutError(_) => format!("{place} did not answer in time"),
            SdkError::DispatchFailure(f) if f.is_io() || f.is_timeout() => {
                format!("could not reach {place}: check the network path to it")
            }
            _ if detail.contains("credentials") => "no usable AWS credentials: give the agent an \
                 instance role, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile"
                .to_string(),
            _ => match (err.code(), err.raw_response().map(|r| r.status().as_u16())) {
                (Some("NoSuchBucket" | "NotFound"), _) | (None, Some(404)) => format!(
                    "bucket {:?} does not exist in {place}: check s3.bucket and s3.region",
                    s.bucket
                ),
                (Some("AccessDenied" | "Forbidden" | "AllAccessDisabled"), _)
                | (None, Some(403)) => {
                    format!(
                        "access denied: the credentials need s3:ListBucket on arn:aws:s3:::{b} and \
                         s3:PutObject, s3:GetObject, s3:DeleteObject on arn:aws:s3:::{b}/{p}*{kms}",
                        b = s.bucket,
                        p = s.prefix,
                        kms = if s.kms_key_id.is_some() {
                            ", plus kms:GenerateDataKey and kms:Decrypt on the KMS key"
                        } else {
                            ""
                        }
                    )
                }
                (Some("PermanentRedirect" | "AuthorizationHeaderMalformed"), _)
                | (None, Some(301)) => format!(
                    "bucket {:?} is not in region {}: set s3.region to the bucket's region",
                    s.bucket, s.region
                ),
                (Some("InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken"), _) => {
                    "S3 refused the AWS credentials: check which ones the agent runs with".into()
                }
                (Some(code), _) if code.starts_with("KMS.") || code.contains("KMS") => format!(
                    "the KMS key {:?} cannot be used: check s3.kms_key_id and the key's policy",
                    s.kms_key_id.as_deref().unwrap_or_default()
                ),
                _ => "S3 refused the request".into(),
            },
        };
        AgentError::S3(format!("{what} failed: {hint}\n({detail})"))
    }
}

impl ObjectInfo {
    /// From the fields HeadObject and GetObject both answer.
    fn new(
        content_length: Option<i64>,
        metadata: Option<&HashMap<String, String>>,
        checksum_sha256: Option<&str>,
        sse: Option<&ServerSideEncryption>,
    ) -> ObjectInfo {
        ObjectInfo {
            size: content_length.unwrap_or(0).max(0) as u64,
            sha256: metadata
                .and_then(|m| m.get(SHA256_METADATA))
                .map(|s| s.to_ascii_lowercase()),
            checksum_sha256: checksum_sha256.map(str::to_string),
            sse_kms: sse == Some(&ServerSideEncryption::AwsKms),
        }
    }
}

/// Checks a whole archive file (gzip to its CRC, tar layout, `SHA256SUMS`, sealed sums present)
/// on a blocking thread; returns its `meta.json`.
pub(super) async fn check_archive(file: std::fs::File) -> Result<SnapshotMeta, SnapshotError> {
    let options = InspectOptions {
        details: false,
        ..InspectOptions::default()
    };
    tokio::task::spawn_blocking(move || snapshot::inspect(std::io::BufReader::new(file), &options))
        .await
        .map_err(|e| SnapshotError::Tar(format!("the check did not finish: {e}")))?
        .map(|info| info.meta)
}
