//! The [`Resolver`] implementation over hickory-resolver.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use std::sync::Arc;

use futures_util::StreamExt;
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::{DnsError, DnsHandle, NetError, RetryDnsHandle};
use hickory_proto::op::{DnsRequestOptions, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType as HType};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverOpts};
use hickory_resolver::{NameServerPool, PoolContext, TlsConfig};

use crate::net::{normalize_name, reverse_name};
use crate::resolver::{Answer, LookupError, LookupResult, MxRecord, Resolver};

/// Which DNS server to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolverSpec {
    /// The system's configuration (`/etc/resolv.conf`).
    System,
    /// One server, over UDP with TCP when an answer is truncated.
    Server(SocketAddr),
}

impl ResolverSpec {
    /// Parse `IP`, `IP:PORT` or `[IPv6]:PORT`; the port defaults to 53.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(ResolverSpec::Server(addr));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(ResolverSpec::Server(SocketAddr::new(ip, 53)));
        }
        Err(format!(
            "invalid resolver address {text:?}: expected IP or IP:PORT (IPv6 as [IP]:PORT)"
        ))
    }
}

/// One name server at `addr`, over UDP with TCP, on its port (hickory's
/// own constructor assumes 53).
pub fn name_server(addr: SocketAddr) -> NameServerConfig {
    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
    ns.connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
        .into_iter()
        .map(|mut c| {
            c.port = addr.port();
            c
        })
        .collect();
    ns
}

/// A [`Resolver`] that asks real DNS servers through hickory.
///
/// Built for auditing rather than for a busy client: it talks to the name
/// server pool directly, below hickory's caching layer, so nothing is answered
/// from the hosts file or from RFC 6761 shortcuts (hickory answers PTR for
/// 127/8 with "localhost" without asking). Names are always absolute, CNAME
/// chains are kept so the audit can see aliases, failures are never turned
/// into empty answers, and UDP answers with TC set are retried over TCP.
#[derive(Clone)]
pub struct HickoryResolver {
    pool: RetryDnsHandle<NameServerPool<TokioRuntimeProvider>>,
    request: DnsRequestOptions,
    /// The most one question may take, retries included.
    budget: Duration,
    description: String,
}

impl std::fmt::Debug for HickoryResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HickoryResolver")
            .field("description", &self.description)
            .finish()
    }
}

impl HickoryResolver {
    /// Build a resolver; `timeout` bounds each question, retries included
    /// (each question gets two tries of half the budget).
    pub fn new(spec: &ResolverSpec, timeout: Duration) -> Result<Self, LookupError> {
        let (servers, mut opts, description) = match spec {
            ResolverSpec::System => {
                let (config, opts) = hickory_resolver::system_conf::read_system_conf()
                    .map_err(|e| LookupError::Other(format!("reading /etc/resolv.conf: {e}")))?;
                let servers = config.name_servers().to_vec();
                if servers.is_empty() {
                    return Err(LookupError::Other(
                        "/etc/resolv.conf names no nameserver; give one with --resolver".into(),
                    ));
                }
                let ips: Vec<String> = servers.iter().map(|ns| ns.ip.to_string()).collect();
                let desc = format!("the system resolver ({})", ips.join(", "));
                (servers, opts, desc)
            }
            ResolverSpec::Server(addr) => {
                let ns = name_server(*addr);
                (
                    vec![ns],
                    ResolverOpts::default(),
                    format!("resolver {addr}"),
                )
            }
        };
        opts.timeout = timeout / 2;
        opts.attempts = 2;
        let tls =
            TlsConfig::new().map_err(|e| LookupError::Other(format!("resolver setup: {e}")))?;
        let context = Arc::new(PoolContext::new(opts, tls));
        let attempts = context.options.attempts;
        let pool = NameServerPool::from_config(servers, context, TokioRuntimeProvider::default());
        let mut request = DnsRequestOptions::default();
        request.recursion_desired = true;
        request.use_edns = true;
        Ok(HickoryResolver {
            pool: RetryDnsHandle::new(pool, attempts),
            request,
            budget: timeout,
            description,
        })
    }

    async fn query(&self, name: &str, rtype: HType) -> LookupResult<RData> {
        if name.is_empty() || name.len() > 253 {
            return Err(LookupError::InvalidName(name.into()));
        }
        let mut fqdn = Name::from_ascii(name).map_err(|_| LookupError::InvalidName(name.into()))?;
        fqdn.set_fqdn(true);
        let mut stream = self.pool.lookup(Query::query(fqdn, rtype), self.request);
        // hickory may try UDP and TCP per attempt; the budget is ours to keep.
        let response = match tokio::time::timeout(self.budget, stream.next()).await {
            Err(_elapsed) => return Err(LookupError::Timeout),
            Ok(Some(Ok(response))) => response,
            Ok(Some(Err(err))) => return classify(err),
            Ok(None) => return Err(LookupError::Other("no response".into())),
        };
        let response = match DnsError::from_response(response) {
            Ok(response) => response,
            Err(err) => return classify(NetError::Dns(err)),
        };
        let mut cname_chain = Vec::new();
        let mut records = Vec::new();
        for record in &response.answers {
            match &record.data {
                RData::CNAME(target) => cname_chain.push(normalize_name(&target.0.to_ascii())),
                data if record.record_type() == rtype => records.push(data.clone()),
                _ => {}
            }
        }
        Ok(Answer {
            records,
            cname_chain,
            nxdomain: response.response_code == ResponseCode::NXDomain,
        })
    }
}

/// Sort a hickory error into an answer (NXDOMAIN, NODATA) or a failure.
fn classify(err: NetError) -> LookupResult<RData> {
    match err {
        NetError::Dns(DnsError::NoRecordsFound(nr)) => match nr.response_code {
            ResponseCode::NXDomain => Ok(Answer::nxdomain()),
            ResponseCode::NoError => Ok(Answer::nodata()),
            other => Err(rcode_error(other)),
        },
        NetError::Dns(DnsError::ResponseCode(code)) => Err(rcode_error(code)),
        NetError::Timeout => Err(LookupError::Timeout),
        NetError::NoConnections => Err(LookupError::Unreachable(
            "no connection could be made".into(),
        )),
        NetError::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::HostUnreachable
            | std::io::ErrorKind::NetworkUnreachable
            | std::io::ErrorKind::AddrNotAvailable => Err(LookupError::Unreachable(io.to_string())),
            std::io::ErrorKind::TimedOut => Err(LookupError::Timeout),
            _ => Err(LookupError::Other(io.to_string())),
        },
        other => {
            let text = other.to_string();
            // hickory reports an exhausted retry budget in several shapes;
            // anything that says it timed out is a timeout.
            if text.contains("timed out") {
                Err(LookupError::Timeout)
            } else if text.contains("refused") {
                Err(LookupError::Unreachable(text))
            } else {
                Err(LookupError::Other(text))
            }
        }
    }
}

fn rcode_error(code: ResponseCode) -> LookupError {
    match code {
        ResponseCode::ServFail => LookupError::ServFail,
        ResponseCode::Refused => LookupError::Refused,
        other => LookupError::Rcode(other.to_string()),
    }
}

impl Resolver for HickoryResolver {
    async fn mx(&self, name: &str) -> LookupResult<MxRecord> {
        let answer = self.query(name, HType::MX).await?;
        Ok(filter(answer, |d| match d {
            RData::MX(mx) => Some(MxRecord::new(mx.preference, mx.exchange.to_ascii())),
            _ => None,
        }))
    }

    async fn a(&self, name: &str) -> LookupResult<Ipv4Addr> {
        let answer = self.query(name, HType::A).await?;
        Ok(filter(answer, |d| match d {
            RData::A(a) => Some(a.0),
            _ => None,
        }))
    }

    async fn aaaa(&self, name: &str) -> LookupResult<Ipv6Addr> {
        let answer = self.query(name, HType::AAAA).await?;
        Ok(filter(answer, |d| match d {
            RData::AAAA(a) => Some(a.0),
            _ => None,
        }))
    }

    async fn ptr(&self, ip: IpAddr) -> LookupResult<String> {
        let answer = self.query(&reverse_name(ip), HType::PTR).await?;
        Ok(filter(answer, |d| match d {
            RData::PTR(p) => Some(normalize_name(&p.0.to_ascii())),
            _ => None,
        }))
    }

    async fn txt(&self, name: &str) -> LookupResult<String> {
        let answer = self.query(name, HType::TXT).await?;
        Ok(filter(answer, |d| match d {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        }))
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}

fn filter<T>(answer: Answer<RData>, f: impl FnMut(RData) -> Option<T>) -> Answer<T> {
    Answer {
        records: answer.records.into_iter().filter_map(f).collect(),
        cname_chain: answer.cname_chain,
        nxdomain: answer.nxdomain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolver_spec_parsing() {
        assert_eq!(
            ResolverSpec::parse("127.0.0.1").unwrap(),
            ResolverSpec::Server("127.0.0.1:53".parse().unwrap())
        );
        assert_eq!(
            ResolverSpec::parse("127.0.0.1:5353").unwrap(),
            ResolverSpec::Server("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(
            ResolverSpec::parse("[::1]:5353").unwrap(),
            ResolverSpec::Server("[::1]:5353".parse().unwrap())
        );
        assert!(ResolverSpec::parse("dns.example").is_err());
        assert!(ResolverSpec::parse("127.0.0.1:99999").is_err());
    }
}
