//! Crash safety of `mxguard relay` (docs/spool.md, "The promise"): clients
//! stream messages while the relay process is killed with SIGKILL at random
//! moments and restarted on the same port and spool. Afterwards every
//! message that got `250 ... queued as ID` must be in the spool, byte for
//! byte, and no entry may be corrupt.
//!
//! `MXGUARD_CRASH_SEED=N` replays the same messages and kill delays (how
//! they interleave is up to the scheduler).

mod common;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::hash::{DefaultHasher, Hasher as _};
use std::io::{self, BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use mxguard_queue::{FsSpool, QueueId, Spool};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use common::Scratch;

/// Kill/restart cycles; each ends with a SIGKILL.
const CYCLES: usize = 30;
/// Concurrent client connections (they share the queue directory fsync).
const CLIENTS: usize = 3;
/// How long each relay run serves before it is killed.
const KILL_AFTER_MS: RangeInclusive<u64> = 20..=300;
/// Message sizes: half small, half large enough that kills land mid-DATA.
const SMALL: RangeInclusive<usize> = 300..=4 * 1024;
const LARGE: RangeInclusive<usize> = 4 * 1024 + 1..=200 * 1024;
/// Transactions per SMTP session before the client says QUIT.
const PER_SESSION: RangeInclusive<usize> = 1..=8;

/// The floor the run must reach to count as a real test.
const MIN_ACKED: usize = 40;
const MIN_KILLS_IN_DATA: usize = 5;

const HOSTNAME: &str = "backup.example.net";
const SENDER: &str = "sender@client.test";
const RCPT: &str = "user@example.com";

/// Longest wait for one reply or write. A live relay answers in
/// milliseconds and a killed one closes the connection, so reaching this
/// means the relay hung.
const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for `relay listening` after a start.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Starts tried per cycle before giving up.
const START_ATTEMPTS: usize = 5;

#[test]
fn every_acked_message_survives_sigkill_and_restart() {
    let began = Instant::now();
    let seed = std::env::var("MXGUARD_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("relay_crash: seed {seed} (MXGUARD_CRASH_SEED={seed} replays it)");

    let scratch = Scratch::new(
        "relay-crash",
        "relay_crash",
        "relay.toml, users, spool/ and one stderr log per relay run",
    );
    fs::write(scratch.file("users"), "@example.com\n").expect("writing users");
    let spool_dir = scratch.file("spool");
    let mut relays = Relays {
        dir: scratch.path.clone(),
        config: scratch.file("relay.toml"),
        logs: Vec::new(),
        restart_failures: Vec::new(),
    };
    let (first, addr) = relays.first_start(&spool_dir);

    let load = Load {
        addr,
        stop: AtomicBool::new(false),
        next_message: AtomicU64::new(0),
        in_data: AtomicUsize::new(0),
        log: Mutex::new(ClientLog::default()),
    };
    let mut killer = StdRng::seed_from_u64(seed ^ 0x6b69_6c6c);
    let mut cycles: Vec<Cycle> = Vec::new();

    thread::scope(|s| {
        // Stops the clients however this closure ends, before the scope
        // joins them.
        let _stop = StopOnDrop(&load.stop);
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let load = &load;
                let seed = seed.wrapping_add(i as u64 + 1);
                s.spawn(move || client(load, i, seed))
            })
            .collect();

        let mut started = Some(first);
        let mut acked_at_last_kill = 0;
        for cycle in 0..CYCLES {
            let (mut relay, log) = match started.take() {
                Some(first) => first,
                None => relays.start(&format!("relay-{cycle:02}")),
            };
            let recovery = recovery_line(&log)
                .unwrap_or_else(|| relays.fail(&format!("run {cycle}: no `spool opened` line")));
            if recovery.corrupt != 0 {
                relays.fail(&format!(
                    "run {cycle}: the restart found {} corrupt spool entries",
                    recovery.corrupt
                ));
            }
            if recovery.recovered < acked_at_last_kill {
                relays.fail(&format!(
                    "run {cycle}: recovered {} entries, but {acked_at_last_kill} messages had \
                     been answered 250 before the previous kill",
                    recovery.recovered
                ));
            }
            let acked_at_start = load.log().acked.len();
            let delay = killer.random_range(KILL_AFTER_MS);
            thread::sleep(Duration::from_millis(delay));
            if let Ok(Some(status)) = relay.child.try_wait() {
                relays.fail(&format!(
                    "run {cycle}: the relay exited by itself ({status})"
                ));
            }
            let in_data = load.in_data.load(SeqCst);
            // Every 250 read so far was sent before the kill.
            let acked: Vec<(u64, QueueId)> = load.log().acked.clone();
            relay.kill();
            // With the relay dead, what a restart will find: each of those
            // messages must have its file in queue/.
            let queued = queue_names(&spool_dir.join("queue"));
            let lost: Vec<String> = acked
                .iter()
                .filter(|(_, id)| !queued.contains(id.as_str()))
                .map(|(n, id)| format!("{} queued as {id}", message_id(*n)))
                .collect();
            if !lost.is_empty() {
                relays.fail(&format!(
                    "LOST at kill {cycle}: {} of the {} messages answered 250 so far have no \
                     file in queue/: {}",
                    lost.len(),
                    acked.len(),
                    lost.join(", ")
                ));
            }
            let acked_before_kill = acked.len();
            cycles.push(Cycle {
                delay,
                recovered: recovery.recovered,
                discarded_partial: recovery.discarded_partial,
                acked: acked_before_kill - acked_at_start,
                in_data,
            });
            acked_at_last_kill = acked_before_kill;
        }
        load.stop.store(true, SeqCst);
        for c in clients {
            if c.join().is_err() {
                relays.fail("a client thread panicked");
            }
        }
    });
    let log = load.log.into_inner().unwrap_or_else(|p| p.into_inner());
    let stressed = began.elapsed();

    // The relay logs: every run started cleanly and none hit an error.
    for path in &relays.logs {
        let text = fs::read_to_string(path).unwrap_or_default();
        for bad in ["panicked", " ERROR ", " WARN "] {
            if let Some(line) = text.lines().find(|l| l.contains(bad)) {
                relays.fail(&format!("{}: {line}", path.display()));
            }
        }
    }

    // The spool as the next start would find it.
    let (spool, recovery) = FsSpool::open(&spool_dir)
        .unwrap_or_else(|e| relays.fail(&format!("opening the spool after the last kill: {e}")));
    if recovery.corrupt != 0 {
        relays.fail(&format!(
            "the spool holds {} corrupt entries after the last kill ({recovery:?})",
            recovery.corrupt
        ));
    }
    let entries = spool
        .list()
        .unwrap_or_else(|e| relays.fail(&format!("listing the spool: {e}")));

    let mut acked_ids = HashSet::new();
    let mut acked_numbers = HashSet::new();
    for (number, id) in &log.acked {
        assert!(acked_ids.insert(id.clone()), "queue ID {id} acked twice");
        assert!(
            acked_numbers.insert(*number),
            "message {number} acked twice"
        );
        let (envelope, stored) = spool.read(id).unwrap_or_else(|e| {
            relays.fail(&format!(
                "LOST: {} was answered `250 ... queued as {id}` but cannot be read from the \
                 spool: {e}",
                message_id(*number)
            ))
        });
        let sent = &log.sent[number];
        if let Err(why) = check_entry(id, &envelope, &stored, sent) {
            relays.fail(&format!(
                "{} (queued as {id}) is not stored as sent: {why}",
                message_id(*number)
            ));
        }
    }

    // Entries that were never acked: only a message whose final dot was
    // sent but whose 250 was lost with the relay may be there, and only once.
    let mut unacked_present = 0;
    let mut stored_numbers = HashMap::new();
    for entry in &entries {
        let id = &entry.envelope.id;
        let (envelope, stored) = spool
            .read(id)
            .unwrap_or_else(|e| relays.fail(&format!("reading listed entry {id}: {e}")));
        let Some(number) = stored_number(&stored) else {
            relays.fail(&format!("entry {id} holds no Message-ID of this test"));
        };
        if let Some(other) = stored_numbers.insert(number, id.clone()) {
            relays.fail(&format!(
                "{} is queued twice: {other} and {id}",
                message_id(number)
            ));
        }
        if acked_ids.contains(id) {
            continue;
        }
        unacked_present += 1;
        if acked_numbers.contains(&number) {
            relays.fail(&format!(
                "{} was acked under another ID, yet {id} holds it too",
                message_id(number)
            ));
        }
        let Some(sent) = log.sent.get(&number) else {
            relays.fail(&format!(
                "entry {id} holds {}, whose final dot was never sent",
                message_id(number)
            ));
        };
        if let Err(why) = check_entry(id, &envelope, &stored, sent) {
            relays.fail(&format!(
                "unacked entry {id} ({}) is not stored as sent: {why}",
                message_id(number)
            ));
        }
    }
    assert_eq!(entries.len(), log.acked.len() + unacked_present);
    assert!(
        unacked_present <= log.cut_after_dot,
        "{unacked_present} unacked entries, but only {} transactions lost their reply",
        log.cut_after_dot
    );

    // Report.
    let mut report = String::new();
    let _ = writeln!(
        report,
        "relay_crash: cycle  serve(ms)  acked  in-DATA-at-kill  recovered-at-start  discarded-partial"
    );
    for (i, c) in cycles.iter().enumerate() {
        let _ = writeln!(
            report,
            "relay_crash: {i:5}  {:9}  {:5}  {:15}  {:18}  {:17}",
            c.delay, c.acked, c.in_data, c.recovered, c.discarded_partial
        );
    }
    let kills_in_data = cycles.iter().filter(|c| c.in_data > 0).count();
    let cycles_with_acks = cycles.iter().filter(|c| c.acked > 0).count();
    let discarded: usize =
        cycles.iter().map(|c| c.discarded_partial).sum::<usize>() + recovery.discarded_partial;
    let _ = writeln!(
        report,
        "relay_crash: {} cycles ({kills_in_data} killed with DATA in progress, {cycles_with_acks} \
         with acks), {} sessions, {} messages started, {} acked, {} cut before the final dot, {} \
         cut after it (reply lost), {unacked_present} unacked but present, {} in the spool, {} \
         partial entries discarded at restarts, {} restart retries; {:.1}s under load, {:.1}s in \
         all",
        cycles.len(),
        log.sessions,
        load.next_message.load(SeqCst),
        log.acked.len(),
        log.cut_before_dot,
        log.cut_after_dot,
        entries.len(),
        discarded,
        relays.restart_failures.len(),
        stressed.as_secs_f64(),
        began.elapsed().as_secs_f64(),
    );
    for f in &relays.restart_failures {
        let _ = writeln!(report, "relay_crash: restart retried: {f}");
    }
    let _ = io::stderr().write_all(report.as_bytes());

    assert!(
        log.unexpected.is_empty(),
        "the relay misbehaved while alive:\n{}",
        log.unexpected.join("\n")
    );
    assert!(
        log.acked.len() >= MIN_ACKED,
        "only {} messages acked (want {MIN_ACKED}): the test did not stress the relay",
        log.acked.len()
    );
    assert!(
        kills_in_data >= MIN_KILLS_IN_DATA,
        "only {kills_in_data} kills hit a DATA in progress (want {MIN_KILLS_IN_DATA})"
    );
    assert!(
        log.cut_before_dot > 0,
        "no kill landed in the middle of a transaction"
    );
}

/// One relay run, from its start to its SIGKILL.
#[derive(Debug)]
struct Cycle {
    /// How long it served.
    delay: u64,
    /// What its start-up recovery reported.
    recovered: usize,
    discarded_partial: usize,
    /// 250s the clients had read before the kill.
    acked: usize,
    /// Sessions between `354` and the reply to the final dot at the kill.
    in_data: usize,
}

// ---------------------------------------------------------------------------
// The relay process.

/// A running relay; killed (SIGKILL) and reaped when dropped.
struct Relay {
    child: Child,
    log: PathBuf,
}

impl Relay {
    /// SIGKILL (what `Child::kill` sends on Unix), then reap.
    fn kill(mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// Starts relays and keeps their logs for the failure report.
struct Relays {
    dir: PathBuf,
    config: PathBuf,
    logs: Vec<PathBuf>,
    /// Starts that did not get to `relay listening`, with why.
    restart_failures: Vec<String>,
}

impl Relays {
    /// Pick a free port, write the config, start the first relay. A port
    /// someone else took between the pick and the bind is picked again.
    fn first_start(&mut self, spool: &Path) -> ((Relay, String), SocketAddr) {
        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            let addr = free_port();
            self.write_config(addr, spool);
            let name = format!("relay-00-port{attempt}");
            let mut relay = self.spawn(&name);
            match wait_listening(&mut relay) {
                Ok(log) => return ((relay, log), addr),
                Err(why) => failures.push(format!("{name} on {addr}: {why}")),
            }
        }
        self.fail(&format!(
            "the relay never started:\n{}",
            failures.join("\n")
        ))
    }

    fn write_config(&self, addr: SocketAddr, spool: &Path) {
        // The primary is a port nothing listens on, so accepted mail stays
        // in the spool where the test counts it; no SPF (dsn = "never").
        let toml = format!(
            "hostname = \"{HOSTNAME}\"\n\
             [smtp]\n\
             listen = [\"{addr}\"]\n\
             [spool]\n\
             path = {spool:?}\n\
             [admin]\n\
             listen = \"127.0.0.1:0\"\n\
             [dns]\n\
             resolver = \"127.0.0.1:53\"\n\
             [delivery]\n\
             dsn = \"never\"\n\
             retry = [\"1h\"]\n\
             [[domains]]\n\
             name = \"example.com\"\n\
             primary = \"127.0.0.1:9\"\n\
             recipients = \"list\"\n\
             recipient_list = \"users\"\n",
            spool = spool.to_str().expect("utf-8 scratch path"),
        );
        fs::write(&self.config, toml).expect("writing relay.toml");
    }

    /// Start again on the same port and spool, retrying a start that does
    /// not get to listening.
    fn start(&mut self, name: &str) -> (Relay, String) {
        for attempt in 1..=START_ATTEMPTS {
            let run = if attempt == 1 {
                name.to_owned()
            } else {
                format!("{name}-try{attempt}")
            };
            let mut relay = self.spawn(&run);
            match wait_listening(&mut relay) {
                Ok(log) => return (relay, log),
                Err(why) => {
                    self.restart_failures.push(format!("{run}: {why}"));
                    drop(relay);
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
        self.fail(&format!(
            "{name}: the relay did not restart in {START_ATTEMPTS} attempts:\n{}",
            self.restart_failures.join("\n")
        ))
    }

    fn spawn(&mut self, name: &str) -> Relay {
        let log = self.dir.join(format!("{name}.stderr"));
        let stderr = fs::File::create(&log).expect("creating a relay log");
        let child = Command::new(env!("CARGO_BIN_EXE_mxguard"))
            .arg("relay")
            .arg("--config")
            .arg(&self.config)
            .env("MXGUARD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("starting mxguard relay");
        self.logs.push(log.clone());
        Relay { child, log }
    }

    /// Panic with `what` and the tails of the last relay logs.
    fn fail(&self, what: &str) -> ! {
        let mut tails = String::new();
        for path in self.logs.iter().rev().take(3).rev() {
            let text = fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let _ = writeln!(tails, "--- last lines of {}:", path.display());
            for l in &lines[lines.len().saturating_sub(20)..] {
                let _ = writeln!(tails, "{l}");
            }
        }
        panic!("{what}\n{tails}");
    }
}

/// The file names in `queue/`.
fn queue_names(queue: &Path) -> HashSet<String> {
    fs::read_dir(queue)
        .unwrap_or_else(|e| panic!("listing {}: {e}", queue.display()))
        .filter_map(|d| d.ok()?.file_name().into_string().ok())
        .collect()
}

/// A port nobody listens on right now.
fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    l.local_addr().expect("local address")
}

/// Wait until the relay logs `relay listening`; the log so far, or why not.
fn wait_listening(relay: &mut Relay) -> Result<String, String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let log = fs::read_to_string(&relay.log).unwrap_or_default();
        if log.contains("relay listening") {
            return Ok(log);
        }
        if let Ok(Some(status)) = relay.child.try_wait() {
            let log = fs::read_to_string(&relay.log).unwrap_or_default();
            return Err(format!("exited ({status}): {}", log.trim_end()));
        }
        if Instant::now() > deadline {
            return Err(format!("no `relay listening` within {START_TIMEOUT:?}"));
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// The counts of the relay's `spool opened` line.
#[derive(Debug)]
struct Recovery {
    recovered: usize,
    discarded_partial: usize,
    corrupt: usize,
}

fn recovery_line(log: &str) -> Option<Recovery> {
    let line = log
        .lines()
        .find(|l| l.contains("spool opened") && l.contains("recovered="))?;
    let field = |key: &str| -> Option<usize> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
    };
    Some(Recovery {
        recovered: field("recovered=")?,
        discarded_partial: field("discarded_partial=")?,
        corrupt: field("corrupt=")?,
    })
}

// ---------------------------------------------------------------------------
// The clients.

/// What the clients share with the killer.
struct Load {
    addr: SocketAddr,
    stop: AtomicBool,
    /// The next message number (`<crash-N@test>`).
    next_message: AtomicU64,
    /// Sessions between `354` and the reply to the final dot.
    in_data: AtomicUsize,
    log: Mutex<ClientLog>,
}

impl Load {
    fn log(&self) -> MutexGuard<'_, ClientLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug, Default)]
struct ClientLog {
    /// (message number, queue ID) of every 250 to DATA.
    acked: Vec<(u64, QueueId)>,
    /// Every message whose final dot was written, by number: what the spool
    /// must hold after the Received header.
    sent: HashMap<u64, Fingerprint>,
    sessions: usize,
    /// Transactions cut off before the final dot was written: at MAIL,
    /// RCPT, DATA or in the middle of the text.
    cut_before_dot: usize,
    /// Transactions whose final dot was written but whose reply never came.
    cut_after_dot: usize,
    /// What a live relay must not do: a refusal, a garbled reply, a hang.
    unexpected: Vec<String>,
}

/// The length and hash of a message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    len: usize,
    hash: u64,
}

fn fingerprint(bytes: &[u8]) -> Fingerprint {
    let mut h = DefaultHasher::new();
    h.write(bytes);
    Fingerprint {
        len: bytes.len(),
        hash: h.finish(),
    }
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

/// Counts a session in `Load::in_data` while it lives.
struct InData<'a>(&'a AtomicUsize);

impl<'a> InData<'a> {
    fn enter(gauge: &'a AtomicUsize) -> InData<'a> {
        gauge.fetch_add(1, SeqCst);
        InData(gauge)
    }
}

impl Drop for InData<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// How far the current transaction got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Between transactions.
    Idle,
    /// MAIL sent; the final dot not yet written.
    BeforeDot,
    /// The final dot written; no reply yet.
    AfterDot,
}

/// Why a session ended early.
enum Cut {
    /// The connection broke: what a kill does.
    Broken,
    /// Something a live relay must not do.
    Unexpected(String),
}

impl From<io::Error> for Cut {
    fn from(e: io::Error) -> Cut {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                Cut::Unexpected(format!("no answer within {IO_TIMEOUT:?}: {e}"))
            }
            _ => Cut::Broken,
        }
    }
}

/// One client: sessions of a few transactions each, reconnecting after
/// every cut until told to stop.
fn client(load: &Load, index: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    while !load.stop.load(SeqCst) {
        let Ok(stream) = TcpStream::connect_timeout(&load.addr, Duration::from_secs(1)) else {
            // The relay is down; it comes back shortly.
            thread::sleep(Duration::from_millis(5));
            continue;
        };
        load.log().sessions += 1;
        let mut stage = Stage::Idle;
        if let Err(cut) = session(load, index, &mut rng, stream, &mut stage) {
            let mut log = load.log();
            match stage {
                Stage::Idle => {}
                Stage::BeforeDot => log.cut_before_dot += 1,
                Stage::AfterDot => log.cut_after_dot += 1,
            }
            match cut {
                Cut::Broken => {}
                Cut::Unexpected(why) => log.unexpected.push(format!("client {index}: {why}")),
            }
        }
    }
}

fn session(
    load: &Load,
    index: usize,
    rng: &mut StdRng,
    stream: TcpStream,
    stage: &mut Stage,
) -> Result<(), Cut> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut w = stream;
    let banner = expect(&mut reader, 220, "the banner")?;
    if !banner.contains(HOSTNAME) {
        return Err(Cut::Unexpected(format!(
            "not our relay on {}: {banner:?}",
            load.addr
        )));
    }
    w.write_all(format!("EHLO client{index}.test\r\n").as_bytes())?;
    expect(&mut reader, 250, "EHLO")?;
    for _ in 0..rng.random_range(PER_SESSION) {
        if load.stop.load(SeqCst) {
            break;
        }
        let number = load.next_message.fetch_add(1, SeqCst);
        let message = make_message(number, rng);
        let wire = dot_stuff(&message);
        *stage = Stage::BeforeDot;
        w.write_all(format!("MAIL FROM:<{SENDER}> BODY=8BITMIME\r\n").as_bytes())?;
        expect(&mut reader, 250, "MAIL")?;
        w.write_all(format!("RCPT TO:<{RCPT}>\r\n").as_bytes())?;
        expect(&mut reader, 250, "RCPT")?;
        w.write_all(b"DATA\r\n")?;
        expect(&mut reader, 354, "DATA")?;
        let _in_data = InData::enter(&load.in_data);
        w.write_all(&wire)?;
        load.log().sent.insert(number, fingerprint(&message));
        *stage = Stage::AfterDot;
        let (code, text) = reply(&mut reader)?;
        let id = text
            .trim_end()
            .rsplit_once("queued as ")
            .and_then(|(_, id)| id.parse::<QueueId>().ok());
        let (250, Some(id)) = (code, id) else {
            return Err(Cut::Unexpected(format!(
                "{}: end of DATA answered {text:?}",
                message_id(number)
            )));
        };
        load.log().acked.push((number, id));
        *stage = Stage::Idle;
    }
    w.write_all(b"QUIT\r\n")?;
    expect(&mut reader, 221, "QUIT")?;
    Ok(())
}

/// One whole reply: its code and its text, lines and CRLFs included.
fn reply(r: &mut BufReader<TcpStream>) -> Result<(u16, String), Cut> {
    let mut text = String::new();
    loop {
        let mut line = Vec::new();
        r.read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\r\n") {
            // End of stream, at a line boundary or inside a line.
            return Err(Cut::Broken);
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        let code = line.get(..3).and_then(|c| c.parse::<u16>().ok());
        text.push_str(&line);
        match (code, line.as_bytes().get(3)) {
            (Some(code), Some(b' ')) => return Ok((code, text)),
            (Some(_), Some(b'-')) => {}
            _ => return Err(Cut::Unexpected(format!("garbled reply {text:?}"))),
        }
    }
}

fn expect(r: &mut BufReader<TcpStream>, want: u16, what: &str) -> Result<String, Cut> {
    let (code, text) = reply(r)?;
    if code == want {
        Ok(text)
    } else {
        Err(Cut::Unexpected(format!(
            "{what}: expected {want}, got {text:?}"
        )))
    }
}

fn message_id(number: u64) -> String {
    format!("<crash-{number}@test>")
}

/// A message of random size: headers with a unique Message-ID, then lines
/// of printable ASCII, 8-bit bytes, empty lines and lines that start with
/// dots (which the client must stuff and the relay unstuff). Every line,
/// the last one too, ends with CRLF; none is longer than the relay's
/// 2048-octet limit.
fn make_message(number: u64, rng: &mut StdRng) -> Vec<u8> {
    let size = if rng.random_bool(0.5) {
        rng.random_range(SMALL)
    } else {
        rng.random_range(LARGE)
    };
    let mut m = format!(
        "From: <{SENDER}>\r\n\
         To: <{RCPT}>\r\n\
         Subject: crash test message {number}\r\n\
         Message-ID: {}\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n",
        message_id(number)
    )
    .into_bytes();
    let mut noise = [0u8; 1000];
    while m.len() < size {
        match rng.random_range(0..24) {
            0 => m.push(b'.'),
            1 => m.extend_from_slice(b".."),
            2 => m.extend_from_slice(b". a line that starts with a dot"),
            3 => {}
            4 => {
                // 8-bit text, BODY=8BITMIME: any octet but CR, LF and NUL.
                let n = rng.random_range(1..=200);
                rng.fill_bytes(&mut noise[..n]);
                m.extend(noise[..n].iter().map(|b| b | 0x80));
            }
            _ => {
                let n = rng.random_range(1..=noise.len());
                rng.fill_bytes(&mut noise[..n]);
                m.extend(noise[..n].iter().map(|b| b' ' + b % 95));
            }
        }
        m.extend_from_slice(b"\r\n");
    }
    m
}

/// The DATA text on the wire: leading dots doubled, then the final dot.
fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 32 + 3);
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// The message number in a stored entry's Message-ID header.
fn stored_number(stored: &[u8]) -> Option<u64> {
    let key = b"\r\nMessage-ID: <crash-";
    let at = stored.windows(key.len()).position(|w| w == key)? + key.len();
    let digits: Vec<u8> = stored[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// A stored entry is the relay's Received header followed by exactly the
/// unstuffed text the client sent, under the envelope the client gave.
fn check_entry(
    id: &QueueId,
    envelope: &mxguard_queue::Envelope,
    stored: &[u8],
    sent: &Fingerprint,
) -> Result<(), String> {
    if envelope.id != *id {
        return Err(format!("envelope ID {}", envelope.id));
    }
    if envelope.mail_from != SENDER || envelope.recipients != [RCPT] {
        return Err(format!(
            "envelope from {:?} to {:?}",
            envelope.mail_from, envelope.recipients
        ));
    }
    let Some(split) = stored.len().checked_sub(sent.len) else {
        return Err(format!("{} bytes stored, {} sent", stored.len(), sent.len));
    };
    let (received, text) = stored.split_at(split);
    if fingerprint(text) != *sent {
        return Err(format!(
            "the last {} bytes differ from the {} sent",
            text.len(),
            sent.len
        ));
    }
    let received = String::from_utf8_lossy(received);
    let one_header = received.starts_with("Received: from client")
        && received.ends_with("\r\n")
        && received
            .trim_end_matches("\r\n")
            .split("\r\n")
            .skip(1)
            .all(|l| l.starts_with('\t'));
    if !one_header || !received.contains(&format!(" id {id}")) {
        return Err(format!(
            "what precedes the sent text is not the relay's Received header: {received:?}"
        ));
    }
    Ok(())
}
