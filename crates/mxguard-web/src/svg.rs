//! The picture of the mail route: senders → each MX in preference order →
//! the primary, each host with its addresses, network and AS, the edges
//! marked for TLS, the hosts for recipient validation and relaying, the
//! problem hosts in red. Plain SVG, no script, readable by screen readers
//! through its title, description and per-host titles.

use std::fmt::Write as _;

use mxguard_audit::report::MxHost;
use mxguard_audit::{Report, Severity};
use mxguard_dns::plan::Role;
use mxguard_smtp::probe::Status;

use crate::html::{esc, network};

const WIDTH: i32 = 980;
const SENDERS_X: i32 = 16;
const SENDERS_W: i32 = 150;
const BACKUP_X: i32 = 265;
const FRONT_X: i32 = 635;
const BOX_W: i32 = 330;
const GAP: i32 = 22;
const LINE: i32 = 17;

/// What the probes say about a host, across its addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tri {
    Yes,
    No,
    Unknown,
}

fn fold(values: impl Iterator<Item = Tri>) -> Tri {
    let mut seen = Tri::Unknown;
    for v in values {
        match v {
            Tri::No => return Tri::No,
            Tri::Yes => seen = Tri::Yes,
            Tri::Unknown => {}
        }
    }
    seen
}

fn from_status(s: Status) -> Tri {
    match s {
        Status::Pass => Tri::Yes,
        Status::Fail => Tri::No,
        Status::Untestable => Tri::Unknown,
    }
}

struct HostFacts {
    tls: Tri,
    validates: Tri,
    refuses_relay: Tri,
    reachable: Tri,
    unreachable: usize,
    probed: usize,
    problems: Vec<String>,
}

fn facts(report: &Report, h: &MxHost) -> HostFacts {
    let probes: Vec<_> = h
        .addresses
        .iter()
        .filter_map(|a| a.smtp.as_deref())
        .collect();
    let tls = fold(probes.iter().map(|p| match &p.tls {
        Some(t) if t.handshake && t.certificate.as_ref().is_some_and(|c| c.trusted) => Tri::Yes,
        Some(_) => Tri::No,
        None if !p.reachable => Tri::Unknown,
        None if p.starttls => Tri::Unknown,
        None => Tri::No,
    }));
    let problems = report
        .findings
        .iter()
        .filter(|f| {
            f.severity >= Severity::Warning && f.host.as_deref() == Some(h.exchange.as_str())
        })
        .map(|f| f.id.as_str().to_owned())
        .collect();
    HostFacts {
        tls,
        validates: fold(
            probes
                .iter()
                .map(|p| from_status(p.unknown_recipient.status)),
        ),
        refuses_relay: fold(probes.iter().map(|p| from_status(p.relay_status()))),
        // A host answers if any of its addresses does (a dual-stack host
        // seen from a server without IPv6 is not dead).
        reachable: if probes.iter().any(|p| p.reachable) {
            Tri::Yes
        } else if probes.is_empty() {
            Tri::Unknown
        } else {
            Tri::No
        },
        unreachable: probes.iter().filter(|p| !p.reachable).count(),
        probed: probes.len(),
        problems,
    }
}

fn box_height(h: &MxHost) -> i32 {
    let shown = h.addresses.len().clamp(1, 4) as i32;
    let more = i32::from(h.addresses.len() > 4);
    30 + (shown + more) * LINE + LINE + 12
}

/// The route diagram for a report.
pub fn route(report: &Report) -> String {
    let fronts: Vec<&MxHost> = report
        .mx
        .iter()
        .filter(|h| h.role != Role::Backup)
        .collect();
    let backups: Vec<&MxHost> = report
        .mx
        .iter()
        .filter(|h| h.role == Role::Backup)
        .collect();
    if report.mx.is_empty() {
        return format!(
            "<section id=\"route\"><h2>Mail route</h2><svg role=\"img\" viewBox=\"0 0 {WIDTH} 80\" width=\"100%\" aria-labelledby=\"route-title\">\
             <title id=\"route-title\">No mail route</title><text x=\"20\" y=\"45\" class=\"note\">{} has no mail server senders could use.</text></svg></section>",
            esc(&report.domain)
        );
    }
    let column =
        |hosts: &[&MxHost]| -> i32 { hosts.iter().map(|h| box_height(h) + GAP).sum::<i32>() };
    // The primary (and its peers) on the right at the top, the backups in
    // the middle below them: the senders' first choice is a clear line
    // along the top, the fallback goes down through the backups, and each
    // backup forwards up to the primary.
    let top = 24;
    let fronts_h = column(&fronts);
    let height = (top + fronts_h + column(&backups) + 10).max(130);
    let senders_y = (top + fronts_h / 2 - 30).max(top);
    let mut out = String::new();
    let _ = write!(
        out,
        "<section id=\"route\"><h2>Mail route</h2><svg id=\"route-svg\" role=\"img\" viewBox=\"0 0 {WIDTH} {height}\" width=\"100%\" \
         aria-labelledby=\"route-title route-desc\" xmlns=\"http://www.w3.org/2000/svg\">\
         <title id=\"route-title\">How mail reaches {d}</title>\
         <desc id=\"route-desc\">Sending servers try the MX hosts in preference order; {n} backup(s) forward to the primary. Hosts with problems are drawn in red.</desc>\
         <defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\" class=\"arrowhead\"/></marker></defs>",
        d = esc(&report.domain),
        n = backups.len(),
    );
    let _ = write!(
        out,
        "<g class=\"senders\"><rect x=\"{SENDERS_X}\" y=\"{senders_y}\" width=\"{SENDERS_W}\" height=\"60\" rx=\"8\"/>\
         <text x=\"{tx}\" y=\"{ty}\" text-anchor=\"middle\">Sending servers</text>\
         <text x=\"{tx}\" y=\"{ty2}\" text-anchor=\"middle\" class=\"small\">queue and retry for days</text></g>",
        tx = SENDERS_X + SENDERS_W / 2,
        ty = senders_y + 26,
        ty2 = senders_y + 44,
    );
    let start = (SENDERS_X + SENDERS_W, senders_y + 30);

    let place = |hosts: &[&MxHost], x: i32, mut y: i32| -> Vec<(i32, i32, i32)> {
        hosts
            .iter()
            .map(|h| {
                let hgt = box_height(h);
                let at = (x, y, hgt);
                y += hgt + GAP;
                at
            })
            .collect()
    };
    // With no backup, the primary sits in the middle.
    let front_x = if backups.is_empty() {
        BACKUP_X
    } else {
        FRONT_X
    };
    let front_at = place(&fronts, front_x, top);
    let backup_at = place(&backups, BACKUP_X, top + fronts_h);

    // Edges first, so that boxes sit on top of them.
    let mut edges = String::new();
    for (h, &(x, y, hgt)) in fronts
        .iter()
        .zip(&front_at)
        .chain(backups.iter().zip(&backup_at))
    {
        let f = facts(report, h);
        let end = (x, y + hgt / 2);
        // The edge says how the mail travels (TLS: solid, otherwise
        // dashed) and whether this is a path spam can take (red: the host
        // takes unknown recipients or relays).
        let tls = match f.tls {
            Tri::Yes => ("tls", "TLS"),
            Tri::No => ("notls", "no TLS"),
            Tri::Unknown => ("unknown", "TLS ?"),
        };
        let mut risks = Vec::new();
        if f.validates == Tri::No {
            risks.push("accepts unknown users");
        }
        if f.refuses_relay == Tri::No {
            risks.push("open relay");
        }
        let risky = if risks.is_empty() { "" } else { " risky" };
        let mut label = format!("pref {} · {}", h.preference, tls.1);
        for r in &risks {
            label.push_str(" · ");
            label.push_str(r);
        }
        let mid = (start.0 + end.0) / 2;
        let _ = write!(
            edges,
            "<path class=\"edge {tc}{risky}\" data-to=\"{name}\" d=\"M{},{} C{mid},{} {mid},{} {},{}\" marker-end=\"url(#arrow)\"><title>to {name}: {label}</title></path>\
             <text class=\"edge-label{risky}\" x=\"{lx}\" y=\"{ly}\" text-anchor=\"end\">{label}</text>",
            start.0,
            start.1,
            start.1,
            end.1,
            end.0 - 2,
            end.1,
            tc = tls.0,
            name = esc(&h.exchange),
            label = esc(&label),
            lx = end.0 - 10,
            ly = if h.role == Role::Backup {
                end.1 + 18
            } else {
                end.1 - 8
            },
        );
    }
    // Each backup hands its mail to the first front host.
    if let Some(&(fx, fy, fh)) = front_at.first() {
        for &(x, y, hgt) in &backup_at {
            let _ = write!(
                edges,
                "<path class=\"edge forward\" d=\"M{},{} L{},{}\" marker-end=\"url(#arrow)\"><title>the backup forwards to the primary</title></path>\
                 <text class=\"edge-label\" x=\"{lx}\" y=\"{ly}\">forwards to the primary</text>",
                x + BOX_W,
                y + hgt / 2,
                fx + BOX_W / 2,
                fy + fh + 2,
                lx = x + BOX_W + 12,
                ly = y + hgt / 2 + 16,
            );
        }
    }
    out.push_str(&edges);

    for (h, &(x, y, _)) in fronts
        .iter()
        .zip(&front_at)
        .chain(backups.iter().zip(&backup_at))
    {
        out.push_str(&host_box(report, h, x, y));
    }
    out.push_str("</svg>");
    out.push_str(
        "<p class=\"legend\"><span class=\"k tls\">TLS</span> trusted STARTTLS · <span class=\"k notls\">no TLS</span> none, failing or untrusted · \
         red edge: a path that takes mail for unknown users or relays · ✓ rejects unknown recipients / refuses to relay · ✗ accepts them / relays · red box: a host with a problem</p></section>",
    );
    out
}

fn host_box(report: &Report, h: &MxHost, x: i32, y: i32) -> String {
    let f = facts(report, h);
    let hgt = box_height(h);
    let role = match h.role {
        Role::Primary => "primary",
        Role::Backup => "backup",
        Role::Peer => "peer",
    };
    let problem = !f.problems.is_empty();
    let mut out = format!(
        "<g class=\"host{}\" data-host=\"{}\" data-role=\"{role}\"><title>{}{}</title>\
         <rect x=\"{x}\" y=\"{y}\" width=\"{BOX_W}\" height=\"{hgt}\" rx=\"8\"/>\
         <text x=\"{tx}\" y=\"{y1}\" class=\"name\">{}</text>\
         <text x=\"{tx2}\" y=\"{y1}\" text-anchor=\"end\" class=\"small\">pref {} · {role}</text>",
        if problem { " problem" } else { "" },
        esc(&h.exchange),
        esc(&h.exchange),
        if problem {
            format!(": {}", f.problems.join(", "))
        } else {
            String::new()
        },
        esc(&h.exchange),
        h.preference,
        tx = x + 10,
        tx2 = x + BOX_W - 10,
        y1 = y + 20,
    );
    let mut line_y = y + 20 + LINE;
    if h.addresses.is_empty() {
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{line_y}\" class=\"small bad\">no address</text>",
            x + 10
        );
        line_y += LINE;
    }
    for a in h.addresses.iter().take(4) {
        let asn = a
            .asn
            .map(|n| format!("AS{n}"))
            .unwrap_or_else(|| "AS ?".into());
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{line_y}\" class=\"small mono\">{} · {} · {asn}</text>",
            x + 10,
            a.ip,
            network(&a.ip)
        );
        line_y += LINE;
    }
    if h.addresses.len() > 4 {
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{line_y}\" class=\"small\">+{} more</text>",
            x + 10,
            h.addresses.len() - 4
        );
        line_y += LINE;
    }
    let mark = |t: Tri, yes: &str, no: &str, unknown: &str| -> (String, &'static str) {
        match t {
            Tri::Yes => (format!("✓ {yes}"), "good"),
            Tri::No => (format!("✗ {no}"), "bad"),
            Tri::Unknown => (format!("? {unknown}"), "unknown"),
        }
    };
    let mut badges = if f.reachable == Tri::No {
        vec![("✗ does not answer SMTP".to_owned(), "bad")]
    } else {
        vec![
            mark(
                f.validates,
                "rejects unknown users",
                "accepts unknown users",
                "recipients",
            ),
            mark(f.refuses_relay, "no relay", "OPEN RELAY", "relay"),
        ]
    };
    if f.reachable == Tri::Yes && f.unreachable > 0 {
        badges.push((
            format!("{} of {} unreachable", f.unreachable, f.probed),
            "unknown",
        ));
    }
    let mut bx = x + 10;
    for (text, class) in badges {
        let _ = write!(
            out,
            "<text x=\"{bx}\" y=\"{}\" class=\"badge {class}\">{}</text>",
            line_y + 4,
            esc(&text)
        );
        // Wide enough for the bold red text.
        bx += text.chars().count() as i32 * 8 + 18;
    }
    out.push_str("</g>");
    out
}
