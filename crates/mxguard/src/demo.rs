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

pub async fn run(args: DemoArgs) -> Result<Exit, Failure> {
    let started = Instant::now();
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
    let resolver = HickoryResolver::new(&ResolverSpec::Server(dns.addr()), Duration::from_secs(2))
        .map_err(|e| Failure::Internal(format!("lab resolver: {e}")))?;

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
