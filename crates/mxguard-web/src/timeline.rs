//! The outage panel's answer: `mxguard simulate` as a table and an SVG
//! timeline, one lane per sender (and one for the backup).

use std::fmt::Write as _;

use mxguard_sim::{Report, format_secs};

use crate::html::esc;

const LEFT: f64 = 170.0;
const PLOT: f64 = 760.0;
const LANE: f64 = 24.0;

fn at(t: Option<u64>) -> String {
    t.map(|t| format!("+{}", format_secs(t)))
        .unwrap_or_else(|| "—".into())
}

/// Table and timeline for one simulation.
pub fn fragment(r: &Report) -> String {
    let mut out = String::from("<div class=\"sim\" id=\"sim\">");
    let bounced: Vec<&str> = r
        .senders
        .iter()
        .filter(|s| s.bounced_at_s.is_some())
        .map(|s| s.name.as_str())
        .collect();
    let headline = if bounced.is_empty() {
        format!(
            "An outage of {}: no sender returns the message; each delivers it once the primary is back.",
            format_secs(r.outage_s)
        )
    } else {
        let saved = r
            .backup
            .as_ref()
            .is_some_and(|b| b.delivered_at_s.is_some());
        format!(
            "An outage of {}: {} of {} senders return the message ({}).{}",
            format_secs(r.outage_s),
            bounced.len(),
            r.senders.len(),
            bounced.join(", "),
            if saved {
                " With the backup MX none does."
            } else if r.backup.is_some() {
                " The backup gives up too."
            } else {
                " Only a backup that keeps mail longer would prevent it."
            }
        )
    };
    let _ = write!(out, "<p class=\"sim-headline\">{}</p>", esc(&headline));
    if let Some(b) = &r.backup {
        let _ = write!(
            out,
            "<p class=\"note\">The backup is modelled on mxguard relay's defaults (retry 1m … 1h, probe every {}s, keeps mail {}, notices {}). \
             It helps only if it takes the message: with callout validation, during an outage only for recipients it verified with the primary \
             within its cache's lifetime (31 days by default); others get 451 and stay with the sender.</p>",
            b.probe_interval_s,
            esc(&format_secs(b.lifetime_s)),
            esc(b.dsn.recipients())
        );
    }

    // The timeline.
    let span = r.settled_at().max(1) as f64 * 1.03;
    let x = |t: u64| LEFT + t as f64 / span * PLOT;
    let lanes = r.senders.len() + usize::from(r.backup.is_some());
    let height = 40.0 + lanes as f64 * LANE;
    let _ = write!(
        out,
        "<svg class=\"timeline\" role=\"img\" viewBox=\"0 0 {w} {height}\" width=\"100%\" aria-labelledby=\"tl-title\" xmlns=\"http://www.w3.org/2000/svg\">\
         <title id=\"tl-title\">Each sender's attempts during an outage of {o}</title>\
         <rect class=\"outage-band\" x=\"{LEFT}\" y=\"20\" width=\"{bw:.1}\" height=\"{bh}\"><title>the outage</title></rect>\
         <text class=\"small\" x=\"{LEFT}\" y=\"14\">0</text><text class=\"small\" x=\"{rx:.1}\" y=\"14\" text-anchor=\"end\">back at +{o}</text>",
        w = LEFT + PLOT + 20.0,
        o = format_secs(r.recovery_at_s),
        bw = x(r.recovery_at_s) - LEFT,
        bh = lanes as f64 * LANE,
        rx = x(r.recovery_at_s),
    );
    let mut lane = |name: &str,
                    attempts: &[u64],
                    warnings: &[u64],
                    bounced: Option<u64>,
                    delivered: Option<u64>,
                    i: usize| {
        let y = 20.0 + i as f64 * LANE + LANE / 2.0;
        let _ = write!(
            out,
            "<g class=\"lane\" data-sender=\"{n}\"><text x=\"8\" y=\"{ty:.1}\" class=\"small\">{n}</text>",
            n = esc(name),
            ty = y + 4.0
        );
        let end = delivered.or(bounced).unwrap_or(0);
        let _ = write!(
            out,
            "<line class=\"wait\" x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\"/>",
            x(end)
        );
        for &a in attempts {
            let _ = write!(
                out,
                "<circle class=\"attempt\" cx=\"{:.1}\" cy=\"{y:.1}\" r=\"3\"><title>attempt at +{}</title></circle>",
                x(a),
                format_secs(a)
            );
        }
        for &w in warnings {
            let _ = write!(
                out,
                "<path class=\"warning\" d=\"M{:.1},{:.1} l5,9 l-10,0 z\"><title>delay warning at +{}</title></path>",
                x(w),
                y - 6.0,
                format_secs(w)
            );
        }
        if let Some(b) = bounced {
            let _ = write!(
                out,
                "<text class=\"bounced\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">✗<title>returned to the sender at +{}</title></text>",
                x(b),
                y + 5.0,
                format_secs(b)
            );
        }
        if let Some(d) = delivered {
            let _ = write!(
                out,
                "<text class=\"delivered\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">✓<title>delivered at +{}</title></text>",
                x(d),
                y + 5.0,
                format_secs(d)
            );
        }
        out.push_str("</g>");
    };
    for (i, s) in r.senders.iter().enumerate() {
        lane(
            &s.name,
            &s.attempts_s,
            &s.warnings_s,
            s.bounced_at_s,
            s.delivered_at_s,
            i,
        );
    }
    if let Some(b) = &r.backup {
        let warned: Vec<u64> = b.warned_at_s.into_iter().collect();
        lane(
            "backup MX",
            &b.attempts_s,
            &warned,
            b.bounced_at_s,
            b.delivered_at_s,
            r.senders.len(),
        );
    }
    out.push_str("</svg>");

    out.push_str(
        "<table class=\"sim-table\"><caption>Per sender (times from its first attempt)</caption><thead><tr>\
         <th scope=\"col\">Sender</th><th scope=\"col\">Failed attempts</th><th scope=\"col\">Delay warning</th>\
         <th scope=\"col\">Returned</th><th scope=\"col\">Delivered</th><th scope=\"col\">With backup</th></tr></thead><tbody>",
    );
    for s in &r.senders {
        let with = s
            .with_backup
            .as_ref()
            .map(|w| match (w.delivered_at_s, w.bounced_at_s) {
                (Some(d), _) => format!("delivered +{}", format_secs(d)),
                (None, Some(b)) => format!("returned +{}", format_secs(b)),
                (None, None) => "—".into(),
            })
            .unwrap_or_else(|| "—".into());
        let _ = write!(
            out,
            "<tr class=\"{cls}\"><th scope=\"row\">{name}{unc}</th><td>{n}</td><td>{w}</td><td>{b}</td><td>{d}</td><td>{with}</td></tr>",
            cls = if s.bounced_at_s.is_some() {
                "bounced"
            } else {
                "ok"
            },
            name = esc(&s.name),
            unc = if s.uncertain {
                " <abbr title=\"estimated schedule\">~</abbr>"
            } else {
                ""
            },
            n = s.attempts_s.len(),
            w = at(s.warned_at_s),
            b = at(s.bounced_at_s),
            d = at(s.delivered_at_s),
            with = esc(&with),
        );
    }
    out.push_str("</tbody></table></div>");
    out
}
