//! `mxguard simulate` as a user runs it: the outages the issue names, the
//! JSON contract (DESIGN §3), a backup in the route, user profiles, and a
//! clear error with exit 2 for every kind of bad input.

use std::process::{Command, Output};

use serde_json::Value;

const H: u64 = 3600;
const D: u64 = 86_400;

fn simulate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mxguard"))
        .arg("simulate")
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run mxguard")
}

fn json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--format", "json"]);
    let o = simulate(&all);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("JSON")
}

fn sender<'a>(v: &'a Value, id: &str) -> &'a Value {
    v["senders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["profile"] == id)
        .unwrap_or_else(|| panic!("no {id} in {v}"))
}

fn text(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn scratch(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mxguard-sim-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_six_hour_outage_bounces_nothing() {
    let v = json(&["--outage", "6h"]);
    assert_eq!(v["outage_s"], 6 * H);
    assert_eq!(v["recovery_at_s"], 6 * H);
    let senders = v["senders"].as_array().unwrap();
    assert!(senders.len() >= 14);
    for s in senders {
        // Every built-in profile keeps mail longer than 6 hours.
        assert_eq!(s["bounced_at_s"], Value::Null, "{}", s["profile"]);
        let d = s["delivered_at_s"].as_u64().unwrap();
        assert!(d >= 6 * H, "{s}");
        for a in s["attempts_s"].as_array().unwrap() {
            assert!(a.as_u64().unwrap() < 6 * H);
        }
        assert!(s.get("with_backup").is_none());
    }
    assert_eq!(
        sender(&v, "postfix")["attempts_s"].as_array().unwrap()[..6],
        [0, 300, 600, 1200, 2400, 4800]
    );

    let o = simulate(&["--outage", "6h"]);
    let out = text(&o);
    assert!(out.contains("No sender returns the message"), "{out}");
    assert!(out.contains("• attempt"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("Postfix") && l.ends_with('✓')),
        "{out}"
    );
}

#[test]
fn a_six_day_outage_bounces_postfix_and_exim_unless_a_backup_holds_the_mail() {
    let v = json(&["--outage", "6d"]);
    for id in ["postfix", "exim"] {
        let s = sender(&v, id);
        assert!(s["bounced_at_s"].as_u64().unwrap() < 6 * D, "{s}");
        assert_eq!(s["delivered_at_s"], Value::Null);
    }
    let v = json(&["--outage", "6d", "--backup", "--profile", "postfix,exim"]);
    assert_eq!(v["senders"].as_array().unwrap().len(), 2);
    for id in ["postfix", "exim"] {
        let s = sender(&v, id);
        assert!(
            s["bounced_at_s"].is_u64(),
            "still bounces without the backup"
        );
        let with = &s["with_backup"];
        assert_eq!(with["accepted_by_backup_at_s"], 0);
        assert_eq!(with["bounced_at_s"], Value::Null);
        let d = with["delivered_at_s"].as_u64().unwrap();
        assert!((6 * D..=6 * D + 5).contains(&d), "{with}");
    }
    assert_eq!(v["backup"]["lifetime_s"], 7 * D);
    assert_eq!(v["backup"]["probe_interval_s"], 5);

    let out = text(&simulate(&[
        "--outage",
        "6d",
        "--backup",
        "--profile",
        "postfix,exim",
    ]));
    assert!(out.contains("2 of 2 senders return the message"), "{out}");
    assert!(out.contains("With the backup MX none does"), "{out}");
    assert!(
        out.contains("saves the mail Postfix, Exim would return"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("backup MX") && l.ends_with('✓')),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("Exim") && l.ends_with('✗')),
        "{out}"
    );
}

#[test]
fn the_start_moves_the_message_into_the_outage() {
    // Sent 3 days into a 4-day outage: Exim's cut-off counts from the
    // destination's first failure, so it has only a day left.
    let v = json(&[
        "--outage",
        "5d",
        "--start",
        "3d",
        "--profile",
        "exim,postfix",
    ]);
    assert_eq!(v["start_s"], 3 * D);
    assert_eq!(v["recovery_at_s"], 2 * D);
    assert!(sender(&v, "exim")["bounced_at_s"].as_u64().unwrap() < 2 * D);
    assert_eq!(sender(&v, "postfix")["bounced_at_s"], Value::Null);
}

#[test]
fn user_profiles_are_added_or_replace_built_in_ones() {
    let dir = scratch("profiles");
    let file = dir.join("mine.toml");
    std::fs::write(
        &file,
        r#"
[[profile]]
id = "postfix"
name = "Our Postfix (maximal_queue_lifetime = 1d)"
lifetime = "1d"
[profile.retry]
kind = "backoff"
min = "300s"
max = "4000s"
queue_run = "300s"

[[profile]]
id = "in-house"
name = "In-house MTA"
lifetime = "12h"
bounce = "at-lifetime"
warn = ["1h"]
[profile.retry]
kind = "intervals"
intervals = ["20m"]
"#,
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let v = json(&[
        "--outage",
        "2d",
        "--profile-file",
        f,
        "--profile",
        "postfix,in-house",
    ]);
    assert_eq!(
        sender(&v, "postfix")["name"],
        "Our Postfix (maximal_queue_lifetime = 1d)"
    );
    assert!(sender(&v, "postfix")["bounced_at_s"].as_u64().unwrap() < 2 * D);
    let mine = sender(&v, "in-house");
    assert_eq!(mine["bounced_at_s"], 12 * H);
    assert_eq!(mine["warned_at_s"], H);
    assert_eq!(mine["attempts_s"].as_array().unwrap().len(), 36);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_backup_takes_its_settings_from_a_relay_configuration() {
    let dir = scratch("relay");
    let cfg = dir.join("relay.toml");
    std::fs::write(
        &cfg,
        "hostname = \"backup.example.net\"\n\
         [spool]\npath = \"spool\"\n\
         [delivery]\nlifetime = \"10d\"\nprobe_interval = \"30s\"\nretry = [\"10m\", \"1h\"]\n",
    )
    .unwrap();
    let v = json(&[
        "--outage",
        "8d",
        "--profile",
        "postfix",
        "--relay-config",
        cfg.to_str().unwrap(),
    ]);
    let b = &v["backup"];
    assert_eq!(b["lifetime_s"], 10 * D);
    assert_eq!(b["retry_s"], serde_json::json!([600, 3600]));
    assert_eq!(b["attempts_s"].as_array().unwrap()[..3], [0, 600, 4200]);
    let d = b["delivered_at_s"].as_u64().unwrap();
    assert!((8 * D..=8 * D + 30).contains(&d), "{b}");
    assert_eq!(b["dsn"], "authenticated");
    // A relay that sends no notices loses the mail silently when it gives up.
    std::fs::write(
        &cfg,
        "hostname = \"backup.example.net\"\n[spool]\npath = \"spool\"\n[delivery]\ndsn = \"never\"\n",
    )
    .unwrap();
    let o = simulate(&[
        "--outage",
        "9d",
        "--profile",
        "postfix",
        "--relay-config",
        cfg.to_str().unwrap(),
    ]);
    let out = text(&o);
    assert!(out.contains("drops it without telling anyone"), "{out}");
    assert!(
        out.contains("the senders alone would have returned it sooner (Postfix +5d20m)"),
        "{out}"
    );
    // Without the relay's own 10 days, the default 7 would not do.
    let v = json(&["--outage", "8d", "--profile", "postfix", "--backup"]);
    assert!(v["backup"]["bounced_at_s"].is_u64());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_input_is_refused_with_a_reason_and_exit_2() {
    let dir = scratch("bad");
    let bad_profile = dir.join("bad.toml");
    std::fs::write(&bad_profile, "[[profile]]\nid = \"x\"\nname = \"X\"\nlifetime = \"2d\"\n[profile.retry]\nkind = \"intervals\"\nintervals = []\n").unwrap();
    let bad_relay = dir.join("relay.toml");
    std::fs::write(&bad_relay, "[delivery]\nlifetime = \"forever\"\n").unwrap();
    for (args, says) in [
        (
            vec!["--outage", "soon"],
            "--outage: `soon` is not a duration",
        ),
        (vec!["--outage", "0s"], "more than 0 seconds"),
        (
            vec!["--outage", "6h", "--start", "7h"],
            "the start must be within the outage",
        ),
        (
            vec!["--outage", "6h", "--profile", "qmail"],
            "no sender `qmail`; known: postfix, exim",
        ),
        (
            vec![
                "--outage",
                "6h",
                "--profile-file",
                bad_profile.to_str().unwrap(),
            ],
            "intervals is empty",
        ),
        (
            vec!["--outage", "6h", "--profile-file", "/nonexistent/p.toml"],
            "/nonexistent/p.toml",
        ),
        (
            vec![
                "--outage",
                "6h",
                "--relay-config",
                bad_relay.to_str().unwrap(),
            ],
            "relay.toml: line 2: config: \"forever\" is not a duration",
        ),
    ] {
        let o = simulate(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: expected {says:?} in {err}");
        assert!(o.stdout.is_empty(), "{args:?}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
