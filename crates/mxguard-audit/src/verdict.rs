//! The verdict: does this domain need a backup MX, and is the one it has
//! helping or hurting? A pure function of the facts and findings.

use mxguard_dns::plan::{Role, Route};

use crate::facts::DomainFacts;
use crate::findings::{Finding, FindingId as Id, Severity};
use crate::report::{BackupVerdict, Verdict};

/// How long common senders keep retrying before they bounce, in the words
/// the verdict uses. Postfix and Sendmail hold mail 5 days by default, Exim
/// about 4; RFC 5321 §4.5.4.1 asks for at least 4-5 days.
const SENDER_QUEUE_WINDOW: &str = "4 to 5 days";

/// One line of advice for a finding, or `None` when it needs none.
pub fn fix_for(id: Id) -> Option<&'static str> {
    Some(match id {
        Id::NullMx => return None,
        Id::NullMxMixed => {
            "Publish either the null MX alone (no mail) or only real MX records, never both."
        }
        Id::NoMx => {
            "Publish an explicit MX record for the host that receives mail, or a null MX (`MX 0 .`) if the domain takes none."
        }
        Id::NoMailRoute => {
            "If the domain takes no mail, publish a null MX (`MX 0 .`, RFC 7505) so senders fail fast; otherwise publish MX records."
        }
        Id::MxTargetCname => {
            "Point the MX record at the canonical host name (the CNAME's target), not at an alias."
        }
        Id::MxTargetIpLiteral => {
            "Give the host a name with an A/AAAA record and publish that name in the MX record."
        }
        Id::MxUnresolvable => {
            "Add A/AAAA records for the exchange, or remove the MX record that names it."
        }
        Id::MxPrivateAddress => {
            "Publish the host's public address, or remove the MX record; keep private addresses out of public DNS."
        }
        Id::MxNoPtr => {
            "Ask the address's owner (hosting provider or ISP) to set a PTR record naming the host."
        }
        Id::MxPtrMismatch => {
            "Make the PTR name resolve back to the address (add the A/AAAA record), or change the PTR to a name that does."
        }
        Id::BackupSharesAddress => {
            "Run the backup on a separate machine, network and provider — or remove it; senders already retry for days."
        }
        Id::BackupSharesNetwork => {
            "Move the backup to another network (and ideally another provider), or remove it; senders already retry for days."
        }
        Id::DnsLookupFailed => {
            "Check the authoritative servers for the name in the evidence; a lookup that times out or SERVFAILs delays mail."
        }
    })
}

/// Judge the domain's backup MX from what DNS (and, later, SMTP) showed.
pub fn verdict(facts: &DomainFacts, findings: &[Finding], smtp_probed: bool) -> Verdict {
    let d = &facts.domain;
    let mut advice: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for f in findings.iter().filter(|f| f.severity >= Severity::Warning) {
        if seen.insert(f.id)
            && let Some(fix) = fix_for(f.id)
        {
            advice.push(fix.to_owned());
        }
    }

    match &facts.route {
        Route::NullMx => {
            return Verdict {
                backup_mx: BackupVerdict::NoMail,
                summary: format!(
                    "{d} says it accepts no mail (null MX), so a backup MX has nothing to back up."
                ),
                advice,
            };
        }
        Route::NoRoute => {
            let why = if facts.nxdomain {
                "does not exist"
            } else {
                "has no MX and no address"
            };
            return Verdict {
                backup_mx: BackupVerdict::NoMail,
                summary: format!(
                    "{d} {why}, so mail to it cannot be delivered and a backup MX has nothing to back up."
                ),
                advice,
            };
        }
        Route::Mx { .. } | Route::NullMxMixed { .. } | Route::Implicit { .. } => {}
    }

    let unverified = if smtp_probed {
        ""
    } else {
        " Recipient validation and relay policy were not probed over SMTP, so whether each backup matches the primary is unverified."
    };
    let backups: Vec<&str> = facts
        .hosts
        .iter()
        .filter(|h| h.role == Role::Backup)
        .map(|h| h.exchange.as_str())
        .collect();
    let on_host = |f: &Finding, host: &str| f.host.as_deref() == Some(host);

    if backups.is_empty() {
        let front_trouble = findings.iter().any(|f| f.severity >= Severity::Warning);
        let mut summary = format!(
            "{d} has no backup MX and needs none: sending servers queue mail and retry for {SENDER_QUEUE_WINDOW} (RFC 5321 §4.5.4.1), so an outage of the primary shorter than that loses nothing — the mail arrives when it is back."
        );
        if front_trouble {
            summary.push_str(" The problems found concern the primary itself: fix them first; a backup would not.");
        }
        return Verdict {
            backup_mx: BackupVerdict::NotNeeded,
            summary,
            advice,
        };
    }

    let liable: Vec<&str> = backups
        .iter()
        .copied()
        .filter(|b| {
            findings
                .iter()
                .any(|f| f.severity == Severity::Critical && on_host(f, b))
        })
        .collect();
    if !liable.is_empty() {
        let primary = facts
            .hosts
            .iter()
            .find(|h| h.role.is_front())
            .map(|h| h.exchange.as_str())
            .unwrap_or("the primary");
        advice.push(format!(
            "Or drop the backup: publish only `{d}. IN MX 10 {primary}.` — senders' queues cover outages of up to {SENDER_QUEUE_WINDOW}."
        ));
        return Verdict {
            backup_mx: BackupVerdict::Liability,
            summary: format!(
                "The backup MX {} has critical problems that make it worse than no backup at all: it is where senders go when the primary is busy or down, and spammers probe it first.{unverified}",
                liable.join(", ")
            ),
            advice,
        };
    }

    let resolvable = |b: &&str| {
        facts
            .hosts
            .iter()
            .any(|h| h.exchange == *b && !h.addresses.is_empty())
    };
    let usable: Vec<&str> = backups.iter().copied().filter(resolvable).collect();
    if usable.is_empty() {
        return Verdict {
            backup_mx: BackupVerdict::Redundant,
            summary: format!(
                "{d}'s backup MX ({}) has no address senders can use, so it adds nothing; senders' queues cover outages of the primary of up to {SENDER_QUEUE_WINDOW}.",
                backups.join(", ")
            ),
            advice,
        };
    }
    let independent: Vec<&str> = usable
        .iter()
        .copied()
        .filter(|b| {
            // Sharing only the AS (info) is a different network: still
            // independent enough to count.
            !findings.iter().any(|f| {
                matches!(f.id, Id::BackupSharesAddress | Id::BackupSharesNetwork)
                    && f.severity >= Severity::Warning
                    && on_host(f, b)
            })
        })
        .collect();
    if !independent.is_empty() {
        Verdict {
            backup_mx: BackupVerdict::Healthy,
            summary: format!(
                "{d} has a backup MX ({}) on infrastructure separate from the primary's. It helps only for outages longer than senders' own queues ({SENDER_QUEUE_WINDOW}), and only while it keeps the primary's recipient list and spam policy.{unverified}",
                independent.join(", ")
            ),
            advice,
        }
    } else {
        Verdict {
            backup_mx: BackupVerdict::Redundant,
            summary: format!(
                "{d}'s backup MX ({}) shares infrastructure with the primary, so the outages that stop the primary stop it too; senders' queues already cover short outages.{unverified}",
                usable.join(", ")
            ),
            advice,
        }
    }
}
