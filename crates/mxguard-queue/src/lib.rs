//! The relay's durable spool: where accepted mail waits for the primary MX.
//!
//! # The guarantee
//!
//! `mxguard relay` answers `250` to DATA only once the message and its
//! envelope are on stable storage, so that a crash or power cut after the
//! reply can never lose mail that the sender already considers delivered.
//! This crate provides exactly that promise and nothing more:
//!
//! - [`Incoming::commit`] returns `Ok` only after the entry's bytes, its
//!   name in the queue directory, and that directory itself have been
//!   flushed to disk (file `fsync`, `rename`, directory `fsync`).
//! - Until then, the entry lives under a temporary name that [`FsSpool::open`]
//!   discards on the next start. An entry is therefore either entirely
//!   queued or not queued at all; there is no half-queued state.
//! - A full disk surfaces as [`SpoolError::Full`] (see
//!   [`SpoolError::is_full`]) so the server can answer `452 4.3.1`, and the
//!   partial temporary file is removed before the error is returned.
//! - The message bytes are kept byte for byte, including bare 8-bit bytes.
//! - Each entry may have a [`DeliveryState`] beside it (what forwarding to
//!   the primary achieved so far). [`Spool::save_state`] replaces it
//!   atomically and durably (temp file, `fsync`, `rename`, directory
//!   `fsync`): after a crash the saved state is the old one or the new one,
//!   never a mixture. [`Spool::remove`] removes it with the entry.
//!
//! The on-disk layout, the commit protocol and what an operator may do by
//! hand are described in `docs/spool.md`.
//!
//! # Pieces
//!
//! - [`Spool`] and [`Incoming`]: the storage seam the relay codes against.
//! - [`FsSpool`]: the real, filesystem-backed implementation.
//! - [`CrashSpool`]: the same code with injected faults (full disk, power
//!   cut at each step of the commit or of a state save), for testing the
//!   relay's behaviour and recovery.
//! - [`QueueId`], [`Envelope`], [`Entry`]: what is stored.
//! - [`DeliveryState`], [`RecipientState`]: how far delivery has got.
//!
//! The API is synchronous (`std::fs`); async callers run it on a blocking
//! thread.

mod crash;
mod envelope;
mod error;
mod format;
mod fs;
mod group;
mod id;
mod rfc3339;
mod state;

pub use crash::{CrashSpool, Fault};
pub use envelope::{Body, Entry, Envelope, SpfResult};
pub use error::SpoolError;
pub use fs::{FsSpool, Recovery, StateRecovery};
pub use id::{ParseQueueIdError, QueueId};
pub use state::{DeliveryState, RecipientState, RecipientStatus};

/// Durable storage for accepted messages.
///
/// Implementations are shared by every SMTP session, hence `Send + Sync`.
pub trait Spool: Send + Sync + std::fmt::Debug {
    /// Start receiving a message with this envelope (the envelope is known
    /// when DATA starts). The entry is stored under `envelope.id`.
    ///
    /// Fails with [`SpoolError::Exists`] when that ID is already queued or
    /// being received.
    fn begin(&self, envelope: &Envelope) -> Result<Box<dyn Incoming>, SpoolError>;

    /// Every complete entry with its delivery state, oldest first (in
    /// [`QueueId`] order, which is creation-time order).
    ///
    /// An entry whose entry file or state file is unreadable is skipped
    /// (and logged); the next open moves the file aside.
    fn list(&self) -> Result<Vec<Entry>, SpoolError>;

    /// The envelope and the message bytes of one entry.
    fn read(&self, id: &QueueId) -> Result<(Envelope, Vec<u8>), SpoolError>;

    /// Delete one entry and its delivery state (once no recipient is
    /// pending; the caller decides that). Durable when it returns `Ok`;
    /// fails with [`SpoolError::NotFound`] if there is no such entry.
    ///
    /// The entry goes first, then the state file. A crash in between, or a
    /// failure to remove the state file (logged, not returned: the message
    /// is gone either way), leaves an orphan state that the next open
    /// removes.
    fn remove(&self, id: &QueueId) -> Result<(), SpoolError>;

    /// The saved delivery state, or
    /// [`DeliveryState::new`]`(envelope)` when none was saved yet.
    ///
    /// Fails with [`SpoolError::NotFound`] if there is no such entry, and
    /// with [`SpoolError::Corrupt`] if the entry or its state file is
    /// unreadable or the state does not belong to the envelope.
    fn state(&self, id: &QueueId) -> Result<DeliveryState, SpoolError>;

    /// Save atomically and durably (temp file in `tmp/`, fsync, rename to
    /// `state/<ID>`, fsync `state/`).
    ///
    /// Replaces the previous state. Durable when it returns `Ok`; after an
    /// error (or a crash) the state in force is the previous one or, if the
    /// rename had happened, this one. Fails with [`SpoolError::NotFound`] if
    /// there is no such entry, and with [`SpoolError::Io`] (kind
    /// `InvalidInput`) if `state` does not belong to the entry's envelope
    /// (one [`RecipientState`] per recipient, same addresses, same order) or
    /// holds a time that cannot be written (before 1970).
    ///
    /// Callers save one message's state from one thread at a time; of two
    /// concurrent saves for the same message, the later rename wins.
    fn save_state(&self, id: &QueueId, state: &DeliveryState) -> Result<(), SpoolError>;
}

/// A message being received into the spool.
///
/// Write the message with any number of [`write`](Incoming::write) calls,
/// then [`commit`](Incoming::commit) or [`abort`](Incoming::abort). An
/// `Incoming` dropped without commit is discarded.
///
/// After any error the message is discarded and the `Incoming` is unusable;
/// later calls fail with [`SpoolError::Discarded`] (or
/// [`SpoolError::Crashed`] after a simulated crash).
pub trait Incoming: Send + std::fmt::Debug {
    /// Append message bytes, exactly as they should be delivered. Writes
    /// are buffered; nothing is durable before [`commit`](Incoming::commit).
    fn write(&mut self, bytes: &[u8]) -> Result<(), SpoolError>;

    /// Make the entry durable and visible to [`Spool::list`]. Durable when
    /// this returns `Ok`; on error nothing stays queued (except after a
    /// simulated crash, which leaves the disk as a power cut would).
    fn commit(self: Box<Self>) -> Result<QueueId, SpoolError>;

    /// Discard the message (also what dropping an uncommitted one does).
    fn abort(self: Box<Self>);
}
