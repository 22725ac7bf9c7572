//! Who may be sent mail through this relay: the configured domains, and in
//! them only the recipients the primary would take.

use std::collections::HashMap;
use std::sync::Arc;

use crate::address::{AddressProblem, parse_recipient};
use crate::callout::{Callout, Primary, Verdict, sanitize};
use crate::list::{Listed, RecipientList};

/// How one domain's recipients are validated.
#[derive(Debug)]
pub enum Validation {
    Callout(Primary),
    List(RecipientList),
}

/// The decision on one RCPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptDecision {
    /// Take it; the normalised address to store.
    Accept(String),
    /// Refuse it with this reply; `reason` names the rule for the event log.
    Refuse { reply: String, reason: &'static str },
}

/// The relay's recipient policy.
#[derive(Debug)]
pub struct Policy {
    domains: HashMap<String, Validation>,
    callout: Arc<Callout>,
}

impl Policy {
    pub fn new(domains: HashMap<String, Validation>, callout: Arc<Callout>) -> Policy {
        Policy { domains, callout }
    }

    pub fn callout(&self) -> &Arc<Callout> {
        &self.callout
    }

    /// The configured domains (lower case).
    pub fn domain_names(&self) -> impl Iterator<Item = &String> {
        self.domains.keys()
    }

    /// Decide on `RCPT TO:<address>` (the address as smtp-proto parsed it).
    pub async fn rcpt(&self, address: &str) -> RcptDecision {
        let refuse = |reply: String, reason| RcptDecision::Refuse { reply, reason };
        let rcpt = match parse_recipient(address) {
            Ok(r) => r,
            Err(AddressProblem::NoDomain) => {
                return refuse(
                    "550 5.1.3 This host keeps no mailboxes of its own; it only relays for \
                     the domains it backs up"
                        .into(),
                    "no-domain",
                );
            }
            Err(AddressProblem::Literal) => {
                return refuse(
                    format!("550 5.7.1 <{address}>: Relay access denied"),
                    "relay-denied",
                );
            }
            Err(AddressProblem::Routing) => {
                return refuse(
                    format!("550 5.7.1 <{address}>: Sender-specified routing is not accepted"),
                    "routing",
                );
            }
            Err(AddressProblem::BadDomain(_)) => {
                return refuse(
                    format!("501 5.1.3 <{address}>: Bad recipient address syntax"),
                    "bad-address",
                );
            }
        };
        let addr = rcpt.address();
        let Some(validation) = self.domains.get(&rcpt.domain) else {
            return refuse(
                format!("550 5.7.1 <{addr}>: Relay access denied"),
                "relay-denied",
            );
        };
        match validation {
            Validation::List(list) => match list.check(&rcpt) {
                Listed::Yes => RcptDecision::Accept(addr),
                Listed::No => refuse(
                    format!("550 5.1.1 <{addr}>: Recipient address rejected: User unknown"),
                    "unknown-recipient",
                ),
            },
            Validation::Callout(primary) => {
                match self.callout.verify(primary, &rcpt.domain, &addr).await {
                    Verdict::Valid { .. } => RcptDecision::Accept(addr),
                    Verdict::Invalid { reply, .. } => refuse(
                        format!(
                            "550 5.1.1 <{addr}>: Recipient address rejected by the primary: {}",
                            sanitize(&reply)
                        ),
                        "unknown-recipient",
                    ),
                    Verdict::Unknown { why } => {
                        tracing::info!(target: "mxguard::callout", %addr, %why, "cannot verify");
                        refuse(
                            format!(
                                "451 4.3.0 <{addr}>: Cannot verify this recipient with the \
                                 primary now; try again later"
                            ),
                            "callout-unavailable",
                        )
                    }
                }
            }
        }
    }
}
