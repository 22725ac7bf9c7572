//! Delivery status notifications (RFC 3464): a delay notice once a message
//! has waited `warn_after`, a failure notice when recipients are given up
//! on — each naming only the recipients concerned, sent from the null
//! sender.
//!
//! Who gets them is the `dsn` policy. The default, `authenticated`, sends a
//! notice only when the sender's MAIL FROM domain passed SPF at ingress:
//! a backup MX that returns mail to forged senders is a backscatter source,
//! which is the very thing mxguard is here to prevent. Mail from the null
//! sender never gets a notice (RFC 5321 §4.5.5).

use std::net::{IpAddr, Ipv4Addr};
use std::time::SystemTime;

use mxguard_queue::{Body, DeliveryState, Envelope, QueueId, SpfResult};

use crate::config::DsnPolicy;

/// Builds notices.
#[derive(Debug, Clone)]
pub struct Notices {
    hostname: String,
    policy: DsnPolicy,
}

/// A notice ready for the spool: its envelope and text.
pub type Notice = (Envelope, Vec<u8>);

const MAX_HEADERS: usize = 64 * 1024;

impl Notices {
    pub fn new(hostname: String, policy: DsnPolicy) -> Notices {
        Notices { hostname, policy }
    }

    /// Whether the sender of `envelope` may be sent a notice, and if not, why.
    pub fn allowed(&self, envelope: &Envelope) -> Result<(), &'static str> {
        if envelope.mail_from.is_empty() {
            return Err("the message came from the null sender");
        }
        match self.policy {
            DsnPolicy::Never => Err("dsn = \"never\""),
            DsnPolicy::Always => Ok(()),
            DsnPolicy::Authenticated => match envelope.spf {
                Some(SpfResult::Pass) => Ok(()),
                _ => Err("the sender was not authenticated by SPF at ingress"),
            },
        }
    }

    /// A failure notice for the recipients at `failed` (indexes into
    /// `state.recipients`).
    pub fn failure(
        &self,
        envelope: &Envelope,
        state: &DeliveryState,
        failed: &[usize],
        message: &[u8],
    ) -> Option<Notice> {
        self.build(envelope, state, failed, message, Kind::Failure)
    }

    /// A delay notice for every recipient still pending.
    pub fn delay(
        &self,
        envelope: &Envelope,
        state: &DeliveryState,
        until: SystemTime,
        message: &[u8],
    ) -> Option<Notice> {
        let pending: Vec<usize> = state
            .recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| r.status == mxguard_queue::RecipientStatus::Pending)
            .map(|(i, _)| i)
            .collect();
        self.build(envelope, state, &pending, message, Kind::Delay(until))
    }

    fn build(
        &self,
        envelope: &Envelope,
        state: &DeliveryState,
        which: &[usize],
        message: &[u8],
        kind: Kind,
    ) -> Option<Notice> {
        if which.is_empty() {
            return None;
        }
        if let Err(why) = self.allowed(envelope) {
            tracing::info!(target: "mxguard::delivery", id = %envelope.id, why, "no delivery notice");
            return None;
        }
        let id = QueueId::new();
        let now = SystemTime::now();
        let date = rfc5322(now);
        let boundary = format!("{id}/{}", self.hostname);
        let (subject, action, intro) = match kind {
            Kind::Failure => (
                "Undelivered Mail Returned to Sender",
                "failed",
                "Your message could not be delivered to the recipients below. This is a \
                 permanent error; it will not be retried.",
            ),
            Kind::Delay(_) => (
                "Delayed Mail (still being retried)",
                "delayed",
                "Your message has not been delivered to the recipients below yet. The \
                 backup MX is holding it and will keep trying; you do not need to send it again.",
            ),
        };
        let mut text = String::new();
        let push = |t: &mut String, s: &str| {
            t.push_str(s);
            t.push_str("\r\n");
        };
        push(
            &mut text,
            &format!(
                "From: Mail Delivery System <MAILER-DAEMON@{}>",
                self.hostname
            ),
        );
        push(&mut text, &format!("To: <{}>", envelope.mail_from));
        push(&mut text, &format!("Subject: {subject}"));
        push(&mut text, &format!("Date: {date}"));
        push(&mut text, &format!("Message-ID: <{id}@{}>", self.hostname));
        push(&mut text, "Auto-Submitted: auto-replied");
        push(&mut text, "MIME-Version: 1.0");
        push(
            &mut text,
            &format!(
                "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\""
            ),
        );
        push(&mut text, "");
        push(&mut text, &format!("--{boundary}"));
        push(&mut text, "Content-Type: text/plain; charset=us-ascii");
        push(&mut text, "");
        push(
            &mut text,
            &format!("This is the mail system at {}.", self.hostname),
        );
        push(&mut text, "");
        push(&mut text, intro);
        push(&mut text, "");
        for &i in which {
            let r = &state.recipients[i];
            push(
                &mut text,
                &format!(
                    "<{}>: {}",
                    r.address,
                    r.last_reply.as_deref().unwrap_or("no answer yet")
                ),
            );
        }
        push(&mut text, "");
        push(&mut text, &format!("--{boundary}"));
        push(&mut text, "Content-Type: message/delivery-status");
        push(&mut text, "");
        push(&mut text, &format!("Reporting-MTA: dns; {}", self.hostname));
        push(&mut text, &format!("X-Mxguard-Queue-ID: {}", envelope.id));
        push(
            &mut text,
            &format!("Arrival-Date: {}", rfc5322(envelope.received_at)),
        );
        for &i in which {
            let r = &state.recipients[i];
            push(&mut text, "");
            push(
                &mut text,
                &format!("Final-Recipient: rfc822; {}", r.address),
            );
            push(&mut text, &format!("Action: {action}"));
            push(
                &mut text,
                &format!("Status: {}", status_of(r.last_reply.as_deref(), kind)),
            );
            if let Some(h) = &r.last_host {
                push(&mut text, &format!("Remote-MTA: dns; {h}"));
            }
            if let Some(reply) = &r.last_reply {
                push(&mut text, &format!("Diagnostic-Code: smtp; {reply}"));
            }
            if let Some(t) = state.last_attempt {
                push(&mut text, &format!("Last-Attempt-Date: {}", rfc5322(t)));
            }
            if let Kind::Delay(until) = kind {
                push(&mut text, &format!("Will-Retry-Until: {}", rfc5322(until)));
            }
        }
        push(&mut text, "");
        push(&mut text, &format!("--{boundary}"));
        push(&mut text, "Content-Type: text/rfc822-headers");
        push(&mut text, "");
        let mut bytes = text.into_bytes();
        let headers_end = message
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 2)
            .unwrap_or(message.len())
            .min(MAX_HEADERS);
        bytes.extend_from_slice(&message[..headers_end]);
        if !bytes.ends_with(b"\r\n") {
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let notice = Envelope {
            id,
            received_at: now,
            mail_from: String::new(),
            recipients: vec![envelope.mail_from.clone()],
            client_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            client_helo: self.hostname.clone(),
            body: if message.is_ascii() {
                Body::SevenBit
            } else {
                Body::EightBitMime
            },
            smtputf8: envelope.smtputf8,
            tls: false,
            spf: None,
        };
        Some((notice, bytes))
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Failure,
    Delay(SystemTime),
}

/// The RFC 3463 status for a recipient: the enhanced code of its last
/// reply if it has one of the right class, else a generic one.
fn status_of(reply: Option<&str>, kind: Kind) -> String {
    let want = match kind {
        Kind::Failure => '5',
        Kind::Delay(_) => '4',
    };
    if let Some(code) = reply
        .and_then(|r| r.split_whitespace().nth(1))
        .filter(|c| c.starts_with(want) && c.split('.').count() == 3)
        .filter(|c| c.chars().all(|ch| ch.is_ascii_digit() || ch == '.'))
    {
        return code.to_owned();
    }
    match kind {
        Kind::Failure if reply.is_some_and(|r| r.starts_with("gave up after")) => "5.4.7".into(),
        Kind::Failure => "5.0.0".into(),
        Kind::Delay(_) => "4.4.1".into(),
    }
}

fn rfc5322(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes() {
        assert_eq!(
            status_of(Some("550 5.1.1 no such user"), Kind::Failure),
            "5.1.1"
        );
        assert_eq!(status_of(Some("550 no such user"), Kind::Failure), "5.0.0");
        assert_eq!(
            status_of(Some("gave up after 7days; last: x"), Kind::Failure),
            "5.4.7"
        );
        assert_eq!(
            status_of(Some("451 4.3.0 try later"), Kind::Delay(SystemTime::now())),
            "4.3.0"
        );
        assert_eq!(status_of(None, Kind::Delay(SystemTime::now())), "4.4.1");
    }
}
