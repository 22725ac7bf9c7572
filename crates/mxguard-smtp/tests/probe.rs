//! The probe against servers that do not speak SMTP properly: what the lab's
//! scripted hosts cannot say, a raw socket can.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mxguard_smtp::client::ClientConfig;
use mxguard_smtp::probe::{self, ProbeTarget, Reason, Status};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

fn cfg() -> ClientConfig {
    ClientConfig {
        helo: "probe.mxguard.test".into(),
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(2),
        roots: Arc::new(rustls::RootCertStore::empty()),
        deadline: None,
    }
}

fn target(addr: SocketAddr) -> ProbeTarget {
    ProbeTarget {
        addr,
        mx_name: "mx.raw.lab".into(),
        domain: "raw.lab".into(),
        mail_from: "probe@mxguard.test".into(),
        unknown_local_part: probe::random_local_part(),
    }
}

/// A server that greets with `greeting` and then holds the line open.
async fn raw_server(greeting: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.72.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = sock.write_all(greeting).await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_server_that_is_not_smtp_is_a_protocol_error_and_nothing_is_judged() {
    let addr = raw_server(b"SSH-2.0-OpenSSH_9.2\r\n").await;
    let p = probe::probe(&target(addr), &cfg()).await;
    assert!(!p.reachable, "no SMTP banner arrived");
    assert_eq!(p.error.as_ref().unwrap().reason, Reason::ProtocolError);
    for c in [&p.null_sender, &p.postmaster, &p.unknown_recipient] {
        assert_eq!(c.status, Status::Untestable);
        assert_eq!(c.reason, Some(Reason::ProtocolError));
    }
    assert!(p.relay.len() >= 12);
    assert!(p.relay.iter().all(|r| r.check.status == Status::Untestable));
    assert_eq!(p.relay_status(), Status::Untestable);
}

#[tokio::test]
async fn the_deadline_is_its_own_reason() {
    // Greets, then never answers EHLO.
    let addr = raw_server(b"220 slow.raw.lab ESMTP\r\n").await;
    let mut cfg = cfg();
    cfg.command_timeout = Duration::from_secs(30);
    cfg.deadline = Some(tokio::time::Instant::now() + Duration::from_millis(300));
    let p = probe::probe(&target(addr), &cfg).await;
    assert!(p.reachable);
    assert!(
        !p.unreachable(),
        "a deadline is the check's limit, not the host's fault"
    );
    assert_eq!(p.error.as_ref().unwrap().reason, Reason::Deadline);
    assert_eq!(p.unknown_recipient.reason, Some(Reason::Deadline));
    assert!(
        p.relay
            .iter()
            .all(|r| r.check.reason == Some(Reason::Deadline))
    );
}
