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
pub mod verdict;

use std::time::Instant;

use mxguard_dns::Resolver;
use mxguard_dns::plan::Route;

pub use facts::{GatherError, GatherOptions};
pub use findings::{Finding, FindingId, Severity};
pub use report::{BackupVerdict, Report, RouteKind, SCHEMA_VERSION};

/// What a check does.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckOptions {
    /// Treat private and loopback addresses as expected (labs): look them up
    /// and do not report them.
    pub allow_private: bool,
    /// Probe each MX address over SMTP. Not built yet (the SMTP issue): the
    /// report says `smtp_probed: false` and the verdict calls parity
    /// unverified.
    pub smtp: bool,
}

/// Audit one domain (given in any form `parse_domain` accepts).
pub async fn check_domain<R: Resolver>(
    resolver: &R,
    domain: &str,
    opts: CheckOptions,
) -> Result<Report, GatherError> {
    let started = Instant::now();
    let facts = facts::gather(
        resolver,
        domain,
        GatherOptions {
            allow_private: opts.allow_private,
        },
    )
    .await?;
    let findings = checks::dns_findings(
        &facts,
        checks::CheckPolicy {
            allow_private: opts.allow_private,
        },
    );
    let smtp_probed = false;
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
