//! The web server over real HTTP on loopback, against the demo lab: the
//! JSON API, the plain-form page, the event stream, and every refusal —
//! bad domains, private addresses, the rate limit, the cap on checks at
//! once, the deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mxguard_audit::SmtpOptions;
use mxguard_dns::ResolverSpec;
use mxguard_lab::demo::{DEMO_ZONE, demo_hosts};
use mxguard_lab::{HostScript, LabCa, LabDns, LabSmtp, LabSmtpSet, ZoneSet};
use mxguard_web::WebConfig;
use serde_json::Value;

struct Lab {
    dns: LabDns,
    smtp: LabSmtpSet,
    roots: Arc<rustls::RootCertStore>,
}

async fn demo_lab() -> Lab {
    let zones = ZoneSet::parse(DEMO_ZONE).unwrap();
    let dns = LabDns::start("127.0.0.1".parse().unwrap(), &zones)
        .await
        .unwrap();
    let ca = LabCa::new().unwrap();
    let smtp = LabSmtpSet::start(demo_hosts(&ca).unwrap()).await.unwrap();
    Lab {
        dns,
        smtp,
        roots: Arc::new(ca.root_store().unwrap()),
    }
}

fn config(dns: SocketAddr, port: u16, roots: Arc<rustls::RootCertStore>) -> WebConfig {
    WebConfig {
        resolver: ResolverSpec::Server(dns),
        dns_timeout: Duration::from_secs(2),
        smtp: SmtpOptions {
            port,
            helo: "web-test.mxguard.lab".into(),
            mail_from: "probe@web-test.mxguard.lab".into(),
            timeout: Duration::from_secs(2),
            deadline: Duration::from_secs(10),
            roots,
        },
        allow_private: true,
        rate_per_minute: 600,
        rate_burst: 100,
        max_checks: 8,
        check_timeout: Duration::from_secs(20),
    }
}

/// Serves `cfg` on a free loopback port; returns the base URL.
async fn serve(cfg: WebConfig) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(mxguard_web::serve(listener, cfg, std::future::pending()));
    format!("http://{addr}")
}

/// A GET, off the runtime: status, Retry-After, body.
async fn get(url: String) -> (u16, Option<String>, String) {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let mut resp = agent.get(&url).call().expect("HTTP");
        let status = resp.status().as_u16();
        let retry = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        (status, retry, body)
    })
    .await
    .unwrap()
}

async fn get_json(url: String) -> (u16, Value) {
    let (status, _, body) = get(url).await;
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")),
    )
}

fn has_finding(report: &Value, id: &str, host: &str) -> bool {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["id"] == id && f["host"] == host)
}

#[tokio::test(flavor = "multi_thread")]
async fn api_check_returns_the_report_of_check() {
    let lab = demo_lab().await;
    let base = serve(config(lab.dns.addr(), lab.smtp.port(), lab.roots.clone())).await;
    let (status, r) = get_json(format!("{base}/api/check?domain=backscatter.lab")).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["schema_version"], 1);
    assert_eq!(r["domain"], "backscatter.lab");
    assert_eq!(r["verdict"]["backup_mx"], "liability");
    assert!(
        has_finding(&r, "backscatter-risk", "mx2.backscatter.lab"),
        "{r}"
    );
    // The same report `check --format json` prints: the audit's, field for
    // field.
    let direct = mxguard_audit::check_domain(
        &mxguard_dns::HickoryResolver::new(
            &ResolverSpec::Server(lab.dns.addr()),
            Duration::from_secs(2),
        )
        .unwrap(),
        "backscatter.lab",
        mxguard_audit::CheckOptions {
            allow_private: true,
            smtp: Some(config(lab.dns.addr(), lab.smtp.port(), lab.roots.clone()).smtp),
        },
    )
    .await
    .unwrap();
    let direct = serde_json::to_value(&direct).unwrap();
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&r), keys(&direct));
    assert_eq!(r["verdict"], direct["verdict"]);
    assert_eq!(r["mx_records"], direct["mx_records"]);

    // An IDN is checked as its A-label (which the lab's DNS server does
    // not serve: the check cannot run, and says so, naming it).
    let (status, r) = get_json(format!("{base}/api/check?domain=b%C3%BCcher.lab")).await;
    assert_eq!(status, 502, "{r}");
    assert_eq!(r["error"]["kind"], "check-failed");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("xn--bcher-kva.lab: its MX records could not be looked up"),
        "{r}"
    );
    // This server's resolver is its own business.
    assert!(!r.to_string().contains(&lab.dns.addr().to_string()), "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_domains_are_refused_with_a_message() {
    let lab = demo_lab().await;
    let base = serve(config(lab.dns.addr(), lab.smtp.port(), lab.roots.clone())).await;
    for (q, says) in [
        ("", "Enter a domain name"),
        ("domain=", "Enter a domain name"),
        ("domain=exa%20mple.com", "not a valid"),
        ("domain=127.0.0.1", "is an address"),
        ("domain=%5B127.0.0.1%5D", "is an address"),
        ("domain=localhost", "single label"),
        ("domain=a..b", "not a valid domain name"),
    ] {
        let (status, r) = get_json(format!("{base}/api/check?{q}")).await;
        assert_eq!(status, 400, "{q}: {r}");
        assert_eq!(r["error"]["kind"], "bad-request", "{q}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.contains(says), "{q}: {msg}");
        // The page says the same, as a page.
        let (status, _, page) = get(format!("{base}/check?{q}")).await;
        assert_eq!(status, 400, "{q}");
        assert!(page.contains("Could not check"), "{page}");
        assert!(!page.contains("panicked") && !page.contains("RUST_BACKTRACE"));
    }
    let (status, _, page) = get(format!("{base}/no/such/page")).await;
    assert_eq!(status, 404);
    assert!(page.contains("There is no such page."));
}

#[tokio::test(flavor = "multi_thread")]
async fn private_addresses_are_never_probed_without_allow_private() {
    // A lab of its own, to count the connections its hosts see.
    let lab = demo_lab().await;
    let mut cfg = config(lab.dns.addr(), lab.smtp.port(), lab.roots.clone());
    cfg.allow_private = false;
    let base = serve(cfg).await;
    let (status, r) = get_json(format!("{base}/api/check?domain=backscatter.lab")).await;
    assert_eq!(status, 200, "{r}");
    for host in r["mx"].as_array().unwrap() {
        for a in host["addresses"].as_array().unwrap() {
            assert!(a.get("smtp").is_none(), "{a}");
            assert!(
                a["smtp_skipped"]
                    .as_str()
                    .unwrap()
                    .contains("loopback address"),
                "{a}"
            );
        }
    }
    assert!(
        has_finding(&r, "mx-private-address", "mx.backscatter.lab"),
        "{r}"
    );
    let probed: u64 = lab.smtp.hosts().iter().map(LabSmtp::connections).sum();
    assert_eq!(probed, 0, "a private address was connected to");
    // Names of private networks are not looked up at all.
    for name in [
        "printer.local",
        "intranet.corp",
        "db.internal",
        "router.home.arpa",
        "localhost",
    ] {
        let (status, v) = get_json(format!("{base}/api/check?domain={name}")).await;
        assert_eq!(status, 400, "{name}: {v}");
    }
    let (_, v) = get_json(format!("{base}/api/check?domain=printer.local")).await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("private networks"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_client_is_rate_limited() {
    let lab = demo_lab().await;
    let mut cfg = config(lab.dns.addr(), lab.smtp.port(), lab.roots.clone());
    cfg.rate_per_minute = 3;
    cfg.rate_burst = 3;
    let base = serve(cfg).await;
    for _ in 0..3 {
        let (status, _) = get_json(format!("{base}/api/simulate?outage=1h&profile=postfix")).await;
        assert_eq!(status, 200);
    }
    let (status, retry, body) = get(format!("{base}/api/check?domain=clean.lab")).await;
    assert_eq!(status, 429, "{body}");
    let wait: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=20).contains(&wait), "{wait}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["kind"], "rate-limited");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Too many checks")
    );
}

/// A lab domain whose only MX answers every command after `delay`.
async fn slow_lab(delay: Duration) -> (LabDns, LabSmtp) {
    let zones = ZoneSet::parse(
        "slow.lab MX 10 mx.slow.lab\nmx.slow.lab A 127.0.77.1\n127.0.77.1 PTR mx.slow.lab\n",
    )
    .unwrap();
    let dns = LabDns::start("127.0.0.1".parse().unwrap(), &zones)
        .await
        .unwrap();
    let smtp = LabSmtp::start(
        "127.0.77.1".parse().unwrap(),
        0,
        HostScript::new("mx.slow.lab").reply_delay(delay),
    )
    .await
    .unwrap();
    (dns, smtp)
}

#[tokio::test(flavor = "multi_thread")]
async fn checks_at_once_are_capped_and_each_has_a_deadline() {
    let (dns, smtp) = slow_lab(Duration::from_millis(700)).await;
    let roots = Arc::new(rustls::RootCertStore::empty());
    let mut cfg = config(dns.addr(), smtp.addr().port(), roots);
    cfg.max_checks = 1;
    cfg.check_timeout = Duration::from_secs(2);
    let base = serve(cfg).await;
    let first = tokio::spawn(get_json(format!("{base}/api/check?domain=slow.lab")));
    // Well inside the first check's 2 s.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (status, retry, body) = get(format!("{base}/api/check?domain=slow.lab")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry.as_deref(), Some("5"));
    assert!(body.contains("\"busy\""), "{body}");
    // The first one runs into the 2 s deadline (each reply takes 0.7 s).
    let (status, v) = first.await.unwrap();
    assert_eq!(status, 504, "{v}");
    assert_eq!(v["error"]["kind"], "timeout");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("longer than 2 s")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_that_leaves_stops_its_check() {
    use std::io::{BufRead as _, BufReader, Write as _};
    let (dns, smtp) = slow_lab(Duration::from_millis(700)).await;
    let roots = Arc::new(rustls::RootCertStore::empty());
    let mut cfg = config(dns.addr(), smtp.addr().port(), roots);
    cfg.max_checks = 1;
    cfg.check_timeout = Duration::from_secs(3);
    let base = serve(cfg).await;
    let addr = base.strip_prefix("http://").unwrap().to_owned();
    // Open the event stream, wait for the first event, and hang up.
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET /events?domain=slow.lab HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        while r.read_line(&mut line).unwrap() > 0 && !line.contains("event: planned") {
            line.clear();
        }
    })
    .await
    .unwrap();
    // Well before that check's own 3 s deadline would free its place.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Its place is free again: the next check runs (into its own deadline)
    // instead of being turned away as busy.
    let (status, v) = get_json(format!("{base}/api/check?domain=slow.lab")).await;
    assert_eq!(status, 504, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn api_simulate_runs_the_simulator() {
    let lab = demo_lab().await;
    let base = serve(config(lab.dns.addr(), lab.smtp.port(), lab.roots.clone())).await;
    let (status, v) = get_json(format!(
        "{base}/api/simulate?outage=6d&backup=1&profile=postfix,exim"
    ))
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["outage_s"], 6 * 86_400);
    for s in v["senders"].as_array().unwrap() {
        assert!(s["bounced_at_s"].is_u64(), "{s}");
        assert!(s["with_backup"]["delivered_at_s"].is_u64(), "{s}");
    }
    // Each sender once, however often it is named.
    let many = vec!["sendmail"; 100].join(",");
    let (status, v) = get_json(format!("{base}/api/simulate?outage=60d&profile={many}")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["senders"].as_array().unwrap().len(), 1);
    let too_many = vec!["sendmail"; 400].join(",");
    let (status, _) = get_json(format!("{base}/api/simulate?outage=1h&profile={too_many}")).await;
    assert_eq!(status, 400);
    let (status, v) = get_json(format!("{base}/api/simulate?outage=6h")).await;
    assert_eq!(status, 200);
    assert!(
        v["senders"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["bounced_at_s"].is_null())
    );
    for (q, says) in [
        ("", "`outage` is missing"),
        ("outage=soon", "not a duration"),
        ("outage=61d", "at most 60 days"),
        ("outage=1h&start=2h", "within the outage"),
        ("outage=1h&profile=qmail", "no sender `qmail`"),
    ] {
        let (status, v) = get_json(format!("{base}/api/simulate?{q}")).await;
        assert_eq!(status, 400, "{q}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(says),
            "{q}: {v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_works_without_javascript_and_loads_nothing_from_elsewhere() {
    let lab = demo_lab().await;
    let base = serve(config(lab.dns.addr(), lab.smtp.port(), lab.roots.clone())).await;
    let (status, _, front) = get(format!("{base}/")).await;
    assert_eq!(status, 200);
    assert!(front.contains("<label for=\"domain\">"), "{front}");
    assert!(front.contains("<form id=\"lookup\" action=\"/check\" method=\"get\""));

    let (status, _, page) = get(format!("{base}/check?domain=backscatter.lab")).await;
    assert_eq!(status, 200);
    // Verdict first, then the diagram with the backup highlighted, then the
    // host table and the findings, then the outage panel.
    let order = [
        "data-verdict=\"liability\"",
        "<svg id=\"route-svg\"",
        "<g class=\"host problem\" data-host=\"mx2.backscatter.lab\" data-role=\"backup\">",
        "id=\"hosts\"",
        "data-finding=\"backscatter-risk\"",
        "id=\"outage-form\"",
    ];
    let mut at = 0;
    for needle in order {
        let found = page[at..]
            .find(needle)
            .unwrap_or_else(|| panic!("{needle} missing after byte {at}:\n{page}"));
        at += found + needle.len();
    }
    assert!(page.contains("✗ accepts unknown users"), "{page}");
    // The edge to the backup is marked as a path for spam; the primary's not.
    assert!(
        page.contains("<path class=\"edge tls risky\" data-to=\"mx2.backscatter.lab\""),
        "{page}"
    );
    assert!(page.contains("<path class=\"edge tls\" data-to=\"mx.backscatter.lab\""));
    assert!(page.contains("pref 20 · TLS · accepts unknown users"));
    assert!(!page.contains("<g class=\"host problem\" data-host=\"mx.backscatter.lab\""));
    for external in ["src=\"http", "href=\"http", "url(http", "@import"] {
        assert!(!page.contains(external), "{external} in the page");
    }
    // The browser is told so too.
    let csp = tokio::task::spawn_blocking({
        let url = format!("{base}/");
        move || {
            let resp = ureq::get(&url).call().unwrap();
            resp.headers()
                .get("content-security-policy")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        }
    })
    .await
    .unwrap()
    .expect("a Content-Security-Policy header");
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    let (status, _, css) = get(format!("{base}/assets/style.css")).await;
    assert_eq!(status, 200);
    assert!(!css.contains("http"), "the stylesheet fetches nothing");

    // The outage panel without JavaScript: a page of its own.
    let (status, _, sim) = get(format!("{base}/simulate?outage=6d&backup=1")).await;
    assert_eq!(status, 200);
    assert!(sim.contains("<svg class=\"timeline\""), "{sim}");
    assert!(sim.contains("With the backup MX none does."), "{sim}");
    let (_, _, fragment) = get(format!("{base}/simulate?outage=6h&fragment=1")).await;
    assert!(fragment.starts_with("<div class=\"sim\""), "{fragment}");
}

#[tokio::test(flavor = "multi_thread")]
async fn results_stream_in_as_probes_finish() {
    let lab = demo_lab().await;
    let base = serve(config(lab.dns.addr(), lab.smtp.port(), lab.roots.clone())).await;
    let (status, _, body) = get(format!("{base}/events?domain=backup.lab")).await;
    assert_eq!(status, 200);
    let events: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(events, ["planned", "probe", "probe", "result"], "{body}");
    assert!(
        body.contains("probing…"),
        "the planned table shows probes pending"
    );
    let probe = body
        .lines()
        .skip_while(|l| *l != "event: probe")
        .nth(1)
        .and_then(|l| l.strip_prefix("data: "))
        .unwrap();
    let p: Value = serde_json::from_str(probe).unwrap();
    assert!(p["id"].as_str().unwrap().starts_with("row-mx"), "{p}");
    assert!(p["html"].as_str().unwrap().starts_with("<tr id="), "{p}");
    assert!(body.contains("data-verdict=\"healthy\""), "{body}");

    let (_, _, body) = get(format!("{base}/events?domain=not%20a%20domain")).await;
    assert!(body.starts_with("event: failure"), "{body}");
}
