//! The probe `check` runs against one MX address: what the host offers, and
//! how it answers the questions that decide whether a backup MX is safe.
//!
//! The sequence, over as few connections as the host allows (never two at
//! once to one address):
//!
//! 1. banner, EHLO (HELO fallback), STARTTLS when offered, EHLO again;
//! 2. `MAIL FROM:<>` — bounces come from the null sender (RFC 5321 §4.5.5);
//! 3. `RCPT TO:<postmaster@domain>` — required to work (RFC 5321 §4.5.1);
//! 4. `RCPT TO:` a random local part that cannot exist — does the host know
//!    the recipients, or accept everything and bounce later?
//! 5. the open-relay battery: one transaction per variant, `RSET` between,
//!    each asking the host to take mail for a domain it does not serve;
//! 6. `QUIT`. DATA is never sent, so no probe can deliver a message.
//!
//! Every result is tri-state: [`Status::Pass`] (the host did the safe or
//! required thing), [`Status::Fail`], or [`Status::Untestable`] with a
//! [`Reason`]. A greylisting 4xx, a timeout or a dropped connection makes a
//! result untestable; it is never read as pass or fail.
//!
//! The battery is spread over several connections so that the errors it
//! provokes stay under the usual tarpit thresholds (Postfix slows down after
//! 10 errors in a session and disconnects after 20).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use serde::Serialize;

use crate::client::{ClientConfig, Connection, SmtpError};
use crate::reply::{Capabilities, Reply};
use crate::tls::CertVerdict;
use crate::transcript::Transcript;

/// The third-party domain the relay battery asks to relay to. Under the
/// reserved `.example` TLD (RFC 2606): it can never be a real destination.
pub const RELAY_TARGET_DOMAIN: &str = "relay-probe.mxguard.example";
/// The local part used in relay probes.
const RELAY_USER: &str = "relaytest";
/// Relay variants tried in the first connection; later connections take
/// [`RELAY_BATCH`] each.
const FIRST_BATCH: usize = 7;
const RELAY_BATCH: usize = 8;

/// What a probe needs to know beyond the client settings.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    pub addr: SocketAddr,
    /// The MX name: the TLS certificate must match it.
    pub mx_name: String,
    /// The domain whose mail the host is meant to receive.
    pub domain: String,
    /// The envelope sender for the relay battery (`--mail-from`).
    pub mail_from: String,
    /// The local part that must not exist at `domain`.
    pub unknown_local_part: String,
}

/// The outcome of one question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// The host did the safe or required thing.
    Pass,
    /// It did not.
    Fail,
    /// The question got no usable answer; see the reason.
    Untestable,
}

/// Why a question could not be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// A 4xx that names greylisting or asks to try later.
    Greylisted,
    /// A 421, or a 4xx that speaks of rates, limits or too many connections.
    RateLimited,
    /// Another 4xx: the host is not answering the question today.
    TemporaryFailure,
    /// The host went quiet (connect, banner or reply).
    Timeout,
    /// Nothing listens on the port.
    ConnectionRefused,
    /// The host closed the connection.
    ConnectionClosed,
    /// The banner is a 5xx: the host serves nobody over SMTP here.
    ServiceRefused,
    /// What the host sent is not SMTP.
    ProtocolError,
    /// The check's overall deadline passed first.
    Deadline,
    /// The envelope sender was refused, so no RCPT could be asked.
    SenderRefused,
    /// The variant is addressed to the audited domain, and the host accepts
    /// any local part there: accepting it says nothing about relaying.
    AcceptsAnyRecipient,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Greylisted => "greylisted",
            Reason::RateLimited => "rate-limited",
            Reason::TemporaryFailure => "temporary-failure",
            Reason::Timeout => "timeout",
            Reason::ConnectionRefused => "connection-refused",
            Reason::ConnectionClosed => "connection-closed",
            Reason::ServiceRefused => "service-refused",
            Reason::ProtocolError => "protocol-error",
            Reason::Deadline => "deadline",
            Reason::SenderRefused => "sender-refused",
            Reason::AcceptsAnyRecipient => "accepts-any-recipient",
        }
    }

    /// Reads a 4xx: greylisting, rate limiting, or just "not now".
    pub fn of_transient(reply: &Reply) -> Reason {
        let text = reply.lines.join(" ").to_ascii_lowercase();
        let any = |words: &[&str]| words.iter().any(|w| text.contains(w));
        if reply.code == 421
            || any(&[
                "rate",
                "too many",
                "limit",
                "slow down",
                "too fast",
                "throttl",
            ])
        {
            Reason::RateLimited
        } else if any(&["greylist", "graylist", "grey-list", "gray-list"])
            || (any(&["try again later", "please try again", "come back later"])
                && matches!(reply.enhanced(), Some((4, 2, 0) | (4, 7, 1) | (4, 7, 0))))
        {
            Reason::Greylisted
        } else {
            Reason::TemporaryFailure
        }
    }

    fn of_error(err: &SmtpError) -> Reason {
        match err {
            SmtpError::Refused => Reason::ConnectionRefused,
            SmtpError::ConnectTimeout(_) | SmtpError::Timeout { .. } => Reason::Timeout,
            SmtpError::Deadline { .. } => Reason::Deadline,
            SmtpError::Closed { .. } => Reason::ConnectionClosed,
            SmtpError::Protocol(_) => Reason::ProtocolError,
            SmtpError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                Reason::ConnectionRefused
            }
            SmtpError::Io(_) => Reason::ConnectionClosed,
        }
    }
}

/// One question and its answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub status: Status,
    /// Set exactly when the status is `untestable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// The command that asked, when one was sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The host's answer, on one line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// Words for an untestable result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Check {
    fn answered(status: Status, command: &str, reply: &Reply) -> Check {
        Check {
            status,
            reason: None,
            command: Some(command.to_owned()),
            reply: Some(reply.one_line()),
            detail: None,
        }
    }

    fn untestable(reason: Reason, command: Option<&str>, reply: Option<&Reply>) -> Check {
        Check {
            status: Status::Untestable,
            reason: Some(reason),
            command: command.map(str::to_owned),
            reply: reply.map(Reply::one_line),
            detail: None,
        }
    }

    fn with_detail(mut self, detail: impl Into<String>) -> Check {
        self.detail = Some(detail.into());
        self
    }

    /// Not asked, because the conversation ended first.
    fn not_asked(reason: Reason, why: &str) -> Check {
        Check::untestable(reason, None, None).with_detail(format!("not asked: {why}"))
    }

    /// `RCPT TO:<x> → 250 2.1.5 ok`, for findings.
    pub fn evidence(&self) -> String {
        match (&self.command, &self.reply) {
            (Some(c), Some(r)) => format!("{c} → {r}"),
            (Some(c), None) => format!("{c} → (no answer)"),
            (None, _) => self.detail.clone().unwrap_or_default(),
        }
    }

    /// Whether the host said yes (2xx) to the command.
    pub fn accepted(&self) -> bool {
        self.reply.as_deref().is_some_and(|r| r.starts_with('2'))
    }

    /// Whether the host said a definite no (5xx).
    pub fn rejected(&self) -> bool {
        self.reply.as_deref().is_some_and(|r| r.starts_with('5'))
    }
}

/// Classify an answer to a command a good host accepts (null sender,
/// postmaster).
fn expect_accept(command: &str, reply: &Reply) -> Check {
    if reply.is_positive() {
        Check::answered(Status::Pass, command, reply)
    } else if reply.is_permanent() {
        Check::answered(Status::Fail, command, reply)
    } else if reply.is_transient() {
        Check::untestable(Reason::of_transient(reply), Some(command), Some(reply))
    } else {
        Check::untestable(Reason::ProtocolError, Some(command), Some(reply))
    }
}

/// Classify an answer to a command a good host refuses (an unknown
/// recipient, a relay attempt).
fn expect_refuse(command: &str, reply: &Reply) -> Check {
    if reply.is_permanent() {
        Check::answered(Status::Pass, command, reply)
    } else if reply.is_positive() {
        Check::answered(Status::Fail, command, reply)
    } else if reply.is_transient() {
        Check::untestable(Reason::of_transient(reply), Some(command), Some(reply))
    } else {
        Check::untestable(Reason::ProtocolError, Some(command), Some(reply))
    }
}

/// One way of asking a host to relay.
#[derive(Debug, Clone, Copy)]
pub struct RelayVariant {
    /// Stable kebab-case name.
    pub name: &'static str,
    /// What the variant exploits, for a person.
    pub about: &'static str,
    sender: SenderKind,
    recipient: fn(&RelayContext<'_>) -> String,
    /// Addressed to the audited domain (or the host's own address), so a
    /// host that accepts any local part there accepts it without relaying.
    at_audited_domain: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SenderKind {
    /// `--mail-from`.
    Probe,
    /// `<>`.
    Null,
    /// A sender in the audited domain (hosts that trust their own domain).
    Local,
}

struct RelayContext<'a> {
    domain: &'a str,
    ip: IpAddr,
}

impl RelayContext<'_> {
    fn literal(&self) -> String {
        match self.ip {
            IpAddr::V4(v4) => format!("[{v4}]"),
            IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
        }
    }
}

const T: &str = RELAY_TARGET_DOMAIN;

/// The battery, in the order it is tried.
pub const RELAY_VARIANTS: &[RelayVariant] = &[
    RelayVariant {
        name: "third-party",
        about: "a plain address at a domain the host does not serve",
        sender: SenderKind::Probe,
        recipient: |_| format!("{RELAY_USER}@{T}"),
        at_audited_domain: false,
    },
    RelayVariant {
        name: "third-party-null-sender",
        about: "the same, from the null sender",
        sender: SenderKind::Null,
        recipient: |_| format!("{RELAY_USER}@{T}"),
        at_audited_domain: false,
    },
    RelayVariant {
        name: "third-party-local-sender",
        about: "the same, from a sender forged in the audited domain",
        sender: SenderKind::Local,
        recipient: |_| format!("{RELAY_USER}@{T}"),
        at_audited_domain: false,
    },
    RelayVariant {
        name: "case-variant",
        about: "the third-party domain in upper case, past case-sensitive rules",
        sender: SenderKind::Probe,
        recipient: |_| format!("{}@{}", RELAY_USER.to_uppercase(), T.to_uppercase()),
        at_audited_domain: false,
    },
    RelayVariant {
        name: "trailing-dot",
        about: "the third-party domain written fully qualified, with a trailing dot",
        sender: SenderKind::Probe,
        recipient: |_| format!("{RELAY_USER}@{T}."),
        at_audited_domain: false,
    },
    RelayVariant {
        name: "address-literal-target",
        about: "a third-party destination given as an address literal",
        sender: SenderKind::Probe,
        // TEST-NET-2 (RFC 5737): never a real host.
        recipient: |_| format!("{RELAY_USER}@[198.51.100.25]"),
        at_audited_domain: false,
    },
    RelayVariant {
        name: "percent-hack",
        about: "`user%third-party@domain`: the %-hack routes on from the audited domain",
        sender: SenderKind::Probe,
        recipient: |c| format!("{RELAY_USER}%{T}@{}", c.domain),
        at_audited_domain: true,
    },
    RelayVariant {
        name: "percent-hack-literal",
        about: "the %-hack at the host's own address literal",
        sender: SenderKind::Probe,
        recipient: |c| format!("{RELAY_USER}%{T}@{}", c.literal()),
        at_audited_domain: true,
    },
    RelayVariant {
        name: "bang-path",
        about: "a UUCP bang path, `third-party!user`",
        sender: SenderKind::Probe,
        recipient: |_| format!("{T}!{RELAY_USER}"),
        at_audited_domain: false,
    },
    RelayVariant {
        name: "bang-path-local",
        about: "a bang path at the audited domain, `third-party!user@domain`",
        sender: SenderKind::Probe,
        recipient: |c| format!("{T}!{RELAY_USER}@{}", c.domain),
        at_audited_domain: true,
    },
    RelayVariant {
        name: "source-route",
        about: "an RFC 821 source route through the audited domain, `@domain:user@third-party`",
        sender: SenderKind::Probe,
        recipient: |c| format!("@{}:{RELAY_USER}@{T}", c.domain),
        at_audited_domain: false,
    },
    RelayVariant {
        name: "quoted-local-part",
        about: "a quoted local part holding the whole third-party address",
        sender: SenderKind::Probe,
        recipient: |_| format!("\"{RELAY_USER}@{T}\""),
        at_audited_domain: false,
    },
    RelayVariant {
        name: "quoted-local-part-local",
        about: "the quoted third-party address as a local part of the audited domain",
        sender: SenderKind::Probe,
        recipient: |c| format!("\"{RELAY_USER}@{T}\"@{}", c.domain),
        at_audited_domain: true,
    },
    RelayVariant {
        name: "double-at",
        about: "two @ signs, `user@third-party@domain`",
        sender: SenderKind::Probe,
        recipient: |c| format!("{RELAY_USER}@{T}@{}", c.domain),
        at_audited_domain: true,
    },
    RelayVariant {
        name: "source-route-literal",
        about: "a source route through the host's own address literal",
        sender: SenderKind::Probe,
        recipient: |c| format!("@{}:{RELAY_USER}@{T}", c.literal()),
        at_audited_domain: false,
    },
];

/// One relay variant tried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelayCheck {
    pub variant: &'static str,
    /// `MAIL FROM` address used (empty for the null sender).
    pub sender: String,
    pub recipient: String,
    #[serde(flatten)]
    pub check: Check,
}

/// What STARTTLS showed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsFacts {
    /// The answer to STARTTLS.
    pub reply: String,
    /// The handshake completed.
    pub handshake: bool,
    /// `TLSv1_3`, … when the handshake completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cipher: Option<String>,
    /// Why the handshake failed (or STARTTLS was refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The certificate's verdict, when the handshake got that far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertVerdict>,
}

/// Why the session could not be held or finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionError {
    pub reason: Reason,
    pub detail: String,
}

/// Everything one probe of one address found.
#[derive(Debug, Clone, Serialize)]
pub struct AddressProbe {
    pub port: u16,
    /// Something answered SMTP (a banner arrived, whatever its code).
    pub reachable: bool,
    /// Set when the first session ended before its questions were asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<SessionError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub banner: Option<String>,
    /// The first line of the EHLO (or HELO) answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub greeting: Option<String>,
    /// EHLO was accepted (false after a HELO fallback).
    pub esmtp: bool,
    /// EHLO keywords, as last seen (after TLS when it worked).
    pub extensions: Vec<String>,
    /// SIZE limit in octets; `Some(0)` is "SIZE without a limit".
    pub size: Option<u64>,
    /// STARTTLS was advertised.
    pub starttls: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFacts>,
    /// `MAIL FROM:<>`: pass when accepted.
    pub null_sender: Check,
    /// `RCPT TO:<postmaster@domain>`: pass when accepted.
    pub postmaster: Check,
    /// The random address used for the next check.
    pub unknown_recipient_address: String,
    /// `RCPT TO:` a recipient that cannot exist: pass when refused.
    pub unknown_recipient: Check,
    /// The open-relay battery: each variant passes when refused.
    pub relay: Vec<RelayCheck>,
    /// Every conversation, in order.
    pub transcripts: Vec<Transcript>,
    pub elapsed_ms: u64,
}

impl AddressProbe {
    /// The relay result in one word: `fail` if any variant was accepted,
    /// `pass` if at least one variant was refused and every other was
    /// refused, had its sender refused, or could not mean relaying;
    /// `untestable` otherwise.
    pub fn relay_status(&self) -> Status {
        if self.relay.iter().any(|r| r.check.status == Status::Fail) {
            Status::Fail
        } else if self.relay.iter().any(|r| r.check.status == Status::Pass)
            && self.relay.iter().all(|r| {
                // A variant whose sender the host refuses (say, the null
                // sender) or that cannot mean relaying does not leave the
                // battery open when every other variant was refused.
                r.check.status == Status::Pass
                    || matches!(
                        r.check.reason,
                        Some(Reason::AcceptsAnyRecipient | Reason::SenderRefused)
                    )
            })
        {
            Status::Pass
        } else {
            Status::Untestable
        }
    }

    /// Nothing answered, for a reason that is the host's (refused, silent,
    /// closed) and not the check's own deadline.
    pub fn unreachable(&self) -> bool {
        !self.reachable
            && !matches!(
                self.error.as_ref().map(|e| e.reason),
                Some(Reason::Deadline)
            )
    }

    /// The host answers but serves nobody: a 5xx banner, or EHLO and HELO
    /// both refused.
    pub fn refuses_service(&self) -> bool {
        matches!(
            self.error.as_ref().map(|e| e.reason),
            Some(Reason::ServiceRefused)
        )
    }

    /// The TLS the host gives, ranked for comparison: none < refused or
    /// broken < untrusted < trusted. `None` when unknown (never reached EHLO).
    pub fn tls_rank(&self) -> Option<u8> {
        self.greeting.as_ref()?;
        Some(match &self.tls {
            None => 0,
            Some(t) if !t.handshake => 1,
            Some(t) if t.certificate.as_ref().is_some_and(|c| c.trusted) => 3,
            Some(_) => 2,
        })
    }
}

/// Probe one address. Never fails: what goes wrong is part of the result.
pub async fn probe(target: &ProbeTarget, cfg: &ClientConfig) -> AddressProbe {
    let started = Instant::now();
    let unknown = format!("{}@{}", target.unknown_local_part, target.domain);
    let mut p = AddressProbe {
        port: target.addr.port(),
        reachable: false,
        error: None,
        banner: None,
        greeting: None,
        esmtp: false,
        extensions: Vec::new(),
        size: None,
        starttls: false,
        tls: None,
        null_sender: Check::not_asked(Reason::ConnectionClosed, "the session ended earlier"),
        postmaster: Check::not_asked(Reason::ConnectionClosed, "the session ended earlier"),
        unknown_recipient_address: unknown.clone(),
        unknown_recipient: Check::not_asked(Reason::ConnectionClosed, "the session ended earlier"),
        relay: Vec::new(),
        transcripts: Vec::new(),
        elapsed_ms: 0,
    };
    let ctx = RelayContext {
        domain: &target.domain,
        ip: target.addr.ip(),
    };
    let mut pending: Vec<&RelayVariant> = RELAY_VARIANTS.iter().collect();

    match first_session(target, cfg, &mut p, &unknown).await {
        Ok(mut conn) => {
            let take = pending.len().min(FIRST_BATCH);
            let batch: Vec<_> = pending.drain(..take).collect();
            let ended = relay_batch(&mut conn, &batch, &ctx, target, &mut p).await;
            finish(conn, &mut p).await;
            if let Some((reason, why)) = ended {
                give_up(&mut pending, &ctx, target, &mut p, reason, &why);
            }
        }
        Err((reason, why)) => {
            p.error = Some(SessionError {
                reason,
                detail: why.clone(),
            });
            for check in [
                &mut p.null_sender,
                &mut p.postmaster,
                &mut p.unknown_recipient,
            ] {
                if check.command.is_none() {
                    *check = Check::not_asked(reason, &why);
                }
            }
            give_up(&mut pending, &ctx, target, &mut p, reason, &why);
        }
    }

    // The rest of the battery, over fresh plain connections.
    while !pending.is_empty() {
        let take = pending.len().min(RELAY_BATCH);
        let batch: Vec<_> = pending.drain(..take).collect();
        match plain_session(target, cfg).await {
            Ok(mut conn) => {
                let ended = relay_batch(&mut conn, &batch, &ctx, target, &mut p).await;
                finish(conn, &mut p).await;
                if let Some((reason, why)) = ended {
                    give_up(&mut pending, &ctx, target, &mut p, reason, &why);
                }
            }
            Err((reason, why, transcript)) => {
                if let Some(t) = transcript {
                    p.transcripts.push(t);
                }
                let mut rest = batch;
                rest.append(&mut pending);
                give_up(&mut rest, &ctx, target, &mut p, reason, &why);
            }
        }
    }
    p.relay.sort_by_key(|r| {
        RELAY_VARIANTS
            .iter()
            .position(|v| v.name == r.variant)
            .unwrap_or(usize::MAX)
    });
    p.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    p
}

type Ended = (Reason, String);

/// Words for an error, with the step it happened at.
fn ended(err: &SmtpError) -> Ended {
    (Reason::of_error(err), err.to_string())
}

/// Banner, hello, STARTTLS, and the three recipient questions. On success
/// the connection is left ready for a new transaction.
async fn first_session(
    target: &ProbeTarget,
    cfg: &ClientConfig,
    p: &mut AddressProbe,
    unknown: &str,
) -> Result<Connection, Ended> {
    let (mut conn, banner) = match Connection::connect(target.addr, cfg.clone()).await {
        Ok(ok) => ok,
        Err(e) => return Err(ended(&e)),
    };
    p.reachable = true;
    p.banner = Some(banner.one_line());
    if let Some(e) = banner_refusal(&banner) {
        conn.quit().await;
        p.transcripts.push(conn.into_transcript());
        return Err(e);
    }
    let caps = match hello(&mut conn, p).await {
        Ok(c) => c,
        Err(e) => {
            p.transcripts.push(conn.into_transcript());
            return Err(e);
        }
    };
    p.starttls = caps.starttls;
    if caps.starttls {
        match conn.starttls(&target.mx_name).await {
            Err(e) => {
                p.transcripts.push(conn.into_transcript());
                return Err(ended(&e));
            }
            Ok(outcome) => {
                let mut tls = TlsFacts {
                    reply: outcome.reply.one_line(),
                    handshake: false,
                    version: None,
                    cipher: None,
                    error: None,
                    certificate: outcome.certificate,
                };
                match outcome.handshake {
                    None => {
                        tls.error = Some(format!("STARTTLS refused: {}", outcome.reply.one_line()));
                    }
                    Some(Err(e)) => tls.error = Some(e),
                    Some(Ok(session)) => {
                        tls.handshake = true;
                        tls.version = Some(session.version);
                        tls.cipher = Some(session.cipher);
                    }
                }
                let handshake_failed = outcome.reply.code == 220 && !tls.handshake;
                p.tls = Some(tls);
                if handshake_failed {
                    // The connection died with the handshake; carry on in
                    // plain text, as a sender falling back would.
                    p.transcripts.push(conn.into_transcript());
                    match plain_session(target, cfg).await {
                        Ok(c) => conn = c,
                        Err((reason, why, t)) => {
                            if let Some(t) = t {
                                p.transcripts.push(t);
                            }
                            return Err((reason, why));
                        }
                    }
                } else if outcome.reply.code == 220 {
                    // RFC 3207 §4.2: forget what was learnt before TLS.
                    match hello(&mut conn, p).await {
                        Ok(_) => {}
                        Err(e) => {
                            p.transcripts.push(conn.into_transcript());
                            return Err(e);
                        }
                    }
                }
            }
        }
    }

    // MAIL FROM:<>; if refused, ask the recipient questions with the probe
    // sender so that they can still be answered.
    let cmd = "MAIL FROM:<>";
    let reply = match conn.command(cmd).await {
        Ok(r) => r,
        Err(e) => return Err(fail_session(conn, p, &e)),
    };
    p.null_sender = expect_accept(cmd, &reply);
    if !reply.is_positive() {
        let cmd = format!("MAIL FROM:<{}>", target.mail_from);
        let second = match conn.command(&cmd).await {
            Ok(r) => r,
            Err(e) => return Err(fail_session(conn, p, &e)),
        };
        if !second.is_positive() {
            let refused = Check::untestable(Reason::SenderRefused, Some(&cmd), Some(&second))
                .with_detail("no sender was accepted, so no recipient could be asked about");
            p.postmaster = refused.clone();
            p.unknown_recipient = refused;
            if let Err(e) = conn.command("RSET").await {
                return Err(fail_session(conn, p, &e));
            }
            return Ok(conn);
        }
    }

    let cmd = format!("RCPT TO:<postmaster@{}>", target.domain);
    match conn.command(&cmd).await {
        Ok(r) => p.postmaster = expect_accept(&cmd, &r),
        Err(e) => return Err(fail_session(conn, p, &e)),
    }
    let cmd = format!("RCPT TO:<{unknown}>");
    match conn.command(&cmd).await {
        Ok(r) => p.unknown_recipient = expect_refuse(&cmd, &r),
        Err(e) => return Err(fail_session(conn, p, &e)),
    }
    if let Err(e) = conn.command("RSET").await {
        return Err(fail_session(conn, p, &e));
    }
    Ok(conn)
}

/// The conversation broke: keep its transcript, and mark the questions
/// not yet answered.
fn fail_session(conn: Connection, p: &mut AddressProbe, err: &SmtpError) -> Ended {
    p.transcripts.push(conn.into_transcript());
    let (reason, why) = ended(err);
    for check in [
        &mut p.null_sender,
        &mut p.postmaster,
        &mut p.unknown_recipient,
    ] {
        if check.command.is_none() {
            *check = Check::not_asked(reason, &why);
        }
    }
    (reason, why)
}

fn banner_refusal(banner: &Reply) -> Option<Ended> {
    if banner.is_positive() {
        None
    } else if banner.is_transient() {
        Some((
            Reason::of_transient(banner),
            format!("the banner says {}", banner.one_line()),
        ))
    } else if banner.is_permanent() {
        Some((
            Reason::ServiceRefused,
            format!("the banner says {}", banner.one_line()),
        ))
    } else {
        Some((
            Reason::ProtocolError,
            format!("unexpected banner {}", banner.one_line()),
        ))
    }
}

/// EHLO (HELO fallback), recording what the host offers.
async fn hello(conn: &mut Connection, p: &mut AddressProbe) -> Result<Capabilities, Ended> {
    let (reply, caps) = conn.hello().await.map_err(|e| ended(&e))?;
    if !reply.is_positive() {
        let reason = if reply.is_transient() {
            Reason::of_transient(&reply)
        } else {
            Reason::ServiceRefused
        };
        return Err((
            reason,
            format!("EHLO and HELO refused: {}", reply.one_line()),
        ));
    }
    p.greeting = Some(format!(
        "{} {}",
        reply.code,
        reply.lines.first().map(String::as_str).unwrap_or("")
    ));
    p.esmtp = caps.esmtp;
    p.extensions = caps.extensions.clone();
    p.size = caps.size;
    Ok(caps)
}

/// A connection for the rest of the battery: banner and hello, no TLS.
async fn plain_session(
    target: &ProbeTarget,
    cfg: &ClientConfig,
) -> Result<Connection, (Reason, String, Option<Transcript>)> {
    let (mut conn, banner) = Connection::connect(target.addr, cfg.clone())
        .await
        .map_err(|e| {
            let (r, w) = ended(&e);
            (r, w, None)
        })?;
    if let Some((r, w)) = banner_refusal(&banner) {
        conn.quit().await;
        return Err((r, w, Some(conn.into_transcript())));
    }
    match conn.hello().await {
        Ok((reply, _)) if reply.is_positive() => Ok(conn),
        Ok((reply, _)) => {
            let reason = if reply.is_transient() {
                Reason::of_transient(&reply)
            } else {
                Reason::ServiceRefused
            };
            conn.quit().await;
            Err((
                reason,
                format!("EHLO and HELO refused: {}", reply.one_line()),
                Some(conn.into_transcript()),
            ))
        }
        Err(e) => {
            let (r, w) = ended(&e);
            Err((r, w, Some(conn.into_transcript())))
        }
    }
}

/// Try each variant in its own transaction. Returns why the connection
/// ended early, if it did; the variants not reached are left to the caller.
async fn relay_batch(
    conn: &mut Connection,
    batch: &[&RelayVariant],
    ctx: &RelayContext<'_>,
    target: &ProbeTarget,
    p: &mut AddressProbe,
) -> Option<Ended> {
    let accepts_any = p.unknown_recipient.status == Status::Fail;
    for (i, v) in batch.iter().enumerate() {
        let sender = sender_for(v.sender, target);
        let recipient = (v.recipient)(ctx);
        let mail = format!("MAIL FROM:<{sender}>");
        let outcome = async {
            let r = conn.command(&mail).await?;
            if !r.is_positive() {
                let reason = if r.is_transient() {
                    Reason::of_transient(&r)
                } else {
                    Reason::SenderRefused
                };
                return Ok::<_, SmtpError>(Check::untestable(reason, Some(&mail), Some(&r)));
            }
            let rcpt = format!("RCPT TO:<{recipient}>");
            let r = conn.command(&rcpt).await?;
            let mut check = expect_refuse(&rcpt, &r);
            if check.status == Status::Fail && v.at_audited_domain && accepts_any {
                check = Check::untestable(Reason::AcceptsAnyRecipient, Some(&rcpt), Some(&r))
                    .with_detail(
                        "the host accepts any recipient at the audited domain, so accepting this address does not show relaying",
                    );
            }
            conn.command("RSET").await?;
            Ok(check)
        }
        .await;
        match outcome {
            Ok(check) => p.relay.push(RelayCheck {
                variant: v.name,
                sender,
                recipient,
                check,
            }),
            Err(e) => {
                let (reason, why) = ended(&e);
                p.relay.push(RelayCheck {
                    variant: v.name,
                    sender,
                    recipient,
                    check: Check::untestable(reason, None, None).with_detail(why.clone()),
                });
                let mut rest: Vec<&RelayVariant> = batch[i + 1..].to_vec();
                give_up(&mut rest, ctx, target, p, reason, &why);
                return Some((reason, why));
            }
        }
    }
    None
}

fn sender_for(kind: SenderKind, target: &ProbeTarget) -> String {
    match kind {
        SenderKind::Probe => target.mail_from.clone(),
        SenderKind::Null => String::new(),
        SenderKind::Local => format!("postmaster@{}", target.domain),
    }
}

/// Record the variants never tried as untestable, and clear the list.
fn give_up(
    pending: &mut Vec<&RelayVariant>,
    ctx: &RelayContext<'_>,
    target: &ProbeTarget,
    p: &mut AddressProbe,
    reason: Reason,
    why: &str,
) {
    for v in pending.drain(..) {
        p.relay.push(RelayCheck {
            variant: v.name,
            sender: sender_for(v.sender, target),
            recipient: (v.recipient)(ctx),
            check: Check::not_asked(reason, why),
        });
    }
}

async fn finish(mut conn: Connection, p: &mut AddressProbe) {
    conn.quit().await;
    p.transcripts.push(conn.into_transcript());
}

/// A local part that no real mailbox has: a fixed prefix and 12 random
/// lower-case letters and digits.
pub fn random_local_part() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let mut rng = rand::rng();
    let tail: String = (0..12)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    format!("mxguard-nonexistent-{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, text: &str) -> Reply {
        Reply {
            code,
            lines: vec![text.to_owned()],
        }
    }

    #[test]
    fn transient_replies_are_read_for_their_reason() {
        let cases = [
            (
                450,
                "4.2.0 <x@y>: Recipient address rejected: Greylisted, see https://postgrey.schweikert.ch/",
                Reason::Greylisted,
            ),
            (451, "4.7.1 Please try again later", Reason::Greylisted),
            (
                421,
                "4.7.0 mx.example closing connection",
                Reason::RateLimited,
            ),
            (
                450,
                "4.7.1 Error: too many recipients from 192.0.2.1",
                Reason::RateLimited,
            ),
            (
                451,
                "4.3.0 rate limit exceeded, slow down",
                Reason::RateLimited,
            ),
            (
                451,
                "4.3.0 Temporary lookup failure",
                Reason::TemporaryFailure,
            ),
            (
                450,
                "4.1.1 <x@y>: Recipient address rejected: unverified address",
                Reason::TemporaryFailure,
            ),
        ];
        for (code, text, want) in cases {
            assert_eq!(
                Reason::of_transient(&reply(code, text)),
                want,
                "{code} {text}"
            );
        }
    }

    #[test]
    fn answers_are_judged_by_what_a_good_host_does() {
        let ok = reply(250, "2.1.5 ok");
        let no = reply(550, "5.1.1 no such user");
        let later = reply(450, "4.2.0 greylisted");
        assert_eq!(expect_accept("RCPT", &ok).status, Status::Pass);
        assert_eq!(expect_accept("RCPT", &no).status, Status::Fail);
        assert_eq!(expect_refuse("RCPT", &ok).status, Status::Fail);
        assert_eq!(expect_refuse("RCPT", &no).status, Status::Pass);
        for c in [expect_accept("RCPT", &later), expect_refuse("RCPT", &later)] {
            assert_eq!(c.status, Status::Untestable);
            assert_eq!(c.reason, Some(Reason::Greylisted));
        }
        let odd = expect_refuse("RCPT", &reply(354, "go ahead"));
        assert_eq!(odd.reason, Some(Reason::ProtocolError));
    }

    #[test]
    fn the_battery_has_distinct_variants_and_never_targets_a_real_domain() {
        assert!(RELAY_VARIANTS.len() >= 12);
        let ctx = RelayContext {
            domain: "example.lab",
            ip: "192.0.2.1".parse().unwrap(),
        };
        let mut names = std::collections::HashSet::new();
        let mut envelopes = std::collections::HashSet::new();
        for v in RELAY_VARIANTS {
            assert!(names.insert(v.name), "duplicate variant {}", v.name);
            let rcpt = (v.recipient)(&ctx);
            assert!(
                envelopes.insert((v.sender, rcpt.clone())),
                "{rcpt} twice from the same kind of sender"
            );
            let lower = rcpt.to_ascii_lowercase();
            assert!(
                lower.contains(RELAY_TARGET_DOMAIN) || lower.contains("[198.51.100.25]"),
                "{} does not aim at the reserved target: {rcpt}",
                v.name
            );
        }
    }

    #[test]
    fn random_local_parts_differ() {
        let a = random_local_part();
        let b = random_local_part();
        assert_ne!(a, b);
        assert!(a.starts_with("mxguard-nonexistent-") && a.len() == 32);
    }
}
