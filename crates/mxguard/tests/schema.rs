//! The JSON report is a published contract (DESIGN §3): `docs/report.md`
//! describes it, `docs/report.schema.json` pins it down, and
//! `docs/findings.md` documents every finding id. These tests run the real
//! binary and hold its output, the schema, the docs and the code to one
//! another, so none of them can drift alone.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use jsonschema::Validator;
use mxguard_lab::{LabDns, ZoneSet};
use serde_json::{Value, json};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read_doc(rel: &str) -> String {
    let path = repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        serde_json::from_str(&read_doc("docs/report.schema.json"))
            .expect("docs/report.schema.json is JSON")
    })
}

/// The schema as a draft 2020-12 validator, with `format` (ipv4, ipv6)
/// asserted rather than merely annotated. Building it also checks the schema
/// against the draft's meta-schema.
fn validator() -> &'static Validator {
    static VALIDATOR: OnceLock<Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(schema())
            .unwrap_or_else(|e| {
                panic!("docs/report.schema.json is not a valid draft 2020-12 schema: {e}")
            })
    })
}

/// Every schema violation of `value`, for an assertion message.
fn violations(value: &Value) -> String {
    let errors = validator().iter_errors(value).into_errors();
    if errors.is_empty() {
        String::new()
    } else {
        errors.to_string()
    }
}

fn assert_valid(value: &Value, what: &str) {
    let errors = violations(value);
    assert!(
        errors.is_empty(),
        "{what} does not match docs/report.schema.json:\n{errors}\n{}",
        serde_json::to_string_pretty(value).unwrap()
    );
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `mxguard demo --format json`, run once for all the tests here.
fn demo_reports() -> &'static [Value] {
    static DEMO: OnceLock<Vec<Value>> = OnceLock::new();
    DEMO.get_or_init(|| {
        let o = Command::new(env!("CARGO_BIN_EXE_mxguard"))
            .args(["demo", "--format", "json"])
            .output()
            .expect("run mxguard demo");
        assert_eq!(
            o.status.code(),
            Some(0),
            "mxguard demo failed: {}",
            stderr(&o)
        );
        let v: Value = serde_json::from_slice(&o.stdout).expect("demo prints JSON");
        let reports = v
            .as_array()
            .expect("the demo checks several domains: a JSON array")
            .clone();
        assert!(
            reports.len() >= 10,
            "the demo checked only {} domains",
            reports.len()
        );
        reports
    })
}

fn schema_finding_ids() -> BTreeSet<String> {
    schema()["$defs"]["findingId"]["enum"]
        .as_array()
        .expect("$defs.findingId.enum in the schema")
        .iter()
        .map(|v| v.as_str().expect("finding ids are strings").to_owned())
        .collect()
}

/// The ids of `## \`id\`` headings in docs/findings.md, each at most once.
fn doc_finding_ids() -> BTreeSet<String> {
    let text = read_doc("docs/findings.md");
    let mut ids = BTreeSet::new();
    for line in text.lines() {
        let Some(id) = line
            .strip_prefix("## `")
            .and_then(|rest| rest.strip_suffix('`'))
        else {
            continue;
        };
        assert!(
            ids.insert(id.to_owned()),
            "docs/findings.md documents `{id}` twice"
        );
    }
    ids
}

#[test]
fn demo_output_matches_the_schema() {
    for report in demo_reports() {
        let what = format!("the demo report for {}", report["domain"]);
        assert_valid(report, &what);
        assert!(
            report.get("error").is_none(),
            "{what} is an error object: the demo lab should check cleanly"
        );
    }
}

#[test]
fn schema_rejects_broken_reports() {
    let good = demo_reports()
        .iter()
        .find(|r| r["domain"] == "samenet.lab")
        .expect("samenet.lab in the demo")
        .clone();
    assert_valid(&good, "samenet.lab");

    type Breakage = fn(&mut Value);
    let broken: &[(&str, Breakage)] = &[
        ("an unknown verdict", |r| {
            r["verdict"]["backup_mx"] = json!("maybe")
        }),
        ("an unknown role", |r| {
            r["mx"][1]["role"] = json!("secondary")
        }),
        ("an unknown finding id", |r| {
            r["findings"][0]["id"] = json!("backup-is-fine")
        }),
        ("an unknown severity", |r| {
            r["findings"][0]["severity"] = json!("error")
        }),
        ("an unknown route", |r| r["route"] = json!("smtp")),
        ("an unknown scope", |r| {
            r["mx"][0]["addresses"][0]["scope"] = json!("global")
        }),
        ("another schema version", |r| r["schema_version"] = json!(2)),
        ("an undocumented field", |r| r["score"] = json!(42)),
        ("an undocumented address field", |r| {
            r["mx"][0]["addresses"][0]["city"] = json!("x")
        }),
        ("a missing verdict", |r| {
            r.as_object_mut().unwrap().remove("verdict");
        }),
        ("a missing role", |r| {
            r["mx"][0].as_object_mut().unwrap().remove("role");
        }),
        ("an address that is not an IP", |r| {
            r["mx"][0]["addresses"][0]["ip"] = json!("mx.samenet.lab")
        }),
        ("two primaries", |r| r["mx"][1]["role"] = json!("primary")),
        ("a primary beside a peer", |r| {
            r["mx"][1]["role"] = json!("peer")
        }),
        ("not-needed beside a backup", |r| {
            r["verdict"]["backup_mx"] = json!("not-needed")
        }),
        ("no-mail for a domain with MX hosts", |r| {
            r["verdict"]["backup_mx"] = json!("no-mail")
        }),
        ("a network finding without its address", |r| {
            r["findings"][0].as_object_mut().unwrap().remove("ip");
        }),
        ("a network finding at critical", |r| {
            r["findings"][0]["severity"] = json!("critical")
        }),
        ("a lookup failure without a kind", |r| {
            r["mx"][1]["lookup_errors"] =
                json!([{"query": "AAAA mx2.samenet.lab", "error": {"detail": "x"}}]);
        }),
        ("a lookup failure shown as an empty list", |r| {
            r["mx"][1]["lookup_errors"] = json!([])
        }),
    ];
    for (what, breakage) in broken {
        let mut report = good.clone();
        breakage(&mut report);
        assert!(
            !validator().is_valid(&report),
            "the schema accepts a report with {what}"
        );
    }

    let error = json!({"schema_version": 1, "domain": "broken.lab",
                       "error": {"kind": "mx-lookup-failed", "message": "could not look up MX broken.lab: SERVFAIL"}});
    assert_valid(&error, "a hand-written error object");
    for bad in [
        json!({"schema_version": 1, "domain": "broken.lab", "error": {"kind": "oops", "message": "x"}}),
        json!({"schema_version": 1, "domain": "broken.lab", "error": {"kind": "mx-lookup-failed"}}),
        json!({"schema_version": 1, "domain": "broken.lab", "error": "SERVFAIL"}),
        json!({"schema_version": 1, "domain": "broken.lab"}),
        json!([error]),
    ] {
        assert!(!validator().is_valid(&bad), "the schema accepts {bad}");
    }
}

#[test]
fn schema_lists_exactly_the_finding_ids_of_the_code() {
    let code: BTreeSet<String> = mxguard_audit::FindingId::ALL
        .iter()
        .map(|id| id.as_str().to_owned())
        .collect();
    assert_eq!(
        schema_finding_ids(),
        code,
        "the schema's finding-id enum and FindingId::ALL differ"
    );
}

#[test]
fn findings_doc_has_a_section_for_every_id_and_no_other() {
    let schema = schema_finding_ids();
    let docs = doc_finding_ids();
    let undocumented: Vec<_> = schema.difference(&docs).collect();
    let unknown: Vec<_> = docs.difference(&schema).collect();
    assert!(
        undocumented.is_empty(),
        "ids with no ## `id` section in docs/findings.md: {undocumented:?}"
    );
    assert!(
        unknown.is_empty(),
        "docs/findings.md documents ids the schema does not know: {unknown:?}"
    );
}

#[test]
fn demo_shows_every_finding_id() {
    let shown: BTreeSet<String> = demo_reports()
        .iter()
        .flat_map(|r| r["findings"].as_array().into_iter().flatten())
        .map(|f| f["id"].as_str().expect("finding id").to_owned())
        .collect();
    let missing: Vec<_> = schema_finding_ids()
        .into_iter()
        .filter(|id| !shown.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "no demo domain shows {missing:?}: add one to the lab so docs, schema and demo stay in step"
    );
}

/// Shapes the demo does not show: peers, IPv6, multi-origin ASNs, lookup
/// failures on addresses and on the domain itself, NXDOMAIN, a liable backup,
/// and a domain that cannot be checked — in `json` and in `jsonl`.
const SHAPES: &str = "\
peers.lab           MX    10 a.peers.lab
peers.lab           MX    10 b.peers.lab
peers.lab           MX    20 c.peers.lab
a.peers.lab         A     127.0.70.1
a.peers.lab         AAAA  ::1
127.0.70.1          PTR   a.peers.lab
127.0.70.1          ASN   64570 64571
b.peers.lab         A     127.0.71.1
127.0.71.1          PTR   !refused
c.peers.lab         A     127.0.72.1
127.0.72.1          PTR   c.peers.lab
127.0.72.1          ASN   !servfail
noaddr.lab          TXT   \"v=spf1 -all\"
noaddr.lab          A     !servfail
liable.lab          MX    10 mx.liable.lab
liable.lab          MX    20 backup.liable.lab
mx.liable.lab       A     1.2.3.4
1.2.3.4             PTR   mx.liable.lab
1.2.3.4             ASN   64580
backup.liable.lab   A     10.1.2.3
broken.lab          MX    !servfail
";

async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("run mxguard"))
        .await
        .unwrap()
}

fn check(dns: &LabDns, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mxguard"));
    cmd.args([
        "check",
        "--resolver",
        &dns.addr().to_string(),
        "--no-smtp",
        "--timeout",
        "4",
    ]);
    cmd.args(args);
    cmd
}

#[tokio::test(flavor = "multi_thread")]
async fn lab_shapes_match_the_schema_in_json_and_jsonl() {
    let zones = ZoneSet::parse(SHAPES).expect("zone");
    let dns = LabDns::start("127.0.0.1".parse().unwrap(), &zones)
        .await
        .expect("lab dns");

    let lab = [
        "--allow-private",
        "peers.lab",
        "noaddr.lab",
        "nothere.peers.lab",
        "broken.lab",
    ];
    let o = run(check(&dns, &[&["--format", "json"][..], &lab[..]].concat())).await;
    assert_eq!(
        o.status.code(),
        Some(2),
        "broken.lab cannot be checked: {}",
        stderr(&o)
    );
    let all: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let all = all.as_array().expect("several domains: an array");
    assert_eq!(all.len(), 4);
    for v in all {
        assert_valid(v, &format!("the json output for {}", v["domain"]));
    }
    assert_eq!(all[3]["error"]["kind"], "mx-lookup-failed");

    let o = run(check(
        &dns,
        &[&["--format", "jsonl"][..], &lab[..]].concat(),
    ))
    .await;
    let lines: Vec<Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each jsonl line is one JSON value"))
        .collect();
    assert_eq!(lines.len(), 4);
    for (line, object) in lines.iter().zip(all) {
        assert_valid(line, &format!("the jsonl line for {}", line["domain"]));
        assert_eq!(
            line["domain"], object["domain"],
            "json and jsonl give the domains in the same order"
        );
    }

    // Checked as the internet would see it: no --allow-private.
    let o = run(check(
        &dns,
        &["--format", "json", "liable.lab", "broken.lab"],
    ))
    .await;
    let both: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    for v in both.as_array().expect("an array") {
        assert_valid(v, &format!("the json output for {}", v["domain"]));
    }
    assert_eq!(both[0]["verdict"]["backup_mx"], "liability");

    // One domain: one object, not an array.
    let o = run(check(&dns, &["--format", "json", "broken.lab"])).await;
    let one: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert!(one.is_object(), "one domain prints one object: {one}");
    assert_valid(&one, "the error object for broken.lab");
}
