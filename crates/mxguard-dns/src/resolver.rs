//! The [`Resolver`] trait and the answer types it returns.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

/// One MX record as published: preference and exchange name.
///
/// The exchange is lower-case, without the trailing dot; the root (`.`, the
/// RFC 7505 null MX) is the empty string here and `"."` when serialised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MxRecord {
    pub preference: u16,
    #[serde(serialize_with = "root_as_dot")]
    pub exchange: String,
}

fn root_as_dot<S: serde::Serializer>(name: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if name.is_empty() { "." } else { name })
}

impl MxRecord {
    pub fn new(preference: u16, exchange: impl Into<String>) -> Self {
        MxRecord {
            preference,
            exchange: crate::net::normalize_name(&exchange.into()),
        }
    }

    /// RFC 7505 §3: a null MX is a single MX whose exchange is the root.
    pub fn is_null(&self) -> bool {
        self.exchange.is_empty()
    }
}

/// A successful DNS answer: records of the asked type (possibly none), plus
/// what the server told us about the name on the way.
///
/// `records` empty with `nxdomain == false` is NODATA: the name exists but has
/// no record of this type. That is a fact about the zone, unlike a
/// [`LookupError`], which is a failure to learn anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<T> {
    /// The records of the asked type, in the order the server gave them.
    pub records: Vec<T>,
    /// The CNAME chain followed from the asked name, each target in order
    /// (empty if the name is not an alias).
    pub cname_chain: Vec<String>,
    /// The server said the (final) name does not exist (RCODE NXDOMAIN).
    pub nxdomain: bool,
}

impl<T> Answer<T> {
    pub fn found(records: Vec<T>) -> Self {
        Answer {
            records,
            cname_chain: Vec::new(),
            nxdomain: false,
        }
    }

    pub fn nodata() -> Self {
        Self::found(Vec::new())
    }

    pub fn nxdomain() -> Self {
        Answer {
            records: Vec::new(),
            cname_chain: Vec::new(),
            nxdomain: true,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// Why a lookup produced no answer at all.
///
/// None of these means "no such record": a timeout or SERVFAIL says nothing
/// about the zone, and reports must keep it apart from NXDOMAIN/NODATA.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "kind", content = "detail", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum LookupError {
    /// No answer arrived within the timeout.
    #[error("timed out")]
    Timeout,
    /// The server answered SERVFAIL.
    #[error("SERVFAIL")]
    #[serde(rename = "servfail")]
    ServFail,
    /// The server answered REFUSED.
    #[error("REFUSED")]
    Refused,
    /// The server answered with another error RCODE.
    #[error("error response {0}")]
    Rcode(String),
    /// The server could not be reached at all (connection refused, no route).
    #[error("server unreachable: {0}")]
    Unreachable(String),
    /// The name given is not a valid domain name.
    #[error("invalid name {0:?}")]
    InvalidName(String),
    /// Anything else the resolver reported (malformed answer, I/O error).
    #[error("{0}")]
    Other(String),
}

impl LookupError {
    /// True when the failure suggests the resolver itself is not there, as
    /// opposed to one name being broken.
    pub fn is_resolver_failure(&self) -> bool {
        matches!(self, LookupError::Timeout | LookupError::Unreachable(_))
    }
}

/// The result of one DNS question.
pub type LookupResult<T> = Result<Answer<T>, LookupError>;

/// Every DNS question mxguard asks goes through this trait.
///
/// Names are given without a trailing dot and are always treated as fully
/// qualified: no search-list expansion, no hosts file. An implementation must
/// never turn a timeout or SERVFAIL into an empty answer.
pub trait Resolver: Send + Sync + 'static {
    /// MX records of `name`.
    fn mx(&self, name: &str) -> impl Future<Output = LookupResult<MxRecord>> + Send;
    /// IPv4 addresses of `name`.
    fn a(&self, name: &str) -> impl Future<Output = LookupResult<Ipv4Addr>> + Send;
    /// IPv6 addresses of `name`.
    fn aaaa(&self, name: &str) -> impl Future<Output = LookupResult<Ipv6Addr>> + Send;
    /// Names in the PTR records for `ip` (the reverse name is built here).
    fn ptr(&self, ip: IpAddr) -> impl Future<Output = LookupResult<String>> + Send;
    /// TXT records of `name`, each record's strings concatenated (RFC 7208 §3.3).
    fn txt(&self, name: &str) -> impl Future<Output = LookupResult<String>> + Send;
    /// A human-readable description of where questions go, for errors.
    fn describe(&self) -> String;
}
