//! Text output: one screen per domain — host table, findings by severity with
//! their evidence, then the verdict. Styled with ANSI codes that anstream
//! strips when the output is not a terminal or `NO_COLOR` is set.

use std::fmt::Write as _;

use anstyle::{AnsiColor, Style};
use mxguard_audit::report::{Address, MxHost};
use mxguard_audit::{BackupVerdict, Report, Severity};

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

struct Row {
    pref: String,
    host: String,
    role: String,
    addr: String,
    asn: String,
    ptr: String,
}

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

fn rows(host: &MxHost) -> Vec<Row> {
    let mut role = host.role.as_str().to_owned();
    if !host.cname_chain.is_empty() {
        role.push_str(" (alias)");
    }
    let base = |addr: String, asn: String, ptr: String| Row {
        pref: host.preference.to_string(),
        host: host.exchange.clone(),
        role: role.clone(),
        addr,
        asn,
        ptr,
    };
    if host.addresses.is_empty() {
        let why = if host.ip_literal {
            "(IP literal)"
        } else if host.lookup_errors.is_empty() {
            "(no address)"
        } else {
            "(lookup failed)"
        };
        return vec![base(why.into(), "-".into(), "-".into())];
    }
    host.addresses
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let mut r = base(
                a.ip.to_string(),
                a.asn.map_or_else(|| "-".into(), |n| format!("AS{n}")),
                ptr_cell(a),
            );
            if i > 0 {
                r.pref.clear();
                r.host.clear();
                r.role.clear();
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

    let rows: Vec<Row> = r.mx.iter().flat_map(rows).collect();
    if rows.is_empty() {
        let _ = writeln!(
            out,
            "  {}",
            paint(DIM, "no host receives mail for this domain")
        );
    } else {
        let head = Row {
            pref: "pref".into(),
            host: "host".into(),
            role: "role".into(),
            addr: "address".into(),
            asn: "ASN".into(),
            ptr: "reverse DNS".into(),
        };
        let w = |f: fn(&Row) -> &String| {
            rows.iter()
                .chain([&head])
                .map(|r| f(r).chars().count())
                .max()
                .unwrap_or(0)
        };
        let widths = [
            w(|r| &r.pref),
            w(|r| &r.host),
            w(|r| &r.role),
            w(|r| &r.addr),
            w(|r| &r.asn),
        ];
        let line = |r: &Row| {
            format!(
                "  {}  {}  {}  {}  {}  {}",
                pad(&r.pref, widths[0]),
                pad(&r.host, widths[1]),
                pad(&r.role, widths[2]),
                pad(&r.addr, widths[3]),
                pad(&r.asn, widths[4]),
                r.ptr
            )
        };
        let _ = writeln!(out, "{}", paint(DIM, line(&head).trim_end()));
        for row in &rows {
            let _ = writeln!(out, "{}", line(row).trim_end());
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
