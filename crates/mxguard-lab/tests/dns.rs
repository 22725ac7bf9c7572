//! The lab name server answers real DNS packets the way an authoritative
//! server does, and mxguard's resolver reads them without losing the
//! difference between "no record" and "no answer".

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use mxguard_dns::{HickoryResolver, LookupError, MxRecord, Resolver, ResolverSpec};
use mxguard_lab::{LabDns, ZoneSet};

async fn lab(text: &str) -> (LabDns, HickoryResolver) {
    let zones = ZoneSet::parse(text).expect("zone text");
    let dns = LabDns::start("127.0.0.1".parse().unwrap(), &zones)
        .await
        .expect("start lab dns");
    let resolver = HickoryResolver::new(
        &ResolverSpec::Server(dns.addr()),
        Duration::from_millis(500),
    )
    .unwrap();
    (dns, resolver)
}

#[tokio::test]
async fn answers_mx_a_ptr_txt() {
    let (_dns, r) = lab("example.lab MX 20 b.example.lab\n\
         example.lab MX 10 a.example.lab\n\
         a.example.lab A 127.0.1.1\n\
         a.example.lab AAAA ::1\n\
         127.0.1.1 PTR a.example.lab\n\
         127.0.1.1 ASN 64500\n")
    .await;
    let mut mx = r.mx("example.lab").await.unwrap().records;
    mx.sort_by_key(|m| m.preference);
    assert_eq!(
        mx,
        vec![
            MxRecord::new(10, "a.example.lab"),
            MxRecord::new(20, "b.example.lab")
        ]
    );
    assert_eq!(
        r.a("A.Example.Lab").await.unwrap().records,
        vec!["127.0.1.1".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    assert_eq!(r.aaaa("a.example.lab").await.unwrap().records.len(), 1);
    assert_eq!(
        r.ptr("127.0.1.1".parse().unwrap()).await.unwrap().records,
        vec!["a.example.lab"]
    );
    let txt = r
        .txt("1.1.0.127.origin.asn.cymru.com")
        .await
        .unwrap()
        .records;
    assert_eq!(txt, vec!["64500 | 127.0.1.0/24 | ZZ | lab | 2026-01-01"]);
}

#[tokio::test]
async fn nxdomain_and_nodata_are_answers() {
    let (_dns, r) = lab("a.example.lab A 127.0.1.1\n").await;
    let nx = r.a("missing.example.lab").await.unwrap();
    assert!(nx.nxdomain && nx.is_empty());
    let nodata = r.mx("a.example.lab").await.unwrap();
    assert!(!nodata.nxdomain && nodata.is_empty());
    let noptr = r.ptr("127.9.9.9".parse().unwrap()).await.unwrap();
    assert!(noptr.nxdomain);
}

#[tokio::test]
async fn cname_chain_is_visible() {
    let (_dns, r) = lab("alias.example.lab CNAME real.example.lab\n\
         real.example.lab A 127.0.1.2\n\
         dangling.example.lab CNAME nowhere.example.lab\n")
    .await;
    let a = r.a("alias.example.lab").await.unwrap();
    assert_eq!(a.cname_chain, vec!["real.example.lab"]);
    assert_eq!(a.records.len(), 1);
    let dangling = r.a("dangling.example.lab").await;
    // An alias to nothing: the chain is seen, no address results.
    match dangling {
        Ok(ans) => assert!(ans.records.is_empty()),
        Err(e) => panic!("dangling alias should be an answer, got {e}"),
    }
}

#[tokio::test]
async fn faults_are_errors_never_empty_answers() {
    let (_dns, r) = lab("ok.example.lab A 127.0.1.1\n\
         broken.example.lab A !servfail\n\
         silent.example.lab * !timeout\n\
         nope.example.lab MX !refused\n")
    .await;
    assert_eq!(r.a("broken.example.lab").await, Err(LookupError::ServFail));
    assert_eq!(r.mx("nope.example.lab").await, Err(LookupError::Refused));
    let started = Instant::now();
    assert_eq!(r.a("silent.example.lab").await, Err(LookupError::Timeout));
    assert!(started.elapsed() < Duration::from_secs(5));
    // One broken name leaves the rest of the zone alone.
    assert_eq!(r.a("ok.example.lab").await.unwrap().records.len(), 1);
}

#[tokio::test]
async fn truncated_udp_answer_retried_over_tcp() {
    // Enough MX records that the answer exceeds any UDP payload size.
    let mut text = String::new();
    for i in 0..120 {
        writeln!(
            text,
            "big.example.lab MX {i} mail-host-number-{i:03}.some-long-provider-name.example.lab"
        )
        .unwrap();
    }
    let (_dns, r) = lab(&text).await;
    let mx = r.mx("big.example.lab").await.unwrap();
    assert_eq!(mx.records.len(), 120);
}

#[tokio::test]
async fn nothing_listening_is_a_resolver_failure() {
    let r = HickoryResolver::new(
        &ResolverSpec::Server("127.0.0.1:1".parse().unwrap()),
        Duration::from_millis(300),
    )
    .unwrap();
    let started = Instant::now();
    let err = r.mx("example.com").await.unwrap_err();
    assert!(err.is_resolver_failure(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}
