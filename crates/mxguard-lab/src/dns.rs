//! An authoritative DNS server for the lab: hickory-server's in-memory zones,
//! behind a thin layer that injects faults (SERVFAIL, REFUSED, silence).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_net::runtime::{Time, TokioRuntimeProvider};
use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, ResponseCode};
use hickory_proto::rr::rdata::{NS, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record};
use hickory_server::Server;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{
    AxfrPolicy, Catalog, MessageResponseBuilder, ZoneHandler, ZoneType,
};
use tokio::net::{TcpListener, UdpSocket};

use crate::zones::{Fault, FaultKind, ZoneSet};

/// A running lab name server. Dropping it stops the server.
#[derive(Debug)]
pub struct LabDns {
    addr: SocketAddr,
    _task: crate::AbortOnDrop,
}

impl LabDns {
    /// Serve `zones` on UDP and TCP at `ip`, on one free port chosen here.
    pub async fn start(ip: std::net::IpAddr, zones: &ZoneSet) -> std::io::Result<LabDns> {
        let handler = FaultyCatalog::build(zones).map_err(std::io::Error::other)?;
        let (udp, tcp) = bind_pair(ip).await?;
        let addr = udp.local_addr()?;
        let mut server = Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(10), 64 * 1024);
        let task = tokio::spawn(async move {
            if let Err(e) = server.block_until_done().await {
                tracing::warn!(cause = %e, "lab DNS server stopped");
            }
        });
        Ok(LabDns {
            addr,
            _task: crate::AbortOnDrop(task),
        })
    }

    /// Where the server listens (UDP and TCP share the port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Bind UDP on a free port, then TCP on the same port, retrying when another
/// process holds the TCP side.
async fn bind_pair(ip: std::net::IpAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..50 {
        let udp = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port")))
}

/// A catalog of in-memory zones, with faults checked first.
struct FaultyCatalog {
    catalog: Catalog,
    faults: Vec<Fault>,
}

impl FaultyCatalog {
    fn build(set: &ZoneSet) -> Result<FaultyCatalog, String> {
        let mut by_zone: BTreeMap<String, Vec<Record>> = BTreeMap::new();
        for zone in set.all_zones() {
            by_zone.entry(zone).or_default();
        }
        for record in &set.records {
            let name = mxguard_dns::net::normalize_name(&record.name.to_ascii());
            by_zone
                .entry(set.zone_of(&name))
                .or_default()
                .push(record.clone());
        }
        let mut catalog = Catalog::new();
        for (zone, records) in by_zone {
            let origin =
                Name::from_ascii(format!("{zone}.")).map_err(|e| format!("zone {zone}: {e}"))?;
            let mut handler = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
                origin.clone(),
                ZoneType::Primary,
                AxfrPolicy::Deny,
            );
            let ns_name = Name::from_ascii("ns.lab.").map_err(|e| e.to_string())?;
            let admin = Name::from_ascii("hostmaster.lab.").map_err(|e| e.to_string())?;
            let soa = SOA::new(ns_name.clone(), admin, 1, 3600, 600, 86400, 60);
            let serial = 1;
            handler.upsert_mut(
                Record::from_rdata(origin.clone(), 300, RData::SOA(soa)),
                serial,
            );
            handler.upsert_mut(
                Record::from_rdata(origin.clone(), 300, RData::NS(NS(ns_name))),
                serial,
            );
            for record in records {
                if !handler.upsert_mut(record.clone(), serial) {
                    return Err(format!(
                        "cannot add {} {} to zone {zone}",
                        record.name,
                        record.record_type()
                    ));
                }
            }
            let handlers: Vec<Arc<dyn ZoneHandler>> = vec![Arc::new(handler)];
            catalog.upsert(LowerName::new(&origin), handlers);
        }
        Ok(FaultyCatalog {
            catalog,
            faults: set.faults.clone(),
        })
    }

    fn fault_for(&self, request: &Request) -> Option<FaultKind> {
        let query = request.queries.queries().first()?;
        let name = mxguard_dns::net::normalize_name(&query.name().to_string());
        let rtype = query.query_type();
        self.faults
            .iter()
            .find(|f| f.name == name && f.rtype.is_none_or(|t| t == rtype))
            .map(|f| f.kind)
    }
}

#[async_trait::async_trait]
impl RequestHandler for FaultyCatalog {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let code = match self.fault_for(request) {
            None => {
                return self
                    .catalog
                    .handle_request::<R, T>(request, response_handle)
                    .await;
            }
            Some(FaultKind::Timeout) => {
                // Say nothing; the client's timer is the point of the exercise.
                let mut metadata = Metadata::new(
                    request.metadata.id,
                    MessageType::Response,
                    request.metadata.op_code,
                );
                metadata.response_code = ResponseCode::ServFail;
                return ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                });
            }
            Some(FaultKind::ServFail) => ResponseCode::ServFail,
            Some(FaultKind::Refused) => ResponseCode::Refused,
        };
        let response =
            MessageResponseBuilder::new(&request.queries, None).error_msg(&request.metadata, code);
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(cause = %e, "lab DNS could not send a fault response");
                let mut metadata = Metadata::new(
                    request.metadata.id,
                    MessageType::Response,
                    request.metadata.op_code,
                );
                metadata.response_code = code;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}
