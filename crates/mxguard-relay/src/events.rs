//! Mail events: one structured log line for each thing a mail admin asks
//! about afterwards — who connected, what was refused and why, what was
//! accepted under which queue id.
//!
//! Events go to `tracing` under the target `mxguard::mail`, apart from the
//! debug logging of the rest of the relay, so they can be filtered with
//! `RUST_LOG=mxguard::mail=info`. Tests (and later the metrics) can also
//! subscribe to them as values.

use std::net::SocketAddr;
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::mpsc;

/// The stage of the session a rejection happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    Connect,
    Helo,
    Mail,
    Rcpt,
    Data,
    Session,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Helo => "helo",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
            Stage::Session => "session",
        }
    }
}

/// One mail event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum MailEvent {
    /// A client connected (and was let in, or turned away: see `refused`).
    Connect {
        client: SocketAddr,
        /// Set when the connection was refused at once (a limit).
        refused: Option<String>,
    },
    /// Something the client asked for was refused.
    Rejected {
        client: SocketAddr,
        stage: Stage,
        /// A short stable id: `relay-denied`, `unknown-recipient`, …
        reason: &'static str,
        /// The sender, when known.
        from: Option<String>,
        /// The recipient concerned, for RCPT.
        rcpt: Option<String>,
        /// The reply sent, code and text.
        reply: String,
    },
    /// A message was stored and answered with 250.
    Accepted {
        client: SocketAddr,
        queue_id: String,
        from: String,
        rcpts: Vec<String>,
        size: u64,
        tls: bool,
    },
    /// One delivery attempt for one recipient.
    Delivery {
        queue_id: String,
        rcpt: String,
        /// `delivered`, `deferred`, `bounced` or `expired`.
        outcome: &'static str,
        host: Option<String>,
        reply: String,
        attempt: u32,
    },
    /// The session ended.
    Disconnect {
        client: SocketAddr,
        messages: usize,
        /// Why, when it was not a QUIT: `timeout`, `too-many-errors`, …
        reason: Option<&'static str>,
    },
}

/// Where events go.
#[derive(Debug, Default)]
pub struct Events {
    subscribers: Mutex<Vec<mpsc::UnboundedSender<MailEvent>>>,
}

impl Events {
    pub fn new() -> Events {
        Events::default()
    }

    /// Receive every event from now on.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<MailEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        rx
    }

    /// Log the event and hand it to the subscribers.
    pub fn emit(&self, event: MailEvent) {
        log(&event);
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        if !subs.is_empty() {
            subs.retain(|s| s.send(event.clone()).is_ok());
        }
    }
}

fn log(event: &MailEvent) {
    match event {
        MailEvent::Connect { client, refused } => match refused {
            None => tracing::info!(target: "mxguard::mail", event = "connect", %client),
            Some(why) => {
                tracing::info!(target: "mxguard::mail", event = "connect", %client, refused = %why)
            }
        },
        MailEvent::Rejected {
            client,
            stage,
            reason,
            from,
            rcpt,
            reply,
        } => tracing::info!(
            target: "mxguard::mail",
            event = "rejected",
            %client,
            stage = stage.as_str(),
            reason,
            from = %from.as_deref().map(angle).unwrap_or_default(),
            rcpt = %rcpt.as_deref().map(angle).unwrap_or_default(),
            reply = %reply,
        ),
        MailEvent::Accepted {
            client,
            queue_id,
            from,
            rcpts,
            size,
            tls,
        } => tracing::info!(
            target: "mxguard::mail",
            event = "accepted",
            %client,
            queue_id = %queue_id,
            from = %angle(from),
            rcpts = %rcpts.iter().map(|r| angle(r)).collect::<Vec<_>>().join(","),
            size,
            tls,
        ),
        MailEvent::Delivery {
            queue_id,
            rcpt,
            outcome,
            host,
            reply,
            attempt,
        } => tracing::info!(
            target: "mxguard::mail",
            event = "delivery",
            queue_id = %queue_id,
            rcpt = %angle(rcpt),
            outcome = *outcome,
            host = %host.as_deref().unwrap_or(""),
            attempt,
            reply = %reply,
        ),
        MailEvent::Disconnect {
            client,
            messages,
            reason,
        } => tracing::info!(
            target: "mxguard::mail",
            event = "disconnect",
            %client,
            messages,
            reason = *reason,
        ),
    }
}

fn angle(address: &str) -> String {
    format!("<{address}>")
}
