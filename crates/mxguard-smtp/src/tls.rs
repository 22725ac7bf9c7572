//! STARTTLS facts, kept apart (RFC 3207): was it offered, did the handshake
//! complete, and is the certificate trusted for the MX name?
//!
//! A receiving MTA with an untrusted certificate still gets encrypted mail
//! from most senders (opportunistic TLS), so "handshake failed" and
//! "certificate not trusted" are different findings. To see both, the
//! verifier here records webpki's judgement of the certificate and lets the
//! handshake go on; handshake signatures are still checked properly.

use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use serde::Serialize;

/// What the certificate check concluded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertVerdict {
    /// Chains to a trusted root, names the MX host, and is within its dates.
    pub trusted: bool,
    /// Why not, in words (`expired`, `not valid for name`, `unknown issuer`, …).
    pub problem: Option<String>,
}

/// The negotiated session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsSession {
    /// `TLSv1_3`, `TLSv1_2`.
    pub version: String,
    pub cipher: String,
}

/// A verifier that judges the certificate but never fails the handshake on
/// that judgement; the verdict is kept for the report.
#[derive(Debug)]
pub(crate) struct RecordingVerifier {
    /// None when no roots are given: nothing can be trusted, and the
    /// handshake still goes on (opportunistic TLS, RFC 7435).
    inner: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
    pub(crate) verdict: Mutex<Option<CertVerdict>>,
}

impl RecordingVerifier {
    pub(crate) fn new(
        roots: Arc<RootCertStore>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, String> {
        let inner = if roots.is_empty() {
            None
        } else {
            Some(
                WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| format!("certificate verifier: {e}"))?,
            )
        };
        Ok(RecordingVerifier {
            inner,
            provider,
            verdict: Mutex::new(None),
        })
    }

    pub(crate) fn take_verdict(&self) -> Option<CertVerdict> {
        self.verdict.lock().ok().and_then(|mut v| v.take())
    }
}

fn describe(err: &Error) -> String {
    use rustls::CertificateError as C;
    match err {
        Error::InvalidCertificate(C::UnknownIssuer) => {
            "unknown issuer: the chain does not lead to a trusted root (self-signed, or an intermediate missing)".into()
        }
        Error::InvalidCertificate(C::NotValidForName) => {
            "not valid for the MX name".into()
        }
        Error::InvalidCertificate(C::NotValidForNameContext { .. }) => {
            format!("not valid for the MX name: {}", err_text(err))
        }
        Error::InvalidCertificate(e) => e.to_string(),
        other => other.to_string(),
    }
}

/// rustls's own words for a certificate error.
fn err_text(err: &Error) -> String {
    match err {
        Error::InvalidCertificate(e) => e.to_string(),
        other => other.to_string(),
    }
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let Some(inner) = &self.inner else {
            if let Ok(mut slot) = self.verdict.lock() {
                *slot = Some(CertVerdict {
                    trusted: false,
                    problem: Some("not judged: no trusted roots are configured".into()),
                });
            }
            return Ok(ServerCertVerified::assertion());
        };
        let result =
            inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        let verdict = match &result {
            Ok(_) => CertVerdict {
                trusted: true,
                problem: None,
            },
            Err(e) => CertVerdict {
                trusted: false,
                problem: Some(describe(e)),
            },
        };
        if let Ok(mut slot) = self.verdict.lock() {
            *slot = Some(verdict);
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
