//! `mxguard simulate`: one message through an outage, sender by sender,
//! with and without a backup MX; a table and a timeline in text, or the
//! JSON report (DESIGN §3).

use std::fmt::Write as _;

use anstyle::{AnsiColor, Style};
use mxguard_sim::{Backup, Profile, Report, Scenario, format_secs};

use crate::cli::{SimFormat, SimulateArgs};
use crate::{Exit, Failure, output};

const BOLD: Style = Style::new().bold();
const DIM: Style = Style::new().dimmed();
const RED: Style = AnsiColor::Red.on_default().bold();
const YELLOW: Style = AnsiColor::Yellow.on_default().bold();
const GREEN: Style = AnsiColor::Green.on_default().bold();

fn paint(style: Style, text: &str) -> String {
    format!("{style}{text}{style:#}")
}

/// Columns of the timeline.
const WIDTH: usize = 60;

pub fn run(args: SimulateArgs) -> Result<Exit, Failure> {
    let duration = |flag: &str, text: &str| {
        mxguard_sim::parse_duration(text)
            .map(|d| d.0)
            .map_err(|e| Failure::Usage(format!("--{flag}: {e}")))
    };
    let outage = duration("outage", &args.outage)?;
    let start = duration("start", &args.start)?;
    let scenario = Scenario::new(outage, start).map_err(Failure::Usage)?;
    let profiles = select_profiles(&args)?;
    let backup = match &args.relay_config {
        Some(path) => Some(backup_from_config(path)?),
        None if args.backup => Some(Backup::default()),
        None => None,
    };
    let report = mxguard_sim::report(scenario, &profiles, backup.as_ref());
    match args.format {
        SimFormat::Json => {
            let mut text = serde_json::to_string_pretty(&report)
                .map_err(|e| Failure::Internal(format!("encoding the report: {e}")))?;
            text.push('\n');
            output::write_plain(&text)?;
        }
        SimFormat::Text => output::write_styled(&render(&report, &profiles))?,
    }
    Ok(Exit::Clean)
}

/// The end of `mxguard demo`: the question behind it all, in numbers — a
/// short outage that senders' queues absorb, and a long one that only a
/// backup MX survives.
pub fn demo_section() -> String {
    let ids = ["postfix", "exim", "exchange-online", "gmail"];
    let profiles: Vec<Profile> = ids
        .iter()
        .filter_map(|id| mxguard_sim::builtin_profile(id))
        .collect();
    let mut out = format!(
        "\n{}\n\n",
        paint(
            BOLD,
            "Do you need a backup MX? What senders do while the primary is down (mxguard simulate):"
        )
    );
    for (outage, backup) in [(6 * 3600, None), (6 * 86_400, Some(Backup::default()))] {
        let Ok(scenario) = Scenario::new(outage, 0) else {
            continue;
        };
        let report = mxguard_sim::report(scenario, &profiles, backup.as_ref());
        out.push_str(&render(&report, &profiles));
        out.push('\n');
    }
    out.push_str(&format!(
        "{}\n",
        paint(
            DIM,
            "All 14 sender profiles and their sources: docs/senders.md; try `mxguard simulate --outage 2d --backup`."
        )
    ));
    out
}

/// The built-in profiles, with the user's files merged in (same id
/// replaces), narrowed to `--profile`.
fn select_profiles(args: &SimulateArgs) -> Result<Vec<Profile>, Failure> {
    let mut all = mxguard_sim::builtin();
    for path in &args.profile_file {
        let extra = mxguard_sim::load_profiles(path).map_err(|e| Failure::Usage(e.to_string()))?;
        for p in extra {
            match all.iter_mut().find(|q| q.id == p.id) {
                Some(slot) => *slot = p,
                None => all.push(p),
            }
        }
    }
    if args.profile.is_empty() {
        return Ok(all);
    }
    let mut out = Vec::new();
    for id in &args.profile {
        let id = id.trim();
        match all.iter().find(|p| p.id == id) {
            Some(p) if !out.iter().any(|q: &Profile| q.id == p.id) => out.push(p.clone()),
            Some(_) => {}
            None => {
                let known: Vec<&str> = all.iter().map(|p| p.id.as_str()).collect();
                return Err(Failure::Usage(format!(
                    "--profile: no sender `{id}`; known: {}",
                    known.join(", ")
                )));
            }
        }
    }
    Ok(out)
}

/// The backup settings in a relay configuration's `[delivery]` table.
fn backup_from_config(path: &std::path::Path) -> Result<Backup, Failure> {
    let cfg = mxguard_relay::Config::load(path)
        .map_err(|e| Failure::Usage(format!("--relay-config {}: {e}", path.display())))?;
    let d = &cfg.delivery;
    Ok(Backup {
        retry: d.retry.iter().map(|r| r.as_secs().max(1)).collect(),
        jitter: d.jitter,
        lifetime: d.lifetime.as_secs(),
        warn_after: d.warn_after.as_secs(),
        probe_interval: d.probe_interval.as_secs().max(1),
        dsn: match d.dsn {
            mxguard_relay::config::DsnPolicy::Authenticated => mxguard_sim::Dsn::Authenticated,
            mxguard_relay::config::DsnPolicy::Always => mxguard_sim::Dsn::Always,
            mxguard_relay::config::DsnPolicy::Never => mxguard_sim::Dsn::Never,
        },
    })
}

fn at(t: u64) -> String {
    format!("+{}", format_secs(t))
}

fn pad(text: &str, width: usize) -> String {
    let n = text.chars().count();
    format!("{text}{}", " ".repeat(width.saturating_sub(n)))
}

fn pad_left(text: &str, width: usize) -> String {
    let n = text.chars().count();
    format!("{}{text}", " ".repeat(width.saturating_sub(n)))
}

/// The text report: what happens in one sentence, a table, a timeline, and
/// what a backup changes.
pub fn render(r: &Report, profiles: &[Profile]) -> String {
    let mut out = String::new();
    let recovery = r.recovery_at_s;
    let when = if r.start_s == 0 {
        "sent as it begins".to_owned()
    } else {
        format!("sent {} into it", format_secs(r.start_s))
    };
    let _ = writeln!(
        out,
        "{}",
        paint(
            BOLD,
            &format!(
                "An outage of {}, the message {when}: the primary is back at {} (times from the sender's first attempt).",
                format_secs(r.outage_s),
                at(recovery)
            )
        )
    );

    let bounced: Vec<&str> = r
        .senders
        .iter()
        .filter(|s| s.bounced_at_s.is_some())
        .map(|s| s.name.as_str())
        .collect();
    let summary = if bounced.is_empty() {
        let slowest = r
            .senders
            .iter()
            .filter_map(|s| s.delay_after_recovery_s.map(|d| (d, s.name.as_str())))
            .max();
        let mut line = format!(
            "No sender returns the message: every one of the {} delivers it once the primary is back",
            r.senders.len()
        );
        if let Some((d, name)) = slowest.filter(|(d, _)| *d > 0) {
            let _ = write!(line, " ({name} last, {} after)", format_secs(d));
        }
        line.push_str(
            ". Senders' queues cover this outage; a backup MX would add nothing but speed.",
        );
        paint(GREEN, &line)
    } else {
        let mut line = format!(
            "{} of {} senders return the message to its sender: {}.",
            bounced.len(),
            r.senders.len(),
            bounced.join(", ")
        );
        if let Some(b) = &r.backup {
            match b.delivered_at_s {
                Some(d) => {
                    let _ = write!(
                        line,
                        " With the backup MX none does: it delivers at {}.",
                        at(d)
                    );
                }
                None => {
                    let _ = write!(
                        line,
                        " The backup MX does not help: it too gives up, after {}.",
                        format_secs(b.lifetime_s)
                    );
                }
            }
        } else {
            line.push_str(
                " Only a backup MX that keeps mail longer than the outage would prevent it (try --backup).",
            );
        }
        paint(RED, &line)
    };
    let _ = writeln!(out, "{summary}\n");

    // The table.
    let name_w = r
        .senders
        .iter()
        .map(|s| s.name.chars().count() + usize::from(s.uncertain) * 2)
        .max()
        .unwrap_or(6)
        .max(8);
    let _ = writeln!(
        out,
        "{}",
        paint(
            DIM,
            &format!(
                "{}  {}  {}  {}  {}  {}",
                pad("sender", name_w),
                pad_left("tries", 5),
                pad("warned", 9),
                pad("returned", 9),
                pad("delivered", 10),
                "after recovery"
            )
        )
    );
    let mut any_uncertain = false;
    for s in &r.senders {
        any_uncertain |= s.uncertain;
        let name = if s.uncertain {
            format!("{} ~", s.name)
        } else {
            s.name.clone()
        };
        let dash = || "-".to_owned();
        let returned = s.bounced_at_s.map(at).unwrap_or_else(dash);
        let line = format!(
            "{}  {}  {}  {}  {}  {}",
            pad(&name, name_w),
            pad_left(&s.attempts_s.len().to_string(), 5),
            pad(&s.warned_at_s.map(at).unwrap_or_else(dash), 9),
            pad(&returned, 9),
            pad(&s.delivered_at_s.map(at).unwrap_or_else(dash), 10),
            s.delay_after_recovery_s
                .map(format_secs)
                .unwrap_or_else(dash)
        );
        let _ = writeln!(
            out,
            "{}",
            if s.bounced_at_s.is_some() {
                paint(RED, &line)
            } else {
                line
            }
        );
    }
    if any_uncertain {
        let _ = writeln!(
            out,
            "{}",
            paint(
                DIM,
                "~ estimated: the provider publishes its limit but not its schedule (docs/senders.md)"
            )
        );
    }

    // The timeline.
    let span = r.settled_at().max(1);
    let col = column_width(span);
    let _ = writeln!(out);
    let label_w = name_w.max(10);
    let _ = writeln!(out, "{}", axis(label_w, col));
    let mut outage_row = String::new();
    for c in 0..WIDTH as u64 {
        outage_row.push(if c * col < recovery { '█' } else { ' ' });
    }
    let _ = writeln!(
        out,
        "{}{}",
        pad("outage", label_w + 2),
        paint(DIM, outage_row.trim_end())
    );
    for (s, p) in r.senders.iter().zip(profiles) {
        let row = lane(
            &s.attempts_s,
            &s.warnings_s,
            s.bounced_at_s,
            s.delivered_at_s,
            col,
        );
        let _ = writeln!(out, "{}{}", pad(&p.name, label_w + 2), row);
    }
    if let Some(b) = &r.backup {
        let warned: Vec<u64> = b.warned_at_s.into_iter().collect();
        let row = lane(
            &b.attempts_s,
            &warned,
            b.bounced_at_s,
            b.delivered_at_s,
            col,
        );
        let _ = writeln!(out, "{}{}", pad("backup MX", label_w + 2), row);
    }
    let _ = writeln!(
        out,
        "{}",
        paint(
            DIM,
            &format!(
                "{}• attempt  ! delay warning  ✗ returned to sender  ✓ delivered  · waiting (one column = {})",
                " ".repeat(label_w + 2),
                format_secs(col)
            )
        )
    );

    if let Some(b) = &r.backup {
        let _ = writeln!(out);
        let retry: Vec<String> = b.retry_s.iter().map(|&s| format_secs(s)).collect();
        let _ = writeln!(
            out,
            "{}",
            paint(
                BOLD,
                &format!(
                    "With a backup MX (mxguard relay: retry {}, the last repeating, ±{:.0}%; lifetime {}):",
                    retry.join(", "),
                    b.jitter * 100.0,
                    format_secs(b.lifetime_s)
                )
            )
        );
        let _ = writeln!(
            out,
            "  every sender hands the message to the backup on its first attempt, at +0s;"
        );
        let _ = writeln!(
            out,
            "{}",
            paint(
                DIM,
                "  (if the backup takes it: with recipients = \"callout\", during an outage only for addresses it verified\n   with the primary within the cache's lifetime, 31 days by default; others get 451 and stay with the sender)"
            )
        );
        match (b.delivered_at_s, b.bounced_at_s) {
            (Some(d), _) => {
                let _ = writeln!(
                    out,
                    "  the backup probes the primary every {} and delivers at {}, {} after it is back.",
                    format_secs(b.probe_interval_s),
                    at(d),
                    format_secs(d - recovery)
                );
            }
            (None, Some(x)) => {
                let _ = writeln!(
                    out,
                    "  {}",
                    paint(
                        RED,
                        &format!(
                            "the backup gives up at {} ({} lifetime) and {}.",
                            at(x),
                            format_secs(b.lifetime_s),
                            b.dsn.give_up()
                        )
                    )
                );
            }
            (None, None) => {}
        }
        if let Some(w) = b.warned_at_s {
            let _ = writeln!(
                out,
                "  It sends a delay notice at {} ({}).",
                at(w),
                b.dsn.recipients()
            );
        }
        let changes = changes(r);
        if !changes.is_empty() {
            let _ = writeln!(out, "  {}", paint(YELLOW, &changes));
        }
    }
    out
}

/// What the backup changes, in one sentence.
fn changes(r: &Report) -> String {
    let Some(b) = &r.backup else {
        return String::new();
    };
    if let (None, Some(gave_up)) = (b.delivered_at_s, b.bounced_at_s) {
        let sooner: Vec<String> = r
            .senders
            .iter()
            .filter_map(|s| s.bounced_at_s.map(|t| (t, s.name.as_str())))
            .filter(|(t, _)| *t < gave_up)
            .take(3)
            .map(|(t, n)| format!("{n} {}", at(t)))
            .collect();
        let mut line = format!(
            "What changes: the backup does not save the message; it gives up at {} and {}",
            at(gave_up),
            b.dsn.give_up()
        );
        if !sooner.is_empty() {
            line.push_str(&format!(
                ", where the senders alone would have returned it sooner ({})",
                sooner.join(", ")
            ));
        }
        line.push('.');
        return line;
    }
    let saved: Vec<&str> = r
        .senders
        .iter()
        .filter(|s| s.bounced_at_s.is_some() && b.delivered_at_s.is_some())
        .map(|s| s.name.as_str())
        .collect();
    let mut parts = Vec::new();
    if !saved.is_empty() {
        parts.push(format!("saves the mail {} would return", saved.join(", ")));
    }
    let worst = r
        .senders
        .iter()
        .filter_map(|s| s.delay_after_recovery_s)
        .max();
    if let (Some(w), Some(d)) = (worst, b.delivered_at_s) {
        let now = d - r.recovery_at_s;
        if w > now {
            parts.push(format!(
                "cuts the longest wait after recovery from {} to {}",
                format_secs(w),
                format_secs(now)
            ));
        }
    }
    if parts.is_empty() {
        return "What changes: nothing the senders' queues did not already do.".into();
    }
    format!("What changes: the backup {}.", parts.join(", and "))
}

/// The time one column stands for: a round span, so that the axis reads
/// 0, 3h, 6h, … rather than 0, 2h1m, 4h2m.
fn column_width(span: u64) -> u64 {
    // Labels fall every 15 columns, so each width is a round span / 15:
    // 1m, 2m, 5m, 10m, 15m, 30m, 1h, 2h, 3h, 4h, 6h, 12h, 1d, 2d, 3d, 5d.
    const NICE: [u64; 16] = [
        4, 8, 20, 40, 60, 120, 240, 480, 720, 960, 1440, 2880, 5760, 11_520, 17_280, 28_800,
    ];
    let need = span.div_ceil(WIDTH as u64 - 1).max(1);
    NICE.iter()
        .copied()
        .find(|&n| n >= need)
        .unwrap_or_else(|| need.div_ceil(5760) * 5760)
}

/// The time axis: a label every 15 columns.
fn axis(label_w: usize, col: u64) -> String {
    let mut line = " ".repeat(label_w + 2);
    let mut c = 0usize;
    while c < WIDTH {
        let label = format_secs(c as u64 * col);
        let label = if c == 0 { "0".to_owned() } else { label };
        line.push_str(&pad(&label, 15));
        c += 15;
    }
    paint(DIM, line.trim_end())
}

/// One sender's lane: a character per column.
fn lane(
    attempts: &[u64],
    warnings: &[u64],
    bounced: Option<u64>,
    delivered: Option<u64>,
    col: u64,
) -> String {
    // Nothing is drawn after the message's fate is settled.
    let end = delivered.or(bounced).unwrap_or(u64::MAX);
    let cols = (end / col).saturating_add(1).min(WIDTH as u64) as usize;
    let mut cells: Vec<(u8, char)> = vec![(0, '·'); cols];
    let mut mark = |t: u64, rank: u8, ch: char| {
        let c = (t / col) as usize;
        if let Some(cell) = cells.get_mut(c)
            && cell.0 < rank
        {
            *cell = (rank, ch);
        }
    };
    for &a in attempts {
        mark(a, 1, '•');
    }
    for &w in warnings {
        mark(w, 2, '!');
    }
    if let Some(b) = bounced {
        mark(b, 3, '✗');
    }
    if let Some(d) = delivered {
        mark(d, 4, '✓');
    }
    let mut row = String::new();
    for (rank, ch) in cells {
        let s = ch.to_string();
        row.push_str(&match rank {
            4 => paint(GREEN, &s),
            3 => paint(RED, &s),
            2 => paint(YELLOW, &s),
            0 => paint(DIM, &s),
            _ => s,
        });
    }
    row.trim_end().to_owned()
}
