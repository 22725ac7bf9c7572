//! The session's waits for the client (RFC 5321 §4.5.3.2), on tokio's
//! paused clock: the session runs over an in-memory pipe, and the test
//! reads the virtual time at which the relay gives up.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{FakeDns, Scratch, config_text};
use mxguard_queue::FsSpool;
use mxguard_relay::policy::Validation;
use mxguard_relay::{Config, Events, MailEvent, Options, session};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio::time::Instant;

struct Pipe {
    r: BufReader<DuplexStream>,
    _dir: Scratch,
    events: tokio::sync::mpsc::UnboundedReceiver<MailEvent>,
    task: tokio::task::JoinHandle<()>,
}

async fn session_with(smtp_extra: &str) -> Pipe {
    let dir = Scratch::new("timeouts");
    std::fs::write(dir.path().join("users"), "alice@example.com\n").unwrap();
    let body =
        "[[domains]]\nname = \"example.com\"\nrecipients = \"list\"\nrecipient_list = \"users\"\n";
    let text = config_text(dir.path(), smtp_extra, body);
    let config = Config::parse(&text, Some(dir.path())).unwrap();
    let (spool, _) = FsSpool::open(&dir.path().join("spool")).unwrap();
    let events = Arc::new(Events::new());
    let rx = events.subscribe();
    let options = Options {
        lookup: Arc::new(FakeDns::default()),
        spool: Arc::new(spool),
        events,
        mx_port: 25,
        spf: None,
    };
    let prepared = mxguard_relay::prepare(config).unwrap();
    let validations: HashMap<String, Validation> = prepared.validations;
    let shared = mxguard_relay::server::shared(
        &prepared.config,
        None,
        validations,
        &options,
        vec![],
        tokio::sync::watch::channel(false).1,
    );
    let (client, server) = tokio::io::duplex(64 * 1024);
    let task = tokio::spawn(session::run(
        shared,
        Box::new(server),
        "192.0.2.7:40000".parse().unwrap(),
    ));
    let mut p = Pipe {
        r: BufReader::new(client),
        _dir: dir,
        events: rx,
        task,
    };
    let banner = p.line().await;
    assert!(banner.starts_with("220 "), "{banner}");
    p
}

impl Pipe {
    async fn line(&mut self) -> String {
        let mut s = String::new();
        self.r.read_line(&mut s).await.unwrap();
        s.trim_end().to_owned()
    }

    async fn reply(&mut self) -> String {
        loop {
            let l = self.line().await;
            if l.as_bytes().get(3) != Some(&b'-') {
                return l;
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.r
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await
    }

    async fn closed(mut self) -> Vec<MailEvent> {
        assert_eq!(self.line().await, "", "the session closes");
        self.task.await.unwrap();
        let mut out = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            out.push(e);
        }
        out
    }
}

fn timed_out(events: &[MailEvent]) -> bool {
    events.iter().any(|e| {
        matches!(
            e,
            MailEvent::Disconnect {
                reason: Some("timeout"),
                ..
            }
        )
    })
}

#[tokio::test(start_paused = true)]
async fn an_idle_client_is_dropped_after_five_minutes() {
    let mut p = session_with("").await;
    let start = Instant::now();
    let r = p.reply().await;
    let waited = start.elapsed();
    assert_eq!(
        r,
        "421 4.4.2 backup.example.net Timeout waiting for input; closing"
    );
    assert!(
        waited >= Duration::from_secs(300) && waited < Duration::from_secs(301),
        "gave up after {waited:?}"
    );
    assert!(timed_out(&p.closed().await));
}

#[tokio::test(start_paused = true)]
async fn each_command_restarts_the_wait() {
    let mut p = session_with("").await;
    let start = Instant::now();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(290)).await;
        assert_eq!(&p.cmd("NOOP").await[..3], "250");
    }
    let r = p.reply().await;
    assert!(r.starts_with("421 4.4.2"), "{r}");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(3 * 290 + 300) && waited < Duration::from_secs(3 * 290 + 301),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn data_waits_three_minutes_for_more_text_then_keeps_nothing() {
    let mut p = session_with("").await;
    p.cmd("EHLO client.example").await;
    p.cmd("MAIL FROM:<a@sender.example>").await;
    p.cmd("RCPT TO:<alice@example.com>").await;
    assert_eq!(&p.cmd("DATA").await[..3], "354");
    p.r.get_mut()
        .write_all(b"Subject: slow\r\n\r\npart one\r\n")
        .await
        .unwrap();
    // More text within the limit keeps the transfer alive…
    tokio::time::sleep(Duration::from_secs(170)).await;
    p.r.get_mut().write_all(b"part two\r\n").await.unwrap();
    let start = Instant::now();
    // …and then silence.
    let r = p.reply().await;
    let waited = start.elapsed();
    assert!(r.starts_with("421 4.4.2"), "{r}");
    assert!(
        waited >= Duration::from_secs(180) && waited < Duration::from_secs(181),
        "{waited:?}"
    );
    let events = p.closed().await;
    assert!(timed_out(&events));
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, MailEvent::Accepted { .. }))
    );
}

#[tokio::test(start_paused = true)]
async fn the_timeouts_follow_the_config() {
    let mut p = session_with("command_timeout = \"10m\"\n").await;
    let start = Instant::now();
    let r = p.reply().await;
    assert!(r.starts_with("421 4.4.2"), "{r}");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(600) && waited < Duration::from_secs(601),
        "{waited:?}"
    );
}
