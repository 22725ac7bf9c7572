//! Interop: mxguard probes real Postfix servers, as packaged by Debian, rather
//! than the lab's scripted SMTP hosts.
//!
//! The fixture is two Postfix instances, each with its own configuration
//! directory, queue, data directory and log, all in a fresh temporary
//! directory, each listening on its own `/32` alias of `lo` (127.0.X.1 and
//! 127.0.X.2, X picked at random in 200..250 among the /24s nobody uses)
//! and both on the same port, since `mxguard check --smtp-port` applies one
//! port to every MX address:
//!
//! - `mx1`, a strict primary: the final destination of its domains
//!   (`virtual_mailbox_domains` + `virtual_mailbox_maps`), so an unknown user
//!   gets `550 5.1.1` at RCPT; relaying elsewhere is denied (`554 5.7.1`).
//! - `mx2`, a careless backup: `relay_domains` for one domain with an empty
//!   `relay_recipient_maps`, so it takes RCPT for any user there and would
//!   bounce later (backscatter); relaying to other domains is still denied.
//!
//! Both offer STARTTLS with a certificate from a CA made for the run. The
//! zones come from the in-process lab DNS server on 127.0.0.1. Everything is
//! hermetic: no DNS from Postfix, IP-literal next hops, an `error:` default
//! transport, and nothing listens or is asked anywhere but 127.0.0.0/8.
//!
//! Needs root (for the `lo` aliases and Postfix itself) and the `postfix`
//! package; the fixture self-test also needs `swaks`. Without them each test
//! prints a `SKIP` line and passes, unless `MXGUARD_INTEROP=1` is set (as
//! `.ci/run` does): then it fails.

mod common;

use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::postfix::{Layout, PORT_ATTEMPTS, Postfix, Role, StartError};
use common::{
    Run, Scratch, find_program, is_root, must_pass, path_str, run, run_mxguard_json, set_mode,
    skip_or_fail,
};
use mxguard_lab::{LabCa, LabDns, ZoneSet};
use serde_json::Value;

/// How long one `mxguard check` run may take before the test gives up.
const CHECK_DEADLINE: Duration = Duration::from_secs(120);
/// How long one swaks dialogue may take.
const SWAKS_DEADLINE: Duration = Duration::from_secs(30);

/// The domain with a careless backup: MX 10 strict primary, MX 20 backup.
const LIABILITY: &str = "liability.interop.test";
/// The domain with only the strict primary.
const SOLO: &str = "solo.interop.test";
const MX1: &str = "mx1.interop.test";
const MX2: &str = "mx2.interop.test";
/// Mailboxes the strict primary knows, at each of its domains.
const USERS: [&str; 3] = ["postmaster", "alice", "bob"];

/// What the Postfix tests need: the programs, and root.
struct Tools {
    postfix: PathBuf,
    ip: PathBuf,
}

fn tools(test: &str) -> Option<Tools> {
    let (Some(postfix), Some(ip)) = (find_program("postfix"), find_program("ip")) else {
        skip_or_fail(
            test,
            "postfix or ip not found in /usr/sbin or PATH (apt-get install postfix iproute2)",
        );
        return None;
    };
    if !is_root() {
        skip_or_fail(
            test,
            "not root: Postfix and the lo address aliases need root",
        );
        return None;
    }
    Some(Tools { postfix, ip })
}

/// A random number without a `rand` dependency: std's hasher keys are
/// random per process and per `RandomState`.
fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

/// A scratch directory that Postfix's unprivileged processes can walk into.
fn scratch(tag: &str) -> Scratch {
    let dir = Scratch::new(
        &format!("interop-postfix-{tag}"),
        "interop_postfix",
        "Postfix configurations, maillogs, mxguard output",
    );
    set_mode(&dir.path, 0o755);
    dir
}

/// `/32` aliases this test added to `lo`; exactly those are removed on drop.
struct LoAliases {
    ip: PathBuf,
    added: Vec<Ipv4Addr>,
}

impl LoAliases {
    /// Add 127.0.X.1 .. 127.0.X.count for a random X in 200..250 whose /24
    /// has no address on `lo` yet. A failed `ip addr add` (another test took
    /// the address meanwhile) moves on to another X.
    fn add(ip: &Path, count: u8) -> LoAliases {
        let mut aliases = LoAliases {
            ip: ip.to_path_buf(),
            added: Vec::new(),
        };
        for _ in 0..40 {
            let octet = 200 + (random_u64() % 50) as u8;
            let shown = must_pass(ip, &["-o", "addr", "show", "dev", "lo"]);
            let shown = String::from_utf8_lossy(&shown.stdout);
            if shown.contains(&format!("inet 127.0.{octet}.")) {
                continue;
            }
            let mut all = true;
            for host in 1..=count {
                let addr = Ipv4Addr::new(127, 0, octet, host);
                let cidr = format!("{addr}/32");
                if run(ip, &["addr", "add", &cidr, "dev", "lo"])
                    .status
                    .success()
                {
                    aliases.added.push(addr);
                } else {
                    all = false;
                    break;
                }
            }
            if all {
                return aliases;
            }
            aliases.remove_all();
        }
        panic!("could not add {count} fresh /32 aliases on lo in 127.0.200-249.0/24");
    }

    fn get(&self, i: usize) -> Ipv4Addr {
        self.added[i]
    }

    fn remove_all(&mut self) {
        for addr in self.added.drain(..) {
            let cidr = format!("{addr}/32");
            let out = run(&self.ip, &["addr", "del", &cidr, "dev", "lo"]);
            if !out.status.success() {
                eprintln!(
                    "interop_postfix: could not remove {cidr} from lo: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

impl Drop for LoAliases {
    fn drop(&mut self) {
        self.remove_all();
    }
}

/// A port that both aliases can bind, at the moment of asking.
fn free_port(a: Ipv4Addr, b: Ipv4Addr) -> u16 {
    for _ in 0..50 {
        let first = TcpListener::bind((a, 0)).expect("binding a TCP socket on the alias");
        let port = first.local_addr().expect("local address").port();
        if TcpListener::bind((b, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on both {a} and {b}");
}

/// The two Postfix instances, their addresses and the CA behind their
/// certificates. Fields drop in order: servers, then aliases, then files.
struct Fixture {
    strict: Postfix,
    backup: Postfix,
    port: u16,
    ca_file: PathBuf,
    aliases: LoAliases,
    dir: Scratch,
}

impl Fixture {
    fn start(tools: &Tools, tag: &str) -> Fixture {
        let dir = scratch(tag);
        let aliases = LoAliases::add(&tools.ip, 2);
        let (ip1, ip2) = (aliases.get(0), aliases.get(1));
        let ca = LabCa::new().expect("making a lab CA");
        let ca_file = dir.file("lab-ca.pem");
        fs::write(&ca_file, ca.cert_pem()).expect("writing lab-ca.pem");

        for _ in 0..PORT_ATTEMPTS {
            let port = free_port(ip1, ip2);
            let strict_role = Role::Strict {
                domains: vec![LIABILITY, SOLO],
                users: USERS.to_vec(),
            };
            let backup_role = Role::CarelessBackup {
                domains: vec![LIABILITY],
                primary: ip1,
            };
            let strict_layout = Layout::new(&dir, "strict");
            strict_layout.write(&strict_role, MX1, ip1, port, Some(&ca));
            let backup_layout = Layout::new(&dir, "backup");
            backup_layout.write(&backup_role, MX2, ip2, port, Some(&ca));

            let strict = match Postfix::start(
                &tools.postfix,
                strict_layout,
                SocketAddr::from((ip1, port)),
            ) {
                Ok(s) => s,
                Err(StartError::PortTaken) => continue,
                Err(StartError::Other(why)) => panic!("starting the strict Postfix: {why}"),
            };
            let backup = match Postfix::start(
                &tools.postfix,
                backup_layout,
                SocketAddr::from((ip2, port)),
            ) {
                Ok(s) => s,
                Err(StartError::PortTaken) => {
                    drop(strict);
                    continue;
                }
                Err(StartError::Other(why)) => panic!("starting the backup Postfix: {why}"),
            };
            return Fixture {
                strict,
                backup,
                port,
                ca_file,
                aliases,
                dir,
            };
        }
        panic!("Postfix could not bind a port on {ip1} and {ip2} in {PORT_ATTEMPTS} attempts");
    }

    /// The zones: `liability` with the careless backup, `solo` without.
    fn zones(&self) -> String {
        let (ip1, ip2) = (self.aliases.get(0), self.aliases.get(1));
        format!(
            "{LIABILITY} MX 10 {MX1}\n\
             {LIABILITY} MX 20 {MX2}\n\
             {SOLO} MX 10 {MX1}\n\
             {MX1} A {ip1}\n\
             {MX2} A {ip2}\n\
             {ip1} PTR {MX1}\n\
             {ip2} PTR {MX2}\n\
             {ip1} ASN 64500\n\
             {ip2} ASN 64501\n"
        )
    }
}

/// Does `mxguard check --help` list this option?
fn check_has_option(option: &str) -> bool {
    let out = Command::new(env!("CARGO_BIN_EXE_mxguard"))
        .args(["check", "--help"])
        .stdin(Stdio::null())
        .output()
        .expect("running mxguard check --help");
    String::from_utf8_lossy(&out.stdout)
        .split(|c: char| c.is_whitespace() || c == ',' || c == '=')
        .any(|word| word == option)
}

/// Run `mxguard check` against the fixture, JSON out, with a deadline.
fn mxguard_check(fx: &Fixture, resolver: SocketAddr, domain: &str) -> Run {
    let args: Vec<String> = [
        "check",
        "--resolver",
        &resolver.to_string(),
        "--smtp-port",
        &fx.port.to_string(),
        "--allow-private",
        "--format",
        "json",
        "--timeout",
        "10",
        // Trust the run's CA; otherwise the certificates are from an
        // unknown issuer.
        "--ca-file",
        path_str(&fx.ca_file),
        domain,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    run_mxguard_json(&args, &fx.dir.path, domain, CHECK_DEADLINE)
}

/// Reading the findings of a run's report.
impl Run {
    fn findings(&self) -> Vec<&Value> {
        self.json["findings"]
            .as_array()
            .map(|all| all.iter().collect())
            .unwrap_or_default()
    }

    fn findings_with(&self, id: &str) -> Vec<&Value> {
        self.findings()
            .into_iter()
            .filter(|f| f["id"] == id)
            .collect()
    }
}

/// mxguard, run against real Postfix: the careless backup is a liability
/// (backscatter), the strict primary alone is fine.
#[test]
fn judges_real_postfix_backup() {
    const TEST: &str = "interop_postfix";
    let Some(tools) = tools(TEST) else {
        return;
    };
    assert!(
        check_has_option("--smtp-port"),
        "`mxguard check --help` does not list --smtp-port: the SMTP probe this test \
         drives is not in the binary yet"
    );
    let fx = Fixture::start(&tools, "check");
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let zones = ZoneSet::parse(&fx.zones()).expect("zone text");
    // The server runs on the runtime's worker threads while this thread
    // waits for mxguard.
    let dns = runtime
        .block_on(LabDns::start(Ipv4Addr::LOCALHOST.into(), &zones))
        .expect("starting the lab DNS server");
    let resolver = dns.addr();

    // (a) MX 10 strict primary, MX 20 careless backup.
    let a = mxguard_check(&fx, resolver, LIABILITY);
    let ctx = a.context();
    assert!(a.json.is_object(), "one domain gives one object:\n{ctx}");
    let backscatter = a.findings_with("backscatter-risk");
    assert!(
        backscatter.iter().any(|f| f["host"] == MX2),
        "the backup {MX2} takes RCPT for any user at {LIABILITY} (Postfix \
         relay_domains without relay_recipient_maps): expected backscatter-risk \
         with host {MX2}\n{ctx}"
    );
    assert!(
        backscatter.iter().all(|f| f["host"] != MX1),
        "the strict primary {MX1} rejects unknown users with 550 5.1.1: no \
         backscatter-risk for it\n{ctx}"
    );
    assert_eq!(
        a.json["verdict"]["backup_mx"], "liability",
        "a backscattering backup is a liability\n{ctx}"
    );
    assert!(
        a.findings_with("open-relay").is_empty(),
        "both Postfix instances refuse relaying (554 5.7.1): no open-relay\n{ctx}"
    );

    // (b) only the strict primary.
    let b = mxguard_check(&fx, resolver, SOLO);
    let ctx = b.context();
    assert!(b.json.is_object(), "one domain gives one object:\n{ctx}");
    let bad: Vec<&Value> = b
        .findings()
        .into_iter()
        .filter(|f| f["severity"] == "warning" || f["severity"] == "critical")
        .collect();
    assert!(
        bad.is_empty(),
        "a strict primary alone should raise nothing at warning or above; got \
         {bad:#?}\n{ctx}"
    );
    assert_eq!(b.code, Some(0), "no warnings, so exit 0\n{ctx}");
    assert_eq!(
        b.json["verdict"]["backup_mx"], "not-needed",
        "no backup MX\n{ctx}"
    );
    assert!(
        b.json["mx"][0]["addresses"][0]["smtp"].is_object(),
        "the primary's address was probed: mx[0].addresses[0].smtp should be an object\n{ctx}"
    );

    drop(dns);
    drop(runtime);
    drop(fx);
}

/// One swaks dialogue up to RCPT: the reply to RCPT TO, and the transcript.
fn swaks_rcpt(swaks: &Path, server: SocketAddr, from_ip: Ipv4Addr, to: &str) -> (String, String) {
    let server_arg = server.to_string();
    let from_arg = from_ip.to_string();
    let args = [
        "--server",
        server_arg.as_str(),
        "--local-interface",
        from_arg.as_str(),
        "--helo",
        "probe.interop.test",
        "--from",
        "sender@example.org",
        "--to",
        to,
        "--quit-after",
        "RCPT",
        "--timeout",
        "10",
        "--hide-informational",
    ];
    let mut child = Command::new(swaks)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", swaks.display()));
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
    // swaks writes ` -> RCPT TO:<...>`, then the reply as `<-  250 ...`
    // (accepted) or `<** 550 ...` (an error reply).
    let mut lines = transcript.lines();
    let reply = lines
        .by_ref()
        .find(|l| l.trim_start().starts_with("-> RCPT TO:"))
        .and_then(|_| lines.next())
        .and_then(|l| l.strip_prefix("<-").or_else(|| l.strip_prefix("<**")))
        .map(|r| r.trim().to_owned())
        .unwrap_or_default();
    (reply, transcript)
}

/// The fixture behaves as claimed, by swaks, independent of mxguard.
#[test]
fn postfix_fixture_behaves_as_claimed() {
    const TEST: &str = "interop_postfix (fixture)";
    let Some(tools) = tools(TEST) else {
        return;
    };
    let Some(swaks) = find_program("swaks") else {
        skip_or_fail(TEST, "swaks not found in PATH (apt-get install swaks)");
        return;
    };
    let fx = Fixture::start(&tools, "swaks");
    let (strict, backup) = (fx.strict.addr, fx.backup.addr);
    let localhost = Ipv4Addr::LOCALHOST;

    let cases: [(&str, SocketAddr, String, &str); 6] = [
        (
            "strict primary, known user",
            strict,
            format!("postmaster@{LIABILITY}"),
            "250 2.1.5",
        ),
        (
            "strict primary, known user at the second domain",
            strict,
            format!("alice@{SOLO}"),
            "250 2.1.5",
        ),
        (
            "strict primary, unknown user",
            strict,
            format!("nosuchuser@{LIABILITY}"),
            "550 5.1.1",
        ),
        (
            "strict primary, relay to a third party",
            strict,
            "someone@example.net".to_owned(),
            "554 5.7.1",
        ),
        (
            "careless backup, unknown user",
            backup,
            format!("nosuchuser@{LIABILITY}"),
            "250 2.1.5",
        ),
        (
            "careless backup, relay to a third party",
            backup,
            "someone@example.net".to_owned(),
            "554 5.7.1",
        ),
    ];
    let mut failures = Vec::new();
    for (what, server, to, want) in &cases {
        let (reply, transcript) = swaks_rcpt(&swaks, *server, localhost, to);
        if !reply.starts_with(want) {
            failures.push(format!(
                "{what}: RCPT TO:<{to}> at {server} should get {want}, got {reply:?}\n{transcript}"
            ));
        }
    }
    // The backup relays only its own domain: a domain the strict primary
    // serves but the backup does not list is refused too.
    let (reply, transcript) = swaks_rcpt(&swaks, backup, localhost, &format!("alice@{SOLO}"));
    if !reply.starts_with('5') {
        failures.push(format!(
            "careless backup, a domain it does not back up: expected 5xx, got {reply:?}\n{transcript}"
        ));
    }
    // Both offer STARTTLS (swaks here may lack TLS support; EHLO shows it).
    for server in [strict, backup] {
        let (_, transcript) = swaks_rcpt(&swaks, server, localhost, &format!("bob@{LIABILITY}"));
        if !transcript.contains("250-STARTTLS") && !transcript.contains("250 STARTTLS") {
            failures.push(format!("{server} does not offer STARTTLS\n{transcript}"));
        }
    }
    assert!(
        failures.is_empty(),
        "the Postfix fixture misbehaves:\n\n{}",
        failures.join("\n\n")
    );
    drop(fx);
}
