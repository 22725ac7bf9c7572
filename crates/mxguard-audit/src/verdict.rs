//! The verdict: does this domain need a backup MX, and is the one it has
//! helping or hurting? A pure function of the facts and findings.

use mxguard_dns::plan::{Role, Route};

use crate::facts::DomainFacts;
use crate::findings::{Finding, FindingId as Id, Severity};
use crate::report::{BackupVerdict, MxHost, Verdict};

/// How long an outage the common senders' queues cover without loss, in
/// the words the verdict uses — worked out by `mxguard-sim` from the
/// built-in sender profiles (docs/senders.md): the span ("23 hours") and
/// who sets it ("Exchange Online gives up first; Postfix keeps trying for
/// 5 days").
pub fn sender_queue_window() -> (String, String) {
    let c = mxguard_sim::common_coverage();
    (
        mxguard_sim::format_approx(c.covered),
        format!(
            "{} gives up first; {} keeps trying for {}",
            c.first_to_give_up,
            c.longest.1,
            mxguard_sim::format_approx(c.longest.0)
        ),
    )
}

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
        Id::MxUnreachable => {
            "Make the host listen on port 25 and let inbound SMTP through its firewall — or remove its MX record."
        }
        Id::StarttlsMissing => {
            "Enable STARTTLS with a certificate for the MX name (Postfix: smtpd_tls_cert_file/smtpd_tls_key_file and smtpd_tls_security_level = may)."
        }
        Id::StarttlsFailed => {
            "Fix the TLS setup (certificate and key files, protocol versions, ciphers) or stop advertising STARTTLS."
        }
        Id::TlsCertInvalid => {
            "Install a certificate that chains to a public root, names the MX host, and is in date (renew it automatically)."
        }
        Id::NullSenderRejected => {
            "Accept MAIL FROM:<> (RFC 5321 §4.5.5); filter bounces by content or by BATV, never by refusing the null sender."
        }
        Id::PostmasterRejected => {
            "Accept mail for postmaster@ the domain (RFC 5321 §4.5.1), even from senders that other rules would refuse."
        }
        Id::BackscatterRisk => {
            "Give the backup the primary's recipient list so it rejects unknown users at RCPT (Postfix: relay_recipient_maps, or reject_unverified_recipient; Exim: verify = recipient/callout; mxguard relay does it by default) — or remove the backup."
        }
        Id::CatchAll => return None,
        Id::OpenRelay => {
            "Close the relay now: accept RCPT only for the domains the host serves (Postfix: smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination, with a tight mynetworks)."
        }
        Id::TlsParity => {
            "Give the backup the same TLS as the primary (STARTTLS, a trusted certificate, the same protocol versions)."
        }
        Id::SizeParity => {
            "Set the backup's message size limit to the primary's (Postfix: message_size_limit), so it never takes what the primary will refuse."
        }
        Id::ProbeUntestable => return None,
    })
}

/// What a finding says about a backup, in a few words for the summary.
fn words(id: Id) -> &'static str {
    match id {
        Id::BackscatterRisk => "accepts mail for recipients that do not exist",
        Id::OpenRelay => "relays mail for other domains",
        Id::MxPrivateAddress => "has an address the internet cannot reach",
        Id::TlsParity => "offers weaker TLS than the primary",
        Id::SizeParity => "accepts larger messages than the primary",
        Id::NullSenderRejected => "refuses bounces (the null sender)",
        Id::PostmasterRejected => "refuses postmaster",
        Id::StarttlsMissing => "offers no STARTTLS",
        Id::StarttlsFailed => "has broken STARTTLS",
        Id::TlsCertInvalid => "has an invalid certificate",
        other => other.as_str(),
    }
}

/// A backup host's findings at warning or above, ids deduplicated.
fn host_ids(findings: &[Finding], host: &str, at_least: Severity) -> Vec<Id> {
    let mut ids: Vec<Id> = findings
        .iter()
        .filter(|f| f.severity >= at_least && f.host.as_deref() == Some(host))
        .map(|f| f.id)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

fn join_words(ids: &[Id]) -> String {
    ids.iter().map(|i| words(*i)).collect::<Vec<_>>().join(", ")
}

/// Judge the domain's backup MX from what DNS and SMTP showed.
pub fn verdict(facts: &DomainFacts, findings: &[Finding], smtp_probed: bool) -> Verdict {
    let (window, who) = sender_queue_window();
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
    let backups: Vec<&MxHost> = facts
        .hosts
        .iter()
        .filter(|h| h.role == Role::Backup)
        .collect();
    let primary = facts
        .hosts
        .iter()
        .find(|h| h.role.is_front())
        .map(|h| h.exchange.as_str())
        .unwrap_or("the primary");

    if backups.is_empty() {
        let front_trouble = findings.iter().any(|f| f.severity >= Severity::Warning);
        let mut summary = format!(
            "{d} has no backup MX and needs none: sending servers queue mail and retry (RFC 5321 §4.5.4.1), and the common senders' queues cover an outage of up to {window} without loss ({who}) — the mail arrives when the primary is back."
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

    // Critical findings on a backup make it worse than none; an unreachable
    // backup is merely useless.
    let liable: Vec<(&str, Vec<Id>)> = backups
        .iter()
        .map(|b| {
            let ids: Vec<Id> = host_ids(findings, &b.exchange, Severity::Critical)
                .into_iter()
                .filter(|i| *i != Id::MxUnreachable)
                .collect();
            (b.exchange.as_str(), ids)
        })
        .filter(|(_, ids)| !ids.is_empty())
        .collect();
    if !liable.is_empty() {
        advice.push(format!(
            "Or drop the backup: publish only `{d}. IN MX 10 {primary}.` — senders' queues cover outages of up to {window}."
        ));
        let what = liable
            .iter()
            .map(|(h, ids)| format!("{h} {}", join_words(ids)))
            .collect::<Vec<_>>()
            .join("; ");
        return Verdict {
            backup_mx: BackupVerdict::Liability,
            summary: format!(
                "{d}'s backup MX is worse than no backup at all: {what}. Senders use it whenever the primary is busy or down, and spammers probe it first.{unverified}"
            ),
            advice,
        };
    }

    let answers = |b: &MxHost| {
        b.addresses.iter().any(|a| match &a.smtp {
            Some(p) => !p.unreachable() && !p.refuses_service(),
            // Not probed (skipped, or --no-smtp): not known to be dead.
            None => true,
        })
    };
    let usable: Vec<&MxHost> = backups
        .iter()
        .copied()
        .filter(|b| !b.addresses.is_empty() && answers(b))
        .collect();
    if usable.is_empty() {
        let names = backups
            .iter()
            .map(|b| b.exchange.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let why = if backups.iter().all(|b| b.addresses.is_empty()) {
            "has no address senders can use"
        } else {
            "does not answer SMTP or refuses all mail"
        };
        return Verdict {
            backup_mx: BackupVerdict::Redundant,
            summary: format!(
                "{d}'s backup MX ({names}) {why}, so it adds nothing; senders' queues cover outages of the primary of up to {window}."
            ),
            advice,
        };
    }
    let shares = |b: &MxHost| {
        // Sharing only the AS (info) is a different network: still
        // independent enough to count.
        findings.iter().any(|f| {
            matches!(f.id, Id::BackupSharesAddress | Id::BackupSharesNetwork)
                && f.severity >= Severity::Warning
                && f.host.as_deref() == Some(b.exchange.as_str())
        })
    };
    // Where the backup behaves differently from the primary: the SMTP
    // parity questions. DNS trouble (a missing PTR, a failed lookup) is
    // advice, not inconsistency.
    let differs = |b: &MxHost| -> Vec<Id> {
        host_ids(findings, &b.exchange, Severity::Warning)
            .into_iter()
            .filter(|i| {
                matches!(
                    i,
                    Id::TlsParity
                        | Id::SizeParity
                        | Id::StarttlsMissing
                        | Id::StarttlsFailed
                        | Id::TlsCertInvalid
                        | Id::NullSenderRejected
                        | Id::PostmasterRejected
                )
            })
            .collect()
    };
    let healthy: Vec<&MxHost> = usable
        .iter()
        .copied()
        .filter(|b| !shares(b) && differs(b).is_empty())
        .collect();
    if !healthy.is_empty() {
        let names = healthy
            .iter()
            .map(|b| b.exchange.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let mut summary =
            format!("{d} has a backup MX ({names}) on infrastructure separate from the primary's");
        if smtp_probed {
            let open: Vec<String> = healthy
                .iter()
                .flat_map(|b| unverified_questions(b))
                .collect();
            let catch_all = healthy.iter().any(|b| {
                b.addresses.iter().any(|a| {
                    a.smtp.as_ref().is_some_and(|p| {
                        p.unknown_recipient.status == mxguard_smtp::probe::Status::Fail
                    })
                })
            });
            let recipients = if catch_all {
                "it takes any recipient, as the primary does (the domain is catch-all)"
            } else {
                "it rejects unknown recipients as the primary does"
            };
            if open.is_empty() {
                summary.push_str(&format!(
                    ", and it behaves like the primary: {recipients}, refuses to relay, and matches its TLS and size limit."
                ));
            } else {
                summary.push_str(&format!(
                    ". It showed no problem, but some questions got no usable answer ({}), so parity is only partly verified.",
                    open.join("; ")
                ));
            }
        } else {
            summary.push('.');
        }
        summary.push_str(&format!(
            " It helps only for outages longer than the common senders' queues cover ({window}: {who}), and only while it keeps the primary's recipient list and spam policy.{unverified}"
        ));
        return Verdict {
            backup_mx: BackupVerdict::Healthy,
            summary,
            advice,
        };
    }
    if let Some(b) = usable.iter().find(|b| !shares(b)) {
        let ids = differs(b);
        return Verdict {
            backup_mx: BackupVerdict::Redundant,
            summary: format!(
                "{d}'s backup MX {} is on separate infrastructure but does not match the primary: it {}. Until it does, it adds a weaker path rather than resilience; senders' queues already cover outages of up to {window}.",
                b.exchange,
                join_words(&ids)
            ),
            advice,
        };
    }
    Verdict {
        backup_mx: BackupVerdict::Redundant,
        summary: format!(
            "{d}'s backup MX ({}) shares infrastructure with the primary, so the outages that stop the primary stop it too; senders' queues already cover short outages.{unverified}",
            usable
                .iter()
                .map(|b| b.exchange.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        advice,
    }
}

/// The parity questions a backup left unanswered, as `host: question (reason)`.
fn unverified_questions(b: &MxHost) -> Vec<String> {
    let mut out = Vec::new();
    for a in &b.addresses {
        let Some(p) = &a.smtp else { continue };
        if !p.reachable {
            continue;
        }
        if let Some(r) = p.unknown_recipient.reason {
            out.push(format!(
                "{} recipient validation: {}",
                b.exchange,
                r.as_str()
            ));
        }
        if p.relay_status() == mxguard_smtp::probe::Status::Untestable {
            let r = p
                .relay
                .iter()
                .find_map(|c| c.check.reason)
                .map_or("unknown", |r| r.as_str());
            out.push(format!("{} relay: {r}", b.exchange));
        }
    }
    out
}
