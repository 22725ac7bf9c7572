//! A small SMTP client over tokio: connect, read replies, send commands,
//! keep a transcript. Used by `check` to probe (it never sends DATA) and,
//! later, by the relay to deliver.
//!
//! Every wait is bounded: the connect by `connect_timeout`, each reply by
//! `command_timeout` (RFC 5321 §4.5.3.2 suggests minutes for a sender; an
//! auditor can be less patient, so the caller chooses).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::reply::{Capabilities, MAX_LINE, MAX_LINES, Reply, ReplyError, parse_reply};
use crate::transcript::{Direction, Transcript};

/// How a client behaves.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The name sent in EHLO/HELO.
    pub helo: String,
    pub connect_timeout: Duration,
    /// The most to wait for any one reply (the banner included).
    pub command_timeout: Duration,
}

/// Why a conversation could not go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SmtpError {
    /// Nothing listens there (TCP RST).
    #[error("connection refused")]
    Refused,
    /// The connect did not complete in time (filtered, or host down).
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// The server went quiet while we waited for a reply to `waiting_for`.
    #[error("no reply to {waiting_for} within {after:?}")]
    Timeout {
        waiting_for: String,
        after: Duration,
    },
    /// The server closed the connection.
    #[error("connection closed by the server while waiting for a reply to {waiting_for}")]
    Closed { waiting_for: String },
    /// The server sent something that is not an SMTP reply.
    #[error("malformed reply: {0}")]
    Protocol(#[from] ReplyError),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// One SMTP conversation.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    /// Bytes read but not yet parsed into a reply.
    buf: Vec<u8>,
    transcript: Transcript,
    cfg: ClientConfig,
}

impl Connection {
    /// Connect and read the banner. A banner that is not 220 (say, 421 or
    /// 554) is returned as it is: whether to go on is the caller's call.
    pub async fn connect(
        addr: SocketAddr,
        cfg: ClientConfig,
    ) -> Result<(Connection, Reply), SmtpError> {
        let mut transcript = Transcript::new();
        transcript.push(Direction::Event, format!("connecting to {addr}"));
        let stream = match tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(addr)).await
        {
            Err(_) => return Err(SmtpError::ConnectTimeout(cfg.connect_timeout)),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(SmtpError::Refused);
            }
            Ok(Err(e)) => return Err(SmtpError::Io(e)),
            Ok(Ok(s)) => s,
        };
        transcript.push(Direction::Event, "connected");
        let mut conn = Connection {
            stream,
            buf: Vec::with_capacity(1024),
            transcript,
            cfg,
        };
        let banner = conn.read_reply("the banner").await?;
        Ok((conn, banner))
    }

    /// What has been said so far.
    pub fn transcript(&self) -> &Transcript {
        &self.transcript
    }

    /// Take the transcript, ending the conversation's record.
    pub fn into_transcript(self) -> Transcript {
        self.transcript
    }

    /// Send one command line (without CRLF) and read its reply.
    pub async fn command(&mut self, line: &str) -> Result<Reply, SmtpError> {
        self.transcript.push(Direction::Client, line);
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .await?;
        let verb = line
            .split_whitespace()
            .next()
            .unwrap_or(line)
            .to_ascii_uppercase();
        self.read_reply(&verb).await
    }

    /// EHLO, falling back to HELO when the server does not know EHLO
    /// (RFC 5321 §4.1.4: a 5xx to EHLO means "try HELO").
    pub async fn hello(&mut self) -> Result<(Reply, Capabilities), SmtpError> {
        let ehlo = self.command(&format!("EHLO {}", self.cfg.helo)).await?;
        if ehlo.is_positive() {
            let caps = Capabilities::from_ehlo(&ehlo);
            return Ok((ehlo, caps));
        }
        if ehlo.is_permanent() {
            let helo = self.command(&format!("HELO {}", self.cfg.helo)).await?;
            return Ok((helo, Capabilities::default()));
        }
        Ok((ehlo, Capabilities::default()))
    }

    /// Say QUIT and close, politely but without waiting long for the answer.
    pub async fn quit(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.command("QUIT")).await;
        let _ = self.stream.shutdown().await;
    }

    async fn read_reply(&mut self, waiting_for: &str) -> Result<Reply, SmtpError> {
        let deadline = tokio::time::Instant::now() + self.cfg.command_timeout;
        loop {
            match parse_reply(&self.buf) {
                Ok((reply, used)) => {
                    self.buf.drain(..used);
                    for (i, text) in reply.lines.iter().enumerate() {
                        let sep = if i + 1 == reply.lines.len() { ' ' } else { '-' };
                        self.transcript.push(
                            Direction::Server,
                            format!("{}{sep}{text}", reply.code).trim_end(),
                        );
                    }
                    return Ok(reply);
                }
                Err(ReplyError::NeedsMoreData) => {}
                Err(e) => {
                    self.transcript
                        .push(Direction::Event, format!("malformed reply: {e}"));
                    return Err(e.into());
                }
            }
            if self.buf.len() > MAX_LINE * MAX_LINES {
                return Err(ReplyError::TooManyLines.into());
            }
            let mut chunk = [0u8; 4096];
            let read = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await;
            match read {
                Err(_) => {
                    self.transcript.push(
                        Direction::Event,
                        format!("no reply within {:?}", self.cfg.command_timeout),
                    );
                    return Err(SmtpError::Timeout {
                        waiting_for: waiting_for.to_owned(),
                        after: self.cfg.command_timeout,
                    });
                }
                Ok(Ok(0)) => {
                    self.transcript
                        .push(Direction::Event, "connection closed by the server");
                    return Err(SmtpError::Closed {
                        waiting_for: waiting_for.to_owned(),
                    });
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(e.into()),
            }
        }
    }
}
