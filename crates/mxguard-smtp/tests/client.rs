//! The client against the lab's scripted SMTP hosts on loopback.

use std::time::Duration;

use mxguard_lab::smtp::{Behaviour, HostScript, LabSmtp};
use mxguard_smtp::client::{ClientConfig, Connection, SmtpError};

fn cfg() -> ClientConfig {
    ClientConfig {
        helo: "probe.mxguard.test".into(),
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_millis(400),
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
