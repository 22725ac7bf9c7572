//! The one error type of spool operations.

use std::io;
use std::path::PathBuf;

use crate::QueueId;

/// Why a spool operation failed.
///
/// For the SMTP server the split that matters is [`SpoolError::is_full`]
/// (`452 4.3.1`) versus everything else (`451 4.3.0`); every variant is a
/// temporary failure from the sender's point of view.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// The filesystem has no space (or quota) left. Whatever was being
    /// written has been removed again.
    #[error("spool storage is full")]
    Full(#[source] io::Error),

    /// Any other I/O failure.
    #[error("{context}")]
    Io {
        /// What the spool was doing, e.g. `renaming tmp/… into queue/`.
        context: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// An entry file that does not follow the spool format. Should never
    /// happen: only bugs, disk damage or manual edits produce one.
    #[error("corrupt spool entry {}: {reason}", path.display())]
    Corrupt {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A simulated power cut ([`CrashSpool`](crate::CrashSpool) only). The
    /// disk was left exactly as it was at that moment.
    #[error("simulated crash")]
    Crashed,

    /// No entry with this queue ID.
    #[error("no spool entry with queue ID {0}")]
    NotFound(QueueId),

    /// [`Spool::begin`](crate::Spool::begin) was given an ID that is
    /// already queued or being received.
    #[error("queue ID {0} is already in use")]
    Exists(QueueId),

    /// The [`Incoming`](crate::Incoming) was already discarded by an
    /// earlier error.
    #[error("the message was already discarded after an earlier error")]
    Discarded,
}

impl SpoolError {
    /// Whether this is a full disk, to be answered with `452 4.3.1`.
    pub fn is_full(&self) -> bool {
        matches!(self, SpoolError::Full(_))
    }

    /// Classify an I/O error: a full disk becomes [`SpoolError::Full`],
    /// anything else [`SpoolError::Io`] with `context`.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> SpoolError {
        if is_storage_full(&source) {
            SpoolError::Full(source)
        } else {
            SpoolError::Io {
                context: context.into(),
                source,
            }
        }
    }
}

/// ENOSPC, or EDQUOT (a quota is as full as a disk for the sender).
fn is_storage_full(e: &io::Error) -> bool {
    /// ENOSPC on Linux, macOS and the BSDs; checked as well as the
    /// `ErrorKind` in case an error was built from the raw code.
    const ENOSPC: i32 = 28;
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || (cfg!(unix) && e.raw_os_error() == Some(ENOSPC))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disk_is_recognised_by_kind_and_by_raw_code() {
        let by_kind = io::Error::new(io::ErrorKind::StorageFull, "no space");
        assert!(SpoolError::io("writing", by_kind).is_full());
        let quota = io::Error::new(io::ErrorKind::QuotaExceeded, "quota");
        assert!(SpoolError::io("writing", quota).is_full());
        #[cfg(unix)]
        assert!(SpoolError::io("writing", io::Error::from_raw_os_error(28)).is_full());
        let other = io::Error::new(io::ErrorKind::PermissionDenied, "denied");
        assert!(!SpoolError::io("writing", other).is_full());
    }
}
