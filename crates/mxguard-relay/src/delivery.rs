//! Forwarding: the queue runner that hands spooled mail to the primary.
//!
//! Each message is tried as soon as it is accepted, then on the retry
//! schedule (with jitter) until its lifetime ends. A destination that
//! cannot be reached at all is marked down; while it is down a probe asks
//! it for a greeting every `probe_interval`, and the moment it answers every
//! message waiting for it is due again, oldest first — at no more than
//! `destination_concurrency` connections and `destination_rate` messages a
//! second, so that a primary coming back is not flooded.
//!
//! Where mail goes (RFC 5321 §5.1): a configured domain goes to its
//! `primary`, or else to its MX hosts more preferred than this relay; any
//! other domain (only delivery status notifications go there) to its MX
//! hosts. The relay never delivers to itself.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use mxguard_queue::{DeliveryState, Envelope, QueueId, RecipientStatus, Spool};
use mxguard_smtp::Reply;
use mxguard_smtp::client::{ClientConfig, Connection, SmtpError};
use rand::Rng;
use tokio::sync::{Notify, Semaphore};

use crate::callout::{Lookup, Primary, sanitize};
use crate::config::{DeliveryConfig, TlsPolicy};
use crate::events::{Events, MailEvent};
use crate::hops::{Me, Whose, next_hops};
use crate::metrics::Metrics;

/// What one recipient's attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Try again later.
    Transient,
    /// Give up on this recipient.
    Permanent,
}

/// The class of a reply, by its first digit (RFC 5321 §4.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyClass {
    Positive,
    Intermediate,
    TransientNegative,
    PermanentNegative,
    /// A code outside 200–599: a broken server.
    Malformed,
}

impl ReplyClass {
    pub fn of(reply: &Reply) -> ReplyClass {
        match reply.code {
            200..=299 => ReplyClass::Positive,
            300..=399 => ReplyClass::Intermediate,
            400..=499 => ReplyClass::TransientNegative,
            500..=599 => ReplyClass::PermanentNegative,
            _ => ReplyClass::Malformed,
        }
    }
}

/// The outcome a reply to RCPT or to the end of DATA means.
pub fn outcome_of(reply: &Reply) -> Outcome {
    match ReplyClass::of(reply) {
        ReplyClass::Positive => Outcome::Delivered,
        // 354 where a final answer was due, or nonsense: the server is
        // confused; nothing is known to be delivered or refused.
        ReplyClass::Intermediate | ReplyClass::Malformed => Outcome::Transient,
        ReplyClass::TransientNegative => Outcome::Transient,
        ReplyClass::PermanentNegative => Outcome::Permanent,
    }
}

/// Whether a failure to talk means "the destination is not there" (as
/// opposed to a problem in this conversation).
pub fn is_unreachable(e: &SmtpError) -> bool {
    match e {
        SmtpError::Refused | SmtpError::ConnectTimeout(_) => true,
        SmtpError::Timeout { .. }
        | SmtpError::Deadline { .. }
        | SmtpError::Closed { .. }
        | SmtpError::Protocol(_)
        | SmtpError::Io(_) => false,
    }
}

/// The wait before attempt `attempts + 1`, with jitter.
pub fn backoff<R: Rng + ?Sized>(cfg: &DeliveryConfig, attempts: u32, rng: &mut R) -> Duration {
    let i = (attempts.saturating_sub(1) as usize).min(cfg.retry.len() - 1);
    let base = cfg.retry[i].as_secs_f64();
    let spread = if cfg.jitter > 0.0 {
        rng.random_range(-cfg.jitter..=cfg.jitter)
    } else {
        0.0
    };
    Duration::from_secs_f64((base * (1.0 + spread)).max(0.001))
}

/// Where one domain's mail goes.
#[derive(Debug, Clone)]
pub enum Route {
    /// A configured domain: its primary, STARTTLS policy.
    Backed { primary: Primary, tls: TlsPolicy },
    /// Any other domain (notices to senders): its MX hosts.
    Foreign,
}

/// What a queue listing shows about a message.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueueItem {
    pub id: String,
    pub received_at: String,
    pub from: String,
    pub size: u64,
    pub attempts: u32,
    pub next_attempt: Option<String>,
    pub held: bool,
    pub recipients: Vec<QueueRecipient>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct QueueRecipient {
    pub address: String,
    pub status: &'static str,
    pub last_reply: Option<String>,
    pub last_host: Option<String>,
}

/// A queue listing entry, from the spool.
pub fn queue_item(entry: &mxguard_queue::Entry) -> QueueItem {
    let e = &entry.envelope;
    let s = &entry.state;
    QueueItem {
        id: e.id.to_string(),
        received_at: humantime::format_rfc3339_seconds(e.received_at).to_string(),
        from: e.mail_from.clone(),
        size: entry.size,
        attempts: s.attempts,
        next_attempt: s
            .next_attempt
            .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        held: s.held,
        recipients: s
            .recipients
            .iter()
            .map(|r| QueueRecipient {
                address: r.address.clone(),
                status: match r.status {
                    RecipientStatus::Pending => "pending",
                    RecipientStatus::Delivered => "delivered",
                    RecipientStatus::Failed => "failed",
                },
                last_reply: r.last_reply.clone(),
                last_host: r.last_host.clone(),
            })
            .collect(),
    }
}

#[derive(Debug, Default)]
struct Sched {
    /// What to try and when, by the message's first destination: (due, id),
    /// so each destination's mail is in order and the runner looks only at
    /// the head of each.
    due: HashMap<String, BTreeSet<(SystemTime, QueueId)>>,
    when: HashMap<QueueId, (SystemTime, String)>,
    running: HashSet<QueueId>,
    held: HashSet<QueueId>,
    /// Domains each waiting message still has recipients in.
    domains: HashMap<QueueId, Vec<String>>,
    /// Destinations that could not be reached, since when.
    down: HashMap<String, SystemTime>,
    /// Every queued message by arrival, held or not: the oldest is the
    /// first (for `/metrics` without reading the spool).
    arrivals: BTreeSet<(SystemTime, QueueId)>,
    arrived: HashMap<QueueId, SystemTime>,
}

impl Sched {
    fn arrive(&mut self, id: &QueueId, at: SystemTime) {
        if let Some(old) = self.arrived.insert(id.clone(), at) {
            self.arrivals.remove(&(old, id.clone()));
        }
        self.arrivals.insert((at, id.clone()));
    }

    fn depart(&mut self, id: &QueueId) {
        if let Some(at) = self.arrived.remove(id) {
            self.arrivals.remove(&(at, id.clone()));
        }
    }
}

impl Sched {
    fn first_domain(&self, id: &QueueId) -> String {
        self.domains
            .get(id)
            .and_then(|d| d.first().cloned())
            .unwrap_or_default()
    }

    /// Schedule (or move) `id` to `at`.
    fn put(&mut self, id: QueueId, at: SystemTime) {
        self.take(&id);
        let domain = self.first_domain(&id);
        self.due
            .entry(domain.clone())
            .or_default()
            .insert((at, id.clone()));
        self.when.insert(id, (at, domain));
    }

    /// Unschedule `id`; when it was due.
    fn take(&mut self, id: &QueueId) -> Option<SystemTime> {
        let (at, domain) = self.when.remove(id)?;
        if let Some(set) = self.due.get_mut(&domain) {
            set.remove(&(at, id.clone()));
            if set.is_empty() {
                self.due.remove(&domain);
            }
        }
        Some(at)
    }
}

/// Per-destination limits.
#[derive(Debug)]
struct Gate {
    slots: Arc<Semaphore>,
    next_start: Mutex<Instant>,
}

/// The queue runner.
#[derive(Debug)]
pub struct Delivery {
    spool: Arc<dyn Spool>,
    cfg: DeliveryConfig,
    routes: std::sync::RwLock<HashMap<String, Route>>,
    lookup: Arc<dyn Lookup>,
    helo: String,
    mx_port: u16,
    own: Vec<SocketAddr>,
    events: Arc<Events>,
    metrics: Arc<Metrics>,
    mirror: Arc<crate::mirror::Mirror>,
    /// Attempts in progress, for a shutdown that lets them finish.
    inflight: std::sync::atomic::AtomicUsize,
    idle: Notify,
    sched: Mutex<Sched>,
    gates: Mutex<HashMap<String, Arc<Gate>>>,
    /// Open connections waiting for the next message, by address.
    pool: Mutex<HashMap<(SocketAddr, TlsPolicy), Vec<Idle>>>,
    last_probe: Mutex<Instant>,
    wake: Notify,
    dsn: crate::dsn::Notices,
}

/// Who builds the runner.
#[derive(Debug)]
pub struct DeliveryParts {
    pub spool: Arc<dyn Spool>,
    pub cfg: DeliveryConfig,
    pub routes: HashMap<String, Route>,
    pub lookup: Arc<dyn Lookup>,
    pub helo: String,
    pub mx_port: u16,
    pub own: Vec<SocketAddr>,
    pub events: Arc<Events>,
    pub metrics: Arc<Metrics>,
    /// Told what each primary advertises.
    pub mirror: Arc<crate::mirror::Mirror>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

impl Delivery {
    pub fn new(p: DeliveryParts) -> Arc<Delivery> {
        let dsn = crate::dsn::Notices::new(p.helo.clone(), p.cfg.dsn);
        Arc::new(Delivery {
            spool: p.spool,
            cfg: p.cfg,
            routes: std::sync::RwLock::new(p.routes),
            inflight: std::sync::atomic::AtomicUsize::new(0),
            idle: Notify::new(),
            lookup: p.lookup,
            helo: p.helo,
            mx_port: p.mx_port,
            own: p.own,
            events: p.events,
            metrics: p.metrics,
            mirror: p.mirror,
            sched: Mutex::new(Sched::default()),
            gates: Mutex::new(HashMap::new()),
            pool: Mutex::new(HashMap::new()),
            last_probe: Mutex::new(Instant::now()),
            wake: Notify::new(),
            dsn,
        })
    }

    /// Schedule everything in the spool (at start).
    pub fn load(&self) -> Result<usize, mxguard_queue::SpoolError> {
        let entries = self.spool.list()?;
        let now = SystemTime::now();
        let mut s = lock(&self.sched);
        for e in &entries {
            let id = e.envelope.id.clone();
            s.arrive(&id, e.envelope.received_at);
            s.domains.insert(id.clone(), pending_domains(&e.state));
            if e.state.held {
                s.held.insert(id);
                continue;
            }
            let at = e.state.next_attempt.unwrap_or(now);
            s.put(id, at);
        }
        drop(s);
        self.refresh_gauges();
        self.wake.notify_one();
        Ok(entries.len())
    }

    /// A message was just accepted: try it now.
    pub fn enqueue(&self, envelope: &Envelope) {
        let mut s = lock(&self.sched);
        let id = envelope.id.clone();
        let mut domains: Vec<String> = envelope.recipients.iter().map(|r| domain_of(r)).collect();
        domains.sort();
        domains.dedup();
        s.domains.insert(id.clone(), domains);
        s.arrive(&id, envelope.received_at);
        let now = SystemTime::now();
        s.put(id, now);
        drop(s);
        self.refresh_gauges();
        self.wake.notify_one();
    }

    fn schedule(&self, id: &QueueId, at: SystemTime) {
        let mut s = lock(&self.sched);
        s.put(id.clone(), at);
        drop(s);
        self.wake.notify_one();
    }

    fn unschedule(&self, id: &QueueId) {
        let mut s = lock(&self.sched);
        s.take(id);
    }

    /// Try `id` now (or everything, with None), even before its time.
    pub fn flush(&self, id: Option<&QueueId>) -> usize {
        let now = SystemTime::now();
        let ids: Vec<QueueId> = {
            let s = lock(&self.sched);
            match id {
                Some(id) if s.when.contains_key(id) => vec![id.clone()],
                Some(_) => vec![],
                None => s.when.keys().cloned().collect(),
            }
        };
        for id in &ids {
            self.schedule(id, now);
        }
        ids.len()
    }

    /// Stop trying `id` until released. False if it is not queued.
    pub fn hold(&self, id: &QueueId) -> Result<bool, mxguard_queue::SpoolError> {
        let mut state = match self.spool.state(id) {
            Ok(s) => s,
            Err(mxguard_queue::SpoolError::NotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        state.held = true;
        self.spool.save_state(id, &state)?;
        self.unschedule(id);
        lock(&self.sched).held.insert(id.clone());
        Ok(true)
    }

    pub fn release(&self, id: &QueueId) -> Result<bool, mxguard_queue::SpoolError> {
        let mut state = match self.spool.state(id) {
            Ok(s) => s,
            Err(mxguard_queue::SpoolError::NotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        state.held = false;
        state.next_attempt = None;
        self.spool.save_state(id, &state)?;
        lock(&self.sched).held.remove(id);
        self.schedule(id, SystemTime::now());
        Ok(true)
    }

    /// Remove `id` from the queue for good (no notice is sent). Blocking:
    /// an attempt in progress is waited for (up to 30 s) first.
    pub fn delete(&self, id: &QueueId) -> Result<bool, mxguard_queue::SpoolError> {
        let start = Instant::now();
        loop {
            {
                let mut s = lock(&self.sched);
                if !s.running.contains(id) {
                    // Not picked again while we remove it.
                    s.take(id);
                    break;
                }
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err(mxguard_queue::SpoolError::Io {
                    context: format!("{id} is still being delivered; try again"),
                    source: std::io::Error::other("busy"),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        match self.spool.remove(id) {
            Ok(()) => {}
            Err(mxguard_queue::SpoolError::NotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        }
        self.forget(id);
        Ok(true)
    }

    fn forget(&self, id: &QueueId) {
        self.unschedule(id);
        let mut s = lock(&self.sched);
        s.held.remove(id);
        s.domains.remove(id);
        s.depart(id);
        drop(s);
        self.refresh_gauges();
    }

    /// When the oldest queued message arrived.
    pub fn oldest_arrival(&self) -> Option<SystemTime> {
        lock(&self.sched).arrivals.first().map(|(at, _)| *at)
    }

    /// New routes after a reload; messages already queued follow them
    /// from their next attempt.
    pub fn set_routes(&self, routes: HashMap<String, Route>) {
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = routes;
    }

    /// Wait until no attempt is in progress, or `grace` has passed; true if
    /// none is left. (Call after the runner has stopped picking new ones.)
    pub async fn drain(&self, grace: Duration) -> bool {
        use std::sync::atomic::Ordering;
        let end = tokio::time::Instant::now() + grace;
        loop {
            let idle = self.idle.notified();
            if self.inflight.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if tokio::time::timeout_at(end, idle).await.is_err() {
                return self.inflight.load(Ordering::SeqCst) == 0;
            }
        }
    }

    /// Destinations now marked down.
    pub fn down(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.sched).down.keys().cloned().collect();
        v.sort();
        v
    }

    fn refresh_gauges(&self) {
        let s = lock(&self.sched);
        self.metrics.set_queue_depth(s.domains.len() as u64);
    }

    /// Run until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        let limit = Arc::new(Semaphore::new(self.cfg.concurrency));
        let prober = tokio::spawn(self.clone().probe_loop());
        let _prober = AbortOnDrop(prober);
        loop {
            let now = SystemTime::now();
            let mut next_wait = Duration::from_secs(3600);
            // The oldest due message among destinations with a free place
            // (ids sort by arrival); its place is taken here, so that each
            // destination's mail starts in order and a full destination
            // holds back only its own.
            let mut full: HashSet<String> = HashSet::new();
            loop {
                let picked = {
                    let mut s = lock(&self.sched);
                    let mut best: Option<(SystemTime, QueueId, String)> = None;
                    for (domain, set) in &s.due {
                        let Some((at, id)) = set.iter().next() else {
                            continue;
                        };
                        if *at > now {
                            next_wait = next_wait.min(at.duration_since(now).unwrap_or_default());
                            continue;
                        }
                        if full.contains(domain) {
                            continue;
                        }
                        if best
                            .as_ref()
                            .is_none_or(|(bat, bid, _)| (at, id) < (bat, bid))
                        {
                            best = Some((*at, id.clone(), domain.clone()));
                        }
                    }
                    match best {
                        None => None,
                        Some((_, id, domain)) => {
                            match self.gate(&domain).slots.clone().try_acquire_owned() {
                                Ok(slot) => {
                                    s.take(&id);
                                    s.running.insert(id.clone());
                                    Some(Some((id, domain, slot)))
                                }
                                Err(_) => {
                                    full.insert(domain);
                                    Some(None)
                                }
                            }
                        }
                    }
                };
                let picked = match picked {
                    None => break,
                    Some(None) => continue,
                    Some(Some(p)) => Some(p),
                };
                let Some((id, domain, slot)) = picked else {
                    break;
                };
                let permit = match limit.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return,
                };
                let me = self.clone();
                self.inflight
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let _permit = permit;
                    me.attempt(&id, Some((domain, slot))).await;
                    lock(&me.sched).running.remove(&id);
                    me.inflight
                        .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    me.idle.notify_waiters();
                    me.wake.notify_one();
                });
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(next_wait) => {}
            }
        }
    }

    async fn probe_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.cfg.probe_interval.min(Duration::from_secs(1))).await;
            self.close_idle(false).await;
            if !self.probe_due() {
                continue;
            }
            let down: Vec<String> = lock(&self.sched).down.keys().cloned().collect();
            for domain in down {
                if self.probe(&domain).await {
                    tracing::info!(target: "mxguard::delivery", %domain, "destination answers again; flushing its mail");
                    self.recovered(&domain);
                }
            }
        }
    }

    /// Whether a probe round is due (probe_interval since the last one).
    fn probe_due(&self) -> bool {
        let mut last = lock(&self.last_probe);
        if last.elapsed() >= self.cfg.probe_interval {
            *last = Instant::now();
            true
        } else {
            false
        }
    }

    /// QUIT connections idle too long (all of them with `all`).
    pub async fn close_idle(&self, all: bool) {
        let expired: Vec<Idle> = {
            let mut pool = lock(&self.pool);
            let mut out = Vec::new();
            for list in pool.values_mut() {
                let (old, keep): (Vec<Idle>, Vec<Idle>) = std::mem::take(list)
                    .into_iter()
                    .partition(|i| all || i.since.elapsed() >= IDLE_KEEP);
                *list = keep;
                out.extend(old);
            }
            out
        };
        for mut idle in expired {
            idle.conn.quit().await;
        }
    }

    /// Make every message waiting for `domain` due now (oldest first: the
    /// ids sort by arrival).
    fn recovered(&self, domain: &str) {
        let now = SystemTime::now();
        let ids: Vec<QueueId> = {
            let mut s = lock(&self.sched);
            s.down.remove(domain);
            let mut ids: Vec<QueueId> = s
                .domains
                .iter()
                .filter(|(id, ds)| ds.iter().any(|d| d == domain) && !s.held.contains(*id))
                .map(|(id, _)| id.clone())
                .collect();
            ids.sort();
            ids
        };
        for id in ids {
            if lock(&self.sched).when.contains_key(&id) {
                self.schedule(&id, now);
            }
        }
    }

    /// Whether the destination greets us now.
    async fn probe(&self, domain: &str) -> bool {
        let Ok(targets) = self.targets(domain).await else {
            return false;
        };
        for (_, addr) in targets {
            let cfg = self.client_config(Duration::from_secs(10));
            if let Ok((mut conn, banner)) = Connection::connect(addr, cfg).await {
                let ok = banner.is_positive()
                    && matches!(conn.hello().await, Ok((r, _)) if r.is_positive());
                conn.quit().await;
                if ok {
                    return true;
                }
            }
        }
        false
    }

    fn client_config(&self, limit: Duration) -> ClientConfig {
        ClientConfig {
            helo: self.helo.clone(),
            connect_timeout: self.cfg.connect_timeout.min(limit),
            command_timeout: self.cfg.command_timeout.min(limit),
            // Opportunistic TLS to an MX does not authenticate the server
            // (RFC 7435); the certificate verdict is recorded, not enforced.
            roots: Arc::new(rustls::RootCertStore::empty()),
            deadline: None,
        }
    }

    fn route(&self, domain: &str) -> Route {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(domain)
            .cloned()
            .unwrap_or(Route::Foreign)
    }

    /// The addresses to deliver `domain`'s mail to, in order.
    async fn targets(&self, domain: &str) -> Result<Vec<(String, SocketAddr)>, String> {
        let route = self.route(domain);
        let whose = match &route {
            Route::Backed { primary, .. } => Whose::Backed(primary),
            Route::Foreign => Whose::Foreign,
        };
        let me = Me {
            hostname: &self.helo,
            mx_port: self.mx_port,
            own: &self.own,
        };
        next_hops(self.lookup.as_ref(), whose, domain, me).await
    }

    fn gate(&self, domain: &str) -> Arc<Gate> {
        lock(&self.gates)
            .entry(domain.to_owned())
            .or_insert_with(|| {
                Arc::new(Gate {
                    slots: Arc::new(Semaphore::new(self.cfg.destination_concurrency)),
                    next_start: Mutex::new(Instant::now()),
                })
            })
            .clone()
    }

    /// One delivery attempt of one message.
    async fn attempt(
        &self,
        id: &QueueId,
        mut first_slot: Option<(String, tokio::sync::OwnedSemaphorePermit)>,
    ) {
        let (envelope, message) = match self.spool.read(id) {
            Ok(m) => m,
            Err(mxguard_queue::SpoolError::NotFound(_)) => {
                self.forget(id);
                return;
            }
            Err(e) => {
                tracing::error!(target: "mxguard::delivery", %id, error = %e, "cannot read a queued message; retrying later");
                self.schedule(id, SystemTime::now() + Duration::from_secs(60));
                return;
            }
        };
        let mut state = match self.spool.state(id) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(target: "mxguard::delivery", %id, error = %e, "cannot read a message's delivery state; retrying later");
                self.schedule(id, SystemTime::now() + Duration::from_secs(60));
                return;
            }
        };
        if state.held {
            lock(&self.sched).held.insert(id.clone());
            return;
        }
        let now = SystemTime::now();
        state.attempts += 1;
        state.first_attempt.get_or_insert(now);
        state.last_attempt = Some(now);

        let mut by_domain: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, r) in state.recipients.iter().enumerate() {
            if r.status != RecipientStatus::Pending {
                continue;
            }
            let d = domain_of(&r.address);
            match by_domain.iter_mut().find(|(x, _)| *x == d) {
                Some((_, v)) => v.push(i),
                None => by_domain.push((d, vec![i])),
            }
        }
        let mut newly_failed = Vec::new();
        for (domain, idx) in by_domain {
            let rcpts: Vec<String> = idx
                .iter()
                .map(|&i| state.recipients[i].address.clone())
                .collect();
            // A destination known to be down is left to the probe, which
            // makes its mail due the moment it answers: no connection, no
            // place taken, no pacing.
            let down_since = lock(&self.sched).down.get(&domain).copied();
            let result = if let Some(since) = down_since {
                Attempt::Unreachable(format!(
                    "{domain} has not answered since {}; waiting for it to answer a probe",
                    humantime::format_rfc3339_seconds(since)
                ))
            } else {
                let gate = self.gate(&domain);
                let _slot = match first_slot.take() {
                    Some((d, slot)) if d == domain => slot,
                    _ => match gate.slots.clone().acquire_owned().await {
                        Ok(slot) => slot,
                        Err(_) => return,
                    },
                };
                self.pace(&gate).await;
                self.deliver(&domain, &envelope, &message, &rcpts).await
            };
            match &result {
                Attempt::Unreachable(why) => {
                    let mut s = lock(&self.sched);
                    if !s.down.contains_key(&domain) {
                        tracing::info!(target: "mxguard::delivery", %domain, %why, "destination unreachable; probing it until it answers");
                        s.down.insert(domain.clone(), now);
                    }
                }
                Attempt::Talked { .. } => {
                    lock(&self.sched).down.remove(&domain);
                }
            }
            for (k, &i) in idx.iter().enumerate() {
                let (outcome, reply, host) = result.for_recipient(k);
                let r = &mut state.recipients[i];
                r.last_reply = Some(reply.clone());
                r.last_host = host.clone();
                let event_outcome = match outcome {
                    Outcome::Delivered => {
                        r.status = RecipientStatus::Delivered;
                        self.metrics.delivered();
                        "delivered"
                    }
                    Outcome::Permanent => {
                        r.status = RecipientStatus::Failed;
                        newly_failed.push(i);
                        self.metrics.bounced();
                        "bounced"
                    }
                    Outcome::Transient => {
                        self.metrics.deferred();
                        "deferred"
                    }
                };
                self.events.emit(MailEvent::Delivery {
                    queue_id: id.to_string(),
                    rcpt: r.address.clone(),
                    outcome: event_outcome,
                    host,
                    reply,
                    attempt: state.attempts,
                });
            }
        }

        // Lifetime over: what is still pending fails now.
        let age = now.duration_since(envelope.received_at).unwrap_or_default();
        if age >= self.cfg.lifetime {
            for (i, r) in state.recipients.iter_mut().enumerate() {
                if r.status == RecipientStatus::Pending {
                    r.status = RecipientStatus::Failed;
                    let last = r.last_reply.clone().unwrap_or_default();
                    r.last_reply = Some(format!(
                        "gave up after {} in the queue; last: {last}",
                        humantime::format_duration(Duration::from_secs(age.as_secs()))
                    ));
                    newly_failed.push(i);
                    self.metrics.bounced();
                    self.events.emit(MailEvent::Delivery {
                        queue_id: id.to_string(),
                        rcpt: r.address.clone(),
                        outcome: "expired",
                        host: r.last_host.clone(),
                        reply: r.last_reply.clone().unwrap_or_default(),
                        attempt: state.attempts,
                    });
                }
            }
        }
        // Notices.
        let mut notices = Vec::new();
        if !newly_failed.is_empty() {
            if let Some(n) = self.dsn.failure(&envelope, &state, &newly_failed, &message) {
                notices.push(n);
            }
            for &i in &newly_failed {
                state.recipients[i].failure_notified = true;
            }
        }
        let pending = !state.is_done();
        if pending && age >= self.cfg.warn_after && !state.delay_notified {
            let until = envelope.received_at + self.cfg.lifetime;
            if let Some(n) = self.dsn.delay(&envelope, &state, until, &message) {
                notices.push(n);
            }
            state.delay_notified = true;
        }
        for (env, text) in notices {
            self.queue_notice(env, &text).await;
        }

        if !pending {
            // Off the runtime's threads: the removal waits for directory
            // fsyncs, which then group with other deliveries' removals
            // instead of holding up the whole runner.
            let (spool, rid) = (self.spool.clone(), id.clone());
            let removed = tokio::task::spawn_blocking(move || spool.remove(&rid))
                .await
                .unwrap_or_else(|e| {
                    Err(mxguard_queue::SpoolError::Io {
                        context: format!("removing {id}"),
                        source: std::io::Error::other(e.to_string()),
                    })
                });
            match removed {
                Ok(()) | Err(mxguard_queue::SpoolError::NotFound(_)) => self.forget(id),
                Err(e) => {
                    tracing::error!(target: "mxguard::delivery", %id, error = %e, "delivered but cannot remove from the spool");
                }
            }
            return;
        }
        let wait = backoff(&self.cfg, state.attempts, &mut rand::rng());
        let next = now + wait;
        state.next_attempt = Some(next);
        if let Err(e) = self.spool.save_state(id, &state) {
            tracing::error!(target: "mxguard::delivery", %id, error = %e, "cannot save delivery state");
        }
        {
            let mut s = lock(&self.sched);
            s.domains.insert(id.clone(), pending_domains(&state));
        }
        self.schedule(id, next);
    }

    /// Wait for this destination's rate limit.
    async fn pace(&self, gate: &Gate) {
        if self.cfg.destination_rate <= 0.0 {
            return;
        }
        let spacing = Duration::from_secs_f64(1.0 / self.cfg.destination_rate);
        let start = {
            let mut next = lock(&gate.next_start);
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + spacing;
            start
        };
        tokio::time::sleep_until(start.into()).await;
    }

    /// Put a notice in the spool and schedule it.
    async fn queue_notice(&self, envelope: Envelope, text: &[u8]) {
        let spool = self.spool.clone();
        let env = envelope.clone();
        let text = text.to_vec();
        let stored = tokio::task::spawn_blocking(move || {
            let mut inc = spool.begin(&env)?;
            inc.write(&text)?;
            inc.commit()
        })
        .await;
        match stored {
            Ok(Ok(_)) => {
                self.metrics.notice();
                self.enqueue(&envelope);
            }
            Ok(Err(e)) => {
                tracing::error!(target: "mxguard::delivery", error = %e, "cannot queue a delivery notice")
            }
            Err(e) => {
                tracing::error!(target: "mxguard::delivery", error = %e, "cannot queue a delivery notice")
            }
        }
    }

    /// Deliver `message` to `rcpts` of `domain`, host after host.
    async fn deliver(
        &self,
        domain: &str,
        envelope: &Envelope,
        message: &[u8],
        rcpts: &[String],
    ) -> Attempt {
        let targets = match self.targets(domain).await {
            Ok(t) => t,
            Err(e) => return Attempt::Unreachable(e),
        };
        let tls = match self.route(domain) {
            Route::Backed { tls, .. } => tls,
            Route::Foreign => TlsPolicy::Opportunistic,
        };
        let mut why = Vec::new();
        let mut reached = false;
        for (host, addr) in targets {
            match self
                .deliver_to(&host, addr, tls, envelope, message, rcpts)
                .await
            {
                Ok(results) => return Attempt::Talked { host, results },
                // Not greeted, or the conversation broke: the next host
                // (RFC 5321 §5.1).
                Err((e, talked)) => {
                    reached |= talked;
                    why.push(format!("{host} [{addr}]: {e}"));
                }
            }
        }
        let text = why.join("; ");
        if reached {
            Attempt::Talked {
                host: String::new(),
                results: rcpts
                    .iter()
                    .map(|_| (Outcome::Transient, text.clone()))
                    .collect(),
            }
        } else {
            Attempt::Unreachable(text)
        }
    }

    /// One message over one connection: a connection left open by an
    /// earlier delivery to the same address if there is one, else a new
    /// one. Err carries whether the server was reached.
    async fn deliver_to(
        &self,
        host: &str,
        addr: SocketAddr,
        tls: TlsPolicy,
        envelope: &Envelope,
        message: &[u8],
        rcpts: &[String],
    ) -> Result<Vec<(Outcome, String)>, (String, bool)> {
        while let Some(mut idle) = self.take_idle(addr, tls) {
            match self
                .transact(&mut idle.conn, &idle.caps, envelope, message, rcpts)
                .await
            {
                Ok((results, clean)) => {
                    idle.uses += 1;
                    self.keep_or_close(addr, tls, idle, clean).await;
                    return Ok(results);
                }
                // Closed while idle: nothing was accepted; a fresh one.
                Err(TransactError {
                    mail_accepted: false,
                    ..
                }) => continue,
                Err(e) => return Err((e.text, true)),
            }
        }
        let cfg = self.client_config(self.cfg.command_timeout);
        let (mut conn, banner) = Connection::connect(addr, cfg)
            .await
            .map_err(|e| (e.to_string(), !is_unreachable(&e)))?;
        let caps = match self.open_session(&mut conn, banner, host, tls).await {
            Ok(c) => c,
            Err(e) => {
                conn.quit().await;
                return Err((e, true));
            }
        };
        // A configured domain's primary: the relay holds itself to what it
        // advertises.
        if let Some(first) = rcpts.first() {
            let domain = domain_of(first);
            if matches!(self.route(&domain), Route::Backed { .. }) {
                self.mirror.learn(&domain, &caps);
            }
        }
        match self
            .transact(&mut conn, &caps, envelope, message, rcpts)
            .await
        {
            Ok((results, clean)) => {
                let idle = Idle {
                    conn,
                    caps,
                    since: Instant::now(),
                    uses: 1,
                };
                self.keep_or_close(addr, tls, idle, clean).await;
                Ok(results)
            }
            Err(e) => {
                conn.quit().await;
                Err((e.text, true))
            }
        }
    }

    fn take_idle(&self, addr: SocketAddr, tls: TlsPolicy) -> Option<Idle> {
        let mut pool = lock(&self.pool);
        let list = pool.get_mut(&(addr, tls))?;
        while let Some(idle) = list.pop() {
            if idle.since.elapsed() < IDLE_KEEP {
                return Some(idle);
            }
        }
        None
    }

    /// Keep a connection for the next message to the same address, or say
    /// goodbye.
    async fn keep_or_close(&self, addr: SocketAddr, tls: TlsPolicy, mut idle: Idle, clean: bool) {
        if clean && idle.uses < MAX_USES {
            let mut pool = lock(&self.pool);
            let list = pool.entry((addr, tls)).or_default();
            if list.len() < self.cfg.destination_concurrency {
                idle.since = Instant::now();
                list.push(idle);
                return;
            }
        }
        idle.conn.quit().await;
    }

    /// Greeting, EHLO, STARTTLS: a connection ready for MAIL.
    async fn open_session(
        &self,
        conn: &mut Connection,
        banner: Reply,
        host: &str,
        tls: TlsPolicy,
    ) -> Result<mxguard_smtp::Capabilities, String> {
        let text = |e: SmtpError| e.to_string();
        if !banner.is_positive() {
            return Err(format!("greeting {}", sanitize(&banner.one_line())));
        }
        let (hello, mut caps) = conn.hello().await.map_err(text)?;
        if !hello.is_positive() {
            return Err(format!("EHLO {}", sanitize(&hello.one_line())));
        }
        let greets_as = hello
            .lines
            .first()
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or("");
        if greets_as.eq_ignore_ascii_case(&self.helo) {
            return Err(format!("{host} greets as {}: it is this relay", self.helo));
        }
        if caps.starttls {
            let out = conn.starttls(host).await.map_err(text)?;
            match out.handshake {
                Some(Ok(_)) => {
                    let (again, c) = conn.hello().await.map_err(text)?;
                    if !again.is_positive() {
                        return Err(format!("EHLO after STARTTLS {}", again.one_line()));
                    }
                    caps = c;
                }
                Some(Err(e)) => return Err(format!("TLS handshake failed: {e}")),
                None if tls == TlsPolicy::Required => {
                    return Err(format!("STARTTLS refused: {}", out.reply.one_line()));
                }
                None => {}
            }
        } else if tls == TlsPolicy::Required {
            return Err("STARTTLS is required for this domain and not offered".into());
        }
        Ok(caps)
    }

    /// One transaction on a ready connection: the per-recipient results,
    /// and whether the connection is clean for another (no transaction
    /// left open).
    async fn transact(
        &self,
        conn: &mut Connection,
        caps: &mxguard_smtp::Capabilities,
        envelope: &Envelope,
        message: &[u8],
        rcpts: &[String],
    ) -> Result<(Vec<(Outcome, String)>, bool), TransactError> {
        let early = |e: SmtpError| TransactError {
            text: e.to_string(),
            mail_accepted: false,
        };
        let late = |e: SmtpError| TransactError {
            text: e.to_string(),
            mail_accepted: true,
        };
        if envelope.smtputf8 && !caps.smtputf8 {
            // RFC 6531 §3.2: such a message cannot go to a server without
            // SMTPUTF8.
            let r = rcpts
                .iter()
                .map(|_| {
                    (
                        Outcome::Permanent,
                        "the message needs SMTPUTF8 and the primary does not offer it".into(),
                    )
                })
                .collect();
            return Ok((r, true));
        }
        let mut mail = format!("MAIL FROM:<{}>", envelope.mail_from);
        if caps.size.is_some() {
            mail.push_str(&format!(" SIZE={}", message.len()));
        }
        if envelope.body == mxguard_queue::Body::EightBitMime && caps.eightbitmime {
            mail.push_str(" BODY=8BITMIME");
        }
        if envelope.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        let m = conn.command(&mail).await.map_err(early)?;
        match outcome_of(&m) {
            Outcome::Delivered => {}
            o @ (Outcome::Transient | Outcome::Permanent) => {
                let line = sanitize(&m.one_line());
                let r = rcpts
                    .iter()
                    .map(|_| (o.clone(), format!("MAIL: {line}")))
                    .collect();
                // A 421 (or any 4xx at MAIL on a reused connection) may be
                // the server closing: not clean.
                return Ok((r, false));
            }
        }
        let mut results = Vec::with_capacity(rcpts.len());
        let mut accepted = 0;
        for r in rcpts {
            let reply = conn
                .command(&format!("RCPT TO:<{r}>"))
                .await
                .map_err(late)?;
            let o = outcome_of(&reply);
            if o == Outcome::Delivered {
                accepted += 1;
            }
            results.push((o, sanitize(&reply.one_line())));
        }
        if accepted == 0 {
            let clean = matches!(conn.command("RSET").await, Ok(r) if r.is_positive());
            return Ok((results, clean));
        }
        let data = conn.command("DATA").await.map_err(late)?;
        if data.code != 354 {
            let o = match outcome_of(&data) {
                Outcome::Permanent => Outcome::Permanent,
                Outcome::Delivered | Outcome::Transient => Outcome::Transient,
            };
            let line = sanitize(&data.one_line());
            for r in results.iter_mut().filter(|(o, _)| *o == Outcome::Delivered) {
                *r = (o.clone(), format!("DATA: {line}"));
            }
            let clean = matches!(conn.command("RSET").await, Ok(r) if r.is_positive());
            return Ok((results, clean));
        }
        let end = conn
            .send_message(message, self.cfg.data_timeout)
            .await
            .map_err(late)?;
        let o = outcome_of(&end);
        let line = sanitize(&end.one_line());
        for r in results.iter_mut().filter(|(o, _)| *o == Outcome::Delivered) {
            *r = (o.clone(), line.clone());
        }
        // 421 at the end of DATA means the server is closing.
        Ok((results, end.code != 421))
    }
}

/// A connection kept open for the next message to the same address.
#[derive(Debug)]
struct Idle {
    conn: Connection,
    caps: mxguard_smtp::Capabilities,
    since: Instant,
    uses: u32,
}

/// How long an open connection waits for the next message, and how many
/// messages it carries at most (its transcript grows with each).
const IDLE_KEEP: Duration = Duration::from_secs(5);
const MAX_USES: u32 = 100;

/// A conversation that broke; `mail_accepted` says whether it got past
/// MAIL (after that, trying again elsewhere could deliver twice).
#[derive(Debug)]
struct TransactError {
    text: String,
    mail_accepted: bool,
}

/// What one attempt at one domain came to.
#[derive(Debug)]
enum Attempt {
    /// No host could be reached at all.
    Unreachable(String),
    /// A conversation took place; one result per recipient.
    Talked {
        host: String,
        results: Vec<(Outcome, String)>,
    },
}

impl Attempt {
    fn for_recipient(&self, k: usize) -> (Outcome, String, Option<String>) {
        match self {
            Attempt::Unreachable(why) => (Outcome::Transient, why.clone(), None),
            Attempt::Talked { host, results } => {
                let (o, r) = results[k].clone();
                (o, r, (!host.is_empty()).then(|| host.clone()))
            }
        }
    }
}

fn pending_domains(state: &DeliveryState) -> Vec<String> {
    let mut d: Vec<String> = state.pending().map(|r| domain_of(&r.address)).collect();
    d.sort();
    d.dedup();
    d
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16) -> Reply {
        Reply {
            code,
            lines: vec!["x".into()],
        }
    }

    #[test]
    fn replies_map_to_outcomes() {
        assert_eq!(outcome_of(&reply(250)), Outcome::Delivered);
        assert_eq!(outcome_of(&reply(251)), Outcome::Delivered);
        assert_eq!(outcome_of(&reply(354)), Outcome::Transient);
        assert_eq!(outcome_of(&reply(421)), Outcome::Transient);
        assert_eq!(outcome_of(&reply(452)), Outcome::Transient);
        assert_eq!(outcome_of(&reply(550)), Outcome::Permanent);
        assert_eq!(outcome_of(&reply(554)), Outcome::Permanent);
        assert_eq!(outcome_of(&reply(699)), Outcome::Transient);
    }

    #[test]
    fn backoff_follows_the_schedule_with_bounded_jitter() {
        let cfg = DeliveryConfig::default();
        let mut rng = rand::rng();
        let mins = |d: Duration| d.as_secs_f64() / 60.0;
        for (attempts, base) in [
            (1, 1.0),
            (2, 5.0),
            (3, 15.0),
            (4, 30.0),
            (5, 60.0),
            (9, 60.0),
        ] {
            for _ in 0..50 {
                let m = mins(backoff(&cfg, attempts, &mut rng));
                assert!(
                    m >= base * 0.9 - 1e-9 && m <= base * 1.1 + 1e-9,
                    "{attempts}: {m}"
                );
            }
        }
        let fixed = DeliveryConfig {
            jitter: 0.0,
            ..DeliveryConfig::default()
        };
        assert_eq!(backoff(&fixed, 2, &mut rng), Duration::from_secs(300));
    }
}
