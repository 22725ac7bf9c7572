//! Interop: `mxguard relay` forwarding, between two real Postfix instances
//! (as packaged by Debian): one sending through the relay, one the primary
//! the relay forwards to, which is down when the message arrives.
//!
//! The fixture, all in a fresh temporary directory:
//!
//! - the primary: a strict Postfix on 127.0.0.1 and a free port, final
//!   destination of [`DOMAIN`] with maildirs for [`USERS`]
//!   (`virtual_mailbox_maps`), offering STARTTLS;
//! - the relay: `mxguard relay` with one `[[domains]]` entry for
//!   [`DOMAIN`], `recipients = "list"` (a file listing [`RECIPIENT`], so that
//!   accepting does not depend on the primary) and
//!   `primary = "127.0.0.1:<primary port>"`; `[delivery]` retries only
//!   every [`RETRY`] but probes a primary that is down every 500 ms;
//! - the sender: a Postfix with `relayhost = [127.0.0.1]:<relay port>`,
//!   `mynetworks = 127.0.0.0/8` and nothing delivered locally.
//!
//! The test stops the primary, hands a message to the sender's smtpd with
//! swaks, and waits until the relay has accepted it (its `accepted` event,
//! the file in `spool/queue/`) and deferred it (the primary refuses
//! connections). It copies the spool file: after its two envelope lines it
//! holds the bytes the relay will forward, starting with the relay's own
//! Received header. It restarts the primary and waits for the message to
//! reach the maildir — well before the next retry is due, so it is the
//! probe that brings it — and checks that the mailbox file is exactly the
//! header fields the primary adds (Return-Path, X-Original-To,
//! Delivered-To, its Received) followed by those spooled bytes; and that
//! the relay's log shows the deferred attempt before the delivered one.
//!
//! Hermetic: no `lo` aliases, nothing listens anywhere but 127.0.0.1; the
//! primary has an `error:` default transport, the sender's only next hop is
//! the relay (an IP literal), neither uses DNS; the relay's primary is an
//! IP literal and its resolver a dead address.
//!
//! Needs root (Postfix), `postfix` and `swaks`. Without them the test
//! prints a `SKIP` line and passes, unless `MXGUARD_INTEROP=1` is set (as
//! `.ci/run` does): then it fails.

mod common;

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::postfix::{Postfix, Role};
use common::relay::{Relay, events, files_under, wait_for};
use common::swaks::swaks;
use common::{Scratch, find_program, is_root, set_mode, skip_or_fail, smtp_banner};
use mxguard_lab::LabCa;
use serde_json::Value;

const TEST: &str = "interop_forward";

/// How long the sender gets to hand the message to the relay, and the
/// relay to try the primary once.
const HANDOFF_WAIT: Duration = Duration::from_secs(15);
/// How long, after the primary is back, the message may take to reach its
/// maildir: the relay probes every 500 ms.
const RECOVERY_WAIT: Duration = Duration::from_secs(20);
/// The relay's retry schedule: one wait, longer than [`RECOVERY_WAIT`], so
/// that only the probe can bring the message in time.
const RETRY: &str = "60s";
/// How long Postfix's log gets to show what has happened.
/// Long enough for the relay to close a delivery connection it kept open
/// for the next message (5 s idle), and Postfix to log the session.
const MAILLOG_WAIT: Duration = Duration::from_secs(15);

const DOMAIN: &str = "forward.interop.test";
const USERS: [&str; 2] = ["postmaster", "alice"];
/// The one address of [`DOMAIN`] in the relay's recipient list.
const RECIPIENT: &str = "alice@forward.interop.test";
const PRIMARY_HOST: &str = "mx1.forward.interop.test";
const RELAY_HOST: &str = "backup.forward.interop.test";
const SENDER_HOST: &str = "out.sender.interop.test";
/// swaks' HELO to the sender.
const CLIENT_HELO: &str = "client.sender.interop.test";
const FROM: &str = "someone@sender.interop.test";

/// `relay.toml`: a recipient list, forwarding to `primary`.
fn relay_config(
    primary: SocketAddr,
    users: PathBuf,
) -> impl Fn(SocketAddr, SocketAddr, &Path) -> String {
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
             # Never asked: the primary is an IP literal, and with dsn =\n\
             # \"never\" no SPF is checked at ingress.\n\
             [dns]\n\
             resolver = \"127.0.0.1:9\"\n\
             \n\
             [delivery]\n\
             retry = [\"{RETRY}\"]\n\
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
             recipients = \"list\"\n\
             recipient_list = \"{users}\"\n",
            spool = spool.display(),
            users = users.display(),
        )
    }
}

/// `text` without the CR of each CRLF.
fn crlf_to_lf(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'\r' && text.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(text[i]);
        i += 1;
    }
    out
}

/// The part of a spool file after its magic line and envelope line, and
/// the envelope.
fn spooled_message(file: &[u8]) -> (Value, &[u8]) {
    let mut parts = file.splitn(3, |&b| b == b'\n');
    let magic = parts.next().unwrap_or_default();
    assert_eq!(
        magic, b"mxguard-spool 2",
        "a version 2 spool file (docs/spool.md)"
    );
    let envelope = parts.next().unwrap_or_default();
    let envelope: Value = serde_json::from_slice(envelope).unwrap_or_else(|e| {
        panic!(
            "the spool file's second line is its JSON envelope ({e}): {}",
            String::from_utf8_lossy(envelope)
        )
    });
    (envelope, parts.next().unwrap_or_default())
}

/// Header fields (LF line endings) split into whole fields, folded lines
/// kept with theirs. Panics on a line that is neither a field nor a
/// continuation.
fn split_fields(header: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in header.lines() {
        if line.starts_with([' ', '\t']) {
            let last = out
                .last_mut()
                .unwrap_or_else(|| panic!("a continuation line before any field: {header:?}"));
            last.push('\n');
            last.push_str(line);
        } else {
            assert!(
                line.split_once(':')
                    .is_some_and(|(n, _)| !n.is_empty() && !n.contains(' ')),
                "not a header field: {line:?} in {header:?}"
            );
            out.push(line.to_owned());
        }
    }
    out
}

/// The mxguard relay, down primary and all, between two real Postfixes:
/// mail sent while the primary is down is deferred, flushed by the probe
/// the moment the primary is back, and arrives byte for byte.
#[test]
fn postfix_to_relay_to_postfix_across_a_primary_outage() {
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
        "interop-forward",
        TEST,
        "the Postfix primary's and sender's files, maildirs and maillogs, relay.toml, \
         the relay's spool and stderr, spooled.eml, swaks transcripts",
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
    let users = dir.file("users");
    fs::write(&users, format!("# mxguard {TEST}\n{RECIPIENT}\n")).expect("writing users");
    let mut relay = Relay::start(
        &dir,
        TEST,
        RELAY_HOST,
        relay_config(primary.addr, users.clone()),
    );
    let sender = Postfix::start_on_free_port(
        &postfix,
        &dir,
        "sender",
        &Role::Sender {
            relayhost: relay.addr,
        },
        SENDER_HOST,
        Ipv4Addr::LOCALHOST,
        None,
    );

    // The primary goes down.
    primary.stop();
    assert!(
        smtp_banner(primary.addr).is_none(),
        "the primary at {} should be down",
        primary.addr
    );

    // A message into the sender; dot-stuffed lines, blank lines, trailing
    // blanks, 8-bit text and a tab must all come through both hops
    // unchanged.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let marker = format!("mxguard {TEST} message {nanos:x}");
    let body = format!(
        "{marker}\n\
         .a line that starts with a dot\n\
         ..and one with two\n\
         \n\
         trailing blanks   \n\
         8-bit: na\u{ef}ve caf\u{e9}\n\
         a\ttab, and the end"
    );
    let subject = format!("Subject: {TEST} {nanos:x}");
    let sent = swaks(
        &swaks_bin,
        &dir,
        "to-sender",
        sender.addr,
        CLIENT_HELO,
        FROM,
        RECIPIENT,
        &["--header", &subject, "--body", &body],
    );
    let ctx = &sent.transcript;
    assert_eq!(
        sent.code,
        Some(0),
        "the sender Postfix should take the message:\n{ctx}"
    );
    let sender_id = sent
        .queued_as()
        .unwrap_or_else(|| panic!("the sender's `250 ... queued as ID`:\n{ctx}"));

    // The sender hands it to the relay, which accepts it and, the primary
    // refusing connections, defers it.
    let accepted = wait_for(HANDOFF_WAIT, || {
        events(&relay.stderr(), "accepted")
            .first()
            .map(|l| l.to_string())
    })
    .unwrap_or_else(|| {
        panic!(
            "the relay should accept the message from the sender within {HANDOFF_WAIT:?}\n\
             relay stderr:\n{}\nsender maillog:\n{}",
            relay.stderr(),
            sender.maillog()
        )
    });
    let queue_id = accepted
        .split_once(" queue_id=")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("a queue_id in {accepted}"))
        .to_owned();
    assert!(
        accepted.contains(&format!("from=<{FROM}>"))
            && accepted.contains(&format!("rcpts=<{RECIPIENT}>")),
        "accepted from <{FROM}> for <{RECIPIENT}>: {accepted}"
    );
    let deferred = wait_for(HANDOFF_WAIT, || {
        events(&relay.stderr(), "delivery")
            .first()
            .map(|l| l.to_string())
    })
    .unwrap_or_else(|| {
        panic!(
            "the relay should try the primary at once and defer {queue_id}\nrelay stderr:\n{}",
            relay.stderr()
        )
    });
    let ctx = format!("relay stderr:\n{}", relay.stderr());
    assert!(
        deferred.contains(&format!("queue_id={queue_id} "))
            && deferred.contains(" outcome=\"deferred\" ")
            && deferred.contains(" attempt=1 "),
        "the first attempt, with the primary down, is deferred: {deferred}\n{ctx}"
    );
    assert!(
        relay
            .stderr()
            .lines()
            .any(|l| l.contains("destination unreachable") && l.contains(DOMAIN)),
        "the relay marks {DOMAIN} down and probes it\n{ctx}"
    );

    // What the relay will forward: its spool file, read while the primary
    // is down and nothing can have left.
    let spool_file = relay.spool.join("queue").join(&queue_id);
    let spooled = fs::read(&spool_file)
        .unwrap_or_else(|e| panic!("reading {}: {e}\n{ctx}", spool_file.display()));
    let _ = fs::write(dir.file("spooled.eml"), &spooled);
    let (envelope, forwarded) = spooled_message(&spooled);
    assert_eq!(envelope["id"], queue_id.as_str(), "{envelope}");
    assert_eq!(envelope["mail_from"], FROM, "{envelope}");
    assert_eq!(
        envelope["recipients"],
        serde_json::json!([RECIPIENT]),
        "{envelope}"
    );
    assert_eq!(envelope["client_helo"], SENDER_HOST, "{envelope}");
    assert_eq!(envelope["client_addr"], "127.0.0.1", "{envelope}");
    let forwarded_text = String::from_utf8_lossy(forwarded).into_owned();
    let ctx = format!("spooled message:\n{forwarded_text}");
    assert!(
        forwarded_text.starts_with(&format!("Received: from {SENDER_HOST} ([127.0.0.1])\r\n")),
        "the spooled message starts with the relay's Received header\n{ctx}"
    );
    let forwarded_lf = String::from_utf8_lossy(&crlf_to_lf(forwarded)).into_owned();
    let (spooled_header, _) = forwarded_lf
        .split_once("\n\n")
        .unwrap_or_else(|| panic!("no blank line after the header\n{ctx}"));
    let spooled_fields = split_fields(spooled_header);
    assert!(
        spooled_fields[0].contains(&format!(
            "by {RELAY_HOST} (mxguard) with ESMTP id {queue_id}"
        )) && spooled_fields[0].contains(&format!("for <{RECIPIENT}>")),
        "the relay's Received header: {:?}\n{ctx}",
        spooled_fields[0]
    );
    assert!(
        spooled_fields[1].starts_with(&format!("Received: from {CLIENT_HELO} "))
            && spooled_fields[1].contains(&format!(
                "by {SENDER_HOST} (Postfix) with ESMTP id {sender_id}"
            )),
        "then the sender Postfix's: {:?}\n{ctx}",
        spooled_fields[1]
    );
    assert!(
        spooled_fields.iter().any(|f| f == &subject),
        "swaks' {subject:?}\n{ctx}"
    );
    // After the two Received headers, exactly what swaks sent the sender
    // (as its transcript shows it): the sender Postfix added only its
    // Received header and the relay only its own.
    let swaks_data = sent.data_sent().unwrap_or_else(|| {
        panic!(
            "the message text in swaks' transcript:\n{}",
            sent.transcript
        )
    });
    assert!(
        String::from_utf8_lossy(&swaks_data)
            .contains(&format!("\r\n\r\n{}\r\n", body.replace('\n', "\r\n"))),
        "swaks sent the body, dot-stuffing undone: {:?}",
        String::from_utf8_lossy(&swaks_data)
    );
    assert!(
        forwarded.ends_with(&swaks_data),
        "the spooled message ends with exactly the message swaks sent:\n{}\n{ctx}",
        String::from_utf8_lossy(&swaks_data)
    );
    let received_crlf = format!(
        "{}\r\n{}\r\n",
        spooled_fields[0].replace('\n', "\r\n"),
        spooled_fields[1].replace('\n', "\r\n")
    );
    assert_eq!(
        String::from_utf8_lossy(&forwarded[..forwarded.len() - swaks_data.len()]),
        received_crlf,
        "before swaks' message, only the two Received headers\n{ctx}"
    );

    // The sender's log: handed to the relay, the relay's queue ID quoted.
    let handed = wait_for(MAILLOG_WAIT, || {
        sender
            .maillog()
            .lines()
            .find(|l| l.contains(&format!("{sender_id}: to=<{RECIPIENT}>")))
            .map(str::to_owned)
    })
    .unwrap_or_default();
    assert!(
        handed.contains(&format!("relay=127.0.0.1[127.0.0.1]:{}", relay.addr.port()))
            && handed.contains(&format!("status=sent (250 2.0.0 Ok: queued as {queue_id})")),
        "the sender Postfix delivered {sender_id} to the relay: {handed:?}\nsender maillog:\n{}",
        sender.maillog()
    );

    // The primary comes back; the relay's probe notices and flushes.
    let primary_log_before = primary.maillog().len();
    let back = Instant::now();
    primary.restart();
    let maildir = primary.layout.mail.join(DOMAIN).join("alice").join("new");
    // virtual(8) writes the file in the maildir's tmp/ and renames it
    // into new/: once there, it is complete.
    let arrived = wait_for(RECOVERY_WAIT, || {
        Some(files_under(&maildir)).filter(|f| !f.is_empty())
    })
    .unwrap_or_else(|| {
        panic!(
            "{queue_id} should reach the primary within {RECOVERY_WAIT:?} of its return \
             (probe_interval 500ms; the next retry is only due after {RETRY})\n\
             relay stderr:\n{}",
            relay.stderr()
        )
    });
    let took = back.elapsed();
    let primary_log = primary.maillog();
    let ctx = format!("primary maillog:\n{primary_log}");
    // Everything in every mailbox, tmp/ included.
    let delivered = files_under(&primary.layout.mail);
    assert!(
        arrived.len() == 1 && delivered == arrived,
        "exactly one message, in {}: {delivered:?}\n{ctx}",
        maildir.display()
    );
    eprintln!(
        "{TEST}: delivered {:?} after the primary's restart began",
        took
    );

    // Byte for byte: the mailbox file is the primary's own header fields,
    // then exactly what the relay spooled. Postfix's virtual(8) writes the
    // maildir file with LF line endings, so the spooled bytes are compared
    // after turning each CRLF into LF (the relay refuses bare CR and bare
    // LF, so nothing else can change).
    let mailbox = fs::read(&delivered[0]).expect("reading the delivered message");
    let expected_tail = crlf_to_lf(forwarded);
    let mailbox_text = String::from_utf8_lossy(&mailbox).into_owned();
    let ctx = format!(
        "delivered message {}:\n{mailbox_text}\nspooled message (CRLF as LF):\n{}",
        delivered[0].display(),
        String::from_utf8_lossy(&expected_tail)
    );
    assert!(
        mailbox.ends_with(&expected_tail),
        "the mailbox file ends with exactly the bytes the relay spooled\n{ctx}"
    );
    let added = String::from_utf8_lossy(&mailbox[..mailbox.len() - expected_tail.len()]);
    assert!(
        added.ends_with('\n'),
        "the primary's additions are whole lines: {added:?}\n{ctx}"
    );
    let added = split_fields(&added);
    let name = |f: &String| {
        f.split_once(':')
            .map(|(n, _)| n.to_owned())
            .unwrap_or_default()
    };
    assert_eq!(
        added.iter().map(name).collect::<Vec<_>>(),
        ["Return-Path", "X-Original-To", "Delivered-To", "Received"],
        "the primary adds only Return-Path, X-Original-To, Delivered-To and its \
         Received: {added:#?}\n{ctx}"
    );
    assert_eq!(added[0], format!("Return-Path: <{FROM}>"), "{ctx}");
    assert_eq!(added[1], format!("X-Original-To: {RECIPIENT}"), "{ctx}");
    assert_eq!(added[2], format!("Delivered-To: {RECIPIENT}"), "{ctx}");
    assert!(
        added[3].starts_with(&format!(
            "Received: from {RELAY_HOST} (unknown [127.0.0.1])"
        )) && added[3].contains(&format!("by {PRIMARY_HOST} (Postfix) with ESMTPS id "))
            && added[3].contains(&format!("for <{RECIPIENT}>")),
        "the primary's Received: from the relay, over TLS: {:?}\n{ctx}",
        added[3]
    );

    // The primary's log since its return: the relay's probe (EHLO, QUIT),
    // then its delivery over STARTTLS.
    let since = wait_for(MAILLOG_WAIT, || {
        let log = primary.maillog();
        let since = log.get(primary_log_before..).unwrap_or_default().to_owned();
        since
            .lines()
            .any(|l| l.contains("disconnect from") && l.contains(" data="))
            .then_some(since)
    })
    .unwrap_or_else(|| primary.maillog());
    let ctx = format!("primary maillog since the restart:\n{since}");
    let sessions: Vec<&str> = since
        .lines()
        .filter(|l| l.contains("disconnect from"))
        .collect();
    assert!(
        sessions
            .iter()
            .any(|s| s.contains(" ehlo=1 quit=1 commands=2")),
        "the relay's probe: EHLO, QUIT: {sessions:#?}\n{ctx}"
    );
    let deliveries: Vec<&&str> = sessions.iter().filter(|s| s.contains(" data=")).collect();
    assert!(
        deliveries.len() == 1
            && deliveries[0].contains(" ehlo=2 starttls=1 mail=1 rcpt=1 data=1 quit=1 "),
        "one delivery: EHLO, STARTTLS, EHLO, MAIL, RCPT, DATA, QUIT: {deliveries:#?}\n{ctx}"
    );
    assert!(
        since
            .lines()
            .any(|l| l.contains(&format!("to=<{RECIPIENT}>"))
                && l.contains("status=sent (delivered to maildir)")),
        "the primary delivered to {RECIPIENT}'s maildir\n{ctx}"
    );

    // The relay's log: accepted, deferred, delivered; then the spool is
    // empty.
    let done = wait_for(MAILLOG_WAIT, || {
        files_under(&relay.spool.join("queue"))
            .is_empty()
            .then_some(())
    });
    let status = relay.stop();
    let log = relay.stderr();
    let ctx = format!("relay stderr:\n{log}");
    assert!(
        status.success(),
        "mxguard relay should exit 0 on SIGTERM, got {status}\n{ctx}"
    );
    let deliveries = events(&log, "delivery");
    assert_eq!(
        deliveries.len(),
        2,
        "two attempts, deferred then delivered: {deliveries:#?}\n{ctx}"
    );
    assert_eq!(deliveries[0], deferred, "{ctx}");
    assert!(
        deliveries[1].contains(&format!("queue_id={queue_id} "))
            && deliveries[1].contains(&format!("rcpt=<{RECIPIENT}> "))
            && deliveries[1].contains(" outcome=\"delivered\" ")
            && deliveries[1].contains(" host=127.0.0.1 ")
            && deliveries[1].contains(" attempt=2 ")
            && deliveries[1].contains(" reply=250 2.0.0 Ok: queued as "),
        "the second attempt delivers: {}\n{ctx}",
        deliveries[1]
    );
    let accepted_at = log.find(&accepted).unwrap_or_default();
    let deferred_at = log.find(deferred.as_str()).unwrap_or_default();
    let delivered_at = log.find(deliveries[1]).unwrap_or_default();
    assert!(
        accepted_at < deferred_at && deferred_at < delivered_at,
        "accepted, then deferred, then delivered\n{ctx}"
    );
    assert!(
        done.is_some(),
        "the delivered message should leave the spool's queue/: {:?}",
        files_under(&relay.spool.join("queue"))
    );
    for sub in ["queue", "state"] {
        let left = files_under(&relay.spool.join(sub));
        assert!(
            left.is_empty(),
            "nothing left in the spool's {sub}/: {left:?}"
        );
    }

    drop(relay);
    drop(sender);
    drop(primary);
    drop(dir);
}
