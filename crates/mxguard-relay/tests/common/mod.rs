//! A relay in the test process, on 127.0.0.1 with a free port, its spool in
//! a fresh directory, and a plain SMTP client to talk to it.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mxguard_dns::MxRecord;
use mxguard_queue::{CrashSpool, FsSpool, Spool};
use mxguard_relay::callout::{BoxFuture, Lookup};
use mxguard_relay::{Config, Events, MailEvent, Options, Running};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc::UnboundedReceiver;

/// A directory removed when dropped.
#[derive(Debug)]
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "mxguard-relay-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// DNS for tests: fixed MX records and addresses.
#[derive(Debug, Default)]
pub struct FakeDns {
    pub mx: Vec<(String, Vec<MxRecord>)>,
    pub hosts: Vec<(String, Vec<IpAddr>)>,
}

impl Lookup for FakeDns {
    fn mx<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<MxRecord>, String>> {
        Box::pin(async move {
            Ok(self
                .mx
                .iter()
                .find(|(d, _)| d == domain)
                .map(|(_, r)| r.clone())
                .unwrap_or_default())
        })
    }

    fn addresses<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, String>> {
        Box::pin(async move {
            if let Ok(ip) = host.parse() {
                return Ok(vec![ip]);
            }
            self.hosts
                .iter()
                .find(|(h, _)| h == host)
                .map(|(_, a)| a.clone())
                .ok_or_else(|| format!("{host}: NXDOMAIN"))
        })
    }
}

/// A running relay and what it writes to.
pub struct Relay {
    pub dir: Scratch,
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub spool: Arc<dyn Spool>,
    pub crash: Option<Arc<CrashSpool>>,
    pub events: UnboundedReceiver<MailEvent>,
}

/// Config text with `listen` and `spool.path` filled in; `body` is the rest
/// (domains, limits…), written after `[spool]`.
pub fn config_text(dir: &Path, smtp_extra: &str, body: &str) -> String {
    format!(
        "hostname = \"backup.example.net\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n{smtp_extra}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[spool]\npath = \"{}\"\n{body}\n",
        dir.join("spool").display()
    )
}

impl Relay {
    /// Start a relay whose config is `config_text(dir, smtp_extra, body)`.
    pub async fn start(smtp_extra: &str, body: &str) -> Relay {
        Relay::start_with(
            Scratch::new("relay"),
            smtp_extra,
            body,
            false,
            FakeDns::default(),
        )
        .await
    }

    pub async fn start_with(
        dir: Scratch,
        smtp_extra: &str,
        body: &str,
        crash: bool,
        dns: FakeDns,
    ) -> Relay {
        Relay::start_full(dir, smtp_extra, body, crash, dns, 25).await
    }

    pub async fn start_full(
        dir: Scratch,
        smtp_extra: &str,
        body: &str,
        crash: bool,
        dns: FakeDns,
        mx_port: u16,
    ) -> Relay {
        Relay::start_spf(dir, smtp_extra, body, crash, dns, mx_port, None).await
    }

    pub async fn start_spf(
        dir: Scratch,
        smtp_extra: &str,
        body: &str,
        crash: bool,
        dns: FakeDns,
        mx_port: u16,
        spf: Option<Arc<dyn mxguard_relay::spf::SpfCheck>>,
    ) -> Relay {
        let text = config_text(dir.path(), smtp_extra, body);
        let config = Config::parse(&text, Some(dir.path()))
            .unwrap_or_else(|e| panic!("config:\n{text}\n{e}"));
        let spool_dir = dir.path().join("spool");
        let (spool, crash): (Arc<dyn Spool>, Option<Arc<CrashSpool>>) = if crash {
            let (c, _) = CrashSpool::open(&spool_dir).unwrap();
            let c = Arc::new(c);
            (c.clone(), Some(c))
        } else {
            let (s, _) = FsSpool::open(&spool_dir).unwrap();
            (Arc::new(s), None)
        };
        let events = Arc::new(Events::new());
        let rx = events.subscribe();
        let prepared = mxguard_relay::prepare(config).unwrap();
        let running = mxguard_relay::start(
            prepared,
            Options {
                lookup: Arc::new(dns),
                spool: spool.clone(),
                events,
                mx_port,
                spf,
            },
        )
        .await
        .unwrap();
        let addr = running.smtp_addrs()[0];
        Relay {
            dir,
            running: Some(running),
            addr,
            spool,
            crash,
            events: rx,
        }
    }

    /// Stop (saving the callout cache) and give back the directory.
    pub async fn stop(mut self) -> Scratch {
        if let Some(r) = self.running.take() {
            r.shutdown(Duration::from_secs(5)).await;
        }
        self.dir
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// Number of complete messages in the spool.
    pub fn queued(&self) -> usize {
        self.spool.list().unwrap().len()
    }

    /// The reasons of the rejections so far, in order (other events are
    /// dropped).
    pub fn rejection_reasons(&mut self) -> Vec<&'static str> {
        self.drain_events()
            .iter()
            .filter_map(|e| match e {
                MailEvent::Rejected { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect()
    }

    /// Every event so far.
    pub fn drain_events(&mut self) -> Vec<MailEvent> {
        let mut out = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            out.push(e);
        }
        out
    }
}

/// A minimal SMTP client that shows the server's replies as they are.
pub struct Client {
    pub r: BufReader<TcpStream>,
    pub banner: String,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client::connect_from(addr, None).await
    }

    /// Connect from a chosen loopback source address.
    pub async fn connect_from(addr: SocketAddr, source: Option<IpAddr>) -> Client {
        let stream = match source {
            Some(ip) => {
                let s = TcpSocket::new_v4().unwrap();
                s.bind(SocketAddr::new(ip, 0)).unwrap();
                s.connect(addr).await.unwrap()
            }
            None => TcpStream::connect(addr).await.unwrap(),
        };
        let mut c = Client {
            r: BufReader::new(stream),
            banner: String::new(),
        };
        c.banner = c.reply().await;
        c
    }

    /// One reply, lines joined with '\n' (empty string at EOF).
    pub async fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(20), self.r.read_line(&mut line))
                .await
                .expect("a reply within 20 s")
                .unwrap_or(0);
            if n == 0 {
                return lines.join("\n");
            }
            let line = line.trim_end_matches(['\r', '\n']).to_owned();
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line);
            if !more {
                return lines.join("\n");
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.r.get_mut().write_all(bytes).await.unwrap();
    }

    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Read until the server closes; what it said.
    pub async fn rest(&mut self) -> String {
        let mut s = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.r.read_to_string(&mut s)).await;
        s
    }

    /// EHLO, MAIL, RCPTs, DATA with `message` (dot-stuffed here); every reply.
    pub async fn send_mail(&mut self, from: &str, rcpts: &[&str], message: &[u8]) -> Vec<String> {
        let mut out = vec![self.cmd("EHLO client.example").await];
        out.push(self.cmd(&format!("MAIL FROM:<{from}>")).await);
        for r in rcpts {
            out.push(self.cmd(&format!("RCPT TO:<{r}>")).await);
        }
        let data = self.cmd("DATA").await;
        let go = data.starts_with("354");
        out.push(data);
        if go {
            self.send(&dot_stuff(message)).await;
            self.send(b".\r\n").await;
            out.push(self.reply().await);
        }
        out
    }
}

pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    let mut at_start = true;
    for &b in message {
        if at_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

pub fn code(reply: &str) -> &str {
    &reply[..3.min(reply.len())]
}
