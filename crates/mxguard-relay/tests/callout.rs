//! Recipient validation by callout against a lab primary: accept, reject,
//! primary down with and without a cached answer, the cache surviving a
//! restart, and the RFC 5321 §5.1 rule when the primary comes from MX.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::{FakeDns, Relay, Scratch, code};
use mxguard_dns::MxRecord;
use mxguard_lab::smtp::{HostScript, LabSmtp};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

async fn primary() -> LabSmtp {
    let script = HostScript::new("mail.example.com")
        .rcpt("alice@example.com", (250, "2.1.5 Ok"))
        .rcpt("busy@example.com", (450, "4.2.1 Mailbox busy, try later"))
        .rcpt_default((550, "5.1.1 <x>: Recipient address rejected: User unknown"));
    LabSmtp::start(LOCALHOST, 0, script).await.unwrap()
}

fn callout_domain(primary: &str) -> String {
    format!(
        "[[domains]]\nname = \"example.com\"\nprimary = \"{primary}\"\nrecipients = \"callout\"\n"
    )
}

async fn rcpt(relay: &Relay, address: &str) -> String {
    let mut c = relay.client().await;
    c.cmd("EHLO client.example").await;
    c.cmd("MAIL FROM:<a@sender.example>").await;
    c.cmd(&format!("RCPT TO:<{address}>")).await
}

#[tokio::test]
async fn mirrors_the_primarys_answers_and_never_sends_data() {
    let lab = primary().await;
    let mut relay = Relay::start("", &callout_domain(&lab.addr().to_string())).await;
    assert_eq!(code(&rcpt(&relay, "alice@example.com").await), "250");
    let no = rcpt(&relay, "nobody@example.com").await;
    assert!(
        no.starts_with(
            "550 5.1.1 <nobody@example.com>: Recipient address rejected by the primary: 550 5.1.1"
        ),
        "{no}"
    );
    // A 4xx from the primary says nothing: the sender is asked to retry.
    let busy = rcpt(&relay, "busy@example.com").await;
    assert!(busy.starts_with("451 4.3.0"), "{busy}");

    let commands = lab.commands();
    assert!(commands.iter().any(|c| c == "MAIL FROM:<>"), "{commands:?}");
    assert!(
        commands.iter().any(|c| c == "RCPT TO:<nobody@example.com>"),
        "{commands:?}"
    );
    assert!(!lab.saw("DATA"), "a callout never sends DATA: {commands:?}");
    assert!(lab.saw("QUIT"), "{commands:?}");

    // Answers are cached: asking again does not call the primary.
    let before = lab.connections();
    assert_eq!(code(&rcpt(&relay, "alice@example.com").await), "250");
    assert_eq!(code(&rcpt(&relay, "nobody@example.com").await), "550");
    assert_eq!(lab.connections(), before);
    let reasons = relay.rejection_reasons();
    assert_eq!(
        reasons,
        [
            "unknown-recipient",
            "callout-unavailable",
            "unknown-recipient"
        ]
    );
}

#[tokio::test]
async fn primary_down_cached_answers_stand_unknown_recipients_get_451() {
    let lab = primary().await;
    let addr = lab.addr();
    let relay = Relay::start("", &callout_domain(&addr.to_string())).await;
    assert_eq!(code(&rcpt(&relay, "alice@example.com").await), "250");
    assert_eq!(code(&rcpt(&relay, "nobody@example.com").await), "550");
    drop(lab);

    // Down: what was learnt stands; a recipient never seen is deferred,
    // never accepted.
    assert_eq!(code(&rcpt(&relay, "alice@example.com").await), "250");
    assert_eq!(code(&rcpt(&relay, "nobody@example.com").await), "550");
    let never = rcpt(&relay, "carol@example.com").await;
    assert!(
        never.starts_with("451 4.3.0 <carol@example.com>"),
        "{never}"
    );

    // The cache outlives a restart, still with the primary down.
    let dir = relay.stop().await;
    assert!(dir.path().join("spool/callout-cache.json").is_file());
    let relay = Relay::start_with(
        dir,
        "",
        &callout_domain(&addr.to_string()),
        false,
        FakeDns::default(),
    )
    .await;
    assert_eq!(code(&rcpt(&relay, "alice@example.com").await), "250");
    assert_eq!(code(&rcpt(&relay, "nobody@example.com").await), "550");
    assert_eq!(code(&rcpt(&relay, "carol@example.com").await), "451");
}

#[tokio::test]
async fn stale_answers_are_asked_again_and_used_when_the_primary_is_down() {
    let lab = primary().await;
    let addr = lab.addr();
    let short = "[callout]\npositive_refresh = \"1s\"\npositive_expiry = \"1h\"\nnegative_refresh = \"1s\"\nnegative_expiry = \"1h\"\n";
    let body = format!("{short}{}", callout_domain(&addr.to_string()));
    let relay = Relay::start("", &body).await;
    assert_eq!(code(&rcpt(&relay, "alice@example.com").await), "250");
    let first = lab.connections();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    // Past refresh: asked again.
    assert_eq!(code(&rcpt(&relay, "alice@example.com").await), "250");
    assert!(lab.connections() > first, "a stale answer is refreshed");
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    drop(lab);
    // Stale and the primary down: the old answer stands.
    assert_eq!(code(&rcpt(&relay, "alice@example.com").await), "250");
}

#[tokio::test]
async fn expired_answers_are_dropped() {
    let lab = primary().await;
    let addr = lab.addr();
    let short = "[callout]\npositive_refresh = \"1s\"\npositive_expiry = \"1s\"\n";
    let relay = Relay::start("", &format!("{short}{}", callout_domain(&addr.to_string()))).await;
    assert_eq!(code(&rcpt(&relay, "alice@example.com").await), "250");
    drop(lab);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(code(&rcpt(&relay, "alice@example.com").await), "451");
}

#[tokio::test]
async fn mx_primary_is_only_a_more_preferred_host_never_itself() {
    let lab = primary().await;
    let port = lab.addr().port();
    let body = "[[domains]]\nname = \"example.com\"\nrecipients = \"callout\"\n";
    let mx = |records: Vec<MxRecord>| FakeDns {
        mx: vec![("example.com".into(), records)],
        hosts: vec![
            ("mail.example.com".into(), vec![LOCALHOST]),
            ("backup.example.net".into(), vec![LOCALHOST]),
            ("peer.example.net".into(), vec![LOCALHOST]),
        ],
    };
    // The relay is MX 20: the primary, MX 10, is asked.
    let dns = mx(vec![
        MxRecord::new(10, "mail.example.com"),
        MxRecord::new(20, "backup.example.net"),
    ]);
    let relay = Relay::start_full(Scratch::new("mx"), "", body, false, dns, port).await;
    assert_eq!(code(&rcpt(&relay, "alice@example.com").await), "250");
    assert_eq!(code(&rcpt(&relay, "nobody@example.com").await), "550");
    assert_eq!(lab.connections(), 2);

    // The relay is the most preferred host, or shares its preference with
    // the only other one: nobody may be asked, and it must not ask itself.
    for records in [
        vec![
            MxRecord::new(10, "backup.example.net"),
            MxRecord::new(20, "mail.example.com"),
        ],
        vec![
            MxRecord::new(10, "backup.example.net"),
            MxRecord::new(10, "peer.example.net"),
        ],
    ] {
        let relay =
            Relay::start_full(Scratch::new("mx-self"), "", body, false, mx(records), port).await;
        let r = rcpt(&relay, "alice@example.com").await;
        assert!(r.starts_with("451 4.3.0"), "{r}");
    }
    assert_eq!(
        lab.connections(),
        2,
        "no host of equal or lower preference was asked"
    );
}

/// A relay whose MX list does not name it but points (under another name)
/// at a host that greets with the relay's own name: that is the relay
/// itself, reached another way, and its answer is not believed.
#[tokio::test]
async fn a_callout_that_reaches_the_relay_itself_is_not_believed() {
    // "Itself": a second relay with the same hostname, which would take alice.
    let dir = Scratch::new("twin");
    std::fs::write(dir.path().join("users"), "alice@example.com\n").unwrap();
    let list =
        "[[domains]]\nname = \"example.com\"\nrecipients = \"list\"\nrecipient_list = \"users\"\n";
    let twin = Relay::start_with(dir, "", list, false, FakeDns::default()).await;
    let dns = FakeDns {
        mx: vec![(
            "example.com".into(),
            vec![MxRecord::new(10, "alias.example.org")],
        )],
        hosts: vec![("alias.example.org".into(), vec![LOCALHOST])],
    };
    let body = "[[domains]]\nname = \"example.com\"\nrecipients = \"callout\"\n";
    let relay =
        Relay::start_full(Scratch::new("self"), "", body, false, dns, twin.addr.port()).await;
    let r = rcpt(&relay, "alice@example.com").await;
    assert!(r.starts_with("451 4.3.0"), "{r}");
}

/// A primary that takes messages of at most 1000 octets.
async fn small_primary() -> LabSmtp {
    let script = HostScript::new("mail.example.com")
        .extensions(["PIPELINING", "SIZE 1000", "8BITMIME", "ENHANCEDSTATUSCODES"])
        .rcpt("alice@example.com", (250, "2.1.5 Ok"))
        .rcpt_default((550, "5.1.1 User unknown"));
    LabSmtp::start(LOCALHOST, 0, script).await.unwrap()
}

#[tokio::test]
async fn holds_itself_to_the_primarys_size_limit() {
    let lab = small_primary().await;
    let mut relay = Relay::start("", &callout_domain(&lab.addr().to_string())).await;
    let mut c = relay.client().await;
    // Before it has heard from the primary, its own limit.
    let ehlo = c.cmd("EHLO client.example").await;
    assert!(ehlo.contains("SIZE 52428800"), "{ehlo}");
    // A declared size over the primary's limit: refused at RCPT, once the
    // callout has seen the primary's EHLO.
    assert_eq!(
        code(&c.cmd("MAIL FROM:<a@sender.example> SIZE=5000").await),
        "250"
    );
    let r = c.cmd("RCPT TO:<alice@example.com>").await;
    assert_eq!(
        r,
        "552 5.3.4 Message size exceeds the limit of the primary for example.com (1000 octets)"
    );
    assert_eq!(code(&c.cmd("RSET").await), "250");
    // Undeclared and too big: refused after DATA, nothing queued.
    assert_eq!(code(&c.cmd("MAIL FROM:<a@sender.example>").await), "250");
    assert_eq!(code(&c.cmd("RCPT TO:<alice@example.com>").await), "250");
    assert_eq!(code(&c.cmd("DATA").await), "354");
    let big = format!("Subject: big\r\n\r\n{}\r\n", "x".repeat(1500));
    c.send(big.as_bytes()).await;
    let done = c.cmd(".").await;
    assert_eq!(
        done,
        "552 5.3.4 Message refused: larger than the limit of 1000 octets"
    );
    assert_eq!(relay.queued(), 0);
    // Within the limit: taken.
    let small = b"Subject: small\r\n\r\nhello\r\n";
    let replies = c
        .send_mail("a@sender.example", &["alice@example.com"], small)
        .await;
    assert!(
        replies.last().unwrap().starts_with("250 2.0.0 Ok: queued"),
        "{replies:?}"
    );
    // A new session is told the primary's limit up front.
    let mut c2 = relay.client().await;
    let ehlo = c2.cmd("EHLO client.example").await;
    assert!(ehlo.contains("SIZE 1000"), "{ehlo}");
    let reasons = relay.rejection_reasons();
    assert_eq!(reasons, ["too-big-for-primary", "too-big"]);
}

#[tokio::test]
async fn sessions_asking_about_the_same_address_share_one_callout() {
    // A slow primary: each reply takes 150 ms.
    let script = HostScript::new("mail.example.com")
        .rcpt("alice@example.com", (250, "2.1.5 Ok"))
        .rcpt_default((550, "5.1.1 User unknown"))
        .reply_delay(std::time::Duration::from_millis(150));
    let lab = LabSmtp::start(LOCALHOST, 0, script).await.unwrap();
    let relay = Relay::start("", &callout_domain(&lab.addr().to_string())).await;
    let (a, b, c) = tokio::join!(
        rcpt(&relay, "alice@example.com"),
        rcpt(&relay, "alice@example.com"),
        rcpt(&relay, "alice@example.com")
    );
    for r in [&a, &b, &c] {
        assert_eq!(code(r), "250", "{r}");
    }
    let asked = lab
        .commands()
        .iter()
        .filter(|c| c.as_str() == "RCPT TO:<alice@example.com>")
        .count();
    assert_eq!(
        asked,
        1,
        "three sessions, one callout: {:?}",
        lab.commands()
    );
}
