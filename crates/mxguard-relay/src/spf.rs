//! SPF at ingress (RFC 7208): whether the client may send for the MAIL FROM
//! domain. The relay records the result in the envelope; it decides whether
//! the sender may ever get a delivery notice (`dsn = "authenticated"`), so a
//! forged sender never receives backscatter. mail-auth does the evaluation.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{ResolverConfig, ResolverOpts};
use mail_auth::MessageAuthenticator;
use mail_auth::spf::verify::SpfParameters;
use mxguard_queue::SpfResult;

use crate::callout::BoxFuture;

/// Checks one sender.
pub trait SpfCheck: Send + Sync + std::fmt::Debug {
    /// The SPF result for `sender` (not empty) sent from `ip` after `helo`.
    fn check<'a>(&'a self, ip: IpAddr, helo: &'a str, sender: &'a str) -> BoxFuture<'a, SpfResult>;
}

/// [`SpfCheck`] with mail-auth over hickory.
pub struct MailAuthSpf {
    auth: MessageAuthenticator,
    hostname: String,
    timeout: Duration,
}

impl std::fmt::Debug for MailAuthSpf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailAuthSpf")
            .field("hostname", &self.hostname)
            .finish()
    }
}

impl MailAuthSpf {
    /// Ask `server` (or the system's resolvers with None).
    pub fn new(server: Option<SocketAddr>, hostname: String) -> Result<MailAuthSpf, String> {
        let auth = match server {
            None => MessageAuthenticator::new_system_conf(),
            Some(addr) => {
                let ns = mxguard_dns::name_server(addr);
                let mut opts = ResolverOpts::default();
                opts.timeout = Duration::from_secs(2);
                opts.attempts = 2;
                MessageAuthenticator::new(ResolverConfig::from_name_servers(vec![ns]), opts)
            }
        }
        .map_err(|e| format!("SPF resolver: {e}"))?;
        Ok(MailAuthSpf {
            auth,
            hostname,
            timeout: Duration::from_secs(5),
        })
    }
}

impl SpfCheck for MailAuthSpf {
    fn check<'a>(&'a self, ip: IpAddr, helo: &'a str, sender: &'a str) -> BoxFuture<'a, SpfResult> {
        Box::pin(async move {
            let params = SpfParameters::verify_mail_from(ip, helo, &self.hostname, sender);
            match tokio::time::timeout(self.timeout, self.auth.verify_spf(params)).await {
                Err(_) => SpfResult::TempError,
                Ok(out) => match out.result() {
                    mail_auth::SpfResult::Pass => SpfResult::Pass,
                    mail_auth::SpfResult::Fail => SpfResult::Fail,
                    mail_auth::SpfResult::SoftFail => SpfResult::SoftFail,
                    mail_auth::SpfResult::Neutral => SpfResult::Neutral,
                    mail_auth::SpfResult::None => SpfResult::None,
                    mail_auth::SpfResult::TempError => SpfResult::TempError,
                    mail_auth::SpfResult::PermError => SpfResult::PermError,
                },
            }
        })
    }
}
