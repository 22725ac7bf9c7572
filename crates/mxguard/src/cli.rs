//! The command line, in two stages: clap parses raw arguments, then each
//! command turns them into a validated configuration before anything runs.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use mxguard_dns::ResolverSpec;

/// Do I need a backup MX, and is the one I have helping or hurting?
#[derive(Debug, Parser)]
#[command(name = "mxguard", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Audit domains' MX sets and judge their backup MX.
    Check(CheckArgs),
    /// Run every check offline against a built-in lab on loopback addresses.
    Demo(DemoArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Readable at a glance; coloured on a terminal.
    Text,
    /// One JSON object for one domain, an array for several.
    Json,
    /// One JSON object per line, one line per domain.
    Jsonl,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Domains to check (IDNs are accepted).
    #[arg(value_name = "DOMAIN")]
    pub domains: Vec<String>,
    /// Read more domains from FILE, one per line (`#` starts a comment; `-` is standard input).
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Ask this DNS server instead of the system's (IP or IP:PORT).
    #[arg(long, value_name = "IP[:PORT]")]
    pub resolver: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// DNS checks only: do not connect to any MX over SMTP.
    #[arg(long)]
    pub no_smtp: bool,
    /// Seconds to wait for any one network operation.
    #[arg(long, value_name = "SECS", default_value = "10")]
    pub timeout: f64,
    /// Check this many domains at once.
    #[arg(long, value_name = "N", default_value = "8")]
    pub jobs: usize,
    /// Private and loopback MX addresses are expected (a lab): look them up
    /// and do not report them.
    #[arg(long)]
    pub allow_private: bool,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

/// A `check` invocation after validation.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    /// A-label domains, in the order given, duplicates removed.
    pub domains: Vec<String>,
    pub resolver: ResolverSpec,
    pub format: Format,
    pub smtp: bool,
    pub timeout: Duration,
    pub jobs: usize,
    pub allow_private: bool,
}

impl CheckArgs {
    /// Validate everything up front; any error here exits 2 before a packet is sent.
    pub fn into_config(self) -> anyhow::Result<CheckConfig> {
        use anyhow::{Context, bail};
        let mut raw = self.domains;
        if let Some(path) = &self.input {
            let text = if path.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
                    .context("reading domains from standard input")?
            } else {
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?
            };
            raw.extend(
                text.lines()
                    .map(|l| l.split('#').next().unwrap_or("").trim())
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned),
            );
        }
        if raw.is_empty() {
            bail!("no domain given: name one or more, or use --input FILE");
        }
        let mut domains = Vec::with_capacity(raw.len());
        let mut seen = std::collections::HashSet::new();
        for d in &raw {
            let ascii = mxguard_dns::net::parse_domain(d).map_err(anyhow::Error::msg)?;
            if seen.insert(ascii.clone()) {
                domains.push(ascii);
            }
        }
        let resolver = match &self.resolver {
            Some(text) => ResolverSpec::parse(text).map_err(anyhow::Error::msg)?,
            None => ResolverSpec::System,
        };
        if !(self.timeout.is_finite() && self.timeout > 0.0 && self.timeout <= 3600.0) {
            bail!(
                "--timeout must be between 0 and 3600 seconds, got {}",
                self.timeout
            );
        }
        if self.jobs == 0 || self.jobs > 1024 {
            bail!("--jobs must be between 1 and 1024, got {}", self.jobs);
        }
        Ok(CheckConfig {
            domains,
            resolver,
            format: self.format,
            smtp: !self.no_smtp,
            timeout: Duration::from_secs_f64(self.timeout),
            jobs: self.jobs,
            allow_private: self.allow_private,
        })
    }
}
