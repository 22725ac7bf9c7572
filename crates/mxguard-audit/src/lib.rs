//! mxguard's audit: gather facts about a domain's MX set, run pure checks
//! over them, and judge the backup MX.
//!
//! The flow is `facts → checks → findings → verdict`. Only [`facts`] does
//! I/O (through the [`mxguard_dns::Resolver`] seam); everything after it is a
//! pure function and is tested as one.

pub mod checks;
pub mod facts;
pub mod findings;
pub mod report;
pub mod smtp;
pub mod smtp_checks;
pub mod verdict;

use std::time::Instant;

use mxguard_dns::Resolver;
use mxguard_dns::plan::Route;

pub use facts::{GatherError, GatherOptions};
pub use findings::{Finding, FindingId, Severity};
pub use report::{BackupVerdict, Report, RouteKind, SCHEMA_VERSION};

pub use smtp::SmtpOptions;

/// What a check does.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Treat private and loopback addresses as expected (labs): look them up,
    /// probe them, and do not report them.
    pub allow_private: bool,
    /// Probe each MX address over SMTP; `None` for DNS only (`--no-smtp`),
    /// and then the verdict calls parity unverified.
    pub smtp: Option<SmtpOptions>,
}

/// What a check has found so far, for a caller that shows it as it comes.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// DNS is done: the hosts and addresses, not yet probed.
    Planned(&'a facts::DomainFacts),
    /// One address has been probed.
    Probed {
        host: &'a str,
        ip: std::net::IpAddr,
        probe: &'a mxguard_smtp::probe::AddressProbe,
    },
}

/// Audit one domain (given in any form `parse_domain` accepts).
pub async fn check_domain<R: Resolver>(
    resolver: &R,
    domain: &str,
    opts: CheckOptions,
) -> Result<Report, GatherError> {
    check_domain_observed(resolver, domain, opts, &|_| {}).await
}

/// [`check_domain`], telling `observe` what it learns as it goes.
pub async fn check_domain_observed<R: Resolver>(
    resolver: &R,
    domain: &str,
    opts: CheckOptions,
    observe: &(dyn Fn(Progress<'_>) + Sync),
) -> Result<Report, GatherError> {
    let started = Instant::now();
    let mut facts = facts::gather(
        resolver,
        domain,
        GatherOptions {
            allow_private: opts.allow_private,
        },
    )
    .await?;
    let smtp_probed = opts.smtp.is_some();
    if smtp_probed {
        // So that what is shown as planned already says what will not be
        // probed.
        smtp::plan_probes(&mut facts, opts.allow_private);
    }
    observe(Progress::Planned(&facts));
    if let Some(smtp) = &opts.smtp {
        smtp::probe_all_observed(&mut facts, smtp, opts.allow_private, &|host, ip, probe| {
            observe(Progress::Probed { host, ip, probe })
        })
        .await;
    }
    let mut findings = checks::dns_findings(
        &facts,
        checks::CheckPolicy {
            allow_private: opts.allow_private,
        },
    );
    findings.extend(smtp_checks::smtp_findings(&facts.domain, &facts.hosts));
    checks::sort(&mut findings);
    let verdict = verdict::verdict(&facts, &findings, smtp_probed);
    let route = match facts.route {
        Route::Mx { .. } => RouteKind::Mx,
        Route::NullMx => RouteKind::NullMx,
        Route::NullMxMixed { .. } => RouteKind::NullMxMixed,
        Route::Implicit { .. } => RouteKind::Implicit,
        Route::NoRoute => RouteKind::None,
    };
    Ok(Report {
        schema_version: SCHEMA_VERSION,
        domain: facts.domain,
        resolver: resolver.describe(),
        route,
        mx_records: facts.mx_records,
        mx: facts.hosts,
        findings,
        verdict,
        smtp_probed,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}
