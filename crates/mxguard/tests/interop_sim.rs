//! Fidelity of `mxguard simulate`'s Postfix model against real Postfix (as
//! packaged by Debian), with its backoff scaled from minutes to seconds.
//!
//! The fixture: a lab MX on 127.0.0.1 that answers every connection with
//! `421 4.3.2` (the server is up but refuses mail: to Postfix the same
//! transient failure as a refused connection, with the same timing) until
//! the outage ends, then takes the message; and a Postfix sender with
//! `relayhost` pointing at it and
//!
//! ```text
//! queue_run_delay = 1s, minimal_backoff_time = 2s, maximal_backoff_time = 8s
//! ```
//!
//! The test hands one message to the sender's smtpd and records, at the lab
//! MX, when each attempt starts and ends. It then asks the simulator — the
//! same `mxguard-sim` code `mxguard simulate` runs, with a profile of those
//! parameters — two questions:
//!
//! - attempt by attempt: given when Postfix's previous attempt ended, when
//!   is the next one due? Postfix counts in whole seconds (the message's
//!   arrival second, the second an attempt ends) and scans its deferred
//!   queue every second, so the stated tolerance is that window: each
//!   attempt starts between 0.1 s before the predicted second and 1.25 s
//!   after it.
//! - the whole outage: how many attempts fail, and when is the message
//!   delivered? Within one attempt, and within one maximal backoff (8 s) —
//!   the whole-second rounding of the arrival can shift the sequence.
//!
//! Hermetic: everything on 127.0.0.1, the sender's only next hop is the
//! lab MX (an IP literal), no DNS. Needs root and `postfix`; without them
//! the test prints a `SKIP` line and passes, unless `MXGUARD_INTEROP=1`.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::postfix::{Postfix, Role};
use common::{Scratch, find_program, is_root, set_mode, skip_or_fail};

const TEST: &str = "interop_sim";
/// How long the lab MX refuses mail, from the message's arrival.
const OUTAGE: f64 = 33.0;
/// The backoff the sender runs with, and the same as a simulator profile.
const POSTFIX_TUNING: &str = "queue_run_delay = 1s\n\
    minimal_backoff_time = 2s\n\
    maximal_backoff_time = 8s\n\
    maximal_queue_lifetime = 1h\n\
    bounce_queue_lifetime = 1h\n\
    smtp_connection_cache_on_demand = no\n";
const PROFILE: &str = r#"
[[profile]]
id = "postfix-seconds"
name = "Postfix with minimal_backoff_time = 2s, maximal_backoff_time = 8s, queue_run_delay = 1s"
lifetime = "1h"
[profile.retry]
kind = "backoff"
min = "2s"
max = "8s"
queue_run = "1s"
"#;

fn epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One connection the lab MX saw, in seconds since the epoch.
#[derive(Debug, Clone)]
struct Attempt {
    start: f64,
    end: f64,
    delivered: bool,
}

/// The lab MX: `421` until `open_at` (seconds since the epoch; `None`: not
/// yet known, so refuse), then a minimal SMTP server that takes mail.
struct LabMx {
    addr: SocketAddr,
    open_at: Arc<Mutex<Option<f64>>>,
    seen: Arc<Mutex<Vec<Attempt>>>,
}

impl LabMx {
    fn start() -> LabMx {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding the lab MX");
        let addr = listener.local_addr().unwrap();
        let open_at = Arc::new(Mutex::new(None::<f64>));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (open, log) = (open_at.clone(), seen.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let start = epoch(SystemTime::now());
                let open_now = open.lock().unwrap().is_some_and(|t| start >= t);
                let delivered = if open_now {
                    take_mail(stream)
                } else {
                    refuse(stream);
                    false
                };
                log.lock().unwrap().push(Attempt {
                    start,
                    end: epoch(SystemTime::now()),
                    delivered,
                });
            }
        });
        LabMx {
            addr,
            open_at,
            seen,
        }
    }

    fn attempts(&self) -> Vec<Attempt> {
        self.seen.lock().unwrap().clone()
    }
}

/// `421` at the greeting, then wait for the client to hang up.
fn refuse(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    let _ = stream.write_all(b"421 4.3.2 mxguard lab: down for the fidelity test\r\n");
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
        line.clear();
    }
}

/// Just enough SMTP to take one message; true when it got one.
fn take_mail(stream: TcpStream) -> bool {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut w = stream.try_clone().expect("cloning the stream");
    let mut r = BufReader::new(stream);
    let mut got = false;
    let _ = w.write_all(b"220 lab-mx.interop.test ESMTP\r\n");
    let mut line = String::new();
    loop {
        line.clear();
        if !matches!(r.read_line(&mut line), Ok(n) if n > 0) {
            return got;
        }
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" | "HELO" => b"250 lab-mx.interop.test\r\n",
            "DATA" => {
                let _ = w.write_all(b"354 go ahead\r\n");
                let mut body = String::new();
                loop {
                    body.clear();
                    if !matches!(r.read_line(&mut body), Ok(n) if n > 0) {
                        return got;
                    }
                    if body == ".\r\n" {
                        break;
                    }
                }
                got = true;
                b"250 2.0.0 taken\r\n"
            }
            "QUIT" => {
                let _ = w.write_all(b"221 2.0.0 bye\r\n");
                return got;
            }
            _ => b"250 2.0.0 ok\r\n",
        };
        let _ = w.write_all(reply);
    }
}

/// One SMTP command and its (last) reply line.
fn cmd(w: &mut TcpStream, r: &mut BufReader<TcpStream>, line: &str) -> String {
    if !line.is_empty() {
        w.write_all(line.as_bytes()).unwrap();
        w.write_all(b"\r\n").unwrap();
    }
    let mut reply = String::new();
    loop {
        reply.clear();
        r.read_line(&mut reply).expect("a reply from Postfix");
        if reply.as_bytes().get(3) != Some(&b'-') {
            return reply.trim_end().to_owned();
        }
    }
}

/// Submits the message and returns when, in seconds since the epoch, its
/// MAIL command went out (Postfix's arrival time).
fn submit(addr: SocketAddr) -> f64 {
    let stream = TcpStream::connect(addr).expect("connecting to the sender's smtpd");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    assert!(cmd(&mut w, &mut r, "").starts_with("220"));
    assert!(cmd(&mut w, &mut r, "EHLO client.interop.test").starts_with("250"));
    // Start the transaction early in a second, so that Postfix's
    // whole-second arrival time is the second we record.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    std::thread::sleep(
        Duration::from_millis(1020) - Duration::from_nanos(u64::from(now.subsec_nanos())),
    );
    let arrival = epoch(SystemTime::now());
    for (line, want) in [
        ("MAIL FROM:<alice@sender.interop.test>", "250"),
        ("RCPT TO:<bob@remote.interop.test>", "250"),
        ("DATA", "354"),
        (
            "Subject: mxguard fidelity test\r\n\r\nRetried on a scaled-down schedule.\r\n.",
            "250",
        ),
        ("QUIT", "221"),
    ] {
        let reply = cmd(&mut w, &mut r, line);
        assert!(reply.starts_with(want), "{line}: {reply}");
    }
    arrival
}

#[test]
fn postfix_retries_when_the_simulator_says() {
    let Some(postfix) = find_program("postfix") else {
        skip_or_fail(
            TEST,
            "postfix not found in /usr/sbin or PATH (apt-get install postfix)",
        );
        return;
    };
    if !is_root() {
        skip_or_fail(TEST, "not root: a private Postfix instance needs root");
        return;
    }
    let profile = mxguard_sim::parse_profiles(PROFILE, "the test's profile")
        .expect("profile")
        .remove(0);
    let dir = Scratch::new(
        "interop-sim",
        TEST,
        "the sender Postfix's configuration, queue and maillog",
    );
    set_mode(&dir.path, 0o755);
    let lab = LabMx::start();
    let sender = Postfix::start_tuned(
        &postfix,
        &dir,
        "sender",
        &Role::Sender {
            relayhost: lab.addr,
        },
        "sender.interop.test",
        Ipv4Addr::LOCALHOST,
        None,
        POSTFIX_TUNING,
    );

    let arrival = submit(sender.addr);
    let c0 = arrival.floor();
    *lab.open_at.lock().unwrap() = Some(arrival + OUTAGE);

    // Wait for the delivery.
    let deadline = Instant::now() + Duration::from_secs_f64(OUTAGE + 40.0);
    while !lab.attempts().iter().any(|a| a.delivered) {
        assert!(
            Instant::now() < deadline,
            "Postfix did not deliver within {}s; attempts seen: {:?}\n{}",
            OUTAGE + 40.0,
            lab.attempts(),
            sender.maillog()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let attempts = lab.attempts();
    let failed = attempts.iter().filter(|a| !a.delivered).count();
    let rel = |t: f64| t - c0;

    // Attempt by attempt.
    let mut report = format!(
        "{TEST}: Postfix 3 with {}; the lab MX refuses for {OUTAGE} s\n  n  start(s)  predicted  error(s)\n",
        POSTFIX_TUNING
            .lines()
            .take(3)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut bad = Vec::new();
    report.push_str(&format!(
        "  0  {:8.3}  {:9}  {:+8.3}\n",
        rel(attempts[0].start),
        0,
        rel(attempts[0].start)
    ));
    if !(0.0..1.5).contains(&rel(attempts[0].start)) {
        bad.push(format!(
            "the first attempt came {:.3} s after arrival",
            rel(attempts[0].start)
        ));
    }
    for n in 1..attempts.len() {
        let observed = rel(attempts[n].start);
        // The age Postfix computes at the failure: whole seconds, from the
        // arrival second to the second the attempt ended (a few ms after
        // our end of it, which may fall in the next second).
        let candidates: Vec<u64> = [attempts[n - 1].end, attempts[n - 1].end + 0.05]
            .iter()
            .map(|e| (e.floor() - c0) as u64)
            .collect();
        let predicted: Vec<u64> = candidates
            .iter()
            .map(|&age| {
                profile
                    .retry
                    .next_after(age)
                    .expect("a memoryless schedule")
            })
            .collect();
        let fits = predicted
            .iter()
            .any(|&p| observed >= p as f64 - 0.1 && observed <= p as f64 + 1.25);
        report.push_str(&format!(
            "{n:3}  {observed:8.3}  {:9}  {:+8.3}{}\n",
            predicted[0],
            observed - predicted[0] as f64,
            if attempts[n].delivered {
                "  delivered"
            } else {
                ""
            }
        ));
        if !fits {
            bad.push(format!(
                "attempt {n} at {observed:.3} s; the simulator says second {predicted:?} (tolerance -0.1 s .. +1.25 s)"
            ));
        }
    }

    // The whole outage, as `mxguard simulate` would show it.
    let recovery = (arrival + OUTAGE - c0).ceil() as u64;
    let sim = mxguard_sim::simulate(&profile, 0, Some(recovery));
    let delivered = rel(attempts.iter().find(|a| a.delivered).unwrap().start);
    let sim_delivered = sim.delivered_at.expect("the simulator delivers");
    report.push_str(&format!(
        "  whole outage: {failed} failed attempts (simulator {}), delivered at {delivered:.3} s (simulator {sim_delivered} s)\n",
        sim.attempts.len()
    ));
    let _ = writeln!(std::io::stderr(), "{report}");
    if failed.abs_diff(sim.attempts.len()) > 1 {
        bad.push(format!(
            "{failed} failed attempts; the simulator predicts {}",
            sim.attempts.len()
        ));
    }
    if (delivered - sim_delivered as f64).abs() > 8.0 {
        bad.push(format!(
            "delivered at {delivered:.3} s; the simulator predicts {sim_delivered} s (tolerance 8 s)"
        ));
    }
    assert!(
        bad.is_empty(),
        "{}\n{report}\n{}",
        bad.join("\n"),
        sender.maillog()
    );
}
