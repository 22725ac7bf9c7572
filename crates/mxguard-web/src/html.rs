//! The page, rendered on the server: the same HTML serves the plain form
//! (no JavaScript), the streamed fragments and the final result.

use std::fmt::Write as _;

use mxguard_audit::report::{Address, MxHost};
use mxguard_audit::{BackupVerdict, Finding, Report, Severity};
use mxguard_dns::plan::Role;
use mxguard_smtp::probe::{AddressProbe, Status};

/// Escapes text for HTML content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The outage lengths offered in the outage panel.
pub const OUTAGES: [(&str, &str); 6] = [
    ("1h", "1 hour"),
    ("6h", "6 hours"),
    ("1d", "1 day"),
    ("3d", "3 days"),
    ("6d", "6 days"),
    ("10d", "10 days"),
];

/// A whole page around `body`, with the lookup form at the top.
pub fn page(title: &str, domain: &str, body: &str) -> String {
    format!(
        r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="/assets/style.css">
<script src="/assets/app.js" defer></script>
</head>
<body>
<a class="skip" href="#result">Skip to the result</a>
<header>
<h1><a href="/">mxguard</a></h1>
<p class="tagline">Do I need a backup MX, and is the one I have helping or hurting?</p>
<form id="lookup" action="/check" method="get" role="search">
<label for="domain">Domain to check</label>
<input id="domain" name="domain" type="text" inputmode="url" autocomplete="off" spellcheck="false" required placeholder="example.com" value="{domain}">
<button id="go" type="submit">Check</button>
</form>
</header>
<main id="result" tabindex="-1" aria-live="polite">
{body}
</main>
<footer><p>Probes speak SMTP up to RCPT and never send a message. <a href="/api/simulate?outage=6h">JSON API</a> · results are not stored.</p></footer>
</body>
</html>
"##,
        title = esc(title),
        domain = esc(domain),
    )
}

/// The front page's body.
pub fn intro() -> String {
    "<section class=\"intro\"><p>Enter a domain: mxguard looks up its MX records, talks SMTP to every \
     mail server (without sending mail), compares each backup MX with the primary, draws the mail \
     route, and says whether the backup helps or hurts.</p></section>"
        .to_owned()
}

/// An error, said as a message.
pub fn error(message: &str) -> String {
    format!(
        "<section id=\"error\" class=\"error\" role=\"alert\"><h2>Could not check</h2><p>{}</p></section>",
        esc(message)
    )
}

fn verdict_label(v: BackupVerdict) -> &'static str {
    match v {
        BackupVerdict::NotNeeded => "No backup MX needed",
        BackupVerdict::Healthy => "The backup MX is healthy",
        BackupVerdict::Redundant => "The backup MX adds little",
        BackupVerdict::Liability => "The backup MX is a liability",
        BackupVerdict::NoMail => "This domain takes no mail",
    }
}

fn verdict_id(v: BackupVerdict) -> &'static str {
    match v {
        BackupVerdict::NotNeeded => "not-needed",
        BackupVerdict::Healthy => "healthy",
        BackupVerdict::Redundant => "redundant",
        BackupVerdict::Liability => "liability",
        BackupVerdict::NoMail => "no-mail",
    }
}

fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::Warning => "warning",
        Severity::Info => "info",
    }
}

/// What is shown while DNS is done and the probes run.
pub fn planned(domain: &str, hosts: &[MxHost]) -> String {
    let mut out = format!(
        "<section id=\"verdict\" class=\"verdict pending\" data-verdict=\"pending\"><h2>Checking {}…</h2><p>DNS done: {} MX host(s); probing each address over SMTP.</p></section>",
        esc(domain),
        hosts.len()
    );
    out.push_str(&hosts_table(hosts, true));
    out
}

/// The full result: verdict, route diagram, hosts, findings, outage panel.
pub fn result(report: &Report) -> String {
    let v = report.verdict.backup_mx;
    let mut out = format!(
        "<section id=\"verdict\" class=\"verdict v-{id}\" data-verdict=\"{id}\"><h2>{label}</h2><p class=\"summary\">{summary}</p>",
        id = verdict_id(v),
        label = verdict_label(v),
        summary = esc(&report.verdict.summary),
    );
    if !report.verdict.advice.is_empty() {
        out.push_str("<h3>What to do</h3><ul class=\"advice\">");
        for a in &report.verdict.advice {
            let _ = write!(out, "<li>{}</li>", esc(a));
        }
        out.push_str("</ul>");
    }
    out.push_str("</section>");
    out.push_str(&crate::svg::route(report));
    out.push_str(&hosts_table(&report.mx, false));
    out.push_str(&findings(&report.findings));
    out.push_str(&outage_panel());
    out
}

/// The row id of one address of one host, for streamed updates.
pub fn row_id(host: &str, ip: &std::net::IpAddr) -> String {
    // Letters and digits as they are, anything else as _xx: two different
    // host/address pairs never share an id.
    let mut id = String::from("row-");
    for b in format!("{host} {ip}").bytes() {
        if b.is_ascii_alphanumeric() {
            id.push(char::from(b));
        } else {
            id.push_str(&format!("_{b:02x}"));
        }
    }
    id
}

fn hosts_table(hosts: &[MxHost], pending: bool) -> String {
    let mut out = String::from(
        "<section id=\"hosts\"><h2>Mail servers</h2><table><caption>Every MX host and address, in preference order</caption>\
         <thead><tr><th scope=\"col\">Pref</th><th scope=\"col\">Host</th><th scope=\"col\">Role</th><th scope=\"col\">Address</th>\
         <th scope=\"col\">Network</th><th scope=\"col\">AS</th><th scope=\"col\">Reverse DNS</th><th scope=\"col\">SMTP</th>\
         <th scope=\"col\">TLS</th><th scope=\"col\">Unknown recipient</th><th scope=\"col\">Relay</th></tr></thead><tbody>",
    );
    for h in hosts {
        if h.addresses.is_empty() {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td colspan=\"8\">no address</td></tr>",
                h.preference,
                esc(&h.exchange),
                role(h.role)
            );
        }
        for a in &h.addresses {
            out.push_str(&host_row(h, a, pending && a.smtp.is_none()));
        }
    }
    out.push_str("</tbody></table></section>");
    out
}

fn role(r: Role) -> &'static str {
    match r {
        Role::Primary => "primary",
        Role::Backup => "backup",
        Role::Peer => "peer",
    }
}

/// The /24 (IPv4) or /48 (IPv6) an address is in.
pub fn network(ip: &std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    }
}

fn status_cell(status: Status, pass: &str, fail: &str) -> String {
    match status {
        Status::Pass => format!("<td class=\"pass\">{}</td>", esc(pass)),
        Status::Fail => format!("<td class=\"fail\">{}</td>", esc(fail)),
        Status::Untestable => "<td class=\"untestable\">untestable</td>".to_owned(),
    }
}

/// One address's row; `pending` while its probe runs.
pub fn host_row(h: &MxHost, a: &Address, pending: bool) -> String {
    let mut out = format!(
        "<tr id=\"{id}\"><td>{pref}</td><td>{host}</td><td>{role}</td><td>{ip}</td><td>{net}</td><td>{asn}</td><td>{ptr}</td>",
        id = row_id(&h.exchange, &a.ip),
        pref = h.preference,
        host = esc(&h.exchange),
        role = role(h.role),
        ip = a.ip,
        net = network(&a.ip),
        asn = a
            .asn
            .map(|n| format!("AS{n}"))
            .unwrap_or_else(|| "?".into()),
        ptr = esc(a.ptr.as_deref().unwrap_or("none")),
    );
    match (&a.smtp, &a.smtp_skipped) {
        (Some(p), _) => out.push_str(&probe_cells(p)),
        (None, Some(why)) => {
            let _ = write!(out, "<td colspan=\"4\" class=\"skipped\">{}</td>", esc(why));
        }
        (None, None) if pending => {
            out.push_str("<td colspan=\"4\" class=\"probing\">probing…</td>")
        }
        (None, None) => out.push_str("<td colspan=\"4\">not probed</td>"),
    }
    out.push_str("</tr>");
    out
}

fn probe_cells(p: &AddressProbe) -> String {
    if !p.reachable {
        let why = p
            .error
            .as_ref()
            .map(|e| format!("{} ({})", e.reason.as_str(), e.detail))
            .unwrap_or_else(|| "no answer".into());
        return format!(
            "<td class=\"fail\" colspan=\"4\">unreachable: {}</td>",
            esc(&why)
        );
    }
    let mut out = String::from("<td class=\"pass\">answers</td>");
    let tls = match &p.tls {
        Some(t) if t.handshake => {
            let trusted = t.certificate.as_ref().is_some_and(|c| c.trusted);
            if trusted {
                format!(
                    "<td class=\"pass\">{}</td>",
                    esc(t.version.as_deref().unwrap_or("TLS"))
                )
            } else {
                "<td class=\"warn\">TLS, certificate not trusted</td>".to_owned()
            }
        }
        Some(_) => "<td class=\"fail\">STARTTLS fails</td>".to_owned(),
        None if p.starttls => "<td class=\"untestable\">offered</td>".to_owned(),
        None => "<td class=\"fail\">no STARTTLS</td>".to_owned(),
    };
    out.push_str(&tls);
    out.push_str(&status_cell(
        p.unknown_recipient.status,
        "rejected",
        "accepted",
    ));
    out.push_str(&status_cell(p.relay_status(), "refused", "OPEN RELAY"));
    out
}

fn findings(findings: &[Finding]) -> String {
    if findings.is_empty() {
        return "<section id=\"findings\"><h2>Findings</h2><p>None: nothing to fix.</p></section>"
            .to_owned();
    }
    let mut out = String::from("<section id=\"findings\"><h2>Findings</h2><ul class=\"findings\">");
    for f in findings {
        let sev = severity(f.severity);
        let _ = write!(
            out,
            "<li class=\"finding {sev}\" data-finding=\"{id}\"><p><span class=\"sev\">{sev}</span> <code>{id}</code>{host} — {msg}</p><pre class=\"evidence\">{ev}</pre></li>",
            id = f.id.as_str(),
            host = f
                .host
                .as_deref()
                .map(|h| format!(" <span class=\"on\">{}</span>", esc(h)))
                .unwrap_or_default(),
            msg = esc(&f.message),
            ev = esc(&f.evidence),
        );
    }
    out.push_str("</ul></section>");
    out
}

/// The outage panel: pick a length, see the senders' timeline.
pub fn outage_panel() -> String {
    outage_panel_with("6h", false)
}

/// The outage panel with a length (and the backup box) chosen.
pub fn outage_panel_with(chosen: &str, backup: bool) -> String {
    let mut out = String::from(
        "<section id=\"outage\"><h2>What if the primary goes down?</h2>\
         <form id=\"outage-form\" action=\"/simulate\" method=\"get\">\
         <label for=\"outage-length\">Outage length</label> <select id=\"outage-length\" name=\"outage\">",
    );
    for (value, label) in OUTAGES {
        let selected = if value == chosen { " selected" } else { "" };
        let _ = write!(out, "<option value=\"{value}\"{selected}>{label}</option>");
    }
    // A length asked for in the URL that the list does not have.
    if !OUTAGES.iter().any(|(v, _)| *v == chosen) && mxguard_sim::parse_duration(chosen).is_ok() {
        let v = esc(chosen);
        let _ = write!(out, "<option value=\"{v}\" selected>{v}</option>");
    }
    out.push_str(
        "</select> <input id=\"outage-backup\" type=\"checkbox\" name=\"backup\" value=\"1\"{checked}> \
         <label for=\"outage-backup\">with a backup MX that works like mxguard relay (its defaults)</label> \
         <button type=\"submit\">Show the senders' timeline</button></form>\
         <div id=\"outage-result\"></div></section>",
    );
    out.replace("{checked}", if backup { " checked" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_ids_never_collide_and_are_safe_in_html() {
        let ip: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let a = row_id("a-b.x.test", &ip);
        let b = row_id("a.b-x.test", &ip);
        assert_ne!(a, b);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        );
    }

    #[test]
    fn escaping_covers_attributes_and_text() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
