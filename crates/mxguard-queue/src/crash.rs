//! A crash-simulating spool, for testing what the relay does when the disk
//! fills up or the power goes at the worst moment.
//!
//! [`CrashSpool`] runs the real [`FsSpool`] code on real files; the fault
//! plan only decides where that code stops. A simulated crash leaves the
//! files exactly as they are at that point (no cleanup, unflushed buffer
//! lost) and "turns the power off": every later call on the same
//! `CrashSpool`, and on every `Incoming` it handed out, returns
//! [`SpoolError::Crashed`] without touching the disk. A test then opens a
//! fresh [`FsSpool`] on the same directory, as a restarted relay would, and
//! checks what was recovered.
//!
//! Faults apply to [`Spool::save_state`] too, with the fault in force at
//! the call: see [`Fault`] for what each does there. [`Spool::remove`],
//! [`Spool::list`], [`Spool::read`] and [`Spool::state`] run unfaulted
//! (until a crash, after which they return [`SpoolError::Crashed`]).
//!
//! One simplification: a real power cut may also lose data written but not
//! yet fsynced. This backend keeps everything written, which is the state
//! recovery has the hardest time with (for example a renamed entry whose
//! directory fsync never ran is still there and must be recovered).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::{
    DeliveryState, Entry, Envelope, FsSpool, Incoming, QueueId, Recovery, Spool, SpoolError,
    StateRecovery,
};

/// Where a [`CrashSpool`] fails. Set with [`CrashSpool::set_fault`]; each
/// [`Spool::begin`] takes the fault in force at that moment, so changing it
/// never affects messages already being received.
///
/// Each [`Spool::save_state`] also takes the fault in force when it is
/// called, and fails at the matching step of its own protocol (write the
/// temp file in `tmp/`, fsync it, rename it to `state/<ID>`, fsync
/// `state/`). Byte counts there are the state file's own bytes. Every fault
/// up to and including [`Fault::CrashBeforeRename`] leaves the previous
/// state in force; after [`Fault::CrashBeforeDirSync`] the new one is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Fault {
    /// Behave like [`FsSpool`].
    #[default]
    None,
    /// The disk fills up once this many message bytes have been written:
    /// the write that crosses the limit fails with [`SpoolError::Full`] and
    /// the partial file is removed, exactly as for a real `ENOSPC`. A
    /// message of at most this many bytes is stored normally. Stays in force
    /// (the disk stays full) until changed. A state save whose file is
    /// longer fails the same way; the previous state stays.
    FullAfter(u64),
    /// The power goes once this many message bytes have reached the temp
    /// file: the write that crosses the limit returns
    /// [`SpoolError::Crashed`], and the partial temp file stays. Likewise
    /// for a state save whose file is longer.
    CrashAfter(u64),
    /// The power goes in commit, after the message is written but before
    /// the temp file is fsynced. The temp file stays.
    CrashBeforeFsync,
    /// The power goes in commit, after the fsync but before the rename into
    /// `queue/`. The temp file stays.
    CrashBeforeRename,
    /// The power goes in commit, after the rename but before the directory
    /// fsync. The entry stays in `queue/`; the sender was never told `250`,
    /// so it will send again and the message may be delivered twice (never
    /// lost).
    CrashBeforeDirSync,
}

/// The fault plan one incoming message runs under.
#[derive(Debug, Clone)]
pub(crate) struct Sim {
    /// Fixed at `begin`.
    pub(crate) fault: Fault,
    /// Shared by the `CrashSpool` and every `Incoming` it handed out.
    pub(crate) power: Arc<Power>,
}

/// Whether the simulated machine has crashed.
#[derive(Debug, Default)]
pub(crate) struct Power {
    off: AtomicBool,
}

impl Power {
    pub(crate) fn is_off(&self) -> bool {
        self.off.load(Ordering::SeqCst)
    }

    pub(crate) fn cut(&self) {
        self.off.store(true, Ordering::SeqCst);
    }
}

/// An [`FsSpool`] with injectable faults; implements [`Spool`].
///
/// For tests only: the relay under test gets a `CrashSpool` where it would
/// get an `FsSpool`, and the test decides when the disk fills up or the
/// power goes.
#[derive(Debug)]
pub struct CrashSpool {
    spool: FsSpool,
    /// The fault the next `begin` takes.
    fault: Mutex<Fault>,
    power: Arc<Power>,
}

impl CrashSpool {
    /// Wrap an open spool, with no fault set.
    pub fn new(spool: FsSpool) -> CrashSpool {
        CrashSpool {
            spool,
            fault: Mutex::new(Fault::None),
            power: Arc::default(),
        }
    }

    /// [`FsSpool::open`], wrapped.
    pub fn open(path: &Path) -> Result<(CrashSpool, Recovery), SpoolError> {
        let (spool, recovery) = FsSpool::open(path)?;
        Ok((CrashSpool::new(spool), recovery))
    }

    /// Set the fault for messages begun from now on.
    pub fn set_fault(&self, fault: Fault) {
        *self.fault.lock().unwrap_or_else(PoisonError::into_inner) = fault;
    }

    /// The fault currently set.
    pub fn fault(&self) -> Fault {
        *self.fault.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a simulated crash has happened. From then on every operation
    /// returns [`SpoolError::Crashed`]; open a new spool on the same
    /// directory to "restart".
    pub fn has_crashed(&self) -> bool {
        self.power.is_off()
    }

    /// The spool root.
    pub fn path(&self) -> &Path {
        self.spool.path()
    }

    /// [`FsSpool::state_recovery`] of the wrapped spool.
    pub fn state_recovery(&self) -> StateRecovery {
        self.spool.state_recovery()
    }

    fn alive(&self) -> Result<(), SpoolError> {
        if self.power.is_off() {
            Err(SpoolError::Crashed)
        } else {
            Ok(())
        }
    }
}

impl Spool for CrashSpool {
    fn begin(&self, envelope: &Envelope) -> Result<Box<dyn Incoming>, SpoolError> {
        self.alive()?;
        let sim = Sim {
            fault: self.fault(),
            power: Arc::clone(&self.power),
        };
        Ok(Box::new(self.spool.begin_with(envelope, Some(sim))?))
    }

    fn list(&self) -> Result<Vec<Entry>, SpoolError> {
        self.alive()?;
        self.spool.list()
    }

    fn read(&self, id: &QueueId) -> Result<(Envelope, Vec<u8>), SpoolError> {
        self.alive()?;
        self.spool.read(id)
    }

    fn remove(&self, id: &QueueId) -> Result<(), SpoolError> {
        self.alive()?;
        self.spool.remove(id)
    }

    fn state(&self, id: &QueueId) -> Result<DeliveryState, SpoolError> {
        self.alive()?;
        self.spool.state(id)
    }

    fn save_state(&self, id: &QueueId, state: &DeliveryState) -> Result<(), SpoolError> {
        self.alive()?;
        let sim = Sim {
            fault: self.fault(),
            power: Arc::clone(&self.power),
        };
        self.spool.save_state_with(id, state, Some(&sim))
    }
}
