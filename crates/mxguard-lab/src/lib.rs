//! A hermetic lab for mxguard: an authoritative DNS server and scripted SMTP
//! hosts on loopback addresses, started in-process in milliseconds.
//!
//! Tests and `mxguard demo` use it instead of the internet. Every server binds
//! a port chosen at run time, so any number of labs run side by side.

pub mod demo;
pub mod dns;
pub mod smtp;
pub mod tls;
pub mod zones;

pub use dns::LabDns;
pub use smtp::{
    Behaviour, DataAnswer, Exchange, HostScript, LabSmtp, LabSmtpSet, Pattern, ReceivedMessage,
    Reply, StartTls,
};
pub use tls::{LabCa, LabCert, TlsError, Validity};
pub use zones::{FaultKind, ZoneError, ZoneSet};

/// Aborts a spawned server task when the handle that owns it is dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
