//! The built-in lab that `mxguard demo` checks: each domain shows one
//! behaviour, described for the person watching.

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
];
