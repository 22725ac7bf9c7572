//! `mxguard relay`: load and check the configuration, open the spool, serve
//! until SIGTERM or SIGINT.

use std::sync::Arc;
use std::time::Duration;

use mxguard_dns::{HickoryResolver, ResolverSpec};
use mxguard_queue::FsSpool;
use mxguard_relay::callout::ResolverLookup;
use mxguard_relay::{Config, Events, Options, RecipientMode};

use crate::cli::RelayArgs;
use crate::{Exit, Failure};

/// How long sessions in progress get to finish at shutdown.
const GRACE: Duration = Duration::from_secs(30);

pub async fn run(args: RelayArgs) -> Result<Exit, Failure> {
    let file = args.config.display().to_string();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            for p in &e.0 {
                eprintln!("{file}: {p}");
            }
            eprintln!(
                "{file}: {} problem{}; nothing started",
                e.0.len(),
                if e.0.len() == 1 { "" } else { "s" }
            );
            return Ok(Exit::Error);
        }
    };
    let prepared = match mxguard_relay::prepare(config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{file}: {e}");
            return Ok(Exit::Error);
        }
    };
    if args.check_config {
        let c = &prepared.config;
        println!("{file}: OK");
        println!("  hostname  {}", c.hostname.get_ref());
        for a in c.listen_addrs() {
            println!("  listen    {a}");
        }
        println!(
            "  STARTTLS  {}",
            if prepared.tls.is_some() {
                "offered"
            } else {
                "not offered (no tls_cert/tls_key)"
            }
        );
        println!("  spool     {}", c.spool.path.display());
        if c.domains.is_empty() {
            println!("  domains   none: no mail will be accepted");
        }
        for d in &c.domains {
            let how = match d.recipients.get_ref() {
                RecipientMode::Callout => format!(
                    "callout to {}",
                    d.primary
                        .as_ref()
                        .map(|p| p.get_ref().clone())
                        .unwrap_or_else(|| "the MX hosts more preferred than this relay".into())
                ),
                RecipientMode::List => format!(
                    "list {}",
                    c.recipient_list_path(d)
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                ),
            };
            println!("  domain    {}: {how}", d.domain());
        }
        return Ok(Exit::Clean);
    }
    let spool_dir = prepared.config.spool.path.clone();
    let (spool, recovery) = FsSpool::open(&spool_dir)
        .map_err(|e| Failure::Usage(format!("spool {}: {e}", spool_dir.display())))?;
    tracing::info!(
        spool = %spool_dir.display(),
        recovered = recovery.recovered,
        discarded_partial = recovery.discarded_partial,
        corrupt = recovery.corrupt,
        "spool opened"
    );
    let spec = match &prepared.config.dns.resolver {
        Some(r) => ResolverSpec::parse(r.get_ref()).map_err(Failure::Usage)?,
        None => ResolverSpec::System,
    };
    let resolver = HickoryResolver::new(&spec, Duration::from_secs(10))
        .map_err(|e| Failure::Usage(format!("DNS resolver: {e}")))?;
    let spf_server = match &spec {
        ResolverSpec::Server(addr) => Some(*addr),
        ResolverSpec::System => None,
    };
    let spf = mxguard_relay::spf::MailAuthSpf::new(
        spf_server,
        prepared.config.hostname.get_ref().clone(),
    )
    .map_err(Failure::Usage)?;
    let options = Options {
        lookup: Arc::new(ResolverLookup(resolver)),
        spool: Arc::new(spool),
        events: Arc::new(Events::new()),
        mx_port: 25,
        spf: Some(Arc::new(spf)),
    };
    let running = match mxguard_relay::start(prepared, options).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{file}: {e}");
            return Ok(Exit::Error);
        }
    };
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(&args.config, &running),
        }
    }
    tracing::info!("stopping: no new connections; sessions and deliveries in progress may finish");
    running.shutdown(GRACE).await;
    tracing::info!("stopped");
    Ok(Exit::Clean)
}

/// SIGHUP: read the file again; a file with problems changes nothing.
fn reload(path: &std::path::Path, running: &mxguard_relay::Running) {
    let prepared = match Config::load(path) {
        Ok(c) => mxguard_relay::prepare(c).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match prepared {
        Ok(p) => {
            let domains = p.config.domains.len();
            for what in running.reload(p) {
                tracing::warn!(%what, "not changed by a reload");
            }
            tracing::info!(domains, "configuration reloaded");
        }
        Err(e) => {
            for line in e.lines() {
                tracing::error!(problem = %line, "reload refused; the running configuration stays");
            }
        }
    }
}
