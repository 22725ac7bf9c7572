//! The filesystem spool: one file per message, committed by fsync, rename
//! and directory fsync.
//!
//! Layout under the spool root (see `docs/spool.md`):
//!
//! - `tmp/<ID>`: messages being received. Never complete; removed at open.
//! - `queue/<ID>`: committed entries. Only ever created by a rename of a
//!   fully written and fsynced file, so every name here is complete.
//! - `corrupt/`: entries found unreadable at open, moved aside for a person.
//!
//! `tmp/` and `queue/` sit in the same directory so the rename never
//! crosses filesystems and is atomic.

use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::crash::{Fault, Sim};
use crate::format::{self, HeaderError};
use crate::group::DirSync;
use crate::{Entry, Envelope, Incoming, QueueId, Spool, SpoolError};

/// Buffer size of an [`Incoming`]. The server writes chunks of up to
/// 256 KiB; chunks at least this large go straight to the file, small ones
/// are gathered.
const WRITE_BUFFER: usize = 64 * 1024;

/// Most numbered variants tried when a name is already taken in `corrupt/`.
const MAX_QUARANTINE_SUFFIX: u32 = 10_000;

/// The filesystem-backed [`Spool`].
///
/// Only one process may use a spool directory at a time: [`FsSpool::open`]
/// discards whatever is in `tmp/`, including another live process's
/// messages in flight.
#[derive(Debug)]
pub struct FsSpool {
    shared: Arc<Shared>,
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
}

/// What [`FsSpool::open`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Complete entries in `queue/`, now available to [`Spool::list`].
    pub recovered: usize,
    /// Partial messages removed from `tmp/` (interrupted by a crash or
    /// shutdown before commit; their senders were never told `250`).
    pub discarded_partial: usize,
    /// Unreadable files moved from `queue/` to `corrupt/`.
    pub corrupt: usize,
}

impl FsSpool {
    /// Open the spool at `path`: create the directory layout if needed,
    /// discard partial entries from `tmp/`, and move corrupt ones from
    /// `queue/` to `corrupt/` (logged with `tracing::warn!`).
    ///
    /// New directories are created with mode 0700 and entry files with
    /// mode 0600 (on Unix): queued mail is private.
    pub fn open(path: &Path) -> Result<(FsSpool, Recovery), SpoolError> {
        let root = path.to_path_buf();
        let tmp = root.join("tmp");
        let queue = root.join("queue");
        let corrupt = root.join("corrupt");

        let root_existed = fs::exists(&root)
            .map_err(|e| SpoolError::io(format!("checking {}", root.display()), e))?;
        for dir in [&root, &tmp, &queue, &corrupt] {
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

        let discarded_partial = discard_partials(&tmp)?;
        let (recovered, moved) = recover(&queue, &corrupt)?;
        if moved > 0 {
            sync_dir(&corrupt)?;
        }

        let queue_dir = File::open(&queue)
            .map_err(|e| SpoolError::io(format!("opening {}", queue.display()), e))?;
        let queue_sync = DirSync::new(queue_dir);
        // Makes the recovered names durable even if they came from a rename
        // whose directory fsync never ran, and the moves to corrupt/.
        queue_sync
            .sync()
            .map_err(|e| SpoolError::io(format!("fsyncing {}", queue.display()), e))?;

        let recovery = Recovery {
            recovered,
            discarded_partial,
            corrupt: moved,
        };
        tracing::info!(
            path = %root.display(),
            recovered,
            discarded_partial,
            corrupt = moved,
            "spool opened"
        );
        let shared = Arc::new(Shared {
            root,
            tmp,
            queue,
            queue_sync,
        });
        Ok((FsSpool { shared }, recovery))
    }

    /// The spool root, as given to [`FsSpool::open`].
    pub fn path(&self) -> &Path {
        &self.shared.root
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
                    entries.push(Entry {
                        envelope,
                        size: file_len.saturating_sub(header_len),
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
        tracing::debug!(queue_id = %id, "spool entry removed");
        Ok(())
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

/// Where in the commit a simulated power cut may strike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Fsync,
    Rename,
    DirSync,
}

impl FsIncoming {
    /// Whether the simulated power is off, or `fault` strikes before `step`.
    fn halts_before(&self, step: Step) -> bool {
        let Some(sim) = &self.sim else {
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
        match fs::remove_file(&self.tmp_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // Harmless beyond the wasted space: the next open discards it.
            Err(e) => tracing::warn!(
                queue_id = %self.id,
                path = %self.tmp_path.display(),
                cause = %e,
                "could not remove a discarded spool temp file"
            ),
        }
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

/// The queue ID a `queue/` directory entry stands for, or why it stands
/// for none.
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

/// Remove everything in `tmp/`: messages whose commit never completed.
fn discard_partials(tmp: &Path) -> Result<usize, SpoolError> {
    let listing = |e| SpoolError::io(format!("listing {}", tmp.display()), e);
    let mut discarded = 0;
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
        tracing::info!(path = %path.display(), "discarded a partial spool entry");
        discarded += 1;
    }
    Ok(discarded)
}

/// Check every file in `queue/`; move unreadable ones to `corrupt/`.
/// Returns (complete entries, entries moved aside).
fn recover(queue: &Path, corrupt: &Path) -> Result<(usize, usize), SpoolError> {
    let listing = |e| SpoolError::io(format!("listing {}", queue.display()), e);
    let (mut recovered, mut moved) = (0, 0);
    for dirent in fs::read_dir(queue).map_err(listing)? {
        let dirent = dirent.map_err(listing)?;
        let path = dirent.path();
        let name = dirent.file_name();
        let problem = match entry_id(&name, dirent.file_type()) {
            Err(reason) => reason,
            Ok(id) => match load(&path, &id) {
                Ok(_) => {
                    recovered += 1;
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

/// Move `path` into `corrupt/` under its own name, or `<name>.<n>` if that
/// is taken. Never deletes anything.
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
        "corrupt spool entry moved aside"
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

/// fsync a directory, making its entries (names) durable.
fn sync_dir(path: &Path) -> Result<(), SpoolError> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| SpoolError::io(format!("fsyncing {}", path.display()), e))
}
