//! Interop: mxguard audits zones served by a real authoritative server, NSD as
//! packaged by Debian, rather than by the in-process lab server.
//!
//! The test writes RFC 1035 master files and an `nsd.conf` into a fresh
//! temporary directory, checks them with `nsd-checkconf` and `nsd-checkzone`,
//! starts `nsd -d` on a free port of 127.0.0.1 and runs the `mxguard` binary
//! against it with `--resolver`. Nothing listens or is asked anywhere but
//! 127.0.0.1.
//!
//! Without NSD installed the test prints a `SKIP` line and passes, unless
//! `MXGUARD_INTEROP=1` is set (as `.ci/run` does): then it fails.

mod common;

use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{Run, Scratch, find_program, interop_required, run_mxguard_json, skip};
use serde_json::Value;

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// How long NSD gets to answer its first query.
const NSD_READY: Duration = Duration::from_secs(5);
/// How long one `mxguard check` run may take before the test gives up.
const CHECK_DEADLINE: Duration = Duration::from_secs(60);
/// Fresh ports tried when NSD cannot bind the one picked.
const PORT_ATTEMPTS: usize = 5;

const SOA: &str = "IN SOA ns1.interop.test. hostmaster.interop.test. \
                   ( 2026010101 3600 600 86400 300 )";

/// The domain under audit: a primary and a backup in the same /24, and a
/// host that is the target of an alias in `alias.test`.
fn interop_zone() -> String {
    format!(
        "$ORIGIN interop.test.\n\
         $TTL 300\n\
         @        {SOA}\n\
         @        IN NS    ns1\n\
         @        IN MX    10 mx1\n\
         @        IN MX    20 mx2\n\
         ns1      IN A     127.0.0.1\n\
         mx1      IN A     127.0.5.1\n\
         mx2      IN A     127.0.5.2\n\
         mailhost IN A     127.0.6.1\n"
    )
}

/// A domain whose only MX exchange is an alias into another zone.
fn alias_zone() -> String {
    format!(
        "$ORIGIN alias.test.\n\
         $TTL 300\n\
         @        {SOA}\n\
         @        IN NS    ns1.interop.test.\n\
         @        IN MX    10 mail\n\
         mail     IN CNAME mailhost.interop.test.\n"
    )
}

/// Reverse DNS for every MX address, each forward-confirmed.
fn reverse_zone() -> String {
    format!(
        "$ORIGIN 0.127.in-addr.arpa.\n\
         $TTL 300\n\
         @        {SOA}\n\
         @        IN NS    ns1.interop.test.\n\
         1.5      IN PTR   mx1.interop.test.\n\
         2.5      IN PTR   mx2.interop.test.\n\
         1.6      IN PTR   mailhost.interop.test.\n"
    )
}

/// Team Cymru's IP-to-ASN service, shaped as mxguard asks it.
fn asn_zone() -> String {
    format!(
        "$ORIGIN asn.cymru.com.\n\
         $TTL 300\n\
         @                 {SOA}\n\
         @                 IN NS  ns1.interop.test.\n\
         1.5.0.127.origin  IN TXT \"64500 | 127.0.5.0/24 | ZZ | lab | 2026-01-01\"\n\
         2.5.0.127.origin  IN TXT \"64500 | 127.0.5.0/24 | ZZ | lab | 2026-01-01\"\n\
         1.6.0.127.origin  IN TXT \"64501 | 127.0.6.0/24 | ZZ | lab | 2026-01-01\"\n"
    )
}

fn zones() -> Vec<(&'static str, String)> {
    vec![
        ("interop.test", interop_zone()),
        ("alias.test", alias_zone()),
        ("0.127.in-addr.arpa", reverse_zone()),
        ("asn.cymru.com", asn_zone()),
    ]
}

/// A running `nsd -d`; stopped (TERM, then KILL) when dropped.
struct Nsd {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Nsd {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from((LOOPBACK, self.port))
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SIGTERM lets NSD stop its server and xfrd processes; std only
        // offers SIGKILL, so ask kill(1).
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Nsd {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "interop_nsd: nsd log ({}):\n{}",
                self.log.display(),
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// A port free on 127.0.0.1 for both UDP and TCP, at the moment of asking.
fn free_port() -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind((LOOPBACK, 0)).expect("binding a UDP socket on 127.0.0.1");
        let port = udp.local_addr().expect("local address").port();
        if TcpListener::bind((LOOPBACK, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1");
}

fn nsd_conf(dir: &Path, port: u16) -> String {
    let d = dir.display();
    let mut conf = format!(
        "server:\n\
         \x20   ip-address: 127.0.0.1@{port}\n\
         \x20   port: {port}\n\
         \x20   do-ip4: yes\n\
         \x20   do-ip6: no\n\
         \x20   server-count: 1\n\
         \x20   username: \"\"\n\
         \x20   chroot: \"\"\n\
         \x20   zonesdir: \"{d}\"\n\
         \x20   database: \"\"\n\
         \x20   pidfile: \"{d}/nsd.pid\"\n\
         \x20   xfrdfile: \"{d}/xfrd.state\"\n\
         \x20   zonelistfile: \"{d}/zone.list\"\n\
         \x20   logfile: \"{d}/nsd.log\"\n\
         \x20   verbosity: 2\n\
         \x20   hide-version: yes\n\
         remote-control:\n\
         \x20   control-enable: no\n"
    );
    for (name, _) in zones() {
        let _ = write!(
            conf,
            "zone:\n\
             \x20   name: \"{name}\"\n\
             \x20   zonefile: \"{name}.zone\"\n"
        );
    }
    conf
}

/// Run a checker; panic with its output unless it succeeds.
fn must_pass(program: &Path, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {} failed ({}):\n{}{}",
        program.display(),
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A minimal DNS query: SOA of `interop.test`, no recursion.
fn soa_query(id: u16) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x00, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0]);
    for label in ["interop", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&[0x00, 0x06, 0x00, 0x01]);
    q
}

/// Does the server on `port` answer the SOA of interop.test authoritatively?
fn answers(port: u16, id: u16) -> bool {
    let Ok(sock) = UdpSocket::bind((LOOPBACK, 0)) else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    if sock.send_to(&soa_query(id), (LOOPBACK, port)).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    match sock.recv_from(&mut buf) {
        // Same id, QR set, AA set, RCODE 0.
        Ok((n, _)) if n >= 12 => {
            buf[..2] == id.to_be_bytes()
                && buf[2] & 0x80 != 0
                && buf[2] & 0x04 != 0
                && buf[3] & 0x0f == 0
        }
        _ => false,
    }
}

enum Start {
    Ready(Nsd),
    /// NSD exited before answering; `bind` says it could not take the port.
    Exited {
        status: ExitStatus,
        bind: bool,
    },
    TimedOut(Nsd),
}

fn start_once(nsd: &Path, checkconf: &Path, dir: &Scratch) -> Start {
    let port = free_port();
    let conf = dir.file("nsd.conf");
    fs::write(&conf, nsd_conf(&dir.path, port)).expect("writing nsd.conf");
    let conf_arg = conf.to_str().expect("utf-8 path");
    must_pass(checkconf, &[conf_arg]);
    let log = dir.file("nsd.log");
    let _ = fs::remove_file(&log);
    let stderr = fs::File::create(dir.file("nsd.stderr")).expect("creating nsd.stderr");
    let child = Command::new(nsd)
        .args(["-d", "-c", conf_arg])
        .current_dir(&dir.path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", nsd.display()));
    let mut server = Nsd { child, port, log };
    let deadline = Instant::now() + NSD_READY;
    let mut id = (std::process::id() as u16) ^ 0x5a5a;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = server.child.try_wait() {
            let text = fs::read_to_string(&server.log).unwrap_or_default()
                + &fs::read_to_string(dir.file("nsd.stderr")).unwrap_or_default();
            let bind = text.contains("can't bind") || text.contains("Address already in use");
            return Start::Exited { status, bind };
        }
        id = id.wrapping_add(1);
        if answers(port, id) {
            return Start::Ready(server);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Start::TimedOut(server)
}

/// Start NSD on a free port, trying again when another process took the
/// port between picking and binding it.
fn start_nsd(nsd: &Path, checkconf: &Path, dir: &Scratch) -> Nsd {
    for _ in 0..PORT_ATTEMPTS {
        match start_once(nsd, checkconf, dir) {
            Start::Ready(server) => return server,
            Start::Exited { bind: true, .. } => continue,
            Start::Exited {
                status,
                bind: false,
            } => panic!(
                "nsd exited ({status}) before answering:\n{}{}",
                fs::read_to_string(dir.file("nsd.log")).unwrap_or_default(),
                fs::read_to_string(dir.file("nsd.stderr")).unwrap_or_default()
            ),
            Start::TimedOut(server) => panic!(
                "nsd on 127.0.0.1:{} did not answer within {NSD_READY:?}",
                server.port
            ),
        }
    }
    panic!("nsd could not bind a port on 127.0.0.1 in {PORT_ATTEMPTS} attempts");
}

/// Run `mxguard check` against the server, JSON out, with a deadline.
fn mxguard_check(dir: &Scratch, tag: &str, resolver: SocketAddr, domains: &[&str]) -> Run {
    let args: Vec<String> = [
        "check",
        "--resolver",
        &resolver.to_string(),
        "--allow-private",
        "--no-smtp",
        "--timeout",
        "4",
        "--format",
        "json",
    ]
    .iter()
    .chain(domains)
    .map(|s| s.to_string())
    .collect();
    run_mxguard_json(&args, &dir.path, tag, CHECK_DEADLINE)
}

fn findings<'a>(report: &'a Value, id: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .map(|all| all.iter().filter(|f| f["id"] == id).collect())
        .unwrap_or_default()
}

fn host<'a>(report: &'a Value, exchange: &str) -> &'a Value {
    report["mx"]
        .as_array()
        .and_then(|hosts| hosts.iter().find(|h| h["exchange"] == exchange))
        .unwrap_or_else(|| panic!("no MX host {exchange} in\n{report:#}"))
}

fn only_address(host: &Value) -> &Value {
    let addrs = host["addresses"].as_array().expect("addresses array");
    assert_eq!(
        addrs.len(),
        1,
        "expected one address for {}:\n{host:#}",
        host["exchange"]
    );
    &addrs[0]
}

/// nsd answered every question, so nothing may be reported as unknown.
fn assert_no_lookup_failures(report: &Value) {
    let failed = findings(report, "dns-lookup-failed");
    assert!(
        failed.is_empty(),
        "nsd answered everything, yet:\n{failed:#?}\nin\n{report:#}"
    );
}

fn check_interop_test(r: &Value) {
    assert_eq!(r["schema_version"], 1, "{r:#}");
    assert_eq!(r["domain"], "interop.test", "{r:#}");
    assert_eq!(r["route"], "mx", "{r:#}");
    assert_eq!(
        r["mx_records"],
        serde_json::json!([
            {"preference": 10, "exchange": "mx1.interop.test"},
            {"preference": 20, "exchange": "mx2.interop.test"}
        ]),
        "{r:#}"
    );
    assert_eq!(r["mx"].as_array().map(Vec::len), Some(2), "{r:#}");

    let mx1 = host(r, "mx1.interop.test");
    assert_eq!(mx1["role"], "primary", "{mx1:#}");
    assert_eq!(mx1["preference"], 10, "{mx1:#}");
    assert_eq!(mx1["ip_literal"], false, "{mx1:#}");
    let a1 = only_address(mx1);
    assert_eq!(a1["ip"], "127.0.5.1", "{a1:#}");
    assert_eq!(a1["scope"], "loopback", "{a1:#}");
    assert_eq!(a1["ptr"], "mx1.interop.test", "{a1:#}");
    assert_eq!(
        a1["ptr_names"],
        serde_json::json!(["mx1.interop.test"]),
        "{a1:#}"
    );
    assert_eq!(a1["fcrdns"], true, "{a1:#}");
    assert_eq!(a1["asn"], 64500, "{a1:#}");

    let mx2 = host(r, "mx2.interop.test");
    assert_eq!(mx2["role"], "backup", "{mx2:#}");
    assert_eq!(mx2["preference"], 20, "{mx2:#}");
    let a2 = only_address(mx2);
    assert_eq!(a2["ip"], "127.0.5.2", "{a2:#}");
    assert_eq!(a2["ptr"], "mx2.interop.test", "{a2:#}");
    assert_eq!(a2["fcrdns"], true, "{a2:#}");

    let shares = findings(r, "backup-shares-network");
    assert_eq!(
        shares.len(),
        1,
        "expected one backup-shares-network in\n{r:#}"
    );
    assert_eq!(shares[0]["host"], "mx2.interop.test", "{r:#}");
    assert_eq!(shares[0]["ip"], "127.0.5.2", "{r:#}");
    assert_eq!(shares[0]["severity"], "warning", "{r:#}");
    assert_eq!(r["verdict"]["backup_mx"], "redundant", "{r:#}");
    for id in [
        "mx-no-ptr",
        "mx-ptr-mismatch",
        "mx-private-address",
        "mx-target-cname",
    ] {
        assert!(findings(r, id).is_empty(), "unexpected {id} in\n{r:#}");
    }
    assert_no_lookup_failures(r);
}

fn check_alias_test(r: &Value) {
    assert_eq!(r["domain"], "alias.test", "{r:#}");
    assert_eq!(r["route"], "mx", "{r:#}");
    let mail = host(r, "mail.alias.test");
    assert_eq!(mail["role"], "primary", "{mail:#}");
    assert_eq!(mail["preference"], 10, "{mail:#}");
    assert_eq!(
        mail["cname_chain"],
        serde_json::json!(["mailhost.interop.test"]),
        "{mail:#}"
    );
    let a = only_address(mail);
    assert_eq!(a["ip"], "127.0.6.1", "{a:#}");
    assert_eq!(a["ptr"], "mailhost.interop.test", "{a:#}");
    assert_eq!(a["fcrdns"], true, "{a:#}");
    assert_eq!(a["asn"], 64501, "{a:#}");

    let cname = findings(r, "mx-target-cname");
    assert_eq!(cname.len(), 1, "expected one mx-target-cname in\n{r:#}");
    assert_eq!(cname[0]["host"], "mail.alias.test", "{r:#}");
    let evidence = cname[0]["evidence"].as_str().unwrap_or_default();
    assert!(
        evidence.contains("mail.alias.test") && evidence.contains("mailhost.interop.test"),
        "the evidence should show the CNAME chain: {evidence:?}"
    );
    assert_no_lookup_failures(r);
}

fn check_nxdomain(r: &Value) {
    assert!(r.is_object(), "one domain gives one object:\n{r:#}");
    assert_eq!(r["domain"], "gone.interop.test", "{r:#}");
    assert_eq!(r["route"], "none", "{r:#}");
    assert_eq!(r["verdict"]["backup_mx"], "no-mail", "{r:#}");
    let none = findings(r, "no-mail-route");
    assert_eq!(none.len(), 1, "expected no-mail-route in\n{r:#}");
    let evidence = none[0]["evidence"].as_str().unwrap_or_default();
    assert!(
        evidence.contains("NXDOMAIN"),
        "evidence should say NXDOMAIN: {evidence:?}"
    );
    assert_no_lookup_failures(r);
}

#[test]
fn audits_zones_served_by_nsd() {
    let (Some(nsd), Some(checkconf), Some(checkzone)) = (
        find_program("nsd"),
        find_program("nsd-checkconf"),
        find_program("nsd-checkzone"),
    ) else {
        if interop_required() {
            panic!(
                "interop_nsd: nsd, nsd-checkconf or nsd-checkzone not found in /usr/sbin or PATH, \
                 and MXGUARD_INTEROP=1 requires them (apt-get install nsd)"
            );
        }
        skip("interop_nsd", "nsd not installed");
        return;
    };

    let dir = Scratch::new(
        "interop-nsd",
        "interop_nsd",
        "nsd.conf, zones, nsd.log, mxguard output",
    );
    for (name, text) in zones() {
        let file = dir.file(&format!("{name}.zone"));
        fs::write(&file, text).expect("writing zone file");
        must_pass(&checkzone, &[name, file.to_str().expect("utf-8 path")]);
    }
    let server = start_nsd(&nsd, &checkconf, &dir);
    let resolver = server.addr();

    let both = mxguard_check(&dir, "two", resolver, &["interop.test", "alias.test"]);
    let reports = both
        .json
        .as_array()
        .unwrap_or_else(|| panic!("two domains give a JSON array:\n{:#}", both.json));
    assert_eq!(reports.len(), 2, "{:#}", both.json);
    assert_eq!(
        both.code,
        Some(1),
        "warnings present, so exit 1; stderr:\n{}",
        both.stderr
    );
    assert!(
        reports.iter().all(|r| r["resolver"]
            .as_str()
            .is_some_and(|s| s.contains(&resolver.to_string()))),
        "reports should name the resolver {resolver}:\n{:#}",
        both.json
    );
    check_interop_test(&reports[0]);
    check_alias_test(&reports[1]);

    let gone = mxguard_check(&dir, "nxdomain", resolver, &["gone.interop.test"]);
    assert_eq!(
        gone.code,
        Some(1),
        "no-mail-route is a warning; stderr:\n{}",
        gone.stderr
    );
    check_nxdomain(&gone.json);

    drop(server);
}
