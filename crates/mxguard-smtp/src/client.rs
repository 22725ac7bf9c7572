//! A small SMTP client over tokio: connect, read replies, send commands,
//! keep a transcript. Used by `check` to probe (it never sends DATA) and,
//! later, by the relay to deliver.
//!
//! Every wait is bounded: the connect by `connect_timeout`, each reply by
//! `command_timeout` (RFC 5321 §4.5.3.2 suggests minutes for a sender; an
//! auditor can be less patient, so the caller chooses).

use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::tls::{CertVerdict, RecordingVerifier, TlsSession};

use crate::reply::{Capabilities, MAX_LINE, MAX_LINES, Reply, ReplyError, parse_reply};
use crate::transcript::{Direction, Transcript};

/// How a client behaves.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The name sent in EHLO/HELO.
    pub helo: String,
    pub connect_timeout: Duration,
    /// The most to wait for any one reply (the banner included); also
    /// bounds the TLS handshake.
    pub command_timeout: Duration,
    /// Roots that make a server certificate trusted.
    pub roots: Arc<RootCertStore>,
    /// A hard end for the whole conversation: no wait runs past it, and a
    /// wait it cuts short fails with [`SmtpError::Deadline`].
    pub deadline: Option<tokio::time::Instant>,
}

impl ClientConfig {
    /// The end of a wait of `limit` starting now, cut at the deadline; and
    /// whether the deadline is what ends it.
    fn wait_until(&self, limit: Duration) -> (tokio::time::Instant, bool) {
        let end = tokio::time::Instant::now() + limit;
        match self.deadline {
            Some(d) if d <= end => (d, true),
            _ => (end, false),
        }
    }
}

/// The byte stream under the conversation: plain TCP, or TLS after STARTTLS.
trait Wire: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug> Wire for T {}

/// What STARTTLS achieved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StartTlsOutcome {
    /// The server's answer to STARTTLS.
    pub reply: Reply,
    /// The handshake, if the server said 220: the session, or why it failed.
    pub handshake: Option<Result<TlsSession, String>>,
    /// The certificate's verdict, when the handshake got that far.
    pub certificate: Option<CertVerdict>,
}

/// Why a conversation could not go on.
#[derive(Debug, thiserror::Error)]
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
    /// The caller's overall deadline passed.
    #[error("the overall deadline passed while waiting for {waiting_for}")]
    Deadline { waiting_for: String },
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
    /// `None` only after a failed TLS handshake: the connection is gone.
    stream: Option<Box<dyn Wire>>,
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
        let (until, by_deadline) = cfg.wait_until(cfg.connect_timeout);
        let stream = match tokio::time::timeout_at(until, TcpStream::connect(addr)).await {
            Err(_) if by_deadline => {
                return Err(SmtpError::Deadline {
                    waiting_for: "the connection".into(),
                });
            }
            Err(_) => return Err(SmtpError::ConnectTimeout(cfg.connect_timeout)),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(SmtpError::Refused);
            }
            Ok(Err(e)) => return Err(SmtpError::Io(e)),
            Ok(Ok(s)) => s,
        };
        transcript.push(Direction::Event, "connected");
        let mut conn = Connection {
            stream: Some(Box::new(stream)),
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
        let wire = self.wire()?;
        wire.write_all(format!("{line}\r\n").as_bytes()).await?;
        // Over TLS the record may still sit in the session's buffer if the
        // socket was not writable at that instant: without a flush the
        // command can wait for the next write while we wait for its reply.
        wire.flush().await?;
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
        if let Some(stream) = self.stream.as_mut() {
            let _ = stream.shutdown().await;
        }
    }

    fn wire(&mut self) -> Result<&mut Box<dyn Wire>, SmtpError> {
        self.stream.as_mut().ok_or_else(|| SmtpError::Closed {
            waiting_for: "a command (the TLS handshake failed earlier)".into(),
        })
    }

    /// Send STARTTLS and, on 220, upgrade, judging the certificate for
    /// `mx_name` apart from the handshake. After a failed handshake the
    /// connection is unusable; after success the caller must EHLO again
    /// (RFC 3207 §4.2).
    pub async fn starttls(&mut self, mx_name: &str) -> Result<StartTlsOutcome, SmtpError> {
        let reply = self.command("STARTTLS").await?;
        if reply.code != 220 {
            return Ok(StartTlsOutcome {
                reply,
                handshake: None,
                certificate: None,
            });
        }
        // Bytes the server pipelined after its 220 would be injected plain
        // text (CVE-2011-0411 in reverse); drop them.
        self.buf.clear();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(
            RecordingVerifier::new(self.cfg.roots.clone(), provider.clone())
                .map_err(std::io::Error::other)?,
        );
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        let name = ServerName::try_from(mx_name.to_owned())
            .map_err(|e| std::io::Error::other(format!("{mx_name:?} as TLS server name: {e}")))?;
        let stream = self.stream.take().ok_or_else(|| SmtpError::Closed {
            waiting_for: "STARTTLS".into(),
        })?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let (until, _) = self.cfg.wait_until(self.cfg.command_timeout);
        let handshake = tokio::time::timeout_at(until, connector.connect(name, stream)).await;
        let certificate = verifier.take_verdict();
        let handshake = match handshake {
            Err(_) => Err("handshake timed out".to_owned()),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(tls)) => {
                let (_, session) = tls.get_ref();
                let version = session
                    .protocol_version()
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_default();
                let cipher = session
                    .negotiated_cipher_suite()
                    .map(|c| format!("{:?}", c.suite()))
                    .unwrap_or_default();
                self.stream = Some(Box::new(tls));
                Ok(TlsSession { version, cipher })
            }
        };
        match &handshake {
            Ok(s) => self.transcript.push(
                Direction::Event,
                format!("TLS established: {} {}", s.version, s.cipher),
            ),
            Err(e) => self
                .transcript
                .push(Direction::Event, format!("TLS handshake failed: {e}")),
        }
        if let Some(v) = &certificate {
            let text = match &v.problem {
                None => "certificate trusted".to_owned(),
                Some(p) => format!("certificate not trusted: {p}"),
            };
            self.transcript.push(Direction::Event, text);
        }
        Ok(StartTlsOutcome {
            reply,
            handshake: Some(handshake),
            certificate,
        })
    }

    /// Send a message's text after a 354 to DATA: dot-stuffed (RFC 5321
    /// §4.5.2), CRLF-terminated, then the final `.`; and read the reply,
    /// waiting up to `limit` for it (RFC 5321 §4.5.3.2.6 suggests 10
    /// minutes). The text goes to the transcript as one event, not verbatim.
    pub async fn send_message(
        &mut self,
        message: &[u8],
        limit: Duration,
    ) -> Result<Reply, SmtpError> {
        let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 8);
        let mut at_line_start = true;
        for &b in message {
            if at_line_start && b == b'.' {
                out.push(b'.');
            }
            out.push(b);
            at_line_start = b == b'\n';
        }
        if !out.is_empty() && !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        self.transcript.push(
            Direction::Event,
            format!("message text sent ({} octets)", message.len()),
        );
        let (until, by_deadline) = self.cfg.wait_until(limit);
        let wire = self.wire()?;
        let write = async {
            wire.write_all(&out).await?;
            wire.flush().await
        };
        match tokio::time::timeout_at(until, write).await {
            Ok(r) => r?,
            Err(_) if by_deadline => {
                return Err(SmtpError::Deadline {
                    waiting_for: "the message text to be taken".into(),
                });
            }
            Err(_) => {
                return Err(SmtpError::Timeout {
                    waiting_for: "the message text to be taken".into(),
                    after: limit,
                });
            }
        }
        self.read_reply_within("the end of DATA", limit).await
    }

    async fn read_reply(&mut self, waiting_for: &str) -> Result<Reply, SmtpError> {
        self.read_reply_within(waiting_for, self.cfg.command_timeout)
            .await
    }

    async fn read_reply_within(
        &mut self,
        waiting_for: &str,
        limit: Duration,
    ) -> Result<Reply, SmtpError> {
        let (deadline, by_deadline) = self.cfg.wait_until(limit);
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
            let read = tokio::time::timeout_at(deadline, self.wire()?.read(&mut chunk)).await;
            match read {
                Err(_) if by_deadline => {
                    self.transcript
                        .push(Direction::Event, "overall deadline reached; giving up");
                    return Err(SmtpError::Deadline {
                        waiting_for: waiting_for.to_owned(),
                    });
                }
                Err(_) => {
                    self.transcript
                        .push(Direction::Event, format!("no reply within {limit:?}"));
                    return Err(SmtpError::Timeout {
                        waiting_for: waiting_for.to_owned(),
                        after: limit,
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
