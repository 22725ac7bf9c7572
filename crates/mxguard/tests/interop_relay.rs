//! Interop: `mxguard relay`, the backup MX daemon, between real peers — a
//! real Postfix (as packaged by Debian) as the primary it calls out to, and
//! real `swaks` as the sending client — rather than the crate's in-memory
//! tests.
//!
//! The fixture, all in a fresh temporary directory:
//!
//! - a strict Postfix primary on 127.0.0.1 and a free port: the final
//!   destination of [`DOMAIN`] (`virtual_mailbox_domains` +
//!   `virtual_mailbox_maps`, mailboxes [`USERS`]), so an unknown user gets
//!   `550 5.1.1` at RCPT; it offers STARTTLS, as a real primary would;
//! - the `mxguard` binary running `relay --config relay.toml`: hostname
//!   [`RELAY_HOST`], SMTP on 127.0.0.1 and another free port, its spool in
//!   the directory, one `[[domains]]` entry for [`DOMAIN`] with
//!   `recipients = "callout"` and `primary = "127.0.0.1:<postfix port>"`.
//!
//! swaks then sends: (a) a message to a known user, which must be queued —
//! and is then read back from the spool with `mxguard_queue`; (b) to an
//! unknown user, refused at RCPT with `550 5.1.1` from the callout; (c) to
//! a domain the relay does not serve, refused with `550 5.7.1` without
//! asking the primary. The primary's own log must show exactly the two
//! callouts, each EHLO, MAIL, RCPT, RSET, QUIT and never DATA, and nothing
//! delivered. With the primary stopped, (d) a never-seen recipient gets
//! `451 4.3.0` while the known user (and the unknown one) keep the cached
//! answers. The relay's log must have the mail events with their reasons.
//!
//! Hermetic: no `lo` aliases, nothing listens or is asked anywhere but
//! 127.0.0.1, Postfix has no DNS and an `error:` default transport, and the
//! relay's primary is an IP literal.
//!
//! Needs root (Postfix), `postfix` and `swaks`. Without them the test
//! prints a `SKIP` line and passes, unless `MXGUARD_INTEROP=1` is set (as
//! `.ci/run` does): then it fails.

mod common;

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::postfix::{PORT_ATTEMPTS, Postfix, Role};
use common::{Scratch, find_program, is_root, send_signal, set_mode, skip_or_fail, smtp_banner};
use mxguard_lab::LabCa;
use mxguard_queue::{FsSpool, QueueId, Recovery, Spool as _};

const TEST: &str = "interop_relay";

/// How long the relay gets to answer with its banner.
const RELAY_READY: Duration = Duration::from_secs(10);
/// How long the relay gets to exit after SIGTERM.
const RELAY_STOP: Duration = Duration::from_secs(10);
/// How long one swaks dialogue may take.
const SWAKS_DEADLINE: Duration = Duration::from_secs(20);
/// How long Postfix's log gets to show a finished session (postlogd writes
/// it a moment after the fact).
const MAILLOG_WAIT: Duration = Duration::from_secs(5);

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

/// A port on 127.0.0.1 that is free at the moment of asking.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("binding a TCP socket on 127.0.0.1")
        .port()
}

/// A running `mxguard relay`; killed, if still running, when dropped, its
/// log printed if the test is failing.
struct Relay {
    child: Child,
    addr: SocketAddr,
    spool: PathBuf,
    stderr_path: PathBuf,
}

impl Relay {
    /// Write `relay.toml` for the callout to `primary` and start the
    /// relay on a free port; another port if that one is taken meanwhile.
    fn start(dir: &Scratch, primary: SocketAddr) -> Relay {
        let spool = dir.file("spool");
        let config_path = dir.file("relay.toml");
        let stderr_path = dir.file("relay.stderr");
        for _ in 0..PORT_ATTEMPTS {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
            // Not bound by the relay yet; a port of its own all the same,
            // since tests run in parallel.
            let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
            let config = format!(
                "# mxguard interop_relay: generated\n\
                 hostname = \"{RELAY_HOST}\"\n\
                 \n\
                 [smtp]\n\
                 listen = [\"{addr}\"]\n\
                 \n\
                 [spool]\n\
                 path = \"{spool}\"\n\
                 \n\
                 [admin]\n\
                 listen = \"{admin}\"\n\
                 \n\
                 # Never asked (the primary is an IP literal); set so that a\n\
                 # stray lookup could not leave the machine.\n\
                 [dns]\n\
                 resolver = \"127.0.0.1:9\"\n\
                 \n\
                 [callout]\n\
                 timeout = \"5s\"\n\
                 \n\
                 [[domains]]\n\
                 name = \"{DOMAIN}\"\n\
                 primary = \"{primary}\"\n\
                 recipients = \"callout\"\n",
                spool = spool.display(),
            );
            fs::write(&config_path, config).expect("writing relay.toml");
            let mut child = Command::new(env!("CARGO_BIN_EXE_mxguard"))
                .arg("relay")
                .arg("--config")
                .arg(&config_path)
                .env("MXGUARD_LOG", "info")
                .stdin(Stdio::null())
                .stdout(fs::File::create(dir.file("relay.stdout")).expect("relay.stdout"))
                .stderr(fs::File::create(&stderr_path).expect("relay.stderr"))
                .spawn()
                .expect("starting mxguard relay");
            let deadline = Instant::now() + RELAY_READY;
            loop {
                if let Some(status) = child.try_wait().expect("waiting for mxguard relay") {
                    let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
                    if stderr.contains("cannot listen on") {
                        break;
                    }
                    panic!("mxguard relay --config {config_path:?} exited ({status}):\n{stderr}");
                }
                if smtp_banner(addr).is_some_and(|b| b.starts_with(&format!("220 {RELAY_HOST} "))) {
                    return Relay {
                        child,
                        addr,
                        spool,
                        stderr_path,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "mxguard relay gave no banner on {addr} within {RELAY_READY:?}; stderr:\n{}",
                        fs::read_to_string(&stderr_path).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("mxguard relay could not bind a port on 127.0.0.1 in {PORT_ATTEMPTS} attempts");
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// SIGTERM, and wait for the exit.
    fn stop(&mut self) -> ExitStatus {
        send_signal(self.child.id(), "TERM");
        let deadline = Instant::now() + RELAY_STOP;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for mxguard relay") {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "mxguard relay did not exit within {RELAY_STOP:?} of SIGTERM; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "{TEST}: mxguard relay ({}) stderr {}:\n{}",
                self.addr,
                self.stderr_path.display(),
                self.stderr()
            );
        }
    }
}

/// One swaks run: its exit code and transcript.
struct Swaks {
    code: Option<i32>,
    transcript: String,
}

impl Swaks {
    /// The server's reply to the first client line starting with `sent`
    /// (`RCPT TO:`, `DATA`, `.` for the end of the message), without the
    /// `<-  ` or `<** ` swaks puts before it.
    fn reply_to(&self, sent: &str) -> Option<&str> {
        let mut lines = self.transcript.lines();
        lines
            .by_ref()
            .find(|l| {
                l.trim_start()
                    .strip_prefix("->")
                    .is_some_and(|c| c.trim_start().starts_with(sent))
            })
            .and_then(|_| lines.next())
            .and_then(|l| l.strip_prefix("<-").or_else(|| l.strip_prefix("<**")))
            .map(str::trim)
    }

    /// Did the client send a line starting with `sent`?
    fn sent(&self, sent: &str) -> bool {
        self.transcript.lines().any(|l| {
            l.trim_start()
                .strip_prefix("->")
                .is_some_and(|c| c.trim_start().starts_with(sent))
        })
    }
}

/// Run swaks against `server` for one recipient, with `extra` options; the
/// transcript is also kept in `dir/swaks-{tag}.txt`.
fn swaks(
    program: &Path,
    dir: &Scratch,
    tag: &str,
    server: SocketAddr,
    to: &str,
    extra: &[&str],
) -> Swaks {
    let server_arg = server.to_string();
    let mut args = vec![
        "--server",
        server_arg.as_str(),
        "--helo",
        CLIENT_HELO,
        "--from",
        SENDER,
        "--to",
        to,
        "--timeout",
        "10",
    ];
    args.extend_from_slice(extra);
    let mut child = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
    let deadline = Instant::now() + SWAKS_DEADLINE;
    while child.try_wait().expect("waiting for swaks").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("swaks {} took over {SWAKS_DEADLINE:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("swaks output");
    let transcript = format!(
        "swaks {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = fs::write(dir.file(&format!("swaks-{tag}.txt")), &transcript);
    Swaks {
        code: out.status.code(),
        transcript,
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

/// Regular files anywhere under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The relay's mail-event log lines of one event (`accepted`, `rejected`).
fn events<'a>(log: &'a str, event: &str) -> Vec<&'a str> {
    let key = format!("event=\"{event}\"");
    log.lines()
        .filter(|l| l.contains("mxguard::mail") && l.contains(&key))
        .collect()
}

/// `mxguard relay` calls out to a real Postfix primary and serves a real
/// swaks: accepts and spools mail for a known user, refuses unknown users
/// and foreign domains at RCPT, never sends the primary DATA, and keeps its
/// answers while the primary is down.
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
        "the Postfix primary's files and maillog, relay.toml, the relay's spool and \
         stderr, swaks transcripts",
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
    let mut relay = Relay::start(&dir, primary.addr);
    let known = format!("{KNOWN_USER}@{DOMAIN}");
    let unknown = format!("{UNKNOWN_USER}@{DOMAIN}");
    let never_seen = format!("{NEVER_SEEN_USER}@{DOMAIN}");
    let foreign = format!("someone@{FOREIGN}");
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let body = format!("mxguard interop_relay test message {nanos:x}");
    let sw =
        |tag: &str, to: &str, extra: &[&str]| swaks(&swaks_bin, &dir, tag, relay.addr, to, extra);

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
    let queued = a.reply_to(".").unwrap_or_default();
    let queue_id = queued
        .strip_prefix("250 ")
        .and_then(|r| r.split_once("queued as "))
        .map(|(_, id)| id.trim().to_owned())
        .unwrap_or_else(|| {
            panic!("the end of DATA should get `250 ... queued as ID`, got {queued:?}\n{ctx}")
        });
    let queue_id: QueueId = queue_id
        .parse()
        .unwrap_or_else(|e| panic!("{queue_id:?} in {queued:?} is no queue ID ({e:?})\n{ctx}"));

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

    // The primary saw exactly the two callouts, never DATA, delivered nothing.
    let sessions = rcpt_sessions(&primary, 2);
    let maillog = primary.maillog();
    let ctx = format!("primary maillog:\n{maillog}");
    assert_eq!(
        sessions.len(),
        2,
        "the primary should see one callout for {known} and one for {unknown}, none \
         for {foreign}: {sessions:#?}\n{ctx}"
    );
    for s in &sessions {
        assert!(
            s.contains(" ehlo=1 mail=1 rcpt=") && s.contains(" rset=1 quit=1 "),
            "a callout is EHLO, MAIL, RCPT, RSET, QUIT: {s}\n{ctx}"
        );
        assert!(
            !s.contains("data="),
            "a callout never sends DATA: {s}\n{ctx}"
        );
    }
    assert!(
        sessions.iter().any(|s| s.contains(" rcpt=1 ")),
        "the callout for {known} got its RCPT accepted\n{ctx}"
    );
    assert!(
        sessions.iter().any(|s| s.contains(" rcpt=0/1 ")),
        "the callout for {unknown} got its RCPT refused\n{ctx}"
    );
    assert!(
        maillog.lines().any(|l| l.contains("NOQUEUE: reject: RCPT")
            && l.contains("550 5.1.1")
            && l.contains("from=<>")
            && l.contains(&format!("to=<{unknown}>"))),
        "the primary refused the callout for {unknown} (MAIL FROM:<>) with 550 5.1.1\n{ctx}"
    );
    assert!(
        !maillog.contains("/cleanup[") && !maillog.contains("status=sent"),
        "nothing should reach the primary's queue or mailboxes\n{ctx}"
    );
    let delivered = files_under(&primary.layout.mail);
    assert!(
        delivered.is_empty(),
        "nothing should be delivered at the primary: {delivered:?}\n{ctx}"
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

    // Stopped, the primary has logged everything: still the two callouts.
    let sessions = rcpt_sessions(&primary, 2);
    assert_eq!(
        sessions.len(),
        2,
        "no callouts but the two for {known} and {unknown}: {sessions:#?}\nprimary maillog:\n{}",
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

    // The spool holds the message, as mxguard_queue reads it.
    let (spool, recovery) = FsSpool::open(&relay.spool).expect("opening the relay's spool");
    assert_eq!(
        recovery,
        Recovery {
            recovered: 1,
            discarded_partial: 0,
            corrupt: 0
        },
        "the spool should hold exactly the one message"
    );
    let listed = spool.list().expect("listing the spool");
    assert!(
        listed.len() == 1 && listed[0].envelope.id == queue_id,
        "the spool lists only {queue_id}: {listed:#?}"
    );
    let (envelope, message) = spool.read(&queue_id).expect("reading the queued message");
    assert_eq!(envelope.id, queue_id);
    assert_eq!(envelope.mail_from, SENDER, "{envelope:#?}");
    assert_eq!(envelope.recipients, vec![known.clone()], "{envelope:#?}");
    assert_eq!(envelope.client_helo, CLIENT_HELO, "{envelope:#?}");
    assert_eq!(envelope.client_addr, Ipv4Addr::LOCALHOST, "{envelope:#?}");
    assert!(!envelope.tls, "swaks did not use STARTTLS: {envelope:#?}");
    let text = String::from_utf8_lossy(&message);
    let ctx = format!("queued message:\n{text}");
    // The relay's Received header: the first field, with its folded lines.
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    assert!(
        first.starts_with(&format!("Received: from {CLIENT_HELO} ([127.0.0.1])")),
        "the message starts with the relay's Received header\n{ctx}"
    );
    let received: Vec<&str> = std::iter::once(first)
        .chain(lines.take_while(|l| l.starts_with([' ', '\t'])))
        .collect();
    let received = received.join("\r\n");
    assert!(
        received.contains(&format!("by {RELAY_HOST} "))
            && received.contains(&format!("id {queue_id}"))
            && received.contains(&format!("for <{known}>")),
        "the Received header names the relay ({RELAY_HOST}), the queue ID and the \
         recipient: {received:?}\n{ctx}"
    );
    let rest = &text[received.len()..];
    let (headers, sent_body) = rest
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no blank line between header and body\n{ctx}"));
    assert!(
        headers.contains(&format!("\r\n{subject}\r\n"))
            && headers.contains(&format!("To: {known}")),
        "swaks' own header fields follow the Received header\n{ctx}"
    );
    assert!(
        sent_body.contains(&body),
        "the body swaks sent ({body:?}) is in the queued message\n{ctx}"
    );

    drop(relay);
    drop(primary);
    drop(dir);
}
