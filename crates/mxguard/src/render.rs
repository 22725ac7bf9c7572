//! Text output: one screen per domain — host table, findings by severity with
//! their evidence, then the verdict. Styled with ANSI codes that anstream
//! strips when the output is not a terminal or `NO_COLOR` is set.

use std::fmt::Write as _;

use anstyle::{AnsiColor, Style};
use mxguard_audit::report::{Address, MxHost};
use mxguard_audit::{BackupVerdict, Report, Severity};
use mxguard_smtp::probe::{Check, Status};

const BOLD: Style = Style::new().bold();
const DIM: Style = Style::new().dimmed();
const RED: Style = AnsiColor::Red.on_default().bold();
const YELLOW: Style = AnsiColor::Yellow.on_default().bold();
const BLUE: Style = AnsiColor::Blue.on_default();
const GREEN: Style = AnsiColor::Green.on_default().bold();
const CYAN: Style = AnsiColor::Cyan.on_default().bold();

fn paint(style: Style, text: &str) -> String {
    format!("{style}{text}{style:#}")
}

fn severity_style(s: Severity) -> Style {
    match s {
        Severity::Critical => RED,
        Severity::Warning => YELLOW,
        Severity::Info => BLUE,
    }
}

fn verdict_style(v: BackupVerdict) -> Style {
    match v {
        BackupVerdict::NotNeeded | BackupVerdict::Healthy => GREEN,
        BackupVerdict::Redundant => YELLOW,
        BackupVerdict::Liability => RED,
        BackupVerdict::NoMail => CYAN,
    }
}

fn verdict_label(v: BackupVerdict) -> &'static str {
    match v {
        BackupVerdict::NotNeeded => "not needed",
        BackupVerdict::Healthy => "healthy",
        BackupVerdict::Redundant => "redundant",
        BackupVerdict::Liability => "LIABILITY",
        BackupVerdict::NoMail => "no mail",
    }
}

/// Pad `text` to `width` columns, counting characters (not bytes).
fn pad(text: &str, width: usize) -> String {
    let n = text.chars().count();
    format!("{text}{}", " ".repeat(width.saturating_sub(n)))
}

/// One line of the host table: pref, host, role, address, ASN, reverse
/// DNS, then (when SMTP was probed) TLS, recipient validation and relay.
type Row = Vec<String>;

fn ptr_cell(a: &Address) -> String {
    match (&a.ptr, a.fcrdns) {
        (Some(p), Some(true)) => format!("{p} ✓"),
        (Some(p), Some(false)) => format!("{p} ✗ (does not point back)"),
        (Some(p), None) => format!("{p} ?"),
        (None, _) if a.scope != "public" && a.lookup_errors.is_empty() && !a.ptr_checked => {
            "-".into()
        }
        (None, _) if a.lookup_errors.iter().any(|e| e.query.starts_with("PTR")) => {
            "lookup failed".into()
        }
        (None, _) => "none".into(),
    }
}

fn untestable(c: &Check) -> String {
    format!("? {}", c.reason.map_or("untestable", |r| r.as_str()))
}

/// TLS, recipient validation and relay cells for one address.
fn smtp_cells(a: &Address) -> [String; 3] {
    let Some(p) = a.smtp.as_deref() else {
        let why = if a.smtp_skipped.is_some() {
            "not probed"
        } else {
            "-"
        };
        return [why.into(), "-".into(), "-".into()];
    };
    if !p.reachable {
        let why = p
            .error
            .as_ref()
            .map_or("unreachable", |e| e.reason.as_str());
        return [format!("unreachable ({why})"), "-".into(), "-".into()];
    }
    let tls = match &p.tls {
        _ if p.greeting.is_none() => "?".to_owned(),
        None => "none".into(),
        Some(t) if !t.handshake => "failed".into(),
        Some(t) => {
            let version = t
                .version
                .as_deref()
                .map_or("TLS".to_owned(), |v| v.replace("TLSv1_", "TLS 1."));
            if t.certificate.as_ref().is_some_and(|c| c.trusted) {
                format!("{version} ✓")
            } else {
                format!("{version} ✗ cert")
            }
        }
    };
    let rcpt = match p.unknown_recipient.status {
        Status::Pass => "rejects unknown".to_owned(),
        Status::Fail => "ACCEPTS ANY".into(),
        Status::Untestable => untestable(&p.unknown_recipient),
    };
    let relay = match p.relay_status() {
        Status::Pass => "refused".to_owned(),
        Status::Fail => "OPEN".into(),
        Status::Untestable => p
            .relay
            .iter()
            .find(|r| r.check.status == Status::Untestable)
            .map_or("? untestable".into(), |r| untestable(&r.check)),
    };
    [tls, rcpt, relay]
}

fn rows(host: &MxHost, smtp: bool) -> Vec<Row> {
    let mut role = host.role.as_str().to_owned();
    if !host.cname_chain.is_empty() {
        role.push_str(" (alias)");
    }
    let base = |rest: Vec<String>| -> Row {
        let mut row = vec![
            host.preference.to_string(),
            host.exchange.clone(),
            role.clone(),
        ];
        row.extend(rest);
        row
    };
    if host.addresses.is_empty() {
        let why = if host.ip_literal {
            "(IP literal)"
        } else if host.lookup_errors.is_empty() {
            "(no address)"
        } else {
            "(lookup failed)"
        };
        let mut rest = vec![why.to_owned(), "-".into(), "-".into()];
        if smtp {
            rest.extend(["-".into(), "-".into(), "-".into()]);
        }
        return vec![base(rest)];
    }
    host.addresses
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let mut rest = vec![
                a.ip.to_string(),
                a.asn.map_or_else(|| "-".into(), |n| format!("AS{n}")),
                ptr_cell(a),
            ];
            if smtp {
                rest.extend(smtp_cells(a));
            }
            let mut r = base(rest);
            if i > 0 {
                for cell in &mut r[..3] {
                    cell.clear();
                }
            }
            r
        })
        .collect()
}

/// A line introducing a report (the demo says what each domain shows).
pub fn caption(text: &str) -> String {
    format!("{}\n", paint(DIM, &format!("── {text}")))
}

/// Render one report as text.
pub fn report(r: &Report) -> String {
    let mut out = String::new();
    let v = r.verdict.backup_mx;
    let _ = writeln!(
        out,
        "{}  {} {}",
        paint(BOLD, &r.domain),
        paint(DIM, "backup MX:"),
        paint(verdict_style(v), verdict_label(v))
    );

    let smtp = r.smtp_probed;
    let rows: Vec<Row> = r.mx.iter().flat_map(|h| rows(h, smtp)).collect();
    if rows.is_empty() {
        let _ = writeln!(
            out,
            "  {}",
            paint(DIM, "no host receives mail for this domain")
        );
    } else {
        let mut head: Row = ["pref", "host", "role", "address", "ASN", "reverse DNS"]
            .map(String::from)
            .to_vec();
        if smtp {
            head.extend(["TLS", "recipients", "relay"].map(String::from));
        }
        let widths: Vec<usize> = (0..head.len())
            .map(|i| {
                rows.iter()
                    .chain([&head])
                    .map(|r| r[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |r: &Row| {
            let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| pad(c, *w)).collect();
            format!("  {}", cells.join("  "))
        };
        let _ = writeln!(out, "{}", paint(DIM, line(&head).trim_end()));
        for row in &rows {
            let text = line(row);
            let text = text.trim_end();
            let bad = row.iter().any(|c| c == "ACCEPTS ANY" || c == "OPEN");
            if bad {
                let _ = writeln!(out, "{}", paint(RED, text));
            } else {
                let _ = writeln!(out, "{text}");
            }
        }
    }

    if !r.findings.is_empty() {
        let _ = writeln!(out);
        for f in &r.findings {
            let style = severity_style(f.severity);
            let mut about = String::new();
            if let Some(h) = &f.host {
                about.push_str(h);
            }
            if let Some(ip) = f.ip {
                let _ = write!(about, " {ip}");
            }
            let head = format!(
                "  {} {}  {}",
                paint(style, &pad(f.severity.as_str(), 8)),
                paint(BOLD, f.id.as_str()),
                paint(DIM, about.trim())
            );
            let _ = writeln!(out, "{}", head.trim_end());
            let _ = writeln!(out, "           {}", f.message);
            let _ = writeln!(out, "           {} {}", paint(DIM, "evidence:"), f.evidence);
        }
    }

    let _ = writeln!(out);
    let _ = writeln!(out, "  {}", r.verdict.summary);
    for a in &r.verdict.advice {
        let _ = writeln!(out, "  {} {a}", paint(BOLD, "→"));
    }
    out
}
