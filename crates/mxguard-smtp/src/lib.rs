//! SMTP for mxguard.
//!
//! - [`reply`]: sans-I/O parsing of server replies (RFC 5321 §4.2) and EHLO
//!   capabilities, fed bytes, returning `NeedsMoreData` until a reply is whole.
//! - [`transcript`]: what was said on the wire, kept as evidence for reports.
//!
//! - [`client`]: a tokio client that drives them, with bounded waits.
//! - [`probe`]: the questions `check` asks each MX address, with tri-state
//!   answers.

pub mod client;
pub mod probe;
pub mod reply;
pub mod tls;
pub mod transcript;

pub use reply::{Capabilities, Reply, ReplyError, parse_reply};
pub use transcript::{Direction, Transcript};
