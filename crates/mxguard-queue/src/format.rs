//! The file formats.
//!
//! The entry file (`queue/<ID>`), version 2:
//!
//! ```text
//! mxguard-spool 2\n
//! {"id":"…","received_at":"…",…}\n
//! <message bytes, exactly as received>
//! ```
//!
//! The first line identifies the format and its version. The second is the
//! [`Envelope`] as JSON; JSON escapes control characters inside strings, so
//! that line never contains a raw newline. Everything after it is the
//! message, with no length field and no trailer: integrity rests on the
//! commit protocol (the file is complete before its name appears in
//! `queue/`). Version 1 is the same without the envelope's `spf` field;
//! it is still read, and never written.
//!
//! The delivery state file (`state/<ID>`), version 1:
//!
//! ```text
//! mxguard-state 1\n
//! {"attempts":0,…,"recipients":[…]}\n
//! ```
//!
//! The [`DeliveryState`] as one line of JSON, and nothing after it.

use std::io::{self, BufRead, Read};

use crate::{DeliveryState, Envelope};

/// The first line of every entry written.
pub(crate) const MAGIC: &[u8] = b"mxguard-spool 2\n";
/// The first line of version 1 entries, still read.
const MAGIC_V1: &[u8] = b"mxguard-spool 1\n";
/// What every version of the format starts with.
const MAGIC_PREFIX: &[u8] = b"mxguard-spool ";
/// The first line of every state file.
pub(crate) const STATE_MAGIC: &[u8] = b"mxguard-state 1\n";
/// What every version of the state format starts with.
const STATE_MAGIC_PREFIX: &[u8] = b"mxguard-state ";
/// Longest first line worth reading before calling it garbage.
const MAX_MAGIC_LINE: u64 = 64;
/// Longest envelope line accepted: far above any real envelope (even
/// thousands of recipients), low enough that a damaged file cannot make the
/// relay allocate without bound.
const MAX_ENVELOPE_LINE: u64 = 16 * 1024 * 1024;

/// The two header lines for `envelope`.
pub(crate) fn encode_header(envelope: &Envelope) -> Result<Vec<u8>, serde_json::Error> {
    let mut header = MAGIC.to_vec();
    serde_json::to_writer(&mut header, envelope)?;
    header.push(b'\n');
    Ok(header)
}

/// Why a header could not be read.
#[derive(Debug)]
pub(crate) enum HeaderError {
    /// Reading failed; says nothing about the file's contents.
    Io(io::Error),
    /// The file does not follow the format.
    Invalid(String),
}

/// Read the two header lines, leaving `reader` at the first message byte.
/// Returns the envelope and the header's length in bytes.
pub(crate) fn decode_header<R: BufRead>(reader: &mut R) -> Result<(Envelope, u64), HeaderError> {
    let mut line = Vec::new();
    reader
        .by_ref()
        .take(MAX_MAGIC_LINE)
        .read_until(b'\n', &mut line)
        .map_err(HeaderError::Io)?;
    if line != MAGIC && line != MAGIC_V1 {
        let reason = if line.starts_with(MAGIC_PREFIX) && line.ends_with(b"\n") {
            format!(
                "unsupported format version {:?} (this build reads {:?} and {:?})",
                String::from_utf8_lossy(line.trim_ascii_end()),
                String::from_utf8_lossy(MAGIC_V1.trim_ascii_end()),
                String::from_utf8_lossy(MAGIC.trim_ascii_end())
            )
        } else {
            "bad magic: not an mxguard spool entry".to_owned()
        };
        return Err(HeaderError::Invalid(reason));
    }
    let magic_len = line.len();

    line.clear();
    reader
        .by_ref()
        .take(MAX_ENVELOPE_LINE)
        .read_until(b'\n', &mut line)
        .map_err(HeaderError::Io)?;
    if line.last() != Some(&b'\n') {
        return Err(HeaderError::Invalid(
            "envelope line is truncated or too long".to_owned(),
        ));
    }
    let envelope = serde_json::from_slice(&line[..line.len() - 1])
        .map_err(|e| HeaderError::Invalid(format!("bad envelope JSON: {e}")))?;
    Ok((envelope, (magic_len + line.len()) as u64))
}

/// Longest state file accepted, for the same reason as
/// [`MAX_ENVELOPE_LINE`]: a state is about as large as its envelope plus
/// one reply line per recipient.
pub(crate) const MAX_STATE_FILE: u64 = 32 * 1024 * 1024;

/// The whole state file for `state`.
pub(crate) fn encode_state(state: &DeliveryState) -> Result<Vec<u8>, serde_json::Error> {
    let mut file = STATE_MAGIC.to_vec();
    serde_json::to_writer(&mut file, state)?;
    file.push(b'\n');
    Ok(file)
}

/// Parse a whole state file. Callers read at most one byte more than
/// [`MAX_STATE_FILE`], so that a longer file is reported as such.
pub(crate) fn decode_state(file: &[u8]) -> Result<DeliveryState, String> {
    if file.len() as u64 > MAX_STATE_FILE {
        return Err("the state file is too long".to_owned());
    }
    let Some(json) = file.strip_prefix(STATE_MAGIC) else {
        let line = file.split(|&b| b == b'\n').next().unwrap_or_default();
        return Err(
            if file.starts_with(STATE_MAGIC_PREFIX) && line.len() < file.len() {
                format!(
                    "unsupported state format version {:?} (this build reads {:?})",
                    String::from_utf8_lossy(line),
                    String::from_utf8_lossy(STATE_MAGIC.trim_ascii_end())
                )
            } else {
                "bad magic: not an mxguard delivery state".to_owned()
            },
        );
    };
    let Some(json) = json.strip_suffix(b"\n") else {
        return Err("the state line is truncated".to_owned());
    };
    if json.contains(&b'\n') {
        return Err("more than one state line".to_owned());
    }
    serde_json::from_slice(json).map_err(|e| format!("bad state JSON: {e}"))
}
