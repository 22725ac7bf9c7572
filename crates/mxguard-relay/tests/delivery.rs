//! Forwarding to the primary against lab hosts: an outage and the flush on
//! recovery, transient then success, permanent rejection and its notice,
//! lifetime expiry, hold/release/delete, and the MX preference rule.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::{FakeDns, Relay, Scratch, code};
use mxguard_dns::MxRecord;
use mxguard_lab::smtp::{HostScript, LabSmtp};
use mxguard_queue::QueueId;
use mxguard_relay::MailEvent;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Fast settings: retries far apart, so that anything quicker is the probe.
const FAST: &str = "[delivery]\nretry = [\"30s\"]\njitter = 0.0\nprobe_interval = \"200ms\"\n\
                    connect_timeout = \"2s\"\ncommand_timeout = \"5s\"\ndestination_rate = 0.0\n";

const MESSAGE: &[u8] = b"From: a@sender.example\r\nTo: bob@example.com\r\nSubject: held for you\r\n\r\nline one\r\n.dot line\r\n";

fn domain(primary: &str) -> String {
    format!(
        "[[domains]]\nname = \"example.com\"\nprimary = \"{primary}\"\nrecipients = \"list\"\nrecipient_list = \"users\"\n"
    )
}

async fn relay(delivery: &str, domains: &str, dns: FakeDns, mx_port: u16) -> Relay {
    let dir = Scratch::new("delivery");
    std::fs::write(dir.path().join("users"), "@example.com\n").unwrap();
    Relay::start_full(
        dir,
        "",
        &format!("{delivery}{domains}"),
        false,
        dns,
        mx_port,
    )
    .await
}

/// A free loopback port with nothing listening on it (yet).
async fn closed_port() -> u16 {
    let lab = LabSmtp::start(LOCALHOST, 0, HostScript::new("gone.example"))
        .await
        .unwrap();
    let port = lab.addr().port();
    drop(lab);
    port
}

async fn accepting(port: u16, name: &str) -> LabSmtp {
    start_at(port, HostScript::new(name)).await
}

async fn start_at(port: u16, script: HostScript) -> LabSmtp {
    // The port was ours a moment ago; the host may need a moment to rebind.
    for _ in 0..50 {
        if let Ok(l) = LabSmtp::start(LOCALHOST, port, script.clone()).await {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot listen on {port}");
}

async fn send(relay: &Relay, from: &str, rcpt: &str) -> QueueId {
    let mut c = relay.client().await;
    let r = c.send_mail(from, &[rcpt], MESSAGE).await;
    let last = r.last().unwrap();
    assert!(last.starts_with("250 2.0.0"), "{r:?}");
    last.rsplit(' ').next().unwrap().parse().unwrap()
}

async fn until<F: FnMut() -> bool>(what: &str, limit: Duration, mut f: F) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Delivery events seen so far (other events are dropped).
fn deliveries(relay: &mut Relay, seen: &mut Vec<(String, &'static str, String)>) {
    for e in relay.drain_events() {
        if let MailEvent::Delivery {
            rcpt,
            outcome,
            reply,
            ..
        } = e
        {
            seen.push((rcpt, outcome, reply));
        }
    }
}

fn running(relay: &Relay) -> &mxguard_relay::Running {
    relay.running.as_ref().unwrap()
}

#[tokio::test]
async fn outage_then_recovery_delivers_within_a_probe_interval() {
    let port = closed_port().await;
    let relay = relay(
        FAST,
        &domain(&format!("127.0.0.1:{port}")),
        FakeDns::default(),
        25,
    )
    .await;
    send(&relay, "a@sender.example", "bob@example.com").await;
    // The first attempt finds nobody: the destination is marked down.
    until(
        "the primary to be marked down",
        Duration::from_secs(10),
        || running(&relay).delivery().down() == ["example.com"],
    )
    .await;
    assert_eq!(relay.queued(), 1, "the message waits in the spool");

    let lab = accepting(port, "mail.example.com").await;
    let back = Instant::now();
    until(
        "the message to reach the primary",
        Duration::from_secs(10),
        || !lab.messages().is_empty(),
    )
    .await;
    let took = back.elapsed();
    // The retry is 30 s away: only the probe (every 200 ms) can explain this.
    assert!(
        took < Duration::from_secs(5),
        "delivered {took:?} after recovery"
    );
    let got = &lab.messages()[0];
    assert_eq!(got.mail_from, "a@sender.example");
    assert_eq!(got.rcpt_to, vec!["bob@example.com".to_string()]);
    let text = String::from_utf8_lossy(&got.data);
    assert!(
        text.starts_with("Received: from client.example ([127.0.0.1])"),
        "{text}"
    );
    assert!(
        got.data.ends_with(MESSAGE),
        "the client's message, byte for byte:\n{text}"
    );
    until("the spool to empty", Duration::from_secs(5), || {
        relay.queued() == 0
    })
    .await;
    assert!(running(&relay).delivery().down().is_empty());
}

#[tokio::test]
async fn transient_then_success() {
    let port = closed_port().await;
    let fast_retry = FAST.replace("retry = [\"30s\"]", "retry = [\"300ms\"]");
    let mut relay = relay(
        &fast_retry,
        &domain(&format!("127.0.0.1:{port}")),
        FakeDns::default(),
        25,
    )
    .await;
    let busy = start_at(
        port,
        HostScript::new("mail.example.com").rcpt_default((451, "4.2.0 Mailbox busy, try later")),
    )
    .await;
    send(&relay, "a@sender.example", "bob@example.com").await;
    let mut seen = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    while !seen.iter().any(|(_, o, _)| *o == "deferred") {
        assert!(Instant::now() < end, "no deferral");
        deliveries(&mut relay, &mut seen);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen[0].2.contains("451 4.2.0"), "{seen:?}");
    assert!(busy.messages().is_empty());
    drop(busy);
    let ok = accepting(port, "mail.example.com").await;
    until(
        "delivery after the deferral",
        Duration::from_secs(10),
        || !ok.messages().is_empty(),
    )
    .await;
    until("the spool to empty", Duration::from_secs(5), || {
        relay.queued() == 0
    })
    .await;
    deliveries(&mut relay, &mut seen);
    assert_eq!(seen.last().unwrap().1, "delivered", "{seen:?}");
}

/// The sender's own MX, where notices go.
async fn sender_mx() -> (LabSmtp, FakeDns) {
    let lab = LabSmtp::start(LOCALHOST, 0, HostScript::new("mx.sender.example"))
        .await
        .unwrap();
    let dns = FakeDns {
        mx: vec![(
            "sender.example".into(),
            vec![MxRecord::new(10, "mx.sender.example")],
        )],
        hosts: vec![("mx.sender.example".into(), vec![LOCALHOST])],
    };
    (lab, dns)
}

#[tokio::test]
async fn permanent_rejection_notifies_only_where_allowed() {
    let refusing = LabSmtp::start(
        LOCALHOST,
        0,
        HostScript::new("mail.example.com")
            .rcpt_default((550, "5.1.1 <bob@example.com>: no such user")),
    )
    .await
    .unwrap();
    let (mx, dns) = sender_mx().await;
    let primary = domain(&refusing.addr().to_string());

    // dsn = "always": the sender gets an RFC 3464 failure notice.
    let always = format!("{FAST}dsn = \"always\"\n");
    let relay1 = relay(&always, &primary, dns, mx.addr().port()).await;
    send(&relay1, "a@sender.example", "bob@example.com").await;
    until("the failure notice", Duration::from_secs(10), || {
        !mx.messages().is_empty()
    })
    .await;
    let notice = &mx.messages()[0];
    assert_eq!(notice.mail_from, "", "notices come from the null sender");
    assert_eq!(notice.rcpt_to, vec!["a@sender.example".to_string()]);
    let text = String::from_utf8_lossy(&notice.data);
    for want in [
        "Content-Type: multipart/report; report-type=delivery-status;",
        "Content-Type: message/delivery-status",
        "Reporting-MTA: dns; backup.example.net",
        "Final-Recipient: rfc822; bob@example.com",
        "Action: failed",
        "Status: 5.1.1",
        "Diagnostic-Code: smtp; 550 5.1.1 <bob@example.com>: no such user",
        "Content-Type: text/rfc822-headers",
        "Subject: held for you",
        "Auto-Submitted: auto-replied",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(!text.contains("line one"), "only the headers are returned");
    until("the spool to empty", Duration::from_secs(5), || {
        relay1.queued() == 0
    })
    .await;

    // The default policy, "authenticated": a sender not vouched for by SPF
    // gets nothing — no notice is even queued.
    let before = mx.messages().len();
    let (_, dns) = sender_mx().await;
    let dns = FakeDns {
        hosts: vec![("mx.sender.example".into(), vec![LOCALHOST])],
        ..dns
    };
    let mut relay2 = relay(FAST, &primary, dns, mx.addr().port()).await;
    send(&relay2, "forged@sender.example", "bob@example.com").await;
    let mut seen = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    while !seen.iter().any(|(_, o, _)| *o == "bounced") {
        assert!(Instant::now() < end, "no bounce");
        deliveries(&mut relay2, &mut seen);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    until("the spool to empty", Duration::from_secs(5), || {
        relay2.queued() == 0
    })
    .await;
    assert_eq!(
        mx.messages().len(),
        before,
        "no backscatter to an unauthenticated sender"
    );

    // The null sender never gets a notice, whatever the policy.
    send(&relay1, "", "bob@example.com").await;
    until("the spool to empty", Duration::from_secs(10), || {
        relay1.queued() == 0
    })
    .await;
    assert_eq!(mx.messages().len(), before);
}

#[tokio::test]
async fn lifetime_expiry_sends_a_delay_notice_then_gives_up() {
    let port = closed_port().await;
    let (mx, dns) = sender_mx().await;
    let short = "[delivery]\nretry = [\"250ms\"]\njitter = 0.0\nprobe_interval = \"10s\"\n\
                 lifetime = \"1500ms\"\nwarn_after = \"500ms\"\ndsn = \"always\"\n\
                 connect_timeout = \"1s\"\ndestination_rate = 0.0\n";
    let relay = relay(
        short,
        &domain(&format!("127.0.0.1:{port}")),
        dns,
        mx.addr().port(),
    )
    .await;
    send(&relay, "a@sender.example", "bob@example.com").await;
    until("two notices", Duration::from_secs(15), || {
        mx.messages().len() >= 2
    })
    .await;
    let texts: Vec<String> = mx
        .messages()
        .iter()
        .map(|m| String::from_utf8_lossy(&m.data).into_owned())
        .collect();
    assert!(
        texts[0].contains("Action: delayed") && texts[0].contains("Will-Retry-Until:"),
        "{}",
        texts[0]
    );
    assert!(
        texts[1].contains("Action: failed") && texts[1].contains("Status: 5.4.7"),
        "{}",
        texts[1]
    );
    assert!(texts[1].contains("gave up after"), "{}", texts[1]);
    until("the spool to empty", Duration::from_secs(5), || {
        relay.queued() == 0
    })
    .await;
}

#[tokio::test]
async fn hold_release_and_delete() {
    let port = closed_port().await;
    let relay = relay(
        FAST,
        &domain(&format!("127.0.0.1:{port}")),
        FakeDns::default(),
        25,
    )
    .await;
    let a = send(&relay, "a@sender.example", "alice@example.com").await;
    let b = send(&relay, "b@sender.example", "bob@example.com").await;
    let c = send(&relay, "c@sender.example", "carol@example.com").await;
    until(
        "the primary to be marked down",
        Duration::from_secs(10),
        || !running(&relay).delivery().down().is_empty(),
    )
    .await;
    let d = running(&relay).delivery().clone();
    // Wait until no attempt is in flight for these (attempts are quick).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(d.hold(&a).unwrap());
    assert!(d.delete(&c).unwrap());
    assert!(!d.delete(&c).unwrap(), "already gone");
    assert_eq!(relay.queued(), 2);
    let held = relay.spool.state(&a).unwrap();
    assert!(held.held);

    let lab = accepting(port, "mail.example.com").await;
    until("b to be delivered", Duration::from_secs(10), || {
        lab.messages().len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(lab.messages().len(), 1, "a held message is not delivered");
    assert_eq!(
        lab.messages()[0].rcpt_to,
        vec!["bob@example.com".to_string()]
    );
    assert!(
        relay.spool.read(&b).is_err(),
        "delivered messages leave the spool"
    );

    assert!(d.release(&a).unwrap());
    until("a after release", Duration::from_secs(10), || {
        lab.messages().len() == 2
    })
    .await;
    assert_eq!(
        lab.messages()[1].rcpt_to,
        vec!["alice@example.com".to_string()]
    );
    assert!(
        lab.messages()
            .iter()
            .all(|m| m.rcpt_to != vec!["carol@example.com".to_string()])
    );
    until("the spool to empty", Duration::from_secs(5), || {
        relay.queued() == 0
    })
    .await;
}

#[tokio::test]
async fn delivers_only_to_more_preferred_hosts_never_itself() {
    let lab = LabSmtp::start(LOCALHOST, 0, HostScript::new("mail.example.com"))
        .await
        .unwrap();
    let port = lab.addr().port();
    let mx_domain =
        "[[domains]]\nname = \"example.com\"\nrecipients = \"list\"\nrecipient_list = \"users\"\n";
    let hosts = vec![
        ("mail.example.com".to_string(), vec![LOCALHOST]),
        ("backup.example.net".to_string(), vec![LOCALHOST]),
        ("third.example.net".to_string(), vec![LOCALHOST]),
    ];
    // MX 10 primary, MX 20 this relay: to the primary.
    let dns = FakeDns {
        mx: vec![(
            "example.com".into(),
            vec![
                MxRecord::new(10, "mail.example.com"),
                MxRecord::new(20, "backup.example.net"),
            ],
        )],
        hosts: hosts.clone(),
    };
    let relay1 = relay(FAST, mx_domain, dns, port).await;
    send(&relay1, "a@sender.example", "bob@example.com").await;
    until(
        "delivery to the MX 10 host",
        Duration::from_secs(10),
        || lab.messages().len() == 1,
    )
    .await;

    // This relay is MX 10 and another host MX 20: nobody is more preferred,
    // so nothing is delivered, to itself or to the less preferred host.
    let dns = FakeDns {
        mx: vec![(
            "example.com".into(),
            vec![
                MxRecord::new(10, "backup.example.net"),
                MxRecord::new(20, "third.example.net"),
            ],
        )],
        hosts,
    };
    let mut relay2 = relay(FAST, mx_domain, dns, port).await;
    send(&relay2, "a@sender.example", "bob@example.com").await;
    let mut seen = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    while seen.is_empty() {
        assert!(Instant::now() < end, "no attempt");
        deliveries(&mut relay2, &mut seen);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen[0].1, "deferred", "{seen:?}");
    assert!(
        seen[0].2.contains("more preferred than this relay"),
        "{seen:?}"
    );
    assert_eq!(
        lab.messages().len(),
        1,
        "nothing reached the lab host on behalf of relay 2"
    );
    assert_eq!(relay2.queued(), 1);
}

#[tokio::test]
async fn admin_listener_serves_metrics_and_the_queue() {
    let port = closed_port().await;
    let relay = relay(
        FAST,
        &domain(&format!("127.0.0.1:{port}")),
        FakeDns::default(),
        25,
    )
    .await;
    let id = send(&relay, "a@sender.example", "bob@example.com").await;
    let mut c = relay.client().await;
    c.cmd("EHLO client.example").await;
    c.cmd("MAIL FROM:<a@sender.example>").await;
    assert_eq!(code(&c.cmd("RCPT TO:<x@other.example>").await), "550");
    let admin = running(&relay).admin_addr();
    let token = std::fs::read_to_string(relay.dir.path().join("spool/admin.token")).unwrap();
    let get = move |path: &str, auth: bool| {
        let url = format!("http://{admin}{path}");
        let token = token.clone();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut req = agent.get(&url);
        if auth {
            req = req.header("Authorization", &format!("Bearer {}", token.trim()));
        }
        let mut r = req.call().unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    let (status, metrics) = tokio::task::spawn_blocking({
        let get = get.clone();
        move || get("/metrics", false)
    })
    .await
    .unwrap();
    assert_eq!(status, 200);
    let age: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mxguard_queue_oldest_age_seconds "))
        .expect("the oldest age")
        .parse()
        .unwrap();
    assert!(age < 30.0, "the message was queued moments ago: {age}");
    for want in [
        "mxguard_queue_messages 1",
        "mxguard_accepted_total 1",
        "mxguard_rejections_total{reason=\"relay-denied\"} 1",
        "mxguard_deferred_total",
        "mxguard_callout_cache_hits_total 0",
    ] {
        assert!(metrics.contains(want), "missing {want:?}:\n{metrics}");
    }
    let (status, _) = tokio::task::spawn_blocking({
        let get = get.clone();
        move || get("/queue", false)
    })
    .await
    .unwrap();
    assert_eq!(status, 401, "queue commands need the token");
    let (status, body) = tokio::task::spawn_blocking(move || get("/queue", true))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list[0]["id"], id.to_string());
    assert_eq!(list[0]["recipients"][0]["address"], "bob@example.com");
    assert_eq!(list[0]["recipients"][0]["status"], "pending");
}

/// With the default policy, a sender whose domain's SPF passes for the
/// client gets the failure notice; one whose SPF fails gets nothing. SPF is
/// evaluated by mail-auth against a lab DNS server.
#[tokio::test]
async fn spf_authenticated_senders_get_notices_forged_ones_do_not() {
    use std::sync::Arc;
    let zones = mxguard_lab::ZoneSet::parse(
        "sender.example TXT \"v=spf1 ip4:127.0.0.1 -all\"\n\
         forged.example TXT \"v=spf1 ip4:192.0.2.1 -all\"\n",
    )
    .unwrap();
    let lab_dns = mxguard_lab::LabDns::start(LOCALHOST, &zones).await.unwrap();
    let spf: Arc<dyn mxguard_relay::spf::SpfCheck> = Arc::new(
        mxguard_relay::spf::MailAuthSpf::new(Some(lab_dns.addr()), "backup.example.net".into())
            .unwrap(),
    );
    let refusing = LabSmtp::start(
        LOCALHOST,
        0,
        HostScript::new("mail.example.com").rcpt_default((550, "5.1.1 no such user")),
    )
    .await
    .unwrap();
    let mx = LabSmtp::start(LOCALHOST, 0, HostScript::new("mx.sender.example"))
        .await
        .unwrap();
    let dns = FakeDns {
        mx: vec![
            (
                "sender.example".into(),
                vec![MxRecord::new(10, "mx.sender.example")],
            ),
            (
                "forged.example".into(),
                vec![MxRecord::new(10, "mx.sender.example")],
            ),
        ],
        hosts: vec![("mx.sender.example".into(), vec![LOCALHOST])],
    };
    let dir = Scratch::new("spf");
    std::fs::write(dir.path().join("users"), "@example.com\n").unwrap();
    let body = format!("{FAST}{}", domain(&refusing.addr().to_string()));
    let relay = Relay::start_spf(dir, "", &body, false, dns, mx.addr().port(), Some(spf)).await;

    send(&relay, "someone@forged.example", "bob@example.com").await;
    let authentic = send(&relay, "a@sender.example", "bob@example.com").await;
    until(
        "the notice to the authenticated sender",
        Duration::from_secs(10),
        || !mx.messages().is_empty(),
    )
    .await;
    until("the spool to empty", Duration::from_secs(10), || {
        relay.queued() == 0
    })
    .await;
    let notices = mx.messages();
    assert_eq!(
        notices.len(),
        1,
        "only one notice: {:?}",
        notices.iter().map(|m| &m.rcpt_to).collect::<Vec<_>>()
    );
    assert_eq!(notices[0].rcpt_to, vec!["a@sender.example".to_string()]);
    let text = String::from_utf8_lossy(&notices[0].data);
    assert!(
        text.contains(&format!("X-Mxguard-Queue-ID: {authentic}")),
        "{text}"
    );
}

/// `tls = "required"`: a primary without STARTTLS gets nothing; the
/// message waits.
#[tokio::test]
async fn required_tls_defers_when_the_primary_offers_none() {
    let plain = LabSmtp::start(LOCALHOST, 0, HostScript::new("mail.example.com"))
        .await
        .unwrap();
    let body = format!(
        "{FAST}[[domains]]\nname = \"example.com\"\nprimary = \"{}\"\nrecipients = \"list\"\n\
         recipient_list = \"users\"\ntls = \"required\"\n",
        plain.addr()
    );
    let mut relay = relay(&body, "", FakeDns::default(), 25).await;
    send(&relay, "a@sender.example", "bob@example.com").await;
    let mut seen = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    while seen.is_empty() {
        assert!(Instant::now() < end, "no attempt");
        deliveries(&mut relay, &mut seen);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen[0].1, "deferred", "{seen:?}");
    assert!(seen[0].2.contains("STARTTLS is required"), "{seen:?}");
    assert!(plain.messages().is_empty());
    assert!(!plain.saw("MAIL"), "nothing is sent in the clear");
    assert_eq!(relay.queued(), 1);
}

/// A recovering primary gets the queue over a connection kept open from
/// message to message, not one connection per message.
#[tokio::test]
async fn the_flush_reuses_one_connection() {
    let port = closed_port().await;
    let one = FAST.replace(
        "destination_rate = 0.0",
        "destination_rate = 0.0\ndestination_concurrency = 1",
    );
    let relay = relay(
        &one,
        &domain(&format!("127.0.0.1:{port}")),
        FakeDns::default(),
        25,
    )
    .await;
    for i in 0..4 {
        send(&relay, "a@sender.example", &format!("user{i}@example.com")).await;
    }
    until(
        "the primary to be marked down",
        Duration::from_secs(10),
        || !running(&relay).delivery().down().is_empty(),
    )
    .await;
    let lab = accepting(port, "mail.example.com").await;
    until("all four messages", Duration::from_secs(10), || {
        lab.messages().len() == 4
    })
    .await;
    // One connection for the probe, one for the four messages.
    assert_eq!(lab.connections(), 2, "{:?}", lab.commands());
    let order: Vec<String> = lab
        .messages()
        .iter()
        .map(|m| m.rcpt_to[0].clone())
        .collect();
    assert_eq!(
        order,
        [
            "user0@example.com",
            "user1@example.com",
            "user2@example.com",
            "user3@example.com"
        ]
    );
}

#[tokio::test]
async fn a_delivery_teaches_the_relay_the_primarys_size_limit() {
    // List mode: no callouts; the first delivery is the first time the
    // relay hears the primary's EHLO.
    let primary = LabSmtp::start(
        LOCALHOST,
        0,
        HostScript::new("mail.example.com").extensions(["SIZE 1000", "8BITMIME"]),
    )
    .await
    .unwrap();
    let relay = relay(
        FAST,
        &domain(&primary.addr().to_string()),
        FakeDns::default(),
        25,
    )
    .await;
    let mut c = relay.client().await;
    assert!(c.cmd("EHLO client.example").await.contains("SIZE 52428800"));
    let r = c
        .send_mail("a@sender.example", &["bob@example.com"], MESSAGE)
        .await;
    assert!(r.last().unwrap().starts_with("250"), "{r:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while relay.queued() > 0 {
        assert!(std::time::Instant::now() < deadline, "not delivered");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut c = relay.client().await;
    let ehlo = c.cmd("EHLO client.example").await;
    assert!(ehlo.contains("SIZE 1000"), "{ehlo}");
    assert_eq!(
        code(&c.cmd("MAIL FROM:<a@sender.example> SIZE=2000").await),
        "250"
    );
    assert!(
        c.cmd("RCPT TO:<bob@example.com>")
            .await
            .starts_with("552 5.3.4")
    );
}
