//! `SystemTime` as RFC 3339 text in UTC, always with nine fractional
//! digits (fixed width, exact). Reading accepts any RFC 3339 UTC time,
//! with or without fraction. Times before 1970 or after 9999
//! cannot be written; the relay only ever stores "now" or a retry time a
//! few days ahead.
//!
//! For `#[serde(with = "crate::rfc3339")]` on a `SystemTime`, and
//! `#[serde(with = "crate::rfc3339::option")]` on an `Option<SystemTime>`
//! (`None` is `null`).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serializer, de, ser};

/// 10000-01-01T00:00:00Z, the first second RFC 3339 cannot express.
const YEAR_10000: u64 = 253_402_300_800;

pub(crate) fn serialize<S: Serializer>(
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

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<SystemTime, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_rfc3339(&text)
        .map_err(|e| de::Error::custom(format!("bad RFC 3339 time {text:?}: {e}")))
}

/// The same for `Option<SystemTime>`, with `None` as `null`.
pub(crate) mod option {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        time: &Option<SystemTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => super::serialize(time, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        #[derive(Deserialize)]
        struct Time(#[serde(with = "crate::rfc3339")] SystemTime);
        Ok(Option::<Time>::deserialize(deserializer)?.map(|Time(time)| time))
    }
}
