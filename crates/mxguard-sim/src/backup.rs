//! A backup MX in the route: what `mxguard relay` does with the message
//! the senders hand it while the primary is down.

use crate::sim::{MAX_ATTEMPTS, Run};

/// Who the relay sends delay and failure notices to (`[delivery] dsn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dsn {
    /// Only senders whose MAIL FROM passed SPF at ingress.
    #[default]
    Authenticated,
    Always,
    Never,
}

impl Dsn {
    /// What the relay does with a message it gives up on, in words.
    pub fn give_up(self) -> &'static str {
        match self {
            Dsn::Authenticated => {
                "returns it to senders that passed SPF; for the others it is lost without notice"
            }
            Dsn::Always => "returns it to its sender",
            Dsn::Never => "drops it without telling anyone",
        }
    }

    /// Who gets a notice, in words.
    pub fn recipients(self) -> &'static str {
        match self {
            Dsn::Authenticated => "to senders that passed SPF only",
            Dsn::Always => "to every sender",
            Dsn::Never => "to nobody: dsn = \"never\"",
        }
    }
}

/// The relay's forwarding settings that decide the message's fate (the
/// `[delivery]` table of its configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct Backup {
    /// Gaps between attempts; the last repeats.
    pub retry: Vec<u64>,
    /// Each gap may move by up to this fraction either way.
    pub jitter: f64,
    /// How long the relay keeps a message.
    pub lifetime: u64,
    /// When the delay notice goes out.
    pub warn_after: u64,
    /// How often a primary that is down is asked whether it is back.
    pub probe_interval: u64,
    /// Who gets the relay's notices.
    pub dsn: Dsn,
}

impl Default for Backup {
    /// `mxguard relay`'s defaults.
    fn default() -> Self {
        Backup {
            retry: vec![60, 300, 900, 1800, 3600],
            jitter: 0.1,
            lifetime: 7 * 86_400,
            warn_after: 4 * 3600,
            probe_interval: 5,
            dsn: Dsn::Authenticated,
        }
    }
}

impl Backup {
    /// The message's life in the relay, from the moment a sender hands it
    /// over (at once: a backup on separate infrastructure is up while the
    /// primary is down) until the primary has it; `recovery` is when the
    /// primary is back, `None` for never.
    ///
    /// The relay tries the primary at once, finds it down and probes it
    /// every `probe_interval`; the first probe that gets an answer makes
    /// the message due, so it goes within one probe interval of recovery.
    /// Its scheduled attempts go on meanwhile (they decide the delay
    /// notice and the expiry); jitter is left out, so real attempts are up
    /// to `jitter` of a gap either side.
    pub fn simulate(&self, recovery: Option<u64>) -> Run {
        let mut run = Run::default();
        let probe = self.probe_interval.max(1);
        let delivery = recovery.map(|r| if r == 0 { 0 } else { r.div_ceil(probe) * probe });
        let mut t = 0u64;
        let mut n = 0usize;
        loop {
            if let Some(d) = delivery
                && d <= t
            {
                run.delivered_at = Some(d);
                break;
            }
            run.attempts.push(t);
            if t >= self.warn_after && run.warnings.is_empty() && t < self.lifetime {
                run.warnings.push(t);
            }
            if t >= self.lifetime || run.attempts.len() > MAX_ATTEMPTS {
                run.bounced_at = Some(t);
                break;
            }
            let gap = self
                .retry
                .get(n)
                .or(self.retry.last())
                .copied()
                .unwrap_or(3600)
                .max(1);
            n += 1;
            t += gap;
        }
        run
    }
}
