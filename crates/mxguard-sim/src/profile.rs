//! Sender profiles: how one kind of sending MTA or mail provider retries,
//! warns and gives up. Profiles are data (TOML); the built-in ones live in
//! `profiles.toml` beside this file and are documented, with sources, in
//! `docs/senders.md`.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Deserializer};

/// The longest lifetime a profile may have (a year and a day).
pub const MAX_LIFETIME: u64 = 366 * 86_400;

/// The built-in profiles, as shipped.
const BUILTIN: &str = include_str!("profiles.toml");

/// A span of time in whole seconds, written in TOML as a humantime string
/// (`"300s"`, `"15m"`, `"4d"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Secs(pub u64);

impl<'de> Deserialize<'de> for Secs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Parses `"4h"`, `"1d12h"`, `"90s"` into whole seconds.
pub fn parse_duration(text: &str) -> Result<Secs, String> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        format!("`{text}` is not a duration ({e}); write e.g. \"90s\", \"15m\", \"4h\", \"5d\"")
    })?;
    if d.subsec_nanos() != 0 {
        return Err(format!("`{text}`: durations are counted in whole seconds"));
    }
    Ok(Secs(d.as_secs()))
}

/// When a sender gives up on a message its destination keeps refusing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Bounce {
    /// At the first failed attempt made once the lifetime has passed (the
    /// queue-based MTAs: Postfix, Sendmail, Exim, the mxguard relay).
    #[default]
    NextAttempt,
    /// Exactly when the lifetime ends; no attempt is made after it.
    AtLifetime,
    /// At the first attempt due at or after the lifetime, which is not
    /// made (chasquid: the queue wakes up, sees the message is too old,
    /// and returns it).
    NextSlot,
}

/// When a delay warning goes out, relative to the age it is set for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum WarnAt {
    /// At that age exactly (a timer).
    #[default]
    Age,
    /// With the first failed attempt at or after that age (Exim, the
    /// mxguard relay): the warning is written when an attempt fails.
    NextAttempt,
    /// With the failed attempt after which the next one would be due at or
    /// after that age (OpenSMTPD), so it is never late but may be early.
    PreviousAttempt,
}

/// What the lifetime is counted from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LifetimeFrom {
    /// The message's arrival in the sender's queue.
    #[default]
    Message,
    /// The destination's first failure (Exim's retry cut-off): a message
    /// sent into an outage already under way has less time left.
    Destination,
}

/// One rule of an Exim-style retry rule list, e.g. `G,16h,1h,1.5`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryRule {
    /// `F`: fixed interval; `G`: geometric (each gap the previous times
    /// `factor`, at least `interval`).
    pub geometric: bool,
    /// The rule applies while the destination has been failing for less
    /// than this.
    pub cutoff: u64,
    /// The fixed interval (F), or the first and smallest gap (G).
    pub interval: u64,
    /// G only: the factor from one gap to the next.
    pub factor: f64,
}

impl<'de> Deserialize<'de> for RetryRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for RetryRule {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split(',').map(str::trim).collect();
        let dur = |s: &str| parse_duration(s).map(|d| d.0);
        match parts.as_slice() {
            ["F", cutoff, interval] => Ok(RetryRule {
                geometric: false,
                cutoff: dur(cutoff)?,
                interval: dur(interval)?,
                factor: 1.0,
            }),
            ["G", cutoff, interval, factor] => {
                let factor: f64 = factor
                    .parse()
                    .map_err(|_| format!("`{text}`: `{factor}` is not a number"))?;
                if !(factor >= 1.0 && factor.is_finite()) {
                    return Err(format!("`{text}`: the factor must be at least 1"));
                }
                Ok(RetryRule {
                    geometric: true,
                    cutoff: dur(cutoff)?,
                    interval: dur(interval)?,
                    factor,
                })
            }
            ["H", ..] => Err(format!(
                "`{text}`: H rules are randomised and cannot be predicted; use the G rule they vary around"
            )),
            _ => Err(format!(
                "`{text}` is not a retry rule; write `F,<cutoff>,<interval>` or `G,<cutoff>,<first interval>,<factor>`"
            )),
        }
    }
}

/// How a sender spaces its attempts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Retry {
    /// Fixed gaps between attempts; the last one repeats.
    Intervals { intervals: Vec<Secs> },
    /// Postfix: after a failure the next attempt is due after the message's
    /// age, clamped to `[min, max]`, and happens at the first scan of the
    /// deferred queue (every `queue_run`) at or after that.
    Backoff {
        min: Secs,
        max: Secs,
        queue_run: Secs,
    },
    /// Exim: retry rules counted from the destination's first failure;
    /// attempts happen on queue runs (every `queue_run`).
    Rules {
        rules: Vec<RetryRule>,
        queue_run: Secs,
    },
    /// OpenSMTPD: the n-th retry at `base · n²` after arrival.
    Quadratic { base: Secs },
    /// Sendmail: every queue run (every `interval`) tries every message.
    QueueRun { interval: Secs },
}

/// One sender: its retry schedule, warnings and lifetime.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Short name, used by `--profile`.
    pub id: String,
    /// The name shown to people.
    pub name: String,
    /// How long the sender keeps trying.
    pub lifetime: Secs,
    #[serde(default)]
    pub bounce: Bounce,
    #[serde(default)]
    pub lifetime_from: LifetimeFrom,
    /// Message ages at which a delay warning goes to the sender.
    #[serde(default)]
    pub warn: Vec<Secs>,
    /// After the last of `warn`, another warning every this long.
    #[serde(default)]
    pub warn_repeat: Option<Secs>,
    #[serde(default)]
    pub warn_at: WarnAt,
    /// Give up after this many attempts, even within the lifetime (maddy's
    /// `max_tries`).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Some values are estimates (hosted providers rarely publish their
    /// schedules); `docs/senders.md` says which.
    #[serde(default)]
    pub uncertain: bool,
    /// Counted among "the common senders" in `check`'s verdict.
    #[serde(default)]
    pub common: bool,
    /// Where the values come from, in a few words.
    #[serde(default)]
    pub source: String,
    pub retry: Retry,
}

/// A file of profiles: `[[profile]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    #[serde(default)]
    profile: Vec<Profile>,
}

/// Why a profile file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::format_secs(self.0))
    }
}

impl Profile {
    /// The problems that make a profile unusable, in words.
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let id_ok = !self.id.is_empty()
            && self
                .id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !id_ok {
            out.push(format!(
                "profile id `{}`: use lower-case letters, digits and '-'",
                self.id
            ));
        }
        if self.lifetime.0 == 0 {
            out.push(format!(
                "profile `{}`: lifetime must be more than 0",
                self.id
            ));
        }
        if self.max_attempts == Some(0) {
            out.push(format!(
                "profile `{}`: max_attempts must be more than 0",
                self.id
            ));
        }
        if self.warn_repeat.is_some_and(|r| r.0 == 0) {
            out.push(format!(
                "profile `{}`: warn_repeat must be more than 0",
                self.id
            ));
        }
        let zero = |what: &str| format!("profile `{}`: {what} must be more than 0", self.id);
        match &self.retry {
            Retry::Intervals { intervals } => {
                if intervals.is_empty() {
                    out.push(format!("profile `{}`: intervals is empty", self.id));
                } else if intervals.iter().any(|i| i.0 == 0) {
                    out.push(zero("every interval"));
                }
            }
            Retry::Backoff { min, max, .. } => {
                if min.0 == 0 {
                    out.push(zero("min"));
                }
                if max < min {
                    out.push(format!("profile `{}`: max is less than min", self.id));
                }
            }
            Retry::Rules { rules, .. } => {
                if rules.is_empty() {
                    out.push(format!("profile `{}`: rules is empty", self.id));
                }
                // Exim gives up when the last rule's cut-off has passed,
                // counted from the destination's first failure.
                if let Some(last) = rules.last()
                    && (last.cutoff != self.lifetime.0
                        || self.lifetime_from != LifetimeFrom::Destination)
                {
                    out.push(format!(
                        "profile `{}`: with retry rules the lifetime is the last rule's cut-off ({}), counted from the destination: set lifetime = \"{}\" and lifetime_from = \"destination\"",
                        self.id,
                        Secs(last.cutoff),
                        Secs(last.cutoff)
                    ));
                }
                if rules.iter().any(|r| r.interval == 0) {
                    out.push(zero("every rule's interval"));
                }
                if rules.windows(2).any(|w| w[1].cutoff <= w[0].cutoff) {
                    out.push(format!(
                        "profile `{}`: each rule's cut-off must be later than the one before",
                        self.id
                    ));
                }
            }
            Retry::Quadratic { base } => {
                if base.0 == 0 {
                    out.push(zero("base"));
                }
            }
            Retry::QueueRun { interval } => {
                if interval.0 == 0 {
                    out.push(zero("interval"));
                }
            }
        }
        out
    }
}

/// Parses a profile file's text; `path` names it in errors.
pub fn parse_profiles(text: &str, path: &str) -> Result<Vec<Profile>, ProfileError> {
    let file: ProfileFile = toml::from_str(text).map_err(|e| ProfileError::Invalid {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    let mut problems = Vec::new();
    for (i, p) in file.profile.iter().enumerate() {
        problems.extend(p.problems());
        if p.lifetime.0 > MAX_LIFETIME {
            problems.push(format!(
                "profile `{}`: a lifetime over {} days is not a mail queue",
                p.id,
                MAX_LIFETIME / 86_400
            ));
        } else if p.problems().is_empty()
            && crate::simulate(p, 0, None).attempts.len() >= crate::sim::MAX_ATTEMPTS
        {
            problems.push(format!(
                "profile `{}` would try more than {} times before it gives up; no sender retries that often",
                p.id,
                crate::sim::MAX_ATTEMPTS
            ));
        }
        if file.profile[..i].iter().any(|q| q.id == p.id) {
            problems.push(format!("profile id `{}` is used twice", p.id));
        }
    }
    if !problems.is_empty() {
        return Err(ProfileError::Invalid {
            path: path.to_owned(),
            message: problems.join("; "),
        });
    }
    Ok(file.profile)
}

/// Reads a file of profiles.
pub fn load_profiles(path: &Path) -> Result<Vec<Profile>, ProfileError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
        path: name.clone(),
        source,
    })?;
    parse_profiles(&text, &name)
}

/// The profiles mxguard ships with, in the order they are shown.
pub fn builtin() -> Vec<Profile> {
    // Parsed and checked once: every simulation (and every web request)
    // starts from them.
    static BUILT_IN: std::sync::OnceLock<Vec<Profile>> = std::sync::OnceLock::new();
    BUILT_IN
        .get_or_init(|| {
            parse_profiles(BUILTIN, "profiles.toml (built in)")
                .unwrap_or_else(|e| panic!("the built-in profiles do not parse: {e}"))
        })
        .clone()
}

/// The built-in profile with this id.
pub fn builtin_profile(id: &str) -> Option<Profile> {
    builtin().into_iter().find(|p| p.id == id)
}
