//! `mxguard demo`: start the built-in lab on loopback, check every demo
//! domain, and print the reports — offline, in seconds.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mxguard_audit::CheckOptions;
use mxguard_dns::{HickoryResolver, ResolverSpec};
use mxguard_lab::demo::{DEMO_DOMAINS, DEMO_ZONE};
use mxguard_lab::{LabDns, ZoneSet};

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

    if args.format == Format::Text {
        output::write_styled(&format!(
            "mxguard demo — a lab of {} domains served by an authoritative DNS server on {} (loopback only, offline).\n\
             Each domain shows one behaviour; `mxguard check --resolver {} --allow-private DOMAIN` repeats any of them while this runs.\n\n",
            DEMO_DOMAINS.len(),
            dns.addr(),
            dns.addr()
        ))?;
    }

    let results = futures_util::stream::iter(DEMO_DOMAINS.iter())
        .map(|d| {
            let resolver = &resolver;
            async move {
                let opts = CheckOptions {
                    allow_private: d.allow_private,
                    smtp: true,
                };
                let result = mxguard_audit::check_domain(resolver, d.domain, opts).await;
                (d.domain, result)
            }
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
    Ok(match status {
        Exit::Error => Exit::Error,
        Exit::Clean | Exit::Findings => Exit::Clean,
    })
}
