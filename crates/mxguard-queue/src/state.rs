//! Per-message delivery state: what forwarding to the primary has achieved
//! so far, kept in `state/<ID>` beside the entry (see `docs/spool.md`).

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::Envelope;

/// How far delivery of one queued message has got, saved with
/// [`Spool::save_state`](crate::Spool::save_state) after every attempt so
/// that retries survive a restart.
///
/// The spool stores it and checks that it belongs to its envelope (one
/// [`RecipientState`] per envelope recipient, same addresses, same order);
/// what the fields mean for retries and notices is the relay's business.
/// The relay removes a message only once no recipient is
/// [`Pending`](RecipientStatus::Pending) ([`DeliveryState::is_done`]).
///
/// Stored as one line of JSON in the state file; times as RFC 3339 text in
/// UTC with nanoseconds, like [`Envelope::received_at`], or `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryState {
    /// Delivery attempts made so far (connections to the primary, whatever
    /// their outcome).
    pub attempts: u32,
    /// When the first attempt was made.
    #[serde(with = "crate::rfc3339::option")]
    pub first_attempt: Option<SystemTime>,
    /// When the most recent attempt was made.
    #[serde(with = "crate::rfc3339::option")]
    pub last_attempt: Option<SystemTime>,
    /// When to try next; None = as soon as possible.
    #[serde(with = "crate::rfc3339::option")]
    pub next_attempt: Option<SystemTime>,
    /// Held by the operator: no delivery until released.
    pub held: bool,
    /// A delay notice (DSN) has been sent.
    pub delay_notified: bool,
    /// One per envelope recipient, same order as [`Envelope::recipients`].
    pub recipients: Vec<RecipientState>,
}

/// The delivery state of one envelope recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientState {
    /// The forward-path, exactly as in [`Envelope::recipients`].
    pub address: String,
    /// Where delivery to this recipient stands.
    pub status: RecipientStatus,
    /// The last reply or error for this recipient, one line.
    pub last_reply: Option<String>,
    /// The host that gave it.
    pub last_host: Option<String>,
    /// A failure notice has been sent (or decided against) for it.
    pub failure_notified: bool,
}

/// Where delivery to one recipient stands. Written in kebab-case:
/// `"pending"`, `"delivered"`, `"failed"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecipientStatus {
    /// Not delivered yet; will be tried again.
    Pending,
    /// The primary accepted it.
    Delivered,
    /// Given up on (permanent failure, or retries exhausted).
    Failed,
}

impl DeliveryState {
    /// The state of a message never tried: no attempts, not held, no
    /// notices, every recipient [`Pending`](RecipientStatus::Pending).
    pub fn new(envelope: &Envelope) -> Self {
        DeliveryState {
            attempts: 0,
            first_attempt: None,
            last_attempt: None,
            next_attempt: None,
            held: false,
            delay_notified: false,
            recipients: envelope
                .recipients
                .iter()
                .map(|address| RecipientState {
                    address: address.clone(),
                    status: RecipientStatus::Pending,
                    last_reply: None,
                    last_host: None,
                    failure_notified: false,
                })
                .collect(),
        }
    }

    /// The recipients still to be delivered, in envelope order.
    pub fn pending(&self) -> impl Iterator<Item = &RecipientState> {
        self.recipients
            .iter()
            .filter(|r| r.status == RecipientStatus::Pending)
    }

    /// Whether no recipient is [`Pending`](RecipientStatus::Pending): the
    /// message may be removed from the spool.
    pub fn is_done(&self) -> bool {
        self.pending().next().is_none()
    }

    /// Why this state cannot belong to `envelope`, if it cannot: its
    /// recipients must be the envelope's, in the same order.
    pub(crate) fn mismatch(&self, envelope: &Envelope) -> Option<String> {
        if self.recipients.len() != envelope.recipients.len() {
            return Some(format!(
                "{} recipient states for {} envelope recipients",
                self.recipients.len(),
                envelope.recipients.len()
            ));
        }
        self.recipients
            .iter()
            .zip(&envelope.recipients)
            .position(|(state, address)| state.address != *address)
            .map(|i| {
                format!(
                    "recipient state {i} is for {:?}, the envelope recipient is {:?}",
                    self.recipients[i].address, envelope.recipients[i]
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Body, QueueId};

    fn envelope(recipients: &[&str]) -> Envelope {
        Envelope {
            id: QueueId::new(),
            received_at: SystemTime::now(),
            mail_from: "a@example.org".to_owned(),
            recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
            client_addr: "192.0.2.1".parse().unwrap(),
            client_helo: "example.org".to_owned(),
            body: Body::SevenBit,
            smtputf8: false,
            tls: false,
            spf: None,
        }
    }

    #[test]
    fn new_is_all_pending_and_done_means_none_pending() {
        let env = envelope(&["x@example.net", "y@example.net"]);
        let mut state = DeliveryState::new(&env);
        assert_eq!(state.pending().count(), 2);
        assert!(!state.is_done());
        assert_eq!(state.mismatch(&env), None);

        state.recipients[0].status = RecipientStatus::Delivered;
        let pending: Vec<&str> = state.pending().map(|r| r.address.as_str()).collect();
        assert_eq!(pending, ["y@example.net"]);
        state.recipients[1].status = RecipientStatus::Failed;
        assert!(state.is_done());
    }

    #[test]
    fn mismatch_catches_other_recipients() {
        let env = envelope(&["x@example.net", "y@example.net"]);
        let state = DeliveryState::new(&env);
        assert!(state.mismatch(&envelope(&["x@example.net"])).is_some());
        assert!(
            state
                .mismatch(&envelope(&["y@example.net", "x@example.net"]))
                .is_some()
        );
    }
}
