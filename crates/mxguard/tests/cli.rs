//! The command line as a user meets it: the real binary, against a lab DNS
//! server on loopback. Exit codes, output formats and error lines are a
//! contract (DESIGN §3), so each is tested here.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mxguard_lab::{LabDns, ZoneSet};

const ZONE: &str = "\
clean.lab MX 10 mx.clean.lab
mx.clean.lab A 127.0.60.1
127.0.60.1 PTR mx.clean.lab
127.0.60.1 ASN 64560
warn.lab MX 10 mx.warn.lab
mx.warn.lab A 127.0.61.1
broken.lab MX !servfail
";

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mxguard"));
    cmd.env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("CLICOLOR");
    cmd
}

async fn lab(zone: &str) -> LabDns {
    let zones = ZoneSet::parse(zone).expect("zone");
    LabDns::start("127.0.0.1".parse().unwrap(), &zones)
        .await
        .expect("lab dns")
}

/// Run the binary without blocking the runtime that serves the lab.
async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("run mxguard"))
        .await
        .unwrap()
}

fn check(dns: &LabDns, args: &[&str]) -> Command {
    let mut cmd = bin();
    cmd.args([
        "check",
        "--resolver",
        &dns.addr().to_string(),
        "--allow-private",
        "--no-smtp",
    ]);
    cmd.args(args);
    cmd
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_0_when_clean_and_json_is_one_object() {
    let dns = lab(ZONE).await;
    let o = run(check(&dns, &["--format", "json", "clean.lab"])).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v.is_object());
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["domain"], "clean.lab");
    assert_eq!(v["verdict"]["backup_mx"], "not-needed");
    assert_eq!(v["mx"][0]["role"], "primary");
    assert_eq!(v["mx"][0]["addresses"][0]["asn"], 64560);
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_1_on_a_warning() {
    let dns = lab(ZONE).await;
    let o = run(check(&dns, &["warn.lab"])).await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stdout(&o).contains("mx-no-ptr"));
}

#[tokio::test(flavor = "multi_thread")]
async fn several_domains_json_array_and_jsonl_lines() {
    let dns = lab(ZONE).await;
    let o = run(check(
        &dns,
        &["--format", "json", "clean.lab", "warn.lab", "CLEAN.lab."],
    ))
    .await;
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let domains: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["domain"].as_str().unwrap())
        .collect();
    assert_eq!(
        domains,
        ["clean.lab", "warn.lab"],
        "in input order, duplicates removed"
    );

    let o = run(check(&dns, &["--format", "jsonl", "warn.lab", "clean.lab"])).await;
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["domain"], "warn.lab");
}

#[tokio::test(flavor = "multi_thread")]
async fn domain_that_cannot_be_checked_exits_2_but_others_are_reported() {
    let dns = lab(ZONE).await;
    let o = run(check(
        &dns,
        &["--format", "jsonl", "clean.lab", "broken.lab"],
    ))
    .await;
    assert_eq!(o.status.code(), Some(2));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["verdict"]["backup_mx"], "not-needed");
    assert_eq!(lines[1]["domain"], "broken.lab");
    assert_eq!(lines[1]["error"]["kind"], "mx-lookup-failed");
    let err = stderr(&o);
    assert!(
        err.contains("broken.lab") && err.contains("SERVFAIL"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_resolver_exits_2_within_the_timeout_naming_it() {
    let mut cmd = bin();
    cmd.args([
        "check",
        "--resolver",
        "127.0.0.1:1",
        "--timeout",
        "2",
        "example.com",
    ]);
    let started = Instant::now();
    let o = run(cmd).await;
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert!(o.stdout.is_empty());
    assert!(
        took < Duration::from_secs(2) + Duration::from_millis(1500),
        "took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_exits_2_before_any_lookup() {
    for args in [
        &["check", "-bad-.example"][..],
        &["check", "192.0.2.1"],
        &["check"],
        &["check", "--resolver", "dns.google", "example.com"],
        &["check", "--timeout", "0", "example.com"],
        &["check", "--jobs", "0", "example.com"],
        &["check", "--format", "xml", "example.com"],
        &["check", "--helo", "bad name\r\nRCPT", "example.com"],
        &["check", "--mail-from", "no-at-sign", "example.com"],
        &["check", "--mail-from", "a<b@example.com", "example.com"],
        &["check", "--ca-file", "/nonexistent/ca.pem", "example.com"],
        &["check", "--smtp-port", "0", "example.com"],
        &["check", "--deadline", "-1", "example.com"],
        &["frobnicate"],
    ] {
        let mut cmd = bin();
        cmd.args(args);
        let o = run(cmd).await;
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).is_empty(), "{args:?} should say why");
        assert!(o.stdout.is_empty(), "{args:?}");
    }
    let mut cmd = bin();
    cmd.arg("--help");
    assert_eq!(run(cmd).await.status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn input_file_with_comments() {
    let dns = lab(ZONE).await;
    let path = std::env::temp_dir().join(format!("mxguard-cli-input-{}.txt", std::process::id()));
    std::fs::write(
        &path,
        "# domains to check\nclean.lab   # ours\n\n  warn.lab\n",
    )
    .unwrap();
    let o = run(check(
        &dns,
        &["--format", "jsonl", "--input", path.to_str().unwrap()],
    ))
    .await;
    std::fs::remove_file(&path).ok();
    assert_eq!(stdout(&o).lines().count(), 2, "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn colour_only_on_request_or_terminal() {
    let dns = lab(ZONE).await;
    // Tests capture stdout through a pipe: plain text.
    let o = run(check(&dns, &["warn.lab"])).await;
    assert!(!stdout(&o).contains('\x1b'), "piped output must be plain");
    let mut forced = check(&dns, &["warn.lab"]);
    forced.env("CLICOLOR_FORCE", "1");
    let o = run(forced).await;
    assert!(stdout(&o).contains('\x1b'), "CLICOLOR_FORCE should colour");
    let mut no_color = check(&dns, &["warn.lab"]);
    no_color.env("NO_COLOR", "1");
    let o = run(no_color).await;
    assert!(!stdout(&o).contains('\x1b'));
    // JSON is never styled.
    let mut json = check(&dns, &["--format", "json", "warn.lab"]);
    json.env("CLICOLOR_FORCE", "1");
    assert!(!stdout(&run(json).await).contains('\x1b'));
}

#[tokio::test(flavor = "multi_thread")]
async fn text_report_shows_table_findings_and_verdict() {
    let dns = lab(ZONE).await;
    let o = run(check(&dns, &["warn.lab"])).await;
    let out = stdout(&o);
    assert!(out.starts_with("warn.lab  backup MX: not needed"), "{out}");
    assert!(out.contains("pref  host"));
    assert!(
        out.contains("10    mx.warn.lab  primary  127.0.61.1"),
        "{out}"
    );
    assert!(out.contains("warning  mx-no-ptr  mx.warn.lab 127.0.61.1"));
    assert!(out.contains("evidence: PTR 1.61.0.127.in-addr.arpa → none"));
    assert!(out.contains("needs none"));
}

/// `mxguard check … | head` must exit 0 when the reader goes away.
#[tokio::test(flavor = "multi_thread")]
async fn broken_pipe_exits_0() {
    // Enough domains that the text output is far larger than a pipe buffer,
    // so the binary is certain to write into a closed pipe.
    let mut zone = String::new();
    let mut list = String::new();
    for i in 0..400 {
        writeln!(
            zone,
            "d{i}.lab MX 10 mx.d{i}.lab\nmx.d{i}.lab A 127.0.62.{}",
            i % 250 + 1
        )
        .unwrap();
        writeln!(list, "d{i}.lab").unwrap();
    }
    let dns = lab(&zone).await;
    let mut cmd = check(&dns, &["--input", "-"]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let status = tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(list.as_bytes())
            .unwrap();
        drop(child.stdout.take()); // the reader leaves at once
        let out = child.wait_with_output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap();
    assert_eq!(status.0.code(), Some(0), "stderr: {}", status.1);
    assert!(!status.1.contains("panicked"), "{}", status.1);
}

/// The whole path over SMTP: the binary probes lab hosts, trusts the lab CA
/// from `--ca-file`, prints the host table with TLS, recipient and relay
/// columns, and exits 1 for a backscatter backup.
#[tokio::test(flavor = "multi_thread")]
async fn smtp_check_prints_the_table_and_judges_the_backup() {
    use mxguard_lab::smtp::{HostScript, LabSmtpSet, Reply, StartTls};
    use mxguard_lab::tls::LabCa;
    let zone = "\
bs.lab MX 10 mx.bs.lab
bs.lab MX 20 mx2.far.lab
mx.bs.lab A 127.0.62.1
127.0.62.1 PTR mx.bs.lab
127.0.62.1 ASN 64562
mx2.far.lab A 127.0.63.1
127.0.63.1 PTR mx2.far.lab
127.0.63.1 ASN 64563
";
    let dns = lab(zone).await;
    let ca = LabCa::new().unwrap();
    let host = |name: &str, unknown: Reply| {
        HostScript::new(name)
            .starttls(StartTls::Handshake(ca.issue(&[name]).unwrap()))
            .rcpt("postmaster@bs.lab", Reply::new(250, "2.1.5 ok"))
            .rcpt("*@bs.lab", unknown)
            .rcpt_default(Reply::new(554, "5.7.1 relay access denied"))
    };
    let smtp = LabSmtpSet::start([
        (
            "127.0.62.1".parse().unwrap(),
            host("mx.bs.lab", Reply::new(550, "5.1.1 no such user")),
        ),
        (
            "127.0.63.1".parse().unwrap(),
            host("mx2.far.lab", Reply::new(250, "2.1.5 ok")),
        ),
    ])
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("mxguard-cli-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let (resolver, port) = (dns.addr().to_string(), smtp.port().to_string());
    // `mxguard check` against the lab, trusting `ca`, then `rest`.
    let check = |ca: &str, rest: &[&str]| {
        let mut cmd = bin();
        cmd.args([
            "check",
            "--resolver",
            &resolver,
            "--allow-private",
            "--smtp-port",
            &port,
            "--ca-file",
            ca,
        ])
        .args(rest);
        cmd
    };
    let o = run(check(
        ca_file.to_str().unwrap(),
        &["--helo", "cli.mxguard.test", "bs.lab"],
    ))
    .await;
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{}", stderr(&o));
    assert!(out.starts_with("bs.lab  backup MX: LIABILITY"), "{out}");
    assert!(out.contains("TLS        recipients       relay"), "{out}");
    assert!(out.contains("TLS 1.3 ✓  rejects unknown  refused"), "{out}");
    assert!(out.contains("TLS 1.3 ✓  ACCEPTS ANY      refused"), "{out}");
    assert!(
        out.contains("critical backscatter-risk  mx2.far.lab 127.0.63.1"),
        "{out}"
    );
    assert!(
        out.contains("publish only `bs.lab. IN MX 10 mx.bs.lab.`"),
        "{out}"
    );
    // The EHLO name given is the one used.
    for h in smtp.hosts() {
        assert!(h.commands().iter().any(|c| c == "EHLO cli.mxguard.test"));
        assert!(!h.saw("DATA"));
    }

    // Without the lab CA the certificates are untrusted: a warning each,
    // but the verdict still turns on the backscatter.
    let system_ca = "/etc/ssl/certs/ca-certificates.crt";
    if std::path::Path::new(system_ca).exists() {
        let o = run(check(system_ca, &["--format", "json", "bs.lab"])).await;
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        let ids: Vec<&str> = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["id"].as_str().unwrap())
            .collect();
        assert!(ids.contains(&"tls-cert-invalid"), "{ids:?}");
        assert!(ids.contains(&"backscatter-risk"), "{ids:?}");
        assert_eq!(v["verdict"]["backup_mx"], "liability");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
