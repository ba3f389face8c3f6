//! Operations authorised by a quorum of key shares rather than a token:
//! `sys/generate-root/*` (OTP flow), `sys/rekey/*` and
//! `sys/rekey-recovery-key/*` (with verification).
//!
//! The quorum is of unseal-key shares under Shamir, and of recovery-key
//! shares under an auto-unseal seal (where the recovery key opens nothing: it
//! only proves that a quorum of its holders agreed).

use std::sync::Arc;

use serde::Serialize;
use zeroize::Zeroizing;

use super::keys::{self, KeyCollector};
use super::{base64_std, Core};
use crate::error::{Error, Result};

/// Length of a generated OTP: the length of a root token (`hvs.` + 24).
const OTP_LENGTH: usize = 28;

#[derive(Default)]
pub(super) struct RootOps {
    generate_root: std::sync::Mutex<Option<GenerateRootAttempt>>,
    rekey: std::sync::Mutex<Option<RekeyAttempt>>,
    rekey_recovery: std::sync::Mutex<Option<RekeyAttempt>>,
}

/// Which keys a rekey replaces: `sys/rekey` (the unseal keys) or
/// `sys/rekey-recovery-key` (the recovery keys of an auto-unseal seal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RekeyTarget {
    Barrier,
    Recovery,
}

impl RekeyTarget {
    fn path(self) -> &'static str {
        match self {
            RekeyTarget::Barrier => "sys/rekey",
            RekeyTarget::Recovery => "sys/rekey-recovery-key",
        }
    }
}

struct GenerateRootAttempt {
    keys: KeyCollector,
    otp: Zeroizing<String>,
}

struct RekeyAttempt {
    keys: KeyCollector,
    secret_shares: u8,
    secret_threshold: u8,
    require_verification: bool,
    /// Set once the current shares were accepted and new ones were issued,
    /// while waiting for a threshold of the new shares to verify them.
    pending: Option<PendingRekey>,
}

struct PendingRekey {
    current_key: Zeroizing<Vec<u8>>,
    prepared: Prepared,
    verification: KeyCollector,
}

/// New shares handed out and waiting for verification.
#[derive(Clone)]
enum Prepared {
    Barrier(Arc<crate::seal::PreparedRekey>),
    Recovery(Arc<crate::seal::PreparedRecoveryRekey>),
}

impl Prepared {
    fn new(target: RekeyTarget, shares: u8, threshold: u8) -> Result<Self> {
        Ok(match target {
            RekeyTarget::Barrier => Prepared::Barrier(Arc::new(crate::seal::PreparedRekey::new(
                shares, threshold,
            )?)),
            RekeyTarget::Recovery => Prepared::Recovery(Arc::new(
                crate::seal::PreparedRecoveryRekey::new(shares, threshold)?,
            )),
        })
    }

    fn shares(&self) -> &crate::seal::Shares {
        match self {
            Prepared::Barrier(p) => &p.shares,
            Prepared::Recovery(p) => &p.shares,
        }
    }

    fn verifies(&self, shares: &[&[u8]]) -> bool {
        match self {
            Prepared::Barrier(p) => p.verifies(shares),
            Prepared::Recovery(p) => p.verifies(shares),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct GenerateRootStatus {
    pub started: bool,
    pub nonce: String,
    pub progress: usize,
    pub required: u8,
    pub encoded_token: String,
    pub encoded_root_token: String,
    pub pgp_fingerprint: String,
    pub otp: String,
    pub otp_length: usize,
    pub complete: bool,
}

#[derive(Debug, Serialize)]
pub struct RekeyStatus {
    pub started: bool,
    pub nonce: String,
    pub t: u8,
    pub n: u8,
    pub progress: usize,
    pub required: u8,
    pub pgp_fingerprints: Option<Vec<String>>,
    pub backup: bool,
    pub verification_required: bool,
}

#[derive(Debug, Serialize)]
pub struct RekeyUpdate {
    pub nonce: String,
    pub complete: bool,
    pub progress: usize,
    pub required: u8,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys_base64: Vec<String>,
    pub pgp_fingerprints: Option<Vec<String>>,
    pub backup: bool,
    pub verification_required: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub verification_nonce: String,
}

#[derive(Debug, Serialize)]
pub struct RekeyVerifyStatus {
    pub started: bool,
    pub nonce: String,
    pub t: u8,
    pub n: u8,
    pub progress: usize,
    pub complete: bool,
}

fn random_otp() -> Zeroizing<String> {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::rngs::OsRng;
    Zeroizing::new(
        (0..OTP_LENGTH)
            .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
            .collect(),
    )
}

fn check_nonce(given: Option<&str>, expected: &str) -> Result<()> {
    match given {
        Some(n) if n == expected => Ok(()),
        Some(_) => Err(Error::invalid(format!(
            "nonce mismatch; the current attempt's nonce is {expected:?}"
        ))),
        None => Err(Error::invalid("'nonce' must be specified")),
    }
}

impl Core {
    /// The threshold and share count of the keys that authorise root
    /// operations: the recovery keys under an auto-unseal seal, else the
    /// unseal keys.
    async fn threshold(&self) -> Result<(u8, u8)> {
        let config = match self.seal.auto() {
            Some(_) => self.seal.recovery_config().await?,
            None => self.seal.config().await?,
        }
        .ok_or(Error::NotInitialized)?;
        Ok((config.secret_threshold.max(1), config.secret_shares))
    }

    /// Whether `key` (combined from shares) is the current quorum key.
    async fn quorum_key_valid(&self, key: &[u8]) -> Result<bool> {
        match self.seal.auto() {
            Some(auto) => match self.seal.verify_recovery_key(auto.as_ref(), key).await {
                Ok(()) => Ok(true),
                Err(crate::seal::SealError::InvalidKey) => Ok(false),
                Err(e) => Err(e.into()),
            },
            None => Ok(self.seal.recover_root_key(key).await.is_ok()),
        }
    }

    fn rekey_slot(&self, target: RekeyTarget) -> &std::sync::Mutex<Option<RekeyAttempt>> {
        match target {
            RekeyTarget::Barrier => &self.root_ops.rekey,
            RekeyTarget::Recovery => &self.root_ops.rekey_recovery,
        }
    }

    /// Refuses a rekey that does not fit the seal: recovery keys exist only
    /// with an auto-unseal seal, and under one the unseal keys are the key
    /// service's.
    fn check_rekey_target(&self, target: RekeyTarget) -> Result<()> {
        match (target, self.seal.auto()) {
            (RekeyTarget::Barrier, Some(auto)) => Err(Error::invalid(format!(
                "this server auto-unseals with {}: it has no unseal keys to rekey; rekey the recovery keys instead (sys/rekey-recovery-key, `operator rekey -target=recovery`)",
                auto.kind()
            ))),
            (RekeyTarget::Recovery, None) => Err(Error::invalid(
                "this server uses the Shamir seal and has no recovery keys; rekey the unseal keys (sys/rekey)",
            )),
            _ => Ok(()),
        }
    }

    // ------------------------------------------------------ generate-root

    pub async fn generate_root_status(&self) -> Result<GenerateRootStatus> {
        let (required, _) = self.threshold().await?;
        let attempt = self
            .root_ops
            .generate_root
            .lock()
            .expect("generate-root lock");
        Ok(match attempt.as_ref() {
            None => GenerateRootStatus {
                started: false,
                nonce: String::new(),
                progress: 0,
                required,
                encoded_token: String::new(),
                encoded_root_token: String::new(),
                pgp_fingerprint: String::new(),
                otp: String::new(),
                otp_length: OTP_LENGTH,
                complete: false,
            },
            Some(a) => GenerateRootStatus {
                started: true,
                nonce: a.keys.nonce.clone(),
                progress: a.keys.progress(),
                required,
                encoded_token: String::new(),
                encoded_root_token: String::new(),
                pgp_fingerprint: String::new(),
                otp: String::new(),
                otp_length: OTP_LENGTH,
                complete: false,
            },
        })
    }

    /// Starts an attempt. With no `otp` the server makes one and returns it
    /// once, as Vault 1.10+ does.
    pub async fn generate_root_start(
        &self,
        otp: Option<String>,
        pgp_key: Option<String>,
    ) -> Result<GenerateRootStatus> {
        self.unsealed()?;
        if pgp_key.is_some_and(|k| !k.is_empty()) {
            return Err(Error::invalid(
                "PGP-encrypted root tokens are not supported by this build; use the OTP flow",
            ));
        }
        let (generated, otp) = match otp.filter(|o| !o.is_empty()) {
            Some(otp) if otp.len() == OTP_LENGTH => (false, Zeroizing::new(otp)),
            Some(otp) => {
                return Err(Error::invalid(format!(
                    "OTP string is wrong length: got {} characters, need {OTP_LENGTH}",
                    otp.len()
                )));
            }
            None => (true, random_otp()),
        };
        {
            let mut attempt = self
                .root_ops
                .generate_root
                .lock()
                .expect("generate-root lock");
            if attempt.is_some() {
                return Err(Error::invalid("root generation already in progress; cancel it first (DELETE sys/generate-root/attempt)"));
            }
            *attempt = Some(GenerateRootAttempt {
                keys: KeyCollector::new(),
                otp: otp.clone(),
            });
        }
        let mut status = self.generate_root_status().await?;
        if generated {
            status.otp = otp.to_string();
        }
        Ok(status)
    }

    pub fn generate_root_cancel(&self) {
        *self
            .root_ops
            .generate_root
            .lock()
            .expect("generate-root lock") = None;
    }

    pub async fn generate_root_update(
        &self,
        key: &str,
        nonce: Option<&str>,
    ) -> Result<GenerateRootStatus> {
        let u = self.unsealed()?;
        let (required, _) = self.threshold().await?;
        let share = keys::decode_share(key)?;
        let ready = {
            let mut guard = self
                .root_ops
                .generate_root
                .lock()
                .expect("generate-root lock");
            let attempt = guard
                .as_mut()
                .ok_or_else(|| Error::invalid("no root generation in progress"))?;
            check_nonce(nonce, &attempt.keys.nonce)?;
            attempt.keys.add(share);
            if attempt.keys.progress() < required as usize {
                None
            } else {
                let attempt = guard.take().expect("attempt present");
                let mut a = attempt;
                Some((a.keys.nonce.clone(), a.keys.take(), a.otp))
            }
        };
        let Some((nonce, collected, otp)) = ready else {
            return self.generate_root_status().await;
        };
        let quorum_key = keys::reconstruct(&collected, required as usize)?;
        if !self.quorum_key_valid(&quorum_key).await? {
            return Err(Error::invalid("the key shares did not reconstruct the unseal (or recovery) key; root generation was cancelled, start again"));
        }
        let root = u.tokens.create_root(None).await?;
        let token = Zeroizing::new(root.id.clone());
        if token.len() != otp.len() {
            return Err(Error::internal("root token and OTP lengths differ"));
        }
        let xored: Zeroizing<Vec<u8>> =
            Zeroizing::new(token.bytes().zip(otp.bytes()).map(|(a, b)| a ^ b).collect());
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(xored.as_slice());
        tracing::info!("root token generated by a quorum of key holders");
        Ok(GenerateRootStatus {
            started: true,
            nonce,
            progress: required as usize,
            required,
            encoded_token: encoded.clone(),
            encoded_root_token: encoded,
            pgp_fingerprint: String::new(),
            otp: String::new(),
            otp_length: OTP_LENGTH,
            complete: true,
        })
    }

    // --------------------------------------------------------------- rekey

    pub async fn rekey_status(&self, target: RekeyTarget) -> Result<RekeyStatus> {
        let (required, _) = self.threshold().await?;
        let attempt = self.rekey_slot(target).lock().expect("rekey lock");
        Ok(match attempt.as_ref() {
            None => RekeyStatus {
                started: false,
                nonce: String::new(),
                t: 0,
                n: 0,
                progress: 0,
                required,
                pgp_fingerprints: None,
                backup: false,
                verification_required: false,
            },
            Some(a) => RekeyStatus {
                started: true,
                nonce: a.keys.nonce.clone(),
                t: a.secret_threshold,
                n: a.secret_shares,
                progress: a.keys.progress(),
                required,
                pgp_fingerprints: None,
                backup: false,
                verification_required: a.require_verification,
            },
        })
    }

    pub async fn rekey_start(
        &self,
        target: RekeyTarget,
        shares: u8,
        threshold: u8,
        require_verification: bool,
        pgp: bool,
        backup: bool,
    ) -> Result<RekeyStatus> {
        self.unsealed()?;
        self.check_rekey_target(target)?;
        if pgp || backup {
            return Err(Error::invalid(
                "PGP-encrypted rekey shares and backups are not supported by this build",
            ));
        }
        crate::seal::SealConfig::shamir(shares, threshold)?;
        {
            let mut attempt = self.rekey_slot(target).lock().expect("rekey lock");
            if attempt.is_some() {
                return Err(Error::invalid(format!(
                    "rekey already in progress; cancel it first (DELETE {}/init)",
                    target.path()
                )));
            }
            *attempt = Some(RekeyAttempt {
                keys: KeyCollector::new(),
                secret_shares: shares,
                secret_threshold: threshold,
                require_verification,
                pending: None,
            });
        }
        self.rekey_status(target).await
    }

    pub fn rekey_cancel(&self, target: RekeyTarget) {
        *self.rekey_slot(target).lock().expect("rekey lock") = None;
    }

    pub async fn rekey_update(
        self: &Arc<Self>,
        target: RekeyTarget,
        key: &str,
        nonce: Option<&str>,
    ) -> Result<RekeyUpdate> {
        self.unsealed()?;
        self.check_rekey_target(target)?;
        let (required, _) = self.threshold().await?;
        let share = keys::decode_share(key)?;
        let ready = {
            let mut guard = self.rekey_slot(target).lock().expect("rekey lock");
            let attempt = guard
                .as_mut()
                .ok_or_else(|| Error::invalid("no rekey in progress"))?;
            if attempt.pending.is_some() {
                return Err(Error::invalid(format!(
                    "rekey is waiting for verification of the new keys ({}/verify)",
                    target.path()
                )));
            }
            check_nonce(nonce, &attempt.keys.nonce)?;
            attempt.keys.add(share);
            if attempt.keys.progress() < required as usize {
                return Ok(RekeyUpdate {
                    nonce: attempt.keys.nonce.clone(),
                    complete: false,
                    progress: attempt.keys.progress(),
                    required,
                    keys: vec![],
                    keys_base64: vec![],
                    pgp_fingerprints: None,
                    backup: false,
                    verification_required: attempt.require_verification,
                    verification_nonce: String::new(),
                });
            }
            let nonce = attempt.keys.nonce.clone();
            (
                nonce,
                attempt.keys.take(),
                attempt.secret_shares,
                attempt.secret_threshold,
                attempt.require_verification,
            )
        };
        let (nonce, collected, shares, threshold, require_verification) = ready;
        let current_key = keys::reconstruct(&collected, required as usize)?;
        if !self.quorum_key_valid(&current_key).await? {
            self.rekey_cancel(target);
            return Err(Error::invalid("the key shares did not reconstruct the current key; rekey was cancelled, start again"));
        }
        let prepared = Prepared::new(target, shares, threshold)?;
        if require_verification {
            let encoded_hex = prepared
                .shares()
                .iter()
                .map(|s| hex::encode(s.as_slice()))
                .collect();
            let encoded_b64 = prepared.shares().iter().map(|s| base64_std(s)).collect();
            let verification = KeyCollector::new();
            let verification_nonce = verification.nonce.clone();
            let mut guard = self.rekey_slot(target).lock().expect("rekey lock");
            if let Some(attempt) = guard.as_mut() {
                attempt.pending = Some(PendingRekey {
                    current_key,
                    prepared,
                    verification,
                });
            }
            return Ok(RekeyUpdate {
                nonce,
                complete: true,
                progress: 0,
                required,
                keys: encoded_hex,
                keys_base64: encoded_b64,
                pgp_fingerprints: None,
                backup: false,
                verification_required: true,
                verification_nonce,
            });
        }
        self.apply_prepared(&current_key, &prepared).await?;
        self.rekey_cancel(target);
        tracing::info!(shares, threshold, target = target.path(), "keys rekeyed");
        let new_shares = prepared.shares();
        Ok(RekeyUpdate {
            nonce,
            complete: true,
            progress: 0,
            required,
            keys: new_shares
                .iter()
                .map(|s| hex::encode(s.as_slice()))
                .collect(),
            keys_base64: new_shares.iter().map(|s| base64_std(s)).collect(),
            pgp_fingerprints: None,
            backup: false,
            verification_required: false,
            verification_nonce: String::new(),
        })
    }

    /// Puts prepared shares in force, under the lifecycle lock.
    async fn apply_prepared(&self, current_key: &[u8], prepared: &Prepared) -> Result<()> {
        let _guard = self.lifecycle.lock().await;
        match prepared {
            Prepared::Barrier(p) => self.seal.apply_rekey(&self.barrier, current_key, p).await?,
            Prepared::Recovery(p) => self.seal.apply_recovery_rekey(p).await?,
        }
        Ok(())
    }

    pub async fn rekey_verify_status(&self, target: RekeyTarget) -> Result<RekeyVerifyStatus> {
        let guard = self.rekey_slot(target).lock().expect("rekey lock");
        let attempt = guard
            .as_ref()
            .ok_or_else(|| Error::invalid("no rekey in progress"))?;
        let pending = attempt
            .pending
            .as_ref()
            .ok_or_else(|| Error::invalid("no rekey verification in progress"))?;
        Ok(RekeyVerifyStatus {
            started: true,
            nonce: pending.verification.nonce.clone(),
            t: attempt.secret_threshold,
            n: attempt.secret_shares,
            progress: pending.verification.progress(),
            complete: false,
        })
    }

    /// Restarts verification (the new shares stay the same).
    pub fn rekey_verify_cancel(&self, target: RekeyTarget) -> Result<()> {
        let mut guard = self.rekey_slot(target).lock().expect("rekey lock");
        let pending = guard
            .as_mut()
            .and_then(|a| a.pending.as_mut())
            .ok_or_else(|| Error::invalid("no rekey verification in progress"))?;
        pending.verification.reset();
        Ok(())
    }

    pub async fn rekey_verify_update(
        &self,
        target: RekeyTarget,
        key: &str,
        nonce: Option<&str>,
    ) -> Result<RekeyVerifyStatus> {
        let share = keys::decode_share(key)?;
        let ready = {
            let mut guard = self.rekey_slot(target).lock().expect("rekey lock");
            let attempt = guard
                .as_mut()
                .ok_or_else(|| Error::invalid("no rekey in progress"))?;
            let threshold = attempt.secret_threshold.max(1) as usize;
            let (t, n) = (attempt.secret_threshold, attempt.secret_shares);
            let pending = attempt
                .pending
                .as_mut()
                .ok_or_else(|| Error::invalid("no rekey verification in progress"))?;
            check_nonce(nonce, &pending.verification.nonce)?;
            pending.verification.add(share);
            if pending.verification.progress() < threshold {
                return Ok(RekeyVerifyStatus {
                    started: true,
                    nonce: pending.verification.nonce.clone(),
                    t,
                    n,
                    progress: pending.verification.progress(),
                    complete: false,
                });
            }
            let nonce = pending.verification.nonce.clone();
            let submitted = pending.verification.take();
            (nonce, submitted, threshold, t, n)
        };
        let (nonce, submitted, threshold, t, n) = ready;
        let _ = threshold;
        let (current_key, prepared) = {
            let guard = self.rekey_slot(target).lock().expect("rekey lock");
            let pending = guard
                .as_ref()
                .and_then(|a| a.pending.as_ref())
                .ok_or_else(|| Error::invalid("no rekey verification in progress"))?;
            (pending.current_key.clone(), pending.prepared.clone())
        };
        let refs: Vec<&[u8]> = submitted.iter().map(|k| k.as_slice()).collect();
        if !prepared.verifies(&refs) {
            return Err(Error::invalid("the submitted keys are not the new keys; verification progress was reset, submit the new keys again"));
        }
        self.apply_prepared(&current_key, &prepared).await?;
        self.rekey_cancel(target);
        tracing::info!(target = target.path(), "keys rekeyed after verification");
        Ok(RekeyVerifyStatus {
            started: false,
            nonce,
            t,
            n,
            progress: 0,
            complete: true,
        })
    }
}
