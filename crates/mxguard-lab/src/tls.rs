//! A certificate authority for the lab, made at run time with rcgen.
//!
//! `mxguard check` keeps three TLS findings apart: STARTTLS not offered,
//! offered but the handshake fails, and a handshake with a certificate that
//! does not verify (`starttls-missing`, `starttls-failed`,
//! `tls-cert-invalid`). To test the last two the lab needs certificates a
//! client *can* trust (issued by [`LabCa`], whose certificate the client is
//! given, the future `--ca-file`) and ones it must not: expired, not yet
//! valid, or self-signed. Nothing is written to disk and nothing is shared
//! between tests: every `LabCa::new()` makes a fresh key.
//!
//! Crypto is `ring` throughout, chosen explicitly through
//! [`rustls::crypto::ring::default_provider`] so that a second provider
//! compiled in by some other dependency can never make rustls guess.
//!
//! Validity periods are fixed dates rather than "now ± a day": the
//! certificates are then identical in shape on every run, and no clock
//! arithmetic (or `time` dependency) is needed.

use std::fmt;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, date_time_ymd,
};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Why a lab certificate or TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// rcgen refused the parameters (for example a name that is not a valid
    /// DNS name) or could not sign.
    #[error("cannot generate lab certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls rejected the certificate or key when building a configuration.
    #[error("cannot build lab TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// How a certificate's validity period relates to the present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Validity {
    /// Valid from 2020-01-01 to 2100-01-01.
    #[default]
    Current,
    /// Valid only during the year 2000: a verifying client reports it expired.
    Expired,
    /// Valid only from 2999: a verifying client reports it not yet valid.
    NotYetValid,
}

impl Validity {
    fn apply(self, params: &mut CertificateParams) {
        let (from, until) = match self {
            Validity::Current => ((2020, 1, 1), (2100, 1, 1)),
            Validity::Expired => ((2000, 1, 1), (2001, 1, 1)),
            Validity::NotYetValid => ((2999, 1, 1), (3000, 1, 1)),
        };
        params.not_before = date_time_ymd(from.0, from.1, from.2);
        params.not_after = date_time_ymd(until.0, until.1, until.2);
    }
}

/// The ring crypto provider every lab TLS configuration is built with.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate authority that exists only for the life of this value.
///
/// Its certificate is the one thing a client must be given to verify the
/// lab's hosts; [`LabCa::cert_pem`] is what a `--ca-file` would hold.
pub struct LabCa {
    cert: CertificateDer<'static>,
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for LabCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The signing key stays out of logs and assertion messages.
        f.debug_struct("LabCa")
            .field("cert_len", &self.cert.len())
            .finish_non_exhaustive()
    }
}

impl LabCa {
    /// Make a fresh CA with a new P-256 key, named `mxguard lab CA <id>`.
    ///
    /// The id (from the key) keeps two lab CAs apart by name too: a client
    /// trusting one reports the other's certificates as from an unknown
    /// issuer, as it would for a real foreign CA, rather than as a bad
    /// signature by the CA it knows.
    pub fn new() -> Result<LabCa, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let id: String = params
            .key_identifier(&key)
            .iter()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("mxguard lab CA {id}"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "mxguard lab");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Validity::Current.apply(&mut params);
        let cert = params.self_signed(&key)?;
        Ok(LabCa {
            pem: cert.pem(),
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, DER-encoded.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.clone()
    }

    /// The CA certificate as a PEM `CERTIFICATE` block.
    pub fn cert_pem(&self) -> &str {
        &self.pem
    }

    /// A root store holding only this CA, for a client that should trust the
    /// lab and nothing else.
    pub fn root_store(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert_der())?;
        Ok(roots)
    }

    /// Issue a currently valid server certificate for `names` (DNS names or
    /// IP addresses, as subject alternative names).
    pub fn issue(&self, names: &[&str]) -> Result<LabCert, TlsError> {
        self.issue_with(names, Validity::Current)
    }

    /// Issue a server certificate for `names` with the given validity.
    pub fn issue_with(&self, names: &[&str], validity: Validity) -> Result<LabCert, TlsError> {
        let mut params = leaf_params(names, validity)?;
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(LabCert::new(cert, &key))
    }
}

/// A server certificate and its private key, as plain data.
///
/// It is `Clone` so that a [`crate::smtp::HostScript`] holding one stays
/// plain data; the rustls configuration is built from it when a host starts.
#[derive(Clone)]
pub struct LabCert {
    cert: CertificateDer<'static>,
    pem: String,
    /// PKCS#8 DER.
    key: Vec<u8>,
    key_pem: String,
}

impl fmt::Debug for LabCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LabCert")
            .field("cert_len", &self.cert.len())
            .finish_non_exhaustive()
    }
}

impl LabCert {
    /// A certificate for `names` signed by its own key, not by any CA: a
    /// verifying client rejects it as issued by an unknown authority.
    pub fn self_signed(names: &[&str], validity: Validity) -> Result<LabCert, TlsError> {
        let params = leaf_params(names, validity)?;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(LabCert::new(cert, &key))
    }

    fn new(cert: rcgen::Certificate, key: &KeyPair) -> LabCert {
        LabCert {
            pem: cert.pem(),
            cert: cert.der().clone(),
            key: key.serialize_der(),
            key_pem: key.serialize_pem(),
        }
    }

    /// The certificate, DER-encoded.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.clone()
    }

    /// The certificate as a PEM `CERTIFICATE` block.
    pub fn cert_pem(&self) -> &str {
        &self.pem
    }

    /// The private key as a PEM `PRIVATE KEY` (PKCS#8) block.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A rustls server configuration presenting this certificate (TLS 1.2
    /// and 1.3, ring provider, no client authentication).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()));
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert_der()], key)?;
        Ok(Arc::new(config))
    }
}

/// Parameters for a server (end-entity) certificate.
fn leaf_params(names: &[&str], validity: Validity) -> Result<CertificateParams, TlsError> {
    let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(sans)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(first) = names.first() {
        params.distinguished_name.push(DnType::CommonName, *first);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity.apply(&mut params);
    Ok(params)
}
