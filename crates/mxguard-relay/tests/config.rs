//! The relay configuration: the annotated example is valid, every contract
//! key parses, and every mistake is reported with its line.

use std::path::Path;

use mxguard_relay::{Config, RecipientMode};

const MINIMAL: &str = "hostname = \"backup.example.net\"\n[spool]\npath = \"/var/spool/mxguard\"\n";

#[test]
fn the_annotated_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../etc/relay.example.toml");
    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.hostname.get_ref(), "backup.example.net");
    assert_eq!(c.domains.len(), 1);
    assert_eq!(*c.domains[0].recipients.get_ref(), RecipientMode::Callout);
}

#[test]
fn secure_defaults() {
    let c = Config::parse(MINIMAL, None).unwrap();
    // No domain: no mail accepted.
    assert!(c.domains.is_empty());
    assert_eq!(c.admin.listen.get_ref(), "127.0.0.1:8025");
    assert_eq!(c.smtp.max_recipients, 100);
    assert_eq!(c.callout.positive_refresh.as_secs(), 7 * 86400);
    assert_eq!(c.callout.negative_refresh.as_secs(), 3 * 3600);
    assert!(c.smtp.tls_cert.is_none());
}

#[test]
fn every_contract_key_of_design_4() {
    let dir = std::env::temp_dir().join(format!("mxguard-relay-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("users"), "alice@example.org\n@example.org\n").unwrap();
    let text = r#"
hostname = "backup.example.net"
[smtp]
listen = ["0.0.0.0:25", "[::]:25"]
[spool]
path = "/var/spool/mxguard"
[admin]
listen = "127.0.0.1:8025"
[dns]
resolver = "127.0.0.53:53"
[[domains]]
name = "example.com"
primary = "mail.example.com:25"
recipients = "callout"
[[domains]]
name = "example.org"
recipients = "list"
recipient_list = "users"
"#;
    let c = Config::parse(text, Some(&dir)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.domains.len(), 2);
    assert_eq!(*c.domains[1].recipients.get_ref(), RecipientMode::List);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unknown_key_is_an_error_with_its_line() {
    let text = format!("{MINIMAL}[smtp]\nopen_relay = true\n");
    let e = Config::parse(&text, None).unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert_eq!(e.0[0].line, Some(5), "{e}");
    assert!(e.0[0].message.contains("open_relay"), "{e}");
}

#[test]
fn every_semantic_problem_is_reported_with_its_line() {
    let text = r#"hostname = "backup"
[smtp]
listen = ["0.0.0.0"]
[spool]
path = "/var/spool/mxguard"
[admin]
listen = "0.0.0.0:8025"
[[domains]]
name = "example.com"
recipients = "list"
[[domains]]
name = "example.com"
recipient_list = "/etc/passwd"
[[domains]]
name = "example.net"
primary = "mail.example.net:0"
"#;
    let e = Config::parse(text, None).unwrap_err();
    let got: Vec<(Option<usize>, &str)> = e.0.iter().map(|p| (p.line, p.key.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (Some(1), "hostname"),
            (Some(3), "smtp.listen[0]"),
            (Some(7), "admin.listen"),
            (Some(10), "domains[0].recipient_list"),
            (Some(12), "domains[1].name"),
            (Some(13), "domains[1].recipient_list"),
            (Some(16), "domains[2].primary"),
        ],
        "{e}"
    );
    assert!(e.to_string().contains("line 7: admin.listen"), "{e}");
}

#[test]
fn durations_are_written_for_people() {
    let text =
        format!("{MINIMAL}[callout]\npositive_refresh = \"2h\"\nnegative_expiry = \"soon\"\n");
    let e = Config::parse(&text, None).unwrap_err();
    assert!(e.to_string().contains("\"soon\" is not a duration"), "{e}");
    let ok = format!("{MINIMAL}[callout]\npositive_refresh = \"2h\"\n");
    assert_eq!(
        Config::parse(&ok, None)
            .unwrap()
            .callout
            .positive_refresh
            .as_secs(),
        7200
    );
}
