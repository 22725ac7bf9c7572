//! The report: what `check --format json` prints, one object per domain.
//!
//! Serialise-only types. The layout is a public contract, described in
//! `docs/report.md` and `docs/report.schema.json`; bump
//! [`SCHEMA_VERSION`] on any incompatible change.

use std::net::IpAddr;

use mxguard_dns::LookupError;
use mxguard_dns::plan::Role;
use mxguard_smtp::probe::AddressProbe;
use serde::Serialize;

use crate::findings::{Finding, Severity};

/// Version of the report layout.
pub const SCHEMA_VERSION: u32 = 1;

/// The audit of one domain.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema_version: u32,
    /// The domain in A-label form.
    pub domain: String,
    /// Where DNS questions went.
    pub resolver: String,
    /// How mail reaches the domain: `mx`, `null-mx`, `null-mx-mixed`,
    /// `implicit` (no MX; the domain's own address) or `none`.
    pub route: RouteKind,
    /// The MX records exactly as published, before planning.
    pub mx_records: Vec<mxguard_dns::MxRecord>,
    /// Every host a sender would try, in preference order.
    pub mx: Vec<MxHost>,
    /// Most severe first.
    pub findings: Vec<Finding>,
    pub verdict: Verdict,
    /// Whether SMTP was probed (false with `--no-smtp`).
    pub smtp_probed: bool,
    /// Wall time of the check, in milliseconds.
    pub elapsed_ms: u64,
}

impl Report {
    /// The highest severity among the findings, if any.
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouteKind {
    Mx,
    NullMx,
    NullMxMixed,
    Implicit,
    None,
}

/// One MX host (or the implicit MX).
#[derive(Debug, Clone, Serialize)]
pub struct MxHost {
    pub preference: u16,
    /// Lower-case, without the trailing dot.
    pub exchange: String,
    pub role: Role,
    /// The CNAME chain from the exchange name, if it is an alias.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cname_chain: Vec<String>,
    /// The exchange is written as an IP address rather than a name.
    pub ip_literal: bool,
    pub addresses: Vec<Address>,
    /// Addresses the host has beyond the first
    /// [`crate::facts::MAX_ADDRESSES_PER_HOST`], not looked into.
    #[serde(skip_serializing_if = "is_zero")]
    pub addresses_omitted: usize,
    /// Lookups about this host that got no answer (timeouts, SERVFAIL).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lookup_errors: Vec<LookupFailure>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One address of an MX host.
#[derive(Debug, Clone, Serialize)]
pub struct Address {
    pub ip: IpAddr,
    /// `public`, `loopback`, `private`, `link-local` or `reserved`.
    pub scope: &'static str,
    /// The first origin AS of the covering prefix, when known.
    pub asn: Option<u32>,
    /// Every origin AS (more than one when the prefix is multi-origin).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub asns: Vec<u32>,
    /// The announced prefix the ASN lookup named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asn_prefix: Option<String>,
    /// The first PTR name, if any.
    pub ptr: Option<String>,
    /// Every PTR name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ptr_names: Vec<String>,
    /// Forward-confirmed reverse DNS: some PTR name resolves back to this
    /// address. `null` when there is no PTR or the lookups failed.
    pub fcrdns: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lookup_errors: Vec<LookupFailure>,
    /// The PTR lookup got an answer (possibly empty); false when it was
    /// skipped (private address) or failed.
    #[serde(skip)]
    pub ptr_checked: bool,
    /// What the SMTP probe of this address found; absent when SMTP was not
    /// probed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp: Option<Box<AddressProbe>>,
    /// Why this address was not probed although SMTP was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp_skipped: Option<String>,
}

/// A lookup that produced no answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LookupFailure {
    /// `TYPE name`, as asked.
    pub query: String,
    pub error: LookupError,
}

/// Does this domain need a backup MX, and is the one it has helping?
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub backup_mx: BackupVerdict,
    pub summary: String,
    pub advice: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackupVerdict {
    /// No backup; senders' retry queues cover outages.
    NotNeeded,
    /// A backup consistent with the primary, on independent infrastructure.
    Healthy,
    /// A consistent backup that shares infrastructure with the primary.
    Redundant,
    /// A backup with a critical finding.
    Liability,
    /// The domain accepts no mail.
    NoMail,
}

impl BackupVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupVerdict::NotNeeded => "not-needed",
            BackupVerdict::Healthy => "healthy",
            BackupVerdict::Redundant => "redundant",
            BackupVerdict::Liability => "liability",
            BackupVerdict::NoMail => "no-mail",
        }
    }
}
