//! `mxguard relay` as an operator meets it: `--check-config` on good and bad
//! files, the JSON mail-event log, and a clean stop on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p =
            std::env::temp_dir().join(format!("mxguard-relay-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mxguard"))
}

fn check_config(path: &Path) -> (i32, String, String) {
    let out = bin()
        .args(["relay", "--check-config", "--config"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_reports_every_problem_with_its_line_and_exits_2() {
    let dir = Dir::new("bad");
    let path = dir.write(
        "relay.toml",
        "hostname = \"backup\"\n\
         [smtp]\n\
         listen = [\"0.0.0.0:25\", \"nowhere\"]\n\
         [spool]\n\
         path = \"/var/spool/mxguard\"\n\
         [admin]\n\
         listen = \"192.0.2.1:8025\"\n\
         [[domains]]\n\
         name = \"example.com\"\n\
         recipients = \"list\"\n\
         recipient_list = \"missing.users\"\n",
    );
    let (code, stdout, stderr) = check_config(&path);
    assert_eq!(code, 2, "{stdout}{stderr}");
    for want in [
        "line 1: hostname: \"backup\" is not a fully qualified host name",
        "line 3: smtp.listen[1]: \"nowhere\" is not an IP:PORT address",
        "line 7: admin.listen: 192.0.2.1:8025 is not a loopback address",
        "line 11: domains[0].recipient_list:",
        "4 problems; nothing started",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in:\n{stderr}");
    }
    // An unknown key is named with its line.
    let typo = dir.write(
        "typo.toml",
        "hostname = \"backup.example.net\"\n[spool]\npath = \"/tmp/x\"\nrelay_everything = true\n",
    );
    let (code, _, stderr) = check_config(&typo);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("line 4") && stderr.contains("relay_everything"),
        "{stderr}"
    );
}

#[test]
fn check_config_loads_what_the_file_points_at() {
    let dir = Dir::new("points");
    dir.write("users", "alice@example.com\n");
    let good = dir.write(
        "good.toml",
        "hostname = \"backup.example.net\"\n[smtp]\nlisten = [\"127.0.0.1:2525\"]\n\
         [spool]\npath = \"spool\"\n\
         [[domains]]\nname = \"example.com\"\nrecipients = \"list\"\nrecipient_list = \"users\"\n\
         [[domains]]\nname = \"example.org\"\nprimary = \"mail.example.org:25\"\n",
    );
    let (code, stdout, stderr) = check_config(&good);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("OK"), "{stdout}");
    assert!(stdout.contains("domain    example.com: list"), "{stdout}");
    assert!(
        stdout.contains("domain    example.org: callout to mail.example.org:25"),
        "{stdout}"
    );
    assert!(stdout.contains("STARTTLS  not offered"), "{stdout}");

    // A certificate file that is not there, or a list with a bad line.
    let tls = dir.write(
        "tls.toml",
        "hostname = \"backup.example.net\"\n[smtp]\ntls_cert = \"nope.pem\"\ntls_key = \"nope.key\"\n\
         [spool]\npath = \"spool\"\n",
    );
    let (code, _, stderr) = check_config(&tls);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("smtp.tls_cert") && stderr.contains("nope.pem"),
        "{stderr}"
    );
    dir.write("bad.users", "alice@example.com\nnot an address\n");
    let list = dir.write(
        "list.toml",
        "hostname = \"backup.example.net\"\n[spool]\npath = \"spool\"\n\
         [[domains]]\nname = \"example.com\"\nrecipients = \"list\"\nrecipient_list = \"bad.users\"\n",
    );
    let (code, _, stderr) = check_config(&list);
    assert_eq!(code, 2);
    assert!(stderr.contains("bad.users:2"), "{stderr}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn json_mail_events_and_a_clean_stop_on_sigterm() {
    let dir = Dir::new("run");
    dir.write("users", "alice@example.com\n");
    let port = free_port();
    let cfg = dir.write(
        "relay.toml",
        &format!(
            "hostname = \"backup.example.net\"\n[smtp]\nlisten = [\"127.0.0.1:{port}\"]\n\
             [spool]\npath = \"spool\"\n\
             [[domains]]\nname = \"example.com\"\nrecipients = \"list\"\nrecipient_list = \"users\"\n"
        ),
    );
    let mut child = bin()
        .args(["relay", "--log-format", "json", "--config"])
        .arg(&cfg)
        .env("MXGUARD_LOG", "mxguard::mail=info,warn")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let stream = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if start.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => {
                let _ = child.kill();
                panic!("relay never listened: {e}");
            }
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut r = BufReader::new(stream.try_clone().unwrap());
    let mut w = stream;
    let mut reply = || {
        let mut all = String::new();
        loop {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            all.push_str(&l);
            if l.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    };
    assert!(reply().starts_with("220 backup.example.net"));
    for (cmd, want) in [
        ("EHLO client.example", "250"),
        ("MAIL FROM:<a@sender.example>", "250"),
        ("RCPT TO:<nobody@example.com>", "550"),
        ("RCPT TO:<alice@example.com>", "250"),
        ("DATA", "354"),
        ("Subject: t\r\n\r\nhello\r\n.", "250"),
        ("QUIT", "221"),
    ] {
        w.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        let got = reply();
        assert!(got.starts_with(want), "{cmd}: {got}");
    }
    // SIGTERM: stop accepting, finish, exit 0.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        assert!(Instant::now() < deadline, "relay did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert_eq!(code, Some(0), "{log}");
    let events: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "mxguard::mail")
        // The relay also tries to forward; only the session's events here.
        .filter(|v| v["event"] != "delivery")
        .collect();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(
        kinds,
        ["connect", "rejected", "accepted", "disconnect"],
        "{log}"
    );
    assert_eq!(events[1]["reason"], "unknown-recipient");
    assert_eq!(events[1]["rcpt"], "<nobody@example.com>");
    let id = events[2]["queue_id"].as_str().unwrap();
    assert!(dir.0.join("spool/queue").join(id).is_file(), "{log}");
}

/// The relay binary, killed when dropped.
struct Relay(std::process::Child);

impl Relay {
    /// Start it and wait until it listens on `port`.
    fn start(cfg: &Path, port: u16) -> Relay {
        let child = bin()
            .args(["relay", "--config"])
            .arg(cfg)
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let relay = Relay(child);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "relay never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        relay
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn queue(cfg_or_spool: &[&str], args: &[&str]) -> (i32, String, String) {
    let out = bin()
        .arg("queue")
        .args(cfg_or_spool)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn smtp_send(port: u16, rcpt: &str) -> String {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut r = BufReader::new(stream.try_clone().unwrap());
    let mut w = stream;
    let mut reply = || {
        let mut all = String::new();
        loop {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            all.push_str(&l);
            if l.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    };
    reply();
    let mut last = String::new();
    for cmd in [
        "EHLO client.example".to_owned(),
        "MAIL FROM:<a@sender.example>".to_owned(),
        format!("RCPT TO:<{rcpt}>"),
        "DATA".to_owned(),
        "Subject: queued\r\n\r\nwaiting\r\n.".to_owned(),
        "QUIT".to_owned(),
    ] {
        w.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        let got = reply();
        if cmd.starts_with("Subject") {
            last = got;
        }
    }
    assert!(last.starts_with("250 2.0.0 Ok: queued as "), "{last}");
    last.trim().rsplit(' ').next().unwrap().to_owned()
}

#[test]
fn queue_commands_list_hold_release_delete_online_and_offline() {
    let dir = Dir::new("queue");
    dir.write("users", "@example.com\n");
    let (port, admin, dead) = (free_port(), free_port(), free_port());
    let cfg = dir.write(
        "relay.toml",
        &format!(
            "hostname = \"backup.example.net\"\n[smtp]\nlisten = [\"127.0.0.1:{port}\"]\n\
             [admin]\nlisten = \"127.0.0.1:{admin}\"\n[spool]\npath = \"spool\"\n\
             [dns]\nresolver = \"127.0.0.1:9\"\n\
             [delivery]\nretry = [\"1h\"]\ndsn = \"never\"\nconnect_timeout = \"1s\"\n\
             [[domains]]\nname = \"example.com\"\nprimary = \"127.0.0.1:{dead}\"\n\
             recipients = \"list\"\nrecipient_list = \"users\"\n"
        ),
    );
    let _guard = Relay::start(&cfg, port);
    let a = smtp_send(port, "alice@example.com");
    let b = smtp_send(port, "bob@example.com");
    let c = ["--config", cfg.to_str().unwrap()];

    let (code, out, err) = queue(&c, &["list"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&a) && out.contains(&b) && out.contains("2 message(s)"),
        "{out}"
    );
    assert!(out.contains("<alice@example.com>"), "{out}");

    assert_eq!(queue(&c, &["hold", &a]).0, 0);
    let (_, json, _) = queue(&c, &["--format", "json", "show", &a]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["held"], true);
    assert!(v["headers"].as_str().unwrap().contains("Subject: queued"));
    assert_eq!(queue(&c, &["release", &a]).0, 0);
    let (_, json, _) = queue(&c, &["--format", "json", "show", &a]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["held"], false);
    let (code, out, _) = queue(&c, &["flush"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("flush:"), "{out}");

    assert_eq!(queue(&c, &["delete", &b]).0, 0);
    let (code, _, err) = queue(&c, &["delete", &b]);
    assert_eq!(code, 2, "deleting twice is an error");
    assert!(err.contains("not in the queue"), "{err}");
    let (code, _, err) = queue(&c, &["show", "../../etc/passwd"]);
    assert_eq!(code, 2);
    assert!(err.contains("not a queue id"), "{err}");

    // Offline, straight from the spool, with the relay still running.
    let spool = dir.0.join("spool");
    let s = ["--spool", spool.to_str().unwrap()];
    let (code, out, err) = queue(&s, &["--format", "json", "list"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["id"], a.as_str());
    let (code, _, err) = queue(&s, &["hold", &a]);
    assert_eq!(code, 2);
    assert!(err.contains("only list and show"), "{err}");
}

/// `mxguard demo` ends with the outage drill: messages held while the
/// primary is down and delivered, oldest first, once it is back.
#[test]
fn demo_shows_an_outage_and_the_recovery() {
    let out = bin().arg("demo").env("NO_COLOR", "1").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let drill = &text[text.find("Outage drill").expect("the drill section")..];
    let ids: Vec<&str> = drill
        .lines()
        .filter_map(|l| l.split("queued as ").nth(1))
        .collect();
    assert_eq!(ids.len(), 2, "{drill}");
    assert!(
        drill.contains("deferred") && drill.contains("primary is back"),
        "{drill}"
    );
    let delivered: Vec<&str> = drill
        .lines()
        .filter(|l| l.contains(" delivered ("))
        .filter_map(|l| l.split("backup → primary: ").nth(1))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert_eq!(delivered, ids, "delivered oldest first:\n{drill}");
    assert!(
        drill.contains("2 of 2 messages reached the primary"),
        "{drill}"
    );
}

/// SIGHUP re-reads the file: a domain added is served by new sessions; a
/// broken file changes nothing.
#[test]
fn sighup_reloads_the_configuration() {
    let dir = Dir::new("hup");
    dir.write("users", "@example.com\n@example.org\n");
    let (port, admin) = (free_port(), free_port());
    let text = |domains: &str| {
        format!(
            "hostname = \"backup.example.net\"\n[smtp]\nlisten = [\"127.0.0.1:{port}\"]\n\
             [admin]\nlisten = \"127.0.0.1:{admin}\"\n[spool]\npath = \"spool\"\n\
             [delivery]\ndsn = \"never\"\n{domains}"
        )
    };
    let one = "[[domains]]\nname = \"example.com\"\nprimary = \"127.0.0.1:9\"\nrecipients = \"list\"\nrecipient_list = \"users\"\n";
    let two = format!(
        "{one}[[domains]]\nname = \"example.org\"\nprimary = \"127.0.0.1:9\"\nrecipients = \"list\"\nrecipient_list = \"users\"\n"
    );
    let cfg = dir.write("relay.toml", &text(one));
    let guard = Relay::start(&cfg, port);
    let rcpt = |to: &str| -> String {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut r = BufReader::new(stream.try_clone().unwrap());
        let mut w = stream;
        let mut reply = || loop {
            let mut l = String::new();
            // A refused or reset connection reads as an empty reply.
            if r.read_line(&mut l).unwrap_or(0) == 0 || l.as_bytes().get(3) != Some(&b'-') {
                return l;
            }
        };
        reply();
        let mut out = String::new();
        for cmd in [
            "EHLO client.example",
            "MAIL FROM:<>",
            &format!("RCPT TO:<{to}>"),
            "QUIT",
        ] {
            let _ = w.write_all(format!("{cmd}\r\n").as_bytes());
            let got = reply();
            if cmd.starts_with("RCPT") {
                out = got;
            }
        }
        out
    };
    let hup = || {
        let ok = Command::new("kill")
            .args(["-HUP", &guard.0.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    assert!(rcpt("bob@example.org").starts_with("550 5.7.1"));
    std::fs::write(&cfg, text(&two)).unwrap();
    hup();
    let start = Instant::now();
    while !rcpt("bob@example.org").starts_with("250") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the reload never took effect"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A broken file: the running configuration stays.
    std::fs::write(&cfg, "hostname = \"not a host\"\n").unwrap();
    hup();
    std::thread::sleep(Duration::from_millis(300));
    assert!(rcpt("bob@example.org").starts_with("250"));
    assert!(rcpt("alice@example.com").starts_with("250"));
}
