//! Recipient addresses as the relay judges them.

use mxguard_dns::net::parse_domain;

/// A recipient split into its parts, the domain in A-label form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// As given (smtp-proto has already removed quoting and source routes).
    pub local: String,
    /// Lower case, A-labels, no trailing dot.
    pub domain: String,
}

impl Recipient {
    /// The address to store and forward: `local@domain`.
    pub fn address(&self) -> String {
        format!("{}@{}", self.local, self.domain)
    }
}

/// Why an address is not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressProblem {
    /// No domain (the bare `<postmaster>` of RFC 5321 §4.5.1, or garbage).
    NoDomain,
    /// An address literal (`user@[192.0.2.1]`): never one of ours.
    Literal,
    /// `%`, `!` or a second `@` in the local part: sender-specified routing,
    /// the classic ways to make a relay forward elsewhere.
    Routing,
    /// The domain is not a valid name.
    BadDomain(String),
}

/// Split and normalise a recipient.
pub fn parse_recipient(address: &str) -> Result<Recipient, AddressProblem> {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Err(AddressProblem::NoDomain);
    };
    if local.is_empty() {
        return Err(AddressProblem::NoDomain);
    }
    if domain.starts_with('[') {
        return Err(AddressProblem::Literal);
    }
    if local.contains(['%', '!', '@']) {
        return Err(AddressProblem::Routing);
    }
    let domain = parse_domain(domain).map_err(AddressProblem::BadDomain)?;
    Ok(Recipient {
        local: local.to_owned(),
        domain,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_normalises() {
        let r = parse_recipient("Alice@Example.COM.").unwrap();
        assert_eq!(r.local, "Alice");
        assert_eq!(r.domain, "example.com");
        assert_eq!(r.address(), "Alice@example.com");
        let idn = parse_recipient("jörg@bücher.example").unwrap();
        assert_eq!(idn.domain, "xn--bcher-kva.example");
        assert_eq!(idn.local, "jörg");
    }

    #[test]
    fn refuses_routing_and_literals() {
        for (a, want) in [
            ("user%other.example@example.com", AddressProblem::Routing),
            ("other.example!user@example.com", AddressProblem::Routing),
            ("a@b@example.com", AddressProblem::Routing),
            ("user@[192.0.2.1]", AddressProblem::Literal),
            ("", AddressProblem::NoDomain),
            ("postmaster", AddressProblem::NoDomain),
            ("@example.com", AddressProblem::NoDomain),
        ] {
            assert_eq!(parse_recipient(a), Err(want), "{a}");
        }
        assert!(matches!(
            parse_recipient("user@exa_mple.com"),
            Err(AddressProblem::BadDomain(_))
        ));
    }
}
