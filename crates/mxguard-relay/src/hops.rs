//! Where the relay may connect for a domain — for a callout or a delivery:
//! RFC 5321 §5.1 applied to a host that is itself in the MX list.

use std::net::SocketAddr;

use crate::callout::{Lookup, Primary};

/// Whose mail it is.
#[derive(Debug, Clone, Copy)]
pub enum Whose<'a> {
    /// A domain this relay backs up, with its configured primary (or MX).
    Backed(&'a Primary),
    /// Any other domain (the relay's notices): its MX hosts.
    Foreign,
}

/// Who is asking: the relay's name, the port MX hosts listen on, the
/// relay's own listening addresses.
#[derive(Debug, Clone, Copy)]
pub struct Me<'a> {
    pub hostname: &'a str,
    pub mx_port: u16,
    pub own: &'a [SocketAddr],
}

/// The addresses to try for `domain`, in order, each with its host name.
/// Never the relay itself: not a host named like it, not one of its own
/// addresses, and — for a backed domain found through MX — only hosts more
/// preferred than it.
pub async fn next_hops(
    lookup: &dyn Lookup,
    whose: Whose<'_>,
    domain: &str,
    me: Me<'_>,
) -> Result<Vec<(String, SocketAddr)>, String> {
    let (hosts, port) = match whose {
        Whose::Backed(Primary::Explicit { host, port }) => (vec![host.clone()], *port),
        Whose::Backed(Primary::Mx) => {
            let records = lookup.mx(domain).await?;
            let route = mxguard_dns::plan::plan(domain, &records, false);
            let hops = route.more_preferred_than(me.hostname);
            if hops.is_empty() {
                return Err(format!(
                    "no MX host of {domain} is more preferred than this relay ({})",
                    me.hostname
                ));
            }
            (hops.into_iter().map(|h| h.exchange).collect(), me.mx_port)
        }
        Whose::Foreign => {
            let records = lookup.mx(domain).await?;
            let route = mxguard_dns::plan::plan(domain, &records, true);
            if matches!(route, mxguard_dns::plan::Route::NullMx) {
                return Err(format!("{domain} accepts no mail (null MX)"));
            }
            let hops = route.more_preferred_than(me.hostname);
            (hops.into_iter().map(|h| h.exchange).collect(), me.mx_port)
        }
    };
    let myself = mxguard_dns::net::normalize_name(me.hostname);
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for host in hosts {
        if mxguard_dns::net::normalize_name(&host) == myself {
            continue;
        }
        match lookup.addresses(&host).await {
            Ok(ips) => out.extend(
                ips.into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .filter(|a| !me.own.contains(a))
                    .map(|a| (host.clone(), a)),
            ),
            Err(e) => errors.push(e),
        }
    }
    if out.is_empty() {
        return Err(if errors.is_empty() {
            format!("no usable address to reach {domain}'s mail servers")
        } else {
            errors.join("; ")
        });
    }
    Ok(out)
}
