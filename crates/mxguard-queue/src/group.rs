//! Group commit of directory fsyncs.
//!
//! Every commit needs a directory fsync that *started after* its rename, or
//! the rename might not be on disk yet. When many sessions commit at once,
//! one fsync can cover all of them: whoever arrives while an fsync is
//! running waits for it to finish and then for the next one, which one of
//! the waiters starts on behalf of all of them.
//!
//! Syncs are numbered. `started` counts syncs begun, `completed` is the
//! number of the last one finished, and at most one runs at a time, so a
//! sync numbered `n` finishing means every sync up to `n` has finished. A
//! caller arriving when `started == s` (its rename already done) needs sync
//! `s + 1` or later: any sync numbered above `s` begins after this moment.

use std::fs::File;
use std::io;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// A directory handle plus the group-commit state for fsyncing it.
#[derive(Debug)]
pub(crate) struct DirSync {
    /// The open directory; `fsync` on it makes its entries durable.
    dir: File,
    state: Mutex<State>,
    /// Signalled whenever a sync finishes.
    finished: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Number of syncs started so far (the last one's number).
    started: u64,
    /// Number of the last sync that finished. `completed <= started`, and
    /// `completed < started` exactly when `running`.
    completed: u64,
    /// Whether a sync is in progress (by a thread not holding the lock).
    running: bool,
    /// The most recent failed sync: its number and error. Every caller
    /// whose needed sync is at or before it fails too, even if a later sync
    /// succeeded: after a failed fsync the kernel may already have dropped
    /// the dirty state, so a later success proves nothing.
    failure: Option<(u64, io::ErrorKind, String)>,
}

impl DirSync {
    pub(crate) fn new(dir: File) -> DirSync {
        DirSync {
            dir,
            state: Mutex::new(State::default()),
            finished: Condvar::new(),
        }
    }

    /// Return once a directory fsync that began after this call has
    /// finished successfully.
    pub(crate) fn sync(&self) -> io::Result<()> {
        let mut state = self.lock();
        let needed = state.started + 1;
        loop {
            if state.completed >= needed {
                return match &state.failure {
                    Some((number, kind, message)) if *number >= needed => {
                        Err(io::Error::new(*kind, message.clone()))
                    }
                    _ => Ok(()),
                };
            }
            if state.running {
                state = self
                    .finished
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            // Lead a sync for everyone waiting. Its number is at least
            // `needed`, since `started` only grows.
            state.running = true;
            state.started += 1;
            let number = state.started;
            drop(state);

            let result = self.dir.sync_all();

            state = self.lock();
            state.running = false;
            state.completed = number;
            if let Err(e) = &result {
                state.failure = Some((number, e.kind(), e.to_string()));
            }
            self.finished.notify_all();
            // The leader hands back the original error, raw OS code
            // included; on success it loops to the check above.
            result?;
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; if something did, the
        // counters are still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
