//! `recipients = "callout"`: ask the primary whether a recipient exists, the
//! way a sender would (EHLO, `MAIL FROM:<>`, RCPT, then RSET and QUIT —
//! never DATA), and remember the answer.
//!
//! The cache follows Postfix's verify(8): an answer is used as it is until
//! its refresh time, asked again after that (the old answer standing if the
//! primary does not answer), and dropped at its expiry. Positive and
//! negative answers have their own times. The cache is a JSON file in the
//! spool directory, written behind a short delay and at shutdown, and read
//! at start, so a restart during an outage keeps what was learnt.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mxguard_dns::{MxRecord, Resolver};
use mxguard_smtp::client::{ClientConfig, Connection, SmtpError};
use serde::{Deserialize, Serialize};

use crate::config::CalloutConfig;

/// A boxed future, so that [`Lookup`] can be a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The DNS questions the relay asks: MX for a domain, addresses of a host.
pub trait Lookup: Send + Sync + std::fmt::Debug {
    fn mx<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<MxRecord>, String>>;
    fn addresses<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, String>>;
}

/// [`Lookup`] over any [`Resolver`].
#[derive(Debug)]
pub struct ResolverLookup<R>(pub R);

impl<R: Resolver + std::fmt::Debug> Lookup for ResolverLookup<R> {
    fn mx<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<MxRecord>, String>> {
        Box::pin(async move {
            self.0
                .mx(domain)
                .await
                .map(|a| a.records)
                .map_err(|e| format!("MX {domain}: {e}"))
        })
    }

    fn addresses<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, String>> {
        Box::pin(async move {
            if let Some(ip) = mxguard_dns::net::name_as_ip_literal(host) {
                return Ok(vec![ip]);
            }
            let (a, aaaa) = tokio::join!(self.0.a(host), self.0.aaaa(host));
            let mut out = Vec::new();
            let mut errors = Vec::new();
            match a {
                Ok(a) => out.extend(a.records.into_iter().map(IpAddr::V4)),
                Err(e) => errors.push(format!("A {host}: {e}")),
            }
            match aaaa {
                Ok(a) => out.extend(a.records.into_iter().map(IpAddr::V6)),
                Err(e) => errors.push(format!("AAAA {host}: {e}")),
            }
            if out.is_empty() && !errors.is_empty() {
                return Err(errors.join("; "));
            }
            Ok(out)
        })
    }
}

/// Where a domain's callouts go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Primary {
    /// `primary = "host[:port]"` from the config.
    Explicit { host: String, port: u16 },
    /// The domain's MX hosts more preferred than this relay (RFC 5321 §5.1),
    /// on the relay's MX port (25 outside labs).
    Mx,
}

impl Primary {
    /// Parse the config's `host[:port]` (validated at load).
    pub fn parse(text: &str) -> Primary {
        let (host, port) = match text.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => (h, p.parse().unwrap_or(25)),
            _ => (text, 25),
        };
        Primary::Explicit {
            host: host.trim_matches(['[', ']']).to_owned(),
            port,
        }
    }
}

/// One remembered answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    pub valid: bool,
    /// The primary's reply, one line.
    pub reply: String,
    /// When it was learnt, seconds since the Unix epoch.
    pub checked: u64,
}

/// How a cache entry stands at a given time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    /// Young enough to use without asking.
    Fresh(CacheEntry),
    /// Past its refresh time: ask again, but use it if the primary cannot say.
    Stale(CacheEntry),
    /// Nothing usable.
    Missing,
}

/// Judge an entry's age (pure: `now` is given).
pub fn judge(entry: Option<&CacheEntry>, now: u64, cfg: &CalloutConfig) -> Cached {
    let Some(e) = entry else {
        return Cached::Missing;
    };
    let age = Duration::from_secs(now.saturating_sub(e.checked));
    let (refresh, expiry) = if e.valid {
        (cfg.positive_refresh, cfg.positive_expiry)
    } else {
        (cfg.negative_refresh, cfg.negative_expiry)
    };
    if age < refresh {
        Cached::Fresh(e.clone())
    } else if age < expiry {
        Cached::Stale(e.clone())
    } else {
        Cached::Missing
    }
}

/// What the relay learns about a recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The primary takes it.
    Valid { cached: bool },
    /// The primary refuses it with this reply.
    Invalid { reply: String, cached: bool },
    /// Nobody can say now (primary down, 4xx, …): why.
    Unknown { why: String },
}

/// The result of asking the primary once.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Asked {
    Valid(String),
    Invalid(String),
    Unknown(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    entries: HashMap<String, CacheEntry>,
}

/// The callout machinery, shared by all sessions.
#[derive(Debug)]
pub struct Callout {
    cfg: CalloutConfig,
    helo: String,
    lookup: Arc<dyn Lookup>,
    entries: Mutex<HashMap<String, CacheEntry>>,
    path: PathBuf,
    dirty: tokio::sync::Notify,
    /// The relay's own addresses: never called out to.
    own: Vec<SocketAddr>,
    /// The port MX hosts are reached on.
    mx_port: u16,
    metrics: Arc<crate::metrics::Metrics>,
    /// Told what each primary advertises in its EHLO.
    pub mirror: Arc<crate::mirror::Mirror>,
    /// One callout at a time per address: a session asking about an
    /// address another is already asking about waits for that answer
    /// rather than calling the primary again.
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A turn at asking about one address; given back (and forgotten when
/// nobody else waits) when dropped.
struct Turn<'a> {
    callout: &'a Callout,
    address: &'a str,
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut inflight = self
            .callout
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // The map's reference and ours: nobody else is waiting.
        if Arc::strong_count(&self.gate) <= 2 {
            inflight.remove(self.address);
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Callout {
    /// Load the cache from `dir/callout-cache.json` (a missing file is an
    /// empty cache; a damaged one is set aside and the cache starts empty).
    pub fn new(
        cfg: CalloutConfig,
        helo: String,
        lookup: Arc<dyn Lookup>,
        dir: &Path,
        own: Vec<SocketAddr>,
        mx_port: u16,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Callout {
        let path = dir.join("callout-cache.json");
        let entries = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<CacheFile>(&bytes) {
                Ok(f) => {
                    let now = unix_now();
                    let mut entries = f.entries;
                    entries.retain(|_, e| judge(Some(e), now, &cfg) != Cached::Missing);
                    tracing::info!(entries = entries.len(), path = %path.display(), "callout cache loaded");
                    entries
                }
                Err(e) => {
                    let aside = path.with_extension("json.damaged");
                    tracing::error!(path = %path.display(), error = %e,
                        aside = %aside.display(), "callout cache unreadable; starting empty");
                    let _ = std::fs::rename(&path, &aside);
                    HashMap::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot read the callout cache; starting empty");
                HashMap::new()
            }
        };
        Callout {
            cfg,
            helo,
            lookup,
            entries: Mutex::new(entries),
            path,
            dirty: tokio::sync::Notify::new(),
            own,
            mx_port,
            metrics,
            mirror: Arc::new(crate::mirror::Mirror::default()),
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// Entries in the cache.
    pub fn cached(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Verify `address` (already normalised) of `domain` against `primary`.
    pub async fn verify(&self, primary: &Primary, domain: &str, address: &str) -> Verdict {
        let now = unix_now();
        let state = {
            let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            judge(entries.get(address), now, &self.cfg)
        };
        self.metrics.callout(matches!(state, Cached::Fresh(_)));
        if let Cached::Fresh(e) = &state {
            return cached_verdict(e);
        }
        // Wait for a callout about the same address already under way,
        // then look again: it may have answered.
        let gate = self
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(address.to_owned())
            .or_default()
            .clone();
        let turn = Turn {
            callout: self,
            address,
            gate,
        };
        let _held = turn.gate.lock().await;
        let state = {
            let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            judge(entries.get(address), unix_now(), &self.cfg)
        };
        let stale = match state {
            Cached::Fresh(e) => return cached_verdict(&e),
            Cached::Stale(e) => Some(e),
            Cached::Missing => None,
        };
        match self.ask(primary, domain, address).await {
            Asked::Valid(reply) => {
                self.remember(address, true, reply, now);
                Verdict::Valid { cached: false }
            }
            Asked::Invalid(reply) => {
                self.remember(address, false, reply.clone(), now);
                Verdict::Invalid {
                    reply,
                    cached: false,
                }
            }
            Asked::Unknown(why) => match stale {
                Some(e) => {
                    tracing::debug!(%address, %why, "primary cannot answer; using the older answer");
                    cached_verdict(&e)
                }
                None => Verdict::Unknown { why },
            },
        }
    }

    fn remember(&self, address: &str, valid: bool, reply: String, now: u64) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                address.to_owned(),
                CacheEntry {
                    valid,
                    reply,
                    checked: now,
                },
            );
        self.dirty.notify_one();
    }

    /// Write the cache file now (temp file, fsync, rename).
    pub fn save(&self) -> std::io::Result<()> {
        let file = CacheFile {
            version: 1,
            entries: self
                .entries
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        };
        let bytes = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
        let tmp = self.path.with_extension("json.tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)
    }

    /// Save the cache whenever it changes, at most once a second, until the
    /// task is dropped.
    pub async fn write_behind(self: Arc<Self>) {
        loop {
            self.dirty.notified().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.save()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(path = %self.path.display(), error = %e, "cannot save the callout cache")
                }
                Err(e) => tracing::error!(error = %e, "callout cache writer failed"),
            }
        }
    }

    /// The addresses to call out to, most preferred first.
    async fn targets(
        &self,
        primary: &Primary,
        domain: &str,
    ) -> Result<Vec<(String, SocketAddr)>, String> {
        let me = crate::hops::Me {
            hostname: &self.helo,
            mx_port: self.mx_port,
            own: &self.own,
        };
        crate::hops::next_hops(
            self.lookup.as_ref(),
            crate::hops::Whose::Backed(primary),
            domain,
            me,
        )
        .await
    }

    async fn ask(&self, primary: &Primary, domain: &str, address: &str) -> Asked {
        let deadline = tokio::time::Instant::now() + self.cfg.timeout;
        let targets = match tokio::time::timeout_at(deadline, self.targets(primary, domain)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Asked::Unknown(e),
            Err(_) => return Asked::Unknown("DNS lookups for the primary timed out".into()),
        };
        let cfg = ClientConfig {
            helo: self.helo.clone(),
            connect_timeout: self.cfg.timeout.min(Duration::from_secs(10)),
            command_timeout: self.cfg.timeout,
            roots: Arc::new(rustls::RootCertStore::empty()),
            deadline: Some(deadline),
        };
        let mut why = Vec::new();
        for (host, addr) in targets {
            match ask_one(
                addr,
                cfg.clone(),
                address,
                &self.helo,
                (&self.mirror, domain),
            )
            .await
            {
                Ok(Asked::Unknown(w)) | Err(w) => why.push(format!("{host} [{}]: {w}", addr)),
                Ok(answer) => {
                    tracing::debug!(%address, %host, %addr, ?answer, "callout answered");
                    return answer;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        Asked::Unknown(why.join("; "))
    }
}

fn cached_verdict(e: &CacheEntry) -> Verdict {
    if e.valid {
        Verdict::Valid { cached: true }
    } else {
        Verdict::Invalid {
            reply: e.reply.clone(),
            cached: true,
        }
    }
}

/// One conversation with one address of the primary.
async fn ask_one(
    addr: SocketAddr,
    cfg: ClientConfig,
    address: &str,
    me: &str,
    (mirror, domain): (&crate::mirror::Mirror, &str),
) -> Result<Asked, String> {
    let text = |e: SmtpError| e.to_string();
    let (mut conn, banner) = Connection::connect(addr, cfg).await.map_err(text)?;
    if !banner.is_positive() {
        conn.quit().await;
        return Err(format!("banner {}", banner.one_line()));
    }
    let result = async {
        let (hello, caps) = conn.hello().await.map_err(text)?;
        if !hello.is_positive() {
            return Err(format!("EHLO/HELO answered {}", hello.one_line()));
        }
        // A host that greets with our own name is us (under another
        // address): asking it would only ask ourselves again.
        let greets_as = hello
            .lines
            .first()
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or("");
        if greets_as.eq_ignore_ascii_case(me) {
            return Err(format!("it greets as {me}: this relay itself"));
        }
        mirror.learn(domain, &caps);
        let mail = conn.command("MAIL FROM:<>").await.map_err(text)?;
        if !mail.is_positive() {
            return Ok(Asked::Unknown(format!(
                "the primary refuses the null sender: {}",
                mail.one_line()
            )));
        }
        let rcpt = conn
            .command(&format!("RCPT TO:<{address}>"))
            .await
            .map_err(text)?;
        let line = sanitize(&rcpt.one_line());
        Ok(if rcpt.is_positive() {
            Asked::Valid(line)
        } else if rcpt.is_permanent() {
            Asked::Invalid(line)
        } else {
            Asked::Unknown(format!("the primary answered {line}"))
        })
    }
    .await;
    if result.is_ok() {
        let _ = conn.command("RSET").await;
    }
    conn.quit().await;
    result
}

/// A remote reply made safe to quote in ours: printable ASCII, bounded.
pub fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(valid: bool, checked: u64) -> CacheEntry {
        CacheEntry {
            valid,
            reply: "250 2.1.5 Ok".into(),
            checked,
        }
    }

    #[test]
    fn ages_follow_refresh_and_expiry() {
        let cfg = CalloutConfig::default();
        let day = 86_400;
        let now = 100 * day;
        let j = |valid, age| judge(Some(&entry(valid, now - age)), now, &cfg);
        assert!(matches!(j(true, 0), Cached::Fresh(_)));
        assert!(matches!(j(true, 7 * day - 1), Cached::Fresh(_)));
        assert!(matches!(j(true, 7 * day), Cached::Stale(_)));
        assert!(matches!(j(true, 31 * day - 1), Cached::Stale(_)));
        assert_eq!(j(true, 31 * day), Cached::Missing);
        assert!(matches!(j(false, 3 * 3600 - 1), Cached::Fresh(_)));
        assert!(matches!(j(false, 3 * 3600), Cached::Stale(_)));
        assert_eq!(j(false, 3 * day), Cached::Missing);
        assert_eq!(judge(None, now, &cfg), Cached::Missing);
    }

    #[test]
    fn primary_parses() {
        assert_eq!(
            Primary::parse("mail.example.com:2525"),
            Primary::Explicit {
                host: "mail.example.com".into(),
                port: 2525
            }
        );
        assert_eq!(
            Primary::parse("mail.example.com"),
            Primary::Explicit {
                host: "mail.example.com".into(),
                port: 25
            }
        );
        assert_eq!(
            Primary::parse("[::1]:2525"),
            Primary::Explicit {
                host: "::1".into(),
                port: 2525
            }
        );
    }

    #[test]
    fn quoted_replies_are_made_safe() {
        assert_eq!(sanitize("550 no\r\nsuch\tuser"), "550 no??such?user");
        assert_eq!(sanitize(&"x".repeat(500)).len(), 200);
    }
}
