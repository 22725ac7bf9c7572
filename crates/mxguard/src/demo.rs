//! `mxguard demo`: start the built-in lab on loopback — an authoritative
//! DNS server and a scripted SMTP host behind every MX address — check every
//! demo domain over DNS and SMTP, and print the reports: offline, in seconds.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mxguard_audit::{CheckOptions, SmtpOptions};
use mxguard_dns::{HickoryResolver, ResolverSpec};
use mxguard_lab::demo::{DEMO_DOMAINS, DEMO_ZONE, demo_hosts};
use mxguard_lab::{LabCa, LabDns, LabSmtpSet, ZoneSet};

use crate::cli::{DemoArgs, Format};
use crate::{Exit, Failure, output};

/// The running lab: DNS, the SMTP hosts, and how to probe them.
struct Lab {
    dns: LabDns,
    smtp: LabSmtpSet,
    ca: LabCa,
    host_count: usize,
    smtp_opts: SmtpOptions,
}

async fn start_lab() -> Result<Lab, Failure> {
    let zones =
        ZoneSet::parse(DEMO_ZONE).map_err(|e| Failure::Internal(format!("demo zone: {e}")))?;
    let dns = LabDns::start(
        "127.0.0.1"
            .parse()
            .map_err(|_| Failure::Internal("address".into()))?,
        &zones,
    )
    .await
    .map_err(|e| Failure::Internal(format!("starting the lab DNS server: {e}")))?;
    let ca = LabCa::new().map_err(|e| Failure::Internal(format!("lab CA: {e}")))?;
    let hosts = demo_hosts(&ca).map_err(|e| Failure::Internal(format!("lab certificates: {e}")))?;
    let host_count = hosts.len();
    let smtp = LabSmtpSet::start(hosts)
        .await
        .map_err(|e| Failure::Internal(format!("starting the lab SMTP hosts: {e}")))?;
    let roots = ca
        .root_store()
        .map_err(|e| Failure::Internal(format!("lab CA: {e}")))?;
    let smtp_opts = SmtpOptions {
        port: smtp.port(),
        helo: "demo.mxguard.lab".into(),
        mail_from: "probe@demo.mxguard.lab".into(),
        timeout: Duration::from_secs(2),
        deadline: Duration::from_secs(20),
        roots: Arc::new(roots),
    };
    Ok(Lab {
        dns,
        smtp,
        ca,
        host_count,
        smtp_opts,
    })
}

/// `demo --web`: the lab's domains through the web page, until Ctrl-C or
/// SIGTERM.
async fn run_web(listen: &str) -> Result<Exit, Failure> {
    let lab = start_lab().await?;
    let addr: std::net::SocketAddr = listen
        .parse()
        .map_err(|_| Failure::Usage(format!("--listen {listen:?}: expected IP:PORT")))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::Usage(format!("--listen {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Failure::Internal(format!("listener: {e}")))?;
    let cfg = mxguard_web::WebConfig {
        resolver: ResolverSpec::Server(lab.dns.addr()),
        dns_timeout: Duration::from_secs(2),
        smtp: lab.smtp_opts.clone(),
        // The lab lives on loopback addresses.
        allow_private: true,
        rate_per_minute: 120,
        rate_burst: 30,
        max_checks: 8,
        check_timeout: Duration::from_secs(30),
    };
    let domains: Vec<&str> = DEMO_DOMAINS.iter().map(|d| d.domain).collect();
    output::write_styled(&format!(
        "mxguard demo --web: the lab's {} domains (DNS on {}, {} SMTP hosts on 127.0.x.y port {}) behind\n\n    http://{bound}/\n\n\
         Try backscatter.lab, backup.lab or clean.lab; all of them: {}.\nCtrl-C stops it.\n",
        domains.len(),
        lab.dns.addr(),
        lab.host_count,
        lab.smtp.port(),
        domains.join(", "),
    ))?;
    mxguard_web::serve(listener, cfg, crate::web::stop_signal())
        .await
        .map_err(Failure::Internal)?;
    drop(lab);
    Ok(Exit::Clean)
}

pub async fn run(args: DemoArgs) -> Result<Exit, Failure> {
    if args.web {
        return run_web(&args.listen).await;
    }
    let started = Instant::now();
    let Lab {
        dns,
        smtp,
        ca,
        host_count,
        smtp_opts,
    } = start_lab().await?;
    let resolver = HickoryResolver::new(&ResolverSpec::Server(dns.addr()), Duration::from_secs(2))
        .map_err(|e| Failure::Internal(format!("lab resolver: {e}")))?;

    // The lab CA on disk, so that the `check` command printed below trusts
    // the lab's certificates as the demo does; removed when the demo ends.
    // Best effort: if it cannot be written, the advice leaves `--ca-file` out.
    let ca_file = (args.format == Format::Text)
        .then(|| CaFile::write(ca.cert_pem()))
        .flatten();
    if args.format == Format::Text {
        let ca_arg = ca_file
            .as_ref()
            .map(|f| format!(" --ca-file {}", f.0.display()))
            .unwrap_or_default();
        output::write_styled(&format!(
            "mxguard demo — a lab of {} domains: an authoritative DNS server on {} and {} scripted SMTP hosts on 127.0.x.y port {} (loopback only, offline).\n\
             Each domain shows one behaviour; `mxguard check --resolver {} --smtp-port {} --allow-private{ca_arg} DOMAIN` repeats any of them while this runs.\n\n",
            DEMO_DOMAINS.len(),
            dns.addr(),
            host_count,
            smtp.port(),
            dns.addr(),
            smtp.port(),
        ))?;
    }

    let resolver = &resolver;
    let smtp_opts = &smtp_opts;
    let results = futures_util::stream::iter(DEMO_DOMAINS.iter())
        .map(|d| async move {
            let opts = CheckOptions {
                allow_private: d.allow_private,
                smtp: Some(smtp_opts.clone()),
            };
            let result = mxguard_audit::check_domain(resolver, d.domain, opts).await;
            (d.domain, result)
        })
        .buffered(8);
    let caption = |domain: &str| {
        DEMO_DOMAINS
            .iter()
            .find(|d| d.domain == domain)
            .map(|d| d.shows)
    };
    // The demo's exit status is about the demo running, not about the lab's
    // deliberately broken domains.
    let status = crate::check::emit(results, args.format, DEMO_DOMAINS.len(), &caption).await?;
    if args.format == Format::Text {
        output::write_styled(&format!(
            "\n{} domains checked in {:.1?}. Every finding id is documented in docs/findings.md.\n",
            DEMO_DOMAINS.len(),
            started.elapsed()
        ))?;
    }
    // The lab runs until every report is out.
    drop((ca_file, smtp, dns));
    if args.format == Format::Text {
        crate::drill::run().await?;
        output::write_styled(&crate::simulate::demo_section())?;
    }
    Ok(match status {
        Exit::Error => Exit::Error,
        Exit::Clean | Exit::Findings => Exit::Clean,
    })
}

/// The lab CA's certificate in a temporary PEM file, removed on drop.
struct CaFile(PathBuf);

impl CaFile {
    fn write(pem: &str) -> Option<CaFile> {
        let path = std::env::temp_dir().join(format!("mxguard-demo-ca-{}.pem", std::process::id()));
        std::fs::write(&path, pem).ok()?;
        Some(CaFile(path))
    }
}

impl Drop for CaFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
