//! Small, pure helpers about names and addresses.

use std::net::IpAddr;

/// Lower-case a name and strip one trailing dot; the root becomes "".
pub fn normalize_name(name: &str) -> String {
    let name = name.trim();
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Whether a DNS name is written as an IP address (`192.0.2.1`, `[192.0.2.1]`,
/// `2001:db8::1`). Such an MX exchange is a name that will not resolve the way
/// its owner hoped (RFC 5321 §5.1 requires a domain name).
pub fn name_as_ip_literal(name: &str) -> Option<IpAddr> {
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    let bare = bare.strip_prefix("IPv6:").unwrap_or(bare);
    bare.parse().ok()
}

/// The reverse-lookup name for an address (RFC 1035 §3.5, RFC 3596 §2.5).
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(72);
            for byte in v6.octets().iter().rev() {
                s.push(hex_digit(byte & 0x0f));
                s.push('.');
                s.push(hex_digit(byte >> 4));
                s.push('.');
            }
            s.push_str("ip6.arpa");
            s
        }
    }
}

/// The name queried for an address's origin ASN in Team Cymru's DNS-based
/// IP-to-ASN service: `<reversed>.origin.asn.cymru.com` for IPv4,
/// `<reversed nibbles>.origin6.asn.cymru.com` for IPv6.
pub fn cymru_origin_name(ip: IpAddr) -> String {
    let rev = reverse_name(ip);
    match ip {
        IpAddr::V4(_) => rev.replace("in-addr.arpa", "origin.asn.cymru.com"),
        IpAddr::V6(_) => rev.replace("ip6.arpa", "origin6.asn.cymru.com"),
    }
}

/// One parsed answer of the Cymru origin service:
/// `"64500 64501 | 192.0.2.0/24 | US | arin | 2000-01-01"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsnOrigin {
    /// Every origin AS announcing the prefix (more than one is MOAS).
    pub asns: Vec<u32>,
    /// The announced prefix covering the address, as given.
    pub prefix: Option<String>,
    pub country: Option<String>,
}

/// Parse a Cymru origin TXT string; `None` if the first field has no AS number.
pub fn parse_cymru_origin(txt: &str) -> Option<AsnOrigin> {
    let mut fields = txt.split('|').map(str::trim);
    let asns: Vec<u32> = fields
        .next()?
        .split_whitespace()
        .filter_map(|a| a.parse().ok())
        .collect();
    if asns.is_empty() {
        return None;
    }
    let non_empty = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_owned);
    let prefix = non_empty(fields.next());
    let country = non_empty(fields.next());
    Some(AsnOrigin {
        asns,
        prefix,
        country,
    })
}

/// The class of address, for deciding whether it belongs on a public MX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressScope {
    Public,
    Loopback,
    /// RFC 1918, RFC 4193 unique-local, RFC 6598 shared address space.
    Private,
    LinkLocal,
    /// Unspecified, documentation, benchmarking, multicast, reserved ranges.
    Reserved,
}

impl AddressScope {
    pub fn as_str(self) -> &'static str {
        match self {
            AddressScope::Public => "public",
            AddressScope::Loopback => "loopback",
            AddressScope::Private => "private",
            AddressScope::LinkLocal => "link-local",
            AddressScope::Reserved => "reserved",
        }
    }
}

/// Classify an address (IANA special-purpose registries, RFC 6890).
pub fn address_scope(ip: IpAddr) -> AddressScope {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                AddressScope::Loopback
            } else if v4.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
                AddressScope::Private
            } else if v4.is_link_local() {
                AddressScope::LinkLocal
            } else if v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || o[0] == 0
                || o[0] >= 240
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
            {
                AddressScope::Reserved
            } else {
                AddressScope::Public
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return address_scope(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            // 6to4 (RFC 3056): the IPv4 address it tunnels to decides; a
            // 6to4 address around a private one reaches a private network.
            if seg[0] == 0x2002 {
                let embedded = std::net::Ipv4Addr::new(
                    (seg[1] >> 8) as u8,
                    seg[1] as u8,
                    (seg[2] >> 8) as u8,
                    seg[2] as u8,
                );
                let inner = address_scope(IpAddr::V4(embedded));
                if inner != AddressScope::Public {
                    return inner;
                }
            }
            if v6.is_loopback() {
                AddressScope::Loopback
            } else if (seg[0] & 0xfe00) == 0xfc00 {
                AddressScope::Private
            } else if (seg[0] & 0xffc0) == 0xfe80 {
                AddressScope::LinkLocal
            } else if v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] == 0x2001 && seg[1] == 0x0db8)
                // Documentation (RFC 9637) and benchmarking (RFC 5180).
                || (seg[0] & 0xfff0) == 0x3ff0
                || (seg[0] == 0x2001 && seg[1] == 0x0002 && seg[2] == 0)
                || (seg[0] & 0xe000) != 0x2000
            {
                AddressScope::Reserved
            } else {
                AddressScope::Public
            }
        }
    }
}

/// Whether two addresses share a network: the same /24 for IPv4, the same /48
/// for IPv6 — the granularity at which routing and most outages happen.
pub fn same_network(a: IpAddr, b: IpAddr) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => a.octets()[..3] == b.octets()[..3],
        (IpAddr::V6(a), IpAddr::V6(b)) => a.segments()[..3] == b.segments()[..3],
        _ => false,
    }
}

fn hex_digit(n: u8) -> char {
    char::from_digit(u32::from(n), 16).unwrap_or('0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse_name("192.0.2.1".parse().unwrap()),
            "1.2.0.192.in-addr.arpa"
        );
        assert_eq!(
            reverse_name("2001:db8::567:89ab".parse().unwrap()),
            "b.a.9.8.7.6.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
        assert_eq!(
            cymru_origin_name("198.51.100.7".parse().unwrap()),
            "7.100.51.198.origin.asn.cymru.com"
        );
        assert!(
            cymru_origin_name("2001:db8::1".parse().unwrap()).ends_with(".origin6.asn.cymru.com")
        );
    }

    #[test]
    fn cymru_answers() {
        let o = parse_cymru_origin("23028 | 216.90.108.0/24 | US | arin | 1998-09-25").unwrap();
        assert_eq!(o.asns, vec![23028]);
        assert_eq!(o.prefix.as_deref(), Some("216.90.108.0/24"));
        assert_eq!(o.country.as_deref(), Some("US"));
        let moas = parse_cymru_origin("64500 64501 | 192.0.2.0/24 | | |").unwrap();
        assert_eq!(moas.asns, vec![64500, 64501]);
        assert_eq!(moas.country, None);
        assert_eq!(parse_cymru_origin("NA | x"), None);
        assert_eq!(parse_cymru_origin(""), None);
    }

    #[test]
    fn scopes() {
        let cases = [
            ("127.0.0.1", AddressScope::Loopback),
            ("10.1.2.3", AddressScope::Private),
            ("172.16.0.1", AddressScope::Private),
            ("192.168.1.1", AddressScope::Private),
            ("100.64.0.1", AddressScope::Private),
            ("169.254.0.1", AddressScope::LinkLocal),
            ("192.0.2.1", AddressScope::Reserved),
            ("0.0.0.0", AddressScope::Reserved),
            ("240.0.0.1", AddressScope::Reserved),
            ("8.8.8.8", AddressScope::Public),
            ("::1", AddressScope::Loopback),
            ("fd00::1", AddressScope::Private),
            ("fe80::1", AddressScope::LinkLocal),
            ("2001:db8::1", AddressScope::Reserved),
            ("2a00:1450::1", AddressScope::Public),
            ("::ffff:10.0.0.1", AddressScope::Private),
            ("2002:0a00:0001::1", AddressScope::Private),
            ("2002:7f00:0001::1", AddressScope::Loopback),
            ("2002:0808:0808::1", AddressScope::Public),
            ("3fff:1::1", AddressScope::Reserved),
            ("2001:2::1", AddressScope::Reserved),
        ];
        for (ip, want) in cases {
            assert_eq!(address_scope(ip.parse().unwrap()), want, "{ip}");
        }
    }

    #[test]
    fn networks() {
        let n = |a: &str, b: &str| same_network(a.parse().unwrap(), b.parse().unwrap());
        assert!(n("192.0.2.1", "192.0.2.200"));
        assert!(!n("192.0.2.1", "192.0.3.1"));
        assert!(n("2001:db8:1::1", "2001:db8:1:ffff::2"));
        assert!(!n("2001:db8:1::1", "2001:db8:2::1"));
        assert!(!n("192.0.2.1", "::ffff:192.0.2.1"));
    }

    #[test]
    fn literals() {
        assert!(name_as_ip_literal("192.0.2.1").is_some());
        assert!(name_as_ip_literal("[192.0.2.1]").is_some());
        assert!(name_as_ip_literal("[IPv6:2001:db8::1]").is_some());
        assert!(name_as_ip_literal("mail.example.com").is_none());
        assert_eq!(normalize_name("Mail.Example.COM."), "mail.example.com");
        assert_eq!(normalize_name("."), "");
    }
}

/// Turn user input into the A-label form of a mail domain, or say why not.
///
/// Accepts IDNs (converted with IDNA/UTS 46), any case, an optional trailing
/// dot. Rejects empty input, addresses, labels longer than 63 octets, names
/// longer than 253, and characters a host name cannot hold.
pub fn parse_domain(input: &str) -> Result<String, String> {
    let trimmed = input.trim();
    let bare = trimmed.strip_suffix('.').unwrap_or(trimmed);
    if bare.is_empty() {
        return Err("empty domain name".into());
    }
    if bare.parse::<IpAddr>().is_ok() || name_as_ip_literal(bare).is_some() {
        return Err(format!("{trimmed:?} is an address, not a domain name"));
    }
    let name = hickory_proto::rr::Name::from_utf8(bare)
        .map_err(|e| format!("{trimmed:?} is not a valid domain name: {e}"))?;
    let ascii = normalize_name(&name.to_ascii());
    if ascii.len() > 253 {
        return Err(format!("{trimmed:?} is longer than 253 characters"));
    }
    for label in ascii.split('.') {
        if label.is_empty() {
            return Err(format!("{trimmed:?} has an empty label"));
        }
        if label.len() > 63 {
            return Err(format!("{trimmed:?} has a label longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(format!(
                "{trimmed:?} is not a valid host name (label {label:?})"
            ));
        }
    }
    Ok(ascii)
}

#[cfg(test)]
mod domain_tests {
    use super::parse_domain;

    #[test]
    fn domains() {
        assert_eq!(parse_domain("Example.COM.").unwrap(), "example.com");
        assert_eq!(
            parse_domain(" bücher.example ").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(parse_domain("例え.jp").unwrap(), "xn--r8jz45g.jp");
        for bad in [
            "",
            ".",
            "192.0.2.1",
            "[::1]",
            "a..b",
            "-x.com",
            "x-.com",
            "a b.com",
            "x@y.com",
            &format!("{}.com", "a".repeat(64)),
            &format!("{}com", "abcdefghi.".repeat(26)),
        ] {
            assert!(parse_domain(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
