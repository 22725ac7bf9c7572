//! Gathering DNS facts about a domain's MX set. All lookups for one domain
//! run concurrently; a failed lookup is recorded where it happened and never
//! stops the rest.

use std::net::IpAddr;

use futures_util::future::join_all;
use mxguard_dns::net::{AddressScope, address_scope, name_as_ip_literal, parse_cymru_origin};
use mxguard_dns::plan::{self, Hop, Route};
use mxguard_dns::{Answer, LookupError, MxRecord, Resolver};

use crate::report::{Address, LookupFailure, MxHost};

/// What the gathering needs to know from the caller.
#[derive(Debug, Clone, Copy)]
pub struct GatherOptions {
    /// Look up PTR and ASN for private and loopback addresses too (labs).
    pub allow_private: bool,
}

/// Everything DNS told us about a domain.
#[derive(Debug, Clone)]
pub struct DomainFacts {
    pub domain: String,
    pub mx_records: Vec<MxRecord>,
    /// The MX query said NXDOMAIN: the domain does not exist.
    pub nxdomain: bool,
    /// The domain's own A/AAAA, asked only when it has no MX.
    pub domain_addresses: Vec<IpAddr>,
    pub route: Route,
    pub hosts: Vec<MxHost>,
    /// Lookups about the domain itself that got no answer.
    pub lookup_errors: Vec<LookupFailure>,
}

/// Why a domain could not be checked at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GatherError {
    /// The resolver did not answer: nothing can be learnt about any domain.
    #[error("no answer from {resolver} for MX {domain}: {cause}")]
    ResolverUnreachable {
        resolver: String,
        domain: String,
        cause: LookupError,
    },
    /// The resolver answered, but with an error for the domain's MX query.
    #[error("could not look up MX {domain} via {resolver}: {cause}")]
    MxLookup {
        resolver: String,
        domain: String,
        cause: LookupError,
    },
}

impl GatherError {
    pub fn is_resolver_unreachable(&self) -> bool {
        matches!(self, GatherError::ResolverUnreachable { .. })
    }
}

pub(crate) fn failure(query: String, error: LookupError) -> LookupFailure {
    LookupFailure { query, error }
}

/// Ask everything about `domain` (already in A-label form).
pub async fn gather<R: Resolver>(
    resolver: &R,
    domain: &str,
    opts: GatherOptions,
) -> Result<DomainFacts, GatherError> {
    let mx = match resolver.mx(domain).await {
        Ok(answer) => answer,
        Err(cause) if cause.is_resolver_failure() => {
            return Err(GatherError::ResolverUnreachable {
                resolver: resolver.describe(),
                domain: domain.to_owned(),
                cause,
            });
        }
        Err(cause) => {
            return Err(GatherError::MxLookup {
                resolver: resolver.describe(),
                domain: domain.to_owned(),
                cause,
            });
        }
    };

    let mut lookup_errors = Vec::new();
    let mut domain_addresses = Vec::new();
    let has_real_mx = mx.records.iter().any(|r| !r.is_null());
    let has_null = mx.records.iter().any(MxRecord::is_null);
    // Only a domain without MX records needs its own address (implicit MX).
    if !has_real_mx && !has_null && !mx.nxdomain {
        let (a, aaaa) = tokio::join!(resolver.a(domain), resolver.aaaa(domain));
        collect_addresses(domain, a, aaaa, &mut domain_addresses, &mut lookup_errors);
    }
    let route = plan::plan(domain, &mx.records, !domain_addresses.is_empty());

    let hosts = join_all(
        route
            .hops()
            .iter()
            .map(|hop| host_facts(resolver, hop, opts, route.is_implicit(), &domain_addresses)),
    )
    .await;

    Ok(DomainFacts {
        domain: domain.to_owned(),
        mx_records: mx.records,
        nxdomain: mx.nxdomain,
        domain_addresses,
        route,
        hosts,
        lookup_errors,
    })
}

fn collect_addresses(
    name: &str,
    a: Result<Answer<std::net::Ipv4Addr>, LookupError>,
    aaaa: Result<Answer<std::net::Ipv6Addr>, LookupError>,
    out: &mut Vec<IpAddr>,
    errors: &mut Vec<LookupFailure>,
) -> Vec<String> {
    let mut chain = Vec::new();
    match a {
        Ok(ans) => {
            chain = ans.cname_chain;
            out.extend(ans.records.into_iter().map(IpAddr::V4));
        }
        Err(e) => errors.push(failure(format!("A {name}"), e)),
    }
    match aaaa {
        Ok(ans) => {
            if chain.is_empty() {
                chain = ans.cname_chain;
            }
            out.extend(ans.records.into_iter().map(IpAddr::V6));
        }
        Err(e) => errors.push(failure(format!("AAAA {name}"), e)),
    }
    chain
}

async fn host_facts<R: Resolver>(
    resolver: &R,
    hop: &Hop,
    opts: GatherOptions,
    implicit: bool,
    implicit_addrs: &[IpAddr],
) -> MxHost {
    let mut host = MxHost {
        preference: hop.preference,
        exchange: hop.exchange.clone(),
        role: hop.role,
        cname_chain: Vec::new(),
        ip_literal: name_as_ip_literal(&hop.exchange).is_some(),
        addresses: Vec::new(),
        addresses_omitted: 0,
        lookup_errors: Vec::new(),
    };
    let mut ips = Vec::new();
    if implicit {
        // Already looked up when planning.
        ips.extend_from_slice(implicit_addrs);
    } else if !host.ip_literal {
        let (a, aaaa) = tokio::join!(resolver.a(&hop.exchange), resolver.aaaa(&hop.exchange));
        host.cname_chain =
            collect_addresses(&hop.exchange, a, aaaa, &mut ips, &mut host.lookup_errors);
    }
    ips.dedup();
    if ips.len() > MAX_ADDRESSES_PER_HOST {
        host.addresses_omitted = ips.len() - MAX_ADDRESSES_PER_HOST;
        ips.truncate(MAX_ADDRESSES_PER_HOST);
    }
    host.addresses = join_all(ips.into_iter().map(|ip| address_facts(resolver, ip, opts))).await;
    host
}

/// The most addresses of one host looked into (reverse DNS, AS, SMTP);
/// the others are counted in `addresses_omitted`.
pub const MAX_ADDRESSES_PER_HOST: usize = 16;

async fn address_facts<R: Resolver>(resolver: &R, ip: IpAddr, opts: GatherOptions) -> Address {
    let scope = address_scope(ip);
    let mut addr = Address {
        ip,
        scope: scope.as_str(),
        asn: None,
        asns: Vec::new(),
        asn_prefix: None,
        ptr: None,
        ptr_names: Vec::new(),
        fcrdns: None,
        lookup_errors: Vec::new(),
        ptr_checked: false,
        smtp: None,
        smtp_skipped: None,
    };
    // Reverse DNS and routing data of a private address say nothing useful
    // (and would leak the question to public servers) unless this is a lab.
    if scope != AddressScope::Public && !opts.allow_private {
        return addr;
    }
    let asn_name = mxguard_dns::net::cymru_origin_name(ip);
    let (ptr, asn) = tokio::join!(resolver.ptr(ip), resolver.txt(&asn_name));

    match asn {
        Ok(ans) => {
            if let Some(origin) = ans.records.iter().find_map(|t| parse_cymru_origin(t)) {
                addr.asn = origin.asns.first().copied();
                addr.asns = origin.asns;
                addr.asn_prefix = origin.prefix;
            }
        }
        Err(e) => addr
            .lookup_errors
            .push(failure(format!("TXT {asn_name}"), e)),
    }

    match ptr {
        Ok(ans) => {
            addr.ptr_checked = true;
            addr.ptr_names = ans.records;
            addr.ptr = addr.ptr_names.first().cloned();
            if !addr.ptr_names.is_empty() {
                addr.fcrdns =
                    forward_confirm(resolver, ip, &addr.ptr_names, &mut addr.lookup_errors).await;
            }
        }
        Err(e) => addr.lookup_errors.push(failure(
            format!("PTR {}", mxguard_dns::net::reverse_name(ip)),
            e,
        )),
    }
    addr
}

/// FCrDNS: does any PTR name resolve back to `ip`? `None` when no name
/// confirms and at least one forward lookup failed — then we do not know.
async fn forward_confirm<R: Resolver>(
    resolver: &R,
    ip: IpAddr,
    names: &[String],
    errors: &mut Vec<LookupFailure>,
) -> Option<bool> {
    let lookups = join_all(names.iter().map(|name| async move {
        match ip {
            IpAddr::V4(v4) => (
                name,
                resolver.a(name).await.map(|a| a.records.contains(&v4)),
            ),
            IpAddr::V6(v6) => (
                name,
                resolver.aaaa(name).await.map(|a| a.records.contains(&v6)),
            ),
        }
    }))
    .await;
    let mut unknown = false;
    for (name, result) in lookups {
        match result {
            Ok(true) => return Some(true),
            Ok(false) => {}
            Err(e) => {
                unknown = true;
                let rtype = if ip.is_ipv4() { "A" } else { "AAAA" };
                errors.push(failure(format!("{rtype} {name}"), e));
            }
        }
    }
    if unknown { None } else { Some(false) }
}
