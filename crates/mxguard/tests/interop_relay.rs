//! Interop: `mxguard relay`, the backup MX daemon, between real peers — a
//! real Postfix (as packaged by Debian) as the primary it calls out to and
//! forwards to, and real `swaks` as the sending client — rather than the
//! crate's in-memory tests.
//!
//! The fixture, all in a fresh temporary directory:
//!
//! - a strict Postfix primary on 127.0.0.1 and a free port: the final
//!   destination of [`DOMAIN`] (`virtual_mailbox_domains` +
//!   `virtual_mailbox_maps`, maildirs for [`USERS`]), so an unknown user
//!   gets `550 5.1.1` at RCPT; it offers STARTTLS, as a real primary would;
//! - the `mxguard` binary running `relay --config relay.toml`: hostname
//!   [`RELAY_HOST`], SMTP on 127.0.0.1 and another free port, its spool in
//!   the directory, one `[[domains]]` entry for [`DOMAIN`] with
//!   `recipients = "callout"` and `primary = "127.0.0.1:<postfix port>"`,
//!   and fast `[delivery]` settings.
//!
//! swaks then sends: (a) a message to a known user, which must be queued
//! and then forwarded at once: it lands in the user's maildir at the
//! primary, with both Received headers, and leaves the relay's spool; (b)
//! to an unknown user, refused at RCPT with `550 5.1.1` from the callout;
//! (c) to a domain the relay does not serve, refused with `550 5.7.1`
//! without asking the primary. The primary's own log must show exactly the
//! two callouts, each EHLO, MAIL FROM:<>, RCPT, RSET, QUIT and never DATA,
//! and one delivery session from the relay (EHLO, STARTTLS, EHLO, MAIL,
//! RCPT, DATA, QUIT). With the primary stopped, (d) a never-seen recipient
//! gets `451 4.3.0` while the known user (and the unknown one) keep the
//! cached answers. The relay's log must have the mail events with their
//! reasons, and the delivery.
//!
//! Forwarding while the primary is down, and the bytes that arrive, are
//! `interop_forward`'s subject.
//!
//! Hermetic: no `lo` aliases, nothing listens or is asked anywhere but
//! 127.0.0.1, Postfix has no DNS and an `error:` default transport, and the
//! relay's primary is an IP literal.
//!
//! Needs root (Postfix), `postfix` and `swaks`. Without them the test
//! prints a `SKIP` line and passes, unless `MXGUARD_INTEROP=1` is set (as
//! `.ci/run` does): then it fails.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::postfix::{Postfix, Role};
use common::relay::{Relay, events, files_under, wait_for};
use common::swaks::swaks;
use common::{Scratch, find_program, is_root, set_mode, skip_or_fail, smtp_banner};
use mxguard_lab::LabCa;
use mxguard_queue::{FsSpool, QueueId, Recovery, Spool as _};

const TEST: &str = "interop_relay";

/// How long Postfix's log gets to show a finished session (postlogd writes
/// it a moment after the fact).
/// Long enough for the relay to close a delivery connection it kept open
/// for the next message (5 s idle), and Postfix to log the session.
const MAILLOG_WAIT: Duration = Duration::from_secs(15);
/// How long the relay gets to forward a message it has just accepted (it
/// tries at once) and the primary to put it in the maildir.
const DELIVERY_WAIT: Duration = Duration::from_secs(10);

/// The domain the relay backs up and the primary is the destination of.
const DOMAIN: &str = "backed.interop.test";
/// A domain neither serves.
const FOREIGN: &str = "elsewhere.interop.test";
/// Mailboxes the primary knows at [`DOMAIN`].
const USERS: [&str; 2] = ["postmaster", "alice"];
const KNOWN_USER: &str = "alice";
/// Never a mailbox at the primary.
const UNKNOWN_USER: &str = "nosuchuser";
/// First asked about while the primary is down.
const NEVER_SEEN_USER: &str = "carol";
const PRIMARY_HOST: &str = "mx1.interop.test";
const RELAY_HOST: &str = "backup.interop.test";
const CLIENT_HELO: &str = "client.interop.test";
const SENDER: &str = "sender@example.org";

/// `relay.toml`: callouts to, and forwarding to, `primary`.
fn relay_config(primary: SocketAddr) -> impl Fn(SocketAddr, SocketAddr, &Path) -> String {
    move |smtp, admin, spool| {
        format!(
            "# mxguard {TEST}: generated\n\
             hostname = \"{RELAY_HOST}\"\n\
             \n\
             [smtp]\n\
             listen = [\"{smtp}\"]\n\
             \n\
             [spool]\n\
             path = \"{spool}\"\n\
             \n\
             [admin]\n\
             listen = \"{admin}\"\n\
             \n\
             # Never asked (the primary is an IP literal, and with dsn =\n\
             # \"never\" no SPF is checked at ingress); set so that a stray\n\
             # lookup could not leave the machine.\n\
             [dns]\n\
             resolver = \"127.0.0.1:9\"\n\
             \n\
             [callout]\n\
             timeout = \"5s\"\n\
             \n\
             # Fast: the test waits for the forwarding. dsn = \"never\" also\n\
             # skips SPF at ingress, which would wait for the dead resolver.\n\
             [delivery]\n\
             retry = [\"2s\"]\n\
             jitter = 0.0\n\
             probe_interval = \"500ms\"\n\
             destination_rate = 0.0\n\
             connect_timeout = \"5s\"\n\
             command_timeout = \"5s\"\n\
             dsn = \"never\"\n\
             \n\
             [[domains]]\n\
             name = \"{DOMAIN}\"\n\
             primary = \"{primary}\"\n\
             recipients = \"callout\"\n",
            spool = spool.display(),
        )
    }
}

/// The primary's finished SMTP sessions that got as far as RCPT: its
/// `disconnect from ... ehlo=1 mail=1 rcpt=... commands=...` summaries.
/// Waits until there are `want` of them (or `MAILLOG_WAIT` is up), since
/// Postfix logs through postlogd.
fn rcpt_sessions(primary: &Postfix, want: usize) -> Vec<String> {
    let deadline = Instant::now() + MAILLOG_WAIT;
    loop {
        let sessions: Vec<String> = primary
            .maillog()
            .lines()
            .filter(|l| l.contains("disconnect from") && l.contains(" rcpt="))
            .map(str::to_owned)
            .collect();
        if sessions.len() >= want || Instant::now() > deadline {
            return sessions;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A callout, as the primary's session summary shows it: it ends in RSET
/// and never gets to DATA.
/// The EHLO answer of the SMTP server at `addr`.
fn ehlo(addr: SocketAddr) -> String {
    use std::io::{BufRead as _, BufReader, Write as _};
    let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    w.write_all(b"EHLO interop.test\r\n").unwrap();
    let mut text = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap() == 0 {
            break;
        }
        text.push_str(line.trim_end());
        text.push('\n');
        if line.as_bytes().get(3) == Some(&b' ') {
            break;
        }
    }
    let _ = w.write_all(b"QUIT\r\n");
    text
}

fn is_callout(session: &str) -> bool {
    session.contains(" rset=1 ") && !session.contains(" data=")
}

/// The relay delivering: a session that sends DATA.
fn is_delivery(session: &str) -> bool {
    session.contains(" data=")
}

/// The header fields of a message (LF line endings) whose name is `name`,
/// each with its folded lines, in order.
fn fields(header: &str, name: &str) -> Vec<String> {
    let prefix = format!("{name}:");
    let mut out: Vec<String> = Vec::new();
    let mut inside = false;
    for line in header.split('\n') {
        if line.starts_with([' ', '\t']) {
            if inside && let Some(last) = out.last_mut() {
                last.push('\n');
                last.push_str(line);
            }
            continue;
        }
        inside = line
            .get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(&prefix));
        if inside {
            out.push(line.to_owned());
        }
    }
    out
}

/// `mxguard relay` calls out to a real Postfix primary and serves a real
/// swaks: accepts mail for a known user and forwards it to the primary's
/// mailbox, refuses unknown users and foreign domains at RCPT, never sends
/// DATA in a callout, and keeps its answers while the primary is down.
#[test]
fn relay_between_real_postfix_and_swaks() {
    let Some(postfix) = find_program("postfix") else {
        skip_or_fail(
            TEST,
            "postfix not found in /usr/sbin or PATH (apt-get install postfix)",
        );
        return;
    };
    let Some(swaks_bin) = find_program("swaks") else {
        skip_or_fail(TEST, "swaks not found in PATH (apt-get install swaks)");
        return;
    };
    if !is_root() {
        skip_or_fail(TEST, "not root: a private Postfix instance needs root");
        return;
    }
    let dir = Scratch::new(
        "interop-relay",
        TEST,
        "the Postfix primary's files, maildirs and maillog, relay.toml, the relay's spool \
         and stderr, swaks transcripts",
    );
    // Postfix's unprivileged processes walk into it.
    set_mode(&dir.path, 0o755);
    let ca = LabCa::new().expect("making a lab CA");
    let mut primary = Postfix::start_on_free_port(
        &postfix,
        &dir,
        "primary",
        &Role::Strict {
            domains: vec![DOMAIN],
            users: USERS.to_vec(),
        },
        PRIMARY_HOST,
        Ipv4Addr::LOCALHOST,
        Some(&ca),
    );
    let mut relay = Relay::start(&dir, TEST, RELAY_HOST, relay_config(primary.addr));
    let known = format!("{KNOWN_USER}@{DOMAIN}");
    let unknown = format!("{UNKNOWN_USER}@{DOMAIN}");
    let never_seen = format!("{NEVER_SEEN_USER}@{DOMAIN}");
    let foreign = format!("someone@{FOREIGN}");
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let body = format!("mxguard interop_relay test message {nanos:x}");
    let sw = |tag: &str, to: &str, extra: &[&str]| {
        swaks(
            &swaks_bin,
            &dir,
            tag,
            relay.addr,
            CLIENT_HELO,
            SENDER,
            to,
            extra,
        )
    };

    // (a) A known user: the callout says 250, the message is queued.
    let subject = "Subject: mxguard interop_relay";
    let a = sw("accept", &known, &["--header", subject, "--body", &body]);
    let ctx = &a.transcript;
    assert_eq!(
        a.code,
        Some(0),
        "swaks to {known} should succeed (exit 0):\n{ctx}"
    );
    assert!(
        a.reply_to("RCPT TO:")
            .is_some_and(|r| r.starts_with("250 ")),
        "RCPT TO:<{known}> should get 250: the primary knows the user\n{ctx}"
    );
    let queue_id = a.queued_as().unwrap_or_else(|| {
        panic!(
            "the end of DATA should get `250 ... queued as ID`, got {:?}\n{ctx}",
            a.reply_to_end_of_data()
        )
    });
    let queue_id: QueueId = queue_id
        .parse()
        .unwrap_or_else(|e| panic!("{queue_id:?} is no queue ID ({e:?})\n{ctx}"));

    // ... and forwarded at once: the relay's delivery event, then the
    // message in alice's maildir at the primary.
    let delivery = wait_for(DELIVERY_WAIT, || {
        events(&relay.stderr(), "delivery")
            .first()
            .map(|l| l.to_string())
    })
    .unwrap_or_else(|| {
        panic!(
            "the relay should forward {queue_id} to the primary within {DELIVERY_WAIT:?}\n\
             relay stderr:\n{}",
            relay.stderr()
        )
    });
    let ctx = format!("relay stderr:\n{}", relay.stderr());
    assert!(
        delivery.contains(&format!("queue_id={queue_id} "))
            && delivery.contains(&format!("rcpt=<{known}> "))
            && delivery.contains(" outcome=\"delivered\" ")
            && delivery.contains(" host=127.0.0.1 ")
            && delivery.contains(" attempt=1 "),
        "the first attempt delivers {queue_id} for <{known}> to 127.0.0.1: {delivery}\n{ctx}"
    );
    let primary_id = delivery
        .split_once(" reply=250 2.0.0 Ok: queued as ")
        .map(|(_, id)| id.trim().to_owned())
        .unwrap_or_else(|| {
            panic!("the delivery event quotes the primary's `250 ... queued as ID`: {delivery}")
        });
    let maildir = primary
        .layout
        .mail
        .join(DOMAIN)
        .join(KNOWN_USER)
        .join("new");
    // virtual(8) writes the file in the maildir's tmp/ and renames it
    // into new/: once there, it is complete.
    let arrived = wait_for(DELIVERY_WAIT, || {
        Some(files_under(&maildir)).filter(|f| !f.is_empty())
    })
    .unwrap_or_default();
    let ctx = format!("primary maillog:\n{}", primary.maillog());
    // Everything in every mailbox, tmp/ included.
    let delivered = files_under(&primary.layout.mail);
    assert!(
        arrived.len() == 1 && delivered == arrived,
        "exactly one message, in {}: {delivered:?}\n{ctx}",
        maildir.display()
    );
    let text = std::fs::read_to_string(&delivered[0]).expect("reading the delivered message");
    let ctx = format!("delivered message {}:\n{text}", delivered[0].display());
    let (header, delivered_body) = text
        .split_once("\n\n")
        .unwrap_or_else(|| panic!("no blank line between header and body\n{ctx}"));
    assert!(
        text.starts_with(&format!("Return-Path: <{SENDER}>\n")),
        "the primary's Return-Path shows the envelope sender the relay passed on\n{ctx}"
    );
    assert_eq!(
        fields(header, "Delivered-To"),
        vec![format!("Delivered-To: {known}")],
        "{ctx}"
    );
    let received = fields(header, "Received");
    assert_eq!(
        received.len(),
        2,
        "two Received headers, the primary's and the relay's: {received:#?}\n{ctx}"
    );
    // The primary's (ESMTPS: the relay used STARTTLS), then the relay's
    // (ESMTP: swaks did not).
    assert!(
        received[0].starts_with(&format!(
            "Received: from {RELAY_HOST} (unknown [127.0.0.1])"
        )) && received[0].contains(&format!(
            "by {PRIMARY_HOST} (Postfix) with ESMTPS id {primary_id}"
        )) && received[0].contains(&format!("for <{known}>")),
        "the primary's Received header: from the relay over TLS, its queue ID \
         {primary_id}: {:?}\n{ctx}",
        received[0]
    );
    assert!(
        received[1].starts_with(&format!("Received: from {CLIENT_HELO} ([127.0.0.1])"))
            && received[1].contains(&format!(
                "by {RELAY_HOST} (mxguard) with ESMTP id {queue_id}"
            ))
            && received[1].contains(&format!("for <{known}>")),
        "the relay's Received header names the client, the relay, its queue ID and \
         the recipient: {:?}\n{ctx}",
        received[1]
    );
    assert!(
        header.contains(&format!("\n{subject}\n")) && header.contains(&format!("\nTo: {known}\n")),
        "swaks' own header fields arrive\n{ctx}"
    );
    assert!(
        delivered_body.contains(&body),
        "the body swaks sent ({body:?}) arrives\n{ctx}"
    );

    // (b) An unknown user: the primary's 550 5.1.1, passed on at RCPT.
    let b = sw("unknown", &unknown, &[]);
    let ctx = &b.transcript;
    assert_eq!(
        b.code,
        Some(24),
        "swaks exits 24 (no RCPT accepted) for {unknown}:\n{ctx}"
    );
    assert!(
        b.reply_to("RCPT TO:")
            .is_some_and(|r| r.starts_with("550 5.1.1")),
        "RCPT TO:<{unknown}> should get 550 5.1.1: the primary has no such user\n{ctx}"
    );
    assert!(
        !b.sent("DATA"),
        "no DATA after the only RCPT was refused\n{ctx}"
    );

    // (c) A domain the relay does not back up: refused, no callout.
    let c = sw("denied", &foreign, &[]);
    let ctx = &c.transcript;
    assert_eq!(
        c.code,
        Some(24),
        "swaks exits 24 (no RCPT accepted) for {foreign}:\n{ctx}"
    );
    assert!(
        c.reply_to("RCPT TO:")
            .is_some_and(|r| r.starts_with("550 5.7.1") && r.contains("Relay access denied")),
        "RCPT TO:<{foreign}> should get 550 5.7.1 Relay access denied\n{ctx}"
    );

    // The primary saw exactly the two callouts, never with DATA, and the
    // one delivery.
    let sessions = rcpt_sessions(&primary, 3);
    let maillog = primary.maillog();
    let ctx = format!("primary maillog:\n{maillog}");
    assert_eq!(
        sessions.len(),
        3,
        "the primary should see one callout for {known}, one for {unknown}, none for \
         {foreign}, and the relay delivering to {known}: {sessions:#?}\n{ctx}"
    );
    let callouts: Vec<&String> = sessions.iter().filter(|s| is_callout(s)).collect();
    let deliveries: Vec<&String> = sessions.iter().filter(|s| is_delivery(s)).collect();
    assert!(
        callouts.len() == 2 && deliveries.len() == 1,
        "two callouts (RSET, no DATA) and one delivery (DATA), nothing else: \
         {sessions:#?}\n{ctx}"
    );
    for s in &callouts {
        assert!(
            s.contains(" ehlo=1 mail=1 rcpt=") && s.contains(" rset=1 quit=1 "),
            "a callout is EHLO, MAIL, RCPT, RSET, QUIT: {s}\n{ctx}"
        );
    }
    assert!(
        callouts.iter().any(|s| s.contains(" rcpt=1 ")),
        "the callout for {known} got its RCPT accepted\n{ctx}"
    );
    assert!(
        callouts.iter().any(|s| s.contains(" rcpt=0/1 ")),
        "the callout for {unknown} got its RCPT refused\n{ctx}"
    );
    assert!(
        deliveries[0].contains(" ehlo=2 starttls=1 mail=1 rcpt=1 data=1 quit=1 "),
        "the relay delivers with EHLO, STARTTLS, EHLO, MAIL, RCPT, DATA, QUIT: {}\n{ctx}",
        deliveries[0]
    );
    assert!(
        maillog.lines().any(|l| l.contains("NOQUEUE: reject: RCPT")
            && l.contains("550 5.1.1")
            && l.contains("from=<>")
            && l.contains(&format!("to=<{unknown}>"))),
        "the primary refused the callout for {unknown} (MAIL FROM:<>) with 550 5.1.1\n{ctx}"
    );
    let mail_from = maillog
        .lines()
        .filter(|l| l.contains(": from=<") && l.contains("(queue active)"))
        .collect::<Vec<_>>();
    assert!(
        mail_from.len() == 1 && mail_from[0].contains(&format!("{primary_id}: from=<{SENDER}>")),
        "the primary queued one message, {primary_id}, from <{SENDER}>: {mail_from:#?}\n{ctx}"
    );
    let sent = maillog
        .lines()
        .filter(|l| l.contains("status=sent"))
        .collect::<Vec<_>>();
    assert!(
        sent.len() == 1
            && sent[0].contains(&format!("{primary_id}: to=<{known}>"))
            && sent[0].contains("relay=virtual")
            && sent[0].contains("delivered to maildir"),
        "the primary delivered {primary_id} to {known}'s maildir, and nothing else: \
         {sent:#?}\n{ctx}"
    );

    // The relay has heard the primary's EHLO: it now holds itself to
    // Postfix's message_size_limit (10240000 by default), not its own 50 MB.
    let ehlo = ehlo(relay.addr);
    assert!(
        ehlo.lines().any(|l| l == "250-SIZE 10240000"),
        "the relay advertises the primary's SIZE after talking to it:\n{ehlo}\n{ctx}"
    );

    // (d) The primary goes down: unknown recipients wait, known answers stand.
    primary.stop();
    assert!(
        smtp_banner(primary.addr).is_none(),
        "the primary at {} should be down",
        primary.addr
    );
    let d = sw("primary-down-new", &never_seen, &["--quit-after", "RCPT"]);
    let ctx = &d.transcript;
    assert_eq!(
        d.code,
        Some(24),
        "swaks exits 24 (no RCPT accepted) for {never_seen}:\n{ctx}"
    );
    assert!(
        d.reply_to("RCPT TO:")
            .is_some_and(|r| r.starts_with("451 4.3.0")),
        "with the primary down, the never-seen {never_seen} should get 451 4.3.0\n{ctx}"
    );
    let e = sw("primary-down-known", &known, &["--quit-after", "RCPT"]);
    let ctx = &e.transcript;
    assert_eq!(
        e.code,
        Some(0),
        "swaks to {known} up to RCPT should succeed:\n{ctx}"
    );
    assert!(
        e.reply_to("RCPT TO:")
            .is_some_and(|r| r.starts_with("250 ")),
        "with the primary down, {known} keeps its cached 250\n{ctx}"
    );
    let f = sw("primary-down-unknown", &unknown, &["--quit-after", "RCPT"]);
    let ctx = &f.transcript;
    assert_eq!(
        f.code,
        Some(24),
        "swaks exits 24 (no RCPT accepted) for {unknown}:\n{ctx}"
    );
    assert!(
        f.reply_to("RCPT TO:")
            .is_some_and(|r| r.starts_with("550 5.1.1")),
        "with the primary down, {unknown} keeps its cached 550 5.1.1\n{ctx}"
    );

    // Stopped, the primary has logged everything: still the three sessions.
    let sessions = rcpt_sessions(&primary, 3);
    assert_eq!(
        sessions.len(),
        3,
        "no sessions but the two callouts and the delivery: {sessions:#?}\n\
         primary maillog:\n{}",
        primary.maillog()
    );

    // The relay stops cleanly on SIGTERM; its log has the mail events.
    let status = relay.stop();
    let log = relay.stderr();
    let ctx = format!("relay stderr:\n{log}");
    assert!(
        status.success(),
        "mxguard relay should exit 0 on SIGTERM, got {status}\n{ctx}"
    );
    let accepted = events(&log, "accepted");
    assert!(
        accepted.len() == 1
            && accepted[0].contains(&format!("queue_id={queue_id}"))
            && accepted[0].contains(&format!("rcpts=<{known}>")),
        "one accepted event, queue_id={queue_id} rcpts=<{known}>: {accepted:#?}\n{ctx}"
    );
    let deliveries = events(&log, "delivery");
    assert_eq!(
        deliveries,
        vec![delivery.as_str()],
        "one delivery event, no retries\n{ctx}"
    );
    let rejected = events(&log, "rejected");
    let with = |reason: &str, rcpt: &str| {
        rejected
            .iter()
            .filter(|l| {
                l.contains(&format!("reason=\"{reason}\"")) && l.contains(&format!("rcpt=<{rcpt}>"))
            })
            .count()
    };
    assert_eq!(
        with("unknown-recipient", &unknown),
        2,
        "{unknown} rejected as unknown-recipient twice (live, then cached): {rejected:#?}\n{ctx}"
    );
    assert_eq!(
        with("relay-denied", &foreign),
        1,
        "{foreign} rejected as relay-denied: {rejected:#?}\n{ctx}"
    );
    assert_eq!(
        with("callout-unavailable", &never_seen),
        1,
        "{never_seen} rejected as callout-unavailable: {rejected:#?}\n{ctx}"
    );
    assert_eq!(
        rejected.len(),
        4,
        "no other rejections: {rejected:#?}\n{ctx}"
    );

    // Delivered, the message has left the spool, delivery state and all.
    let (spool, recovery) = FsSpool::open(&relay.spool).expect("opening the relay's spool");
    assert_eq!(
        recovery,
        Recovery {
            recovered: 0,
            discarded_partial: 0,
            corrupt: 0
        },
        "the delivered message should be gone from the spool"
    );
    let listed = spool.list().expect("listing the spool");
    assert!(listed.is_empty(), "the spool lists nothing: {listed:#?}");
    for sub in ["queue", "state", "tmp"] {
        let left = files_under(&relay.spool.join(sub));
        assert!(
            left.is_empty(),
            "nothing left in the spool's {sub}/: {left:?}"
        );
    }

    drop(relay);
    drop(primary);
    drop(dir);
}
