//! The relay as a running service: listeners, connection limits, and the
//! pieces every session shares, built from a [`Config`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mxguard_queue::Spool;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::callout::{Callout, Lookup, Primary};
use crate::config::{Config, RecipientMode};
use crate::delivery::{Delivery, DeliveryParts, Route};
use crate::events::{Events, MailEvent};
use crate::list::RecipientList;
use crate::policy::{Policy, Validation};
use crate::session::{self, Settings, Shared};

/// Why the relay cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Setup(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Everything a config refers to, loaded and checked: TLS certificate and
/// key, recipient lists. `--check-config` stops after this.
#[derive(Debug)]
pub struct Prepared {
    pub config: Config,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub validations: HashMap<String, Validation>,
}

/// Load what the config points at.
pub fn prepare(config: Config) -> Result<Prepared, StartError> {
    let tls = match (&config.smtp.tls_cert, &config.smtp.tls_key) {
        (Some(cert), Some(key)) => Some(load_tls(&resolve(&config, cert), &resolve(&config, key))?),
        _ => None,
    };
    let mut validations = HashMap::new();
    for d in &config.domains {
        let v = match d.recipients.get_ref() {
            RecipientMode::List => {
                let path = config
                    .recipient_list_path(d)
                    .ok_or_else(|| StartError::Setup("recipient_list missing".into()))?;
                Validation::List(RecipientList::open(&path).map_err(StartError::Setup)?)
            }
            RecipientMode::Callout => Validation::Callout(match &d.primary {
                Some(p) => Primary::parse(p.get_ref()),
                None => Primary::Mx,
            }),
        };
        validations.insert(d.domain(), v);
    }
    Ok(Prepared {
        config,
        tls,
        validations,
    })
}

fn resolve(config: &Config, p: &std::path::Path) -> std::path::PathBuf {
    match &config.base {
        Some(b) if p.is_relative() => b.join(p),
        _ => p.to_owned(),
    }
}

fn load_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, StartError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| StartError::Setup(format!("smtp.tls_cert {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(StartError::Setup(format!(
            "smtp.tls_cert {}: no certificate in the file",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| StartError::Setup(format!("smtp.tls_key {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Setup(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| StartError::Setup(format!("smtp.tls_cert/tls_key: {e}")))?;
    Ok(Arc::new(config))
}

/// What the relay needs from outside the config.
#[derive(Debug, Clone)]
pub struct Options {
    /// DNS, for primaries found through MX records.
    pub lookup: Arc<dyn Lookup>,
    /// Where accepted mail goes.
    pub spool: Arc<dyn Spool>,
    pub events: Arc<Events>,
    /// The port MX hosts listen on: 25, except in a lab.
    pub mx_port: u16,
    /// SPF at ingress (absent: senders are never authenticated, and with
    /// `dsn = "authenticated"` get no notices).
    pub spf: Option<Arc<dyn crate::spf::SpfCheck>>,
}

impl Options {
    /// Everything from outside, with the relay's real defaults.
    pub fn new(lookup: Arc<dyn Lookup>, spool: Arc<dyn Spool>) -> Options {
        Options {
            lookup,
            spool,
            events: Arc::new(Events::new()),
            mx_port: 25,
            spf: None,
        }
    }
}

/// A started relay.
#[derive(Debug)]
pub struct Running {
    smtp_addrs: Vec<SocketAddr>,
    admin_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    shared: Arc<Shared>,
    /// What new sessions start with; replaced by a reload.
    current: watch::Sender<Arc<Shared>>,
    delivery: Arc<Delivery>,
    listen: Vec<SocketAddr>,
}

impl Running {
    /// The addresses actually bound (ports resolved when 0 was asked for).
    pub fn smtp_addrs(&self) -> &[SocketAddr] {
        &self.smtp_addrs
    }

    /// Take a new configuration (SIGHUP): domains, recipient validation,
    /// lists, limits, timeouts, TLS certificate and routes apply to new
    /// sessions and next delivery attempts; sessions in progress keep what
    /// they started with. The callout cache is kept. Listen addresses, the
    /// spool, the admin listener and `[delivery]` need a restart; a change
    /// there is reported and otherwise ignored.
    pub fn reload(&self, prepared: Prepared) -> Vec<String> {
        let Prepared {
            config,
            tls,
            validations,
        } = prepared;
        let mut ignored = Vec::new();
        if config.listen_addrs() != self.listen {
            ignored.push("smtp.listen (restart to change it)".to_owned());
        }
        if config.spool.path != *self.shared.spool_path() {
            ignored.push("spool.path (restart to change it)".to_owned());
        }
        let old = self.current.borrow().clone();
        let settings = Settings {
            hostname: config.hostname.get_ref().trim_end_matches('.').to_owned(),
            max_message_size: config.smtp.max_message_size,
            max_recipients: config.smtp.max_recipients,
            max_line: config.smtp.max_line_length,
            command_timeout: config.smtp.command_timeout,
            data_timeout: config.smtp.data_timeout,
            max_errors: config.smtp.max_errors,
        };
        let next = Arc::new(Shared {
            settings,
            policy: Policy::new(validations, old.policy.callout().clone()),
            spool: old.spool.clone(),
            events: old.events.clone(),
            tls,
            metrics: old.metrics.clone(),
            delivery: old.delivery.clone(),
            spf: old.spf.clone(),
            stopping: old.stopping.clone(),
            spool_path: old.spool_path.clone(),
        });
        self.delivery.set_routes(routes(&config));
        let _ = self.current.send(next);
        ignored
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn delivery(&self) -> &Arc<Delivery> {
        &self.delivery
    }

    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.shared.metrics
    }

    pub fn events(&self) -> &Arc<Events> {
        &self.shared.events
    }

    pub fn callout(&self) -> &Arc<Callout> {
        self.shared.policy.callout()
    }

    /// Stop accepting, give sessions `grace` to finish, save the callout
    /// cache.
    pub async fn shutdown(mut self, grace: Duration) {
        let end = tokio::time::Instant::now() + grace;
        let _ = self.stop.send(true);
        // Sessions finish what they are doing (idle ones are told 421 at
        // once); the queue runner starts nothing new.
        let _ = tokio::time::timeout_at(end, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        // Deliveries in progress are let finish: their outcome is saved.
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        if !self.delivery.drain(left).await {
            tracing::warn!(
                "deliveries still in progress at the end of the grace period; they will be retried"
            );
        }
        self.delivery.close_idle(true).await;
        self.tasks.abort_all();
        let callout = self.shared.policy.callout().clone();
        match tokio::task::spawn_blocking(move || callout.save()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot save the callout cache"),
            Err(e) => tracing::error!(error = %e, "callout cache save failed"),
        }
    }
}

/// Per-client and total connection counts.
#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// Releases a connection's place when the session ends.
struct Slot {
    counts: Arc<Mutex<Counts>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total -= 1;
        if let Some(n) = c.per_client.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_client.remove(&self.ip);
            }
        }
    }
}

/// The state sessions share, without listeners (tests drive sessions over
/// in-memory pipes with it). `own` are the relay's own addresses, never
/// called out to.
pub fn shared(
    config: &Config,
    tls: Option<Arc<rustls::ServerConfig>>,
    validations: HashMap<String, Validation>,
    options: &Options,
    own: Vec<SocketAddr>,
    stopping: watch::Receiver<bool>,
) -> Arc<Shared> {
    let hostname = config.hostname.get_ref().trim_end_matches('.').to_owned();
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let callout = Arc::new(Callout::new(
        config.callout.clone(),
        hostname.clone(),
        options.lookup.clone(),
        &config.spool.path,
        own,
        options.mx_port,
        metrics.clone(),
    ));
    let settings = Settings {
        hostname,
        max_message_size: config.smtp.max_message_size,
        max_recipients: config.smtp.max_recipients,
        max_line: config.smtp.max_line_length,
        command_timeout: config.smtp.command_timeout,
        data_timeout: config.smtp.data_timeout,
        max_errors: config.smtp.max_errors,
    };
    Arc::new(Shared {
        settings,
        policy: Policy::new(validations, callout),
        spool: options.spool.clone(),
        events: options.events.clone(),
        tls,
        metrics,
        delivery: None,
        // SPF only decides who may get notices; without that policy it
        // would cost every sender a DNS round trip for nothing.
        spf: match config.delivery.dsn {
            crate::config::DsnPolicy::Authenticated => options.spf.clone(),
            crate::config::DsnPolicy::Always | crate::config::DsnPolicy::Never => None,
        },
        stopping,
        spool_path: config.spool.path.clone(),
    })
}

/// Where each configured domain's mail goes.
pub fn routes(config: &Config) -> HashMap<String, Route> {
    config
        .domains
        .iter()
        .map(|d| {
            let primary = match &d.primary {
                Some(p) => Primary::parse(p.get_ref()),
                None => Primary::Mx,
            };
            (
                d.domain(),
                Route::Backed {
                    primary,
                    tls: d.tls,
                },
            )
        })
        .collect()
}

/// Bind the listeners and start serving.
pub async fn start(prepared: Prepared, options: Options) -> Result<Running, StartError> {
    let Prepared {
        config,
        tls,
        validations,
    } = prepared;
    let mut listeners = Vec::new();
    for addr in config.listen_addrs() {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        listeners.push(l);
    }
    let smtp_addrs: Vec<SocketAddr> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    let admin_addr: SocketAddr = config
        .admin
        .listen
        .get_ref()
        .parse()
        .map_err(|_| StartError::Setup("admin.listen is not IP:PORT".into()))?;
    let admin_listener =
        TcpListener::bind(admin_addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: admin_addr,
                source,
            })?;
    let admin_addr = admin_listener.local_addr().unwrap_or(admin_addr);
    let (stop, stop_rx) = watch::channel(false);
    let mut base = shared(
        &config,
        tls,
        validations,
        &options,
        smtp_addrs.clone(),
        stop_rx.clone(),
    );
    let delivery = Delivery::new(DeliveryParts {
        spool: options.spool.clone(),
        cfg: config.delivery.clone(),
        routes: routes(&config),
        lookup: options.lookup.clone(),
        helo: base.settings.hostname.clone(),
        mx_port: options.mx_port,
        own: smtp_addrs.clone(),
        events: options.events.clone(),
        metrics: base.metrics.clone(),
        mirror: base.policy.callout().mirror.clone(),
    });
    let queued = delivery
        .load()
        .map_err(|e| StartError::Setup(format!("reading the spool: {e}")))?;
    Arc::get_mut(&mut base).expect("not shared yet").delivery = Some(delivery.clone());
    let shared = base;
    let callout = shared.policy.callout().clone();
    let (token, token_path) = crate::admin::write_token(&config.spool.path).map_err(|e| {
        StartError::Setup(format!(
            "writing {}: {e}",
            config.spool.path.join(crate::admin::TOKEN_FILE).display()
        ))
    })?;
    let counts = Arc::new(Mutex::new(Counts::default()));
    let mut tasks = JoinSet::new();
    {
        let callout = callout.clone();
        let mut stop_rx = stop_rx.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = callout.write_behind() => {}
                _ = stop_rx.wait_for(|s| *s) => {}
            }
        });
    }
    {
        let delivery = delivery.clone();
        let mut stop_rx = stop_rx.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = delivery.run() => {}
                _ = stop_rx.wait_for(|s| *s) => {}
            }
        });
    }
    {
        let app = crate::admin::router(
            token,
            options.spool.clone(),
            delivery.clone(),
            shared.metrics.clone(),
        );
        let mut stop_rx = stop_rx.clone();
        tasks.spawn(async move {
            let serve = axum::serve(admin_listener, app).with_graceful_shutdown(async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "admin listener failed");
            }
        });
    }
    tracing::info!(
        admin = %admin_addr,
        token = %token_path.display(),
        queued,
        "admin listener and queue runner started"
    );
    let limits = (
        config.smtp.max_connections,
        config.smtp.max_connections_per_client,
    );
    let (current, current_rx) = watch::channel(shared.clone());
    for listener in listeners {
        let current_rx = current_rx.clone();
        let counts = counts.clone();
        let stop_rx = stop_rx.clone();
        tasks.spawn(accept_loop(listener, current_rx, counts, limits, stop_rx));
    }
    for a in &smtp_addrs {
        tracing::info!(listen = %a, "relay listening");
    }
    Ok(Running {
        listen: config.listen_addrs(),
        smtp_addrs,
        admin_addr,
        stop,
        tasks,
        shared,
        current,
        delivery,
    })
}

async fn accept_loop(
    listener: TcpListener,
    current: watch::Receiver<Arc<Shared>>,
    counts: Arc<Mutex<Counts>>,
    (max_total, max_per_client): (usize, usize),
    mut stop: watch::Receiver<bool>,
) {
    let mut sessions = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
        };
        let shared = current.borrow().clone();
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: do not spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let refused = {
            let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
            let mine = c.per_client.get(&peer.ip()).copied().unwrap_or(0);
            if c.total >= max_total {
                Some("too many connections")
            } else if mine >= max_per_client {
                Some("too many connections from your address")
            } else {
                c.total += 1;
                *c.per_client.entry(peer.ip()).or_default() += 1;
                None
            }
        };
        if let Some(why) = refused {
            shared.events.emit(MailEvent::Connect {
                client: peer,
                refused: Some(why.into()),
            });
            let host = shared.settings.hostname.clone();
            sessions.spawn(turn_away(stream, host, why));
            continue;
        }
        let slot = Slot {
            counts: counts.clone(),
            ip: peer.ip(),
        };
        let shared = shared.clone();
        sessions.spawn(async move {
            let _slot = slot;
            session::run(shared, Box::new(stream), peer).await;
        });
    }
    // Let running sessions finish (the caller bounds the wait).
    while sessions.join_next().await.is_some() {}
}

async fn turn_away(mut stream: TcpStream, host: String, why: &str) {
    let line = format!("421 4.7.0 {host} Error: {why}; try again later\r\n");
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        stream.write_all(line.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}
