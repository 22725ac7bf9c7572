//! A domain cannot make a check do unbounded work: at most 16 addresses of
//! a host are looked into, at most 32 addresses of a domain are probed,
//! and what is left out is said, not hidden.

use std::sync::Arc;
use std::time::Duration;

use mxguard_audit::{CheckOptions, SmtpOptions, check_domain};
use mxguard_dns::{HickoryResolver, ResolverSpec};
use mxguard_lab::{LabDns, ZoneSet};

#[tokio::test(flavor = "multi_thread")]
async fn addresses_looked_into_and_probed_are_capped() {
    // wide.lab: one MX with 20 addresses; many.lab: 3 MX with 15 each.
    let mut zone = String::from("wide.lab MX 10 mx.wide.lab\n");
    for i in 1..=20 {
        zone.push_str(&format!("mx.wide.lab A 127.0.90.{i}\n"));
    }
    for h in 1..=3 {
        zone.push_str(&format!("many.lab MX {} mx{h}.many.lab\n", h * 10));
        for i in 1..=15 {
            zone.push_str(&format!("mx{h}.many.lab A 127.0.9{h}.{i}\n"));
        }
    }
    let dns = LabDns::start(
        "127.0.0.1".parse().unwrap(),
        &ZoneSet::parse(&zone).unwrap(),
    )
    .await
    .unwrap();
    let resolver = HickoryResolver::new(
        &ResolverSpec::Server(dns.addr()),
        Duration::from_millis(500),
    )
    .unwrap();
    // Nothing listens on this port: every probe is refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let opts = || CheckOptions {
        allow_private: true,
        smtp: Some(SmtpOptions {
            port,
            helo: "limits.mxguard.lab".into(),
            mail_from: "probe@limits.mxguard.lab".into(),
            timeout: Duration::from_millis(500),
            deadline: Duration::from_secs(10),
            roots: Arc::new(rustls::RootCertStore::empty()),
        }),
    };

    let wide = check_domain(&resolver, "wide.lab", opts()).await.unwrap();
    assert_eq!(wide.mx[0].addresses.len(), 16);
    assert_eq!(wide.mx[0].addresses_omitted, 4);
    let json = serde_json::to_value(&wide).unwrap();
    assert_eq!(json["mx"][0]["addresses_omitted"], 4);

    let many = check_domain(&resolver, "many.lab", opts()).await.unwrap();
    let addrs: Vec<_> = many.mx.iter().flat_map(|h| &h.addresses).collect();
    assert_eq!(addrs.len(), 45);
    assert!(many.mx.iter().all(|h| h.addresses_omitted == 0));
    let probed = addrs.iter().filter(|a| a.smtp.is_some()).count();
    assert_eq!(probed, mxguard_audit::smtp::MAX_PROBED_ADDRESSES);
    // By preference: the first two hosts' 30 all probed, then the third
    // host's first two.
    assert!(
        many.mx[..2]
            .iter()
            .flat_map(|h| &h.addresses)
            .all(|a| a.smtp.is_some())
    );
    assert!(many.mx[2].addresses[..2].iter().all(|a| a.smtp.is_some()));
    for a in &many.mx[2].addresses[2..] {
        assert!(a.smtp.is_none());
        assert!(
            a.smtp_skipped
                .as_deref()
                .unwrap()
                .contains("at most 32 addresses"),
            "{:?}",
            a.smtp_skipped
        );
    }
}
