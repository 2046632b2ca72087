//! Server-certificate checks other than the usual CA chain: `--tls-pin` (the certificate or its
//! public key must have a given SHA-256) and `--tls-insecure` (anything goes). Both still verify
//! the handshake signature, so the peer must hold the private key of the certificate it shows.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, OtherError, SignatureScheme};

use super::cert::{CertInfo, Pin};

/// The server's certificate matched none of the pins.
#[derive(Debug, thiserror::Error)]
#[error(
    "certificate pin mismatch: the server's certificate is {cert}, its public key {spki} (pinned: {pinned})"
)]
pub struct PinMismatch {
    /// The certificate's fingerprint, `sha256:…`.
    pub cert: String,
    /// The public key's fingerprint, `sha256:…`.
    pub spki: String,
    /// The pins given, comma-separated.
    pub pinned: String,
}

/// Checks the server's certificate by pin (it, or its public key, has one of the pinned
/// digests) or not at all (`--tls-insecure`); either way the handshake signature is verified.
#[derive(Debug)]
pub struct PinVerifier {
    /// `None`: any certificate (`--tls-insecure`).
    pins: Option<Vec<Pin>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinVerifier {
    /// A verifier for `pins`, checking signatures with `algorithms`.
    pub fn new(pins: Vec<Pin>, algorithms: WebPkiSupportedAlgorithms) -> PinVerifier {
        PinVerifier {
            pins: Some(pins),
            algorithms,
        }
    }

    /// A verifier that accepts any certificate (`--tls-insecure`) and checks only signatures.
    pub fn insecure(algorithms: WebPkiSupportedAlgorithms) -> PinVerifier {
        PinVerifier {
            pins: None,
            algorithms,
        }
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let Some(pins) = &self.pins else {
            return Ok(ServerCertVerified::assertion());
        };
        let info = CertInfo::of(end_entity);
        let hit = pins
            .iter()
            .any(|p| p.0 == info.fingerprint || Some(p.0) == info.spki);
        if hit {
            return Ok(ServerCertVerified::assertion());
        }
        let mismatch = PinMismatch {
            cert: info.fingerprint.to_string(),
            spki: info.spki.map_or_else(|| "?".into(), |s| s.to_string()),
            pinned: pins
                .iter()
                .map(|p| p.0.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        };
        Err(Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(mismatch)),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
