//! `mxguard relay`: a backup MX that is safe by construction (DESIGN §4).
//!
//! - [`config`]: the TOML configuration, its contract keys and validation;
//! - [`session`]: one SMTP session — strict wire, limits, timeouts, STARTTLS;
//! - [`data`]: the DATA phase, which ends only at CRLF.CRLF;
//! - [`policy`], [`callout`], [`list`]: which recipients are taken;
//! - [`server`]: listeners and connection limits;
//! - [`events`]: one log line per mail event.
//!
//! Accepted mail goes to a [`mxguard_queue::Spool`]; forwarding it to the
//! primary is the next step (issue 5).

pub mod address;
pub mod admin;
pub mod callout;
pub mod config;
pub mod data;
pub mod delivery;
pub mod dsn;
pub mod events;
pub mod hops;
pub mod list;
pub mod metrics;
pub mod mirror;
pub mod policy;
pub mod server;
pub mod session;
pub mod spf;

pub use config::{Config, ConfigError, Problem, RecipientMode};
pub use events::{Events, MailEvent, Stage};
pub use server::{Options, Prepared, Running, StartError, prepare, start};
