//! The relay's SMTP server over real loopback TCP: acceptance, recipient
//! lists, relay refusal, the strict DATA phase (SMTP smuggling), limits,
//! STARTTLS, the spool and the mail events.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::{Client, Relay, Scratch, code};
use mxguard_queue::Fault;
use mxguard_relay::{MailEvent, Stage};

const LIST_DOMAIN: &str =
    "[[domains]]\nname = \"example.com\"\nrecipients = \"list\"\nrecipient_list = \"users\"\n";

/// A relay for example.com with a recipient list.
async fn list_relay(smtp_extra: &str, users: &str) -> Relay {
    list_relay_with(smtp_extra, users, false).await
}

async fn list_relay_with(smtp_extra: &str, users: &str, crash: bool) -> Relay {
    let dir = Scratch::new("session");
    std::fs::write(dir.path().join("users"), users).unwrap();
    Relay::start_with(dir, smtp_extra, LIST_DOMAIN, crash, Default::default()).await
}

const MESSAGE: &[u8] =
    b"From: a@sender.example\r\nTo: alice@example.com\r\nSubject: hi\r\n\r\nbody\r\n";

#[tokio::test]
async fn accepts_listed_recipients_and_stores_the_message_byte_for_byte() {
    let mut relay = list_relay("", "alice@example.com\n").await;
    let mut c = relay.client().await;
    assert!(
        c.banner.starts_with("220 backup.example.net"),
        "{}",
        c.banner
    );
    let ehlo = c.cmd("EHLO client.example").await;
    for ext in [
        "PIPELINING",
        "SIZE 52428800",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
    ] {
        assert!(
            ehlo.lines().any(|l| &l[4..] == ext),
            "{ext} missing:\n{ehlo}"
        );
    }
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    assert!(
        !ehlo.contains("STARTTLS"),
        "no certificate, no STARTTLS:\n{ehlo}"
    );
    // 8-bit text, a dot-stuffed line, a line that is only dots, CRLF kept.
    let message =
        b"From: a@sender.example\r\nSubject: caf\xc3\xa9\r\n\r\n.leading dot\r\n..\r\n\xff\xfe bytes\r\n";
    assert_eq!(
        code(&c.cmd("MAIL FROM:<a@sender.example> BODY=8BITMIME").await),
        "250"
    );
    assert_eq!(code(&c.cmd("RCPT TO:<Alice@Example.COM>").await), "250");
    assert_eq!(code(&c.cmd("DATA").await), "354");
    c.send(&common::dot_stuff(message)).await;
    c.send(b".\r\n").await;
    let done = c.reply().await;
    assert!(done.starts_with("250 2.0.0 Ok: queued as "), "{done}");
    let id = done.rsplit(' ').next().unwrap().to_owned();
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye");

    let entries = relay.spool.list().unwrap();
    assert_eq!(entries.len(), 1);
    let (env, bytes) = relay.spool.read(&entries[0].envelope.id).unwrap();
    assert_eq!(env.id.to_string(), id);
    assert_eq!(env.mail_from, "a@sender.example");
    assert_eq!(env.recipients, vec!["Alice@example.com".to_string()]);
    assert_eq!(env.body, mxguard_queue::Body::EightBitMime);
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("Received: from client.example ([127.0.0.1])\r\n\tby backup.example.net (mxguard) with ESMTP id "), "{text}");
    assert!(
        text.contains(&format!("id {id}\r\n\tfor <Alice@example.com>;")),
        "{text}"
    );
    // After our header, the client's message exactly.
    let header_end = text.find("\r\n\t").unwrap();
    let ours = bytes
        .windows(2)
        .enumerate()
        .skip(header_end)
        .find(|(i, w)| *w == b"\r\n" && bytes.get(i + 2) != Some(&b'\t'))
        .unwrap()
        .0
        + 2;
    assert_eq!(&bytes[ours..], message);

    // The session's events: connect, accepted with the queue id, disconnect.
    // The queue runner may already have tried the message (this relay has no
    // next hop), so its delivery events are left out.
    let events: Vec<_> = relay
        .drain_events()
        .into_iter()
        .filter(|e| !matches!(e, MailEvent::Delivery { .. }))
        .collect();
    assert!(
        matches!(events[0], MailEvent::Connect { refused: None, .. }),
        "{events:?}"
    );
    assert!(events.iter().any(|e| matches!(e, MailEvent::Accepted { queue_id, rcpts, .. } if *queue_id == id && rcpts == &["Alice@example.com"])), "{events:?}");
    assert!(
        matches!(
            events.last(),
            Some(MailEvent::Disconnect {
                messages: 1,
                reason: None,
                ..
            })
        ),
        "{events:?}"
    );
}

#[tokio::test]
async fn refuses_unknown_users_foreign_domains_and_routing() {
    let mut relay = list_relay("", "alice@example.com\n").await;
    let mut c = relay.client().await;
    c.cmd("EHLO client.example").await;
    c.cmd("MAIL FROM:<a@sender.example>").await;
    let cases = [
        ("nobody@example.com", "550 5.1.1", "unknown-recipient"),
        ("alice@other.example", "550 5.7.1", "relay-denied"),
        ("alice@sub.example.com", "550 5.7.1", "relay-denied"),
        ("alice%other.example@example.com", "550 5.7.1", "routing"),
        ("other.example!alice@example.com", "550 5.7.1", "routing"),
        (
            "@relay.example:alice@other.example",
            "550 5.7.1",
            "relay-denied",
        ),
    ];
    for (rcpt, want, _) in cases {
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>")).await;
        assert!(r.starts_with(want), "{rcpt}: {r}");
    }
    // smtp-proto already refuses an address literal as a recipient.
    assert!(
        c.cmd("RCPT TO:<alice@[127.0.0.1]>")
            .await
            .starts_with("501 5.1.3")
    );
    assert_eq!(c.cmd("DATA").await, "554 5.5.1 Error: no valid recipients");
    let events = relay.drain_events();
    let reasons: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            MailEvent::Rejected {
                stage: Stage::Rcpt,
                reason,
                ..
            } => Some(*reason),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, cases.iter().map(|c| c.2).collect::<Vec<_>>());
    assert_eq!(relay.queued(), 0);
}

#[tokio::test]
async fn no_domains_configured_means_no_mail() {
    let relay = Relay::start("", "").await;
    let mut c = relay.client().await;
    let r = c
        .send_mail("a@sender.example", &["postmaster@example.com"], MESSAGE)
        .await;
    assert!(r[2].starts_with("550 5.7.1"), "{r:?}");
    assert!(r[3].starts_with("554"), "{r:?}");
}

#[tokio::test]
async fn recipient_list_is_reread_when_it_changes() {
    let relay = list_relay("", "alice@example.com\n").await;
    let users = relay.dir.path().join("users");
    let mut c = relay.client().await;
    c.cmd("EHLO client.example").await;
    c.cmd("MAIL FROM:<a@sender.example>").await;
    assert_eq!(code(&c.cmd("RCPT TO:<bob@example.com>").await), "550");
    std::fs::write(&users, "alice@example.com\nbob@example.com  OK\n").unwrap();
    assert_eq!(code(&c.cmd("RCPT TO:<bob@example.com>").await), "250");
    // A broken file keeps the last good list in force.
    std::fs::write(&users, "alice@example.com\nthis is not an address\n").unwrap();
    assert_eq!(code(&c.cmd("RCPT TO:<bob@example.com>").await), "250");
    // Removed again: refused.
    std::fs::write(&users, "alice@example.com\n").unwrap();
    assert_eq!(code(&c.cmd("RCPT TO:<bob@example.com>").await), "550");
    // A wildcard takes every address of the domain.
    std::fs::write(&users, "@example.com\n").unwrap();
    assert_eq!(code(&c.cmd("RCPT TO:<anyone@example.com>").await), "250");
}

/// Each SEC Consult smuggling sequence, as the end of a first message with
/// a second transaction behind it: the relay must see one message (refused,
/// for its bare CR/LF/NUL) and never answer the smuggled commands.
#[tokio::test]
async fn smuggling_sequences_never_make_a_second_message() {
    let relay = list_relay("", "alice@example.com\nvictim@example.com\n").await;
    for seq in [
        &b"\n.\n"[..],
        b"\n.\r",
        b"\r.\n",
        b"\r.\r",
        b"\n.\r\n",
        b"\r.\r\n",
        b"\r\n\x00.\r\n",
    ] {
        let mut c = relay.client().await;
        c.cmd("EHLO client.example").await;
        c.cmd("MAIL FROM:<a@sender.example>").await;
        c.cmd("RCPT TO:<alice@example.com>").await;
        assert_eq!(code(&c.cmd("DATA").await), "354");
        let mut payload = b"From: a@sender.example\r\n\r\nfirst".to_vec();
        payload.extend_from_slice(seq);
        payload.extend_from_slice(
            b"MAIL FROM:<admin@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n\
              From: admin@example.com\r\n\r\nsmuggled\r\n.\r\nQUIT\r\n",
        );
        c.send(&payload).await;
        let end = c.reply().await;
        assert!(end.starts_with("554 5.6.0"), "{seq:?}: {end}");
        // The next reply is QUIT's: nothing answered the smuggled commands.
        assert_eq!(c.reply().await, "221 2.0.0 Bye", "{seq:?}");
        assert_eq!(relay.queued(), 0, "{seq:?} queued something");
    }
    // The same shape with a proper CRLF.CRLF is two real messages.
    let mut c = relay.client().await;
    c.cmd("EHLO client.example").await;
    c.cmd("MAIL FROM:<a@sender.example>").await;
    c.cmd("RCPT TO:<alice@example.com>").await;
    c.cmd("DATA").await;
    c.send(
        b"first\r\n.\r\nMAIL FROM:<a@sender.example>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n",
    )
    .await;
    assert_eq!(code(&c.reply().await), "250");
    assert_eq!(code(&c.reply().await), "250");
    assert_eq!(code(&c.reply().await), "250");
    assert_eq!(code(&c.reply().await), "354");
    c.send(b"second\r\n.\r\n").await;
    assert_eq!(code(&c.reply().await), "250");
    assert_eq!(relay.queued(), 2);
}

#[tokio::test]
async fn bare_newlines_in_commands_and_data_are_refused() {
    let relay = list_relay("", "alice@example.com\n").await;
    let mut c = relay.client().await;
    c.send(b"EHLO client.example\n").await;
    assert!(
        c.reply()
            .await
            .starts_with("500 5.5.2 Command lines must end with CRLF")
    );
    c.send(b"NOOP\rNOOP\r\n").await;
    assert!(c.reply().await.starts_with("500 5.5.2 Bare CR"));
    c.cmd("EHLO client.example").await;
    for (text, want) in [
        (
            &b"a\nb\r\n.\r\n"[..],
            "554 5.6.0 Message refused: a line ends with a bare LF",
        ),
        (b"a\rb\r\n.\r\n", "554 5.6.0 Message refused: bare CR"),
        (b"a\0b\r\n.\r\n", "554 5.6.0 Message refused: NUL"),
    ] {
        c.cmd("MAIL FROM:<a@sender.example>").await;
        c.cmd("RCPT TO:<alice@example.com>").await;
        c.cmd("DATA").await;
        c.send(text).await;
        let r = c.reply().await;
        assert!(r.starts_with(want), "{r}");
    }
    assert_eq!(relay.queued(), 0);
}

#[tokio::test]
async fn limits_line_length_recipients_size_and_errors() {
    let relay = list_relay(
        "max_message_size = 1000\nmax_errors = 5\n",
        "@example.com\n",
    )
    .await;
    let mut c = relay.client().await;
    let ehlo = c.cmd("EHLO client.example").await;
    assert!(ehlo.contains("250-SIZE 1000"), "{ehlo}");
    // A command line over 2048 octets.
    let long = format!("NOOP {}", "x".repeat(2100));
    assert_eq!(
        c.cmd(&long).await,
        "500 5.5.2 Line too long (the limit is 2048 octets)"
    );
    assert_eq!(code(&c.cmd("NOOP").await), "250", "the session goes on");
    // SIZE announced over the limit.
    let r = c.cmd("MAIL FROM:<a@sender.example> SIZE=5000").await;
    assert!(r.starts_with("552 5.3.4"), "{r}");
    // Recipients: 100 taken, the 101st deferred (RFC 5321 §4.5.3.1.10).
    c.cmd("MAIL FROM:<a@sender.example>").await;
    for i in 0..100 {
        assert_eq!(
            code(&c.cmd(&format!("RCPT TO:<u{i}@example.com>")).await),
            "250"
        );
    }
    let r = c.cmd("RCPT TO:<u100@example.com>").await;
    assert!(r.starts_with("452 4.5.3"), "{r}");
    // More text than the limit: refused after the end, nothing stored.
    c.cmd("DATA").await;
    c.send(&b"0123456789abcdef\r\n".repeat(100)).await;
    c.send(b".\r\n").await;
    let r = c.reply().await;
    assert!(r.starts_with("552 5.3.4"), "{r}");
    assert_eq!(relay.queued(), 0);
    // Errors: the fifth closes the session.
    for _ in 0..4 {
        assert_eq!(code(&c.cmd("BOGUS").await), "500");
    }
    let r = c.cmd("BOGUS").await;
    assert!(
        r.contains("421 4.7.0 backup.example.net Too many errors"),
        "{r}"
    );
    assert_eq!(c.rest().await, "");
}

#[tokio::test]
async fn connection_limits_total_and_per_client() {
    let relay = list_relay(
        "max_connections = 3\nmax_connections_per_client = 2\n",
        "alice@example.com\n",
    )
    .await;
    let one = Client::connect(relay.addr).await;
    let two = Client::connect(relay.addr).await;
    assert!(one.banner.starts_with("220") && two.banner.starts_with("220"));
    let third = Client::connect(relay.addr).await;
    assert!(
        third.banner.starts_with("421 4.7.0") && third.banner.contains("from your address"),
        "{}",
        third.banner
    );
    // Another client address still gets in, up to the total.
    let other =
        Client::connect_from(relay.addr, Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))).await;
    assert!(other.banner.starts_with("220"), "{}", other.banner);
    let over =
        Client::connect_from(relay.addr, Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)))).await;
    assert!(
        over.banner.starts_with("421 4.7.0") && over.banner.contains("too many connections"),
        "{}",
        over.banner
    );
    // A place frees up when a session ends.
    drop(one);
    let mut again = None;
    for _ in 0..50 {
        let c = Client::connect(relay.addr).await;
        if c.banner.starts_with("220") {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "the slot was never released");
}

#[tokio::test]
async fn commands_outside_the_offer() {
    let relay = list_relay("", "alice@example.com\n").await;
    let mut c = relay.client().await;
    assert!(
        c.cmd("MAIL FROM:<a@sender.example>")
            .await
            .starts_with("503 5.5.1")
    );
    c.cmd("EHLO client.example").await;
    assert!(
        c.cmd("RCPT TO:<alice@example.com>")
            .await
            .starts_with("503 5.5.1")
    );
    assert!(c.cmd("DATA").await.starts_with("503 5.5.1"));
    assert!(c.cmd("VRFY alice").await.starts_with("252 2.5.0"));
    assert!(c.cmd("EXPN staff").await.starts_with("502 5.5.1"));
    assert!(
        c.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==")
            .await
            .starts_with("502 5.5.1")
    );
    assert!(c.cmd("STARTTLS").await.starts_with("502 5.5.1"));
    assert!(c.cmd("BDAT 10 LAST").await.starts_with("502 5.5.1"));
    assert!(
        c.cmd("MAIL FROM:<a@sender.example> RET=FULL")
            .await
            .starts_with("555")
    );
    assert!(
        c.cmd("MAIL FROM:<jörg@sender.example>")
            .await
            .starts_with("553 5.6.7")
    );
    assert_eq!(
        code(&c.cmd("MAIL FROM:<jörg@sender.example> SMTPUTF8").await),
        "250"
    );
    assert!(
        c.cmd("MAIL FROM:<a@sender.example>")
            .await
            .starts_with("503 5.5.1 Error: nested")
    );
    assert_eq!(code(&c.cmd("RSET").await), "250");
    assert_eq!(
        code(&c.cmd("MAIL FROM:<>").await),
        "250",
        "the null sender is welcome"
    );
    assert_eq!(code(&c.cmd("NOOP").await), "250");
    assert!(c.cmd("HELP").await.starts_with("214"));
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order() {
    let relay = list_relay("", "alice@example.com\n").await;
    let mut c = relay.client().await;
    c.cmd("EHLO client.example").await;
    c.send(b"MAIL FROM:<a@sender.example>\r\nRCPT TO:<alice@example.com>\r\nRCPT TO:<x@other.example>\r\nDATA\r\n").await;
    assert_eq!(code(&c.reply().await), "250");
    assert_eq!(code(&c.reply().await), "250");
    assert_eq!(code(&c.reply().await), "550");
    assert_eq!(code(&c.reply().await), "354");
    c.send(b"Subject: p\r\n\r\nx\r\n.\r\nQUIT\r\n").await;
    assert_eq!(code(&c.reply().await), "250");
    assert_eq!(c.reply().await, "221 2.0.0 Bye");
    assert_eq!(relay.queued(), 1);
}

#[tokio::test]
async fn mail_loops_are_refused() {
    let relay = list_relay("", "alice@example.com\n").await;
    let mut c = relay.client().await;
    let mut msg = Vec::new();
    for i in 0..31 {
        msg.extend_from_slice(
            format!("Received: from hop{i}.example by hop{}.example\r\n", i + 1).as_bytes(),
        );
    }
    msg.extend_from_slice(b"Subject: loop\r\n\r\nround and round\r\n");
    let r = c
        .send_mail("a@sender.example", &["alice@example.com"], &msg)
        .await;
    assert!(r.last().unwrap().starts_with("554 5.4.6"), "{r:?}");
    assert_eq!(relay.queued(), 0);
}

#[tokio::test]
async fn a_full_disk_answers_452_and_keeps_nothing_half_queued() {
    let relay = list_relay_with("", "alice@example.com\n", true).await;
    let crash = relay.crash.clone().unwrap();
    let mut c = relay.client().await;
    crash.set_fault(Fault::FullAfter(100));
    let big = [
        b"Subject: big\r\n\r\n".to_vec(),
        b"y".repeat(500),
        b"\r\n".to_vec(),
    ]
    .concat();
    let r = c
        .send_mail("a@sender.example", &["alice@example.com"], &big)
        .await;
    assert!(r.last().unwrap().starts_with("452 4.3.1"), "{r:?}");
    assert_eq!(relay.queued(), 0);
    let spool = relay.dir.path().join("spool");
    for sub in ["tmp", "queue"] {
        let n = std::fs::read_dir(spool.join(sub)).unwrap().count();
        assert_eq!(n, 0, "{sub}/ holds {n} files");
    }
    // Space again: the same session goes on.
    crash.set_fault(Fault::None);
    c.cmd("RSET").await;
    let r = c
        .send_mail("a@sender.example", &["alice@example.com"], MESSAGE)
        .await;
    assert!(r.last().unwrap().starts_with("250 2.0.0"), "{r:?}");
    assert_eq!(relay.queued(), 1);
}

#[tokio::test]
async fn starttls_upgrades_and_refuses_injected_commands() {
    let ca = mxguard_lab::tls::LabCa::new().unwrap();
    let cert = ca.issue(&["backup.example.net"]).unwrap();
    let dir = Scratch::new("tls");
    std::fs::write(dir.path().join("users"), "alice@example.com\n").unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert_pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.key_pem()).unwrap();
    let relay = Relay::start_with(
        dir,
        "tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n",
        LIST_DOMAIN,
        false,
        Default::default(),
    )
    .await;

    // Plaintext sent in the same flight as STARTTLS: refused, closed.
    let mut c = relay.client().await;
    let ehlo = c.cmd("EHLO client.example").await;
    assert!(
        ehlo.contains("250-STARTTLS") || ehlo.ends_with("250 STARTTLS"),
        "{ehlo}"
    );
    c.send(b"STARTTLS\r\nMAIL FROM:<a@sender.example>\r\n")
        .await;
    let r = c.reply().await;
    assert!(r.starts_with("554 5.5.1"), "{r}");
    assert_eq!(c.rest().await, "");

    // A proper upgrade with the smtp client `check` uses.
    let cfg = mxguard_smtp::client::ClientConfig {
        helo: "client.example".into(),
        connect_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(5),
        roots: std::sync::Arc::new(ca.root_store().unwrap()),
        deadline: None,
    };
    let (mut conn, banner) = mxguard_smtp::client::Connection::connect(relay.addr, cfg)
        .await
        .unwrap();
    assert_eq!(banner.code, 220);
    conn.hello().await.unwrap();
    let tls = conn.starttls("backup.example.net").await.unwrap();
    assert_eq!(tls.reply.code, 220);
    assert!(matches!(tls.handshake, Some(Ok(_))), "{:?}", tls.handshake);
    let (ehlo, caps) = conn.hello().await.unwrap();
    assert!(ehlo.is_positive());
    assert!(!caps.starttls, "STARTTLS is not offered twice");
    assert_eq!(
        conn.command("MAIL FROM:<a@sender.example>")
            .await
            .unwrap()
            .code,
        250
    );
    assert_eq!(
        conn.command("RCPT TO:<alice@example.com>")
            .await
            .unwrap()
            .code,
        250
    );
    assert_eq!(conn.command("DATA").await.unwrap().code, 354);
    let done = conn
        .command("Subject: tls\r\n\r\nsecret\r\n.")
        .await
        .unwrap();
    assert_eq!(done.code, 250, "{done:?}");
    let entries = relay.spool.list().unwrap();
    let (env, bytes) = relay.spool.read(&entries[0].envelope.id).unwrap();
    assert!(env.tls);
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("(using TLSv1.3 with cipher TLS13_"), "{text}");
    assert!(text.contains("with ESMTPS id"), "{text}");
}

#[tokio::test]
async fn shutdown_tells_idle_sessions_and_finishes_the_message_in_progress() {
    let relay = list_relay("", "alice@example.com\n").await;
    let mut idle = relay.client().await;
    idle.cmd("EHLO client.example").await;
    let mut busy = relay.client().await;
    busy.cmd("EHLO client.example").await;
    busy.cmd("MAIL FROM:<a@sender.example>").await;
    busy.cmd("RCPT TO:<alice@example.com>").await;
    assert_eq!(code(&busy.cmd("DATA").await), "354");
    busy.send(b"Subject: in flight\r\n\r\nfirst half\r\n").await;
    let spool = relay.spool.clone();
    let stopping = tokio::spawn(relay.stop());
    let r = idle.reply().await;
    assert!(
        r.starts_with("421 4.3.2 backup.example.net Service shutting down"),
        "{r}"
    );
    assert_eq!(idle.rest().await, "");
    // The message being sent is finished and acknowledged…
    busy.send(b"second half\r\n.\r\n").await;
    let done = busy.reply().await;
    assert!(done.starts_with("250 2.0.0"), "{done}");
    // …and only then is the session closed.
    assert!(busy.reply().await.starts_with("421 4.3.2"));
    let _dir = stopping.await.unwrap();
    assert_eq!(spool.list().unwrap().len(), 1);
}

#[tokio::test]
async fn reload_applies_new_domains_and_lists_to_new_sessions() {
    let relay = list_relay("", "alice@example.com\n").await;
    let mut c = relay.client().await;
    c.cmd("EHLO client.example").await;
    c.cmd("MAIL FROM:<a@sender.example>").await;
    assert_eq!(code(&c.cmd("RCPT TO:<bob@example.org>").await), "550");
    let dir = relay.dir.path();
    std::fs::write(dir.join("org.users"), "bob@example.org\n").unwrap();
    let text = common::config_text(
        dir,
        "max_recipients = 150\n",
        &format!(
            "{LIST_DOMAIN}[[domains]]\nname = \"example.org\"\nrecipients = \"list\"\nrecipient_list = \"org.users\"\n"
        ),
    );
    let config = mxguard_relay::Config::parse(&text, Some(dir)).unwrap();
    let ignored = relay
        .running
        .as_ref()
        .unwrap()
        .reload(mxguard_relay::prepare(config).unwrap());
    assert!(ignored.is_empty(), "{ignored:?}");
    let mut c2 = relay.client().await;
    c2.cmd("EHLO client.example").await;
    c2.cmd("MAIL FROM:<a@sender.example>").await;
    assert_eq!(code(&c2.cmd("RCPT TO:<bob@example.org>").await), "250");
    assert_eq!(code(&c2.cmd("RCPT TO:<alice@example.com>").await), "250");
}

/// SPF that never answers in time (DNS in trouble) must not hold mail up:
/// DATA waits a moment, then the message is taken with spf = temp-error.
#[tokio::test]
async fn a_slow_spf_check_does_not_hold_up_the_message() {
    use std::sync::Arc;

    use mxguard_queue::SpfResult;
    use mxguard_relay::callout::BoxFuture;

    #[derive(Debug)]
    struct Stuck;
    impl mxguard_relay::spf::SpfCheck for Stuck {
        fn check<'a>(&'a self, _: IpAddr, _: &'a str, _: &'a str) -> BoxFuture<'a, SpfResult> {
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                SpfResult::Pass
            })
        }
    }
    let dir = Scratch::new("spf-slow");
    std::fs::write(dir.path().join("users"), "alice@example.com\n").unwrap();
    let relay = Relay::start_spf(
        dir,
        "",
        LIST_DOMAIN,
        false,
        Default::default(),
        25,
        Some(Arc::new(Stuck)),
    )
    .await;
    let mut c = relay.client().await;
    let start = std::time::Instant::now();
    let r = c
        .send_mail("a@sender.example", &["alice@example.com"], MESSAGE)
        .await;
    assert!(r.last().unwrap().starts_with("250 2.0.0"), "{r:?}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    let entries = relay.spool.list().unwrap();
    assert_eq!(entries[0].envelope.spf, Some(SpfResult::TempError));
}
