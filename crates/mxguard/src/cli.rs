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
    /// Run the backup MX: accept mail for the configured domains, safely.
    Relay(RelayArgs),
    /// Look at and steer the relay's queue.
    Queue(QueueArgs),
    /// What real senders do while your MX is down — with and without a
    /// backup MX.
    Simulate(SimulateArgs),
    /// Serve the checks and the simulation as a web page and a JSON API.
    Web(WebArgs),
}

#[derive(Debug, clap::Args)]
pub struct WebArgs {
    /// Where to listen (IP:PORT; port 0 picks a free one).
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:8025")]
    pub listen: String,
    /// Ask this DNS server instead of the system's (IP or IP:PORT).
    #[arg(long, value_name = "IP[:PORT]")]
    pub resolver: Option<String>,
    /// Probe this SMTP port instead of 25 (labs and tests).
    #[arg(long, value_name = "PORT", default_value = "25")]
    pub smtp_port: u16,
    /// Probe private, loopback and reserved addresses (labs only: never on a
    /// server the public can reach).
    #[arg(long)]
    pub allow_private: bool,
    /// Seconds to wait for any one network operation.
    #[arg(long, value_name = "SECS", default_value = "10")]
    pub timeout: f64,
    /// Seconds one check may take in all (DNS and SMTP).
    #[arg(long, value_name = "SECS", default_value = "60")]
    pub check_timeout: f64,
    /// Checks one client address may start per minute.
    #[arg(long, value_name = "N", default_value = "10")]
    pub rate_limit: u32,
    /// Checks running at once, over all clients.
    #[arg(long, value_name = "N", default_value = "4")]
    pub max_checks: usize,
    #[command(flatten)]
    pub probe: ProbeIdentity,
}

/// Who the SMTP probes say they are, and whom they trust (`check` and
/// `web` alike).
#[derive(Debug, clap::Args)]
pub struct ProbeIdentity {
    /// The name to give in EHLO (default: this machine's name if it is fully
    /// qualified). Receivers may refuse a name that does not resolve.
    #[arg(long, value_name = "NAME")]
    pub helo: Option<String>,
    /// Envelope sender of the relay probes (default: mxguard-probe@HELO).
    #[arg(long, value_name = "ADDR")]
    pub mail_from: Option<String>,
    /// Trust the CA certificates in this PEM file instead of the system's.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

impl WebArgs {
    /// Validates the flags into the server's configuration (trust roots
    /// are loaded by the caller).
    pub fn into_config(
        self,
        roots: std::sync::Arc<rustls::RootCertStore>,
    ) -> anyhow::Result<(std::net::SocketAddr, mxguard_web::WebConfig)> {
        let listen: std::net::SocketAddr = self
            .listen
            .parse()
            .map_err(|_| anyhow::anyhow!("--listen {:?}: expected IP:PORT", self.listen))?;
        let resolver = match &self.resolver {
            Some(r) => ResolverSpec::parse(r).map_err(anyhow::Error::msg)?,
            None => ResolverSpec::System,
        };
        for (flag, v, max) in [
            ("--timeout", self.timeout, 3600.0),
            ("--check-timeout", self.check_timeout, 3600.0),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= max) {
                anyhow::bail!("{flag} must be between 0 and {max} seconds, got {v}");
            }
        }
        if self.rate_limit == 0 || self.max_checks == 0 {
            anyhow::bail!("--rate-limit and --max-checks must be at least 1");
        }
        let (helo, mail_from) =
            probe_identity(self.probe.helo.as_deref(), self.probe.mail_from.as_deref())?;
        let timeout = Duration::from_secs_f64(self.timeout);
        let check_timeout = Duration::from_secs_f64(self.check_timeout);
        Ok((
            listen,
            mxguard_web::WebConfig {
                resolver,
                dns_timeout: timeout,
                smtp: mxguard_audit::SmtpOptions {
                    port: self.smtp_port,
                    helo,
                    mail_from,
                    timeout,
                    // The probes end before the check's own deadline.
                    deadline: check_timeout.mul_f64(0.8),
                    roots,
                },
                allow_private: self.allow_private,
                rate_per_minute: self.rate_limit,
                rate_burst: self.rate_limit.clamp(1, 5),
                max_checks: self.max_checks,
                check_timeout,
            },
        ))
    }
}

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// How long the primary is down (e.g. 90m, 6h, 6d).
    #[arg(long, value_name = "DURATION")]
    pub outage: String,
    /// How far into the outage the message is sent (default: as it begins).
    #[arg(long, value_name = "DURATION", default_value = "0s")]
    pub start: String,
    /// Only these senders (ids as in `docs/senders.md`; repeat the flag or
    /// separate with commas). Default: all.
    #[arg(long, value_name = "ID", value_delimiter = ',')]
    pub profile: Vec<String>,
    /// Add the profiles in this TOML file (a profile with a built-in id
    /// replaces the built-in one).
    #[arg(long, value_name = "FILE")]
    pub profile_file: Vec<PathBuf>,
    /// Put a backup MX in the route, with mxguard relay's default retry
    /// and flush-on-recovery settings.
    #[arg(long)]
    pub backup: bool,
    /// Take the backup's settings from this relay configuration's
    /// `[delivery]` table (implies --backup).
    #[arg(long, value_name = "FILE")]
    pub relay_config: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: SimFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SimFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct QueueArgs {
    /// The relay's configuration: commands go to its admin listener.
    #[arg(long, value_name = "FILE", conflicts_with = "spool")]
    pub config: Option<PathBuf>,
    /// Read a spool directory directly (`list` and `show` only; works with
    /// the relay stopped).
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: QueueFormat,
    #[command(subcommand)]
    pub action: QueueAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueueFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Subcommand)]
pub enum QueueAction {
    /// Every queued message, oldest first.
    List,
    /// One message: envelope, per-recipient status, headers.
    Show { id: String },
    /// Try now: one message, or all of them.
    Flush { id: Option<String> },
    /// Stop delivery attempts for a message until released.
    Hold { id: String },
    /// Let a held message be delivered again (at once).
    Release { id: String },
    /// Remove a message from the queue without any notice.
    Delete { id: String },
}

#[derive(Debug, clap::Args)]
pub struct RelayArgs {
    /// The relay's TOML configuration (see etc/relay.example.toml).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Check the configuration and everything it refers to, then exit
    /// (0: usable; 2: every problem printed with its line).
    #[arg(long)]
    pub check_config: bool,
    /// Log format on standard error.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// key=value lines.
    Text,
    /// One JSON object per line.
    Json,
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
    /// Private and loopback MX addresses are expected (a lab): look them up,
    /// probe them, and do not report them.
    #[arg(long)]
    pub allow_private: bool,
    /// Probe this SMTP port instead of 25 (labs and tests).
    #[arg(long, value_name = "PORT", default_value = "25")]
    pub smtp_port: u16,
    #[command(flatten)]
    pub probe: ProbeIdentity,
    /// Seconds the SMTP probes of one domain may take in all.
    #[arg(long, value_name = "SECS", default_value = "60")]
    pub deadline: f64,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Serve the lab's domains through the web page instead (until Ctrl-C).
    #[arg(long)]
    pub web: bool,
    /// With --web: where to listen (port 0 picks a free one).
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:8025")]
    pub listen: String,
}

/// A `check` invocation after validation.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    /// A-label domains, in the order given, duplicates removed.
    pub domains: Vec<String>,
    pub resolver: ResolverSpec,
    pub format: Format,
    /// `None` with `--no-smtp`.
    pub smtp: Option<SmtpConfig>,
    pub timeout: Duration,
    pub jobs: usize,
    pub allow_private: bool,
}

/// How `check` probes SMTP, validated.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub port: u16,
    pub helo: String,
    pub mail_from: String,
    /// `None`: the system's trust store.
    pub ca_file: Option<PathBuf>,
    pub deadline: Duration,
}

/// The probes' EHLO name and envelope sender, from `--helo` and
/// `--mail-from` or their defaults.
fn probe_identity(helo: Option<&str>, mail_from: Option<&str>) -> anyhow::Result<(String, String)> {
    let helo = match helo {
        Some(h) => check_helo(h)?,
        None => default_helo(),
    };
    let mail_from = match mail_from {
        Some(m) => check_mail_from(m)?,
        // An address literal makes a poor sender domain.
        None if helo.starts_with('[') => "mxguard-probe@mxguard.invalid".to_owned(),
        None => format!("mxguard-probe@{helo}"),
    };
    Ok((helo, mail_from))
}

/// The EHLO name when none is given: the machine's host name if it is
/// fully qualified, else a name that says what we are.
fn default_helo() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| h.contains('.') && mxguard_dns::net::parse_domain(h).is_ok())
        .unwrap_or_else(|| "mxguard.invalid".to_owned())
}

/// A name for EHLO: a domain name or an address literal, nothing that could
/// end the command line.
fn check_helo(name: &str) -> anyhow::Result<String> {
    if name.starts_with('[') && name.ends_with(']') {
        let inner = &name[1..name.len() - 1];
        let inner = inner.strip_prefix("IPv6:").unwrap_or(inner);
        inner
            .parse::<std::net::IpAddr>()
            .map_err(|_| anyhow::anyhow!("--helo {name:?} is not an address literal"))?;
        return Ok(name.to_owned());
    }
    mxguard_dns::net::parse_domain(name).map_err(|e| anyhow::anyhow!("--helo {name:?}: {e}"))
}

/// An envelope sender: `local@domain`, printable, no brackets or spaces.
fn check_mail_from(addr: &str) -> anyhow::Result<String> {
    let bad = || anyhow::anyhow!("--mail-from {addr:?} is not an address like probe@example.com");
    let (local, domain) = addr.rsplit_once('@').ok_or_else(bad)?;
    if local.is_empty()
        || local.len() > 64
        || !local
            .chars()
            .all(|c| c.is_ascii_graphic() && !"<>()[]\\,;:@\"".contains(c))
    {
        return Err(bad());
    }
    let domain = mxguard_dns::net::parse_domain(domain).map_err(|_| bad())?;
    Ok(format!("{local}@{domain}"))
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
        if !(self.deadline.is_finite() && self.deadline > 0.0 && self.deadline <= 86400.0) {
            bail!(
                "--deadline must be between 0 and 86400 seconds, got {}",
                self.deadline
            );
        }
        if self.smtp_port == 0 {
            bail!("--smtp-port must be between 1 and 65535");
        }
        let (helo, mail_from) =
            probe_identity(self.probe.helo.as_deref(), self.probe.mail_from.as_deref())?;
        if let Some(ca) = &self.probe.ca_file
            && !ca.is_file()
        {
            bail!("--ca-file {}: no such file", ca.display());
        }
        let smtp = (!self.no_smtp).then(|| SmtpConfig {
            port: self.smtp_port,
            helo,
            mail_from,
            ca_file: self.probe.ca_file.clone(),
            deadline: Duration::from_secs_f64(self.deadline),
        });
        Ok(CheckConfig {
            domains,
            resolver,
            format: self.format,
            smtp,
            timeout: Duration::from_secs_f64(self.timeout),
            jobs: self.jobs,
            allow_private: self.allow_private,
        })
    }
}
