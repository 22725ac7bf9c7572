//! The primary's own policy, learnt from its EHLO, so that the relay never
//! takes what the primary would refuse (DESIGN §4, "policy mirrored").
//!
//! Today that is the message size: a backup that accepts a message larger
//! than the primary's SIZE limit can only return it later (accept, then
//! bounce). Every conversation with a primary — callouts, deliveries,
//! probes that get as far as EHLO — tells the mirror what it advertised.
//! A limit is known only once the primary has been heard from; until then
//! (and for a primary that names no SIZE) the relay's own limit applies.

use std::collections::HashMap;
use std::sync::Mutex;

/// What each backed-up domain's primary advertises.
#[derive(Debug, Default)]
pub struct Mirror {
    /// Domain (lower case) → SIZE limit in octets; 0: "no fixed limit".
    sizes: Mutex<HashMap<String, u64>>,
}

impl Mirror {
    fn sizes(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.sizes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The primary of `domain` answered EHLO with `caps`.
    pub fn learn(&self, domain: &str, caps: &mxguard_smtp::Capabilities) {
        let domain = domain.to_ascii_lowercase();
        let mut sizes = self.sizes();
        match caps.size {
            Some(size) => {
                if sizes.insert(domain.clone(), size) != Some(size) {
                    tracing::info!(target: "mxguard::relay", %domain, size, "the primary's message size limit");
                }
            }
            // An EHLO without SIZE says nothing about a limit.
            None => {
                sizes.remove(&domain);
            }
        }
    }

    /// The primary's limit for `domain`, when it has named one.
    pub fn size_limit(&self, domain: &str) -> Option<u64> {
        self.sizes()
            .get(&domain.to_ascii_lowercase())
            .copied()
            .filter(|&s| s > 0)
    }

    /// The SIZE to advertise in EHLO, before any recipient is known: the
    /// relay's own, lowered to the largest of the primaries' limits once
    /// every domain's primary has named one (a sender is never turned away
    /// at MAIL for a message some domain's primary would take; the
    /// per-domain limit is held at RCPT and after DATA).
    pub fn advertised<'a>(&self, own: u64, domains: impl Iterator<Item = &'a String>) -> u64 {
        let sizes = self.sizes();
        let mut largest = 0u64;
        for d in domains {
            match sizes.get(d.as_str()) {
                Some(&s) if s > 0 => largest = largest.max(s),
                _ => return own,
            }
        }
        if largest == 0 { own } else { own.min(largest) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(size: Option<u64>) -> mxguard_smtp::Capabilities {
        mxguard_smtp::Capabilities {
            esmtp: true,
            size,
            ..Default::default()
        }
    }

    #[test]
    fn learns_forgets_and_advertises() {
        let m = Mirror::default();
        let domains = ["a.example".to_owned(), "b.example".to_owned()];
        assert_eq!(m.size_limit("a.example"), None);
        assert_eq!(m.advertised(50_000, domains.iter()), 50_000);
        m.learn("A.example", &caps(Some(10_000)));
        assert_eq!(m.size_limit("a.example"), Some(10_000));
        // One domain still unknown: the relay's own limit.
        assert_eq!(m.advertised(50_000, domains.iter()), 50_000);
        m.learn("b.example", &caps(Some(20_000)));
        assert_eq!(m.advertised(50_000, domains.iter()), 20_000);
        // "SIZE" alone (no limit) and no SIZE at all: nothing to hold to.
        m.learn("b.example", &caps(Some(0)));
        assert_eq!(m.size_limit("b.example"), None);
        assert_eq!(m.advertised(50_000, domains.iter()), 50_000);
        m.learn("a.example", &caps(None));
        assert_eq!(m.size_limit("a.example"), None);
    }
}
