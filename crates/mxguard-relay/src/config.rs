//! The relay's configuration: TOML, every key known (`deny_unknown_fields`),
//! secure defaults, and validation that reports every problem it finds with
//! the line it is on.
//!
//! The keys of DESIGN §4 are a contract; `etc/relay.example.toml` documents
//! every key with its default. There is deliberately no key that makes the
//! relay accept mail for a domain it is not configured for: without a
//! `[[domains]]` entry it accepts nothing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The relay's own name: EHLO, banner, Received header.
    pub hostname: Spanned<String>,
    #[serde(default)]
    pub smtp: SmtpConfig,
    pub spool: SpoolConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub callout: CalloutConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// The domains this relay backs up. None: no mail is accepted.
    #[serde(default)]
    pub domains: Vec<DomainConfig>,
    /// The directory relative paths are taken from (the file's own).
    #[serde(skip)]
    pub base: Option<PathBuf>,
}

/// The SMTP listener and its limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    pub listen: Vec<Spanned<String>>,
    /// PEM certificate chain and key for STARTTLS; without them STARTTLS is
    /// not offered.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Largest message accepted, in octets (advertised as SIZE).
    pub max_message_size: u64,
    /// Recipients per transaction (RFC 5321 §4.5.3.1.8 asks for at least 100).
    pub max_recipients: usize,
    /// Simultaneous sessions in total, and per client address.
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    /// Longest line, CRLF included, in commands and in message text.
    pub max_line_length: usize,
    /// How long to wait for the client's next command (RFC 5321 §4.5.3.2.7:
    /// at least 5 minutes).
    #[serde(with = "human")]
    pub command_timeout: Duration,
    /// How long to wait for more message text during DATA (the client's
    /// data block timeout, RFC 5321 §4.5.3.2.5, is 3 minutes).
    #[serde(with = "human")]
    pub data_timeout: Duration,
    /// Errors (unknown commands, bad syntax, rejected recipients) after
    /// which the session is closed.
    pub max_errors: usize,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            listen: vec![Spanned::new(0..0, "0.0.0.0:25".to_owned())],
            tls_cert: None,
            tls_key: None,
            max_message_size: 50 * 1024 * 1024,
            max_recipients: 100,
            max_connections: 200,
            max_connections_per_client: 20,
            max_line_length: 2048,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            max_errors: 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Relative paths are taken from the config file's directory.
    pub path: PathBuf,
}

/// Queue commands and `/metrics`; loopback by default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: Spanned<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: Spanned::new(0..0, "127.0.0.1:8025".to_owned()),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// `IP[:PORT]`; absent: the system resolver.
    pub resolver: Option<Spanned<String>>,
}

/// How long callout answers are kept (Postfix's verify(8) defaults).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CalloutConfig {
    #[serde(with = "human")]
    pub positive_refresh: Duration,
    #[serde(with = "human")]
    pub positive_expiry: Duration,
    #[serde(with = "human")]
    pub negative_refresh: Duration,
    #[serde(with = "human")]
    pub negative_expiry: Duration,
    /// The longest wait for the primary's answer to one callout.
    #[serde(with = "human")]
    pub timeout: Duration,
}

const DAY: u64 = 24 * 3600;

impl Default for CalloutConfig {
    fn default() -> Self {
        CalloutConfig {
            positive_refresh: Duration::from_secs(7 * DAY),
            positive_expiry: Duration::from_secs(31 * DAY),
            negative_refresh: Duration::from_secs(3 * 3600),
            negative_expiry: Duration::from_secs(3 * DAY),
            timeout: Duration::from_secs(30),
        }
    }
}

/// Forwarding to the primary: retry schedule, lifetime, notices, limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Waits between attempts; the last one repeats.
    #[serde(with = "human_list")]
    pub retry: Vec<Duration>,
    /// Each wait is moved by up to this fraction, either way, so that many
    /// messages deferred together do not come back together.
    pub jitter: f64,
    /// How long a message is kept before it is returned (default 7 days:
    /// longer than the 4–5 days common senders keep trying themselves).
    #[serde(with = "human")]
    pub lifetime: Duration,
    /// When a delay notice goes to the sender (if `dsn` allows).
    #[serde(with = "human")]
    pub warn_after: Duration,
    /// Who gets delivery status notifications.
    pub dsn: DsnPolicy,
    /// While a primary is down, how often to see whether it is back.
    #[serde(with = "human")]
    pub probe_interval: Duration,
    /// Deliveries in progress at once, in all.
    pub concurrency: usize,
    /// Connections to one destination at once.
    pub destination_concurrency: usize,
    /// Messages per second started towards one destination (0: no limit),
    /// so that a primary that just came back is not flooded.
    pub destination_rate: f64,
    /// The longest wait for a connection, a reply, and the end of DATA.
    #[serde(with = "human")]
    pub connect_timeout: Duration,
    #[serde(with = "human")]
    pub command_timeout: Duration,
    #[serde(with = "human")]
    pub data_timeout: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        let m = |n: u64| Duration::from_secs(60 * n);
        DeliveryConfig {
            retry: vec![m(1), m(5), m(15), m(30), m(60)],
            jitter: 0.1,
            lifetime: Duration::from_secs(7 * DAY),
            warn_after: Duration::from_secs(4 * 3600),
            dsn: DsnPolicy::Authenticated,
            probe_interval: Duration::from_secs(5),
            concurrency: 50,
            destination_concurrency: 10,
            destination_rate: 50.0,
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
        }
    }
}

/// Who may receive delivery status notifications from the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DsnPolicy {
    /// Only senders whose MAIL FROM domain passed SPF at ingress: a forged
    /// sender never receives backscatter.
    Authenticated,
    /// Every sender but the null sender.
    Always,
    /// Nobody.
    Never,
}

/// TLS towards the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsPolicy {
    /// STARTTLS when offered; plain text otherwise.
    #[default]
    Opportunistic,
    /// STARTTLS or no delivery (deferred).
    Required,
}

/// How recipients are validated for a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecipientMode {
    /// Ask the primary, live, and cache the answer.
    Callout,
    /// A file of valid recipients.
    List,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConfig {
    pub name: Spanned<String>,
    /// `host[:port]`; absent: the domain's MX hosts more preferred than
    /// this relay.
    pub primary: Option<Spanned<String>>,
    #[serde(default = "callout")]
    pub recipients: Spanned<RecipientMode>,
    pub recipient_list: Option<Spanned<PathBuf>>,
    /// STARTTLS when forwarding to the primary.
    #[serde(default)]
    pub tls: TlsPolicy,
}

fn callout() -> Spanned<RecipientMode> {
    Spanned::new(0..0, RecipientMode::Callout)
}

mod human_list {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let texts = Vec::<String>::deserialize(d)?;
        texts
            .iter()
            .map(|t| {
                humantime::parse_duration(t)
                    .map_err(|e| serde::de::Error::custom(format!("{t:?} is not a duration ({e})")))
            })
            .collect()
    }
}

mod human {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration ({e}); write e.g. \"3h\" or \"7d\""
            ))
        })
    }
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The key concerned, as a path (`domains[1].recipient_list`).
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}: {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// Every problem found, in file order.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", render(.0))]
pub struct ConfigError(pub Vec<Problem>);

fn render(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

fn line_of(text: &str, span: std::ops::Range<usize>) -> Option<usize> {
    if span.start == 0 && span.end == 0 {
        return None;
    }
    Some(text[..span.start.min(text.len())].matches('\n').count() + 1)
}

impl Config {
    /// Read and validate a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(vec![Problem {
                line: None,
                key: path.display().to_string(),
                message: format!("cannot read: {e}"),
            }])
        })?;
        Config::parse(&text, path.parent())
    }

    /// Parse and validate `text`; relative list paths are taken from `base`.
    pub fn parse(text: &str, base: Option<&Path>) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().and_then(|s| line_of(text, s));
            ConfigError(vec![Problem {
                line,
                key: "config".into(),
                message: e.message().to_owned(),
            }])
        })?;
        let problems = config.problems(text, base);
        if problems.is_empty() {
            let mut config = config;
            config.spool.path = resolve(base, &config.spool.path);
            config.base = base.map(Path::to_owned);
            Ok(config)
        } else {
            Err(ConfigError(problems))
        }
    }

    fn problems(&self, text: &str, base: Option<&Path>) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut push = |span: std::ops::Range<usize>, key: String, message: String| {
            out.push(Problem {
                line: line_of(text, span),
                key,
                message,
            });
        };
        if !is_host_name(self.hostname.get_ref()) {
            push(
                self.hostname.span(),
                "hostname".into(),
                format!(
                    "{:?} is not a fully qualified host name",
                    self.hostname.get_ref()
                ),
            );
        }
        if self.smtp.listen.is_empty() {
            push(
                0..0,
                "smtp.listen".into(),
                "at least one address is needed".into(),
            );
        }
        for (i, l) in self.smtp.listen.iter().enumerate() {
            if l.get_ref().parse::<SocketAddr>().is_err() {
                push(
                    l.span(),
                    format!("smtp.listen[{i}]"),
                    format!("{:?} is not an IP:PORT address", l.get_ref()),
                );
            }
        }
        if self.smtp.tls_cert.is_some() != self.smtp.tls_key.is_some() {
            push(
                0..0,
                "smtp.tls_cert".into(),
                "tls_cert and tls_key go together".into(),
            );
        }
        if self.smtp.max_recipients < 100 {
            push(
                0..0,
                "smtp.max_recipients".into(),
                "RFC 5321 §4.5.3.1.8 requires accepting at least 100 recipients".into(),
            );
        }
        if self.smtp.max_line_length < 512 {
            push(
                0..0,
                "smtp.max_line_length".into(),
                "RFC 5321 §4.5.3.1 requires lines of at least 512 octets (1000 for text)".into(),
            );
        }
        if self.smtp.command_timeout < Duration::from_secs(1)
            || self.smtp.data_timeout < Duration::from_secs(1)
        {
            push(
                0..0,
                "smtp.command_timeout".into(),
                "timeouts shorter than a second would cut off ordinary clients".into(),
            );
        }
        if self.smtp.max_errors == 0 {
            push(0..0, "smtp.max_errors".into(), "must be at least 1".into());
        }
        if self.smtp.max_connections_per_client > self.smtp.max_connections {
            push(
                0..0,
                "smtp.max_connections_per_client".into(),
                "cannot exceed smtp.max_connections".into(),
            );
        }
        match self.admin.listen.get_ref().parse::<SocketAddr>() {
            Ok(a) if !a.ip().is_loopback() => push(
                self.admin.listen.span(),
                "admin.listen".into(),
                format!(
                    "{a} is not a loopback address; the admin listener must not face the network"
                ),
            ),
            Ok(_) => {}
            Err(_) => push(
                self.admin.listen.span(),
                "admin.listen".into(),
                format!(
                    "{:?} is not an IP:PORT address",
                    self.admin.listen.get_ref()
                ),
            ),
        }
        if let Some(r) = &self.dns.resolver {
            let t = r.get_ref();
            if t.parse::<SocketAddr>().is_err() && t.parse::<std::net::IpAddr>().is_err() {
                push(
                    r.span(),
                    "dns.resolver".into(),
                    format!("{t:?} is not IP[:PORT]"),
                );
            }
        }
        let c = &self.callout;
        if c.positive_refresh > c.positive_expiry || c.negative_refresh > c.negative_expiry {
            push(
                0..0,
                "callout".into(),
                "a refresh time must not exceed its expiry time".into(),
            );
        }
        let d = &self.delivery;
        if d.retry.is_empty() || d.retry.iter().any(|r| r.is_zero()) {
            push(
                0..0,
                "delivery.retry".into(),
                "give at least one wait, none of them zero".into(),
            );
        }
        if !(0.0..=0.5).contains(&d.jitter) {
            push(
                0..0,
                "delivery.jitter".into(),
                "must be between 0 and 0.5".into(),
            );
        }
        if d.warn_after >= d.lifetime {
            push(
                0..0,
                "delivery.warn_after".into(),
                "must be shorter than delivery.lifetime".into(),
            );
        }
        if d.concurrency == 0 || d.destination_concurrency == 0 {
            push(
                0..0,
                "delivery.concurrency".into(),
                "must be at least 1".into(),
            );
        }
        if !(d.destination_rate >= 0.0 && d.destination_rate.is_finite()) {
            push(
                0..0,
                "delivery.destination_rate".into(),
                "must be a number of messages per second, 0 for no limit".into(),
            );
        }
        if d.probe_interval.is_zero() {
            push(
                0..0,
                "delivery.probe_interval".into(),
                "must not be zero".into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, d) in self.domains.iter().enumerate() {
            let name = d.name.get_ref().trim_end_matches('.').to_ascii_lowercase();
            if !is_host_name(&name) {
                push(
                    d.name.span(),
                    format!("domains[{i}].name"),
                    format!("{name:?} is not a domain name"),
                );
            } else if !seen.insert(name.clone()) {
                push(
                    d.name.span(),
                    format!("domains[{i}].name"),
                    format!("{name} is configured twice"),
                );
            }
            if let Some(p) = &d.primary {
                let t = p.get_ref();
                let (host, port) = match t.rsplit_once(':') {
                    Some((h, p)) if !h.contains(':') => (h, Some(p)),
                    _ => (t.as_str(), None),
                };
                let host_ok = is_host_name(host)
                    || host
                        .trim_matches(['[', ']'])
                        .parse::<std::net::IpAddr>()
                        .is_ok();
                let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
                if !host_ok || !port_ok {
                    push(
                        p.span(),
                        format!("domains[{i}].primary"),
                        format!("{t:?} is not host[:port]"),
                    );
                }
            }
            match (d.recipients.get_ref(), &d.recipient_list) {
                (RecipientMode::List, None) => push(
                    d.recipients.span(),
                    format!("domains[{i}].recipient_list"),
                    "recipients = \"list\" needs recipient_list = \"/path/to/file\"".into(),
                ),
                (RecipientMode::List, Some(list)) => {
                    let path = resolve(base, list.get_ref());
                    if !path.is_file() {
                        push(
                            list.span(),
                            format!("domains[{i}].recipient_list"),
                            format!("{} does not exist or is not a file", path.display()),
                        );
                    }
                }
                (RecipientMode::Callout, Some(list)) => push(
                    list.span(),
                    format!("domains[{i}].recipient_list"),
                    "only used with recipients = \"list\"".into(),
                ),
                (RecipientMode::Callout, None) => {}
            }
        }
        out.sort_by_key(|p| p.line.unwrap_or(0));
        out
    }
}

impl Config {
    /// The listen addresses (validated at load).
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.smtp
            .listen
            .iter()
            .filter_map(|l| l.get_ref().parse().ok())
            .collect()
    }

    /// Where a domain's recipient list is, relative paths taken from the
    /// config file's directory.
    pub fn recipient_list_path(&self, domain: &DomainConfig) -> Option<PathBuf> {
        domain
            .recipient_list
            .as_ref()
            .map(|l| resolve(self.base.as_deref(), l.get_ref()))
    }
}

impl DomainConfig {
    /// The domain name, lower case, without a trailing dot.
    pub fn domain(&self) -> String {
        self.name
            .get_ref()
            .trim_end_matches('.')
            .to_ascii_lowercase()
    }
}

fn resolve(base: Option<&Path>, p: &Path) -> PathBuf {
    match base {
        Some(b) if p.is_relative() => b.join(p),
        _ => p.to_owned(),
    }
}

/// A fully qualified host name in LDH form (A-labels).
fn is_host_name(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    name.len() <= 253
        && name.contains('.')
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}
