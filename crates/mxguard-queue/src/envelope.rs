//! What the spool stores beside the message bytes.

use std::net::IpAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::{DeliveryState, QueueId};

/// The SMTP envelope and session facts of one accepted message.
///
/// Stored as one line of JSON in the entry file (see `docs/spool.md`).
/// `received_at` is written as RFC 3339 text in UTC with nanoseconds, e.g.
/// `"2026-05-01T12:00:00.250000000Z"`, so it reads back exactly.
///
/// Fields added after format version 1 are `#[serde(default)]`, so entries
/// written by older builds still load (with the field's default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// The entry's name in the queue.
    pub id: QueueId,
    /// When the relay accepted the message.
    #[serde(with = "crate::rfc3339")]
    pub received_at: SystemTime,
    /// The reverse-path without angle brackets; `""` is the null
    /// reverse-path `<>` (a bounce).
    pub mail_from: String,
    /// The forward-paths, without angle brackets, in RCPT order.
    pub recipients: Vec<String>,
    /// The address the client connected from.
    pub client_addr: IpAddr,
    /// What the client said in HELO or EHLO.
    pub client_helo: String,
    /// The MAIL `BODY=` parameter (RFC 6152).
    pub body: Body,
    /// Whether MAIL carried `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// Whether the session was protected by STARTTLS.
    pub tls: bool,
    /// What was learnt about the sender at ingress (SPF of the MAIL FROM
    /// domain), if checked. `None` when not checked, and in entries written
    /// before format version 2. The relay sets it; the spool only stores it.
    #[serde(default)]
    pub spf: Option<SpfResult>,
}

/// The result of an SPF check (RFC 7208 §2.6) of the MAIL FROM domain.
///
/// Written in kebab-case: `"pass"`, `"fail"`, `"soft-fail"`, `"neutral"`,
/// `"none"`, `"temp-error"`, `"perm-error"` (RFC 7208 itself spells three of
/// them `softfail`, `temperror` and `permerror`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpfResult {
    /// The client is authorized to send for the domain.
    Pass,
    /// The client is not authorized to send for the domain.
    Fail,
    /// Probably not authorized, but the domain does not say so firmly.
    SoftFail,
    /// The domain makes no assertion about the client.
    Neutral,
    /// No SPF record, or no domain to check (e.g. the null sender `<>`
    /// without a usable HELO name).
    None,
    /// A transient error, typically DNS, prevented the check.
    TempError,
    /// The domain's SPF record could not be interpreted.
    PermError,
}

/// The declared body type (`BODY=` on MAIL, RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Body {
    /// `BODY=7BIT`, or no `BODY=` parameter. Written as `"seven-bit"`.
    SevenBit,
    /// `BODY=8BITMIME`. Written as `"eight-bit-mime"`.
    EightBitMime,
}

/// One complete entry, as [`Spool::list`](crate::Spool::list) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The stored envelope.
    pub envelope: Envelope,
    /// Size of the message bytes (without the spool's own header lines).
    pub size: u64,
    /// The saved delivery state, or [`DeliveryState::new`] of the envelope
    /// when none was saved yet (as [`Spool::state`](crate::Spool::state)
    /// returns it).
    pub state: DeliveryState,
}
