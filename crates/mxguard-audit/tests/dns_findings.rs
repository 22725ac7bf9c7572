//! Every DNS finding, produced from real DNS packets served by the lab's
//! authoritative server — no mocked resolver anywhere.

use std::collections::BTreeSet;
use std::time::Duration;

use mxguard_audit::{
    BackupVerdict, CheckOptions, FindingId, GatherError, Report, Severity, check_domain,
};
use mxguard_dns::{HickoryResolver, LookupError, ResolverSpec};
use mxguard_lab::{LabDns, ZoneSet};

struct Lab {
    _dns: LabDns,
    resolver: HickoryResolver,
}

async fn lab(zone: &str) -> Lab {
    let zones = ZoneSet::parse(zone).expect("zone text");
    let dns = LabDns::start("127.0.0.1".parse().unwrap(), &zones)
        .await
        .expect("lab dns");
    let resolver = HickoryResolver::new(
        &ResolverSpec::Server(dns.addr()),
        Duration::from_millis(300),
    )
    .unwrap();
    Lab {
        _dns: dns,
        resolver,
    }
}

impl Lab {
    async fn check(&self, domain: &str) -> Report {
        self.check_with(domain, true).await
    }

    async fn check_with(&self, domain: &str, allow_private: bool) -> Report {
        let opts = CheckOptions {
            allow_private,
            smtp: None,
        };
        check_domain(&self.resolver, domain, opts)
            .await
            .expect("check runs")
    }
}

fn ids(r: &Report) -> BTreeSet<&'static str> {
    r.findings.iter().map(|f| f.id.as_str()).collect()
}

fn set(list: &[&'static str]) -> BTreeSet<&'static str> {
    list.iter().copied().collect()
}

/// A well-kept host: address, PTR that points back, ASN.
fn host(name: &str, ip: &str, asn: u32) -> String {
    format!("{name} A {ip}\n{ip} PTR {name}\n{ip} ASN {asn}\n")
}

#[tokio::test]
async fn clean_single_mx_has_no_findings() {
    let lab = lab(&format!(
        "ok.lab MX 10 mx.ok.lab\n{}",
        host("mx.ok.lab", "127.0.40.1", 64540)
    ))
    .await;
    let r = lab.check("ok.lab").await;
    assert!(r.findings.is_empty(), "{:?}", r.findings);
    assert_eq!(r.verdict.backup_mx, BackupVerdict::NotNeeded);
    // The summary says how long an outage the common senders cover, as the
    // simulator works it out from their profiles.
    let c = mxguard_sim::common_coverage();
    let span = mxguard_sim::format_approx(c.covered);
    assert!(
        r.verdict
            .summary
            .contains(&format!("cover an outage of up to {span} without loss")),
        "{}",
        r.verdict.summary
    );
    assert!(
        r.verdict.summary.contains(&c.first_to_give_up),
        "{}",
        r.verdict.summary
    );
    assert_eq!(r.mx.len(), 1);
    let a = &r.mx[0].addresses[0];
    assert_eq!(a.asn, Some(64540));
    assert_eq!(a.ptr.as_deref(), Some("mx.ok.lab"));
    assert_eq!(a.fcrdns, Some(true));
}

#[tokio::test]
async fn independent_backup_is_healthy() {
    let zone = format!(
        "b.lab MX 10 mx.b.lab\nb.lab MX 20 mx.partner.lab\n{}{}",
        host("mx.b.lab", "127.0.41.1", 64541),
        host("mx.partner.lab", "127.0.42.1", 64542)
    );
    let lab = lab(&zone).await;
    let r = lab.check("b.lab").await;
    assert!(r.findings.is_empty(), "{:?}", r.findings);
    assert_eq!(r.verdict.backup_mx, BackupVerdict::Healthy);
    let roles: Vec<&str> = r.mx.iter().map(|h| h.role.as_str()).collect();
    assert_eq!(roles, ["primary", "backup"]);
}

#[tokio::test]
async fn null_mx() {
    let lab = lab("n.lab MX 0 .\n").await;
    let r = lab.check("n.lab").await;
    assert_eq!(ids(&r), set(&["null-mx"]));
    assert_eq!(r.findings[0].severity, Severity::Info);
    assert_eq!(r.verdict.backup_mx, BackupVerdict::NoMail);
    assert!(r.mx.is_empty());
}

#[tokio::test]
async fn null_mx_mixed() {
    let lab = lab(&format!(
        "m.lab MX 0 .\nm.lab MX 10 mx.m.lab\n{}",
        host("mx.m.lab", "127.0.43.1", 64543)
    ))
    .await;
    let r = lab.check("m.lab").await;
    assert_eq!(ids(&r), set(&["null-mx-mixed"]));
    assert_eq!(r.findings[0].severity, Severity::Critical);
    assert!(
        r.findings[0].evidence.contains("MX 0 ."),
        "{}",
        r.findings[0].evidence
    );
}

#[tokio::test]
async fn no_mx_falls_back_to_implicit_mx() {
    let lab = lab(&host("i.lab", "127.0.44.1", 64544)).await;
    let r = lab.check("i.lab").await;
    assert_eq!(ids(&r), set(&["no-mx"]));
    assert_eq!(r.mx.len(), 1);
    assert_eq!(r.mx[0].exchange, "i.lab");
    assert_eq!(r.mx[0].preference, 0);
    assert_eq!(r.verdict.backup_mx, BackupVerdict::NotNeeded);
}

#[tokio::test]
async fn no_mail_route_nodata_and_nxdomain() {
    let lab = lab("exists.lab TXT hello\n").await;
    let r = lab.check("exists.lab").await;
    assert_eq!(ids(&r), set(&["no-mail-route"]));
    assert_eq!(r.verdict.backup_mx, BackupVerdict::NoMail);
    let r = lab.check("missing.exists.lab").await;
    assert_eq!(ids(&r), set(&["no-mail-route"]));
    assert!(r.findings[0].evidence.contains("NXDOMAIN"));
}

#[tokio::test]
async fn mx_target_cname() {
    let lab = lab(&format!(
        "c.lab MX 10 mail.c.lab\nmail.c.lab CNAME mx.c.lab\n{}",
        host("mx.c.lab", "127.0.45.1", 64545)
    ))
    .await;
    let r = lab.check("c.lab").await;
    assert_eq!(ids(&r), set(&["mx-target-cname"]));
    assert_eq!(r.mx[0].cname_chain, ["mx.c.lab"]);
    assert_eq!(r.findings[0].host.as_deref(), Some("mail.c.lab"));
}

#[tokio::test]
async fn mx_target_ip_literal_severity_depends_on_other_hosts() {
    let lab = lab(&format!(
        "l.lab MX 10 mx.l.lab\nl.lab MX 20 127.0.46.9\nonly.lab MX 10 127.0.46.9\n{}",
        host("mx.l.lab", "127.0.46.1", 64546)
    ))
    .await;
    let r = lab.check("l.lab").await;
    assert_eq!(ids(&r), set(&["mx-target-ip-literal"]));
    assert_eq!(r.findings[0].severity, Severity::Warning);
    assert!(r.mx[1].ip_literal);
    // With no other host, the literal is the whole route: critical.
    let r = lab.check("only.lab").await;
    assert_eq!(ids(&r), set(&["mx-target-ip-literal"]));
    assert_eq!(r.findings[0].severity, Severity::Critical);
}

#[tokio::test]
async fn mx_unresolvable() {
    let lab = lab(&format!(
        "u.lab MX 10 mx.u.lab\nu.lab MX 20 gone.u.lab\ndead.lab MX 10 gone.u.lab\n{}",
        host("mx.u.lab", "127.0.47.1", 64547)
    ))
    .await;
    let r = lab.check("u.lab").await;
    assert_eq!(ids(&r), set(&["mx-unresolvable"]));
    assert_eq!(r.findings[0].host.as_deref(), Some("gone.u.lab"));
    assert_eq!(r.findings[0].severity, Severity::Warning);
    assert_eq!(r.verdict.backup_mx, BackupVerdict::Redundant);
    let r = lab.check("dead.lab").await;
    assert_eq!(r.findings[0].severity, Severity::Critical);
}

#[tokio::test]
async fn mx_private_address_unless_allowed() {
    let lab = lab("p.lab MX 10 mx.p.lab\nmx.p.lab A 10.1.2.3\nmx.p.lab AAAA fd00::25\n").await;
    let r = lab.check_with("p.lab", false).await;
    assert_eq!(ids(&r), set(&["mx-private-address"]));
    assert_eq!(r.findings.len(), 2, "one per address");
    assert!(r.findings.iter().all(|f| f.severity == Severity::Critical));
    // A lab expects such addresses: then they are looked up, not reported.
    let r = lab.check_with("p.lab", true).await;
    assert!(!ids(&r).contains("mx-private-address"));
}

#[tokio::test]
async fn private_backup_makes_it_a_liability() {
    let lab = lab("pb.lab MX 10 mx.pb.lab\npb.lab MX 20 mx2.pb.lab\nmx.pb.lab A 198.51.100.25\nmx2.pb.lab A 127.0.0.1\n").await;
    let r = lab.check_with("pb.lab", false).await;
    assert!(ids(&r).contains("mx-private-address"));
    assert_eq!(r.verdict.backup_mx, BackupVerdict::Liability);
    assert!(
        r.verdict
            .advice
            .iter()
            .any(|a| a.contains("MX 10 mx.pb.lab")),
        "{:?}",
        r.verdict.advice
    );
}

#[tokio::test]
async fn mx_no_ptr_and_ptr_mismatch() {
    let lab = lab(
        "r.lab MX 10 mx.r.lab\nmx.r.lab A 127.0.48.1\n\
         s.lab MX 10 mx.s.lab\nmx.s.lab A 127.0.48.2\n127.0.48.2 PTR other.isp.lab\nother.isp.lab A 127.0.48.200\n",
    )
    .await;
    let r = lab.check("r.lab").await;
    assert_eq!(ids(&r), set(&["mx-no-ptr"]));
    assert_eq!(r.findings[0].ip, Some("127.0.48.1".parse().unwrap()));
    let r = lab.check("s.lab").await;
    assert_eq!(ids(&r), set(&["mx-ptr-mismatch"]));
    assert_eq!(r.mx[0].addresses[0].fcrdns, Some(false));
}

#[tokio::test]
async fn backup_shares_address() {
    let lab = lab(&format!(
        "sa.lab MX 10 mx.sa.lab\nsa.lab MX 20 mx2.sa.lab\nmx2.sa.lab A 127.0.49.1\n{}",
        host("mx.sa.lab", "127.0.49.1", 64549)
    ))
    .await;
    let r = lab.check("sa.lab").await;
    assert_eq!(ids(&r), set(&["backup-shares-address"]));
    assert_eq!(r.verdict.backup_mx, BackupVerdict::Redundant);
}

#[tokio::test]
async fn backup_shares_network_by_prefix_or_asn() {
    let zone = format!(
        "net.lab MX 10 mx.net.lab\nnet.lab MX 20 mx2.net.lab\n{}{}\
         asn.lab MX 10 mx.asn.lab\nasn.lab MX 20 mx2.asn.lab\n{}{}\
         v6.lab MX 10 mx.v6.lab\nv6.lab MX 20 mx2.v6.lab\nmx.v6.lab AAAA 2001:db8:1:1::25\nmx2.v6.lab AAAA 2001:db8:1:2::25\n",
        host("mx.net.lab", "127.0.50.1", 64550),
        host("mx2.net.lab", "127.0.50.2", 64551),
        host("mx.asn.lab", "127.0.51.1", 64552),
        host("mx2.asn.lab", "127.0.52.1", 64552),
    );
    let lab = lab(&zone).await;
    let r = lab.check("net.lab").await;
    assert_eq!(ids(&r), set(&["backup-shares-network"]));
    assert_eq!(r.findings[0].severity, Severity::Warning);
    assert!(r.findings[0].message.contains("/24"));
    assert_eq!(r.verdict.backup_mx, BackupVerdict::Redundant);

    let r = lab.check("asn.lab").await;
    assert_eq!(ids(&r), set(&["backup-shares-network"]));
    assert_eq!(r.findings[0].severity, Severity::Info);
    assert!(r.findings[0].evidence.contains("AS64552"));

    let r = lab.check("v6.lab").await;
    let f = r
        .findings
        .iter()
        .find(|f| f.id == FindingId::BackupSharesNetwork)
        .expect("same /48");
    assert!(f.message.contains("/48"));
}

#[tokio::test]
async fn peers_share_the_lowest_preference() {
    let zone = format!(
        "pe.lab MX 10 a.pe.lab\npe.lab MX 10 b.pe.lab\npe.lab MX 30 c.pe.lab\n{}{}{}",
        host("a.pe.lab", "127.0.53.1", 64553),
        host("b.pe.lab", "127.0.54.1", 64554),
        host("c.pe.lab", "127.0.53.2", 64555),
    );
    let lab = lab(&zone).await;
    let r = lab.check("pe.lab").await;
    let roles: Vec<(&str, &str)> =
        r.mx.iter()
            .map(|h| (h.exchange.as_str(), h.role.as_str()))
            .collect();
    assert_eq!(
        roles,
        [
            ("a.pe.lab", "peer"),
            ("b.pe.lab", "peer"),
            ("c.pe.lab", "backup")
        ]
    );
    // The backup shares a peer's /24.
    assert_eq!(ids(&r), set(&["backup-shares-network"]));
}

/// A lookup that times out or SERVFAILs is recorded as such on the item it
/// concerns, never as "no record", and the rest of the report survives.
#[tokio::test]
async fn lookup_failures_are_never_absence() {
    let zone = format!(
        "f.lab MX 10 mx.f.lab\nf.lab MX 20 slow.f.lab\nf.lab MX 30 broken.f.lab\n{}\
         slow.f.lab A !timeout\nslow.f.lab AAAA !timeout\n\
         broken.f.lab A 127.0.56.1\nbroken.f.lab AAAA !servfail\n127.0.56.1 PTR !timeout\n127.0.56.1 ASN 64556\n",
        host("mx.f.lab", "127.0.55.1", 64555),
    );
    let lab = lab(&zone).await;
    let r = lab.check("f.lab").await;
    let got = ids(&r);
    assert!(got.contains("dns-lookup-failed"), "{got:?}");
    assert!(
        !got.contains("mx-unresolvable"),
        "a timeout is not an absent address: {got:?}"
    );
    assert!(
        !got.contains("mx-no-ptr"),
        "a PTR timeout is not an absent PTR: {got:?}"
    );
    let slow = r.mx.iter().find(|h| h.exchange == "slow.f.lab").unwrap();
    assert!(
        slow.lookup_errors
            .iter()
            .any(|e| e.error == LookupError::Timeout && e.query == "A slow.f.lab")
    );
    let broken = r.mx.iter().find(|h| h.exchange == "broken.f.lab").unwrap();
    assert_eq!(
        broken.addresses.len(),
        1,
        "the A record survives the AAAA SERVFAIL"
    );
    assert!(
        broken
            .lookup_errors
            .iter()
            .any(|e| e.error == LookupError::ServFail)
    );
    assert!(
        broken.addresses[0]
            .lookup_errors
            .iter()
            .any(|e| e.query.starts_with("PTR "))
    );
    assert_eq!(broken.addresses[0].ptr, None);
    assert_eq!(broken.addresses[0].asn, Some(64556));
    // The healthy primary is fully reported.
    assert_eq!(r.mx[0].addresses[0].fcrdns, Some(true));
}

#[tokio::test]
async fn mx_lookup_failure_means_the_check_cannot_run() {
    let lab = lab("sf.lab MX !servfail\n").await;
    let err = check_domain(&lab.resolver, "sf.lab", CheckOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            GatherError::MxLookup {
                cause: LookupError::ServFail,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_resolver_unreachable());
    assert!(err.to_string().contains("resolver 127.0.0.1:"), "{err}");
}

#[tokio::test]
async fn silent_resolver_is_unreachable() {
    let resolver = HickoryResolver::new(
        &ResolverSpec::Server("127.0.0.1:1".parse().unwrap()),
        Duration::from_millis(200),
    )
    .unwrap();
    let err = check_domain(&resolver, "example.com", CheckOptions::default())
        .await
        .unwrap_err();
    assert!(err.is_resolver_unreachable(), "{err:?}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}
