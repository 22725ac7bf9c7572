//! What the spool stores beside the message bytes.

use std::net::IpAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::QueueId;

/// The SMTP envelope and session facts of one accepted message.
///
/// Stored as one line of JSON in the entry file (see `docs/spool.md`).
/// `received_at` is written as RFC 3339 text in UTC with nanoseconds, e.g.
/// `"2026-05-01T12:00:00.250000000Z"`, so it reads back exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// The entry's name in the queue.
    pub id: QueueId,
    /// When the relay accepted the message.
    #[serde(with = "rfc3339")]
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
}

/// `SystemTime` as RFC 3339 text in UTC, always with nine fractional
/// digits (fixed width, exact). Reading accepts any RFC 3339 UTC time,
/// with or without fraction. Times before 1970 or after 9999
/// cannot be written; the relay only ever stores "now".
mod rfc3339 {
    use std::time::{SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer, de, ser};

    /// 10000-01-01T00:00:00Z, the first second RFC 3339 cannot express.
    const YEAR_10000: u64 = 253_402_300_800;

    pub(super) fn serialize<S: Serializer>(
        time: &SystemTime,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        // humantime panics on times before the epoch, so check first.
        match time.duration_since(UNIX_EPOCH) {
            Ok(since) if since.as_secs() < YEAR_10000 => {
                serializer.collect_str(&humantime::format_rfc3339_nanos(*time))
            }
            _ => Err(ser::Error::custom(
                "time outside 1970..=9999 cannot be written as RFC 3339",
            )),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_rfc3339(&text)
            .map_err(|e| de::Error::custom(format!("bad RFC 3339 time {text:?}: {e}")))
    }
}
