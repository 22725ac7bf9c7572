//! Queue IDs: unique, time-ordered, and safe to use as file names.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Hex digits of the timestamp part (microseconds since the Unix epoch).
/// 13 digits hold 2^52 µs, about 142 years: enough until 2112.
const TIME_DIGITS: usize = 13;
/// Hex digits of the random part.
const RANDOM_DIGITS: usize = 6;
/// Length of every queue ID.
const LEN: usize = TIME_DIGITS + RANDOM_DIGITS;
const TIME_MASK: u64 = (1 << (4 * TIME_DIGITS)) - 1;
const RANDOM_MASK: u32 = (1 << (4 * RANDOM_DIGITS)) - 1;

/// The last timestamp handed out in this process, so that IDs made here
/// strictly increase even when many are made in one microsecond or the
/// clock steps back.
static LAST_MICROS: AtomicU64 = AtomicU64::new(0);

/// The name of one spool entry, also shown to senders in the `250` reply
/// and used in the mail log.
///
/// Always 19 characters of `[0-9A-F]`: 13 hex digits of microseconds since
/// the Unix epoch, then 6 random hex digits. Lexical order is therefore
/// creation-time order, and an ID can never name a path outside the queue
/// directory. [`FromStr`] (and deserialization) accept nothing else.
///
/// Within one process, [`QueueId::new`] never repeats and strictly
/// increases: the timestamp part is bumped past the previous ID's if
/// needed. The random part separates IDs made by different processes (or
/// after a restart with a clock that stepped back).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueId(String);

impl QueueId {
    /// A fresh ID, later than every ID this process made before.
    #[allow(clippy::new_without_default)] // a "default" ID would be misleading
    pub fn new() -> QueueId {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let mut prev = LAST_MICROS.load(Ordering::Relaxed);
        let micros = loop {
            let next = now.max(prev.saturating_add(1));
            match LAST_MICROS.compare_exchange_weak(
                prev,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break next,
                Err(seen) => prev = seen,
            }
        };
        let random = rand::random::<u32>() & RANDOM_MASK;
        QueueId(format!(
            "{:0tw$X}{:0rw$X}",
            micros & TIME_MASK,
            random,
            tw = TIME_DIGITS,
            rw = RANDOM_DIGITS
        ))
    }

    /// The ID as text (also its file name).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// When the ID was made, to the microsecond (from its timestamp part).
    pub fn created_at(&self) -> SystemTime {
        // The invariant (19 upper-case hex digits) makes this infallible.
        let micros = u64::from_str_radix(&self.0[..TIME_DIGITS], 16).unwrap_or(0);
        UNIX_EPOCH + Duration::from_micros(micros)
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a string is not a [`QueueId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid queue ID {text:?}: expected {LEN} characters of 0-9 and A-F")]
pub struct ParseQueueIdError {
    /// The rejected text, truncated to a sensible length.
    text: String,
}

impl FromStr for QueueId {
    type Err = ParseQueueIdError;

    fn from_str(s: &str) -> Result<QueueId, ParseQueueIdError> {
        let valid = s.len() == LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'));
        if valid {
            Ok(QueueId(s.to_owned()))
        } else {
            Err(ParseQueueIdError {
                text: s.chars().take(64).collect(),
            })
        }
    }
}

impl Serialize for QueueId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for QueueId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<QueueId, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}
