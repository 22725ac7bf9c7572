//! How real senders behave while a domain's mail server is down.
//!
//! Sending MTAs queue a message they cannot deliver and try again on a
//! schedule of their own, warn the sender after a while, and return the
//! message when they give up (RFC 5321 §4.5.4.1). This crate models those
//! schedules as data ([`profile`]), plays one message through an outage
//! ([`sim`]), and with a backup MX in the route ([`backup`]). It is pure:
//! no clock, no I/O beyond reading a profile file.

pub mod backup;
pub mod profile;
pub mod sim;

pub use backup::{Backup, Dsn};
pub use profile::{
    Bounce, LifetimeFrom, Profile, ProfileError, Retry, RetryRule, Secs, builtin, builtin_profile,
    load_profiles, parse_duration, parse_profiles,
};
pub use sim::{Run, Scenario, covered, simulate};

use serde::Serialize;

/// One sender's part in a simulation report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SenderReport {
    pub profile: String,
    pub name: String,
    pub uncertain: bool,
    /// Failed attempts, in seconds from the first.
    pub attempts_s: Vec<u64>,
    /// The first delay warning, if one goes out.
    pub warned_at_s: Option<u64>,
    pub warnings_s: Vec<u64>,
    pub bounced_at_s: Option<u64>,
    pub delivered_at_s: Option<u64>,
    /// How long after the destination is back the message arrives.
    pub delay_after_recovery_s: Option<u64>,
    /// With a backup MX in the route (`--backup`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub with_backup: Option<WithBackup>,
}

/// A sender's message when a backup MX takes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WithBackup {
    /// When the backup accepted it: the sender's first attempt.
    pub accepted_by_backup_at_s: u64,
    pub delivered_at_s: Option<u64>,
    pub bounced_at_s: Option<u64>,
    pub delay_after_recovery_s: Option<u64>,
}

/// The backup MX's own part: its attempts toward the primary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackupReport {
    pub retry_s: Vec<u64>,
    pub jitter: f64,
    pub lifetime_s: u64,
    pub warn_after_s: u64,
    pub probe_interval_s: u64,
    /// Who gets its delay and failure notices.
    pub dsn: Dsn,
    pub attempts_s: Vec<u64>,
    pub warned_at_s: Option<u64>,
    pub bounced_at_s: Option<u64>,
    pub delivered_at_s: Option<u64>,
}

/// A whole simulation: the `simulate --format json` contract (DESIGN §3).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub outage_s: u64,
    /// How far into the outage the message is sent.
    pub start_s: u64,
    /// When the destination is back, from the first attempt.
    pub recovery_at_s: u64,
    pub senders: Vec<SenderReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupReport>,
}

impl Report {
    /// When every sender's message (and the backup's) has been delivered
    /// or returned, and the primary is back: the span a timeline shows.
    pub fn settled_at(&self) -> u64 {
        self.senders
            .iter()
            .filter_map(|s| s.delivered_at_s.or(s.bounced_at_s))
            .chain(
                self.backup
                    .as_ref()
                    .and_then(|b| b.delivered_at_s.or(b.bounced_at_s)),
            )
            .max()
            .unwrap_or(self.recovery_at_s)
            .max(self.recovery_at_s)
    }
}

/// Plays the message through the outage with each profile, and through
/// the backup if there is one.
pub fn report(scenario: Scenario, profiles: &[Profile], backup: Option<&Backup>) -> Report {
    let recovery = scenario.recovery();
    let relay = backup.map(|b| (b, b.simulate(Some(recovery))));
    let senders = profiles
        .iter()
        .map(|p| {
            let run = simulate(p, scenario.start, Some(recovery));
            SenderReport {
                profile: p.id.clone(),
                name: p.name.clone(),
                uncertain: p.uncertain,
                warned_at_s: run.warnings.first().copied(),
                delay_after_recovery_s: run.delivered_at.map(|d| d - recovery),
                attempts_s: run.attempts,
                warnings_s: run.warnings,
                bounced_at_s: run.bounced_at,
                delivered_at_s: run.delivered_at,
                with_backup: relay.as_ref().map(|(_, r)| WithBackup {
                    accepted_by_backup_at_s: 0,
                    delivered_at_s: r.delivered_at,
                    bounced_at_s: r.bounced_at,
                    delay_after_recovery_s: r.delivered_at.map(|d| d - recovery),
                }),
            }
        })
        .collect();
    Report {
        schema_version: 1,
        outage_s: scenario.outage,
        start_s: scenario.start,
        recovery_at_s: recovery,
        senders,
        backup: relay.map(|(b, r)| BackupReport {
            retry_s: b.retry.clone(),
            jitter: b.jitter,
            lifetime_s: b.lifetime,
            warn_after_s: b.warn_after,
            probe_interval_s: b.probe_interval,
            dsn: b.dsn,
            warned_at_s: r.warnings.first().copied(),
            attempts_s: r.attempts,
            bounced_at_s: r.bounced_at,
            delivered_at_s: r.delivered_at,
        }),
    }
}

/// How long an outage the common senders' queues cover: every common
/// profile still delivers a message sent as it begins, if it ends within
/// `covered`.
#[derive(Debug, Clone, PartialEq)]
pub struct Coverage {
    /// The shortest of the common senders' covered outages.
    pub covered: u64,
    /// The common sender that gives up first.
    pub first_to_give_up: String,
    /// The longest covered outage among the common senders, and whose.
    pub longest: (u64, String),
}

/// The coverage of the built-in common senders (worked out once).
pub fn common_coverage() -> Coverage {
    static COMMON: std::sync::OnceLock<Coverage> = std::sync::OnceLock::new();
    COMMON.get_or_init(|| coverage(&builtin())).clone()
}

/// The coverage of the profiles marked `common` among these (all of them,
/// if none is).
pub fn coverage(profiles: &[Profile]) -> Coverage {
    let common: Vec<&Profile> = if profiles.iter().any(|p| p.common) {
        profiles.iter().filter(|p| p.common).collect()
    } else {
        profiles.iter().collect()
    };
    let spans: Vec<(u64, &Profile)> = common.iter().map(|p| (covered(p), *p)).collect();
    let first = spans.iter().min_by_key(|(c, _)| *c);
    let last = spans.iter().max_by_key(|(c, _)| *c);
    match (first, last) {
        (Some((c, p)), Some((lc, lp))) => Coverage {
            covered: *c,
            first_to_give_up: p.name.clone(),
            longest: (*lc, lp.name.clone()),
        },
        _ => Coverage {
            covered: 0,
            first_to_give_up: String::new(),
            longest: (0, String::new()),
        },
    }
}

/// A span in rounded words, never more than it is: "45 minutes",
/// "14 hours", "24 hours", "3 days" (hours up to two days, then days).
pub fn format_approx(secs: u64) -> String {
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    if secs < 3600 {
        plural(secs / 60, "minute")
    } else if secs < 2 * 86_400 {
        plural(secs / 3600, "hour")
    } else {
        plural(secs / 86_400, "day")
    }
}

/// A span of seconds the way people write it: `5m`, `1h20m`, `2d3h`,
/// `6h53m20s`. Days drop the seconds; `0s` for nothing.
pub fn format_secs(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    let mut out = String::new();
    for (n, unit) in [(d, "d"), (h, "h"), (m, "m")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    if s > 0 && d == 0 {
        out.push_str(&format!("{s}s"));
    }
    if out.is_empty() {
        out.push_str(if secs == 0 { "0s" } else { "<1m" });
    }
    out
}
