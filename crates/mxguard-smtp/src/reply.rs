//! Server replies and EHLO capabilities, parsed without I/O.
//!
//! mxguard's client talks to servers it is auditing, so the parser is strict
//! about structure (three digits, then `-` or space or end of line; every
//! line of a multi-line reply carries the same code) and bounded in size, but
//! keeps each line's text verbatim: the lines are evidence in reports.

use serde::Serialize;

/// Longest reply line accepted (RFC 5321 §4.5.3.1.5 allows 512 octets; real
/// servers exceed it, so allow more, but not without bound).
pub const MAX_LINE: usize = 4096;
/// Most lines in one reply (an EHLO answer lists one extension per line).
pub const MAX_LINES: usize = 128;

/// One complete reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reply {
    pub code: u16,
    /// The text of each line after the code and separator.
    pub lines: Vec<String>,
}

impl Reply {
    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 3xx: go on (after DATA).
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    /// 4xx: try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: do not try again.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// The RFC 3463 enhanced status code at the start of the first line, if
    /// the server sent one whose class matches the reply code.
    pub fn enhanced(&self) -> Option<(u8, u16, u16)> {
        let first = self.lines.first()?;
        let word = first.split_whitespace().next()?;
        let mut parts = word.split('.');
        let class: u8 = parts.next()?.parse().ok()?;
        let subject: u16 = parts.next()?.parse().ok()?;
        let detail: u16 = parts.next()?.parse().ok()?;
        if parts.next().is_some() || u16::from(class) != self.code / 100 {
            return None;
        }
        Some((class, subject, detail))
    }

    /// The reply as one line for evidence: `550 5.1.1 no such user`.
    pub fn one_line(&self) -> String {
        match self.lines.first() {
            Some(text) if !text.is_empty() => format!("{} {text}", self.code),
            _ => self.code.to_string(),
        }
    }
}

/// Why bytes are not a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// Not enough bytes yet; feed more.
    #[error("incomplete reply")]
    NeedsMoreData,
    #[error("reply line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("reply longer than {MAX_LINES} lines")]
    TooManyLines,
    #[error("malformed reply line {0:?}")]
    Malformed(String),
    #[error("multi-line reply changed code from {first} to {later}")]
    CodeChanged { first: u16, later: u16 },
}

/// Parse one reply from the front of `buf`: the reply and the bytes it
/// used, or `NeedsMoreData` until its last line has arrived. Stateless: call
/// again with the same bytes plus more.
pub fn parse_reply(buf: &[u8]) -> Result<(Reply, usize), ReplyError> {
    let mut used = 0;
    let mut code = None;
    let mut lines = Vec::new();
    loop {
        let rest = &buf[used..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() > MAX_LINE {
                return Err(ReplyError::LineTooLong);
            }
            return Err(ReplyError::NeedsMoreData);
        };
        if nl > MAX_LINE {
            return Err(ReplyError::LineTooLong);
        }
        // Tolerate a bare LF from broken servers; strip the CR before it.
        let raw = &rest[..nl];
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        used += nl + 1;
        let line = String::from_utf8_lossy(raw);
        let (this, last, text) = split_line(&line)?;
        match code {
            None => code = Some(this),
            Some(first) if first != this => {
                return Err(ReplyError::CodeChanged { first, later: this });
            }
            Some(_) => {}
        }
        if lines.len() >= MAX_LINES {
            return Err(ReplyError::TooManyLines);
        }
        lines.push(text.to_owned());
        if last {
            return Ok((Reply { code: this, lines }, used));
        }
    }
}

fn split_line(line: &str) -> Result<(u16, bool, &str), ReplyError> {
    let bad = || ReplyError::Malformed(line.chars().take(80).collect());
    let bytes = line.as_bytes();
    if bytes.len() < 3 || !bytes[..3].iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let code: u16 = line[..3].parse().map_err(|_| bad())?;
    if !(200..600).contains(&code) {
        return Err(bad());
    }
    match bytes.get(3) {
        None => Ok((code, true, "")),
        Some(b' ') => Ok((code, true, &line[4..])),
        Some(b'-') => Ok((code, false, &line[4..])),
        Some(_) => Err(bad()),
    }
}

/// What a server said it supports in its EHLO reply (RFC 5321 §4.1.1.1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// The server answered EHLO (false: only HELO worked).
    pub esmtp: bool,
    /// RFC 1870 SIZE; `Some(0)` means "no fixed limit".
    pub size: Option<u64>,
    pub starttls: bool,
    pub pipelining: bool,
    pub eightbitmime: bool,
    pub smtputf8: bool,
    pub chunking: bool,
    pub enhanced_status_codes: bool,
    pub dsn: bool,
    /// AUTH mechanisms offered, upper-case.
    pub auth: Vec<String>,
    /// Every extension line after the greeting, verbatim.
    pub extensions: Vec<String>,
}

impl Capabilities {
    /// Read capabilities from a 250 reply to EHLO (the first line is the
    /// server's greeting, not an extension).
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities {
            esmtp: true,
            ..Capabilities::default()
        };
        for line in reply.lines.iter().skip(1) {
            caps.extensions.push(line.clone());
            let mut words = line.split_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "STARTTLS" => caps.starttls = true,
                "PIPELINING" => caps.pipelining = true,
                "8BITMIME" => caps.eightbitmime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "CHUNKING" => caps.chunking = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "DSN" => caps.dsn = true,
                "AUTH" => caps.auth.extend(words.map(str::to_ascii_uppercase)),
                _ => {}
            }
        }
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multi_line_replies() {
        let (r, n) = parse_reply(b"220 mx.example ESMTP\r\nrest").unwrap();
        assert_eq!(
            (r.code, r.lines.as_slice(), n),
            (220, &["mx.example ESMTP".to_string()][..], 22)
        );
        let text = b"250-mx.example hello\r\n250-SIZE 1000\r\n250 STARTTLS\r\n";
        let (r, n) = parse_reply(text).unwrap();
        assert_eq!(n, text.len());
        assert_eq!(r.lines, ["mx.example hello", "SIZE 1000", "STARTTLS"]);
        // bare code, bare LF
        assert_eq!(parse_reply(b"354\n").unwrap().0.code, 354);
    }

    #[test]
    fn incomplete_and_malformed() {
        assert_eq!(
            parse_reply(b"250-first\r\n250 sec"),
            Err(ReplyError::NeedsMoreData)
        );
        assert_eq!(parse_reply(b""), Err(ReplyError::NeedsMoreData));
        assert!(matches!(
            parse_reply(b"25O ok\r\n"),
            Err(ReplyError::Malformed(_))
        ));
        assert!(matches!(
            parse_reply(b"250_ok\r\n"),
            Err(ReplyError::Malformed(_))
        ));
        assert!(matches!(
            parse_reply(b"999 no\r\n"),
            Err(ReplyError::Malformed(_))
        ));
        assert_eq!(
            parse_reply(b"250-a\r\n251 b\r\n"),
            Err(ReplyError::CodeChanged {
                first: 250,
                later: 251
            })
        );
        assert_eq!(
            parse_reply(&vec![b'2'; MAX_LINE + 2]),
            Err(ReplyError::LineTooLong)
        );
        let many: Vec<u8> = (0..MAX_LINES + 1)
            .flat_map(|_| b"250-x\r\n".to_vec())
            .collect();
        assert_eq!(parse_reply(&many), Err(ReplyError::TooManyLines));
    }

    #[test]
    fn classes_and_enhanced_codes() {
        let r = |code, text: &str| Reply {
            code,
            lines: vec![text.into()],
        };
        assert!(r(250, "ok").is_positive());
        assert!(r(354, "go").is_intermediate());
        assert!(r(451, "later").is_transient());
        assert!(r(550, "no").is_permanent());
        assert_eq!(r(550, "5.1.1 no such user").enhanced(), Some((5, 1, 1)));
        assert_eq!(r(550, "4.1.1 mismatched class").enhanced(), None);
        assert_eq!(r(250, "ok").enhanced(), None);
        assert_eq!(
            r(550, "5.1.1 no such user").one_line(),
            "550 5.1.1 no such user"
        );
    }

    #[test]
    fn ehlo_capabilities() {
        let (reply, _) = parse_reply(
            b"250-mx.example\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n250-starttls\r\n250-PIPELINING\r\n\
              250-AUTH PLAIN login\r\n250-X-CUSTOM 1\r\n250 SMTPUTF8\r\n",
        )
        .unwrap();
        let caps = Capabilities::from_ehlo(&reply);
        assert!(
            caps.esmtp && caps.starttls && caps.pipelining && caps.eightbitmime && caps.smtputf8
        );
        assert!(!caps.chunking && !caps.dsn);
        assert_eq!(caps.size, Some(52_428_800));
        assert_eq!(caps.auth, ["PLAIN", "LOGIN"]);
        assert_eq!(caps.extensions.len(), 7);
        let (bare, _) = parse_reply(b"250-x\r\n250 SIZE\r\n").unwrap();
        assert_eq!(Capabilities::from_ehlo(&bare).size, Some(0));
    }
}
