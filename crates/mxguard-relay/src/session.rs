//! One SMTP session, from the banner to the last reply.
//!
//! Commands are parsed by smtp-proto; everything around them is ours: lines
//! must end with CRLF and stay under the length limit, every wait for the
//! client is bounded (RFC 5321 §4.5.3.2), replies are buffered while more
//! pipelined commands are already waiting and flushed before the session
//! waits for input (RFC 2920), and STARTTLS refuses to carry over plaintext
//! sent after it (the command-injection flaw of CVE-2011-0411).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mxguard_queue::{Body, Envelope, Incoming, QueueId, Spool, SpoolError};
use smtp_proto::{Error as ParseError, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::data::DataReceiver;
use crate::events::{Events, MailEvent, Stage};
use crate::policy::{Policy, RcptDecision};

/// The byte stream of a session: TCP, TLS over TCP, or an in-memory pipe
/// in tests.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The limits and names a session works with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub hostname: String,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_line: usize,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub max_errors: usize,
}

/// What every session shares.
#[derive(Debug)]
pub struct Shared {
    pub settings: Settings,
    pub policy: Policy,
    pub spool: Arc<dyn Spool>,
    pub events: Arc<Events>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Told of every accepted message (absent: accept and spool only).
    pub delivery: Option<Arc<crate::delivery::Delivery>>,
    /// SPF for the MAIL FROM domain (absent: not checked).
    pub spf: Option<Arc<dyn crate::spf::SpfCheck>>,
    /// Becomes true when the relay stops: sessions waiting for a command
    /// are told so and closed (a message in progress is finished first).
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// Where the spool lives (for reload checks).
    pub spool_path: std::path::PathBuf,
}

impl Shared {
    pub fn spool_path(&self) -> &std::path::PathBuf {
        &self.spool_path
    }
}

/// The longest DATA waits for an SPF check still running.
const SPF_WAIT_AT_DATA: Duration = Duration::from_secs(1);

/// Read sizes between commands and during DATA.
const COMMAND_CHUNK: usize = 1024;
const DATA_CHUNK: usize = 64 * 1024;

/// Message text is handed to the spool in pieces of about this size.
const SPOOL_CHUNK: usize = 256 * 1024;

/// How a session ended, when it was not the client's QUIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Quit,
    ClientClosed,
    Timeout,
    TooManyErrors,
    TlsFailed,
    Injection,
    Io,
    SpoolCrashed,
    Shutdown,
}

impl End {
    fn reason(self) -> Option<&'static str> {
        match self {
            End::Quit => None,
            End::ClientClosed => Some("client-closed"),
            End::Timeout => Some("timeout"),
            End::TooManyErrors => Some("too-many-errors"),
            End::TlsFailed => Some("tls-failed"),
            End::Injection => Some("starttls-injection"),
            End::Io => Some("io-error"),
            End::SpoolCrashed => Some("spool-crashed"),
            End::Shutdown => Some("shutdown"),
        }
    }
}

/// A line read from the client.
enum Line {
    Text(Vec<u8>),
    TooLong,
}

struct Wire {
    io: Option<Box<dyn Io>>,
    rbuf: Vec<u8>,
    /// Start of the unread part of `rbuf`.
    rpos: usize,
    wbuf: Vec<u8>,
}

impl Wire {
    fn io(&mut self) -> Result<&mut Box<dyn Io>, End> {
        self.io.as_mut().ok_or(End::Io)
    }

    fn unread(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }

    fn reply(&mut self, text: &str) {
        // Multi-line replies are given with '\n' between lines.
        let lines: Vec<&str> = text.split('\n').collect();
        let (code, _) = lines[0].split_at(3.min(lines[0].len()));
        for (i, l) in lines.iter().enumerate() {
            let body = if i == 0 { &l[code.len()..] } else { l };
            let body = body.strip_prefix(' ').unwrap_or(body);
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            self.wbuf.extend_from_slice(code.as_bytes());
            self.wbuf.push(sep as u8);
            self.wbuf.extend_from_slice(body.as_bytes());
            self.wbuf.extend_from_slice(b"\r\n");
        }
    }

    async fn flush(&mut self, timeout: Duration) -> Result<(), End> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.wbuf);
        let io = self.io()?;
        let write = async {
            io.write_all(&buf).await?;
            io.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Io),
            Err(_) => Err(End::Timeout),
        }
    }

    /// Read more input, after flushing pending replies. `chunk` is how much
    /// room to offer the read: small between commands (an idle session
    /// should cost little memory), large during DATA.
    async fn fill(&mut self, timeout: Duration, chunk: usize) -> Result<(), End> {
        self.flush(timeout).await?;
        if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        if self.rbuf.is_empty() && self.rbuf.capacity() > 4 * chunk {
            self.rbuf.shrink_to(chunk);
        }
        if self.rbuf.capacity() - self.rbuf.len() < chunk / 2 {
            self.rbuf.reserve(chunk);
        }
        let io = self.io.as_mut().ok_or(End::Io)?;
        match tokio::time::timeout(timeout, io.read_buf(&mut self.rbuf)).await {
            Ok(Ok(0)) => Err(End::ClientClosed),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(End::Io),
            Err(_) => Err(End::Timeout),
        }
    }

    /// One command line, LF included.
    async fn line(&mut self, max: usize, timeout: Duration) -> Result<Line, End> {
        let mut too_long = false;
        loop {
            if let Some(i) = self.unread().iter().position(|&b| b == b'\n') {
                let line = self.unread()[..=i].to_vec();
                self.rpos += i + 1;
                if too_long || line.len() > max {
                    return Ok(Line::TooLong);
                }
                return Ok(Line::Text(line));
            }
            if self.unread().len() > max {
                // Keep only what is needed to find the end of the line.
                too_long = true;
                self.rpos = self.rbuf.len();
            }
            self.fill(timeout, COMMAND_CHUNK).await?;
        }
    }
}

/// An SPF check running while the client sends its recipients; dropped
/// with its transaction.
struct SpfTask(tokio::task::JoinHandle<mxguard_queue::SpfResult>);

impl Drop for SpfTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Transaction {
    from: String,
    spf: Option<SpfTask>,
    body: Body,
    smtputf8: bool,
    rcpts: Vec<String>,
    /// The SIZE the client declared at MAIL (0: none).
    declared_size: u64,
    /// The largest message this transaction may carry: the relay's own
    /// limit, lowered to each recipient domain's primary's (see `mirror`).
    size_limit: u64,
}

/// TLS facts for the Received header.
struct TlsInfo {
    version: String,
    cipher: String,
}

struct Session {
    shared: Arc<Shared>,
    peer: SocketAddr,
    wire: Wire,
    helo: Option<String>,
    esmtp: bool,
    tls: Option<TlsInfo>,
    tx: Option<Transaction>,
    errors: usize,
    messages: usize,
}

/// Run one session to its end.
pub async fn run(shared: Arc<Shared>, io: Box<dyn Io>, peer: SocketAddr) {
    let mut s = Session {
        shared,
        peer,
        wire: Wire {
            io: Some(io),
            rbuf: Vec::with_capacity(1024),
            rpos: 0,
            wbuf: Vec::with_capacity(512),
        },
        helo: None,
        esmtp: false,
        tls: None,
        tx: None,
        errors: 0,
        messages: 0,
    };
    s.shared.events.emit(MailEvent::Connect {
        client: peer,
        refused: None,
    });
    let end = match s.serve().await {
        Ok(()) => End::Quit,
        Err(e) => e,
    };
    let timeout = s.settings().command_timeout;
    match end {
        End::Timeout => {
            let host = s.settings().hostname.clone();
            s.wire.reply(&format!(
                "421 4.4.2 {host} Timeout waiting for input; closing"
            ));
            let _ = s.wire.flush(Duration::from_secs(5).min(timeout)).await;
        }
        End::Shutdown => {
            let host = s.settings().hostname.clone();
            s.wire.reply(&format!(
                "421 4.3.2 {host} Service shutting down; try again later"
            ));
            let _ = s.wire.flush(Duration::from_secs(5).min(timeout)).await;
        }
        End::TooManyErrors | End::Injection | End::Quit => {
            let _ = s.wire.flush(timeout).await;
        }
        End::ClientClosed | End::TlsFailed | End::Io | End::SpoolCrashed => {}
    }
    if let Some(mut io) = s.wire.io.take() {
        let _ = tokio::time::timeout(Duration::from_secs(5), io.shutdown()).await;
    }
    s.shared.events.emit(MailEvent::Disconnect {
        client: peer,
        messages: s.messages,
        reason: end.reason(),
    });
}

impl Session {
    fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    fn reject(&mut self, stage: Stage, reason: &'static str, rcpt: Option<String>, reply: &str) {
        self.wire.reply(reply);
        self.shared.metrics.rejected(reason);
        self.shared.events.emit(MailEvent::Rejected {
            client: self.peer,
            stage,
            reason,
            from: self.tx.as_ref().map(|t| t.from.clone()),
            rcpt,
            reply: reply.to_owned(),
        });
    }

    /// Count an error; true when the session must end.
    fn error(&mut self) -> bool {
        self.errors += 1;
        if self.errors >= self.settings().max_errors {
            let host = self.settings().hostname.clone();
            self.wire.reply(&format!(
                "421 4.7.0 {host} Too many errors; closing the connection"
            ));
            self.shared.events.emit(MailEvent::Rejected {
                client: self.peer,
                stage: Stage::Session,
                reason: "too-many-errors",
                from: None,
                rcpt: None,
                reply: "421 4.7.0".into(),
            });
            return true;
        }
        false
    }

    async fn serve(&mut self) -> Result<(), End> {
        let host = self.settings().hostname.clone();
        self.wire.reply(&format!("220 {host} ESMTP mxguard relay"));
        loop {
            let (max, timeout) = (self.settings().max_line, self.settings().command_timeout);
            let mut stopping = self.shared.stopping.clone();
            let next = tokio::select! {
                l = self.wire.line(max, timeout) => l?,
                _ = async {
                    // A relay without a stop signal (its sender gone) never stops sessions.
                    if stopping.wait_for(|s| *s).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                } => {
                    self.wire.flush(timeout).await?;
                    return Err(End::Shutdown);
                }
            };
            let line = match next {
                Line::TooLong => {
                    self.wire.reply(&format!(
                        "500 5.5.2 Line too long (the limit is {max} octets)"
                    ));
                    if self.error() {
                        return Err(End::TooManyErrors);
                    }
                    continue;
                }
                Line::Text(l) => l,
            };
            if !line.ends_with(b"\r\n") {
                self.wire
                    .reply("500 5.5.2 Command lines must end with CRLF (RFC 5321 §2.3.8)");
                if self.error() {
                    return Err(End::TooManyErrors);
                }
                continue;
            }
            if line[..line.len() - 2].iter().any(|&b| b == b'\r' || b == 0) {
                self.wire.reply("500 5.5.2 Bare CR or NUL in the command");
                if self.error() {
                    return Err(End::TooManyErrors);
                }
                continue;
            }
            let request = Request::parse(&mut line.iter()).map(Request::into_owned);
            match self.command(request).await {
                Ok(true) => {}
                Ok(false) => {
                    if self.error() {
                        return Err(End::TooManyErrors);
                    }
                }
                Err(end) => return Err(end),
            }
        }
    }

    /// Handle one command. Ok(false): the reply was an error to count.
    async fn command(&mut self, request: Result<Request<String>, ParseError>) -> Result<bool, End> {
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                let reply = match e {
                    ParseError::UnknownCommand => "500 5.5.2 Command unrecognized".to_owned(),
                    ParseError::SyntaxError { syntax } => format!("501 5.5.4 Syntax: {syntax}"),
                    ParseError::InvalidSenderAddress => {
                        "501 5.1.7 Bad sender address syntax".to_owned()
                    }
                    ParseError::InvalidRecipientAddress => {
                        "501 5.1.3 Bad recipient address syntax".to_owned()
                    }
                    ParseError::InvalidParameter { param } => {
                        format!("501 5.5.4 Invalid value for the {param} parameter")
                    }
                    ParseError::UnsupportedParameter { param } => format!(
                        "555 5.5.4 Unsupported parameter {}",
                        crate::callout::sanitize(&param)
                    ),
                    _ => "500 5.5.2 Syntax error".to_owned(),
                };
                self.wire.reply(&reply);
                return Ok(false);
            }
        };
        match request {
            Request::Ehlo { host } => Ok(self.hello(host, true)),
            Request::Helo { host } => Ok(self.hello(host, false)),
            Request::Mail { from } => Ok(self.mail(from).await),
            Request::Rcpt { to } => Ok(self.rcpt(to).await),
            Request::Data => self.data().await,
            Request::Rset => {
                self.tx = None;
                self.wire.reply("250 2.0.0 Ok");
                Ok(true)
            }
            Request::Noop { .. } => {
                self.wire.reply("250 2.0.0 Ok");
                Ok(true)
            }
            Request::Quit => {
                self.wire.reply("221 2.0.0 Bye");
                Err(End::Quit)
            }
            Request::Vrfy { .. } => {
                self.wire.reply(
                    "252 2.5.0 Cannot VRFY; send mail and the recipient will be checked at RCPT",
                );
                Ok(true)
            }
            Request::Expn { .. } => {
                self.wire.reply("502 5.5.1 EXPN is not available");
                Ok(true)
            }
            Request::Help { .. } => {
                self.wire.reply(
                    "214 2.0.0 mxguard relay: a backup MX. Commands: EHLO HELO MAIL RCPT DATA \
                     RSET NOOP QUIT VRFY STARTTLS",
                );
                Ok(true)
            }
            Request::StartTls => self.starttls().await,
            Request::Auth { .. } => {
                self.wire
                    .reply("502 5.5.1 AUTH is not available: this host only receives mail");
                Ok(false)
            }
            Request::Lhlo { .. }
            | Request::Bdat { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => {
                self.wire.reply("502 5.5.1 Command not implemented");
                Ok(false)
            }
        }
    }

    fn hello(&mut self, host: String, esmtp: bool) -> bool {
        if host.trim().is_empty() {
            self.wire.reply("501 5.5.4 Syntax: EHLO hostname");
            return false;
        }
        self.tx = None;
        self.esmtp = esmtp;
        let name = crate::callout::sanitize(host.trim());
        let me = self.settings().hostname.clone();
        let ip = self.peer.ip();
        if !esmtp {
            self.wire.reply(&format!("250 {me} Hello {name} [{ip}]"));
            self.helo = Some(name);
            return true;
        }
        let mut lines = vec![
            format!("250 {me} Hello {name} [{ip}]"),
            "PIPELINING".into(),
            format!(
                "SIZE {}",
                self.shared.policy.callout().mirror.advertised(
                    self.settings().max_message_size,
                    self.shared.policy.domain_names()
                )
            ),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
        ];
        if self.shared.tls.is_some() && self.tls.is_none() {
            lines.push("STARTTLS".into());
        }
        self.wire.reply(&lines.join("\n"));
        self.helo = Some(name);
        true
    }

    async fn mail(&mut self, from: smtp_proto::MailFrom<String>) -> bool {
        if self.helo.is_none() {
            self.wire.reply("503 5.5.1 Error: send EHLO or HELO first");
            return false;
        }
        if self.tx.is_some() {
            self.wire.reply("503 5.5.1 Error: nested MAIL command");
            return false;
        }
        use smtp_proto::*;
        let unadvertised = MAIL_BODY_BINARYMIME
            | MAIL_RET_FULL
            | MAIL_RET_HDRS
            | MAIL_REQUIRETLS
            | MAIL_CONPERM
            | MAIL_BY_NOTIFY
            | MAIL_BY_RETURN
            | MAIL_BY_TRACE;
        if from.flags & unadvertised != 0
            || from.env_id.is_some()
            || from.auth.is_some()
            || from.trans_id.is_some()
            || from.mtrk.is_some()
            || from.hold_for != 0
            || from.hold_until != 0
        {
            self.wire
                .reply("555 5.5.4 MAIL parameters of an extension this host does not offer");
            return false;
        }
        if !self.esmtp && from.flags != 0 {
            self.wire.reply("555 5.5.4 MAIL parameters need EHLO");
            return false;
        }
        let max = self.settings().max_message_size;
        if from.size as u64 > max {
            let reply = format!("552 5.3.4 Message size exceeds the limit of {max} octets");
            self.reject(Stage::Mail, "too-big", None, &reply);
            return true;
        }
        let smtputf8 = from.flags & MAIL_SMTPUTF8 != 0;
        if !smtputf8 && !from.address.is_ascii() {
            self.wire
                .reply("553 5.6.7 Non-ASCII address needs the SMTPUTF8 parameter (RFC 6531)");
            return false;
        }
        let spf = match (&self.shared.spf, from.address.is_empty()) {
            (Some(check), false) => {
                let (check, ip) = (check.clone(), self.peer.ip());
                let (helo, sender) = (self.helo.clone().unwrap_or_default(), from.address.clone());
                Some(SpfTask(tokio::spawn(async move {
                    check.check(ip, &helo, &sender).await
                })))
            }
            _ => None,
        };
        self.tx = Some(Transaction {
            spf,
            from: from.address,
            body: if from.flags & MAIL_BODY_8BITMIME != 0 {
                Body::EightBitMime
            } else {
                Body::SevenBit
            },
            smtputf8,
            rcpts: Vec::new(),
            declared_size: from.size as u64,
            size_limit: max,
        });
        self.wire.reply("250 2.1.0 Ok");
        true
    }

    async fn rcpt(&mut self, to: smtp_proto::RcptTo<String>) -> bool {
        let Some(tx) = &self.tx else {
            self.wire.reply("503 5.5.1 Error: need MAIL command");
            return false;
        };
        if to.orcpt.is_some() || to.flags != 0 {
            self.wire
                .reply("555 5.5.4 RCPT parameters of an extension this host does not offer");
            return false;
        }
        if !tx.smtputf8 && !to.address.is_ascii() {
            self.wire
                .reply("553 5.6.7 Non-ASCII address needs SMTPUTF8 in MAIL FROM (RFC 6531)");
            return false;
        }
        let max = self.settings().max_recipients;
        if tx.rcpts.len() >= max {
            let reply = format!("452 4.5.3 Too many recipients (at most {max} per message)");
            self.reject(Stage::Rcpt, "too-many-recipients", Some(to.address), &reply);
            return true;
        }
        match self.shared.policy.rcpt(&to.address).await {
            RcptDecision::Accept(address) => {
                // Never take what the primary would refuse: its SIZE.
                let domain = address.rsplit_once('@').map_or("", |(_, d)| d).to_owned();
                let primary_limit = self.shared.policy.callout().mirror.size_limit(&domain);
                let tx = self.tx.as_mut().expect("checked above");
                if let Some(limit) = primary_limit {
                    if tx.declared_size > limit {
                        let reply = format!(
                            "552 5.3.4 Message size exceeds the limit of the primary for {domain} ({limit} octets)"
                        );
                        self.reject(Stage::Rcpt, "too-big-for-primary", Some(to.address), &reply);
                        return true;
                    }
                    tx.size_limit = tx.size_limit.min(limit);
                }
                let tx = self.tx.as_mut().expect("checked above");
                if !tx.rcpts.contains(&address) {
                    tx.rcpts.push(address);
                }
                self.wire.reply("250 2.1.5 Ok");
                true
            }
            RcptDecision::Refuse { reply, reason } => {
                let permanent = reply.starts_with('5');
                self.reject(Stage::Rcpt, reason, Some(to.address), &reply);
                !permanent
            }
        }
    }

    async fn starttls(&mut self) -> Result<bool, End> {
        let Some(acceptor) = self.shared.tls.clone().map(tokio_rustls::TlsAcceptor::from) else {
            self.wire.reply("502 5.5.1 STARTTLS is not available");
            return Ok(false);
        };
        if self.tls.is_some() {
            self.wire.reply("503 5.5.1 Error: TLS is already active");
            return Ok(false);
        }
        if !self.wire.unread().is_empty() {
            // Anything sent after STARTTLS in the same flight would be
            // taken as if it came over TLS.
            self.reject(
                Stage::Session,
                "starttls-injection",
                None,
                "554 5.5.1 Error: commands sent after STARTTLS before the TLS handshake",
            );
            return Err(End::Injection);
        }
        self.wire.reply("220 2.0.0 Ready to start TLS");
        let timeout = self.settings().command_timeout;
        self.wire.flush(timeout).await?;
        let io = self.wire.io.take().ok_or(End::Io)?;
        match tokio::time::timeout(timeout, acceptor.accept(io)).await {
            Ok(Ok(stream)) => {
                let (_, conn) = stream.get_ref();
                let version = conn
                    .protocol_version()
                    .and_then(|v| v.as_str())
                    .unwrap_or("TLS")
                    .replace('_', ".");
                let cipher = conn
                    .negotiated_cipher_suite()
                    .and_then(|c| c.suite().as_str())
                    .unwrap_or("unknown")
                    .to_owned();
                self.tls = Some(TlsInfo { version, cipher });
                self.wire.io = Some(Box::new(stream));
                self.helo = None;
                self.esmtp = false;
                self.tx = None;
                Ok(true)
            }
            Ok(Err(e)) => {
                tracing::debug!(client = %self.peer, error = %e, "TLS handshake failed");
                Err(End::TlsFailed)
            }
            Err(_) => Err(End::Timeout),
        }
    }

    fn received_header(&self, id: &QueueId, tx: &Transaction) -> String {
        let helo = self.helo.clone().unwrap_or_default();
        let ip = match self.peer.ip() {
            std::net::IpAddr::V4(v4) => format!("[{v4}]"),
            std::net::IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
        };
        let protocol = match (tx.smtputf8, self.esmtp, self.tls.is_some()) {
            (true, _, true) => "UTF8SMTPS",
            (true, _, false) => "UTF8SMTP",
            (false, true, true) => "ESMTPS",
            (false, true, false) => "ESMTP",
            (false, false, _) => "SMTP",
        };
        let tls = match &self.tls {
            Some(t) => format!("\r\n\t(using {} with cipher {})", t.version, t.cipher),
            None => String::new(),
        };
        let for_ = match tx.rcpts.as_slice() {
            [one] => format!("\r\n\tfor <{one}>"),
            _ => String::new(),
        };
        let date = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc2822)
            .unwrap_or_default();
        format!(
            "Received: from {helo} ({ip}){tls}\r\n\tby {me} (mxguard) with {protocol} id {id}{for_};\r\n\t{date}\r\n",
            me = self.settings().hostname,
        )
    }

    async fn data(&mut self) -> Result<bool, End> {
        let Some(tx) = self.tx.as_mut() else {
            self.wire.reply("503 5.5.1 Error: need MAIL command");
            return Ok(false);
        };
        if tx.rcpts.is_empty() {
            self.wire.reply("554 5.5.1 Error: no valid recipients");
            return Ok(false);
        }
        // SPF has had the recipients' time to finish; with DNS in trouble,
        // the message must not wait for it: an unknown result only means
        // the sender gets no notices.
        let spf = match tx.spf.as_mut() {
            Some(task) => Some(
                match tokio::time::timeout(SPF_WAIT_AT_DATA, &mut task.0).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(_)) | Err(_) => mxguard_queue::SpfResult::TempError,
                },
            ),
            None => None,
        };
        let Some(tx) = self.tx.as_ref() else {
            return Ok(false);
        };
        let envelope = Envelope {
            id: QueueId::new(),
            received_at: SystemTime::now(),
            mail_from: tx.from.clone(),
            recipients: tx.rcpts.clone(),
            client_addr: self.peer.ip(),
            client_helo: self.helo.clone().unwrap_or_default(),
            body: tx.body,
            smtputf8: tx.smtputf8,
            tls: self.tls.is_some(),
            spf,
        };
        let header = self.received_header(&envelope.id, tx);
        let spool = self.shared.spool.clone();
        let env = envelope.clone();
        let begun =
            tokio::task::spawn_blocking(move || -> Result<Box<dyn Incoming>, SpoolError> {
                let mut incoming = spool.begin(&env)?;
                incoming.write(header.as_bytes())?;
                Ok(incoming)
            })
            .await;
        let mut incoming = match begun {
            Ok(Ok(i)) => Some(i),
            Ok(Err(e)) => {
                return self.spool_failed(&e, "DATA").map(|_| true);
            }
            Err(e) => {
                tracing::error!(error = %e, "spool task failed");
                self.reject(
                    Stage::Data,
                    "spool-error",
                    None,
                    "451 4.3.0 Local error; try again later",
                );
                return Ok(true);
            }
        };
        self.wire.reply("354 End data with <CR><LF>.<CR><LF>");

        let s = self.settings().clone();
        let size_limit = self
            .tx
            .as_ref()
            .map_or(s.max_message_size, |tx| tx.size_limit);
        let mut receiver = DataReceiver::new(size_limit, s.max_line);
        let mut out = Vec::with_capacity(64 * 1024);
        let mut spool_error: Option<SpoolError> = None;
        loop {
            let fed = receiver.feed(self.wire.unread(), &mut out);
            self.wire.rpos += fed.consumed;
            if receiver.problem().is_some() {
                out.clear();
            }
            let full_chunk = out.len() >= SPOOL_CHUNK;
            if (full_chunk || fed.done) && spool_error.is_none() && receiver.problem().is_none() {
                let Some(mut inc) = incoming.take() else {
                    break;
                };
                let chunk = std::mem::take(&mut out);
                let commit = fed.done;
                let r = tokio::task::spawn_blocking(move || {
                    let w = inc.write(&chunk);
                    match (w, commit) {
                        (Err(e), _) => (None, Err(e)),
                        (Ok(()), false) => (Some(inc), Ok(None)),
                        (Ok(()), true) => (None, inc.commit().map(Some)),
                    }
                })
                .await;
                match r {
                    Ok((back, Ok(id))) => {
                        incoming = back;
                        if let Some(id) = id {
                            return self.accepted(id, receiver.size(), &envelope).map(|_| true);
                        }
                    }
                    Ok((_, Err(e))) => spool_error = Some(e),
                    Err(e) => {
                        tracing::error!(error = %e, "spool task failed");
                        spool_error = Some(SpoolError::Io {
                            context: "spool task".into(),
                            source: std::io::Error::other(e.to_string()),
                        });
                    }
                }
            }
            if fed.done {
                break;
            }
            if spool_error.is_some() {
                // Keep reading to the end; nothing more is kept.
                out.clear();
            }
            self.wire
                .fill(s.data_timeout, DATA_CHUNK)
                .await
                .inspect_err(|_| {
                    if let Some(inc) = incoming.take() {
                        inc.abort();
                    }
                })?;
        }
        if let Some(inc) = incoming.take() {
            inc.abort();
        }
        if let Some(e) = spool_error {
            return self.spool_failed(&e, "end of DATA").map(|_| true);
        }
        let problem = receiver.problem().expect("no commit without a problem");
        let (reply, reason) = problem.reply(size_limit, s.max_line);
        self.reject(Stage::Data, reason, None, &reply);
        self.tx = None;
        Ok(true)
    }

    fn accepted(&mut self, id: QueueId, size: u64, envelope: &Envelope) -> Result<(), End> {
        let tx = self.tx.take().expect("a transaction during DATA");
        self.messages += 1;
        self.shared.metrics.accepted();
        if let Some(d) = &self.shared.delivery {
            d.enqueue(envelope);
        }
        self.wire.reply(&format!("250 2.0.0 Ok: queued as {id}"));
        self.shared.events.emit(MailEvent::Accepted {
            client: self.peer,
            queue_id: id.to_string(),
            from: tx.from,
            rcpts: tx.rcpts,
            size,
            tls: self.tls.is_some(),
        });
        Ok(())
    }

    fn spool_failed(&mut self, e: &SpoolError, at: &str) -> Result<(), End> {
        if matches!(e, SpoolError::Crashed) {
            return Err(End::SpoolCrashed);
        }
        let (reply, reason) = if e.is_full() {
            tracing::error!(error = %e, at, "spool full");
            (
                "452 4.3.1 Insufficient system storage; try again later",
                "spool-full",
            )
        } else {
            tracing::error!(error = %e, at, "spool error");
            (
                "451 4.3.0 Local error in processing; try again later",
                "spool-error",
            )
        };
        self.reject(Stage::Data, reason, None, reply);
        self.tx = None;
        Ok(())
    }
}
