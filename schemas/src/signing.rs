//! Signed requests: who asked for a job (or a cancel, or a plan), in a form any language can
//! make. The format is written down for other clients in `schemas/SIGNING.md`:
//!
//! - The signer holds an ed25519 key ([`Identity`]); it is named by its [`SignerId`],
//!   `SHA256:` and the unpadded base64 of the SHA-256 of its 32-byte public key (as OpenSSH
//!   names keys).
//! - A signed message carries an `auth` object: `signer` (the id), `not_after` (RFC 3339 UTC,
//!   at most [`MAX_VALIDITY_MINUTES`] after signing) and `signature` (standard base64 of the
//!   64-byte ed25519 signature).
//! - What is signed is [`DOMAIN`] followed by the message's canonical JSON (RFC 8785, JCS:
//!   object keys sorted by their UTF-16 code units, no whitespace, strings escaped minimally,
//!   numbers as ECMAScript prints them) with `auth.signature` left out and `auth.signer` and
//!   `auth.not_after` kept. The message's node, kind and job id are fields of it, so all of
//!   them, and every other byte of the request, are covered.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, STANDARD_NO_PAD as B64_NO_PAD};
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Digest as _;

use crate::message::Timestamp;
use crate::secret::Secret;

/// What every signature signs first, so a signature over one kind of pvefleet message can
/// never pass for anything else.
pub const DOMAIN: &[u8] = b"pvefleet-request-v1\n";

/// The longest a signed request stays valid.
pub const MAX_VALIDITY_MINUTES: u32 = 24 * 60;

/// The first word of an identity file.
const IDENTITY_TAG: &str = "pvefleet-identity-v1";

/// Who signed a request, and until when it holds.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestAuth {
    /// The signer's key id (`SHA256:…`).
    pub signer: String,
    /// When the request stops being valid (RFC 3339, UTC).
    pub not_after: Timestamp,
    /// Standard base64 of the ed25519 signature (64 bytes).
    pub signature: String,
    /// The person a service (the web view) acts for, by the name that service knows them by;
    /// signed with the rest, so the audit trail names who asked through the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32), regex(pattern = r"^[a-z][a-z0-9._-]*$"))]
    pub user: Option<String>,
}

/// Whether `name` may name a person in `auth.user` (and so a web view user): 1 to 32 of
/// `a-z 0-9 . _ -`, beginning with a letter. It is shown in audit trails, so it stays plain.
pub fn is_user_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

/// An operator's (or a service's) signing key. Its secret half never leaves its file.
pub struct Identity(SigningKey);

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.public().id())
    }
}

impl Identity {
    pub fn generate() -> Self {
        use crypto_box::aead::rand_core::RngCore as _;
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        crypto_box::aead::OsRng.fill_bytes(seed.as_mut());
        Self(SigningKey::from_bytes(&seed))
    }

    /// The identity file's text: `pvefleet-identity-v1 <base64 of the 32-byte seed>`.
    pub fn to_text(&self) -> Secret {
        Secret::new(format!("{IDENTITY_TAG} {}", B64.encode(self.0.to_bytes())))
    }

    pub fn from_text(text: &str) -> Result<Self, String> {
        let rest = text
            .trim()
            .strip_prefix(IDENTITY_TAG)
            .ok_or_else(|| format!("not a pvefleet identity (it must begin with `{IDENTITY_TAG}`)"))?;
        let bytes = zeroize::Zeroizing::new(B64.decode(rest.trim()).map_err(|e| format!("its key: {e}"))?);
        let seed: [u8; 32] =
            bytes.as_slice().try_into().map_err(|_| format!("its key is {} bytes, not 32", bytes.len()))?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    pub fn public(&self) -> SignerKey {
        SignerKey(self.0.verifying_key())
    }

    /// The ed25519 signature of `bytes` (for [`crate::trust::SignedDoc`], which has its own domain).
    pub fn sign_bytes(&self, bytes: &[u8]) -> [u8; 64] {
        self.0.sign(bytes).to_bytes()
    }

    /// Signs `message` (a JSON object): sets its `auth` to this signer, valid for `minutes`
    /// from now, with the signature over its canonical bytes.
    pub fn sign(&self, message: &mut Value, minutes: u32) -> Result<(), SignError> {
        self.sign_for(message, minutes, None)
    }

    /// Signs `message` as [`Identity::sign`] does, naming `user` as the person this signer (a
    /// service) acts for.
    pub fn sign_for(&self, message: &mut Value, minutes: u32, user: Option<&str>) -> Result<(), SignError> {
        if minutes == 0 || minutes > MAX_VALIDITY_MINUTES {
            return Err(SignError::Validity(minutes));
        }
        let not_after = Timestamp(time::OffsetDateTime::now_utc() + time::Duration::minutes(i64::from(minutes)));
        self.sign_until_for(message, not_after, user)
    }

    /// Signs `message` as valid until `not_after`.
    pub fn sign_until(&self, message: &mut Value, not_after: Timestamp) -> Result<(), SignError> {
        self.sign_until_for(message, not_after, None)
    }

    fn sign_until_for(&self, message: &mut Value, not_after: Timestamp, user: Option<&str>) -> Result<(), SignError> {
        let object = message.as_object_mut().ok_or(SignError::NotAnObject)?;
        let mut auth = serde_json::json!({ "signer": self.public().id().0, "not_after": not_after });
        if let Some(user) = user {
            auth["user"] = Value::String(user.to_owned());
        }
        object.insert("auth".into(), auth);
        let signature = self.0.sign(&signed_bytes(message)?);
        message["auth"]["signature"] = Value::String(B64.encode(signature.to_bytes()));
        Ok(())
    }
}

/// A signer's public key: `ed25519:<standard base64 of its 32 bytes>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SignerKey(VerifyingKey);

impl fmt::Debug for SignerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignerKey({})", self.id())
    }
}

impl fmt::Display for SignerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519:{}", B64.encode(self.0.as_bytes()))
    }
}

impl FromStr for SignerKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let b64 = s.trim().strip_prefix("ed25519:").ok_or("a signer's key begins with `ed25519:`")?;
        let bytes = B64.decode(b64).map_err(|e| format!("its base64: {e}"))?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| format!("{} bytes, not 32", b.len()))?;
        VerifyingKey::from_bytes(&bytes).map(SignerKey).map_err(|e| format!("not an ed25519 key: {e}"))
    }
}

impl SignerKey {
    /// `SHA256:` and the unpadded base64 of the SHA-256 of the 32-byte key.
    /// Whether `signature` is this key's over `bytes`.
    pub fn verify_bytes(&self, bytes: &[u8], signature: &[u8; 64]) -> bool {
        self.0.verify(bytes, &ed25519_dalek::Signature::from_bytes(signature)).is_ok()
    }

    pub fn id(&self) -> SignerId {
        SignerId(format!("SHA256:{}", B64_NO_PAD.encode(sha2::Sha256::digest(self.0.as_bytes()))))
    }
}

/// A signer's key id, as a signed request names it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct SignerId(pub String);

impl fmt::Display for SignerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a message could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("only a JSON object can be signed")]
    NotAnObject,
    #[error("a request is valid for 1 to {MAX_VALIDITY_MINUTES} minutes, not {0}")]
    Validity(u32),
    #[error("{0}")]
    Canonical(String),
}

/// Why a signed message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the request is not signed")]
    Unsigned,
    #[error("the request's auth is malformed: {0}")]
    Malformed(String),
    #[error("the request is signed by {0}, which is not a known signer")]
    UnknownSigner(String),
    #[error("the request's signature does not verify (changed after signing, or not signed by {0})")]
    BadSignature(String),
    #[error("the request expired at {0}")]
    Expired(String),
    #[error("the request is valid until {0}, longer than {MAX_VALIDITY_MINUTES} minutes from now")]
    TooLong(String),
}

/// Checks `message`'s signature against the signer `known` gives for its id, and its expiry
/// against `now`; the signer's key when it holds.
pub fn verify(
    message: &Value,
    known: impl Fn(&SignerId) -> Option<SignerKey>,
    now: time::OffsetDateTime,
) -> Result<SignerKey, VerifyError> {
    let auth = message.get("auth").filter(|a| !a.is_null()).ok_or(VerifyError::Unsigned)?;
    let auth: RequestAuth = serde_json::from_value(auth.clone()).map_err(|e| VerifyError::Malformed(e.to_string()))?;
    let id = SignerId(auth.signer.clone());
    let key = known(&id).ok_or_else(|| VerifyError::UnknownSigner(auth.signer.clone()))?;
    let signature = B64
        .decode(&auth.signature)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| ed25519_dalek::Signature::from_bytes(&b))
        .ok_or_else(|| VerifyError::Malformed("the signature is not 64 bytes of base64".into()))?;
    let bytes = signed_bytes(message).map_err(|e| VerifyError::Malformed(e.to_string()))?;
    key.0.verify(&bytes, &signature).map_err(|_| VerifyError::BadSignature(auth.signer.clone()))?;
    if auth.not_after.0 <= now {
        return Err(VerifyError::Expired(auth.not_after.to_string()));
    }
    if auth.not_after.0 > now + time::Duration::minutes(i64::from(MAX_VALIDITY_MINUTES)) {
        return Err(VerifyError::TooLong(auth.not_after.to_string()));
    }
    Ok(key)
}

/// [`DOMAIN`], then the canonical JSON of `message` without `auth.signature`.
pub fn signed_bytes(message: &Value) -> Result<Vec<u8>, SignError> {
    let mut unsigned = message.clone();
    if let Some(auth) = unsigned.get_mut("auth").and_then(Value::as_object_mut) {
        auth.remove("signature");
    }
    let mut out = DOMAIN.to_vec();
    canonical(&unsigned, &mut out)?;
    Ok(out)
}

/// RFC 8785 (JCS): `value` as canonical JSON.
pub fn canonical(value: &Value, out: &mut Vec<u8>) -> Result<(), SignError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => out.extend_from_slice(number(n)?.as_bytes()),
        Value::String(s) => string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            // By UTF-16 code units, as JCS says (not by UTF-8 bytes, which differ above U+FFFF).
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(key, out);
                out.push(b':');
                canonical(&map[key], out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// A JSON string as JCS writes it: `"` and `\` escaped, the short escapes for \b \t \n \f \r,
/// other control characters as `\u00xx`, everything else as itself.
fn string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\r' => out.extend_from_slice(b"\\r"),
            c if (c as u32) < 0x20 => out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes()),
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// A number as ECMAScript prints it: integers as they are, an integral float without `.0`,
/// others in their shortest round-trip form (pvefleet's floats are small: no exponent form).
fn number(n: &serde_json::Number) -> Result<String, SignError> {
    if let Some(i) = n.as_i64() {
        return Ok(i.to_string());
    }
    if let Some(u) = n.as_u64() {
        return Ok(u.to_string());
    }
    let f = n.as_f64().ok_or_else(|| SignError::Canonical(format!("{n} is not a number JSON can carry")))?;
    if !f.is_finite() {
        return Err(SignError::Canonical(format!("{f} cannot be signed")));
    }
    if f.fract() == 0.0 && f.abs() < 1e15 {
        return Ok(format!("{}", f as i64));
    }
    if f.abs() >= 1e21 || f.abs() < 1e-6 {
        return Err(SignError::Canonical(format!("{f} is outside the range a signed request may carry")));
    }
    Ok(format!("{f}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Value {
        serde_json::json!({"v": 1, "kind": "create", "job_id": "01JDQZ3K6X0000000000000000", "node": "pve1",
            "container": {"hostname": "web-1", "cpulimit": 1.5, "memory": 512, "tags": ["a", "b"]}})
    }

    #[test]
    fn canonical_json_is_rfc_8785() {
        let v = serde_json::json!({"b": [1, 2.0, 1.5, "x\n\u{1}é"], "a": {"z": null, "\u{e9}": true, "A": false}});
        let mut out = Vec::new();
        canonical(&v, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":{"A":false,"z":null,"é":true},"b":[1,2,1.5,"x\n\u0001é"]}"#
        );
    }

    #[test]
    fn a_signed_job_verifies_and_any_change_breaks_it() {
        let me = Identity::generate();
        let key = me.public();
        let mut signed = job();
        me.sign(&mut signed, 10).unwrap();
        let known = |id: &SignerId| (id == &key.id()).then_some(key);
        let now = time::OffsetDateTime::now_utc();
        assert_eq!(verify(&signed, known, now).unwrap(), key);
        let mut changed = signed.clone();
        changed["node"] = "pve2".into();
        assert!(matches!(verify(&changed, known, now), Err(VerifyError::BadSignature(_))));
        assert!(matches!(verify(&job(), known, now), Err(VerifyError::Unsigned)));
        assert!(matches!(verify(&signed, |_| None, now), Err(VerifyError::UnknownSigner(_))));
        let later = now + time::Duration::minutes(11);
        assert!(matches!(verify(&signed, known, later), Err(VerifyError::Expired(_))));
        assert!(matches!(me.sign(&mut job(), MAX_VALIDITY_MINUTES + 1), Err(SignError::Validity(_))));
    }

    #[test]
    fn a_jobs_auth_is_bounded_at_validating() {
        let mut job: crate::Job = serde_json::from_value(super::tests::job_message()).unwrap();
        job.auth = Some(RequestAuth {
            signer: "x".repeat(70),
            not_after: Timestamp::now(),
            signature: "y".repeat(200),
            user: Some("Robert'); DROP TABLE".into()),
        });
        let err = job.validate().unwrap_err().to_string();
        assert!(err.contains("auth.signer") && err.contains("auth.signature") && err.contains("auth.user"), "{err}");
        assert!(is_user_name("alice") && !is_user_name(&"a".repeat(33)) && !is_user_name("1st"));
    }

    fn job_message() -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join("job-create.json");
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn an_identity_reads_back_and_names_its_key() {
        let me = Identity::generate();
        let again = Identity::from_text(me.to_text().expose()).unwrap();
        assert_eq!(again.public(), me.public());
        assert_eq!(me.public().to_string().parse::<SignerKey>().unwrap(), me.public());
        assert!(me.public().id().0.starts_with("SHA256:"));
        assert!(Identity::from_text("nonsense").unwrap_err().contains("pvefleet-identity-v1"));
    }
}
