//! The finding catalog: stable ids, their severities, and the finding record.
//!
//! Ids are a public contract (DESIGN §3): each is documented in
//! `docs/findings.md`, and a test keeps that file and this enum in step.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

/// How much a finding matters. Ordered: `Info < Warning < Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

macro_rules! finding_ids {
    ($($variant:ident => $id:literal),* $(,)?) => {
        /// Every finding mxguard can report. The serialised form is the id.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[non_exhaustive]
        pub enum FindingId {
            $( #[serde(rename = $id)] $variant, )*
        }

        impl FindingId {
            /// All ids, in catalog order.
            pub const ALL: &'static [FindingId] = &[$(FindingId::$variant),*];

            /// The stable kebab-case id.
            pub fn as_str(self) -> &'static str {
                match self { $(FindingId::$variant => $id,)* }
            }
        }
    };
}

finding_ids! {
    NullMx => "null-mx",
    NullMxMixed => "null-mx-mixed",
    NoMx => "no-mx",
    NoMailRoute => "no-mail-route",
    MxTargetCname => "mx-target-cname",
    MxTargetIpLiteral => "mx-target-ip-literal",
    MxUnresolvable => "mx-unresolvable",
    MxPrivateAddress => "mx-private-address",
    MxNoPtr => "mx-no-ptr",
    MxPtrMismatch => "mx-ptr-mismatch",
    BackupSharesAddress => "backup-shares-address",
    BackupSharesNetwork => "backup-shares-network",
    DnsLookupFailed => "dns-lookup-failed",
    MxUnreachable => "mx-unreachable",
    StarttlsMissing => "starttls-missing",
    StarttlsFailed => "starttls-failed",
    TlsCertInvalid => "tls-cert-invalid",
    NullSenderRejected => "null-sender-rejected",
    PostmasterRejected => "postmaster-rejected",
    BackscatterRisk => "backscatter-risk",
    CatchAll => "catch-all",
    OpenRelay => "open-relay",
    TlsParity => "tls-parity",
    SizeParity => "size-parity",
    ProbeUntestable => "probe-untestable",
}

impl fmt::Display for FindingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing the audit found, with the evidence that shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub id: FindingId,
    pub severity: Severity,
    /// The MX host concerned, if the finding is about one host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The address concerned, if the finding is about one address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// One sentence for a person.
    pub message: String,
    /// What was seen on the wire, as a DNS or SMTP exchange.
    pub evidence: String,
}

impl Finding {
    pub fn new(
        id: FindingId,
        severity: Severity,
        message: impl Into<String>,
        evidence: impl Into<String>,
    ) -> Self {
        Finding {
            id,
            severity,
            host: None,
            ip: None,
            message: message.into(),
            evidence: evidence.into(),
        }
    }

    pub fn host(mut self, host: &str) -> Self {
        self.host = Some(host.to_owned());
        self
    }

    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ip = Some(ip);
        self
    }
}
