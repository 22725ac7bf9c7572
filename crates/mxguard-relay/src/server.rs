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
}

/// A started relay.
#[derive(Debug)]
pub struct Running {
    smtp_addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    shared: Arc<Shared>,
}

impl Running {
    /// The addresses actually bound (ports resolved when 0 was asked for).
    pub fn smtp_addrs(&self) -> &[SocketAddr] {
        &self.smtp_addrs
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
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
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
) -> Arc<Shared> {
    let hostname = config.hostname.get_ref().trim_end_matches('.').to_owned();
    let callout = Arc::new(Callout::new(
        config.callout.clone(),
        hostname.clone(),
        options.lookup.clone(),
        &config.spool.path,
        own,
        options.mx_port,
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
    })
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
    let shared = shared(&config, tls, validations, &options, smtp_addrs.clone());
    let callout = shared.policy.callout().clone();
    let (stop, stop_rx) = watch::channel(false);
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
    let limits = (
        config.smtp.max_connections,
        config.smtp.max_connections_per_client,
    );
    for listener in listeners {
        let shared = shared.clone();
        let counts = counts.clone();
        let stop_rx = stop_rx.clone();
        tasks.spawn(accept_loop(listener, shared, counts, limits, stop_rx));
    }
    for a in &smtp_addrs {
        tracing::info!(listen = %a, "relay listening");
    }
    Ok(Running {
        smtp_addrs,
        stop,
        tasks,
        shared,
    })
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
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
