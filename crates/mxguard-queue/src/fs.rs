//! The filesystem spool: one file per message, committed by fsync, rename
//! and directory fsync.
//!
//! Layout under the spool root (see `docs/spool.md`):
//!
//! - `tmp/<ID>`: messages being received. Never complete; removed at open.
//! - `tmp/<ID>.state.<n>`: delivery states being saved. Also removed at
//!   open.
//! - `queue/<ID>`: committed entries. Only ever created by a rename of a
//!   fully written and fsynced file, so every name here is complete.
//! - `state/<ID>`: the delivery state of `queue/<ID>`, replaced by the same
//!   temp file, fsync, rename, directory fsync protocol. Absent until the
//!   first save.
//! - `corrupt/`: entries and states found unreadable at open, moved aside
//!   for a person.
//!
//! `tmp/`, `queue/` and `state/` sit in the same directory so the renames
//! never cross filesystems and are atomic.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::crash::{Fault, Sim};
use crate::format::{self, HeaderError};
use crate::group::DirSync;
use crate::{DeliveryState, Entry, Envelope, Incoming, QueueId, Spool, SpoolError};

/// Buffer size of an [`Incoming`]. The server writes chunks of up to
/// 256 KiB; chunks at least this large go straight to the file, small ones
/// are gathered.
const WRITE_BUFFER: usize = 64 * 1024;

/// Most numbered variants tried when a name is already taken in `corrupt/`.
const MAX_QUARANTINE_SUFFIX: u32 = 10_000;

/// Between the queue ID and a counter in the name of a state being saved,
/// `tmp/<ID>.state.<n>`; never part of a message temp name (`tmp/<ID>`).
const STATE_TEMP_INFIX: &str = ".state.";

/// Appended to the name of a file moved from `state/` to `corrupt/`, so
/// that it is told apart from (and never taken for) an entry.
const STATE_QUARANTINE_SUFFIX: &str = ".state";

/// The filesystem-backed [`Spool`].
///
/// Only one process may use a spool directory at a time: [`FsSpool::open`]
/// discards whatever is in `tmp/`, including another live process's
/// messages in flight.
#[derive(Debug)]
pub struct FsSpool {
    shared: Arc<Shared>,
    /// What open found in `state/`.
    state_recovery: StateRecovery,
}

/// What the spool and its [`FsIncoming`]s share.
#[derive(Debug)]
struct Shared {
    /// The spool root, as given to [`FsSpool::open`].
    root: PathBuf,
    /// `root/tmp`: messages being received.
    tmp: PathBuf,
    /// `root/queue`: committed entries.
    queue: PathBuf,
    /// The open `queue/` directory, fsynced (grouped) after every rename
    /// into it and every removal from it.
    queue_sync: DirSync,
    /// `root/state`: saved delivery states.
    state: PathBuf,
    /// The open `state/` directory, fsynced (grouped) like `queue/`.
    state_sync: DirSync,
    /// Numbers the temp files of state saves, so that concurrent saves
    /// never share one (only one process uses the spool).
    next_state_temp: AtomicU64,
}

/// What [`FsSpool::open`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Complete entries in `queue/`, now available to [`Spool::list`].
    pub recovered: usize,
    /// Partial messages removed from `tmp/` (interrupted by a crash or
    /// shutdown before commit; their senders were never told `250`).
    pub discarded_partial: usize,
    /// Unreadable files moved from `queue/` or `state/` to `corrupt/`
    /// (of them, [`StateRecovery::corrupt_states`] from `state/`).
    pub corrupt: usize,
}

/// What [`FsSpool::open`] found about delivery states, beside the
/// [`Recovery`] counts; see [`FsSpool::state_recovery`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateRecovery {
    /// State files in `state/` whose entry does not exist (left by a crash
    /// in [`Spool::remove`], or an entry deleted by hand), removed.
    pub orphan_states: usize,
    /// Unreadable state files, or states that do not fit their entry's
    /// envelope, moved to `corrupt/` (also counted in
    /// [`Recovery::corrupt`]). Delivery of those messages starts again from
    /// [`DeliveryState::new`].
    pub corrupt_states: usize,
    /// Unfinished state saves removed from `tmp/` (the state in force is
    /// the one saved before). Not counted in [`Recovery::discarded_partial`].
    pub discarded_temps: usize,
}

impl FsSpool {
    /// Open the spool at `path`: create the directory layout if needed,
    /// discard partial entries and state saves from `tmp/`, move corrupt
    /// entries and states from `queue/` and `state/` to `corrupt/` (logged
    /// with `tracing::warn!`), and remove orphan states. What was found
    /// about states is also kept for [`FsSpool::state_recovery`].
    ///
    /// New directories are created with mode 0700 and entry and state files
    /// with mode 0600 (on Unix): queued mail is private.
    pub fn open(path: &Path) -> Result<(FsSpool, Recovery), SpoolError> {
        let root = path.to_path_buf();
        let tmp = root.join("tmp");
        let queue = root.join("queue");
        let state = root.join("state");
        let corrupt = root.join("corrupt");

        let root_existed = fs::exists(&root)
            .map_err(|e| SpoolError::io(format!("checking {}", root.display()), e))?;
        for dir in [&root, &tmp, &queue, &state, &corrupt] {
            create_private_dir(dir)
                .map_err(|e| SpoolError::io(format!("creating {}", dir.display()), e))?;
        }
        // Make the subdirectories (and a new root) durable before anything
        // is committed into them.
        sync_dir(&root)?;
        if !root_existed {
            let parent = root
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            sync_dir(parent)?;
        }

        let (discarded_partial, discarded_temps) = discard_partials(&tmp)?;
        let (entries, moved) = recover(&queue, &corrupt)?;
        let recovered = entries.len();
        // After the entries, so that a state whose entry was just moved
        // aside counts as an orphan.
        let (orphan_states, corrupt_states) = recover_states(&state, &entries, &corrupt)?;
        if moved + corrupt_states > 0 {
            sync_dir(&corrupt)?;
        }

        // Both make the names in them durable even if they came from a
        // rename whose directory fsync never ran, and the moves to
        // corrupt/ and orphan removals.
        let queue_sync = open_dir_sync(&queue)?;
        let state_sync = open_dir_sync(&state)?;

        let recovery = Recovery {
            recovered,
            discarded_partial,
            corrupt: moved + corrupt_states,
        };
        let state_recovery = StateRecovery {
            orphan_states,
            corrupt_states,
            discarded_temps,
        };
        tracing::info!(
            path = %root.display(),
            recovered,
            discarded_partial,
            corrupt = recovery.corrupt,
            orphan_states,
            corrupt_states,
            discarded_state_temps = discarded_temps,
            "spool opened"
        );
        let shared = Arc::new(Shared {
            root,
            tmp,
            queue,
            queue_sync,
            state,
            state_sync,
            next_state_temp: AtomicU64::new(0),
        });
        Ok((
            FsSpool {
                shared,
                state_recovery,
            },
            recovery,
        ))
    }

    /// The entries of the spool at `path`, read without changing anything:
    /// no recovery, nothing created, moved or removed. Safe while a relay
    /// is using the spool (`mxguard queue --spool DIR list`); an entry
    /// being committed or removed at that moment may or may not be listed.
    pub fn inspect(path: &Path) -> Result<Vec<Entry>, SpoolError> {
        let root = path.to_path_buf();
        let queue = root.join("queue");
        let state = root.join("state");
        if !queue.is_dir() {
            return Err(SpoolError::io(
                format!("{} is not a spool (no queue/ directory)", root.display()),
                io::Error::from(io::ErrorKind::NotFound),
            ));
        }
        let queue_sync = open_dir_sync(&queue)?;
        let state_sync = open_dir_sync(&state)?;
        let spool = FsSpool {
            shared: Arc::new(Shared {
                tmp: root.join("tmp"),
                root,
                queue,
                queue_sync,
                state,
                state_sync,
                next_state_temp: AtomicU64::new(0),
            }),
            state_recovery: StateRecovery::default(),
        };
        spool.list()
    }

    /// What [`FsSpool::open`] found about delivery states: orphans removed,
    /// corrupt ones moved aside, unfinished saves discarded.
    pub fn state_recovery(&self) -> StateRecovery {
        self.state_recovery
    }

    /// The spool root, as given to [`FsSpool::open`].
    pub fn path(&self) -> &Path {
        &self.shared.root
    }

    /// The envelope of one entry, for the state operations.
    fn envelope(&self, id: &QueueId) -> Result<Envelope, SpoolError> {
        let path = self.shared.queue.join(id.as_str());
        match load(&path, id) {
            Ok((envelope, _, _)) => Ok(envelope),
            Err(LoadError::NotFound) => Err(SpoolError::NotFound(id.clone())),
            Err(LoadError::Invalid(reason)) => Err(SpoolError::Corrupt { path, reason }),
            Err(LoadError::Io(e)) => Err(SpoolError::io(format!("reading {}", path.display()), e)),
        }
    }

    /// [`Spool::save_state`], with a fault plan when called by the crash
    /// backend (see [`Fault`] for what each one does here).
    pub(crate) fn save_state_with(
        &self,
        id: &QueueId,
        state: &DeliveryState,
        sim: Option<&Sim>,
    ) -> Result<(), SpoolError> {
        let envelope = self.envelope(id)?;
        let invalid = |reason: String| SpoolError::Io {
            context: format!("saving the delivery state of {id}"),
            source: io::Error::new(io::ErrorKind::InvalidInput, reason),
        };
        if let Some(reason) = state.mismatch(&envelope) {
            return Err(invalid(format!(
                "the state does not fit the envelope: {reason}"
            )));
        }
        let bytes = format::encode_state(state).map_err(|e| invalid(e.to_string()))?;

        let number = self.shared.next_state_temp.fetch_add(1, Ordering::Relaxed);
        let tmp_path = self
            .shared
            .tmp
            .join(format!("{id}{STATE_TEMP_INFIX}{number}"));
        let mut file = create_private_file(&tmp_path)
            .map_err(|e| SpoolError::io(format!("creating {}", tmp_path.display()), e))?;
        // Every error path below removes the temp file; a simulated crash
        // leaves it, as a power cut would.
        let fail = |context: String, e: io::Error| {
            remove_temp(&tmp_path, id);
            SpoolError::io(context, e)
        };
        let writing = || format!("writing {}", tmp_path.display());

        // 1. Write the whole file (or, under a byte-count fault, the part
        //    that fits).
        let (accepted, strikes) = match sim.map(|sim| sim.fault) {
            Some(fault @ (Fault::FullAfter(limit) | Fault::CrashAfter(limit)))
                if bytes.len() as u64 > limit =>
            {
                // `limit` is below `bytes.len()`, so it fits in usize.
                (&bytes[..limit as usize], Some(fault))
            }
            _ => (&bytes[..], None),
        };
        if let Err(e) = file.write_all(accepted) {
            return Err(fail(writing(), e));
        }
        match strikes {
            None => {}
            Some(Fault::FullAfter(_)) => {
                let full = io::Error::new(io::ErrorKind::StorageFull, "simulated full disk");
                return Err(fail(writing(), full));
            }
            Some(_) => return Err(crash(sim, id)),
        }

        // 2. fsync the file, so that the name in state/ never points at
        //    bytes that are not on disk.
        if halts_before(sim, Step::Fsync) {
            return Err(crash(sim, id));
        }
        if let Err(e) = file.sync_all() {
            return Err(fail(format!("fsyncing {}", tmp_path.display()), e));
        }
        drop(file);

        // 3. rename over state/<ID>: atomic, so the state in force is the
        //    old one or the new one.
        if halts_before(sim, Step::Rename) {
            return Err(crash(sim, id));
        }
        let state_path = self.shared.state.join(id.as_str());
        if let Err(e) = fs::rename(&tmp_path, &state_path) {
            return Err(fail(
                format!("renaming {} into state/", tmp_path.display()),
                e,
            ));
        }

        // 4. fsync state/ to make the rename durable. Shared with
        //    concurrent saves. Nothing to undo on failure: the old state is
        //    already replaced, and the new one is whole.
        if halts_before(sim, Step::DirSync) {
            return Err(crash(sim, id));
        }
        self.shared
            .state_sync
            .sync()
            .map_err(|e| SpoolError::io(format!("fsyncing {}", self.shared.state.display()), e))?;
        tracing::debug!(
            queue_id = %id,
            attempts = state.attempts,
            pending = state.pending().count(),
            "delivery state saved"
        );
        Ok(())
    }

    /// [`Spool::begin`], with a fault plan when called by the crash backend.
    pub(crate) fn begin_with(
        &self,
        envelope: &Envelope,
        sim: Option<Sim>,
    ) -> Result<FsIncoming, SpoolError> {
        let id = envelope.id.clone();
        let header = format::encode_header(envelope).map_err(|e| SpoolError::Io {
            context: format!("encoding the envelope of {id}"),
            source: io::Error::new(io::ErrorKind::InvalidInput, e),
        })?;
        let tmp_path = self.shared.tmp.join(id.as_str());
        let file = match create_private_file(&tmp_path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(SpoolError::Exists(id));
            }
            Err(e) => {
                return Err(SpoolError::io(
                    format!("creating {}", tmp_path.display()),
                    e,
                ));
            }
        };
        let mut writer = BufWriter::with_capacity(WRITE_BUFFER, file);
        let header_written = writer.write_all(&header);
        // From here on the temp file belongs to `incoming`, whose Drop
        // removes it on every early return.
        let mut incoming = FsIncoming {
            shared: Arc::clone(&self.shared),
            id,
            tmp_path,
            writer: Some(writer),
            size: 0,
            sim,
        };
        if let Err(e) = header_written {
            return Err(incoming.fail("writing the spool header", e));
        }
        // Checked after creating the temp file, so that whatever the
        // interleaving, a concurrent begin with the same ID is caught by
        // `create_new` and an earlier commit by this check.
        let committed = self.shared.queue.join(incoming.id.as_str());
        match fs::exists(&committed) {
            Ok(false) => Ok(incoming),
            Ok(true) => Err(SpoolError::Exists(incoming.id.clone())),
            Err(e) => Err(incoming.fail(format!("checking {}", committed.display()), e)),
        }
    }
}

impl Spool for FsSpool {
    fn begin(&self, envelope: &Envelope) -> Result<Box<dyn Incoming>, SpoolError> {
        Ok(Box::new(self.begin_with(envelope, None)?))
    }

    fn list(&self) -> Result<Vec<Entry>, SpoolError> {
        let queue = &self.shared.queue;
        let listing = |e| SpoolError::io(format!("listing {}", queue.display()), e);
        let mut entries = Vec::new();
        for dirent in fs::read_dir(queue).map_err(listing)? {
            let dirent = dirent.map_err(listing)?;
            let path = dirent.path();
            let id = match entry_id(&dirent.file_name(), dirent.file_type()) {
                Ok(id) => id,
                Err(reason) => {
                    skip_corrupt(&path, &reason);
                    continue;
                }
            };
            match load(&path, &id) {
                Ok((envelope, header_len, reader)) => {
                    let file_len = reader
                        .get_ref()
                        .metadata()
                        .map_err(|e| SpoolError::io(format!("reading {}", path.display()), e))?
                        .len();
                    let state_path = self.shared.state.join(id.as_str());
                    let state = match load_state(&state_path, &envelope) {
                        Ok(state) => state,
                        Err(LoadError::NotFound) => DeliveryState::new(&envelope),
                        Err(LoadError::Invalid(reason)) => {
                            skip_corrupt_state(&state_path, &id, &reason);
                            continue;
                        }
                        Err(LoadError::Io(e)) => {
                            return Err(SpoolError::io(
                                format!("reading {}", state_path.display()),
                                e,
                            ));
                        }
                    };
                    entries.push(Entry {
                        envelope,
                        size: file_len.saturating_sub(header_len),
                        state,
                    });
                }
                // Removed between read_dir and open: no longer listed.
                Err(LoadError::NotFound) => {}
                Err(LoadError::Invalid(reason)) => skip_corrupt(&path, &reason),
                Err(LoadError::Io(e)) => {
                    return Err(SpoolError::io(format!("reading {}", path.display()), e));
                }
            }
        }
        entries.sort_by(|a, b| a.envelope.id.cmp(&b.envelope.id));
        Ok(entries)
    }

    fn read(&self, id: &QueueId) -> Result<(Envelope, Vec<u8>), SpoolError> {
        let path = self.shared.queue.join(id.as_str());
        let reading = |e| SpoolError::io(format!("reading {}", path.display()), e);
        match load(&path, id) {
            Ok((envelope, _, mut reader)) => {
                let mut message = Vec::new();
                reader.read_to_end(&mut message).map_err(reading)?;
                Ok((envelope, message))
            }
            Err(LoadError::NotFound) => Err(SpoolError::NotFound(id.clone())),
            Err(LoadError::Invalid(reason)) => Err(SpoolError::Corrupt { path, reason }),
            Err(LoadError::Io(e)) => Err(reading(e)),
        }
    }

    fn remove(&self, id: &QueueId) -> Result<(), SpoolError> {
        let path = self.shared.queue.join(id.as_str());
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SpoolError::NotFound(id.clone()));
            }
            Err(e) => {
                return Err(SpoolError::io(format!("removing {}", path.display()), e));
            }
        }
        // Without this a crash could bring the entry back and deliver the
        // message twice.
        self.shared.queue_sync.sync().map_err(|e| {
            SpoolError::io(
                format!(
                    "fsyncing {} after removing {id}",
                    self.shared.queue.display()
                ),
                e,
            )
        })?;
        // Then the state. The message is gone whatever happens here: a state
        // left behind is an orphan, which the next open removes.
        let state_path = self.shared.state.join(id.as_str());
        match fs::remove_file(&state_path) {
            Ok(()) => {
                if let Err(e) = self.shared.state_sync.sync() {
                    tracing::warn!(
                        queue_id = %id,
                        cause = %e,
                        "could not fsync state/ after removing a delivery state; \
                         the next start removes it if it comes back"
                    );
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                queue_id = %id,
                path = %state_path.display(),
                cause = %e,
                "could not remove the delivery state of a removed entry; the next start removes it"
            ),
        }
        tracing::debug!(queue_id = %id, "spool entry removed");
        Ok(())
    }

    fn state(&self, id: &QueueId) -> Result<DeliveryState, SpoolError> {
        let envelope = self.envelope(id)?;
        let path = self.shared.state.join(id.as_str());
        match load_state(&path, &envelope) {
            Ok(state) => Ok(state),
            Err(LoadError::NotFound) => Ok(DeliveryState::new(&envelope)),
            Err(LoadError::Invalid(reason)) => Err(SpoolError::Corrupt { path, reason }),
            Err(LoadError::Io(e)) => Err(SpoolError::io(format!("reading {}", path.display()), e)),
        }
    }

    fn save_state(&self, id: &QueueId, state: &DeliveryState) -> Result<(), SpoolError> {
        self.save_state_with(id, state, None)
    }
}

/// A message being written to `tmp/<ID>`.
pub(crate) struct FsIncoming {
    shared: Arc<Shared>,
    id: QueueId,
    /// `tmp/<ID>`.
    tmp_path: PathBuf,
    /// The open temp file, from `begin` until commit, abort or an error.
    /// While it is `Some`, dropping `self` removes the temp file; once it is
    /// `None`, the file has been removed, renamed into `queue/`, or (after
    /// a simulated crash) deliberately left as it is.
    writer: Option<BufWriter<File>>,
    /// Message bytes accepted so far (the header not included).
    size: u64,
    /// The fault plan from [`CrashSpool`](crate::CrashSpool); `None` for
    /// the real spool.
    sim: Option<Sim>,
}

/// Where in a commit or a state save a simulated power cut may strike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Fsync,
    Rename,
    DirSync,
}

/// Whether the simulated power is off, or the planned fault strikes before
/// `step`. Never for the real spool (`sim` is `None`).
fn halts_before(sim: Option<&Sim>, step: Step) -> bool {
    let Some(sim) = sim else {
        return false;
    };
    let planned = matches!(
        (sim.fault, step),
        (Fault::CrashBeforeFsync, Step::Fsync)
            | (Fault::CrashBeforeRename, Step::Rename)
            | (Fault::CrashBeforeDirSync, Step::DirSync)
    );
    planned || sim.power.is_off()
}

/// Simulate a power cut during a state save: leave every file as it is and
/// stop every other operation on the same [`CrashSpool`](crate::CrashSpool).
fn crash(sim: Option<&Sim>, id: &QueueId) -> SpoolError {
    if let Some(sim) = sim {
        sim.power.cut();
    }
    tracing::debug!(queue_id = %id, "simulated crash while saving a delivery state");
    SpoolError::Crashed
}

/// Remove a temp file after an error; failing that, log it (the next open
/// discards it).
fn remove_temp(path: &Path, id: &QueueId) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        // Harmless beyond the wasted space: the next open discards it.
        Err(e) => tracing::warn!(
            queue_id = %id,
            path = %path.display(),
            cause = %e,
            "could not remove a discarded spool temp file"
        ),
    }
}

impl FsIncoming {
    /// Whether the simulated power is off, or `fault` strikes before `step`.
    fn halts_before(&self, step: Step) -> bool {
        halts_before(self.sim.as_ref(), step)
    }

    fn powered_off(&self) -> bool {
        self.sim.as_ref().is_some_and(|sim| sim.power.is_off())
    }

    /// Simulate a power cut now: leave every file as it is, lose what is
    /// still in the write buffer, and stop every other operation on the
    /// same [`CrashSpool`](crate::CrashSpool).
    fn crash(&mut self) -> SpoolError {
        if let Some(sim) = &self.sim {
            sim.power.cut();
        }
        if let Some(writer) = self.writer.take() {
            let (_file, _lost) = writer.into_parts();
        }
        tracing::debug!(queue_id = %self.id, "simulated crash");
        SpoolError::Crashed
    }

    /// Give up after an I/O error: remove the temp file, classify the error.
    fn fail(&mut self, context: impl Into<String>, error: io::Error) -> SpoolError {
        if let Some(writer) = self.writer.take() {
            // Into_parts rather than drop: dropping would try to flush.
            let (_file, _unwritten) = writer.into_parts();
        }
        self.remove_temp();
        SpoolError::io(context, error)
    }

    fn remove_temp(&self) {
        remove_temp(&self.tmp_path, &self.id);
    }
}

impl Incoming for FsIncoming {
    fn write(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        if self.powered_off() {
            return Err(self.crash());
        }
        // Simulated faults that strike after a number of message bytes:
        // write the part that still fits, then fail.
        let mut accepted = bytes;
        let mut strikes = None;
        if let Some(Sim {
            fault: fault @ (Fault::FullAfter(limit) | Fault::CrashAfter(limit)),
            ..
        }) = self.sim
        {
            let room = limit.saturating_sub(self.size);
            if bytes.len() as u64 > room {
                // `room` is below `bytes.len()`, so it fits in usize.
                accepted = &bytes[..room as usize];
                strikes = Some(fault);
            }
        }

        let Some(writer) = self.writer.as_mut() else {
            return Err(SpoolError::Discarded);
        };
        if let Err(e) = writer.write_all(accepted) {
            return Err(self.fail("writing the message to the spool", e));
        }
        self.size += accepted.len() as u64;

        match strikes {
            None => Ok(()),
            Some(Fault::FullAfter(_)) => Err(self.fail(
                "writing the message to the spool",
                io::Error::new(io::ErrorKind::StorageFull, "simulated full disk"),
            )),
            Some(_) => {
                // The bytes written so far reach the file, as they would
                // have by the time of a real power cut.
                if let Some(writer) = self.writer.as_mut() {
                    let _ = writer.flush();
                }
                Err(self.crash())
            }
        }
    }

    fn commit(mut self: Box<Self>) -> Result<QueueId, SpoolError> {
        if self.powered_off() {
            return Err(self.crash());
        }
        let Some(writer) = self.writer.take() else {
            return Err(SpoolError::Discarded);
        };
        // `writer` is now None, so Drop no longer cleans up: every error
        // path below removes what it must itself.

        // 1. Hand the buffered bytes to the kernel.
        let file = match writer.into_inner() {
            Ok(file) => file,
            Err(e) => {
                let (error, writer) = e.into_parts();
                let (_file, _unwritten) = writer.into_parts();
                self.remove_temp();
                return Err(SpoolError::io("writing the message to the spool", error));
            }
        };

        // 2. fsync the file: its bytes must be on disk before its name
        //    appears in queue/, or a crash could leave a complete-looking
        //    but empty or truncated entry there.
        if self.halts_before(Step::Fsync) {
            return Err(self.crash());
        }
        if let Err(e) = file.sync_all() {
            self.remove_temp();
            return Err(SpoolError::io(
                format!("fsyncing {}", self.tmp_path.display()),
                e,
            ));
        }
        drop(file);

        // 3. rename into queue/: atomic, so the entry appears complete or
        //    not at all.
        if self.halts_before(Step::Rename) {
            return Err(self.crash());
        }
        let entry_path = self.shared.queue.join(self.id.as_str());
        if let Err(e) = fs::rename(&self.tmp_path, &entry_path) {
            self.remove_temp();
            return Err(SpoolError::io(
                format!("renaming {} into queue/", self.tmp_path.display()),
                e,
            ));
        }

        // 4. fsync queue/: the rename is a change to the directory, and only
        //    this makes it durable. Shared with concurrent commits.
        if self.halts_before(Step::DirSync) {
            return Err(self.crash());
        }
        if let Err(e) = self.shared.queue_sync.sync() {
            // The sender will be told to try again, so the entry must not
            // be delivered: take it back out.
            if let Err(rm) = fs::remove_file(&entry_path) {
                tracing::warn!(
                    queue_id = %self.id,
                    cause = %rm,
                    "could not withdraw a spool entry whose commit failed; it may be delivered twice"
                );
            }
            return Err(SpoolError::io(
                format!("fsyncing {}", self.shared.queue.display()),
                e,
            ));
        }
        tracing::debug!(queue_id = %self.id, size = self.size, "spool entry committed");
        Ok(self.id.clone())
    }

    fn abort(self: Box<Self>) {
        // Drop does the work.
    }
}

impl Drop for FsIncoming {
    fn drop(&mut self) {
        let Some(writer) = self.writer.take() else {
            return;
        };
        let (_file, _unwritten) = writer.into_parts();
        if self.powered_off() {
            // After a simulated power cut, nothing gets to clean up.
            return;
        }
        self.remove_temp();
        tracing::debug!(queue_id = %self.id, "spool message discarded");
    }
}

impl fmt::Debug for FsIncoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FsIncoming")
            .field("id", &self.id)
            .field("tmp_path", &self.tmp_path)
            .field("open", &self.writer.is_some())
            .field("size", &self.size)
            .field("fault", &self.sim.as_ref().map(|sim| sim.fault))
            .finish()
    }
}

/// Why an entry could not be loaded.
enum LoadError {
    NotFound,
    Io(io::Error),
    Invalid(String),
}

/// Open `path` and read its header, checking that it belongs to `id`.
/// Returns the envelope, the header length, and the reader positioned at
/// the first message byte.
fn load(path: &Path, id: &QueueId) -> Result<(Envelope, u64, BufReader<File>), LoadError> {
    let file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => LoadError::NotFound,
        _ => LoadError::Io(e),
    })?;
    let mut reader = BufReader::new(file);
    let (envelope, header_len) = format::decode_header(&mut reader).map_err(|e| match e {
        HeaderError::Io(e) => LoadError::Io(e),
        HeaderError::Invalid(reason) => LoadError::Invalid(reason),
    })?;
    if envelope.id != *id {
        return Err(LoadError::Invalid(format!(
            "the envelope names queue ID {}, not {id}",
            envelope.id
        )));
    }
    Ok((envelope, header_len, reader))
}

/// The delivery state in `path`, checked against the entry's `envelope`.
/// [`LoadError::NotFound`] when none was saved.
fn load_state(path: &Path, envelope: &Envelope) -> Result<DeliveryState, LoadError> {
    let file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => LoadError::NotFound,
        _ => LoadError::Io(e),
    })?;
    let mut bytes = Vec::new();
    file.take(format::MAX_STATE_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(LoadError::Io)?;
    let state = format::decode_state(&bytes).map_err(LoadError::Invalid)?;
    match state.mismatch(envelope) {
        None => Ok(state),
        Some(reason) => Err(LoadError::Invalid(format!(
            "the state does not fit the envelope: {reason}"
        ))),
    }
}

/// The queue ID a `queue/` or `state/` directory entry stands for, or why
/// it stands for none.
fn entry_id(name: &OsStr, file_type: io::Result<fs::FileType>) -> Result<QueueId, String> {
    let id = name
        .to_str()
        .and_then(|name| name.parse::<QueueId>().ok())
        .ok_or_else(|| "the file name is not a queue ID".to_owned())?;
    match file_type {
        Ok(t) if t.is_file() => Ok(id),
        Ok(_) => Err("not a regular file".to_owned()),
        Err(e) => Err(format!("cannot tell the file type: {e}")),
    }
}

/// A corrupt entry seen while the relay runs: leave it for the next open,
/// which moves it aside (moving it now could catch a file an operator is
/// still copying in).
fn skip_corrupt(path: &Path, reason: &str) {
    tracing::warn!(
        path = %path.display(),
        reason,
        "skipping a corrupt spool entry; it will be moved to corrupt/ at the next start"
    );
}

/// An entry whose delivery state turned unreadable while the relay runs:
/// like [`skip_corrupt`], left for the next open.
fn skip_corrupt_state(path: &Path, id: &QueueId, reason: &str) {
    tracing::warn!(
        queue_id = %id,
        path = %path.display(),
        reason,
        "skipping a spool entry whose delivery state is corrupt; the state will be moved to \
         corrupt/ at the next start and delivery starts again"
    );
}

/// Remove everything in `tmp/`: messages whose commit never completed, and
/// state saves that never completed. Returns (messages, states).
fn discard_partials(tmp: &Path) -> Result<(usize, usize), SpoolError> {
    let listing = |e| SpoolError::io(format!("listing {}", tmp.display()), e);
    let (mut discarded, mut states) = (0, 0);
    for dirent in fs::read_dir(tmp).map_err(listing)? {
        let dirent = dirent.map_err(listing)?;
        let path = dirent.path();
        if dirent.file_type().map_err(listing)?.is_dir() {
            // Nothing the spool writes; not ours to delete.
            tracing::warn!(path = %path.display(), "leaving an unexpected directory in the spool's tmp/");
            continue;
        }
        fs::remove_file(&path)
            .map_err(|e| SpoolError::io(format!("removing {}", path.display()), e))?;
        let is_state = dirent
            .file_name()
            .to_str()
            .is_some_and(|name| name.contains(STATE_TEMP_INFIX));
        if is_state {
            tracing::info!(path = %path.display(), "discarded an unfinished delivery state save");
            states += 1;
        } else {
            tracing::info!(path = %path.display(), "discarded a partial spool entry");
            discarded += 1;
        }
    }
    Ok((discarded, states))
}

/// Check every file in `queue/`; move unreadable ones to `corrupt/`.
/// Returns (the complete entries' envelopes, entries moved aside).
fn recover(
    queue: &Path,
    corrupt: &Path,
) -> Result<(HashMap<QueueId, Envelope>, usize), SpoolError> {
    let listing = |e| SpoolError::io(format!("listing {}", queue.display()), e);
    let (mut recovered, mut moved) = (HashMap::new(), 0);
    for dirent in fs::read_dir(queue).map_err(listing)? {
        let dirent = dirent.map_err(listing)?;
        let path = dirent.path();
        let name = dirent.file_name();
        let problem = match entry_id(&name, dirent.file_type()) {
            Err(reason) => reason,
            Ok(id) => match load(&path, &id) {
                Ok((envelope, _, _)) => {
                    recovered.insert(id, envelope);
                    continue;
                }
                Err(LoadError::Invalid(reason)) => reason,
                // Only one process uses the spool, so this should not happen.
                Err(LoadError::NotFound) => continue,
                // Says nothing about the entry (wrong owner, failing disk):
                // refuse to start rather than move good mail aside.
                Err(LoadError::Io(e)) => {
                    return Err(SpoolError::io(format!("reading {}", path.display()), e));
                }
            },
        };
        quarantine(&path, &name, corrupt, &problem)?;
        moved += 1;
    }
    Ok((recovered, moved))
}

/// Check every file in `state/` against the complete `entries`: remove
/// orphans (no such entry), move unreadable or unfitting states to
/// `corrupt/` as `<name>.state`. Returns (orphans removed, states moved
/// aside).
fn recover_states(
    state: &Path,
    entries: &HashMap<QueueId, Envelope>,
    corrupt: &Path,
) -> Result<(usize, usize), SpoolError> {
    let listing = |e| SpoolError::io(format!("listing {}", state.display()), e);
    let (mut orphans, mut moved) = (0, 0);
    for dirent in fs::read_dir(state).map_err(listing)? {
        let dirent = dirent.map_err(listing)?;
        let path = dirent.path();
        let name = dirent.file_name();
        let problem = match entry_id(&name, dirent.file_type()) {
            Err(reason) => reason,
            Ok(id) => match entries.get(&id) {
                None => {
                    match fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => {
                            return Err(SpoolError::io(format!("removing {}", path.display()), e));
                        }
                    }
                    tracing::info!(
                        queue_id = %id,
                        path = %path.display(),
                        "removed the delivery state of an entry that no longer exists"
                    );
                    orphans += 1;
                    continue;
                }
                Some(envelope) => match load_state(&path, envelope) {
                    Ok(_) | Err(LoadError::NotFound) => continue,
                    Err(LoadError::Invalid(reason)) => {
                        tracing::warn!(
                            queue_id = %id,
                            reason,
                            "corrupt delivery state; delivery of the message starts again \
                             with every recipient pending"
                        );
                        reason
                    }
                    // As for entries: refuse to start rather than forget
                    // what was delivered.
                    Err(LoadError::Io(e)) => {
                        return Err(SpoolError::io(format!("reading {}", path.display()), e));
                    }
                },
            },
        };
        let mut target: OsString = name;
        target.push(STATE_QUARANTINE_SUFFIX);
        quarantine(&path, &target, corrupt, &problem)?;
        moved += 1;
    }
    Ok((orphans, moved))
}

/// Move `path` into `corrupt/` as `name` (its own name, or for a state
/// file its name plus `.state`), or `<name>.<n>` if that is taken. Never
/// deletes anything.
fn quarantine(path: &Path, name: &OsStr, corrupt: &Path, reason: &str) -> Result<(), SpoolError> {
    let moving = |e| SpoolError::io(format!("moving {} to corrupt/", path.display()), e);
    let mut target = corrupt.join(name);
    let mut suffix = 0;
    while fs::exists(&target).map_err(moving)? {
        suffix += 1;
        if suffix > MAX_QUARANTINE_SUFFIX {
            return Err(moving(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "too many files of that name in corrupt/",
            )));
        }
        let mut numbered = name.to_os_string();
        numbered.push(format!(".{suffix}"));
        target = corrupt.join(numbered);
    }
    fs::rename(path, &target).map_err(moving)?;
    tracing::warn!(
        path = %path.display(),
        moved_to = %target.display(),
        reason,
        "corrupt spool file moved aside"
    );
    Ok(())
}

fn create_private_dir(path: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)
}

fn create_private_file(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Open a directory for group-committed fsyncs, and fsync it once.
fn open_dir_sync(path: &Path) -> Result<DirSync, SpoolError> {
    let dir =
        File::open(path).map_err(|e| SpoolError::io(format!("opening {}", path.display()), e))?;
    let sync = DirSync::new(dir);
    sync.sync()
        .map_err(|e| SpoolError::io(format!("fsyncing {}", path.display()), e))?;
    Ok(sync)
}

/// fsync a directory, making its entries (names) durable.
fn sync_dir(path: &Path) -> Result<(), SpoolError> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| SpoolError::io(format!("fsyncing {}", path.display()), e))
}
