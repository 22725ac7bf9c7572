//! Pure checks: facts in, findings out. No I/O here.

use std::collections::HashSet;
use std::net::IpAddr;

use mxguard_dns::net::same_network;
use mxguard_dns::plan::{Role, Route};

use crate::facts::DomainFacts;
use crate::findings::{Finding, FindingId as Id, Severity};
use crate::report::{LookupFailure, MxHost};

/// Options that change what counts as a finding.
#[derive(Debug, Clone, Copy)]
pub struct CheckPolicy {
    /// Private and loopback addresses are expected (a lab): not a finding.
    pub allow_private: bool,
}

/// Every DNS finding for a domain, most severe first.
pub fn dns_findings(facts: &DomainFacts, policy: CheckPolicy) -> Vec<Finding> {
    let mut out = Vec::new();
    route_findings(facts, &mut out);
    for e in &facts.lookup_errors {
        out.push(lookup_failed(e, None, None));
    }
    // When no host yields an address at all, a broken exchange is the whole
    // story: the domain cannot receive mail.
    let any_address = facts.hosts.iter().any(|h| !h.addresses.is_empty());
    for host in &facts.hosts {
        host_findings(
            host,
            any_address,
            facts.route.is_implicit(),
            policy,
            &mut out,
        );
    }
    backup_findings(&facts.hosts, &mut out);
    sort(&mut out);
    out
}

/// Order findings: most severe first, then catalog order, then host.
pub fn sort(findings: &mut [Finding]) {
    findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(a.id.cmp(&b.id))
            .then_with(|| a.host.cmp(&b.host))
            .then_with(|| a.ip.cmp(&b.ip))
    });
}

fn mx_lines(facts: &DomainFacts) -> String {
    facts
        .mx_records
        .iter()
        .map(|r| {
            let ex = if r.exchange.is_empty() {
                "."
            } else {
                r.exchange.as_str()
            };
            format!("{} MX {} {}", facts.domain, r.preference, ex)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn route_findings(facts: &DomainFacts, out: &mut Vec<Finding>) {
    let d = &facts.domain;
    match &facts.route {
        Route::NullMx => out.push(Finding::new(
            Id::NullMx,
            Severity::Info,
            format!("{d} publishes a null MX (RFC 7505): it accepts no mail, and senders bounce at once instead of queueing"),
            mx_lines(facts),
        )),
        Route::NullMxMixed { .. } => out.push(Finding::new(
            Id::NullMxMixed,
            Severity::Critical,
            format!("{d} publishes a null MX beside other MX records; RFC 7505 §3 forbids this and senders disagree on whether the domain takes mail"),
            mx_lines(facts),
        )),
        Route::Implicit { .. } => {
            let addrs: Vec<String> = facts.domain_addresses.iter().map(IpAddr::to_string).collect();
            out.push(Finding::new(
                Id::NoMx,
                Severity::Warning,
                format!("{d} has no MX record; senders fall back to its own address (implicit MX, RFC 5321 §5.1), which is often a web server"),
                format!("MX {d} → NODATA; address {d} → {}", addrs.join(", ")),
            ));
        }
        Route::NoRoute if facts.lookup_errors.is_empty() => {
            let (message, evidence) = if facts.nxdomain {
                (format!("{d} does not exist in DNS, so no mail can be delivered to it"), format!("MX {d} → NXDOMAIN"))
            } else {
                (
                    format!("{d} has neither MX nor address records: mail to it bounces; publish a null MX if that is intended"),
                    format!("MX {d} → NODATA; A {d} → NODATA; AAAA {d} → NODATA"),
                )
            };
            out.push(Finding::new(Id::NoMailRoute, Severity::Warning, message, evidence));
        }
        Route::NoRoute | Route::Mx { .. } => {}
    }
}

fn lookup_failed(e: &LookupFailure, host: Option<&str>, ip: Option<IpAddr>) -> Finding {
    // The origin-AS lookup asks a third party (Team Cymru): its failure says
    // nothing about the domain's own DNS and must not fail the audit.
    let third_party = e.query.contains(".asn.cymru.com");
    let (severity, consequence) = if third_party {
        (
            Severity::Info,
            "the origin AS of this address is unknown, so network sharing by AS was not judged",
        )
    } else {
        (
            Severity::Warning,
            "the results that depend on it are unknown, not absent",
        )
    };
    let mut f = Finding::new(
        Id::DnsLookupFailed,
        severity,
        format!(
            "the lookup {} got no answer ({}); {consequence}",
            e.query, e.error
        ),
        format!("{} → {}", e.query, e.error),
    );
    f.host = host.map(str::to_owned);
    f.ip = ip;
    f
}

fn host_findings(
    host: &MxHost,
    any_address: bool,
    implicit: bool,
    policy: CheckPolicy,
    out: &mut Vec<Finding>,
) {
    let name = host.exchange.as_str();
    let fatal = if any_address {
        Severity::Warning
    } else {
        Severity::Critical
    };
    if host.ip_literal {
        out.push(
            Finding::new(
                Id::MxTargetIpLiteral,
                fatal,
                format!("the MX exchange {name} is an IP address; RFC 5321 §5.1 requires a host name, and senders look it up as a name and fail"),
                format!("MX {} {name}", host.preference),
            )
            .host(name),
        );
    }
    if let Some(target) = host.cname_chain.last() {
        out.push(
            Finding::new(
                Id::MxTargetCname,
                Severity::Warning,
                format!("the MX exchange {name} is an alias (CNAME) for {target}; RFC 2181 §10.3 forbids this and some senders refuse it"),
                format!("CNAME {name} → {}", host.cname_chain.join(" → ")),
            )
            .host(name),
        );
    }
    let addr_lookup_failed = host
        .lookup_errors
        .iter()
        .any(|e| e.query.starts_with("A ") || e.query.starts_with("AAAA "));
    if host.addresses.is_empty() && !host.ip_literal && !addr_lookup_failed && !implicit {
        out.push(
            Finding::new(
                Id::MxUnresolvable,
                fatal,
                format!("the MX exchange {name} has no A or AAAA record, so senders cannot use it"),
                format!("A {name} → none; AAAA {name} → none"),
            )
            .host(name),
        );
    }
    for e in &host.lookup_errors {
        out.push(lookup_failed(e, Some(name), None));
    }
    for addr in &host.addresses {
        let ip = addr.ip;
        if addr.scope != "public" && !policy.allow_private {
            out.push(
                Finding::new(
                    Id::MxPrivateAddress,
                    Severity::Critical,
                    format!("{name} resolves to {ip}, a {} address that senders on the internet cannot reach (or that points them at themselves)", addr.scope),
                    format!("{} {name} → {ip}", if ip.is_ipv4() { "A" } else { "AAAA" }),
                )
                .host(name)
                .ip(ip),
            );
        }
        if addr.ptr_checked && addr.ptr_names.is_empty() {
            out.push(
                Finding::new(
                    Id::MxNoPtr,
                    Severity::Warning,
                    format!("{ip} ({name}) has no reverse DNS (PTR); receivers distrust hosts without it when they send, and it makes the host hard to identify"),
                    format!("PTR {} → none", mxguard_dns::net::reverse_name(ip)),
                )
                .host(name)
                .ip(ip),
            );
        }
        if addr.fcrdns == Some(false) {
            out.push(
                Finding::new(
                    Id::MxPtrMismatch,
                    Severity::Warning,
                    format!(
                        "the reverse DNS of {ip} ({name}) does not confirm: {} does not resolve back to {ip}",
                        addr.ptr_names.join(", ")
                    ),
                    format!(
                        "PTR {} → {}; {} {} → not {ip}",
                        mxguard_dns::net::reverse_name(ip),
                        addr.ptr_names.join(", "),
                        if ip.is_ipv4() { "A" } else { "AAAA" },
                        addr.ptr_names.join(", ")
                    ),
                )
                .host(name)
                .ip(ip),
            );
        }
        for e in &addr.lookup_errors {
            out.push(lookup_failed(e, Some(name), Some(ip)));
        }
    }
}

/// A backup earns its place only on infrastructure the primary does not
/// share: a different address, network and operator.
fn backup_findings(hosts: &[MxHost], out: &mut Vec<Finding>) {
    let front: Vec<(&MxHost, &crate::report::Address)> = hosts
        .iter()
        .filter(|h| h.role.is_front())
        .flat_map(|h| h.addresses.iter().map(move |a| (h, a)))
        .collect();
    let front_ips: HashSet<IpAddr> = front.iter().map(|(_, a)| a.ip).collect();
    for backup in hosts.iter().filter(|h| h.role == Role::Backup) {
        let name = backup.exchange.as_str();
        if let Some(shared) = backup.addresses.iter().find(|a| front_ips.contains(&a.ip)) {
            let (owner, _) = front
                .iter()
                .find(|(_, a)| a.ip == shared.ip)
                .copied()
                .expect("ip came from front");
            out.push(
                Finding::new(
                    Id::BackupSharesAddress,
                    Severity::Warning,
                    format!("the backup {name} resolves to {}, an address of {}: it is the same machine and adds nothing", shared.ip, owner.exchange),
                    format!("{name} → {}; {} → {}", shared.ip, owner.exchange, shared.ip),
                )
                .host(name)
                .ip(shared.ip),
            );
            continue;
        }
        let same_net = backup.addresses.iter().find_map(|b| {
            front
                .iter()
                .find(|(_, f)| same_network(b.ip, f.ip))
                .map(|(h, f)| (b, *h, *f))
        });
        if let Some((b, owner, f)) = same_net {
            let width = if b.ip.is_ipv4() { "/24" } else { "/48" };
            out.push(
                Finding::new(
                    Id::BackupSharesNetwork,
                    Severity::Warning,
                    format!(
                        "the backup {name} ({}) sits in the same {width} as {} ({}): one network outage takes both down",
                        b.ip, owner.exchange, f.ip
                    ),
                    format!("{name} → {}; {} → {}; same {width}", b.ip, owner.exchange, f.ip),
                )
                .host(name)
                .ip(b.ip),
            );
            continue;
        }
        let same_asn = backup.addresses.iter().find_map(|b| {
            front.iter().find_map(|(h, f)| {
                b.asns
                    .iter()
                    .find(|asn| f.asns.contains(asn))
                    .map(|asn| (b, *h, *asn))
            })
        });
        if let Some((b, owner, asn)) = same_asn {
            out.push(
                Finding::new(
                    Id::BackupSharesNetwork,
                    Severity::Info,
                    format!(
                        "the backup {name} ({}) is announced by AS{asn}, like {}: a different network, but the same operator's routing",
                        b.ip, owner.exchange
                    ),
                    format!("origin {} → AS{asn}; origin of {} → AS{asn}", b.ip, owner.exchange),
                )
                .host(name)
                .ip(b.ip),
            );
        }
    }
}
