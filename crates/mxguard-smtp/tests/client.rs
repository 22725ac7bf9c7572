//! The client against the lab's scripted SMTP hosts on loopback.

use std::time::Duration;

use mxguard_lab::smtp::{Behaviour, HostScript, LabSmtp};
use mxguard_smtp::client::{ClientConfig, Connection, SmtpError};

fn cfg() -> ClientConfig {
    ClientConfig {
        helo: "probe.mxguard.test".into(),
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_millis(400),
        roots: std::sync::Arc::new(rustls::RootCertStore::empty()),
        deadline: None,
    }
}

async fn host(script: HostScript) -> LabSmtp {
    LabSmtp::start("127.0.70.1".parse().unwrap(), 0, script)
        .await
        .expect("lab smtp")
}

#[tokio::test]
async fn banner_ehlo_and_rcpt_answers() {
    let lab = host(
        HostScript::new("mx.lab")
            .rcpt("postmaster@x.lab", (250, "2.1.5 ok"))
            .rcpt_default((550, "5.1.1 no such user")),
    )
    .await;
    let (mut c, banner) = Connection::connect(lab.addr(), cfg()).await.unwrap();
    assert_eq!(banner.code, 220);
    let (reply, caps) = c.hello().await.unwrap();
    assert_eq!(reply.code, 250);
    assert!(caps.esmtp && caps.pipelining);
    assert_eq!(caps.size, Some(10_240_000));
    assert!(c.command("MAIL FROM:<>").await.unwrap().is_positive());
    assert!(
        c.command("RCPT TO:<postmaster@x.lab>")
            .await
            .unwrap()
            .is_positive()
    );
    let no = c.command("RCPT TO:<nobody-4711@x.lab>").await.unwrap();
    assert_eq!(no.enhanced(), Some((5, 1, 1)));
    c.quit().await;
    let text = c.transcript().render();
    assert!(
        text.contains("C: RCPT TO:<nobody-4711@x.lab>\nS: 550 5.1.1 no such user\n"),
        "{text}"
    );
    assert!(!lab.saw("DATA"));
}

#[tokio::test]
async fn helo_fallback_when_ehlo_is_refused() {
    let lab = host(HostScript::new("old.lab").refuse_ehlo()).await;
    let (mut c, _) = Connection::connect(lab.addr(), cfg()).await.unwrap();
    let (reply, caps) = c.hello().await.unwrap();
    assert_eq!(reply.code, 250);
    assert!(!caps.esmtp);
    assert!(
        c.transcript()
            .render()
            .contains("C: HELO probe.mxguard.test")
    );
}

#[tokio::test]
async fn silent_refusing_and_busy_hosts() {
    let silent = host(HostScript::new("silent.lab").behaviour(Behaviour::Silent)).await;
    match Connection::connect(silent.addr(), cfg()).await {
        Err(SmtpError::Timeout { waiting_for, .. }) => assert_eq!(waiting_for, "the banner"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    let refuse = LabSmtp::start(
        "127.0.70.2".parse().unwrap(),
        0,
        HostScript::new("r.lab").behaviour(Behaviour::Refuse),
    )
    .await
    .unwrap();
    assert!(matches!(
        Connection::connect(refuse.addr(), cfg()).await,
        Err(SmtpError::Refused)
    ));
    let busy = host(HostScript::new("busy.lab").behaviour(Behaviour::Busy)).await;
    let (_, banner) = Connection::connect(busy.addr(), cfg()).await.unwrap();
    assert_eq!(banner.code, 421);
}

mod starttls {
    use std::sync::Arc;

    use super::*;
    use mxguard_lab::smtp::StartTls;
    use mxguard_lab::tls::{LabCa, LabCert, Validity};

    async fn tls_host(ip: &str, mode: StartTls) -> LabSmtp {
        LabSmtp::start(
            ip.parse().unwrap(),
            0,
            HostScript::new("mx.tls.lab").starttls(mode),
        )
        .await
        .unwrap()
    }

    fn trusting(ca: &LabCa) -> ClientConfig {
        ClientConfig {
            roots: Arc::new(ca.root_store().unwrap()),
            ..cfg()
        }
    }

    /// Offered, handshake, trust: three facts, each observed on its own.
    #[tokio::test]
    async fn three_facts_kept_apart() {
        let ca = LabCa::new().unwrap();
        let cases = [
            (
                "127.0.71.1",
                StartTls::Handshake(ca.issue(&["mx.tls.lab"]).unwrap()),
                true,
                None,
            ),
            (
                "127.0.71.2",
                StartTls::Handshake(ca.issue_with(&["mx.tls.lab"], Validity::Expired).unwrap()),
                true,
                Some("certificate expired"),
            ),
            (
                "127.0.71.3",
                StartTls::Handshake(ca.issue(&["other.example"]).unwrap()),
                true,
                Some("not valid for the MX name"),
            ),
            (
                "127.0.71.4",
                StartTls::Handshake(
                    LabCert::self_signed(&["mx.tls.lab"], Validity::Current).unwrap(),
                ),
                true,
                Some("unknown issuer"),
            ),
        ];
        for (ip, mode, handshake_ok, problem) in cases {
            let lab = tls_host(ip, mode).await;
            let (mut c, _) = Connection::connect(lab.addr(), trusting(&ca))
                .await
                .unwrap();
            let (_, caps) = c.hello().await.unwrap();
            assert!(caps.starttls, "{ip}: STARTTLS offered");
            let out = c.starttls("mx.tls.lab").await.unwrap();
            assert_eq!(out.reply.code, 220);
            let session = out.handshake.clone().unwrap();
            assert_eq!(session.is_ok(), handshake_ok, "{ip}: {session:?}");
            let cert = out.certificate.clone().unwrap();
            match problem {
                None => assert!(cert.trusted, "{ip}: {cert:?}"),
                Some(p) => {
                    assert!(!cert.trusted, "{ip}");
                    assert!(
                        cert.problem.as_deref().unwrap_or("").contains(p),
                        "{ip}: {cert:?}"
                    );
                }
            }
            // The conversation goes on inside TLS, with a fresh EHLO.
            let (reply, caps) = c.hello().await.unwrap();
            assert!(
                reply.is_positive() && !caps.starttls,
                "{ip}: no STARTTLS inside TLS"
            );
            assert!(c.command("MAIL FROM:<>").await.unwrap().is_positive());
            c.quit().await;
        }
    }

    #[tokio::test]
    async fn broken_handshake_and_refusal() {
        let ca = LabCa::new().unwrap();
        let lab = tls_host("127.0.71.5", StartTls::GarbageAfterReady).await;
        let (mut c, _) = Connection::connect(lab.addr(), trusting(&ca))
            .await
            .unwrap();
        c.hello().await.unwrap();
        let out = c.starttls("mx.tls.lab").await.unwrap();
        assert!(matches!(out.handshake, Some(Err(_))), "{out:?}");
        assert!(out.certificate.is_none(), "no certificate was ever seen");
        assert!(matches!(
            c.command("NOOP").await,
            Err(SmtpError::Closed { .. })
        ));

        let lab = tls_host(
            "127.0.71.6",
            StartTls::Refuse((454, "4.7.0 TLS not available").into()),
        )
        .await;
        let (mut c, _) = Connection::connect(lab.addr(), trusting(&ca))
            .await
            .unwrap();
        c.hello().await.unwrap();
        let out = c.starttls("mx.tls.lab").await.unwrap();
        assert_eq!(out.reply.code, 454);
        assert!(out.handshake.is_none());
        assert!(
            c.command("NOOP").await.unwrap().is_positive(),
            "plain text goes on"
        );
    }
}
