//! MX planning: from the records a domain publishes to the hosts a sender
//! tries, in order (RFC 5321 §5.1, RFC 7505).
//!
//! Pure functions only. The audit uses [`plan`] to give each host its role;
//! the relay uses [`Route::more_preferred_than`] to find where it may forward.

use rand::Rng;
use rand::seq::SliceRandom;
use serde::Serialize;

use crate::resolver::MxRecord;

/// The part a host plays in a domain's MX set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The single most-preferred host.
    Primary,
    /// Shares the lowest preference with another host: senders spread load
    /// between peers at random (RFC 5321 §5.1).
    Peer,
    /// A less-preferred host: tried only when the more preferred ones fail.
    Backup,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Peer => "peer",
            Role::Backup => "backup",
        }
    }

    /// Primary or peer: a host that takes mail in normal operation.
    pub fn is_front(self) -> bool {
        matches!(self, Role::Primary | Role::Peer)
    }
}

/// One host a sender would try.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hop {
    pub preference: u16,
    /// Lower-case, without the trailing dot.
    pub exchange: String,
    pub role: Role,
}

/// Where mail for a domain goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// RFC 7505: a lone `MX 0 .` — the domain accepts no mail.
    NullMx,
    /// A null MX published beside other MX records. RFC 7505 §3 forbids it;
    /// senders disagree on what it means. `hops` plans the other records.
    NullMxMixed { hops: Vec<Hop> },
    /// Ordinary MX records, in the order a sender considers them (preference,
    /// then name for a stable report; see [`Route::delivery_order`]).
    Mx { hops: Vec<Hop> },
    /// No MX records, but the domain has an address: RFC 5321 §5.1 treats the
    /// domain itself as an implicit MX of preference 0.
    Implicit { hop: Hop },
    /// Neither MX nor address: mail cannot be delivered.
    NoRoute,
}

impl Route {
    /// The hosts of this route (none for a null MX or no route).
    pub fn hops(&self) -> &[Hop] {
        match self {
            Route::NullMxMixed { hops } | Route::Mx { hops } => hops,
            Route::Implicit { hop } => std::slice::from_ref(hop),
            Route::NullMx | Route::NoRoute => &[],
        }
    }

    pub fn is_implicit(&self) -> bool {
        matches!(self, Route::Implicit { .. })
    }

    /// The order a sender would try the hosts in: by preference, with ties
    /// shuffled ("SHOULD pick one at random", RFC 5321 §5.1).
    pub fn delivery_order<R: Rng + ?Sized>(&self, rng: &mut R) -> Vec<Hop> {
        let mut hops = self.hops().to_vec();
        let mut start = 0;
        while start < hops.len() {
            let pref = hops[start].preference;
            let end = hops[start..]
                .iter()
                .position(|h| h.preference != pref)
                .map_or(hops.len(), |n| start + n);
            hops[start..end].shuffle(rng);
            start = end;
        }
        hops
    }

    /// The hosts a relay named `me` may forward to: RFC 5321 §5.1 — if the
    /// client finds itself in the list, it discards itself and every host of
    /// equal or higher preference. If `me` is not listed, every host remains.
    pub fn more_preferred_than(&self, me: &str) -> Vec<Hop> {
        let me = crate::net::normalize_name(me);
        let hops = self.hops();
        match hops.iter().find(|h| h.exchange == me) {
            Some(own) => hops
                .iter()
                .filter(|h| h.preference < own.preference)
                .cloned()
                .collect(),
            None => hops.to_vec(),
        }
    }
}

/// Plan the route for `domain` from its MX records.
///
/// `domain_has_address` says whether the domain itself has an A or AAAA
/// record; it only matters when there are no MX records. Records listing the
/// same exchange twice keep the most preferred entry, as a sender would.
pub fn plan(domain: &str, records: &[MxRecord], domain_has_address: bool) -> Route {
    let has_null = records.iter().any(MxRecord::is_null);
    let mut real: Vec<&MxRecord> = records.iter().filter(|r| !r.is_null()).collect();
    if real.is_empty() {
        if has_null {
            return Route::NullMx;
        }
        if domain_has_address {
            return Route::Implicit {
                hop: Hop {
                    preference: 0,
                    exchange: crate::net::normalize_name(domain),
                    role: Role::Primary,
                },
            };
        }
        return Route::NoRoute;
    }

    real.sort_by(|a, b| {
        a.preference
            .cmp(&b.preference)
            .then_with(|| a.exchange.cmp(&b.exchange))
    });
    let mut seen = std::collections::HashSet::new();
    real.retain(|r| seen.insert(r.exchange.as_str()));

    let lowest = real[0].preference;
    let front = real.iter().filter(|r| r.preference == lowest).count();
    let hops = real
        .into_iter()
        .map(|r| Hop {
            preference: r.preference,
            exchange: r.exchange.clone(),
            role: if r.preference != lowest {
                Role::Backup
            } else if front > 1 {
                Role::Peer
            } else {
                Role::Primary
            },
        })
        .collect();
    if has_null {
        Route::NullMxMixed { hops }
    } else {
        Route::Mx { hops }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn mx(list: &[(u16, &str)]) -> Vec<MxRecord> {
        list.iter().map(|(p, n)| MxRecord::new(*p, *n)).collect()
    }

    fn roles(route: &Route) -> Vec<(u16, &str, Role)> {
        route
            .hops()
            .iter()
            .map(|h| (h.preference, h.exchange.as_str(), h.role))
            .collect()
    }

    use Role::{Backup, Peer, Primary};

    /// (records, domain has address, expected hops with roles)
    #[test]
    fn ordering_and_roles() {
        #[allow(clippy::type_complexity)]
        let table: &[(&[(u16, &str)], Vec<(u16, &str, Role)>)] = &[
            // single host
            (
                &[(10, "mx.example.com")],
                vec![(10, "mx.example.com", Primary)],
            ),
            // out of order in the answer
            (
                &[(20, "b.example.net"), (10, "a.example.com")],
                vec![
                    (10, "a.example.com", Primary),
                    (20, "b.example.net", Backup),
                ],
            ),
            // ties at the top are peers; a tie lower down stays backup
            (
                &[(10, "b.x"), (10, "a.x"), (30, "d.x"), (30, "c.x")],
                vec![
                    (10, "a.x", Peer),
                    (10, "b.x", Peer),
                    (30, "c.x", Backup),
                    (30, "d.x", Backup),
                ],
            ),
            // preference 0 is valid and most preferred
            (
                &[(5, "b.x"), (0, "a.x")],
                vec![(0, "a.x", Primary), (5, "b.x", Backup)],
            ),
            // a duplicated exchange keeps its most preferred entry
            (
                &[(20, "a.x"), (10, "a.x"), (15, "b.x")],
                vec![(10, "a.x", Primary), (15, "b.x", Backup)],
            ),
            // names are compared case-insensitively, trailing dot ignored
            (
                &[(10, "MX.Example.com."), (20, "mx.example.com")],
                vec![(10, "mx.example.com", Primary)],
            ),
        ];
        for (records, want) in table {
            let route = plan("example.com", &mx(records), false);
            assert!(matches!(route, Route::Mx { .. }), "{records:?}");
            assert_eq!(&roles(&route), want, "{records:?}");
        }
    }

    #[test]
    fn null_mx() {
        // RFC 7505 §3: "MX 0 ." alone
        assert_eq!(plan("example.com", &mx(&[(0, ".")]), true), Route::NullMx);
        // a root exchange at another preference is still a null MX
        assert_eq!(plan("example.com", &mx(&[(10, "")]), false), Route::NullMx);
        // mixed with real records
        let route = plan(
            "example.com",
            &mx(&[(0, "."), (10, "mx.example.com")]),
            false,
        );
        match &route {
            Route::NullMxMixed { hops } => assert_eq!(hops.len(), 1),
            other => panic!("{other:?}"),
        }
        assert_eq!(roles(&route), vec![(10, "mx.example.com", Primary)]);
    }

    #[test]
    fn implicit_mx() {
        // RFC 5321 §5.1: no MX, but an address: the domain is its own MX
        let route = plan("Example.com.", &[], true);
        assert!(route.is_implicit());
        assert_eq!(roles(&route), vec![(0, "example.com", Primary)]);
        // no MX and no address: nowhere to deliver
        assert_eq!(plan("example.com", &[], false), Route::NoRoute);
        assert!(Route::NoRoute.hops().is_empty());
        // explicit MX wins over the address
        assert!(!plan("example.com", &mx(&[(10, "mx.example.com")]), true).is_implicit());
    }

    #[test]
    fn delivery_order_shuffles_only_ties() {
        let route = plan(
            "x",
            &mx(&[
                (10, "a"),
                (10, "b"),
                (10, "c"),
                (20, "d"),
                (30, "e"),
                (30, "f"),
            ]),
            false,
        );
        let mut seen_first = std::collections::HashSet::new();
        for seed in 0..64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let order = route.delivery_order(&mut rng);
            let prefs: Vec<u16> = order.iter().map(|h| h.preference).collect();
            assert_eq!(prefs, vec![10, 10, 10, 20, 30, 30]);
            assert_eq!(order[3].exchange, "d");
            seen_first.insert(order[0].exchange.clone());
        }
        assert_eq!(
            seen_first.len(),
            3,
            "every peer should come first sometimes"
        );
    }

    #[test]
    fn relay_forwards_only_to_more_preferred() {
        let route = plan(
            "x",
            &mx(&[
                (10, "primary"),
                (10, "peer"),
                (20, "me"),
                (20, "twin"),
                (30, "worse"),
            ]),
            false,
        );
        let names = |hops: Vec<Hop>| hops.into_iter().map(|h| h.exchange).collect::<Vec<_>>();
        assert_eq!(
            names(route.more_preferred_than("ME.")),
            vec!["peer", "primary"]
        );
        assert!(route.more_preferred_than("peer").is_empty());
        assert_eq!(route.more_preferred_than("elsewhere").len(), 5);
    }
}
