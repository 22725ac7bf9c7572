//! Benchmark: is `check` probing concurrently? Runs a full check of a
//! two-MX lab domain and, beside it, each host's probe sequence alone; the
//! full check should take about as long as the slowest host (target ≤ 1.3×),
//! not the sum. Run through `bench/check-concurrency.sh`.
//!
//! Arguments: `[DELAY_MS] [RUNS]` — the lab hosts wait DELAY_MS (default 20)
//! before each reply, like servers across an ocean; RUNS (default 5) runs
//! of each measurement, the median reported.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mxguard_audit::{CheckOptions, SmtpOptions, check_domain};
use mxguard_dns::{HickoryResolver, ResolverSpec};
use mxguard_lab::smtp::{HostScript, LabSmtpSet, Reply, StartTls};
use mxguard_lab::tls::LabCa;
use mxguard_lab::{LabDns, ZoneSet};
use mxguard_smtp::client::ClientConfig;
use mxguard_smtp::probe::{self, ProbeTarget};

const DOMAIN: &str = "bench.lab";
const HOSTS: [(&str, &str); 2] = [
    ("mx1.bench.lab", "127.0.90.1"),
    ("mx2.far.lab", "127.0.91.1"),
];

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let delay_ms: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(20);
    let runs: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(5);
    let delay = Duration::from_millis(delay_ms);

    let ca = LabCa::new()?;
    let mut zone = String::new();
    for (i, (name, ip)) in HOSTS.iter().enumerate() {
        zone.push_str(&format!(
            "{DOMAIN} MX {} {name}\n{name} A {ip}\n{ip} PTR {name}\n{ip} ASN {}\n",
            10 * (i + 1),
            64700 + i
        ));
    }
    let dns = LabDns::start("127.0.0.1".parse()?, &ZoneSet::parse(&zone)?).await?;
    let resolver = HickoryResolver::new(&ResolverSpec::Server(dns.addr()), Duration::from_secs(2))?;
    let mut scripts = Vec::new();
    for (name, ip) in HOSTS {
        let script = HostScript::new(name)
            .starttls(StartTls::Handshake(ca.issue(&[name])?))
            .rcpt(&format!("postmaster@{DOMAIN}"), Reply::new(250, "2.1.5 ok"))
            .rcpt(
                &format!("*@{DOMAIN}"),
                Reply::new(550, "5.1.1 no such user"),
            )
            .rcpt_default(Reply::new(554, "5.7.1 relay access denied"))
            .reply_delay(delay);
        scripts.push((ip.parse::<IpAddr>()?, script));
    }
    let smtp = LabSmtpSet::start(scripts).await?;
    let roots = Arc::new(ca.root_store()?);
    let opts = SmtpOptions {
        port: smtp.port(),
        helo: "bench.mxguard.test".into(),
        mail_from: "probe@bench.mxguard.test".into(),
        timeout: Duration::from_secs(10),
        deadline: Duration::from_secs(120),
        roots: roots.clone(),
    };
    let cfg = ClientConfig {
        helo: opts.helo.clone(),
        connect_timeout: opts.timeout,
        command_timeout: opts.timeout,
        roots,
        deadline: None,
    };

    let mut full = Vec::new();
    let mut per_host: Vec<Vec<Duration>> = vec![Vec::new(); HOSTS.len()];
    for _ in 0..runs {
        let started = Instant::now();
        let report = check_domain(
            &resolver,
            DOMAIN,
            CheckOptions {
                allow_private: true,
                smtp: Some(opts.clone()),
            },
        )
        .await?;
        full.push(started.elapsed());
        assert!(report.smtp_probed);
        for (i, (name, ip)) in HOSTS.iter().enumerate() {
            let target = ProbeTarget {
                addr: SocketAddr::new(ip.parse()?, smtp.port()),
                mx_name: (*name).to_owned(),
                domain: DOMAIN.to_owned(),
                mail_from: opts.mail_from.clone(),
                unknown_local_part: probe::random_local_part(),
            };
            let started = Instant::now();
            let p = probe::probe(&target, &cfg).await;
            per_host[i].push(started.elapsed());
            assert!(p.reachable && p.tls.as_ref().is_some_and(|t| t.handshake));
        }
    }
    let full = median(full);
    let hosts: Vec<Duration> = per_host.into_iter().map(median).collect();
    let slowest = hosts.iter().copied().max().unwrap_or_default();
    let sum: Duration = hosts.iter().sum();
    println!("check of a two-MX lab domain, {delay_ms} ms per reply, median of {runs} runs");
    for ((name, _), d) in HOSTS.iter().zip(&hosts) {
        println!(
            "  probe sequence of {name:<16} {:>8.1} ms",
            d.as_secs_f64() * 1e3
        );
    }
    println!(
        "  sum of the hosts (sequential)  {:>8.1} ms",
        sum.as_secs_f64() * 1e3
    );
    println!(
        "  full check (DNS + SMTP)        {:>8.1} ms",
        full.as_secs_f64() * 1e3
    );
    let ratio = full.as_secs_f64() / slowest.as_secs_f64();
    println!(
        "ratio full check / slowest host: {ratio:.2} (target ≤ 1.30: {})",
        if ratio <= 1.3 { "met" } else { "NOT met" }
    );
    Ok(())
}
