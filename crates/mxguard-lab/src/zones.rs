//! The lab's zone text format.
//!
//! One record per line, `NAME TYPE VALUE`, every name absolute (the trailing
//! dot is optional). `;` starts a comment. Types: `A`, `AAAA`, `MX`, `CNAME`,
//! `PTR`, `TXT`, `NS`, and two conveniences:
//!
//! ```text
//! example.lab          MX    10 mx1.example.lab
//! example.lab          MX    0 .                      ; RFC 7505 null MX
//! mx1.example.lab      A     127.0.1.1
//! 127.0.1.1            PTR   mx1.example.lab          ; an address as owner means its reverse name
//! 127.0.1.1            ASN   64500                    ; TXT at <rev>.origin.asn.cymru.com
//! example.lab          TXT   "v=spf1 -all"
//! broken.example.lab   A     !servfail                ; fault: answer SERVFAIL
//! slow.example.lab     *     !timeout                 ; fault: never answer, any type
//! ```
//!
//! Faults are `!servfail`, `!refused` and `!timeout`. Zones are cut
//! automatically: `in-addr.arpa`, `ip6.arpa` and `asn.cymru.com` always exist,
//! `zone NAME` lines declare others, and a name under no declared zone gets a
//! zone at its last two labels. Each zone has a synthesised SOA and NS.

use std::net::IpAddr;

use hickory_proto::rr::rdata::{CNAME, MX, NS, PTR, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// A parsed zone set: zones with their records, and injected faults.
#[derive(Debug, Clone, Default)]
pub struct ZoneSet {
    pub(crate) zones: Vec<String>,
    pub(crate) records: Vec<Record>,
    pub(crate) faults: Vec<Fault>,
}

/// How a lab name server misbehaves for one name and type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    ServFail,
    Refused,
    /// Never answer: the client must time out.
    Timeout,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fault {
    /// Lower-case, no trailing dot.
    pub name: String,
    /// `None` matches every type.
    pub rtype: Option<RecordType>,
    pub kind: FaultKind,
}

/// A line the parser could not use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("zone line {line}: {message}")]
pub struct ZoneError {
    pub line: usize,
    pub message: String,
}

const FIXED_ZONES: [&str; 3] = ["in-addr.arpa", "ip6.arpa", "asn.cymru.com"];

impl ZoneSet {
    /// Parse zone text; see the module docs for the format.
    pub fn parse(text: &str) -> Result<ZoneSet, ZoneError> {
        let mut set = ZoneSet::default();
        set.extend(text)?;
        Ok(set)
    }

    /// Add more lines to this set.
    pub fn extend(&mut self, text: &str) -> Result<(), ZoneError> {
        for (idx, raw) in text.lines().enumerate() {
            let line = strip_comment(raw).trim();
            if line.is_empty() {
                continue;
            }
            let err = |message: String| ZoneError {
                line: idx + 1,
                message,
            };
            self.parse_line(line).map_err(err)?;
        }
        Ok(())
    }

    fn parse_line(&mut self, line: &str) -> Result<(), String> {
        let (owner, rest) = split_word(line);
        if owner.eq_ignore_ascii_case("zone") {
            let zone = normalize(rest);
            if zone.is_empty() || rest.split_whitespace().count() != 1 {
                return Err(format!("expected `zone NAME`, got {line:?}"));
            }
            self.zones.push(zone);
            return Ok(());
        }
        let (rtype, value) = split_word(rest);
        if rtype.is_empty() || value.is_empty() {
            return Err(format!("expected `NAME TYPE VALUE`, got {line:?}"));
        }
        let rtype_upper = rtype.to_ascii_uppercase();
        let owner_ip: Option<IpAddr> = owner.parse().ok();

        if let Some(fault) = value.strip_prefix('!') {
            let kind = match fault.trim() {
                "servfail" => FaultKind::ServFail,
                "refused" => FaultKind::Refused,
                "timeout" => FaultKind::Timeout,
                other => return Err(format!("unknown fault !{other}")),
            };
            let (name, rtype) = match (owner_ip, rtype_upper.as_str()) {
                (Some(ip), "PTR") => (mxguard_dns::net::reverse_name(ip), Some(RecordType::PTR)),
                (Some(ip), "ASN") => (
                    mxguard_dns::net::cymru_origin_name(ip),
                    Some(RecordType::TXT),
                ),
                (_, "*") => (normalize(owner), None),
                (_, t) => (normalize(owner), Some(parse_type(t)?)),
            };
            self.faults.push(Fault { name, rtype, kind });
            return Ok(());
        }

        let (name, rdata) = match (owner_ip, rtype_upper.as_str()) {
            (Some(ip), "PTR") => (
                mxguard_dns::net::reverse_name(ip),
                RData::PTR(PTR(parse_name(value)?)),
            ),
            (Some(ip), "ASN") => (mxguard_dns::net::cymru_origin_name(ip), asn_txt(ip, value)?),
            (Some(_), _) => {
                return Err(format!("an address as owner needs PTR or ASN, got {rtype}"));
            }
            (None, t) => (normalize(owner), parse_rdata(t, value)?),
        };
        let owner_name = parse_name(&name)?;
        self.records
            .push(Record::from_rdata(owner_name, 300, rdata));
        Ok(())
    }

    /// The zone that holds `name`: the longest declared or fixed zone that is
    /// a suffix of it, else its last two labels.
    pub(crate) fn zone_of(&self, name: &str) -> String {
        let within = |zone: &str| name == zone || name.ends_with(&format!(".{zone}"));
        self.zones
            .iter()
            .map(String::as_str)
            .chain(FIXED_ZONES)
            .filter(|z| within(z))
            .max_by_key(|z| z.len())
            .map(str::to_owned)
            .unwrap_or_else(|| {
                let labels: Vec<&str> = name.split('.').collect();
                labels[labels.len().saturating_sub(2)..].join(".")
            })
    }

    /// Every zone this set needs, deduplicated.
    pub(crate) fn all_zones(&self) -> Vec<String> {
        let mut zones: Vec<String> = FIXED_ZONES.iter().map(|z| z.to_string()).collect();
        zones.extend(self.zones.iter().cloned());
        for r in &self.records {
            zones.push(self.zone_of(&normalize(&r.name.to_ascii())));
        }
        for f in &self.faults {
            zones.push(self.zone_of(&f.name));
        }
        zones.sort();
        zones.dedup();
        zones
    }
}

fn strip_comment(line: &str) -> &str {
    // A `;` inside a quoted TXT string is data, not a comment.
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ';' if !quoted => return &line[..i],
            _ => {}
        }
    }
    line
}

fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    }
}

fn normalize(name: &str) -> String {
    mxguard_dns::net::normalize_name(name)
}

fn parse_name(text: &str) -> Result<Name, String> {
    let norm = normalize(text);
    let mut name = if norm.is_empty() {
        Name::root()
    } else {
        Name::from_ascii(&norm).map_err(|e| format!("bad name {text:?}: {e}"))?
    };
    name.set_fqdn(true);
    Ok(name)
}

fn parse_type(t: &str) -> Result<RecordType, String> {
    Ok(match t {
        "A" => RecordType::A,
        "AAAA" => RecordType::AAAA,
        "MX" => RecordType::MX,
        "CNAME" => RecordType::CNAME,
        "PTR" => RecordType::PTR,
        "TXT" => RecordType::TXT,
        "NS" => RecordType::NS,
        "SOA" => RecordType::SOA,
        other => return Err(format!("unsupported record type {other}")),
    })
}

fn parse_rdata(rtype: &str, value: &str) -> Result<RData, String> {
    let bad = |what: &str| format!("bad {rtype} value {value:?}: {what}");
    Ok(match parse_type(rtype)? {
        RecordType::A => RData::A(
            value
                .parse::<std::net::Ipv4Addr>()
                .map_err(|e| bad(&e.to_string()))?
                .into(),
        ),
        RecordType::AAAA => RData::AAAA(
            value
                .parse::<std::net::Ipv6Addr>()
                .map_err(|e| bad(&e.to_string()))?
                .into(),
        ),
        RecordType::MX => {
            let (pref, exchange) = split_word(value);
            let pref: u16 = pref
                .parse()
                .map_err(|_| bad("preference must be 0-65535"))?;
            if exchange.is_empty() || exchange.contains(char::is_whitespace) {
                return Err(bad("expected `PREFERENCE EXCHANGE`"));
            }
            RData::MX(MX::new(pref, parse_name(exchange)?))
        }
        RecordType::CNAME => RData::CNAME(CNAME(parse_name(value)?)),
        RecordType::PTR => RData::PTR(PTR(parse_name(value)?)),
        RecordType::NS => RData::NS(NS(parse_name(value)?)),
        RecordType::TXT => RData::TXT(TXT::new(parse_txt(value).map_err(|e| bad(&e))?)),
        _ => return Err(bad("this type cannot be written by hand")),
    })
}

/// TXT value: one or more quoted strings, or a single bare word.
fn parse_txt(value: &str) -> Result<Vec<String>, String> {
    if !value.starts_with('"') {
        return Ok(vec![value.to_owned()]);
    }
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(after) = rest.trim_start().strip_prefix('"') {
        let end = after.find('"').ok_or("unterminated string")?;
        out.push(after[..end].to_owned());
        rest = &after[end + 1..];
    }
    if !rest.trim().is_empty() {
        return Err(format!("unexpected text after strings: {rest:?}"));
    }
    Ok(out)
}

/// The Cymru origin answer for `ip`, in the service's own layout.
fn asn_txt(ip: IpAddr, value: &str) -> Result<RData, String> {
    let asns: Vec<&str> = value.split_whitespace().collect();
    if asns.is_empty() || asns.iter().any(|a| a.parse::<u32>().is_err()) {
        return Err(format!("ASN wants one or more AS numbers, got {value:?}"));
    }
    let prefix = match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    };
    Ok(RData::TXT(TXT::new(vec![format!(
        "{} | {prefix} | ZZ | lab | 2026-01-01",
        asns.join(" ")
    )])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records_and_sugar() {
        let set = ZoneSet::parse(
            "example.lab. MX 10 mx1.example.lab ; comment\n\
             example.lab MX 0 .\n\
             mx1.example.lab A 127.0.1.1\n\
             127.0.1.1 PTR mx1.example.lab\n\
             127.0.1.1 ASN 64500 64501\n\
             example.lab TXT \"v=spf1 ; -all\" \"more\"\n\
             zone sub.example.lab\n\
             x.sub.example.lab AAAA ::1\n\
             slow.example.lab * !timeout\n\
             127.0.1.2 PTR !servfail\n",
        )
        .unwrap();
        assert_eq!(set.records.len(), 7);
        assert_eq!(set.records[2].name.to_ascii(), "mx1.example.lab.");
        assert_eq!(set.records[3].name.to_ascii(), "1.1.0.127.in-addr.arpa.");
        assert_eq!(
            set.records[4].name.to_ascii(),
            "1.1.0.127.origin.asn.cymru.com."
        );
        match &set.records[4].data {
            RData::TXT(t) => assert_eq!(
                &*t.txt_data[0],
                b"64500 64501 | 127.0.1.0/24 | ZZ | lab | 2026-01-01"
            ),
            other => panic!("{other:?}"),
        }
        match &set.records[5].data {
            RData::TXT(t) => assert_eq!(t.txt_data.len(), 2),
            other => panic!("{other:?}"),
        }
        match &set.records[1].data {
            RData::MX(mx) => assert!(mx.exchange.is_root()),
            other => panic!("{other:?}"),
        }
        assert_eq!(set.faults.len(), 2);
        assert_eq!(set.faults[0].rtype, None);
        assert_eq!(set.faults[1].name, "2.1.0.127.in-addr.arpa");
        assert_eq!(set.zone_of("x.sub.example.lab"), "sub.example.lab");
        assert_eq!(set.zone_of("mx1.example.lab"), "example.lab");
        assert_eq!(
            set.zone_of("1.1.0.127.origin.asn.cymru.com"),
            "asn.cymru.com"
        );
        assert!(set.all_zones().contains(&"example.lab".to_string()));
    }

    #[test]
    fn rejects_bad_lines_with_their_number() {
        let cases = [
            ("x.lab A", 1),
            ("\nx.lab A 300.1.1.1", 2),
            ("x.lab MX ten mx.lab", 1),
            ("x.lab MX 10", 1),
            ("x.lab SRV 1 2 3 x", 1),
            ("x.lab A !explode", 1),
            ("127.0.0.1 A 127.0.0.1", 1),
            ("127.0.0.1 ASN AS64500", 1),
            ("x.lab TXT \"open", 1),
            ("zone", 1),
        ];
        for (text, line) in cases {
            let err = ZoneSet::parse(text).expect_err(text);
            assert_eq!(err.line, line, "{text}: {err}");
        }
    }
}
