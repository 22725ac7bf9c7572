//! Pure checks over the SMTP probes: per-address findings, and the parity
//! of every backup and peer with the primary. No I/O here.
//!
//! The reference for parity is the *front* of the MX set (the primary, or
//! every peer at the lowest preference). An untestable result never counts
//! on either side of a comparison.

use std::net::IpAddr;

use mxguard_smtp::probe::{AddressProbe, Check, Reason, Status};

use crate::findings::{Finding, FindingId as Id, Severity};
use crate::report::MxHost;

/// One probed address with its host.
#[derive(Clone, Copy)]
struct Probed<'a> {
    host: &'a MxHost,
    ip: IpAddr,
    p: &'a AddressProbe,
}

impl Probed<'_> {
    fn front(&self) -> bool {
        self.host.role.is_front()
    }

    fn name(&self) -> &str {
        &self.host.exchange
    }

    fn finding(&self, id: Id, severity: Severity, message: String, evidence: String) -> Finding {
        Finding::new(id, severity, message, evidence)
            .host(self.name())
            .ip(self.ip)
    }

    fn who(&self) -> String {
        format!("{} ({})", self.name(), self.ip)
    }
}

fn probed(hosts: &[MxHost]) -> Vec<Probed<'_>> {
    hosts
        .iter()
        .flat_map(|h| {
            h.addresses.iter().filter_map(move |a| {
                a.smtp.as_deref().map(|p| Probed {
                    host: h,
                    ip: a.ip,
                    p,
                })
            })
        })
        .collect()
}

/// Every SMTP finding for the domain's hosts, unsorted.
pub fn smtp_findings(domain: &str, hosts: &[MxHost]) -> Vec<Finding> {
    let all = probed(hosts);
    let mut out = Vec::new();
    if all.is_empty() {
        return out;
    }
    reachability(&all, &mut out);
    for a in &all {
        per_address(domain, a, &mut out);
    }
    recipients(domain, &all, &mut out);
    tls_parity(&all, &mut out);
    size_parity(&all, &mut out);
    out
}

fn reachability(all: &[Probed<'_>], out: &mut Vec<Finding>) {
    // An address the deadline cut off is untestable, not unreachable.
    let none_answers = all.iter().all(|a| a.p.unreachable());
    for a in all.iter().filter(|a| a.p.unreachable()) {
        let why =
            a.p.error
                .as_ref()
                .map(|e| e.detail.clone())
                .unwrap_or_else(|| "no answer".into());
        let (severity, tail) = if none_answers {
            (
                Severity::Critical,
                "; no MX address answers at all, so mail waits in senders' queues",
            )
        } else {
            (Severity::Warning, "")
        };
        out.push(a.finding(
            Id::MxUnreachable,
            severity,
            format!(
                "nothing answers SMTP at {} on port {}{tail}",
                a.who(),
                a.p.port
            ),
            format!("connect {}:{} → {why}", a.ip, a.p.port),
        ));
    }
}

fn per_address(domain: &str, a: &Probed<'_>, out: &mut Vec<Finding>) {
    let p = a.p;
    if p.greeting.is_some() && !p.starttls {
        out.push(a.finding(
            Id::StarttlsMissing,
            Severity::Warning,
            format!(
                "{} does not offer STARTTLS: mail to it crosses the network in clear text",
                a.who()
            ),
            format!("EHLO → {}", keywords(p)),
        ));
    }
    if let Some(tls) = &p.tls {
        if !tls.handshake {
            out.push(a.finding(
                Id::StarttlsFailed,
                Severity::Warning,
                format!(
                    "{} offers STARTTLS but it does not work ({}): senders that try it fall back to clear text or defer",
                    a.who(),
                    tls.error.as_deref().unwrap_or("unknown error")
                ),
                format!(
                    "STARTTLS → {}; {}",
                    tls.reply,
                    tls.error.as_deref().unwrap_or("")
                ),
            ));
        } else if let Some(cert) = tls.certificate.as_ref().filter(|c| !c.trusted) {
            let problem = cert.problem.as_deref().unwrap_or("not trusted");
            out.push(a.finding(
                Id::TlsCertInvalid,
                Severity::Warning,
                format!(
                    "the certificate of {} is not trusted ({problem}): senders that verify (MTA-STS, DANE) will not deliver there",
                    a.who()
                ),
                format!(
                    "STARTTLS → {}; {} {}; certificate: {problem}",
                    tls.reply,
                    tls.version.as_deref().unwrap_or(""),
                    tls.cipher.as_deref().unwrap_or("")
                ),
            ));
        }
    }
    if p.null_sender.status == Status::Fail {
        out.push(a.finding(
            Id::NullSenderRejected,
            Severity::Warning,
            format!(
                "{} refuses the null sender (RFC 5321 §4.5.5): bounces and delivery notices to {domain} are lost",
                a.who()
            ),
            p.null_sender.evidence(),
        ));
    }
    if p.postmaster.status == Status::Fail {
        out.push(a.finding(
            Id::PostmasterRejected,
            Severity::Warning,
            format!(
                "{} refuses mail for postmaster@{domain}, which RFC 5321 §4.5.1 requires every domain to accept",
                a.who()
            ),
            p.postmaster.evidence(),
        ));
    }
    let failed: Vec<_> = p
        .relay
        .iter()
        .filter(|r| r.check.status == Status::Fail)
        .collect();
    if let Some(first) = failed.first() {
        let names: Vec<&str> = failed.iter().map(|r| r.variant).collect();
        out.push(a.finding(
            Id::OpenRelay,
            Severity::Critical,
            format!(
                "{} is an open relay: it accepts mail for a domain it does not serve ({} of {} variants accepted: {})",
                a.who(),
                failed.len(),
                p.relay.len(),
                names.join(", ")
            ),
            format!(
                "MAIL FROM:<{}>; {}",
                first.sender,
                first.check.evidence()
            ),
        ));
    }
    let mut untestable: Vec<String> = Vec::new();
    let mut note = |what: &str, c: &Check| {
        if c.status == Status::Untestable
            && let Some(r) = c.reason
        {
            untestable.push(format!("{what}: {}", r.as_str()));
        }
    };
    if !p.unreachable() {
        note("null sender", &p.null_sender);
        note("postmaster", &p.postmaster);
        note("unknown recipient", &p.unknown_recipient);
        if p.relay_status() == Status::Untestable {
            let reason = p
                .relay
                .iter()
                .find_map(|r| r.check.reason)
                .map(|r| r.as_str())
                .unwrap_or("unknown");
            untestable.push(format!("relay: {reason}"));
        }
    }
    if !untestable.is_empty() {
        let evidence = [&p.unknown_recipient, &p.postmaster, &p.null_sender]
            .into_iter()
            .find(|c| c.status == Status::Untestable)
            .map(Check::evidence)
            .or_else(|| p.error.as_ref().map(|e| e.detail.clone()))
            .or_else(|| {
                p.relay
                    .iter()
                    .find(|r| {
                        r.check.status == Status::Untestable
                            && r.check.reason != Some(Reason::AcceptsAnyRecipient)
                    })
                    .map(|r| r.check.evidence())
            })
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "no usable answer".to_owned());
        out.push(a.finding(
            Id::ProbeUntestable,
            Severity::Info,
            format!(
                "some questions to {} got no usable answer, so they are neither passed nor failed ({})",
                a.who(),
                untestable.join("; ")
            ),
            evidence,
        ));
    }
}

/// Recipient validation: backscatter where a host accepts what the front
/// rejects; catch-all when every host that answered accepts.
fn recipients(domain: &str, all: &[Probed<'_>], out: &mut Vec<Finding>) {
    let rejecting_front: Vec<&Probed<'_>> = all
        .iter()
        .filter(|a| a.front() && a.p.unknown_recipient.status == Status::Pass)
        .collect();
    let accepting: Vec<&Probed<'_>> = all
        .iter()
        .filter(|a| a.p.unknown_recipient.status == Status::Fail)
        .collect();
    if let Some(reference) = rejecting_front.first() {
        for a in accepting {
            out.push(a.finding(
                Id::BackscatterRisk,
                Severity::Critical,
                format!(
                    "{} accepts mail for a recipient that does not exist, while {} rejects it: it takes spam for made-up users and later bounces it to forged senders (backscatter)",
                    a.who(),
                    reference.who()
                ),
                format!(
                    "{}: {}; {}: {}",
                    a.name(),
                    a.p.unknown_recipient.evidence(),
                    reference.name(),
                    reference.p.unknown_recipient.evidence()
                ),
            ));
        }
        return;
    }
    let front_accepts = all
        .iter()
        .any(|a| a.front() && a.p.unknown_recipient.status == Status::Fail);
    if front_accepts
        && all
            .iter()
            .all(|a| a.p.unknown_recipient.status != Status::Pass)
    {
        let first = accepting[0];
        out.push(Finding::new(
            Id::CatchAll,
            Severity::Info,
            format!(
                "every MX that answered accepts mail for a recipient that does not exist: {domain} is catch-all (or validates only after accepting), so each host must deal with spam to made-up addresses itself"
            ),
            format!("{}: {}", first.name(), first.p.unknown_recipient.evidence()),
        ));
    }
}

/// What a host offers, in a few words, for evidence.
fn keywords(p: &AddressProbe) -> String {
    if p.extensions.is_empty() {
        return format!("{} (no extensions)", p.greeting.as_deref().unwrap_or(""));
    }
    p.extensions
        .iter()
        .map(|e| e.split_whitespace().next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join(" ")
}

fn tls_words(a: &Probed<'_>) -> String {
    let p = a.p;
    match &p.tls {
        None => "no STARTTLS".into(),
        Some(t) if !t.handshake => "STARTTLS that fails".into(),
        Some(t) => {
            let trust = if t.certificate.as_ref().is_some_and(|c| c.trusted) {
                "a trusted certificate"
            } else {
                "an untrusted certificate"
            };
            format!("{} with {trust}", t.version.as_deref().unwrap_or("TLS"))
        }
    }
}

fn version_rank(p: &AddressProbe) -> u8 {
    match p.tls.as_ref().and_then(|t| t.version.as_deref()) {
        Some("TLSv1_3") => 3,
        Some("TLSv1_2") => 2,
        Some(_) => 1,
        None => 0,
    }
}

/// Backups and peers must not offer less transport security than the
/// front: an attacker who blocks the primary would get the weaker path.
fn tls_parity(all: &[Probed<'_>], out: &mut Vec<Finding>) {
    let Some(best) = all
        .iter()
        .filter(|a| a.front())
        .filter_map(|a| a.p.tls_rank().map(|r| (r, version_rank(a.p), a)))
        .max_by_key(|(r, v, _)| (*r, *v))
    else {
        return;
    };
    let (best_rank, best_version, reference) = best;
    // Every other address: backups, peers, and the primary's other
    // addresses, which a sender may equally land on.
    for a in all {
        if std::ptr::eq(a.p, reference.p) {
            continue;
        }
        let Some(rank) = a.p.tls_rank() else { continue };
        let (severity, what) = if rank < best_rank {
            (Severity::Warning, "weaker transport security")
        } else if rank == best_rank && rank >= 2 && version_rank(a.p) < best_version {
            (Severity::Info, "an older TLS version")
        } else {
            continue;
        };
        out.push(a.finding(
            Id::TlsParity,
            severity,
            format!(
                "{} offers {what} than {}: {} where that has {}",
                a.who(),
                reference.who(),
                tls_words(a),
                tls_words(reference)
            ),
            format!(
                "{}: {}; {}: {}",
                a.name(),
                tls_words(a),
                reference.name(),
                tls_words(reference)
            ),
        ));
    }
}

/// A host that takes larger messages than the primary accepts mail the
/// primary will refuse, and must then bounce it.
fn size_parity(all: &[Probed<'_>], out: &mut Vec<Finding>) {
    let Some((limit, reference)) = all
        .iter()
        .filter(|a| a.front() && a.p.greeting.is_some())
        .filter_map(|a| a.p.size.filter(|n| *n > 0).map(|n| (n, a)))
        .min_by_key(|(n, _)| *n)
    else {
        return;
    };
    for a in all
        .iter()
        .filter(|a| a.p.greeting.is_some() && !std::ptr::eq(a.p, reference.p))
    {
        let theirs = match a.p.size {
            Some(n) if n > limit => format!("SIZE {n}"),
            None | Some(0) => "no SIZE limit".to_owned(),
            Some(_) => continue,
        };
        out.push(a.finding(
            Id::SizeParity,
            Severity::Warning,
            format!(
                "{} accepts larger messages ({theirs}) than {} (SIZE {limit}): it will take messages that host refuses and must bounce them",
                a.who(),
                reference.who()
            ),
            format!(
                "{}: EHLO → {theirs}; {}: EHLO → SIZE {limit}",
                a.name(),
                reference.name()
            ),
        ));
    }
}
