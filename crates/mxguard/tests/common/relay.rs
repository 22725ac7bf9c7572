//! A real `mxguard relay` process for the interop tests: started from a
//! generated `relay.toml` on free ports of 127.0.0.1, its stderr (the log,
//! with the `mxguard::mail` events) kept in a file, killed when dropped.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::postfix::PORT_ATTEMPTS;
use super::{Scratch, send_signal, smtp_banner};

/// How long the relay gets to answer with its banner.
pub const RELAY_READY: Duration = Duration::from_secs(10);
/// How long the relay gets to exit after SIGTERM.
pub const RELAY_STOP: Duration = Duration::from_secs(10);

/// A port on 127.0.0.1 that is free at the moment of asking.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("binding a TCP socket on 127.0.0.1")
        .port()
}

/// Poll `probe` every 50 ms until it gives something or `limit` is up.
pub fn wait_for<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Regular files anywhere under `dir` (none if it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
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
    out.sort();
    out
}

/// The relay's mail-event log lines of one event (`accepted`, `rejected`,
/// `delivery`, ...), in order.
pub fn events<'a>(log: &'a str, event: &str) -> Vec<&'a str> {
    let key = format!("event=\"{event}\"");
    log.lines()
        .filter(|l| l.contains("mxguard::mail") && l.contains(&key))
        .collect()
}

/// A running `mxguard relay`; killed, if still running, when dropped, its
/// log printed if the test is failing.
pub struct Relay {
    child: Child,
    test: &'static str,
    /// Where it listens for SMTP.
    pub addr: SocketAddr,
    /// `dir/spool`, its `[spool] path`.
    pub spool: PathBuf,
    stderr_path: PathBuf,
}

impl Relay {
    /// Write `dir/relay.toml` with `config(smtp, admin, spool)` (two free
    /// ports of 127.0.0.1 and the spool path) and start the relay; again on
    /// other ports if one is taken meanwhile. Returns once the relay greets
    /// with `220 <hostname> `.
    pub fn start(
        dir: &Scratch,
        test: &'static str,
        hostname: &str,
        config: impl Fn(SocketAddr, SocketAddr, &Path) -> String,
    ) -> Relay {
        let spool = dir.file("spool");
        let config_path = dir.file("relay.toml");
        let stderr_path = dir.file("relay.stderr");
        for _ in 0..PORT_ATTEMPTS {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
            // Not bound by the relay yet; a port of its own all the same,
            // since tests run in parallel.
            let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
            fs::write(&config_path, config(addr, admin, &spool)).expect("writing relay.toml");
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
                if smtp_banner(addr).is_some_and(|b| b.starts_with(&format!("220 {hostname} "))) {
                    return Relay {
                        child,
                        test,
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

    /// Its log so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// SIGTERM, and wait for the exit.
    pub fn stop(&mut self) -> ExitStatus {
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
                "{}: mxguard relay ({}) stderr {}:\n{}",
                self.test,
                self.addr,
                self.stderr_path.display(),
                self.stderr()
            );
        }
    }
}
