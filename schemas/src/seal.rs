//! Secrets sealed to one agent. Each agent has an X25519 key pair of its own (made at its
//! first start, the secret half never leaving its state directory) and publishes the public
//! half in its heartbeat; the coordinator pins it and seals a job's root password to it with
//! an anonymous sealed box (libsodium's `crypto_box_seal`: X25519 + XSalsa20-Poly1305, from
//! RustCrypto's `crypto_box`). Only the agent holding the secret key can open it; the sender
//! needs no key of its own. The agent seals its per-job SSH key to itself the same way before
//! it goes into a checkpoint.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::ids::JobId;
use crate::secret::Secret;

/// An agent's public sealing key, written as base64 of its 32 bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(crypto_box::PublicKey);

impl PublicKey {
    /// `SHA256:<base64>` of the key, as OpenSSH prints key fingerprints.
    pub fn fingerprint(&self) -> String {
        let digest = sha2::Sha256::digest(self.0.as_bytes());
        format!("SHA256:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest))
    }

    /// Seals `secret` for job `job` only: the job id is sealed with it, and
    /// [`SecretKey::open_for_job`] refuses it in any other job, so a blob copied from one job's
    /// message into another's (aimed at a container of the copier's choosing) opens nothing.
    pub fn seal_for_job(&self, job: &JobId, secret: &[u8]) -> Sealed {
        let mut bound = bound_prefix(job).into_bytes();
        bound.extend_from_slice(secret);
        let sealed = self.seal(&bound);
        zeroize::Zeroize::zeroize(&mut bound);
        sealed
    }

    /// Seals `secret` so that only the holder of this key's secret half can read it.
    pub fn seal(&self, secret: &[u8]) -> Sealed {
        let data = self.0.seal(&mut crypto_box::aead::OsRng, secret).expect("sealing into memory cannot fail");
        Sealed { to: self.fingerprint(), data: B64.encode(data) }
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&B64.encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl FromStr for PublicKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = B64.decode(s.trim()).map_err(|e| format!("not base64: {e}"))?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| format!("{} bytes, not 32", b.len()))?;
        Ok(Self(crypto_box::PublicKey::from(bytes)))
    }
}

/// An agent's secret sealing key. Never printed, never sent.
#[derive(Clone)]
pub struct SecretKey(crypto_box::SecretKey);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(of {})", self.public().fingerprint())
    }
}

/// Why a sealed secret could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("sealed to the key {to}, but this agent's key is {mine}")]
    OtherKey { to: String, mine: String },
    #[error("the sealed data is damaged or was not sealed to this key")]
    Damaged,
    #[error("sealed for job {sealed_for}, not for this job ({this}); a sealed secret opens only in its own job")]
    OtherJob { sealed_for: String, this: JobId },
    #[error("not sealed for a job (an older coordinator sealed it); submit it again")]
    Unbound,
}

/// What a secret sealed for `job` starts with, inside the box.
fn bound_prefix(job: &JobId) -> String {
    format!("pvefleet-job:{job}\n")
}

impl SecretKey {
    pub fn generate() -> Self {
        Self(crypto_box::SecretKey::generate(&mut crypto_box::aead::OsRng))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.public_key())
    }

    /// The key as stored in the agent's state directory: base64 of its 32 bytes.
    pub fn to_text(&self) -> Secret {
        Secret::new(B64.encode(self.0.to_bytes()))
    }

    pub fn from_text(text: &str) -> Result<Self, String> {
        let bytes = B64.decode(text.trim()).map_err(|_| "not base64".to_owned())?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| format!("{} bytes, not 32", b.len()))?;
        Ok(Self(crypto_box::SecretKey::from(bytes)))
    }

    /// Opens a secret sealed for job `job` ([`PublicKey::seal_for_job`]); one sealed for another
    /// job, or for none, is refused.
    pub fn open_for_job(&self, job: &JobId, sealed: &Sealed) -> Result<Secret, OpenError> {
        let clear = self.open(sealed)?;
        let text = clear.expose();
        match text.strip_prefix(&bound_prefix(job)) {
            Some(secret) => Ok(Secret::new(secret)),
            None => match text.strip_prefix("pvefleet-job:").and_then(|rest| rest.split_once('\n')) {
                Some((other, _)) => Err(OpenError::OtherJob { sealed_for: other.to_owned(), this: *job }),
                None => Err(OpenError::Unbound),
            },
        }
    }

    /// Opens a secret sealed to this key.
    pub fn open(&self, sealed: &Sealed) -> Result<Secret, OpenError> {
        let mine = self.public().fingerprint();
        if sealed.to != mine {
            return Err(OpenError::OtherKey { to: sealed.to.clone(), mine });
        }
        let data = B64.decode(&sealed.data).map_err(|_| OpenError::Damaged)?;
        let clear = self.0.unseal(&data).map_err(|_| OpenError::Damaged)?;
        String::from_utf8(clear).map(Secret::new).map_err(|_| OpenError::Damaged)
    }
}

/// A secret sealed to one agent's key: `to` names the key (its fingerprint), `data` is the
/// sealed box in base64.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sealed {
    pub to: String,
    pub data: String,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed(to {})", self.to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_key_it_was_sealed_to_opens_it() {
        let pve1 = SecretKey::generate();
        let pve2 = SecretKey::generate();
        let sealed = pve1.public().seal(b"correct horse");
        assert!(!sealed.data.contains("correct"));
        assert_eq!(pve1.open(&sealed).unwrap().expose(), "correct horse");
        assert!(matches!(pve2.open(&sealed), Err(OpenError::OtherKey { .. })));
        // Relabelled for pve2, it still cannot be opened by pve2.
        let relabelled = Sealed { to: pve2.public().fingerprint(), ..sealed.clone() };
        assert_eq!(pve2.open(&relabelled), Err(OpenError::Damaged));
        // Two seals of one secret differ (a fresh ephemeral key each time).
        assert_ne!(pve1.public().seal(b"correct horse").data, sealed.data);
    }

    #[test]
    fn a_secret_sealed_for_one_job_opens_in_no_other() {
        let agent = SecretKey::generate();
        let (a, b) = (JobId::new(), JobId::new());
        let sealed = agent.public().seal_for_job(&a, b"correct horse");
        assert_eq!(agent.open_for_job(&a, &sealed).unwrap().expose(), "correct horse");
        assert!(matches!(agent.open_for_job(&b, &sealed), Err(OpenError::OtherJob { .. })));
        let unbound = agent.public().seal(b"correct horse");
        assert_eq!(agent.open_for_job(&a, &unbound), Err(OpenError::Unbound));
    }

    #[test]
    fn keys_round_trip_as_text_and_debug_shows_no_secret() {
        let key = SecretKey::generate();
        let text = key.to_text();
        let again = SecretKey::from_text(text.expose()).unwrap();
        assert_eq!(again.public(), key.public());
        let public: PublicKey = key.public().to_string().parse().unwrap();
        assert_eq!(public, key.public());
        assert!(public.fingerprint().starts_with("SHA256:"));
        assert!(!format!("{key:?}").contains(text.expose()));
        assert!("AAAA".parse::<PublicKey>().unwrap_err().contains("not 32"));
    }
}
