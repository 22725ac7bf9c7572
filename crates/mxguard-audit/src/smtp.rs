//! Probing every MX address over SMTP: the only I/O of the audit besides
//! DNS. All addresses are probed at once, each by one conversation at a time,
//! under one deadline for the whole domain.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use mxguard_dns::net::AddressScope;
use mxguard_smtp::client::ClientConfig;
use mxguard_smtp::probe::{self, AddressProbe, ProbeTarget};
use rustls::RootCertStore;

use crate::facts::DomainFacts;

/// How `check` talks SMTP.
#[derive(Debug, Clone)]
pub struct SmtpOptions {
    /// The port probed on every address (25 on the internet).
    pub port: u16,
    /// The name given in EHLO.
    pub helo: String,
    /// The envelope sender of the relay battery (and the fallback when the
    /// null sender is refused).
    pub mail_from: String,
    /// The longest wait for a connection or any one reply.
    pub timeout: Duration,
    /// The most the whole SMTP part of one domain's check may take.
    pub deadline: Duration,
    /// Roots a certificate must chain to (the system's, or `--ca-file`).
    pub roots: Arc<RootCertStore>,
}

/// Probe every address of every host in `facts` and store each result on
/// its address. An address shared by several hosts is probed once per host
/// name (the certificate must match each), one conversation after another.
/// Private addresses are skipped unless `allow_private`.
/// The most addresses one domain's check probes (in MX preference order);
/// the rest are marked not probed. A domain cannot aim the checker at
/// hundreds of hosts.
pub const MAX_PROBED_ADDRESSES: usize = 32;
/// Probes running at once for one domain.
pub const PROBE_CONCURRENCY: usize = 16;

/// Decides which addresses will be probed: marks the others
/// (`smtp_skipped`: private without `allow_private`, or beyond
/// [`MAX_PROBED_ADDRESSES`]) and returns ip → the host names to probe it
/// as, in host order. Calling it again changes nothing.
pub fn plan_probes(facts: &mut DomainFacts, allow_private: bool) -> BTreeMap<IpAddr, Vec<String>> {
    let mut by_ip: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
    for host in &mut facts.hosts {
        for addr in &mut host.addresses {
            let public = addr.scope == AddressScope::Public.as_str();
            if !public && !allow_private {
                addr.smtp_skipped = Some(format!(
                    "not probed: {} is a {} address (use --allow-private in a lab)",
                    addr.ip, addr.scope
                ));
                continue;
            }
            if !by_ip.contains_key(&addr.ip) && by_ip.len() >= MAX_PROBED_ADDRESSES {
                addr.smtp_skipped = Some(format!(
                    "not probed: a check probes at most {MAX_PROBED_ADDRESSES} addresses, by MX preference"
                ));
                continue;
            }
            let names = by_ip.entry(addr.ip).or_default();
            if !names.contains(&host.exchange) {
                names.push(host.exchange.clone());
            }
        }
    }
    by_ip
}

pub async fn probe_all(facts: &mut DomainFacts, opts: &SmtpOptions, allow_private: bool) {
    probe_all_observed(facts, opts, allow_private, &|_, _, _| {}).await;
}

/// [`probe_all`], telling `observe` about each probe as it finishes (host
/// name, address, result) — how the web page shows results as they come.
pub async fn probe_all_observed(
    facts: &mut DomainFacts,
    opts: &SmtpOptions,
    allow_private: bool,
    observe: &(dyn Fn(&str, IpAddr, &AddressProbe) + Sync),
) {
    let deadline = tokio::time::Instant::now() + opts.deadline;
    let cfg = ClientConfig {
        helo: opts.helo.clone(),
        connect_timeout: opts.timeout,
        command_timeout: opts.timeout,
        roots: opts.roots.clone(),
        deadline: Some(deadline),
    };
    let by_ip = plan_probes(facts, allow_private);
    let unknown = probe::random_local_part();
    let domain = facts.domain.clone();
    let tasks = by_ip.into_iter().map(|(ip, names)| {
        let cfg = cfg.clone();
        let unknown = unknown.clone();
        let domain = domain.clone();
        let mail_from = opts.mail_from.clone();
        let port = opts.port;
        async move {
            let mut results = Vec::new();
            for name in names {
                let target = ProbeTarget {
                    addr: SocketAddr::new(ip, port),
                    mx_name: name.clone(),
                    domain: domain.clone(),
                    mail_from: mail_from.clone(),
                    unknown_local_part: unknown.clone(),
                };
                tracing::debug!(%ip, host = %name, "probing");
                let result = probe::probe(&target, &cfg).await;
                observe(&name, ip, &result);
                results.push((name, result));
            }
            (ip, results)
        }
    });
    let done: Vec<(IpAddr, Vec<(String, AddressProbe)>)> = futures_util::stream::iter(tasks)
        .buffer_unordered(PROBE_CONCURRENCY)
        .collect()
        .await;
    for (ip, results) in done {
        for (name, result) in results {
            for host in facts.hosts.iter_mut().filter(|h| h.exchange == name) {
                for addr in host.addresses.iter_mut().filter(|a| a.ip == ip) {
                    addr.smtp = Some(Box::new(result.clone()));
                }
            }
        }
    }
}
