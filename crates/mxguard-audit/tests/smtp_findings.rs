//! Every SMTP finding, every untestable reason and every verdict, from real
//! conversations with the lab's scripted SMTP hosts on loopback, found
//! through real DNS answers from the lab's authoritative server.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use mxguard_audit::report::Address;
use mxguard_audit::{
    BackupVerdict, CheckOptions, FindingId as Id, Report, Severity, SmtpOptions, check_domain,
};
use mxguard_dns::{HickoryResolver, ResolverSpec};
use mxguard_lab::smtp::{Behaviour, HostScript, LabSmtpSet, Reply, StartTls};
use mxguard_lab::tls::{LabCa, LabCert, Validity};
use mxguard_lab::{LabDns, ZoneSet};
use mxguard_smtp::probe::{Reason, Status};

const D: &str = "probe.lab";
const PRIMARY: &str = "mx1.probe.lab";
const BACKUP: &str = "mx2.other.lab";

/// A domain with a primary and a backup on separate /24s and ASes, plus the
/// hosts that answer for them.
struct Lab {
    _dns: LabDns,
    resolver: HickoryResolver,
    smtp: LabSmtpSet,
    roots: Arc<rustls::RootCertStore>,
    timeout: Duration,
    deadline: Duration,
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A well-kept host for `D`: STARTTLS with a trusted certificate, postmaster
/// accepted, unknown users refused, relaying refused.
fn strict(name: &str, ca: &LabCa) -> HostScript {
    HostScript::new(name)
        .starttls(StartTls::Handshake(ca.issue(&[name]).unwrap()))
        .rcpt(&format!("postmaster@{D}"), Reply::new(250, "2.1.5 ok"))
        .rcpt(
            &format!("*@{D}"),
            Reply::new(550, "5.1.1 no such user here"),
        )
        .rcpt_default(Reply::new(554, "5.7.1 relay access denied"))
}

fn two_mx_zone(primary_ip: &str, backup_ip: &str) -> String {
    format!(
        "{D} MX 10 {PRIMARY}\n{D} MX 20 {BACKUP}\n\
         {PRIMARY} A {primary_ip}\n{primary_ip} PTR {PRIMARY}\n{primary_ip} ASN 64601\n\
         {BACKUP} A {backup_ip}\n{backup_ip} PTR {BACKUP}\n{backup_ip} ASN 64602\n"
    )
}

fn one_mx_zone(primary_ip: &str) -> String {
    format!(
        "{D} MX 10 {PRIMARY}\n{PRIMARY} A {primary_ip}\n{primary_ip} PTR {PRIMARY}\n{primary_ip} ASN 64601\n"
    )
}

async fn lab_with(zone: &str, hosts: Vec<(&str, HostScript)>, ca: &LabCa) -> Lab {
    let zones = ZoneSet::parse(zone).expect("zone text");
    let dns = LabDns::start(ip("127.0.0.1"), &zones)
        .await
        .expect("lab dns");
    let resolver = HickoryResolver::new(
        &ResolverSpec::Server(dns.addr()),
        Duration::from_millis(500),
    )
    .unwrap();
    let smtp = LabSmtpSet::start(hosts.into_iter().map(|(a, s)| (ip(a), s)))
        .await
        .expect("lab smtp");
    Lab {
        _dns: dns,
        resolver,
        smtp,
        roots: Arc::new(ca.root_store().unwrap()),
        timeout: Duration::from_secs(2),
        deadline: Duration::from_secs(20),
    }
}

/// A two-MX lab: primary at 127.0.X.1, backup at 127.0.(X+1).1.
async fn two(net: u8, primary: HostScript, backup: HostScript, ca: &LabCa) -> Lab {
    let p = format!("127.0.{net}.1");
    let b = format!("127.0.{}.1", net + 1);
    lab_with(&two_mx_zone(&p, &b), vec![(&p, primary), (&b, backup)], ca).await
}

impl Lab {
    fn opts(&self, allow_private: bool) -> CheckOptions {
        CheckOptions {
            allow_private,
            smtp: Some(SmtpOptions {
                port: self.smtp.port(),
                helo: "probe.mxguard.test".into(),
                mail_from: "probe@mxguard.test".into(),
                timeout: self.timeout,
                deadline: self.deadline,
                roots: self.roots.clone(),
            }),
        }
    }

    async fn check(&self) -> Report {
        check_domain(&self.resolver, D, self.opts(true))
            .await
            .expect("check runs")
    }
}

fn ids(r: &Report) -> BTreeSet<&'static str> {
    r.findings.iter().map(|f| f.id.as_str()).collect()
}

fn serious(r: &Report) -> Vec<String> {
    r.findings
        .iter()
        .filter(|f| f.severity >= Severity::Warning)
        .map(|f| format!("{} {:?}: {}", f.id, f.host, f.message))
        .collect()
}

fn addr<'a>(r: &'a Report, host: &str) -> &'a Address {
    &r.mx
        .iter()
        .find(|h| h.exchange == host)
        .unwrap_or_else(|| panic!("{host} not in report"))
        .addresses[0]
}

fn finding(r: &Report, id: Id) -> &mxguard_audit::Finding {
    r.findings
        .iter()
        .find(|f| f.id == id)
        .unwrap_or_else(|| panic!("no {id} in {:#?}", r.findings))
}

#[tokio::test]
async fn a_backup_that_matches_the_primary_is_healthy_and_no_data_is_ever_sent() {
    let ca = LabCa::new().unwrap();
    let lab = two(40, strict(PRIMARY, &ca), strict(BACKUP, &ca), &ca).await;
    let r = lab.check().await;
    assert!(r.smtp_probed);
    assert_eq!(serious(&r), Vec::<String>::new());
    assert_eq!(
        r.verdict.backup_mx,
        BackupVerdict::Healthy,
        "{:?}",
        r.verdict
    );
    assert!(
        r.verdict.summary.contains("rejects unknown recipients"),
        "{}",
        r.verdict.summary
    );
    for host in [PRIMARY, BACKUP] {
        let p = addr(&r, host).smtp.as_deref().expect("probed");
        assert!(p.reachable && p.starttls && p.esmtp);
        let tls = p.tls.as_ref().expect("tls");
        assert!(tls.handshake && tls.certificate.as_ref().unwrap().trusted);
        assert_eq!(p.null_sender.status, Status::Pass);
        assert_eq!(p.postmaster.status, Status::Pass);
        assert_eq!(p.unknown_recipient.status, Status::Pass);
        assert!(p.relay.len() >= 12);
        assert!(
            p.relay.iter().all(|c| c.check.status == Status::Pass),
            "{:#?}",
            p.relay
        );
        assert_eq!(p.relay_status(), Status::Pass);
        assert_eq!(p.size, Some(10_240_000));
        assert!(!p.transcripts.is_empty());
    }
    for h in lab.smtp.hosts() {
        assert!(!h.saw("DATA"), "DATA sent to {}", h.name());
        assert!(h.saw("RSET") && h.saw("QUIT"));
        // One conversation at a time, a handful in all.
        assert!(h.connections() <= 3, "{} connections", h.connections());
        assert!(h.messages().is_empty());
    }
    // The random recipient really is random and really was asked.
    let p = addr(&r, PRIMARY).smtp.as_deref().unwrap();
    assert!(
        p.unknown_recipient_address
            .starts_with("mxguard-nonexistent-")
    );
    let asked = lab.smtp.hosts()[0].commands();
    assert!(
        asked
            .iter()
            .any(|c| c.contains(&p.unknown_recipient_address)),
        "{asked:?}"
    );
}

#[tokio::test]
async fn a_backup_without_the_recipient_list_is_backscatter_and_a_liability() {
    let ca = LabCa::new().unwrap();
    let careless = HostScript::new(BACKUP)
        .starttls(StartTls::Handshake(ca.issue(&[BACKUP]).unwrap()))
        .rcpt(&format!("*@{D}"), Reply::new(250, "2.1.5 ok"))
        .rcpt_default(Reply::new(554, "5.7.1 relay access denied"));
    let lab = two(42, strict(PRIMARY, &ca), careless, &ca).await;
    let r = lab.check().await;
    let f = finding(&r, Id::BackscatterRisk);
    assert_eq!(f.severity, Severity::Critical);
    assert_eq!(f.host.as_deref(), Some(BACKUP));
    assert!(
        f.evidence.contains("250") && f.evidence.contains("550"),
        "{}",
        f.evidence
    );
    assert_eq!(
        r.findings
            .iter()
            .filter(|f| f.id == Id::BackscatterRisk)
            .count(),
        1
    );
    assert!(!ids(&r).contains("open-relay"));
    assert!(!ids(&r).contains("catch-all"));
    assert_eq!(r.verdict.backup_mx, BackupVerdict::Liability);
    assert!(
        r.verdict.summary.contains("do not exist"),
        "{}",
        r.verdict.summary
    );
    assert!(
        r.verdict
            .advice
            .iter()
            .any(|a| a.contains("relay_recipient_maps")),
        "{:?}",
        r.verdict.advice
    );
    assert!(
        r.verdict
            .advice
            .iter()
            .any(|a| a.contains(&format!("{D}. IN MX 10 {PRIMARY}."))),
        "{:?}",
        r.verdict.advice
    );
    // The relay variants at the domain say nothing on such a host.
    let p = addr(&r, BACKUP).smtp.as_deref().unwrap();
    let pct = p
        .relay
        .iter()
        .find(|c| c.variant == "percent-hack")
        .unwrap();
    assert_eq!(pct.check.reason, Some(Reason::AcceptsAnyRecipient));
    assert_eq!(p.relay_status(), Status::Pass);
}

#[tokio::test]
async fn every_host_accepting_unknown_users_is_catch_all_not_backscatter() {
    let ca = LabCa::new().unwrap();
    let open_domain = |name: &str| {
        HostScript::new(name)
            .starttls(StartTls::Handshake(ca.issue(&[name]).unwrap()))
            .rcpt(&format!("*@{D}"), Reply::new(250, "2.1.5 ok"))
            .rcpt_default(Reply::new(554, "5.7.1 relay access denied"))
    };
    let (p, b) = (open_domain(PRIMARY), open_domain(BACKUP));
    let lab = two(44, p, b, &ca).await;
    let r = lab.check().await;
    let f = finding(&r, Id::CatchAll);
    assert_eq!(f.severity, Severity::Info);
    assert!(f.host.is_none());
    assert!(!ids(&r).contains("backscatter-risk"));
    assert_eq!(serious(&r), Vec::<String>::new());
    assert_eq!(r.verdict.backup_mx, BackupVerdict::Healthy);
    assert!(
        r.verdict.summary.contains("catch-all"),
        "{}",
        r.verdict.summary
    );
}

#[tokio::test]
async fn a_backup_that_relays_is_an_open_relay_and_a_liability() {
    let ca = LabCa::new().unwrap();
    // Strict about the domain, but it takes the third-party domain too.
    let relaying = HostScript::new(BACKUP)
        .starttls(StartTls::Handshake(lab_cert(&ca, BACKUP)))
        .rcpt(&format!("postmaster@{D}"), Reply::new(250, "2.1.5 ok"))
        .rcpt(
            &format!("*@{D}"),
            Reply::new(550, "5.1.1 no such user here"),
        )
        .rcpt("*relay-probe.mxguard.example", Reply::new(250, "2.1.5 ok"))
        .rcpt_default(Reply::new(554, "5.7.1 relay access denied"));
    let lab = two(46, strict(PRIMARY, &ca), relaying, &ca).await;
    let r = lab.check().await;
    let f = finding(&r, Id::OpenRelay);
    assert_eq!(f.severity, Severity::Critical);
    assert_eq!(f.host.as_deref(), Some(BACKUP));
    assert!(
        f.evidence
            .contains("RCPT TO:<relaytest@relay-probe.mxguard.example> → 250"),
        "{}",
        f.evidence
    );
    assert!(f.message.contains("third-party"), "{}", f.message);
    assert_eq!(r.verdict.backup_mx, BackupVerdict::Liability);
    assert!(
        r.verdict.summary.contains("relays mail"),
        "{}",
        r.verdict.summary
    );
    assert!(!ids(&r).contains("backscatter-risk"));
    let primary = addr(&r, PRIMARY).smtp.as_deref().unwrap();
    assert_eq!(primary.relay_status(), Status::Pass);
}

fn lab_cert(ca: &LabCa, name: &str) -> LabCert {
    ca.issue(&[name]).unwrap()
}

#[tokio::test]
async fn an_unreachable_backup_is_reported_and_adds_nothing() {
    let ca = LabCa::new().unwrap();
    let gone = HostScript::new(BACKUP).behaviour(Behaviour::Refuse);
    let lab = two(48, strict(PRIMARY, &ca), gone, &ca).await;
    let r = lab.check().await;
    let f = finding(&r, Id::MxUnreachable);
    assert_eq!(f.severity, Severity::Warning);
    assert_eq!(f.host.as_deref(), Some(BACKUP));
    let p = addr(&r, BACKUP).smtp.as_deref().unwrap();
    assert!(!p.reachable);
    assert_eq!(p.error.as_ref().unwrap().reason, Reason::ConnectionRefused);
    for c in [&p.null_sender, &p.postmaster, &p.unknown_recipient] {
        assert_eq!(c.status, Status::Untestable);
        assert_eq!(c.reason, Some(Reason::ConnectionRefused));
    }
    assert!(
        p.relay
            .iter()
            .all(|c| c.check.reason == Some(Reason::ConnectionRefused))
    );
    // Nothing else is said about a host that cannot be asked.
    assert!(!ids(&r).contains("backscatter-risk"));
    assert!(!ids(&r).contains("probe-untestable"));
    assert_eq!(r.verdict.backup_mx, BackupVerdict::Redundant);
    assert!(
        r.verdict.summary.contains("does not answer SMTP"),
        "{}",
        r.verdict.summary
    );
}

#[tokio::test]
async fn when_no_mx_answers_it_is_critical_but_not_a_liability() {
    let ca = LabCa::new().unwrap();
    let lab = two(
        50,
        HostScript::new(PRIMARY).behaviour(Behaviour::Refuse),
        HostScript::new(BACKUP).behaviour(Behaviour::Refuse),
        &ca,
    )
    .await;
    let r = lab.check().await;
    let unreachable: Vec<_> = r
        .findings
        .iter()
        .filter(|f| f.id == Id::MxUnreachable)
        .collect();
    assert_eq!(unreachable.len(), 2);
    assert!(unreachable.iter().all(|f| f.severity == Severity::Critical));
    assert_eq!(r.verdict.backup_mx, BackupVerdict::Redundant);
}

#[tokio::test]
async fn starttls_offered_handshake_and_trust_are_three_findings() {
    let ca = LabCa::new().unwrap();
    let cases: Vec<(&str, StartTls, Id)> = vec![
        ("none", StartTls::Off, Id::StarttlsMissing),
        ("garbage", StartTls::GarbageAfterReady, Id::StarttlsFailed),
        ("closed", StartTls::CloseAfterReady, Id::StarttlsFailed),
        (
            "refused",
            StartTls::Refuse(Reply::new(454, "4.7.0 TLS not available")),
            Id::StarttlsFailed,
        ),
        (
            "expired",
            StartTls::Handshake(ca.issue_with(&[BACKUP], Validity::Expired).unwrap()),
            Id::TlsCertInvalid,
        ),
        (
            "wrong-name",
            StartTls::Handshake(ca.issue(&["someone-else.lab"]).unwrap()),
            Id::TlsCertInvalid,
        ),
        (
            "self-signed",
            StartTls::Handshake(LabCert::self_signed(&[BACKUP], Validity::Current).unwrap()),
            Id::TlsCertInvalid,
        ),
    ];
    for (i, (label, tls, want)) in cases.into_iter().enumerate() {
        let backup = HostScript::new(BACKUP)
            .starttls(tls)
            .rcpt(&format!("postmaster@{D}"), Reply::new(250, "2.1.5 ok"))
            .rcpt(&format!("*@{D}"), Reply::new(550, "5.1.1 no such user"))
            .rcpt_default(Reply::new(554, "5.7.1 relay access denied"));
        let net = 52 + 2 * u8::try_from(i).unwrap();
        let lab = two(net, strict(PRIMARY, &ca), backup, &ca).await;
        let r = lab.check().await;
        let f = finding(&r, want);
        assert_eq!(f.severity, Severity::Warning, "{label}");
        assert_eq!(f.host.as_deref(), Some(BACKUP), "{label}");
        let parity = finding(&r, Id::TlsParity);
        assert_eq!(parity.host.as_deref(), Some(BACKUP), "{label}");
        assert_eq!(parity.severity, Severity::Warning, "{label}");
        // Only the one TLS finding, and the primary is clean.
        let tls_ids: BTreeSet<_> = r
            .findings
            .iter()
            .filter(|f| {
                matches!(
                    f.id,
                    Id::StarttlsMissing | Id::StarttlsFailed | Id::TlsCertInvalid
                )
            })
            .map(|f| (f.id, f.host.clone()))
            .collect();
        assert_eq!(tls_ids.len(), 1, "{label}: {tls_ids:?}");
        // Weaker TLS is not a liability, but not healthy either.
        assert_eq!(r.verdict.backup_mx, BackupVerdict::Redundant, "{label}");
        // After a failed handshake the probe carried on in clear text.
        let p = addr(&r, BACKUP).smtp.as_deref().unwrap();
        assert_eq!(p.unknown_recipient.status, Status::Pass, "{label}");
    }
}

#[tokio::test]
async fn a_backup_with_a_larger_or_no_size_limit_breaks_size_parity() {
    for (i, ext) in [Some("SIZE 52428800"), None, Some("SIZE 0")]
        .into_iter()
        .enumerate()
    {
        let ca = LabCa::new().unwrap();
        let mut exts = vec!["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"];
        if let Some(e) = ext {
            exts.push(e);
        }
        let backup = strict(BACKUP, &ca).extensions(exts);
        let net = 70 + 2 * u8::try_from(i).unwrap();
        let lab = two(net, strict(PRIMARY, &ca), backup, &ca).await;
        let r = lab.check().await;
        let f = finding(&r, Id::SizeParity);
        assert_eq!(f.severity, Severity::Warning, "{ext:?}");
        assert_eq!(f.host.as_deref(), Some(BACKUP));
        assert!(f.evidence.contains("SIZE 10240000"), "{}", f.evidence);
        assert_eq!(r.verdict.backup_mx, BackupVerdict::Redundant);
    }
    // A smaller limit is fine.
    let ca = LabCa::new().unwrap();
    let backup = strict(BACKUP, &ca).extensions(["PIPELINING", "SIZE 1000000"]);
    let lab = two(76, strict(PRIMARY, &ca), backup, &ca).await;
    assert!(!ids(&lab.check().await).contains("size-parity"));
}

#[tokio::test]
async fn refusing_the_null_sender_or_postmaster_is_reported() {
    let ca = LabCa::new().unwrap();
    let host = strict(PRIMARY, &ca).mail("<>", Reply::new(550, "5.7.1 we do not take bounces"));
    let lab = lab_with(&one_mx_zone("127.0.80.1"), vec![("127.0.80.1", host)], &ca).await;
    let r = lab.check().await;
    let f = finding(&r, Id::NullSenderRejected);
    assert_eq!(f.severity, Severity::Warning);
    assert_eq!(
        f.evidence,
        "MAIL FROM:<> → 550 5.7.1 we do not take bounces"
    );
    // The recipient questions were still asked, with the probe's sender.
    let p = addr(&r, PRIMARY).smtp.as_deref().unwrap();
    assert_eq!(p.postmaster.status, Status::Pass);
    assert_eq!(p.unknown_recipient.status, Status::Pass);
    assert_eq!(r.verdict.backup_mx, BackupVerdict::NotNeeded);
    assert!(
        r.verdict.summary.contains("primary itself"),
        "{}",
        r.verdict.summary
    );

    let ca = LabCa::new().unwrap();
    let host = HostScript::new(PRIMARY)
        .starttls(StartTls::Handshake(ca.issue(&[PRIMARY]).unwrap()))
        .rcpt(&format!("*@{D}"), Reply::new(550, "5.1.1 no such user"))
        .rcpt_default(Reply::new(554, "5.7.1 relay access denied"));
    let lab = lab_with(&one_mx_zone("127.0.81.1"), vec![("127.0.81.1", host)], &ca).await;
    let r = lab.check().await;
    let f = finding(&r, Id::PostmasterRejected);
    assert_eq!(f.severity, Severity::Warning);
    assert!(
        f.evidence
            .starts_with(&format!("RCPT TO:<postmaster@{D}> → 550"))
    );
}

#[tokio::test]
async fn peers_are_compared_with_each_other() {
    let ca = LabCa::new().unwrap();
    let zone = format!(
        "{D} MX 10 a.{D}\n{D} MX 10 b.{D}\n\
         a.{D} A 127.0.82.1\n127.0.82.1 PTR a.{D}\n127.0.82.1 ASN 64601\n\
         b.{D} A 127.0.83.1\n127.0.83.1 PTR b.{D}\n127.0.83.1 ASN 64602\n"
    );
    let careless = HostScript::new(format!("b.{D}"))
        .starttls(StartTls::Handshake(ca.issue(&[&format!("b.{D}")]).unwrap()))
        .rcpt_default(Reply::new(250, "2.1.5 ok"));
    let lab = lab_with(
        &zone,
        vec![
            ("127.0.82.1", strict(&format!("a.{D}"), &ca)),
            ("127.0.83.1", careless),
        ],
        &ca,
    )
    .await;
    let r = lab.check().await;
    let f = finding(&r, Id::BackscatterRisk);
    assert_eq!(f.host.as_deref(), Some(&*format!("b.{D}")));
    let relay = finding(&r, Id::OpenRelay);
    assert_eq!(relay.host.as_deref(), Some(&*format!("b.{D}")));
    // No backup: the verdict is about the domain having none.
    assert_eq!(r.verdict.backup_mx, BackupVerdict::NotNeeded);
}

/// One lab per untestable reason: the reason is recorded, the result is
/// never read as pass or fail, and no parity finding is drawn from it.
#[tokio::test]
async fn every_untestable_reason_is_named_and_never_counted() {
    let ca = LabCa::new().unwrap();
    let cases: Vec<(&str, HostScript, Reason)> = vec![
        (
            "greylisted",
            HostScript::new(BACKUP)
                .rcpt(&format!("postmaster@{D}"), Reply::new(250, "2.1.5 ok"))
                .rcpt(
                    &format!("*@{D}"),
                    Reply::new(
                        450,
                        "4.2.0 Recipient address rejected: Greylisted, try again later",
                    ),
                )
                .rcpt_default(Reply::new(554, "5.7.1 relay access denied")),
            Reason::Greylisted,
        ),
        (
            "rate-limited",
            HostScript::new(BACKUP).rcpt_default(Reply::new(
                450,
                "4.7.1 too many recipients from your address, slow down",
            )),
            Reason::RateLimited,
        ),
        (
            "temporary-failure",
            HostScript::new(BACKUP).rcpt_default(Reply::new(451, "4.3.0 temporary lookup failure")),
            Reason::TemporaryFailure,
        ),
        (
            "busy banner",
            HostScript::new(BACKUP).behaviour(Behaviour::Busy),
            Reason::RateLimited,
        ),
        (
            "service refused",
            HostScript::new(BACKUP).banner(Reply::new(554, "5.3.2 no SMTP service here")),
            Reason::ServiceRefused,
        ),
        (
            "sender refused",
            HostScript::new(BACKUP).mail_default(Reply::new(550, "5.7.1 sender rejected")),
            Reason::SenderRefused,
        ),
        (
            "closed",
            HostScript::new(BACKUP).behaviour(Behaviour::CloseAfterBanner),
            Reason::ConnectionClosed,
        ),
    ];
    for (i, (label, script, want)) in cases.into_iter().enumerate() {
        let net = 100 + 2 * u8::try_from(i).unwrap();
        let lab = two(net, strict(PRIMARY, &ca), script, &ca).await;
        let r = lab.check().await;
        let p = addr(&r, BACKUP).smtp.as_deref().unwrap();
        assert!(p.reachable, "{label}");
        assert_eq!(p.unknown_recipient.status, Status::Untestable, "{label}");
        assert_eq!(
            p.unknown_recipient.reason,
            Some(want),
            "{label}: {:#?}",
            p.unknown_recipient
        );
        let f = finding(&r, Id::ProbeUntestable);
        assert_eq!(f.severity, Severity::Info, "{label}");
        assert!(f.message.contains(want.as_str()), "{label}: {}", f.message);
        for never in [
            "backscatter-risk",
            "catch-all",
            "open-relay",
            "postmaster-rejected",
        ] {
            assert!(
                !ids(&r).contains(never),
                "{label}: {never} drawn from an untestable answer"
            );
        }
        // Refusing every sender refuses the null sender too: that much is
        // a definite answer.
        assert_eq!(
            ids(&r).contains("null-sender-rejected"),
            label == "sender refused",
            "{label}"
        );
        assert_ne!(r.verdict.backup_mx, BackupVerdict::Liability, "{label}");
    }
}

#[tokio::test]
async fn a_silent_host_times_out_and_the_deadline_caps_the_whole_check() {
    let ca = LabCa::new().unwrap();
    let mut lab = two(
        130,
        strict(PRIMARY, &ca),
        HostScript::new(BACKUP).behaviour(Behaviour::Silent),
        &ca,
    )
    .await;
    lab.timeout = Duration::from_millis(300);
    let r = lab.check().await;
    let p = addr(&r, BACKUP).smtp.as_deref().unwrap();
    assert_eq!(p.error.as_ref().unwrap().reason, Reason::Timeout);
    assert_eq!(p.unknown_recipient.reason, Some(Reason::Timeout));
    assert!(!p.reachable);
    assert_eq!(finding(&r, Id::MxUnreachable).host.as_deref(), Some(BACKUP));

    // A deadline shorter than the timeout ends the wait as `deadline`.
    lab.timeout = Duration::from_secs(30);
    lab.deadline = Duration::from_millis(400);
    let r = lab.check().await;
    let p = addr(&r, BACKUP).smtp.as_deref().unwrap();
    assert_eq!(p.error.as_ref().unwrap().reason, Reason::Deadline);
    assert!(p.relay.iter().all(|c| c.check.status == Status::Untestable));
    // The check ran out of time: that is not the host's fault.
    assert!(!ids(&r).contains("mx-unreachable"), "{:#?}", r.findings);
    assert!(
        finding(&r, Id::ProbeUntestable)
            .message
            .contains("deadline")
    );
    assert_ne!(r.verdict.backup_mx, BackupVerdict::Liability);
    // The primary, fast, finished before the deadline.
    let primary = addr(&r, PRIMARY).smtp.as_deref().unwrap();
    assert_eq!(primary.unknown_recipient.status, Status::Pass);
}

#[tokio::test]
async fn private_addresses_are_not_probed_without_allow_private() {
    let ca = LabCa::new().unwrap();
    let lab = lab_with(
        &one_mx_zone("127.0.140.1"),
        vec![("127.0.140.1", strict(PRIMARY, &ca))],
        &ca,
    )
    .await;
    let r = check_domain(&lab.resolver, D, lab.opts(false))
        .await
        .unwrap();
    let a = addr(&r, PRIMARY);
    assert!(a.smtp.is_none());
    assert!(
        a.smtp_skipped
            .as_deref()
            .unwrap()
            .contains("--allow-private")
    );
    assert_eq!(lab.smtp.hosts()[0].connections(), 0);
    assert!(ids(&r).contains("mx-private-address"));
}

#[tokio::test]
async fn an_address_shared_by_two_names_is_probed_once_per_name_in_turn() {
    let ca = LabCa::new().unwrap();
    let zone = format!(
        "{D} MX 10 {PRIMARY}\n{D} MX 20 alias.{D}\n\
         {PRIMARY} A 127.0.142.1\nalias.{D} A 127.0.142.1\n\
         127.0.142.1 PTR {PRIMARY}\n127.0.142.1 ASN 64601\n"
    );
    let host = HostScript::new(PRIMARY)
        .starttls(StartTls::Handshake(ca.issue(&[PRIMARY]).unwrap()))
        .rcpt(&format!("postmaster@{D}"), Reply::new(250, "2.1.5 ok"))
        .rcpt(&format!("*@{D}"), Reply::new(550, "5.1.1 no such user"))
        .rcpt_default(Reply::new(554, "5.7.1 relay access denied"));
    let lab = lab_with(&zone, vec![("127.0.142.1", host)], &ca).await;
    let r = lab.check().await;
    // The certificate names the primary only: wrong for the alias.
    let bad = finding(&r, Id::TlsCertInvalid);
    assert_eq!(bad.host.as_deref(), Some(&*format!("alias.{D}")));
    assert!(ids(&r).contains("backup-shares-address"));
    assert_eq!(r.verdict.backup_mx, BackupVerdict::Redundant);
}

#[tokio::test]
async fn a_backup_that_refuses_all_service_adds_nothing() {
    let ca = LabCa::new().unwrap();
    let closed = HostScript::new(BACKUP).banner(Reply::new(554, "5.3.2 no SMTP service here"));
    let lab = two(150, strict(PRIMARY, &ca), closed, &ca).await;
    let r = lab.check().await;
    let p = addr(&r, BACKUP).smtp.as_deref().unwrap();
    assert!(p.reachable && p.refuses_service());
    assert_eq!(r.verdict.backup_mx, BackupVerdict::Redundant);
    assert!(
        r.verdict.summary.contains("refuses all mail"),
        "{}",
        r.verdict.summary
    );
}

#[tokio::test]
async fn dns_advice_on_a_backup_does_not_make_it_inconsistent() {
    // A backup without reverse DNS is still a faithful copy of the primary.
    let ca = LabCa::new().unwrap();
    let zone = format!(
        "{D} MX 10 {PRIMARY}\n{D} MX 20 {BACKUP}\n\
         {PRIMARY} A 127.0.152.1\n127.0.152.1 PTR {PRIMARY}\n127.0.152.1 ASN 64601\n\
         {BACKUP} A 127.0.153.1\n127.0.153.1 ASN 64602\n"
    );
    let lab = lab_with(
        &zone,
        vec![
            ("127.0.152.1", strict(PRIMARY, &ca)),
            ("127.0.153.1", strict(BACKUP, &ca)),
        ],
        &ca,
    )
    .await;
    let r = lab.check().await;
    assert_eq!(finding(&r, Id::MxNoPtr).host.as_deref(), Some(BACKUP));
    assert_eq!(
        r.verdict.backup_mx,
        BackupVerdict::Healthy,
        "{}",
        r.verdict.summary
    );
}
