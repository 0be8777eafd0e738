//! TLS for the Proxmox API: the server certificate is checked against a pinned SHA-256
//! fingerprint (PVE's self-signed node certificates) or a CA file. Never "accept any".
//!
//! A pin identifies the exact certificate, so the host name is not checked in that mode; the
//! handshake signature still is, so a peer must hold the pinned certificate's private key.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// A SHA-256 certificate fingerprint.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn of(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Why a fingerprint is not one.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{0}` is not a SHA-256 fingerprint: expected 32 colon-separated hex bytes (AA:BB:…), as `pvenode cert info` prints"
)]
pub struct BadFingerprint(String);

impl std::str::FromStr for Fingerprint {
    type Err = BadFingerprint;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadFingerprint(s.to_owned());
        let parts: Vec<&str> = s.trim().split(':').collect();
        if parts.len() != 32 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (byte, part) in out.iter_mut().zip(parts) {
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
}

/// How the API certificate is trusted.
#[derive(Clone, Debug)]
pub enum Trust {
    Fingerprint(Fingerprint),
    /// PEM file of the CA (or the self-signed certificate itself).
    CaFile(std::path::PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading CA file {path}")]
    ReadCa {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("CA file {path} holds no usable certificate")]
    NoCa { path: String },
    #[error("building the TLS configuration")]
    Rustls(#[source] rustls::Error),
    #[error("building the certificate verifier")]
    Verifier(#[source] rustls::client::VerifierBuilderError),
    #[error("building the HTTP client: {0}")]
    Client(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client config that trusts exactly what `trust` says.
pub fn client_config(trust: &Trust) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?;
    let config = match trust {
        Trust::Fingerprint(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                pin: *fp,
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
        Trust::CaFile(path) => {
            let roots = load_roots(path)?;
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(TlsError::Verifier)?;
            builder.with_webpki_verifier(verifier).with_no_client_auth()
        }
    };
    Ok(config)
}

fn load_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let display = path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| TlsError::ReadCa { path: display.clone(), source })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(TlsError::NoCa { path: display });
    }
    Ok(roots)
}

/// Accepts exactly one certificate, by its SHA-256 fingerprint.
#[derive(Debug)]
struct PinnedVerifier {
    pin: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = Fingerprint::of(end_entity);
        if seen == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                PinMismatch { expected: self.pin, seen },
            )))))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The certificate presented is not the pinned one.
#[derive(thiserror::Error)]
#[error("the server's certificate has fingerprint {seen}, not the pinned {expected}")]
pub struct PinMismatch {
    pub expected: Fingerprint,
    pub seen: Fingerprint,
}

// rustls shows a verifier's error through `Debug`; make that the sentence an operator needs.
impl std::fmt::Debug for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_and_print_alike() {
        let text = (0..32).map(|i| format!("{i:02X}")).collect::<Vec<_>>().join(":");
        let fp: Fingerprint = text.parse().unwrap();
        assert_eq!(fp.to_string(), text);
        assert_eq!(text.to_lowercase().parse::<Fingerprint>().unwrap(), fp);
        for bad in ["", "AA:BB", &text[3..], &text.replace(':', "")] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad}");
        }
    }
}
