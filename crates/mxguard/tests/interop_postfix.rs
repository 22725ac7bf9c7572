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
use std::io::{BufRead, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Run, Scratch, find_program, run_mxguard_json, skip_or_fail};
use mxguard_lab::{LabCa, LabDns, ZoneSet};
use serde_json::Value;

/// How long a Postfix instance gets to answer with its banner.
const POSTFIX_READY: Duration = Duration::from_secs(20);
/// How long `postfix stop` gets before the master is killed.
const POSTFIX_STOP: Duration = Duration::from_secs(10);
/// How long one `mxguard check` run may take before the test gives up.
const CHECK_DEADLINE: Duration = Duration::from_secs(120);
/// How long one swaks dialogue may take.
const SWAKS_DEADLINE: Duration = Duration::from_secs(30);
/// Fresh ports tried when Postfix cannot bind the one picked.
const PORT_ATTEMPTS: usize = 5;

/// The domain with a careless backup: MX 10 strict primary, MX 20 backup.
const LIABILITY: &str = "liability.interop.test";
/// The domain with only the strict primary.
const SOLO: &str = "solo.interop.test";
const MX1: &str = "mx1.interop.test";
const MX2: &str = "mx2.interop.test";
/// Mailboxes the strict primary knows, at each of its domains.
const USERS: [&str; 3] = ["postmaster", "alice", "bob"];
/// The uid and gid that own the virtual mailboxes (`nobody`).
const VMAIL_ID: u32 = 65534;

/// Effective uid 0, from `/proc/self/status` (no libc in this crate).
fn is_root() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

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

/// Run a program to completion, output captured.
fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()))
}

fn describe(program: &Path, args: &[&str], out: &Output) -> String {
    format!(
        "{} {} ({}):\n{}{}",
        program.display(),
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Run a program; panic with its output unless it succeeds.
fn must_pass(program: &Path, args: &[&str]) -> Output {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "failed: {}",
        describe(program, args, &out)
    );
    out
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

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
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

/// What a Postfix instance is for.
enum Role {
    /// Final destination for these domains, rejecting unknown users.
    Strict { domains: Vec<&'static str> },
    /// Relays these domains to `primary` with no recipient list.
    CarelessBackup {
        domains: Vec<&'static str>,
        primary: Ipv4Addr,
    },
}

/// `master.cf`: the services a small MTA needs, none chrooted (the queue
/// directory holds no copy of /etc), smtpd on `port` of `inet_interfaces`.
fn master_cf(port: u16) -> String {
    format!(
        "# mxguard interop_postfix: generated\n\
         {port:<9} inet  n       -       n       -       -       smtpd\n\
         pickup    unix  n       -       n       60      1       pickup\n\
         cleanup   unix  n       -       n       -       0       cleanup\n\
         qmgr      unix  n       -       n       300     1       qmgr\n\
         tlsmgr    unix  -       -       n       1000?   1       tlsmgr\n\
         rewrite   unix  -       -       n       -       -       trivial-rewrite\n\
         bounce    unix  -       -       n       -       0       bounce\n\
         defer     unix  -       -       n       -       0       bounce\n\
         trace     unix  -       -       n       -       0       bounce\n\
         verify    unix  -       -       n       -       1       verify\n\
         flush     unix  n       -       n       1000?   0       flush\n\
         proxymap  unix  -       -       n       -       -       proxymap\n\
         proxywrite unix -       -       n       -       1       proxymap\n\
         smtp      unix  -       -       n       -       -       smtp\n\
         relay     unix  -       -       n       -       -       smtp\n\
         showq     unix  n       -       n       -       -       showq\n\
         error     unix  -       -       n       -       -       error\n\
         retry     unix  -       -       n       -       -       error\n\
         discard   unix  -       -       n       -       -       discard\n\
         local     unix  -       n       n       -       -       local\n\
         virtual   unix  -       n       n       -       -       virtual\n\
         anvil     unix  -       -       n       -       1       anvil\n\
         scache    unix  -       -       n       -       1       scache\n\
         postlog   unix-dgram n  -       n       -       1       postlogd\n"
    )
}

/// One Postfix instance's files, all under `base`.
struct Layout {
    name: &'static str,
    base: PathBuf,
    conf: PathBuf,
    queue: PathBuf,
    data: PathBuf,
    mail: PathBuf,
    maillog: PathBuf,
}

impl Layout {
    fn new(dir: &Scratch, name: &'static str) -> Layout {
        let base = dir.file(name);
        Layout {
            name,
            conf: base.join("conf"),
            queue: base.join("queue"),
            data: base.join("data"),
            mail: base.join("mail"),
            maillog: base.join("maillog"),
            base,
        }
    }

    /// Write `main.cf`, `master.cf`, the lookup tables and the TLS files.
    fn write(&self, role: &Role, hostname: &str, ip: Ipv4Addr, port: u16, ca: &LabCa) {
        for d in [&self.base, &self.conf, &self.queue] {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
            set_mode(d, 0o755);
        }
        // data_directory is created by `postfix check`, owned by postfix.
        let cert = ca.issue(&[hostname]).expect("issuing a lab certificate");
        let key_file = self.conf.join("key.pem");
        let chain_file = self.conf.join("chain.pem");
        fs::write(&key_file, cert.key_pem()).expect("writing key.pem");
        set_mode(&key_file, 0o600);
        fs::write(&chain_file, cert.cert_pem()).expect("writing chain.pem");

        let main = format!(
            "# mxguard interop_postfix: generated; instance {name}\n\
             compatibility_level = 3.6\n\
             queue_directory = {queue}\n\
             data_directory = {data}\n\
             maillog_file = {maillog}\n\
             maillog_file_prefixes = {base}\n\
             syslog_name = mxguard-interop-{name}\n\
             myhostname = {hostname}\n\
             mydomain = interop.test\n\
             myorigin = $myhostname\n\
             mydestination =\n\
             inet_interfaces = {ip}\n\
             inet_protocols = ipv4\n\
             # Not the client: mxguard and swaks arrive from 127.0.0.1 or the alias.\n\
             mynetworks = 192.0.2.1/32\n\
             smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n\
             smtpd_banner = $myhostname ESMTP\n\
             # Hermetic: no DNS, no delivery off this machine.\n\
             smtpd_peername_lookup = no\n\
             smtp_dns_support_level = disabled\n\
             relayhost =\n\
             default_transport = error:5.7.1 mxguard interop: no outbound mail\n\
             local_transport = error:5.1.1 mxguard interop: no local delivery\n\
             alias_maps =\n\
             alias_database =\n\
             local_recipient_maps =\n\
             biff = no\n\
             smtpd_tls_security_level = may\n\
             smtpd_tls_chain_files = {key}, {chain}\n\
             smtpd_tls_loglevel = 1\n\
             smtp_tls_security_level = none\n",
            name = self.name,
            queue = self.queue.display(),
            data = self.data.display(),
            maillog = self.maillog.display(),
            base = self.base.display(),
            key = key_file.display(),
            chain = chain_file.display(),
        );
        let role_cf = match role {
            Role::Strict { domains } => {
                fs::create_dir_all(&self.mail).expect("creating the mailbox base");
                std::os::unix::fs::chown(&self.mail, Some(VMAIL_ID), Some(VMAIL_ID))
                    .expect("chown of the mailbox base");
                let mut table = String::new();
                for domain in domains {
                    for user in USERS {
                        table.push_str(&format!("{user}@{domain} {domain}/{user}/\n"));
                    }
                }
                let vmailbox = self.conf.join("vmailbox");
                fs::write(&vmailbox, table).expect("writing vmailbox");
                format!(
                    "# Final destination; unknown users get 550 5.1.1 at RCPT.\n\
                     virtual_mailbox_domains = {domains}\n\
                     virtual_mailbox_maps = texthash:{vmailbox}\n\
                     virtual_mailbox_base = {mail}\n\
                     virtual_uid_maps = static:{VMAIL_ID}\n\
                     virtual_gid_maps = static:{VMAIL_ID}\n",
                    domains = domains.join(" "),
                    vmailbox = vmailbox.display(),
                    mail = self.mail.display(),
                )
            }
            Role::CarelessBackup { domains, primary } => {
                let mut table = String::new();
                for domain in domains {
                    table.push_str(&format!("{domain} relay:[{primary}]:{port}\n"));
                }
                let transport = self.conf.join("transport");
                fs::write(&transport, table).expect("writing transport");
                format!(
                    "# A backup MX with no recipient list: any user is accepted.\n\
                     relay_domains = {domains}\n\
                     relay_recipient_maps =\n\
                     transport_maps = texthash:{transport}\n",
                    domains = domains.join(" "),
                    transport = transport.display(),
                )
            }
        };
        fs::write(self.conf.join("main.cf"), main + &role_cf).expect("writing main.cf");
        fs::write(self.conf.join("master.cf"), master_cf(port)).expect("writing master.cf");
    }
}

/// A running Postfix instance; stopped (`postfix stop`, then `abort`, then
/// SIGKILL to the master) when dropped.
struct Postfix {
    postfix: PathBuf,
    layout: Layout,
    addr: SocketAddr,
    master_pid: Option<u32>,
}

/// Why an instance did not come up.
enum StartError {
    /// Another process holds the port: pick another.
    PortTaken,
    Other(String),
}

impl Postfix {
    fn conf_arg(&self) -> &str {
        path_str(&self.layout.conf)
    }

    fn maillog(&self) -> String {
        fs::read_to_string(&self.layout.maillog).unwrap_or_default()
    }

    fn read_master_pid(&self) -> Option<u32> {
        fs::read_to_string(self.layout.queue.join("pid/master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// `postfix check`, `postfix start`, then wait for the banner.
    fn start(postfix: &Path, layout: Layout, addr: SocketAddr) -> Result<Postfix, StartError> {
        let mut server = Postfix {
            postfix: postfix.to_path_buf(),
            layout,
            addr,
            master_pid: None,
        };
        let conf = server.conf_arg().to_owned();
        let check = run(postfix, &["-c", &conf, "check"]);
        if !check.status.success() {
            return Err(StartError::Other(describe(
                postfix,
                &["-c", &conf, "check"],
                &check,
            )));
        }
        let start = run(postfix, &["-c", &conf, "start"]);
        server.master_pid = server.read_master_pid();
        let port_taken = |s: &Postfix| s.maillog().contains("Address already in use");
        if !start.status.success() {
            if port_taken(&server) {
                return Err(StartError::PortTaken);
            }
            return Err(StartError::Other(format!(
                "{}\nmaillog:\n{}",
                describe(postfix, &["-c", &conf, "start"], &start),
                server.maillog()
            )));
        }
        let deadline = Instant::now() + POSTFIX_READY;
        loop {
            if server.master_pid.is_none() {
                server.master_pid = server.read_master_pid();
            }
            if banner(addr).is_some() {
                return Ok(server);
            }
            if port_taken(&server) {
                return Err(StartError::PortTaken);
            }
            if Instant::now() > deadline {
                return Err(StartError::Other(format!(
                    "Postfix {} on {addr} gave no banner within {POSTFIX_READY:?}; maillog:\n{}",
                    server.layout.name,
                    server.maillog()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        let Some(pid) = self.master_pid.or_else(|| self.read_master_pid()) else {
            return;
        };
        let conf = self.conf_arg().to_owned();
        let _ = run(&self.postfix, &["-c", &conf, "stop"]);
        if wait_gone(pid, POSTFIX_STOP) {
            return;
        }
        let _ = run(&self.postfix, &["-c", &conf, "abort"]);
        if wait_gone(pid, Duration::from_secs(3)) {
            return;
        }
        eprintln!(
            "interop_postfix: Postfix {} master {pid} ignored stop and abort; killing it",
            self.layout.name
        );
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        wait_gone(pid, Duration::from_secs(3));
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "interop_postfix: Postfix {} ({}) maillog {}:\n{}",
                self.layout.name,
                self.addr,
                self.layout.maillog.display(),
                self.maillog()
            );
        }
    }
}

/// Has process `pid` exited (within `limit`)?
fn wait_gone(pid: u32, limit: Duration) -> bool {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        // A zombie no longer serves; its parent (init) reaps it.
        let state = fs::read_to_string(proc.join("stat")).unwrap_or_default();
        let zombie = state
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if !proc.exists() || zombie {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The server's `220` greeting, or `None` if it does not give one now.
fn banner(addr: SocketAddr) -> Option<String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut text = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        text.push_str(&line);
        if line.len() < 4 || !line.starts_with("220") {
            return None;
        }
        if line.as_bytes()[3] == b' ' {
            break;
        }
    }
    let mut stream = stream;
    let _ = stream.write_all(b"QUIT\r\n");
    Some(text)
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
            };
            let backup_role = Role::CarelessBackup {
                domains: vec![LIABILITY],
                primary: ip1,
            };
            let strict_layout = Layout::new(&dir, "strict");
            strict_layout.write(&strict_role, MX1, ip1, port, &ca);
            let backup_layout = Layout::new(&dir, "backup");
            backup_layout.write(&backup_role, MX2, ip2, port, &ca);

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
