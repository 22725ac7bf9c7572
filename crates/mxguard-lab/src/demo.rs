//! The built-in lab that `mxguard demo` checks: each domain shows one
//! behaviour, described for the person watching.
//!
//! Two tables describe it: [`DEMO_DOMAINS`] (what is checked) and
//! [`DEMO_HOSTS`] (the scripted SMTP host behind every MX address of
//! [`DEMO_ZONE`]). [`demo_hosts`] turns the second into [`HostScript`]s for
//! [`crate::LabSmtpSet::start`].

use std::net::{IpAddr, Ipv4Addr};

use crate::smtp::{Behaviour, HostScript, Reply, StartTls, reply};
use crate::tls::{LabCa, TlsError, Validity};

/// Zone text for every demo domain (see `demo.zone`).
pub const DEMO_ZONE: &str = include_str!("demo.zone");

/// One demo domain.
#[derive(Debug, Clone, Copy)]
pub struct DemoDomain {
    pub domain: &'static str,
    /// What it demonstrates, in a few words.
    pub shows: &'static str,
    /// Check it as a lab (private and loopback addresses expected). Off for
    /// the domain that demonstrates `mx-private-address`.
    pub allow_private: bool,
}

const fn lab(domain: &'static str, shows: &'static str) -> DemoDomain {
    DemoDomain {
        domain,
        shows,
        allow_private: true,
    }
}

/// The demo domains, in the order they are shown.
pub const DEMO_DOMAINS: &[DemoDomain] = &[
    lab(
        "clean.lab",
        "one well-kept MX and no backup: nothing to fix",
    ),
    lab("backup.lab", "a backup on separate infrastructure"),
    lab("samenet.lab", "a backup in the primary's /24"),
    lab("sameasn.lab", "a backup in another /24 of the same AS"),
    lab(
        "sameaddr.lab",
        "a backup that is the primary under another name",
    ),
    lab("nullmx.lab", "a null MX: the domain takes no mail"),
    lab("nullmixed.lab", "a null MX beside a real MX"),
    lab("nomx.lab", "no MX: senders use the domain's own address"),
    lab("nomail.lab", "neither MX nor address"),
    lab("cname.lab", "an MX exchange that is an alias"),
    lab("literal.lab", "a backup MX written as an IP address"),
    lab("unresolvable.lab", "a backup MX with no address"),
    DemoDomain {
        domain: "private.lab",
        shows: "an MX with a private address (checked as the internet would see it)",
        allow_private: false,
    },
    lab("noptr.lab", "an MX without reverse DNS"),
    lab("ptrmismatch.lab", "reverse DNS that does not point back"),
    lab(
        "flaky.lab",
        "a name server that fails one lookup: recorded, not mistaken for absence",
    ),
    lab(
        "backscatter.lab",
        "a backup that accepts mail for users who do not exist",
    ),
    lab(
        "openrelay.lab",
        "a backup that relays mail for other domains",
    ),
    lab(
        "catchall.lab",
        "a catch-all domain: every MX accepts any local part",
    ),
    lab("unreachable.lab", "a backup where nothing answers SMTP"),
    lab("notls.lab", "a backup without STARTTLS"),
    lab("brokentls.lab", "a backup whose STARTTLS fails"),
    lab("expiredcert.lab", "a backup with an expired certificate"),
    lab(
        "bigsize.lab",
        "a backup that takes larger messages than the primary",
    ),
    lab(
        "nobounces.lab",
        "an MX that refuses bounces (the null sender)",
    ),
    lab("nopostmaster.lab", "an MX that refuses postmaster"),
    lab(
        "greylist.lab",
        "a backup that greylists: some answers cannot be had",
    ),
];

/// How a lab SMTP host departs from a well-kept MX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quirk {
    /// STARTTLS with a certificate from the lab CA for every name of the
    /// host; postmaster accepted, unknown users refused, no relaying.
    WellKept,
    /// Accepts any local part at the domains it serves.
    AcceptsAnyRecipient,
    /// Also accepts recipients at the relay probe's third-party domain.
    OpenRelay,
    /// Nothing listens ([`Behaviour::Refuse`]).
    Unreachable,
    /// No STARTTLS.
    NoStartTls,
    /// Offers STARTTLS, then answers the handshake with garbage.
    BrokenStartTls,
    /// STARTTLS with an expired certificate.
    ExpiredCert,
    /// Advertises `SIZE n` instead of the default `SIZE 10240000`.
    Size(u64),
    /// Refuses `MAIL FROM:<>`.
    RejectsNullSender,
    /// Refuses `RCPT TO:<postmaster@domain>`.
    RejectsPostmaster,
    /// Answers every recipient at its domains with a greylisting 450.
    Greylists,
}

/// One scripted SMTP host of the demo lab.
#[derive(Debug, Clone, Copy)]
pub struct DemoHost {
    pub ip: IpAddr,
    /// Every name that leads to `ip` in [`DEMO_ZONE`]: the MX exchanges as
    /// published, and the names their aliases lead to. The first is the
    /// host's own name; the certificate names them all.
    pub names: &'static [&'static str],
    /// The domains whose mail it receives.
    pub serves: &'static [&'static str],
    pub quirk: Quirk,
}

/// The domain the probe's relay battery asks to relay to
/// (`mxguard_smtp::probe::RELAY_TARGET_DOMAIN`).
const RELAY_TARGET_DOMAIN: &str = "relay-probe.mxguard.example";

/// `127.0.x.y`.
const fn lo(x: u8, y: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, x, y))
}

const fn host(
    ip: IpAddr,
    names: &'static [&'static str],
    serves: &'static [&'static str],
    quirk: Quirk,
) -> DemoHost {
    DemoHost {
        ip,
        names,
        serves,
        quirk,
    }
}

use Quirk::*;

/// Every SMTP host of the demo lab, one per A/AAAA address of an MX (or
/// implicit MX) in [`DEMO_ZONE`]. None for private.lab's 10.20.30.40 (checked
/// as the internet sees it, so never probed), nor for literal.lab's backup
/// `127.0.21.2`: an MX written as an IP address has no address record, and
/// senders (and mxguard) do not connect to it.
pub const DEMO_HOSTS: &[DemoHost] = &[
    host(lo(10, 1), &["mx.clean.lab"], &["clean.lab"], WellKept),
    host(lo(11, 1), &["mx.backup.lab"], &["backup.lab"], WellKept),
    // A partner's server, backing up backup.lab.
    host(lo(12, 1), &["mx2.partner.lab"], &["backup.lab"], WellKept),
    host(lo(13, 1), &["mx.samenet.lab"], &["samenet.lab"], WellKept),
    host(lo(13, 2), &["mx2.samenet.lab"], &["samenet.lab"], WellKept),
    host(lo(14, 1), &["mx.sameasn.lab"], &["sameasn.lab"], WellKept),
    host(lo(15, 1), &["mx2.sameasn.lab"], &["sameasn.lab"], WellKept),
    host(
        lo(16, 1),
        &["mx.sameaddr.lab", "backup.sameaddr.lab"],
        &["sameaddr.lab"],
        WellKept,
    ),
    host(
        lo(18, 1),
        &["mx.nullmixed.lab"],
        &["nullmixed.lab"],
        WellKept,
    ),
    host(lo(19, 1), &["nomx.lab"], &["nomx.lab"], WellKept),
    host(
        lo(20, 1),
        &["mx.cname.lab", "mail.cname.lab"],
        &["cname.lab"],
        WellKept,
    ),
    host(lo(21, 1), &["mx.literal.lab"], &["literal.lab"], WellKept),
    host(
        lo(22, 1),
        &["mx.unresolvable.lab"],
        &["unresolvable.lab"],
        WellKept,
    ),
    host(lo(23, 1), &["mx.noptr.lab"], &["noptr.lab"], WellKept),
    host(
        lo(24, 1),
        &["mx.ptrmismatch.lab"],
        &["ptrmismatch.lab"],
        WellKept,
    ),
    host(lo(25, 1), &["mx.flaky.lab"], &["flaky.lab"], WellKept),
    host(lo(26, 1), &["mx2.flaky.lab"], &["flaky.lab"], WellKept),
    host(
        lo(27, 1),
        &["mx.backscatter.lab"],
        &["backscatter.lab"],
        WellKept,
    ),
    host(
        lo(28, 1),
        &["mx2.backscatter.lab"],
        &["backscatter.lab"],
        AcceptsAnyRecipient,
    ),
    host(
        lo(29, 1),
        &["mx.openrelay.lab"],
        &["openrelay.lab"],
        WellKept,
    ),
    host(
        lo(30, 1),
        &["mx2.openrelay.lab"],
        &["openrelay.lab"],
        OpenRelay,
    ),
    host(
        lo(31, 1),
        &["mx.catchall.lab"],
        &["catchall.lab"],
        AcceptsAnyRecipient,
    ),
    host(
        lo(32, 1),
        &["mx2.catchall.lab"],
        &["catchall.lab"],
        AcceptsAnyRecipient,
    ),
    host(
        lo(33, 1),
        &["mx.unreachable.lab"],
        &["unreachable.lab"],
        WellKept,
    ),
    host(
        lo(34, 1),
        &["mx2.unreachable.lab"],
        &["unreachable.lab"],
        Unreachable,
    ),
    host(lo(35, 1), &["mx.notls.lab"], &["notls.lab"], WellKept),
    host(lo(36, 1), &["mx2.notls.lab"], &["notls.lab"], NoStartTls),
    host(
        lo(37, 1),
        &["mx.brokentls.lab"],
        &["brokentls.lab"],
        WellKept,
    ),
    host(
        lo(38, 1),
        &["mx2.brokentls.lab"],
        &["brokentls.lab"],
        BrokenStartTls,
    ),
    host(
        lo(39, 1),
        &["mx.expiredcert.lab"],
        &["expiredcert.lab"],
        WellKept,
    ),
    host(
        lo(40, 1),
        &["mx2.expiredcert.lab"],
        &["expiredcert.lab"],
        ExpiredCert,
    ),
    host(lo(41, 1), &["mx.bigsize.lab"], &["bigsize.lab"], WellKept),
    host(
        lo(42, 1),
        &["mx2.bigsize.lab"],
        &["bigsize.lab"],
        Size(52_428_800),
    ),
    host(
        lo(43, 1),
        &["mx.nobounces.lab"],
        &["nobounces.lab"],
        RejectsNullSender,
    ),
    host(
        lo(44, 1),
        &["mx.nopostmaster.lab"],
        &["nopostmaster.lab"],
        RejectsPostmaster,
    ),
    host(lo(45, 1), &["mx.greylist.lab"], &["greylist.lab"], WellKept),
    host(
        lo(46, 1),
        &["mx2.greylist.lab"],
        &["greylist.lab"],
        Greylists,
    ),
];

/// The scripted host for every entry of [`DEMO_HOSTS`], with certificates
/// issued by `ca`, ready for [`crate::LabSmtpSet::start`].
pub fn demo_hosts(ca: &LabCa) -> Result<Vec<(IpAddr, HostScript)>, TlsError> {
    DEMO_HOSTS
        .iter()
        .map(|h| Ok((h.ip, h.script(ca)?)))
        .collect()
}

impl DemoHost {
    /// The host's script: a well-kept MX, changed by its quirk.
    pub fn script(&self, ca: &LabCa) -> Result<HostScript, TlsError> {
        let name = self.names.first().copied().unwrap_or("mx.demo.lab");
        let mut s = HostScript::new(name);
        if self.quirk == RejectsNullSender {
            s = s.mail("<>", Reply::new(550, "5.7.1 we do not accept bounces"));
        }
        for domain in self.serves {
            let postmaster = format!("postmaster@{domain}");
            let anyone = format!("*@{domain}");
            s = match self.quirk {
                AcceptsAnyRecipient => s.rcpt(&anyone, reply::RECIPIENT_OK),
                Greylists => s.rcpt(
                    &anyone,
                    Reply::new(450, "4.2.0 greylisted, try again later"),
                ),
                RejectsPostmaster => s.rcpt(
                    &postmaster,
                    Reply::new(550, format!("5.1.1 <{postmaster}>: no such user")),
                ),
                _ => s.rcpt(&postmaster, reply::RECIPIENT_OK),
            }
            .rcpt(&anyone, Reply::new(550, "5.1.1 no such user"));
        }
        if self.quirk == OpenRelay {
            s = s.rcpt(&format!("*@{RELAY_TARGET_DOMAIN}"), reply::RECIPIENT_OK);
        }
        s = s.rcpt_default(Reply::new(554, "5.7.1 relay access denied"));
        s = s.starttls(match self.quirk {
            NoStartTls => StartTls::Off,
            BrokenStartTls => StartTls::GarbageAfterReady,
            ExpiredCert => StartTls::Handshake(ca.issue_with(self.names, Validity::Expired)?),
            _ => StartTls::Handshake(ca.issue(self.names)?),
        });
        if let Size(bytes) = self.quirk {
            s = s.extensions([
                "PIPELINING".to_owned(),
                format!("SIZE {bytes}"),
                "8BITMIME".to_owned(),
                "ENHANCEDSTATUSCODES".to_owned(),
            ]);
        }
        if self.quirk == Unreachable {
            s = s.behaviour(Behaviour::Refuse);
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// `(owner, type, value)` for every record line of the zone text.
    fn records() -> Vec<(String, String, String)> {
        DEMO_ZONE
            .lines()
            .map(|l| l.split(';').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .filter_map(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                let [owner, rtype, value @ ..] = words.as_slice() else {
                    return None;
                };
                Some((
                    owner.trim_end_matches('.').to_ascii_lowercase(),
                    rtype.to_ascii_uppercase(),
                    value.join(" "),
                ))
            })
            .collect()
    }

    /// What the zone says each probed address should be: the names that
    /// lead to it and the domains it receives mail for.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct Expected {
        exchanges: BTreeSet<String>,
        names: BTreeSet<String>,
        domains: BTreeSet<String>,
    }

    fn expected_from_zone() -> BTreeMap<IpAddr, Expected> {
        let recs = records();
        let values = |owner: &str, rtype: &str| -> Vec<String> {
            recs.iter()
                .filter(|(o, t, _)| o == owner && t == rtype)
                .map(|(_, _, v)| v.clone())
                .collect()
        };
        // The name's addresses, and every name passed on the way.
        let resolve = |name: &str| -> (Vec<IpAddr>, Vec<String>) {
            // An IP literal as exchange has no address: never probed.
            if name.parse::<IpAddr>().is_ok() {
                return (Vec::new(), Vec::new());
            }
            let mut chain = vec![name.to_owned()];
            let mut current = name.to_owned();
            while let Some(next) = values(&current, "CNAME").first() {
                current = next.trim_end_matches('.').to_ascii_lowercase();
                assert!(chain.len() < 8, "CNAME loop at {name}");
                chain.push(current.clone());
            }
            let ips = ["A", "AAAA"]
                .iter()
                .flat_map(|t| values(&current, t))
                .filter_map(|v| v.parse::<IpAddr>().ok())
                .collect();
            (ips, chain)
        };
        let mut out: BTreeMap<IpAddr, Expected> = BTreeMap::new();
        // A domain checked without --allow-private is never probed here:
        // all its addresses are private or loopback.
        for d in DEMO_DOMAINS.iter().filter(|d| d.allow_private) {
            let mx = values(d.domain, "MX");
            let exchanges: Vec<String> = if mx.is_empty() {
                // No MX: the domain itself is the implicit MX (RFC 5321 §5.1).
                vec![d.domain.to_owned()]
            } else {
                mx.iter()
                    .filter_map(|v| v.split_whitespace().nth(1))
                    .map(|t| t.trim_end_matches('.').to_ascii_lowercase())
                    // The null MX's "." leads nowhere.
                    .filter(|t| !t.is_empty())
                    .collect()
            };
            for exchange in exchanges {
                let (ips, chain) = resolve(&exchange);
                for ip in ips {
                    let e = out.entry(ip).or_default();
                    e.exchanges.insert(exchange.clone());
                    e.names.extend(chain.iter().cloned());
                    e.domains.insert(d.domain.to_owned());
                }
            }
        }
        out
    }

    #[test]
    fn every_mx_address_in_the_zone_has_a_host_and_every_host_an_mx() {
        let expected = expected_from_zone();
        let mut seen = BTreeSet::new();
        for h in DEMO_HOSTS {
            assert!(seen.insert(h.ip), "{} is in DEMO_HOSTS twice", h.ip);
            let Some(e) = expected.get(&h.ip) else {
                panic!(
                    "DEMO_HOSTS has {} ({:?}), but no demo domain's MX leads there in demo.zone",
                    h.ip, h.names
                );
            };
            let names: BTreeSet<String> = h.names.iter().map(|n| n.to_string()).collect();
            for x in &e.exchanges {
                assert!(
                    names.contains(x),
                    "{}: the MX exchange {x} is missing from its names {names:?} (the certificate must name it)",
                    h.ip
                );
            }
            for n in &names {
                assert!(
                    e.names.contains(n),
                    "{}: {n} does not lead to this address in demo.zone",
                    h.ip
                );
            }
            let serves: BTreeSet<String> = h.serves.iter().map(|d| d.to_string()).collect();
            assert_eq!(serves, e.domains, "{}: the domains it serves", h.ip);
        }
        for (ip, e) in &expected {
            assert!(
                seen.contains(ip),
                "{ip} (MX {:?} of {:?}) has no host in DEMO_HOSTS",
                e.exchanges,
                e.domains
            );
        }
    }

    #[test]
    fn the_zone_parses_and_every_demo_domain_is_in_it() {
        crate::ZoneSet::parse(DEMO_ZONE).expect("demo.zone parses");
        let owners: BTreeSet<String> = records().into_iter().map(|(o, _, _)| o).collect();
        let mut names = BTreeSet::new();
        for d in DEMO_DOMAINS {
            assert!(names.insert(d.domain), "{} listed twice", d.domain);
            assert!(
                owners.contains(d.domain),
                "{} is not in demo.zone",
                d.domain
            );
        }
    }

    #[test]
    fn every_host_gets_a_script() {
        let ca = LabCa::new().expect("lab CA");
        let hosts = demo_hosts(&ca).expect("scripts");
        assert_eq!(hosts.len(), DEMO_HOSTS.len());
        for ((ip, script), h) in hosts.iter().zip(DEMO_HOSTS) {
            assert_eq!(*ip, h.ip);
            assert_eq!(script.name(), h.names[0]);
        }
    }
}
