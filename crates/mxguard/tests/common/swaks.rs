//! Running `swaks`, the scriptable SMTP client, with a deadline, and reading
//! its transcript.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::Scratch;

/// How long one swaks dialogue may take.
pub const SWAKS_DEADLINE: Duration = Duration::from_secs(20);

/// One swaks run: its exit code and transcript.
pub struct Swaks {
    pub code: Option<i32>,
    pub transcript: String,
}

impl Swaks {
    /// The server's reply to the first client line starting with `sent`
    /// (`RCPT TO:`, `DATA`; for the end of the message, which a body line
    /// starting with a dot would match, [`Swaks::reply_to_end_of_data`]),
    /// without the `<-  ` or `<** ` swaks puts before it.
    pub fn reply_to(&self, sent: &str) -> Option<&str> {
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
    pub fn sent(&self, sent: &str) -> bool {
        self.transcript.lines().any(|l| {
            l.trim_start()
                .strip_prefix("->")
                .is_some_and(|c| c.trim_start().starts_with(sent))
        })
    }

    /// The server's reply to the end of DATA (the client's `.` line).
    pub fn reply_to_end_of_data(&self) -> Option<&str> {
        let mut lines = self.transcript.lines();
        lines
            .by_ref()
            .find(|l| l.trim_start().strip_prefix("->").map(str::trim) == Some("."))
            .and_then(|_| lines.next())
            .and_then(|l| l.strip_prefix("<-").or_else(|| l.strip_prefix("<**")))
            .map(str::trim)
    }

    /// The message text swaks sent in DATA, as its transcript shows it:
    /// each line between the `354` reply and the final `.`, ending in CRLF,
    /// dot-stuffing undone (RFC 5321 §4.5.2).
    pub fn data_sent(&self) -> Option<Vec<u8>> {
        let mut lines = self.transcript.lines();
        lines.by_ref().find(|l| {
            l.trim_start()
                .strip_prefix("->")
                .is_some_and(|c| c.trim() == "DATA")
        })?;
        let go_ahead = lines.next()?.trim_start().strip_prefix("<-")?;
        if !go_ahead.trim_start().starts_with("354") {
            return None;
        }
        let mut out = Vec::new();
        for line in lines {
            let text = line
                .strip_prefix(" -> ")
                .or_else(|| (line == " ->").then_some(""))?;
            if text == "." {
                return Some(out);
            }
            out.extend_from_slice(text.strip_prefix('.').unwrap_or(text).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        None
    }

    /// The queue ID in the `250 ... queued as ID` reply to the end of DATA.
    pub fn queued_as(&self) -> Option<String> {
        self.reply_to_end_of_data()?
            .strip_prefix("250 ")?
            .split_once("queued as ")
            .map(|(_, id)| id.trim().to_owned())
    }
}

/// Run swaks against `server` as `helo`, `from` to one recipient, with
/// `extra` options; the transcript is also kept in `dir/swaks-{tag}.txt`.
#[allow(clippy::too_many_arguments)]
pub fn swaks(
    program: &Path,
    dir: &Scratch,
    tag: &str,
    server: SocketAddr,
    helo: &str,
    from: &str,
    to: &str,
    extra: &[&str],
) -> Swaks {
    let server_arg = server.to_string();
    let mut args = vec![
        "--server",
        server_arg.as_str(),
        "--helo",
        helo,
        "--from",
        from,
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
