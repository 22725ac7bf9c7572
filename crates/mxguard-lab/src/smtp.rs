//! Scripted SMTP hosts for the lab: fixtures whose every answer is chosen by
//! the test that starts them.
//!
//! `mxguard check` judges an MX set by how its hosts *answer*: the banner,
//! the EHLO extensions, RCPT for a real and a made-up recipient, the null
//! sender, STARTTLS, and the failures (refused, silent, busy). A real MTA
//! cannot be told to misbehave on cue, so the lab plays each host from a
//! [`HostScript`]: plain data, built up in a test, started with
//! [`LabSmtp::start`] on a loopback address. The host records what it was
//! sent ([`LabSmtp::transcript`], [`LabSmtp::messages`]) so a test can assert
//! on the client's side of the dialogue too, for example that a probe never
//! reached DATA.
//!
//! The protocol core is `Session`, a state machine with no I/O: it takes
//! one command line and says what to do (`Action`). The async layer below
//! it only moves bytes, so every rule of the dialogue lives in one place.
//!
//! Because a fixture must survive a buggy client, every input is bounded:
//! line length ([`MAX_LINE`]), message size, recipients, concurrent sessions,
//! idle time, and how much a host remembers.
//!
//! `mxguard check --smtp-port P` probes every MX address on one port, so
//! [`LabSmtpSet`] starts several hosts on distinct 127.x.y.z addresses that
//! share one port number chosen at run time.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::tls::LabCert;

/// The longest line a host reads, terminator included: RFC 5321 §4.5.3.1.6
/// (text line, 1000 octets). Command lines (§4.5.3.1.4, 512) get the same
/// allowance, since ESMTP parameters legitimately lengthen them.
pub const MAX_LINE: usize = 1000;

/// Default cap on one message's size, whatever SIZE advertises.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;

/// Recipients accepted in one transaction (RFC 5321 §4.5.3.1.8 asks for at
/// least 100).
pub const MAX_RECIPIENTS: usize = 100;

/// Concurrent sessions per host; more are answered [`reply::TOO_MANY_SESSIONS`].
pub const MAX_SESSIONS: usize = 64;

/// Exchanges a host remembers; later ones are counted, not kept.
pub const MAX_EXCHANGES: usize = 10_000;

/// Total message bytes a host keeps; past it DATA is answered
/// [`reply::STORAGE_FULL`].
pub const MAX_STORED_BYTES: usize = 64 * 1024 * 1024;

/// How long a session waits for the client (RFC 5321 §4.5.3.2.7: 5 minutes).
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// How many fresh ports [`LabSmtpSet::start`] tries before giving up.
const SET_ATTEMPTS: usize = 20;

/// What a host sends in answer to the ClientHello when its script makes TLS
/// fail: not a TLS record, so the client's handshake fails on the first byte.
const NOT_TLS: &[u8] = b"this is not TLS\r\n";

/// One SMTP reply: a three-digit code and its text (enhanced status code
/// included, where the host uses one).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reply {
    code: u16,
    text: Cow<'static, str>,
}

impl Reply {
    /// A reply with owned text, e.g. `Reply::new(550, "5.1.1 no such user")`.
    pub fn new(code: u16, text: impl Into<String>) -> Reply {
        Reply {
            code,
            text: Cow::Owned(text.into()),
        }
    }

    /// A reply with static text, usable in `const` items.
    pub const fn fixed(code: u16, text: &'static str) -> Reply {
        Reply {
            code,
            text: Cow::Borrowed(text),
        }
    }

    /// The three-digit reply code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The text after the code.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// 2xx: the command succeeded.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// The reply as it goes on the wire; `more` makes it a continuation line.
    /// CR and LF in the text become spaces, so a script cannot split a reply.
    fn wire(code: u16, text: &str, more: bool) -> String {
        let sep = if more { '-' } else { ' ' };
        let text = text.replace(['\r', '\n'], " ");
        format!("{code}{sep}{text}\r\n")
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

impl From<(u16, &str)> for Reply {
    fn from((code, text): (u16, &str)) -> Reply {
        Reply::new(code, text)
    }
}

impl From<(u16, String)> for Reply {
    fn from((code, text): (u16, String)) -> Reply {
        Reply::new(code, text)
    }
}

/// The replies a host gives unless its script says otherwise, by name, so
/// tests and docs can refer to them.
pub mod reply {
    use super::Reply;

    pub const OK: Reply = Reply::fixed(250, "2.0.0 ok");
    pub const SENDER_OK: Reply = Reply::fixed(250, "2.1.0 ok");
    pub const RECIPIENT_OK: Reply = Reply::fixed(250, "2.1.5 ok");
    pub const QUEUED: Reply = Reply::fixed(250, "2.0.0 ok queued");
    pub const CANNOT_VRFY: Reply =
        Reply::fixed(252, "2.1.5 cannot VRFY user, but will accept message");
    pub const START_INPUT: Reply = Reply::fixed(354, "end data with <CR><LF>.<CR><LF>");
    pub const READY_FOR_TLS: Reply = Reply::fixed(220, "2.0.0 ready to start TLS");
    pub const BYE: Reply = Reply::fixed(221, "2.0.0 bye");
    /// The banner of a [`super::Behaviour::Busy`] host (rate limiting).
    pub const BUSY: Reply = Reply::fixed(421, "4.3.2 too busy");
    pub const TOO_MANY_SESSIONS: Reply = Reply::fixed(421, "4.3.2 too many connections");
    pub const IDLE_TIMEOUT: Reply = Reply::fixed(421, "4.4.2 idle timeout");
    pub const STORAGE_FULL: Reply = Reply::fixed(452, "4.3.1 insufficient storage");
    pub const TOO_MANY_RECIPIENTS: Reply = Reply::fixed(452, "4.5.3 too many recipients");
    pub const TLS_UNAVAILABLE: Reply = Reply::fixed(454, "4.7.0 TLS not available");
    pub const UNRECOGNIZED: Reply = Reply::fixed(500, "5.5.1 command unrecognized");
    pub const LINE_TOO_LONG: Reply = Reply::fixed(500, "5.5.2 line too long");
    pub const SYNTAX: Reply = Reply::fixed(501, "5.5.4 syntax error");
    pub const BAD_SENDER: Reply = Reply::fixed(501, "5.1.7 bad sender address syntax");
    pub const BAD_RECIPIENT: Reply = Reply::fixed(501, "5.1.3 bad recipient address syntax");
    pub const NEED_HELO: Reply = Reply::fixed(503, "5.5.1 send HELO or EHLO first");
    pub const NESTED_MAIL: Reply = Reply::fixed(503, "5.5.1 sender already given");
    pub const NEED_MAIL: Reply = Reply::fixed(503, "5.5.1 need MAIL first");
    pub const NEED_RCPT: Reply = Reply::fixed(503, "5.5.1 need RCPT first");
    pub const CHUNKING_ACTIVE: Reply = Reply::fixed(503, "5.5.1 BDAT in progress");
    pub const TLS_ACTIVE: Reply = Reply::fixed(503, "5.5.1 TLS already active");
    /// What a host with a `554` banner answers to anything but QUIT
    /// (RFC 5321 §3.1).
    pub const NO_SERVICE: Reply = Reply::fixed(503, "5.5.1 no service here, only QUIT");
    pub const TOO_BIG: Reply = Reply::fixed(552, "5.3.4 message too big");
}

/// A mailbox pattern, matched case-insensitively against the address inside
/// `<…>`.
///
/// [`Pattern::parse`] reads `*` (anything), `*@example.lab` (a suffix: every
/// address at that domain), `info*` (a prefix), `<>` (the null sender), and
/// anything else as an exact address. There is at most one wildcard, at one
/// end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Any,
    /// Lower-case.
    Exact(String),
    /// Lower-case, without the `*`.
    Prefix(String),
    /// Lower-case, without the `*`.
    Suffix(String),
}

impl Pattern {
    /// Read a pattern; every string is one (see the type's docs).
    pub fn parse(text: &str) -> Pattern {
        let text = text.trim().to_ascii_lowercase();
        if text == "*" {
            Pattern::Any
        } else if text == "<>" {
            Pattern::Exact(String::new())
        } else if let Some(suffix) = text.strip_prefix('*') {
            Pattern::Suffix(suffix.to_string())
        } else if let Some(prefix) = text.strip_suffix('*') {
            Pattern::Prefix(prefix.to_string())
        } else {
            Pattern::Exact(text)
        }
    }

    /// Whether `address` (without angle brackets; empty for `<>`) matches.
    pub fn matches(&self, address: &str) -> bool {
        let address = address.to_ascii_lowercase();
        match self {
            Pattern::Any => true,
            Pattern::Exact(exact) => address == *exact,
            Pattern::Prefix(prefix) => address.starts_with(prefix.as_str()),
            Pattern::Suffix(suffix) => address.ends_with(suffix.as_str()),
        }
    }
}

/// How a host treats a connection before any SMTP happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Behaviour {
    /// Play the script.
    #[default]
    Normal,
    /// Accept the connection and never send a byte: the client must time out.
    Silent,
    /// Nothing listens: connecting fails with "connection refused". The port
    /// stays reserved (bound, never listening) so nothing else takes it.
    Refuse,
    /// Send [`reply::BUSY`] (`421 4.3.2 too busy`) and close: rate limiting.
    Busy,
    /// Send the normal banner, then close without reading.
    CloseAfterBanner,
}

/// What a host does with STARTTLS (RFC 3207).
#[derive(Debug, Clone, Default)]
pub enum StartTls {
    /// No TLS. STARTTLS is answered [`reply::TLS_UNAVAILABLE`] if the script
    /// lists it among its extensions anyway (a misconfigured server), and
    /// [`reply::UNRECOGNIZED`] otherwise.
    #[default]
    Off,
    /// Advertise STARTTLS, answer `220` and handshake with this certificate.
    Handshake(LabCert),
    /// Advertise STARTTLS, answer `220`, then answer the ClientHello with
    /// bytes that are not TLS and close.
    GarbageAfterReady,
    /// Advertise STARTTLS, answer `220`, then close.
    CloseAfterReady,
    /// Advertise STARTTLS and answer it with this reply, e.g. `454`.
    Refuse(Reply),
}

impl StartTls {
    fn offered(&self) -> bool {
        !matches!(self, StartTls::Off)
    }
}

/// How a host answers DATA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataAnswer {
    /// Answer `354`, read the message, then answer this; the message is
    /// stored when the reply is 2xx.
    AfterData(Reply),
    /// Answer the DATA command itself with this reply; no message follows.
    AtCommand(Reply),
}

impl Default for DataAnswer {
    fn default() -> DataAnswer {
        DataAnswer::AfterData(reply::QUEUED)
    }
}

/// Everything one scripted host says, as plain data.
///
/// Built with [`HostScript::new`] and the builder methods; every answer not
/// scripted is a plain success.
#[derive(Debug, Clone)]
pub struct HostScript {
    /// Used in the default banner and the HELO/EHLO greeting line.
    name: String,
    /// `None`: `220 <name> ESMTP lab`.
    banner: Option<Reply>,
    /// EHLO keyword lines, in order, as sent (STARTTLS added when
    /// `starttls` offers it).
    extensions: Vec<String>,
    /// EHLO answers `500`: the client must fall back to HELO.
    refuse_ehlo: bool,
    /// First match wins; then `mail_default`.
    mail_rules: Vec<(Pattern, Reply)>,
    mail_default: Reply,
    /// First match wins; then `rcpt_default`.
    rcpt_rules: Vec<(Pattern, Reply)>,
    rcpt_default: Reply,
    data: DataAnswer,
    behaviour: Behaviour,
    starttls: StartTls,
    /// Cap on one message, applied even when SIZE advertises more.
    max_message_bytes: usize,
    /// Wait this long before answering each command (a slow or distant
    /// server; benchmarks use it to make probe time measurable).
    reply_delay: std::time::Duration,
}

impl HostScript {
    /// A host called `name` (e.g. `mx1.example.lab`) that accepts everything
    /// and advertises `PIPELINING`, `SIZE 10240000`, `8BITMIME` and
    /// `ENHANCEDSTATUSCODES`.
    pub fn new(name: impl Into<String>) -> HostScript {
        HostScript {
            name: name.into(),
            banner: None,
            extensions: [
                "PIPELINING",
                "SIZE 10240000",
                "8BITMIME",
                "ENHANCEDSTATUSCODES",
            ]
            .map(String::from)
            .to_vec(),
            refuse_ehlo: false,
            mail_rules: Vec::new(),
            mail_default: reply::SENDER_OK,
            rcpt_rules: Vec::new(),
            rcpt_default: reply::RECIPIENT_OK,
            data: DataAnswer::default(),
            behaviour: Behaviour::Normal,
            starttls: StartTls::Off,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            reply_delay: std::time::Duration::ZERO,
        }
    }

    /// The host's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The greeting. A `421` banner closes the connection after it is sent
    /// (RFC 5321 §3.8); a `554` banner keeps it open but answers everything
    /// except QUIT with [`reply::NO_SERVICE`] (§3.1).
    pub fn banner(mut self, reply: impl Into<Reply>) -> HostScript {
        self.banner = Some(reply.into());
        self
    }

    /// Replace the EHLO extension lines, e.g. `["SIZE 1000", "SMTPUTF8"]`.
    /// They are sent as given; `SIZE n` is also enforced (on `MAIL … SIZE=`
    /// and on the message itself), and `CHUNKING` enables BDAT.
    pub fn extensions<I, S>(mut self, lines: I) -> HostScript
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extensions = lines.into_iter().map(Into::into).collect();
        self
    }

    /// Add one EHLO extension line.
    pub fn extension(mut self, line: impl Into<String>) -> HostScript {
        self.extensions.push(line.into());
        self
    }

    /// Answer EHLO with `500`, as pre-ESMTP servers do.
    pub fn refuse_ehlo(mut self) -> HostScript {
        self.refuse_ehlo = true;
        self
    }

    /// Answer `MAIL FROM` for senders matching `pattern` (see [`Pattern`];
    /// `<>` is the null sender) with `reply`. Rules are tried in the order
    /// they were added.
    pub fn mail(mut self, pattern: &str, reply: impl Into<Reply>) -> HostScript {
        self.mail_rules
            .push((Pattern::parse(pattern), reply.into()));
        self
    }

    /// The answer to a sender no rule matches (default [`reply::SENDER_OK`]).
    pub fn mail_default(mut self, reply: impl Into<Reply>) -> HostScript {
        self.mail_default = reply.into();
        self
    }

    /// Answer `RCPT TO` for recipients matching `pattern` with `reply`, e.g.
    /// `.rcpt("*@example.lab", (550, "5.1.1 no such user"))`. Rules are tried
    /// in the order they were added.
    pub fn rcpt(mut self, pattern: &str, reply: impl Into<Reply>) -> HostScript {
        self.rcpt_rules
            .push((Pattern::parse(pattern), reply.into()));
        self
    }

    /// The answer to a recipient no rule matches (default
    /// [`reply::RECIPIENT_OK`]).
    pub fn rcpt_default(mut self, reply: impl Into<Reply>) -> HostScript {
        self.rcpt_default = reply.into();
        self
    }

    /// How DATA is answered (default: store, [`reply::QUEUED`]).
    pub fn data(mut self, answer: DataAnswer) -> HostScript {
        self.data = answer;
        self
    }

    /// How connections are treated (default [`Behaviour::Normal`]).
    pub fn behaviour(mut self, behaviour: Behaviour) -> HostScript {
        self.behaviour = behaviour;
        self
    }

    /// What STARTTLS does (default [`StartTls::Off`]).
    pub fn starttls(mut self, starttls: StartTls) -> HostScript {
        self.starttls = starttls;
        self
    }

    /// Wait `delay` before answering each command, like a slow or distant
    /// server.
    pub fn reply_delay(mut self, delay: std::time::Duration) -> HostScript {
        self.reply_delay = delay;
        self
    }

    /// Cap one message at `bytes` (default [`DEFAULT_MAX_MESSAGE_BYTES`]).
    pub fn max_message_bytes(mut self, bytes: usize) -> HostScript {
        self.max_message_bytes = bytes;
        self
    }

    fn banner_reply(&self) -> Reply {
        self.banner
            .clone()
            .unwrap_or_else(|| Reply::new(220, format!("{} ESMTP lab", self.name)))
    }

    /// Whether an extension line starts with `keyword`.
    fn lists(&self, keyword: &str) -> bool {
        self.extensions.iter().any(|line| {
            line.split_whitespace()
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
        })
    }

    /// The EHLO reply lines: the greeting, then the extensions. STARTTLS is
    /// added when offered and dropped once TLS is active (RFC 3207 §4.2).
    fn ehlo_lines(&self, tls: bool) -> Vec<String> {
        let mut lines = vec![self.name.clone()];
        let is_starttls = |line: &String| line.trim().eq_ignore_ascii_case("STARTTLS");
        lines.extend(
            self.extensions
                .iter()
                .filter(|l| !(tls && is_starttls(l)))
                .cloned(),
        );
        if self.starttls.offered() && !tls && !self.lists("STARTTLS") {
            lines.push("STARTTLS".to_string());
        }
        lines
    }

    /// The largest message accepted: the advertised SIZE when there is one
    /// (`SIZE 0` means no fixed limit, RFC 1870 §4), capped by
    /// `max_message_bytes`.
    fn size_limit(&self) -> usize {
        let advertised = self.extensions.iter().find_map(|line| {
            let mut words = line.split_whitespace();
            let keyword = words.next()?;
            if !keyword.eq_ignore_ascii_case("SIZE") {
                return None;
            }
            words.next()?.parse::<usize>().ok().filter(|n| *n > 0)
        });
        advertised.map_or(self.max_message_bytes, |n| n.min(self.max_message_bytes))
    }
}

/// One command a host received and the reply it gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// Which connection, counting from 1 per host.
    pub session: u64,
    /// Whether the command came over TLS.
    pub tls: bool,
    /// The command line without its line ending (lossy UTF-8). The end of a
    /// DATA message is logged as the command `.`; a BDAT command with the
    /// reply given after its chunk; a line over [`MAX_LINE`] as
    /// `<line too long>`.
    pub command: String,
    /// The reply; for the multi-line EHLO reply, its code and first line.
    pub reply: Reply,
}

/// A message a host accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub session: u64,
    /// The HELO/EHLO argument.
    pub helo: String,
    /// The sender, without angle brackets; empty for the null sender.
    pub mail_from: String,
    /// The accepted recipients, in order.
    pub rcpt_to: Vec<String>,
    pub tls: bool,
    /// The message as received, dot-unstuffed, without the final `.` line.
    pub data: Vec<u8>,
}

/// What a host remembers, shared between its sessions and its handle.
#[derive(Debug, Default)]
struct Log {
    connections: u64,
    /// At most [`MAX_EXCHANGES`].
    exchanges: Vec<Exchange>,
    stored_bytes: usize,
    messages: Vec<ReceivedMessage>,
}

impl Log {
    /// Count a connection and return its session number.
    fn connected(&mut self) -> u64 {
        self.connections += 1;
        self.connections
    }

    fn record(&mut self, exchange: Exchange) {
        if self.exchanges.len() < MAX_EXCHANGES {
            self.exchanges.push(exchange);
        }
    }

    /// Keep `message` if there is room; false if not.
    fn store(&mut self, message: ReceivedMessage) -> bool {
        let size = message.data.len();
        if self.stored_bytes.saturating_add(size) > MAX_STORED_BYTES {
            return false;
        }
        self.stored_bytes += size;
        self.messages.push(message);
        true
    }
}

/// What a host shares with its sessions.
#[derive(Debug)]
struct Shared {
    script: HostScript,
    /// Built from `StartTls::Handshake` when the host starts.
    tls_config: Option<Arc<rustls::ServerConfig>>,
    log: Mutex<Log>,
}

impl Shared {
    fn log(&self) -> MutexGuard<'_, Log> {
        // A session that panicked mid-update leaves a log still worth reading.
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Where a session is in the dialogue (RFC 5321 §4.1.4 ordering).
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Before HELO/EHLO, and again after STARTTLS (RFC 3207 §4.2).
    Fresh,
    /// The banner was `554`: only QUIT is served.
    NoService,
    /// Greeted, no transaction.
    Idle,
    /// MAIL accepted, no recipient yet.
    Mail { from: String },
    /// At least one RCPT accepted.
    Rcpt { from: String, to: Vec<String> },
    /// BDAT chunks arriving (RFC 3030). `overflow` once the message passed
    /// the size limit: the rest is read and dropped.
    Chunking {
        from: String,
        to: Vec<String>,
        data: Vec<u8>,
        overflow: bool,
    },
}

/// What the I/O layer must do after a command.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Reply(Reply),
    /// A multi-line `250` reply (EHLO).
    Lines(Vec<String>),
    /// Reply `354`, read a message, hand it to [`Session::finish_data`].
    ReadData,
    /// Read `size` octets, hand them to [`Session::finish_chunk`].
    ReadChunk {
        size: u64,
        last: bool,
    },
    /// Reply `220` and do what the script's [`StartTls`] says.
    StartTls,
    /// Reply [`reply::BYE`] and close.
    Quit,
}

/// A message read from the wire, with what went wrong reading it.
#[derive(Debug, Default)]
struct Body {
    /// Kept up to the size limit.
    bytes: Vec<u8>,
    too_big: bool,
    line_too_long: bool,
}

/// The SMTP dialogue of one connection, without I/O.
#[derive(Debug)]
struct Session<'a> {
    script: &'a HostScript,
    id: u64,
    tls: bool,
    /// The HELO/EHLO argument.
    helo: String,
    state: State,
}

impl<'a> Session<'a> {
    fn new(script: &'a HostScript, id: u64) -> Session<'a> {
        let state = if script.banner_reply().code() == 554 {
            State::NoService
        } else {
            State::Fresh
        };
        Session {
            script,
            id,
            tls: false,
            helo: String::new(),
            state,
        }
    }

    /// Answer one command line (without its line ending).
    fn handle(&mut self, line: &str) -> Action {
        let (verb, arg) = match line.split_once(' ') {
            Some((verb, arg)) => (verb.to_ascii_uppercase(), arg.trim()),
            None => (line.trim().to_ascii_uppercase(), ""),
        };
        if self.state == State::NoService {
            return if verb == "QUIT" {
                Action::Quit
            } else {
                Action::Reply(reply::NO_SERVICE)
            };
        }
        match verb.as_str() {
            "HELO" => self.helo(arg),
            "EHLO" => self.ehlo(arg),
            "MAIL" => Action::Reply(self.mail(arg)),
            "RCPT" => Action::Reply(self.rcpt(arg)),
            "DATA" => self.data(arg),
            "BDAT" if self.script.lists("CHUNKING") => self.bdat(arg),
            "RSET" => {
                self.reset();
                Action::Reply(reply::OK)
            }
            "NOOP" => Action::Reply(reply::OK),
            "QUIT" => Action::Quit,
            "VRFY" if arg.is_empty() => Action::Reply(reply::SYNTAX),
            "VRFY" => Action::Reply(reply::CANNOT_VRFY),
            "STARTTLS" => self.starttls(arg),
            _ => Action::Reply(reply::UNRECOGNIZED),
        }
    }

    /// Drop any transaction, keeping the greeting.
    fn reset(&mut self) {
        if self.state != State::Fresh {
            self.state = State::Idle;
        }
    }

    fn helo(&mut self, arg: &str) -> Action {
        if arg.is_empty() {
            return Action::Reply(reply::SYNTAX);
        }
        self.greeted(arg);
        Action::Reply(Reply::new(250, self.script.name.clone()))
    }

    fn ehlo(&mut self, arg: &str) -> Action {
        if self.script.refuse_ehlo {
            return Action::Reply(reply::UNRECOGNIZED);
        }
        if arg.is_empty() {
            return Action::Reply(reply::SYNTAX);
        }
        self.greeted(arg);
        Action::Lines(self.script.ehlo_lines(self.tls))
    }

    /// HELO and EHLO start afresh (RFC 5321 §4.1.4).
    fn greeted(&mut self, client: &str) {
        self.helo = client.to_string();
        self.state = State::Idle;
    }

    fn mail(&mut self, arg: &str) -> Reply {
        match self.state {
            State::Fresh => return reply::NEED_HELO,
            State::Idle => {}
            _ => return reply::NESTED_MAIL,
        }
        let Some((from, params)) = parse_path(arg, "FROM:") else {
            return reply::BAD_SENDER;
        };
        let answer = answer_for(&self.script.mail_rules, &self.script.mail_default, from);
        if !answer.is_success() {
            return answer;
        }
        if declared_size(params).is_some_and(|size| size > self.script.size_limit() as u64) {
            return reply::TOO_BIG;
        }
        self.state = State::Mail {
            from: from.to_string(),
        };
        answer
    }

    fn rcpt(&mut self, arg: &str) -> Reply {
        let (from, mut to) = match std::mem::replace(&mut self.state, State::Idle) {
            State::Mail { from } => (from, Vec::new()),
            State::Rcpt { from, to } => (from, to),
            other => {
                let answer = match other {
                    State::Fresh => reply::NEED_HELO,
                    State::Chunking { .. } => reply::CHUNKING_ACTIVE,
                    _ => reply::NEED_MAIL,
                };
                self.state = other;
                return answer;
            }
        };
        let answer = match parse_path(arg, "TO:") {
            Some((rcpt, _)) if !rcpt.is_empty() => {
                if to.len() >= MAX_RECIPIENTS {
                    reply::TOO_MANY_RECIPIENTS
                } else {
                    let answer =
                        answer_for(&self.script.rcpt_rules, &self.script.rcpt_default, rcpt);
                    if answer.is_success() {
                        to.push(rcpt.to_string());
                    }
                    answer
                }
            }
            _ => reply::BAD_RECIPIENT,
        };
        self.state = if to.is_empty() {
            State::Mail { from }
        } else {
            State::Rcpt { from, to }
        };
        answer
    }

    fn data(&mut self, arg: &str) -> Action {
        if !arg.is_empty() {
            return Action::Reply(reply::SYNTAX);
        }
        let refused = match self.state {
            State::Rcpt { .. } => None,
            State::Fresh => Some(reply::NEED_HELO),
            State::Idle => Some(reply::NEED_MAIL),
            State::Mail { .. } => Some(reply::NEED_RCPT),
            State::Chunking { .. } => Some(reply::CHUNKING_ACTIVE),
            State::NoService => Some(reply::NO_SERVICE),
        };
        match (refused, &self.script.data) {
            (Some(answer), _) => Action::Reply(answer),
            (None, DataAnswer::AtCommand(answer)) => Action::Reply(answer.clone()),
            (None, DataAnswer::AfterData(_)) => Action::ReadData,
        }
    }

    /// `BDAT <size> [LAST]`. The chunk is read whatever the state, because
    /// the client sends it without waiting (RFC 3030 §2); the state is
    /// judged in [`Session::finish_chunk`].
    fn bdat(&mut self, arg: &str) -> Action {
        let mut words = arg.split_whitespace();
        let size = words.next().and_then(|s| s.parse::<u64>().ok());
        let last = match words.next() {
            None => false,
            Some(word) if word.eq_ignore_ascii_case("LAST") => true,
            Some(_) => return Action::Reply(reply::SYNTAX),
        };
        match (size, words.next()) {
            (Some(size), None) => Action::ReadChunk { size, last },
            _ => Action::Reply(reply::SYNTAX),
        }
    }

    fn starttls(&mut self, arg: &str) -> Action {
        if !arg.is_empty() {
            return Action::Reply(reply::SYNTAX);
        }
        if self.tls {
            return Action::Reply(reply::TLS_ACTIVE);
        }
        match &self.script.starttls {
            StartTls::Off if self.script.lists("STARTTLS") => Action::Reply(reply::TLS_UNAVAILABLE),
            StartTls::Off => Action::Reply(reply::UNRECOGNIZED),
            StartTls::Refuse(answer) => Action::Reply(answer.clone()),
            StartTls::Handshake(_) | StartTls::GarbageAfterReady | StartTls::CloseAfterReady => {
                Action::StartTls
            }
        }
    }

    /// TLS is up: forget the greeting and any transaction (RFC 3207 §4.2).
    fn tls_started(&mut self) {
        self.tls = true;
        self.helo.clear();
        self.state = State::Fresh;
    }

    /// The message after `354` has been read.
    fn finish_data(&mut self, body: Body) -> (Reply, Option<ReceivedMessage>) {
        let State::Rcpt { from, to } = std::mem::replace(&mut self.state, State::Idle) else {
            // `ReadData` is only returned in `Rcpt`.
            return (reply::NEED_RCPT, None);
        };
        self.conclude(from, to, body)
    }

    /// A BDAT chunk has been read; `overflow` if it went past the size limit
    /// and was not kept whole.
    fn finish_chunk(
        &mut self,
        chunk: Vec<u8>,
        overflow: bool,
        last: bool,
    ) -> (Reply, Option<ReceivedMessage>) {
        let size = chunk.len();
        let (from, to, mut data, mut too_big) =
            match std::mem::replace(&mut self.state, State::Idle) {
                State::Rcpt { from, to } => (from, to, Vec::new(), false),
                State::Chunking {
                    from,
                    to,
                    data,
                    overflow,
                } => (from, to, data, overflow),
                other => {
                    let answer = match other {
                        State::Fresh => reply::NEED_HELO,
                        State::Mail { .. } => reply::NEED_RCPT,
                        _ => reply::NEED_MAIL,
                    };
                    self.state = other;
                    return (answer, None);
                }
            };
        too_big |= overflow || data.len().saturating_add(size) > self.script.size_limit();
        if too_big {
            data = Vec::new();
        } else {
            data.extend_from_slice(&chunk);
        }
        if last {
            let body = Body {
                bytes: data,
                too_big,
                line_too_long: false,
            };
            return self.conclude(from, to, body);
        }
        self.state = State::Chunking {
            from,
            to,
            data,
            overflow: too_big,
        };
        (
            Reply::new(250, format!("2.0.0 {size} octets received")),
            None,
        )
    }

    /// The reply to a complete message, and the message if it is to be kept.
    fn conclude(
        &mut self,
        from: String,
        to: Vec<String>,
        body: Body,
    ) -> (Reply, Option<ReceivedMessage>) {
        self.state = State::Idle;
        if body.line_too_long {
            return (reply::LINE_TOO_LONG, None);
        }
        if body.too_big {
            return (reply::TOO_BIG, None);
        }
        let answer = match &self.script.data {
            DataAnswer::AfterData(answer) => answer.clone(),
            DataAnswer::AtCommand(answer) => answer.clone(),
        };
        if !answer.is_success() {
            return (answer, None);
        }
        let message = ReceivedMessage {
            session: self.id,
            helo: self.helo.clone(),
            mail_from: from,
            rcpt_to: to,
            tls: self.tls,
            data: body.bytes,
        };
        (answer, Some(message))
    }
}

/// The first rule matching `address`, else the default.
fn answer_for(rules: &[(Pattern, Reply)], default: &Reply, address: &str) -> Reply {
    rules
        .iter()
        .find(|(pattern, _)| pattern.matches(address))
        .map_or_else(|| default.clone(), |(_, answer)| answer.clone())
}

/// Split `FROM:<path> params` (or `TO:…`) into the mailbox and the
/// parameters. A space after the colon is tolerated, as most servers do;
/// angle brackets are required (RFC 5321 §4.1.2). A source route
/// (`<@a,@b:user@d>`) is dropped.
fn parse_path<'l>(arg: &'l str, keyword: &str) -> Option<(&'l str, &'l str)> {
    let head = arg.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start().strip_prefix('<')?;
    let end = rest.find('>')?;
    let path = &rest[..end];
    let mailbox = if path.starts_with('@') {
        path.split_once(':')?.1
    } else {
        path
    };
    Some((mailbox, rest[end + 1..].trim()))
}

/// The `SIZE=` parameter of MAIL (RFC 1870 §6), if given and numeric.
fn declared_size(params: &str) -> Option<u64> {
    params.split_whitespace().find_map(|param| {
        let (key, value) = param.split_once('=')?;
        if !key.eq_ignore_ascii_case("SIZE") {
            return None;
        }
        value.parse().ok()
    })
}

/// One line read with a bound.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// The line with its terminator (LF, usually CRLF).
    Text(Vec<u8>),
    /// Longer than the bound: read through its LF and dropped.
    TooLong,
    /// The peer closed (a partial last line is dropped).
    Eof,
}

/// Read one line of at most `max` octets, terminator included, never
/// buffering more than that.
async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R, max: usize) -> io::Result<Line> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(Line::Eof);
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if !too_long && line.len() + take > max {
            too_long = true;
            line = Vec::new();
        }
        if !too_long {
            line.extend_from_slice(&buf[..take]);
        }
        reader.consume(take);
        if done {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Text(line)
            });
        }
    }
}

/// A line read with the session idle timeout; `Eof` when it expires, after
/// telling the client.
async fn next_line<S>(io: &mut BufReader<S>) -> io::Result<Line>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(IDLE_TIMEOUT, read_line(io, MAX_LINE)).await {
        Ok(line) => line,
        Err(_) => {
            write_reply(io, &reply::IDLE_TIMEOUT).await?;
            Ok(Line::Eof)
        }
    }
}

/// Read a DATA message up to `<CRLF>.<CRLF>`, dot-unstuffing it (RFC 5321
/// §4.5.2) and keeping at most `limit` octets. The end marker counts only
/// after a CRLF, so `<LF>.<CRLF>` is content, not an end (SMTP smuggling).
/// `None` if the client went away first.
async fn read_message<S>(io: &mut BufReader<S>, limit: usize) -> io::Result<Option<Body>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut body = Body::default();
    let mut after_crlf = true;
    loop {
        let line = match next_line(io).await? {
            Line::Eof => return Ok(None),
            Line::TooLong => {
                body.line_too_long = true;
                after_crlf = true;
                continue;
            }
            Line::Text(line) => line,
        };
        if after_crlf && line == b".\r\n" {
            return Ok(Some(body));
        }
        // A line, and so dot-stuffing, starts only after CRLF.
        let content = if after_crlf {
            line.strip_prefix(b".").unwrap_or(&line)
        } else {
            &line
        };
        after_crlf = line.ends_with(b"\r\n");
        if body.too_big || body.bytes.len() + content.len() > limit {
            body.too_big = true;
            body.bytes = Vec::new();
        } else {
            body.bytes.extend_from_slice(content);
        }
    }
}

/// Read exactly `size` octets of a BDAT chunk, keeping at most `limit`.
/// Returns the kept octets and whether some were dropped; `None` on EOF.
async fn read_chunk<S>(
    io: &mut BufReader<S>,
    size: u64,
    limit: usize,
) -> io::Result<Option<(Vec<u8>, bool)>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut kept = Vec::new();
    let mut overflow = false;
    let mut remaining = size;
    let mut buf = [0u8; 8192];
    while remaining > 0 {
        let want = buf
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let n = match tokio::time::timeout(IDLE_TIMEOUT, io.read(&mut buf[..want])).await {
            Ok(read) => read?,
            Err(_) => return Ok(None),
        };
        if n == 0 {
            return Ok(None);
        }
        if !overflow && kept.len() + n <= limit {
            kept.extend_from_slice(&buf[..n]);
        } else {
            overflow = true;
            kept = Vec::new();
        }
        remaining -= n as u64;
    }
    Ok(Some((kept, overflow)))
}

async fn write_reply<W: AsyncWrite + Unpin>(io: &mut W, reply: &Reply) -> io::Result<()> {
    io.write_all(Reply::wire(reply.code, &reply.text, false).as_bytes())
        .await?;
    io.flush().await
}

async fn write_lines<W: AsyncWrite + Unpin>(io: &mut W, lines: &[String]) -> io::Result<()> {
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        out.push_str(&Reply::wire(250, line, i + 1 < lines.len()));
    }
    io.write_all(out.as_bytes()).await?;
    io.flush().await
}

/// How a conversation on one stream ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Closed,
    /// `220` was sent for STARTTLS with a certificate: upgrade the stream.
    Upgrade,
}

/// Run the command loop on one stream (plain, then again over TLS).
async fn converse<S>(
    io: &mut BufReader<S>,
    session: &mut Session<'_>,
    shared: &Shared,
) -> io::Result<End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limit = shared.script.size_limit();
    loop {
        let line = match next_line(io).await? {
            Line::Eof => return Ok(End::Closed),
            Line::TooLong => {
                respond(io, shared, session, "<line too long>", reply::LINE_TOO_LONG).await?;
                continue;
            }
            Line::Text(line) => line,
        };
        let command = String::from_utf8_lossy(trim_eol(&line)).into_owned();
        if !shared.script.reply_delay.is_zero() {
            tokio::time::sleep(shared.script.reply_delay).await;
        }
        match session.handle(&command) {
            Action::Reply(answer) => respond(io, shared, session, &command, answer).await?,
            Action::Lines(lines) => {
                let first = Reply::new(250, lines.first().cloned().unwrap_or_default());
                record(shared, session, &command, first);
                write_lines(io, &lines).await?;
            }
            Action::Quit => {
                respond(io, shared, session, &command, reply::BYE).await?;
                io.shutdown().await?;
                return Ok(End::Closed);
            }
            Action::ReadData => {
                respond(io, shared, session, &command, reply::START_INPUT).await?;
                let Some(body) = read_message(io, limit).await? else {
                    return Ok(End::Closed);
                };
                let (answer, message) = session.finish_data(body);
                let answer = keep(shared, message, answer);
                respond(io, shared, session, ".", answer).await?;
            }
            Action::ReadChunk { size, last } => {
                let Some((chunk, overflow)) = read_chunk(io, size, limit).await? else {
                    return Ok(End::Closed);
                };
                let (answer, message) = session.finish_chunk(chunk, overflow, last);
                let answer = keep(shared, message, answer);
                respond(io, shared, session, &command, answer).await?;
            }
            Action::StartTls => {
                respond(io, shared, session, &command, reply::READY_FOR_TLS).await?;
                match shared.script.starttls {
                    StartTls::Handshake(_) => return Ok(End::Upgrade),
                    StartTls::GarbageAfterReady => {
                        // Wait for the ClientHello, so the garbage is what
                        // the client's TLS stack reads as the answer to it.
                        let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, io.fill_buf()).await;
                        io.write_all(NOT_TLS).await?;
                        io.flush().await?;
                    }
                    StartTls::CloseAfterReady | StartTls::Off | StartTls::Refuse(_) => {}
                }
                io.shutdown().await?;
                return Ok(End::Closed);
            }
        }
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Store an accepted message; the reply turns into [`reply::STORAGE_FULL`]
/// when the host has no room left.
fn keep(shared: &Shared, message: Option<ReceivedMessage>, answer: Reply) -> Reply {
    match message {
        Some(message) => {
            if shared.log().store(message) {
                answer
            } else {
                reply::STORAGE_FULL
            }
        }
        None => answer,
    }
}

fn record(shared: &Shared, session: &Session<'_>, command: &str, reply: Reply) {
    shared.log().record(Exchange {
        session: session.id,
        tls: session.tls,
        command: command.to_string(),
        reply,
    });
}

/// Log, then reply: a client that has read a reply always finds the
/// exchange in the transcript.
async fn respond<W: AsyncWrite + Unpin>(
    io: &mut W,
    shared: &Shared,
    session: &Session<'_>,
    command: &str,
    reply: Reply,
) -> io::Result<()> {
    record(shared, session, command, reply.clone());
    write_reply(io, &reply).await
}

/// One connection, from accept to close.
async fn serve_connection(mut tcp: TcpStream, id: u64, shared: Arc<Shared>) -> io::Result<()> {
    let script = &shared.script;
    match script.behaviour {
        Behaviour::Silent => {
            // Read and drop whatever arrives, so the client's writes never
            // block, and say nothing until the client gives up.
            tokio::io::copy(&mut tcp, &mut tokio::io::sink()).await?;
            return Ok(());
        }
        Behaviour::Busy => {
            write_reply(&mut tcp, &reply::BUSY).await?;
            return tcp.shutdown().await;
        }
        Behaviour::CloseAfterBanner => {
            write_reply(&mut tcp, &script.banner_reply()).await?;
            return tcp.shutdown().await;
        }
        Behaviour::Normal | Behaviour::Refuse => {}
    }
    let banner = script.banner_reply();
    write_reply(&mut tcp, &banner).await?;
    if banner.code() == 421 {
        return tcp.shutdown().await;
    }
    let mut session = Session::new(script, id);
    let mut io = BufReader::new(tcp);
    if converse(&mut io, &mut session, &shared).await? == End::Closed {
        return Ok(());
    }
    // Anything the client pipelined after STARTTLS is dropped with the
    // buffer: it must not be read as if it had come over TLS (RFC 3207 §5,
    // the STARTTLS command injection flaw).
    if !io.buffer().is_empty() {
        tracing::debug!(
            session = id,
            bytes = io.buffer().len(),
            "dropping input pipelined after STARTTLS"
        );
    }
    let tcp = io.into_inner();
    let Some(config) = &shared.tls_config else {
        return Ok(());
    };
    let acceptor = TlsAcceptor::from(Arc::clone(config));
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(tls) => tls?,
        Err(_) => return Ok(()),
    };
    session.tls_started();
    let mut io = BufReader::new(tls);
    converse(&mut io, &mut session, &shared).await?;
    Ok(())
}

/// Accept connections until the task is aborted; the sessions live in a
/// `JoinSet`, so aborting this task ends them too.
async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut sessions = JoinSet::new();
    loop {
        let (mut tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::warn!(cause = %e, "lab SMTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while sessions.try_join_next().is_some() {}
        let id = shared.log().connected();
        if sessions.len() >= MAX_SESSIONS {
            sessions.spawn(async move {
                let _ = write_reply(&mut tcp, &reply::TOO_MANY_SESSIONS).await;
            });
            continue;
        }
        let shared = Arc::clone(&shared);
        sessions.spawn(async move {
            let host = shared.script.name.clone();
            if let Err(e) = serve_connection(tcp, id, shared).await {
                tracing::debug!(host = %host, session = id, %peer, cause = %e, "lab SMTP session ended");
            }
        });
    }
}

/// A running scripted host. Dropping it stops the host and its sessions.
#[derive(Debug)]
pub struct LabSmtp {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// The accept loop; `None` for a [`Behaviour::Refuse`] host.
    _task: Option<crate::AbortOnDrop>,
    /// For [`Behaviour::Refuse`]: bound, never listening, so connecting is
    /// refused and the port stays ours.
    _reserved: Option<TcpSocket>,
}

impl LabSmtp {
    /// Start `script` at `ip:port` (`port` 0 picks a free one). `ip` must be a
    /// loopback address: a lab host is never reachable from elsewhere.
    pub async fn start(ip: IpAddr, port: u16, script: HostScript) -> io::Result<LabSmtp> {
        if !ip.is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("lab SMTP hosts bind loopback addresses only, not {ip}"),
            ));
        }
        let tls_config = match &script.starttls {
            StartTls::Handshake(cert) => Some(cert.server_config().map_err(io::Error::other)?),
            _ => None,
        };
        let refuse = script.behaviour == Behaviour::Refuse;
        let shared = Arc::new(Shared {
            script,
            tls_config,
            log: Mutex::new(Log::default()),
        });
        let wanted = SocketAddr::new(ip, port);
        if refuse {
            let socket = reserve(wanted)?;
            return Ok(LabSmtp {
                addr: socket.local_addr()?,
                shared,
                _task: None,
                _reserved: Some(socket),
            });
        }
        let listener = TcpListener::bind(wanted).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(serve(listener, Arc::clone(&shared)));
        Ok(LabSmtp {
            addr,
            shared,
            _task: Some(crate::AbortOnDrop(task)),
            _reserved: None,
        })
    }

    /// Where the host listens (or, for [`Behaviour::Refuse`], refuses).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The script's host name.
    pub fn name(&self) -> &str {
        &self.shared.script.name
    }

    /// Connections accepted so far. A connection is counted when the host
    /// accepts it, which can be a moment after the client's `connect`
    /// returns.
    pub fn connections(&self) -> u64 {
        self.shared.log().connections
    }

    /// Every command received, with its reply, in order, across sessions
    /// (at most [`MAX_EXCHANGES`]).
    pub fn transcript(&self) -> Vec<Exchange> {
        self.shared.log().exchanges.clone()
    }

    /// The command lines received, in order.
    pub fn commands(&self) -> Vec<String> {
        self.shared
            .log()
            .exchanges
            .iter()
            .map(|e| e.command.clone())
            .collect()
    }

    /// Whether any command with this verb (case-insensitive) was received,
    /// e.g. `saw("DATA")`.
    pub fn saw(&self, verb: &str) -> bool {
        self.shared.log().exchanges.iter().any(|e| {
            e.command
                .split_whitespace()
                .next()
                .is_some_and(|v| v.eq_ignore_ascii_case(verb))
        })
    }

    /// The messages accepted, in order.
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        self.shared.log().messages.clone()
    }
}

/// Bind a TCP socket without listening on it.
fn reserve(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(addr)?;
    Ok(socket)
}

/// Several hosts on distinct loopback addresses sharing one port number, the
/// way `mxguard check --smtp-port P` sees an MX set. Dropping it stops them.
#[derive(Debug)]
pub struct LabSmtpSet {
    port: u16,
    hosts: Vec<LabSmtp>,
}

impl LabSmtpSet {
    /// Start every `(ip, script)` on one port: the first host picks a free
    /// port, the others bind the same number on their own addresses. If one
    /// of those is taken (`AddrInUse`) the whole set is dropped and started
    /// again on a fresh port. The addresses must be distinct.
    pub async fn start<I>(hosts: I) -> io::Result<LabSmtpSet>
    where
        I: IntoIterator<Item = (IpAddr, HostScript)>,
    {
        let hosts: Vec<(IpAddr, HostScript)> = hosts.into_iter().collect();
        if hosts.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a lab SMTP set needs at least one host",
            ));
        }
        let mut last = None;
        for _ in 0..SET_ATTEMPTS {
            match LabSmtpSet::try_start(&hosts).await {
                Ok(set) => return Ok(set),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)))
    }

    async fn try_start(hosts: &[(IpAddr, HostScript)]) -> io::Result<LabSmtpSet> {
        let mut started = Vec::with_capacity(hosts.len());
        let mut port = 0;
        for (ip, script) in hosts {
            let host = LabSmtp::start(*ip, port, script.clone()).await?;
            port = host.addr().port();
            started.push(host);
        }
        Ok(LabSmtpSet {
            port,
            hosts: started,
        })
    }

    /// The port every host of the set uses.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The hosts, in the order given to [`LabSmtpSet::start`].
    pub fn hosts(&self) -> &[LabSmtp] {
        &self.hosts
    }

    /// The host at `ip`, if the set has one.
    pub fn host(&self, ip: IpAddr) -> Option<&LabSmtp> {
        self.hosts.iter().find(|h| h.addr().ip() == ip)
    }

    /// Take the hosts out of the set.
    pub fn into_hosts(self) -> Vec<LabSmtp> {
        self.hosts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script() -> HostScript {
        HostScript::new("mx.example.lab")
            .mail("<>", (550, "5.7.1 no bounces here"))
            .rcpt("postmaster@example.lab", reply::RECIPIENT_OK)
            .rcpt("*@example.lab", (550, "5.1.1 no such user"))
            .rcpt("grey*", (451, "4.7.1 greylisted"))
    }

    fn codes(session: &mut Session<'_>, lines: &[&str]) -> Vec<u16> {
        lines
            .iter()
            .map(|line| match session.handle(line) {
                Action::Reply(r) => r.code(),
                Action::Lines(_) => 250,
                Action::ReadData | Action::ReadChunk { .. } => 354,
                Action::StartTls => 220,
                Action::Quit => 221,
            })
            .collect()
    }

    #[test]
    fn patterns() {
        assert!(Pattern::parse("*@Example.Lab").matches("USER@example.lab"));
        assert!(!Pattern::parse("*@example.lab").matches("user@sub.example.lab"));
        assert!(Pattern::parse("info*").matches("Info-desk@x.lab"));
        assert!(Pattern::parse("<>").matches(""));
        assert!(!Pattern::parse("<>").matches("a@b"));
        assert!(Pattern::parse("a@b.lab").matches("A@B.LAB"));
        assert!(!Pattern::parse("a@b.lab").matches("xa@b.lab"));
        assert!(Pattern::parse("*").matches("anything"));
    }

    #[test]
    fn paths() {
        assert_eq!(
            parse_path("FROM:<a@b> SIZE=10", "FROM:"),
            Some(("a@b", "SIZE=10"))
        );
        assert_eq!(parse_path("from: <>", "FROM:"), Some(("", "")));
        assert_eq!(parse_path("TO:<@r1,@r2:u@d>", "TO:"), Some(("u@d", "")));
        assert_eq!(parse_path("TO:u@d", "TO:"), None);
        assert_eq!(parse_path("FROM:<a@b", "FROM:"), None);
        assert_eq!(parse_path("TO:<a@b>", "FROM:"), None);
        assert_eq!(declared_size("BODY=8BITMIME size=42"), Some(42));
        assert_eq!(declared_size("SIZE=x"), None);
    }

    #[test]
    fn sequencing_is_enforced() {
        let script = script();
        let mut s = Session::new(&script, 1);
        let got = codes(
            &mut s,
            &[
                "MAIL FROM:<a@x.lab>",
                "EHLO c.lab",
                "RCPT TO:<b@y.lab>",
                "DATA",
                "MAIL FROM:<a@x.lab>",
                "MAIL FROM:<a@x.lab>",
                "DATA",
                "RCPT TO:<nobody@example.lab>",
                "DATA",
                "RCPT TO:<b@y.lab>",
                "DATA",
            ],
        );
        assert_eq!(
            got,
            vec![503, 250, 503, 503, 250, 503, 503, 550, 503, 250, 354]
        );
    }

    #[test]
    fn rules_apply_in_order() {
        let script = script();
        let mut s = Session::new(&script, 1);
        let got = codes(
            &mut s,
            &[
                "HELO c.lab",
                "MAIL FROM:<>",
                "MAIL FROM:<a@x.lab>",
                "RCPT TO:<Postmaster@Example.Lab>",
                "RCPT TO:<who@example.lab>",
                "RCPT TO:<grey@else.lab>",
                "RCPT TO:<x@else.lab>",
                "RCPT TO:x@else.lab",
                "VRFY x",
                "XYZZY",
                "NOOP",
                "RSET",
                "RCPT TO:<x@else.lab>",
                "QUIT",
            ],
        );
        assert_eq!(
            got,
            vec![
                250, 550, 250, 250, 550, 451, 250, 501, 252, 500, 250, 250, 503, 221
            ]
        );
    }

    #[test]
    fn size_parameter_over_limit_is_refused() {
        let script = HostScript::new("h").extensions(["SIZE 1000"]);
        let mut s = Session::new(&script, 1);
        assert_eq!(
            codes(
                &mut s,
                &[
                    "EHLO c",
                    "MAIL FROM:<a@b> SIZE=1001",
                    "MAIL FROM:<a@b> SIZE=1000"
                ]
            ),
            vec![250, 552, 250]
        );
    }

    #[test]
    fn no_service_banner_serves_only_quit() {
        let script = HostScript::new("h").banner((554, "5.3.2 go away"));
        let mut s = Session::new(&script, 1);
        assert_eq!(
            codes(&mut s, &["EHLO c", "MAIL FROM:<a@b>", "QUIT"]),
            vec![503, 503, 221]
        );
    }

    #[test]
    fn ehlo_lines_follow_tls_state() {
        let script = HostScript::new("h")
            .extensions(["SIZE 5"])
            .starttls(StartTls::CloseAfterReady);
        assert_eq!(script.ehlo_lines(false), vec!["h", "SIZE 5", "STARTTLS"]);
        assert_eq!(script.ehlo_lines(true), vec!["h", "SIZE 5"]);
        let listed = HostScript::new("h").extensions(["STARTTLS"]);
        let mut s = Session::new(&listed, 1);
        assert_eq!(codes(&mut s, &["EHLO c", "STARTTLS"]), vec![250, 454]);
    }

    #[test]
    fn chunks_assemble_and_are_bounded() {
        let script = HostScript::new("h")
            .extensions(["CHUNKING"])
            .max_message_bytes(10);
        let mut s = Session::new(&script, 7);
        codes(&mut s, &["EHLO c", "MAIL FROM:<a@b>", "RCPT TO:<c@d>"]);
        assert_eq!(
            s.handle("BDAT 3"),
            Action::ReadChunk {
                size: 3,
                last: false
            }
        );
        assert_eq!(s.finish_chunk(b"abc".to_vec(), false, false).0.code(), 250);
        let (answer, message) = s.finish_chunk(b"de".to_vec(), false, true);
        assert_eq!(answer, reply::QUEUED);
        let message = message.unwrap();
        assert_eq!(
            (message.session, message.data.as_slice()),
            (7, &b"abcde"[..])
        );
        codes(&mut s, &["MAIL FROM:<a@b>", "RCPT TO:<c@d>"]);
        assert_eq!(s.finish_chunk(vec![b'x'; 8], false, false).0.code(), 250);
        let (answer, message) = s.finish_chunk(vec![b'x'; 8], false, true);
        assert_eq!((answer, message), (reply::TOO_BIG, None));
    }

    #[tokio::test]
    async fn line_reader_is_bounded() {
        let input = [vec![b'a'; 5000], b"\r\nNOOP\r\npartial".to_vec()].concat();
        let mut reader = BufReader::with_capacity(64, &input[..]);
        assert_eq!(
            read_line(&mut reader, MAX_LINE).await.unwrap(),
            Line::TooLong
        );
        assert_eq!(
            read_line(&mut reader, MAX_LINE).await.unwrap(),
            Line::Text(b"NOOP\r\n".to_vec())
        );
        assert_eq!(read_line(&mut reader, MAX_LINE).await.unwrap(), Line::Eof);
    }
}
