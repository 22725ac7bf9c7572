//! The DATA phase as a strict state machine over the bytes the client sends.
//!
//! The message ends only at CRLF "." CRLF (RFC 5321 §4.1.1.4): a "." line
//! counts only when the line before it ended with CRLF. Every line must end
//! with CRLF; a bare LF, a bare CR or a NUL anywhere marks the message as
//! refused — and the receiver goes on reading to the real end, so whatever
//! follows a lone `\n.\n` (the SMTP smuggling trick: a second message hidden
//! in the first) stays part of the refused message instead of being read as
//! commands.
//!
//! Dot-stuffing is undone; everything else is kept byte for byte.

/// Why a message is refused once its end has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataProblem {
    /// A line ended with LF alone.
    BareLf,
    /// A CR not followed by LF.
    BareCr,
    /// A NUL octet.
    Nul,
    /// A line longer than the limit.
    LineTooLong,
    /// More octets than the size limit.
    TooBig,
    /// More Received headers than the loop limit.
    Loop,
}

impl DataProblem {
    /// The reply, and the reason id for the mail event.
    pub fn reply(self, max_size: u64, max_line: usize) -> (String, &'static str) {
        match self {
            DataProblem::BareLf => (
                "554 5.6.0 Message refused: a line ends with a bare LF; SMTP requires CRLF \
                 (RFC 5321 §2.3.8)"
                    .into(),
                "bare-lf",
            ),
            DataProblem::BareCr => (
                "554 5.6.0 Message refused: bare CR in the message text (RFC 5321 §2.3.8)".into(),
                "bare-cr",
            ),
            DataProblem::Nul => (
                "554 5.6.0 Message refused: NUL octet in the message text".into(),
                "nul",
            ),
            DataProblem::LineTooLong => (
                format!("554 5.6.0 Message refused: a line is longer than {max_line} octets"),
                "line-too-long",
            ),
            DataProblem::TooBig => (
                format!("552 5.3.4 Message refused: larger than the limit of {max_size} octets"),
                "too-big",
            ),
            DataProblem::Loop => (
                format!(
                    "554 5.4.6 Message refused: more than {MAX_RECEIVED} Received headers, \
                     a mail loop"
                ),
                "mail-loop",
            ),
        }
    }
}

/// More Received headers than this means a loop.
pub const MAX_RECEIVED: usize = 30;

/// Reads one message's text.
#[derive(Debug)]
pub struct DataReceiver {
    max_size: u64,
    max_line: usize,
    /// The part of the current line seen so far.
    partial: Vec<u8>,
    /// Inside a line already too long: drop until its LF.
    skipping: bool,
    /// Whether the previous line ended with CRLF (the DATA command's own
    /// CRLF counts for the first line).
    after_crlf: bool,
    in_headers: bool,
    received: usize,
    size: u64,
    problem: Option<DataProblem>,
    /// The last byte of the previous feed (for a CRLF split across feeds).
    last: u8,
}

/// The outcome of feeding bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// Input bytes used; the rest belong to whatever follows the message.
    pub consumed: usize,
    /// The end of the message was reached.
    pub done: bool,
}

impl DataReceiver {
    pub fn new(max_size: u64, max_line: usize) -> DataReceiver {
        DataReceiver {
            max_size,
            max_line,
            partial: Vec::new(),
            skipping: false,
            after_crlf: true,
            in_headers: true,
            received: 0,
            size: 0,
            problem: None,
            last: 0,
        }
    }

    /// The first problem found, if any.
    pub fn problem(&self) -> Option<DataProblem> {
        self.problem
    }

    /// Octets of message text kept so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Received headers seen in the message's header section.
    pub fn received_headers(&self) -> usize {
        self.received
    }

    /// Feed input; text that is kept is appended to `out` (nothing is
    /// appended once a problem is found).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Fed {
        let fed = self.feed_inner(input, out);
        if fed.consumed > 0 {
            self.last = input[fed.consumed - 1];
        }
        fed
    }

    fn feed_inner(&mut self, input: &[u8], out: &mut Vec<u8>) -> Fed {
        let mut pos = 0;
        while pos < input.len() {
            let rest = &input[pos..];
            let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
                self.extend_partial(rest);
                return Fed {
                    consumed: input.len(),
                    done: false,
                };
            };
            let end = pos + lf + 1;
            let before_lf = if pos + lf > 0 {
                input[pos + lf - 1]
            } else {
                self.last
            };
            let done = if self.partial.is_empty() && !self.skipping {
                self.line(&input[pos..end], out)
            } else {
                self.extend_partial(&input[pos..end]);
                let line = std::mem::take(&mut self.partial);
                let skipped = std::mem::replace(&mut self.skipping, false);
                let done = if skipped {
                    // The tail of an over-long line: not a "." line.
                    self.after_crlf = before_lf == b'\r';
                    false
                } else {
                    self.line(&line, out)
                };
                self.partial = line;
                self.partial.clear();
                done
            };
            pos = end;
            if done {
                return Fed {
                    consumed: pos,
                    done: true,
                };
            }
        }
        Fed {
            consumed: input.len(),
            done: false,
        }
    }

    fn extend_partial(&mut self, bytes: &[u8]) {
        if self.skipping {
            return;
        }
        if self.partial.len() + bytes.len() > self.max_line {
            self.flag(DataProblem::LineTooLong);
            self.skipping = true;
            self.partial.clear();
            return;
        }
        self.partial.extend_from_slice(bytes);
    }

    fn flag(&mut self, problem: DataProblem) {
        self.problem.get_or_insert(problem);
    }

    /// One whole line, LF included. Returns true at the end of the message.
    fn line(&mut self, line: &[u8], out: &mut Vec<u8>) -> bool {
        let crlf = line.ends_with(b"\r\n");
        if line == b".\r\n" && self.after_crlf {
            return true;
        }
        let after_crlf = std::mem::replace(&mut self.after_crlf, crlf);
        if line.len() > self.max_line {
            self.flag(DataProblem::LineTooLong);
        }
        let body = if crlf {
            &line[..line.len() - 2]
        } else {
            self.flag(DataProblem::BareLf);
            &line[..line.len() - 1]
        };
        if body.contains(&b'\r') {
            self.flag(DataProblem::BareCr);
        }
        if body.contains(&0) {
            self.flag(DataProblem::Nul);
        }
        if self.in_headers {
            if body.is_empty() {
                self.in_headers = false;
            } else if body.len() >= 9 && body[..9].eq_ignore_ascii_case(b"received:") {
                self.received += 1;
                if self.received > MAX_RECEIVED {
                    self.flag(DataProblem::Loop);
                }
            }
        }
        // A leading dot was added by the client (RFC 5321 §4.5.2) — but
        // only at the start of a real line.
        let text = if after_crlf && line.first() == Some(&b'.') {
            &line[1..]
        } else {
            line
        };
        self.size += text.len() as u64;
        if self.size > self.max_size {
            self.flag(DataProblem::TooBig);
        }
        if self.problem.is_none() {
            out.extend_from_slice(text);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8]) -> (Vec<u8>, Fed, Option<DataProblem>) {
        let mut r = DataReceiver::new(1 << 20, 1000);
        let mut out = Vec::new();
        let fed = r.feed(input, &mut out);
        (out, fed, r.problem())
    }

    #[test]
    fn ends_at_crlf_dot_crlf_and_keeps_the_rest() {
        let (out, fed, p) = run(b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n");
        assert_eq!(out, b"Subject: x\r\n\r\nhello\r\n");
        assert!(fed.done);
        assert_eq!(fed.consumed, 24);
        assert_eq!(p, None);
    }

    #[test]
    fn empty_message() {
        let (out, fed, p) = run(b".\r\n");
        assert!(out.is_empty() && fed.done && p.is_none());
    }

    #[test]
    fn unstuffs_dots() {
        let (out, fed, _) = run(b"..leading\r\n...\r\n.\r\n");
        assert_eq!(out, b".leading\r\n..\r\n");
        assert!(fed.done);
    }

    #[test]
    fn byte_at_a_time_is_the_same() {
        let input = b"A: b\r\n\r\n..x\r\n\xff\xfe\r\n.\r\nNOOP\r\n";
        let mut r = DataReceiver::new(1 << 20, 1000);
        let mut out = Vec::new();
        let mut used = 0;
        for (i, b) in input.iter().enumerate() {
            let fed = r.feed(std::slice::from_ref(b), &mut out);
            if fed.done {
                used = i + 1;
                break;
            }
        }
        assert_eq!(out, b"A: b\r\n\r\n.x\r\n\xff\xfe\r\n");
        assert_eq!(&input[used..], b"NOOP\r\n");
    }

    #[test]
    fn smuggling_sequences_do_not_end_the_message() {
        for seq in [
            &b"\n.\n"[..],
            b"\n.\r",
            b"\r.\n",
            b"\r.\r",
            b"\n.\r\n",
            b"\r.\r\n",
            b"\r\n\x00.\r\n",
        ] {
            let mut input = b"Subject: a\r\n\r\nfirst".to_vec();
            input.extend_from_slice(seq);
            input.extend_from_slice(b"MAIL FROM:<x@evil.example>\r\nRCPT TO:<v@example.com>\r\n");
            input.extend_from_slice(b"DATA\r\nsmuggled\r\n.\r\nQUIT\r\n");
            let (_, fed, p) = run(&input);
            assert!(fed.done, "{seq:?}");
            assert_eq!(&input[fed.consumed..], b"QUIT\r\n", "{seq:?}");
            assert!(p.is_some(), "{seq:?} must be refused");
        }
    }

    #[test]
    fn problems() {
        assert_eq!(run(b"a\rb\r\n.\r\n").2, Some(DataProblem::BareCr));
        assert_eq!(run(b"a\nb\r\n.\r\n").2, Some(DataProblem::BareLf));
        assert_eq!(run(b"a\0b\r\n.\r\n").2, Some(DataProblem::Nul));
        let long = [b"x".repeat(999), b"\r\n.\r\n".to_vec()].concat();
        assert_eq!(run(&long).2, Some(DataProblem::LineTooLong));
        let ok = [b"x".repeat(998), b"\r\n.\r\n".to_vec()].concat();
        assert_eq!(run(&ok).2, None);
        let mut r = DataReceiver::new(10, 1000);
        let mut out = Vec::new();
        let fed = r.feed(b"0123456789\r\n.\r\n", &mut out);
        assert!(fed.done);
        assert_eq!(r.problem(), Some(DataProblem::TooBig));
    }

    #[test]
    fn long_line_split_across_feeds_still_finds_the_end() {
        let mut r = DataReceiver::new(1 << 20, 100);
        let mut out = Vec::new();
        assert!(!r.feed(&b"y".repeat(80), &mut out).done);
        assert!(!r.feed(&b"y".repeat(80), &mut out).done);
        assert!(!r.feed(b"yy\r\n", &mut out).done);
        let fed = r.feed(b".\r\nRSET\r\n", &mut out);
        assert!(fed.done);
        assert_eq!(fed.consumed, 3);
        assert_eq!(r.problem(), Some(DataProblem::LineTooLong));
    }

    #[test]
    fn counts_received_headers_for_loops() {
        let mut msg = Vec::new();
        for i in 0..30 {
            msg.extend_from_slice(format!("Received: from hop{i}\r\n").as_bytes());
        }
        let body = [
            msg.clone(),
            b"\r\nbody\r\nReceived: not a header\r\n.\r\n".to_vec(),
        ]
        .concat();
        assert_eq!(run(&body).2, None);
        let looped = [msg, b"RECEIVED: one more\r\n\r\n.\r\n".to_vec()].concat();
        assert_eq!(run(&looped).2, Some(DataProblem::Loop));
    }
}
