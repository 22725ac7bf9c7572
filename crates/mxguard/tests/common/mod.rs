// Each test crate that says `mod common;` uses a subset of these helpers.
#![allow(dead_code)]

//! Helpers shared by the integration tests: finding the programs an interop
//! test needs, skipping or failing when they are missing, running programs
//! and the `mxguard` binary with a deadline, (in [`postfix`]) private
//! Postfix instances, (in [`relay`]) a running `mxguard relay` and (in
//! [`swaks`]) the swaks SMTP client.

pub mod postfix;
pub mod relay;
pub mod swaks;
pub mod webdriver;

use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// `MXGUARD_INTEROP=1` turns a missing peer from a skip into a failure.
pub fn interop_required() -> bool {
    std::env::var("MXGUARD_INTEROP").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A visible `SKIP` line on the process's stderr.
pub fn skip(test: &str, why: &str) {
    // Straight to the process's stderr: the test harness captures
    // `eprintln!` of passing tests, and a skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "SKIP {test}: {why} (set MXGUARD_INTEROP=1 to require it)"
    );
}

/// Skip or, when the interop tests are required, fail.
pub fn skip_or_fail(test: &str, why: &str) {
    if interop_required() {
        panic!("{test}: {why}, and MXGUARD_INTEROP=1 requires it");
    }
    skip(test, why);
}

/// A program in the usual sbin directories or on `PATH`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = ["/usr/sbin", "/usr/local/sbin", "/sbin"]
        .iter()
        .map(PathBuf::from)
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// What one run of the `mxguard` binary produced.
pub struct Run {
    pub args: Vec<String>,
    pub code: Option<i32>,
    pub json: Value,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Everything needed to diagnose a failed assertion.
    pub fn context(&self) -> String {
        format!(
            "mxguard {}\nexit code {:?}\nstdout:\n{}\nstderr:\n{}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        )
    }
}

/// Run the `mxguard` binary with `args`, its stdout and stderr going to
/// `mxguard-{tag}.json` and `mxguard-{tag}.stderr` in `dir`, and parse its
/// stdout as JSON. Panics, with the command line and both outputs, when it
/// does not finish within `deadline` or prints no JSON.
pub fn run_mxguard_json(args: &[String], dir: &Path, tag: &str, deadline: Duration) -> Run {
    let stdout_path = dir.join(format!("mxguard-{tag}.json"));
    let stderr_path = dir.join(format!("mxguard-{tag}.stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_mxguard"))
        .args(args)
        .env_remove("MXGUARD_LOG")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout_path).expect("creating stdout file"))
        .stderr(fs::File::create(&stderr_path).expect("creating stderr file"))
        .spawn()
        .expect("starting mxguard");
    let give_up = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for mxguard") {
            break status;
        }
        if Instant::now() > give_up {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "mxguard {} did not finish within {deadline:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "mxguard {} printed no JSON ({e}); {status}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            args.join(" ")
        )
    });
    Run {
        args: args.to_vec(),
        code: status.code(),
        json,
        stdout,
        stderr,
    }
}

/// A scratch directory: removed when the test passes, kept (and its path
/// printed with what it holds) when it fails, so its logs can be read.
pub struct Scratch {
    pub path: PathBuf,
    /// Printed when the directory is kept: `test: kept DIR (holds)`.
    test: &'static str,
    holds: &'static str,
}

impl Scratch {
    /// A fresh directory `mxguard-<name>-<pid>-<nanos>` under the temp dir.
    pub fn new(name: &str, test: &'static str, holds: &'static str) -> Scratch {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let path =
            std::env::temp_dir().join(format!("mxguard-{name}-{}-{nanos:x}", std::process::id()));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Scratch { path, test, holds }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{}: kept {} ({})",
                self.test,
                self.path.display(),
                self.holds
            );
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Effective uid 0, from `/proc/self/status` (no libc in this crate).
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// Run a program to completion, output captured.
pub fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()))
}

/// A program's command line, status and output, for a failure message.
pub fn describe(program: &Path, args: &[&str], out: &Output) -> String {
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
pub fn must_pass(program: &Path, args: &[&str]) -> Output {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "failed: {}",
        describe(program, args, &out)
    );
    out
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Has process `pid` exited (within `limit`)? A zombie counts as gone: it
/// no longer serves, and its parent reaps it.
pub fn wait_gone(pid: u32, limit: Duration) -> bool {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
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

/// Send `signal` (`TERM`, `KILL`, ...) to process `pid` with kill(1).
pub fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// An SMTP server's `220` greeting, or `None` if it does not give one now.
/// Says QUIT after it.
pub fn smtp_banner(addr: SocketAddr) -> Option<String> {
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
