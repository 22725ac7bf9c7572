//! `mxguard relay`: a backup MX that is safe by construction (DESIGN §4).
//!
//! Built in steps (issues 4 and 5). What exists so far is [`config`]: the
//! TOML configuration with its contract keys, secure defaults and
//! validation. The SMTP server, recipient validation and the spool come
//! next.

pub mod config;

pub use config::{Config, ConfigError, Problem, RecipientMode};
