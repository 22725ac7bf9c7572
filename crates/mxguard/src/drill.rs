//! The outage drill of `mxguard demo`: a backup MX (`mxguard relay`, in
//! this process) in front of a lab primary that is down, two messages
//! accepted and held, the primary back, the messages delivered — each step
//! with its time, from the relay's own mail events.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mxguard_lab::smtp::{HostScript, LabSmtp};
use mxguard_queue::FsSpool;
use mxguard_relay::callout::{BoxFuture, Lookup};
use mxguard_relay::{Config, Events, MailEvent, Options};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::{Failure, output};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The drill needs no DNS: the primary is given by address.
#[derive(Debug)]
struct NoDns;

impl Lookup for NoDns {
    fn mx<'a>(&'a self, d: &'a str) -> BoxFuture<'a, Result<Vec<mxguard_dns::MxRecord>, String>> {
        Box::pin(async move { Err(format!("no DNS in the drill ({d})")) })
    }
    fn addresses<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, String>> {
        Box::pin(async move {
            host.parse::<IpAddr>()
                .map(|ip| vec![ip])
                .map_err(|_| format!("no DNS in the drill ({host})"))
        })
    }
}

fn fail(what: &str) -> impl Fn(String) -> Failure + '_ {
    move |e| Failure::Internal(format!("outage drill: {what}: {e}"))
}

fn stamp() -> String {
    let t = time::OffsetDateTime::from(SystemTime::now());
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

fn say(line: &str) -> Result<(), Failure> {
    output::write_styled(&format!("  {}  {line}\n", stamp()))?;
    Ok(())
}

/// A free loopback port with nothing on it.
async fn closed_port() -> Result<u16, Failure> {
    let l = tokio::net::TcpListener::bind((LOCALHOST, 0))
        .await
        .map_err(|e| fail("port")(e.to_string()))?;
    let port = l
        .local_addr()
        .map_err(|e| fail("port")(e.to_string()))?
        .port();
    Ok(port)
}

async fn send(addr: std::net::SocketAddr, n: usize) -> Result<String, Failure> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| fail("connect")(e.to_string()))?;
    let mut r = BufReader::new(stream);
    let reply = async |r: &mut BufReader<TcpStream>| -> Result<String, Failure> {
        loop {
            let mut l = String::new();
            r.read_line(&mut l)
                .await
                .map_err(|e| fail("read")(e.to_string()))?;
            if l.as_bytes().get(3) != Some(&b'-') || l.is_empty() {
                return Ok(l.trim_end().to_owned());
            }
        }
    };
    reply(&mut r).await?;
    let msg = format!(
        "From: alice@sender.drill.lab\r\nTo: bob@drill.lab\r\nSubject: drill message {n}\r\n\r\nSent while the primary was down.\r\n."
    );
    let mut last = String::new();
    for cmd in [
        "EHLO sender.drill.lab".to_owned(),
        "MAIL FROM:<alice@sender.drill.lab>".to_owned(),
        "RCPT TO:<bob@drill.lab>".to_owned(),
        "DATA".to_owned(),
        msg,
        "QUIT".to_owned(),
    ] {
        r.get_mut()
            .write_all(format!("{cmd}\r\n").as_bytes())
            .await
            .map_err(|e| fail("write")(e.to_string()))?;
        let got = reply(&mut r).await?;
        if cmd.starts_with("From:") {
            last = got;
        }
    }
    Ok(last)
}

/// Run the drill and print its timeline.
pub async fn run() -> Result<(), Failure> {
    let dir = std::env::temp_dir().join(format!("mxguard-demo-drill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| fail("scratch directory")(e.to_string()))?;
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    std::fs::write(dir.join("users"), "@drill.lab\n").map_err(|e| fail("users")(e.to_string()))?;
    let primary_port = closed_port().await?;
    let text = format!(
        "hostname = \"backup.drill.lab\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[spool]\npath = \"spool\"\n\
         [delivery]\nretry = [\"1h\"]\nprobe_interval = \"500ms\"\ndestination_concurrency = 1\ndsn = \"never\"\nconnect_timeout = \"1s\"\n\
         [[domains]]\nname = \"drill.lab\"\nprimary = \"127.0.0.1:{primary_port}\"\n\
         recipients = \"list\"\nrecipient_list = \"users\"\n"
    );
    let config = Config::parse(&text, Some(&dir)).map_err(|e| fail("config")(e.to_string()))?;
    let (spool, _) = FsSpool::open(&dir.join("spool")).map_err(|e| fail("spool")(e.to_string()))?;
    let events = Arc::new(Events::new());
    let mut rx = events.subscribe();
    let prepared = mxguard_relay::prepare(config).map_err(|e| fail("relay")(e.to_string()))?;
    let options = Options {
        lookup: Arc::new(NoDns),
        spool: Arc::new(spool),
        events,
        mx_port: 25,
        spf: None,
    };
    let relay = mxguard_relay::start(prepared, options)
        .await
        .map_err(|e| fail("relay")(e.to_string()))?;
    let relay_addr = relay.smtp_addrs()[0];

    output::write_styled(&format!(
        "\nOutage drill: a backup MX (mxguard relay on {relay_addr}) for drill.lab, whose primary (127.0.0.1:{primary_port}) is down.\n"
    ))?;
    say("primary is down: nothing listens on its port")?;
    for n in 1..=2 {
        let reply = send(relay_addr, n).await?;
        say(&format!(
            "a sender hands message {n} to the backup: {reply}"
        ))?;
    }
    let started = Instant::now();
    let mut deferred = 0;
    while deferred < 2 && started.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(MailEvent::Delivery {
            outcome: "deferred",
            reply,
            ..
        })) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await
        {
            deferred += 1;
            if deferred == 1 {
                say(&format!(
                    "backup → primary: deferred ({reply}); probing it every 500 ms"
                ))?;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    say(&format!(
        "the queue holds {} message(s); the senders' own queues are empty",
        relay
            .metrics()
            .render(None)
            .lines()
            .find_map(|l| l.strip_prefix("mxguard_queue_messages "))
            .unwrap_or("?")
    ))?;
    let primary = LabSmtp::start(LOCALHOST, primary_port, HostScript::new("mail.drill.lab"))
        .await
        .map_err(|e| fail("primary")(e.to_string()))?;
    let back = Instant::now();
    say("primary is back")?;
    let mut delivered = 0;
    while delivered < 2 && back.elapsed() < Duration::from_secs(10) {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(MailEvent::Delivery {
                outcome: "delivered",
                queue_id,
                reply,
                ..
            })) => {
                delivered += 1;
                say(&format!("backup → primary: {queue_id} delivered ({reply})"))?;
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let took = back.elapsed();
    output::write_styled(&format!(
        "  {} of 2 messages reached the primary {:.1?} after it came back ({} stored there).\n",
        delivered,
        took,
        primary.messages().len()
    ))?;
    relay.shutdown(Duration::from_secs(2)).await;
    Ok(())
}
