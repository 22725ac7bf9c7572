//! Every built-in profile's attempt times against offsets worked out by
//! hand from the sender's documented rules (docs/senders.md), and the
//! outages the issue names: 6 hours (nobody bounces) and 6 days (Postfix
//! and Exim bounce; a backup prevents it).

use mxguard_sim::{
    Backup, Bounce, Profile, Scenario, builtin, builtin_profile, covered, parse_profiles, report,
    simulate,
};

const M: u64 = 60;
const H: u64 = 3600;
const D: u64 = 86_400;

fn profile(id: &str) -> Profile {
    builtin_profile(id).unwrap_or_else(|| panic!("no built-in profile {id}"))
}

/// The attempts in an outage that never ends.
fn endless(id: &str) -> Vec<u64> {
    simulate(&profile(id), 0, None).attempts
}

fn prefix(id: &str, n: usize) -> Vec<u64> {
    endless(id).into_iter().take(n).collect()
}

#[test]
fn postfix_doubles_the_age_between_300s_and_4000s_on_a_300s_scan() {
    // Due after clamp(age, 300, 4000): 300, 600, 1200, 2400, 4800; then
    // 4800+4000 = 8800, taken at the 9000 s scan, and every 4200 s after.
    assert_eq!(
        prefix("postfix", 11),
        [
            0,
            5 * M,
            10 * M,
            20 * M,
            40 * M,
            80 * M,
            9000,
            13_200,
            17_400,
            21_600,
            25_800
        ]
    );
    // 5 days: the first failed attempt at or after 432000 s bounces.
    let run = simulate(&profile("postfix"), 0, None);
    assert_eq!(run.bounced_at, Some(4800 + 4200 * 102));
    assert!(
        run.warnings.is_empty(),
        "delay_warning_time is 0 by default"
    );
}

#[test]
fn postfix_scaled_to_seconds_takes_a_file_a_second_early() {
    // minimal_backoff_time = 2s, maximal_backoff_time = 8s,
    // queue_run_delay = 1s: the sequence real Postfix 3.7 makes (the
    // fidelity test in tests/interop_sim.rs checks it against Postfix).
    let text = r#"
[[profile]]
id = "postfix-fast"
name = "Postfix, scaled down"
lifetime = "1h"
[profile.retry]
kind = "backoff"
min = "2s"
max = "8s"
queue_run = "1s"
"#;
    let p = &parse_profiles(text, "fast.toml").unwrap()[0];
    let run = simulate(p, 0, Some(40));
    assert_eq!(run.attempts, [0, 1, 2, 3, 5, 9, 16, 23, 30, 37]);
    assert_eq!(run.delivered_at, Some(44));
    assert_eq!(p.retry.next_after(9), Some(16));
    assert_eq!(p.retry.next_after(3), Some(5));
}

#[test]
fn exim_follows_its_default_retry_rule_on_half_hourly_queue_runs() {
    // A rule applies while the destination has failed for no longer than
    // its cut-off. F,2h,15m: due 15 min after each failure, tried at the
    // next 30-min queue run, up to and including the 2h run (→ 2h30m).
    // G,16h,1h,1.5: the last gap was 15m (planned), under 1h, so 1h
    // (→ 3h30m); then 1.5h (→ 5h), 2.25h (→ 7h15m, run at 7h30m), 3.375h
    // from the planned 2.25h (→ 10h52m30s, run at 11h), 5.0625h (→ 16h03m45s,
    // run at 16h30m). F,4d,6h: every 6 hours.
    assert_eq!(
        prefix("exim", 13),
        [
            0,
            30 * M,
            H,
            90 * M,
            2 * H,
            2 * H + 30 * M,
            3 * H + 30 * M,
            5 * H,
            7 * H + 30 * M,
            11 * H,
            16 * H + 30 * M,
            22 * H + 30 * M,
            28 * H + 30 * M
        ]
    );
    let p = profile("exim");
    let run = simulate(&p, 0, None);
    // The last 6-hourly attempt is at 16h30m + 13·6h = 94h30m; once the
    // message itself is older than 4 days it is tried at the next queue run,
    // 96h30m, and returned when that fails.
    assert_eq!(run.bounced_at, Some(96 * H + 30 * M));
    // delay_warning = 24h, repeating, written by the first failed attempt
    // after each multiple of 24h.
    assert_eq!(
        run.warnings,
        [28 * H + 30 * M, 52 * H + 30 * M, 76 * H + 30 * M]
    );
}

#[test]
fn exim_counts_the_cut_off_from_the_destinations_first_failure() {
    // The same message sent 3 days into the outage: the destination's retry
    // data already says 6-hourly, and only a day is left.
    let p = profile("exim");
    let late = simulate(&p, 3 * D, None);
    let early = simulate(&p, 0, None);
    // The destination's attempts: 16h30m + k·6h after the outage began;
    // 70h30m is the last before the message (72h), so it is first tried at
    // 76h30m, 4h30m after it was sent, then at 82h30m, 88h30m, 94h30m.
    assert_eq!(
        late.attempts,
        [
            4 * H + 30 * M,
            10 * H + 30 * M,
            16 * H + 30 * M,
            22 * H + 30 * M
        ]
    );
    // At 96h30m the oldest mail (sent as the outage began) is older than
    // the cut-off and tried; its failure expires the data, and ours,
    // waiting for 100h30m, is returned untried.
    assert_eq!(late.bounced_at, Some(96 * H + 30 * M - 3 * D));
    assert!(early.bounced_at.unwrap() > late.bounced_at.unwrap() + 2 * D);

    // Sent right at 4 days: returned at that queue run, 30 minutes later.
    let at_cutoff = simulate(&p, 4 * D, None);
    assert!(at_cutoff.attempts.is_empty());
    assert_eq!(at_cutoff.bounced_at, Some(30 * M));
    // Sent after the data expired, before the next retry time: returned at
    // once without an attempt (delay_after_cutoff).
    let gone = simulate(&p, 4 * D + H, None);
    assert_eq!(gone.bounced_at, Some(0));
    assert!(gone.attempts.is_empty());
    // ... unless the outage is over by then: other mail got through.
    let back = simulate(&p, 4 * D, Some(20 * M));
    assert_eq!(back.delivered_at, Some(30 * M));
}

#[test]
fn sendmail_tries_on_every_queue_run() {
    // Debian's QUEUE_INTERVAL of 10 minutes.
    assert_eq!(prefix("sendmail", 5), [0, 10 * M, 20 * M, 30 * M, 40 * M]);
    let run = simulate(&profile("sendmail"), 0, None);
    assert_eq!(run.bounced_at, Some(5 * D));
    assert_eq!(run.warnings, [4 * H]);
}

#[test]
fn opensmtpd_backs_off_quadratically() {
    // 400 s · n²
    assert_eq!(
        prefix("opensmtpd", 7),
        [0, 400, 1600, 3600, 6400, 10_000, 14_400]
    );
    let run = simulate(&profile("opensmtpd"), 0, None);
    assert_eq!(run.bounced_at, Some(4 * D));
    // The warning goes with the failure after which the next retry is past
    // 4h: the one at 10000 s (2h46m40s), as the next is at 14400 s.
    assert_eq!(run.warnings, [10_000]);
}

#[test]
fn exchange_server_glitch_then_transient_then_ten_minutes() {
    assert_eq!(
        prefix("exchange-server", 13),
        [
            0, 60, 120, 180, 240, 540, 840, 1140, 1440, 1740, 2040, 2640, 3240
        ]
    );
    let run = simulate(&profile("exchange-server"), 0, None);
    assert_eq!(run.warnings, [4 * H]);
    let b = run.bounced_at.unwrap();
    assert!((2 * D..2 * D + 10 * M).contains(&b), "{b}");
}

#[test]
fn mailgun_gives_up_after_eight_hours() {
    let run = simulate(&profile("mailgun"), 0, None);
    // 10m, 15m, 30m, 1h, 2h, 4h apart.
    assert_eq!(run.attempts, [0, 600, 1500, 3300, 6900, 14_100, 28_500]);
    assert_eq!(run.bounced_at, Some(8 * H));
}

#[test]
fn chasquid_returns_the_message_at_its_next_wake_up_after_20_hours() {
    let run = simulate(&profile("chasquid"), 0, None);
    assert_eq!(&run.attempts[..5], [0, M, 6 * M, 16 * M, 36 * M]);
    // Every 20 minutes from 16m: the wake-up at 20h16m finds it too old and
    // returns it without trying.
    assert_eq!(run.bounced_at, Some(20 * H + 16 * M));
    assert_eq!(*run.attempts.last().unwrap(), 19 * H + 56 * M);
    assert!(run.warnings.is_empty());
}

#[test]
fn maddy_gives_up_after_twenty_tries() {
    let run = simulate(&profile("maddy"), 0, None);
    assert_eq!(run.attempts.len(), 20);
    assert_eq!(&run.attempts[..6], [0, 15 * M, 30 * M, 45 * M, H, 90 * M]);
    assert_eq!(run.bounced_at, Some(2 * D + 18 * H));
}

#[test]
fn stalwart_warns_after_a_day_and_expires_at_three() {
    let run = simulate(&profile("stalwart"), 0, None);
    assert_eq!(
        &run.attempts[..8],
        [0, 2 * M, 7 * M, 17 * M, 32 * M, 62 * M, 122 * M, 242 * M]
    );
    // The second notice would be 3 days after the first: past expiry.
    assert_eq!(run.warnings, [D]);
    assert_eq!(run.bounced_at, Some(3 * D));
}

#[test]
fn hosted_providers_give_up_at_their_published_limits() {
    for (id, limit) in [
        ("exchange-online", 24 * H),
        ("gmail", 48 * H),
        ("amazon-ses", 14 * H),
        ("sendgrid", 72 * H),
    ] {
        let run = simulate(&profile(id), 0, None);
        let b = run.bounced_at.unwrap();
        assert!(
            (limit..limit + 2 * H).contains(&b),
            "{id} bounced at {b}, limit {limit}"
        );
        assert!(
            run.attempts.windows(2).all(|w| w[0] < w[1]),
            "{id}: {:?}",
            run.attempts
        );
    }
}

#[test]
fn rfc5321_guidance_two_in_the_first_hour_then_every_two_hours() {
    assert_eq!(
        prefix("rfc5321", 4),
        [0, 30 * M, 2 * H + 30 * M, 4 * H + 30 * M]
    );
    // 30m + 48·2h is the first attempt at or past 4 days.
    assert_eq!(
        simulate(&profile("rfc5321"), 0, None).bounced_at,
        Some(4 * D + 30 * M)
    );
}

#[test]
fn every_builtin_profile_is_well_formed() {
    let all = builtin();
    assert!(all.len() >= 14, "{}", all.len());
    for p in &all {
        let run = simulate(p, 0, None);
        assert_eq!(run.attempts[0], 0, "{}", p.id);
        assert!(
            run.attempts.windows(2).all(|w| w[0] < w[1]),
            "{}: attempts not increasing",
            p.id
        );
        let b = run.bounced_at.expect("an endless outage ends in a bounce");
        assert!(
            b >= p.lifetime.0,
            "{}: bounced at {b} before its lifetime",
            p.id
        );
        assert!(!p.source.is_empty(), "{} cites no source", p.id);
    }
}

#[test]
fn six_hour_outage_bounces_nothing_with_a_lifetime_over_six_hours() {
    let scenario = Scenario::new(6 * H, 0).unwrap();
    let r = report(scenario, &builtin(), None);
    for (s, p) in r.senders.iter().zip(builtin()) {
        if p.lifetime.0 > 6 * H {
            assert_eq!(s.bounced_at_s, None, "{}", s.profile);
            let d = s.delivered_at_s.unwrap();
            assert!(d >= 6 * H, "{}", s.profile);
            assert_eq!(s.delay_after_recovery_s, Some(d - 6 * H));
            assert!(s.attempts_s.iter().all(|&a| a < 6 * H));
        }
    }
    // Postfix: 4800 + 4·4200 s is 6h to the second, so the attempt that
    // finds the primary back is the tenth, right as it returns.
    let postfix = r.senders.iter().find(|s| s.profile == "postfix").unwrap();
    assert_eq!(postfix.delivered_at_s, Some(21_600));
    assert_eq!(postfix.attempts_s.len(), 9);
}

#[test]
fn six_day_outage_bounces_postfix_and_exim_and_a_backup_prevents_it() {
    let scenario = Scenario::new(6 * D, 0).unwrap();
    let backup = Backup::default();
    let r = report(scenario, &builtin(), Some(&backup));
    for id in ["postfix", "exim"] {
        let s = r.senders.iter().find(|s| s.profile == id).unwrap();
        assert!(s.bounced_at_s.is_some(), "{id}");
        assert_eq!(s.delivered_at_s, None, "{id}");
        let with = s.with_backup.as_ref().unwrap();
        assert_eq!(with.accepted_by_backup_at_s, 0);
        assert_eq!(with.bounced_at_s, None, "{id}");
        // Within one probe interval of recovery.
        let d = with.delivered_at_s.unwrap();
        assert!((6 * D..=6 * D + 5).contains(&d), "{d}");
    }
    let b = r.backup.unwrap();
    assert_eq!(b.delivered_at_s, Some(6 * D));
    // The relay's schedule: 1m, 5m, 15m, 30m, then hourly; a delay notice
    // at its first attempt past 4 hours.
    assert_eq!(&b.attempts_s[..6], [0, 60, 360, 1260, 3060, 6660]);
    assert_eq!(b.warned_at_s, Some(6660 + 3 * H));
}

#[test]
fn a_backup_cannot_hold_mail_past_its_own_lifetime() {
    let scenario = Scenario::new(8 * D, 0).unwrap();
    let r = report(scenario, &[profile("postfix")], Some(&Backup::default()));
    let with = r.senders[0].with_backup.as_ref().unwrap();
    assert_eq!(with.delivered_at_s, None);
    let b = with.bounced_at_s.unwrap();
    assert!((7 * D..7 * D + H).contains(&b), "{b}");
}

#[test]
fn delivery_after_recovery_is_the_next_attempt() {
    // Mailgun's 4th attempt is at 55m: an outage of 30m is over by then.
    let run = simulate(&profile("mailgun"), 0, Some(30 * M));
    assert_eq!(run.attempts, [0, 600, 1500]);
    assert_eq!(run.delivered_at, Some(3300));
    // Sent 20 minutes into a 30-minute outage: ten minutes left.
    let s = Scenario::new(30 * M, 20 * M).unwrap();
    assert_eq!(s.recovery(), 10 * M);
    let run = simulate(&profile("mailgun"), s.start, Some(s.recovery()));
    assert_eq!(run.delivered_at, Some(600));
    assert!(Scenario::new(30 * M, 30 * M).is_err());
}

#[test]
fn coverage_is_the_last_attempt_before_giving_up() {
    assert_eq!(covered(&profile("mailgun")), 28_500);
    assert_eq!(covered(&profile("postfix")), 4800 + 4200 * 102);
    let c = mxguard_sim::common_coverage();
    assert_eq!(c.first_to_give_up, "Exchange Online");
    assert!((24 * H - H..=24 * H).contains(&c.covered), "{}", c.covered);
}

#[test]
fn user_profiles_parse_and_bad_ones_are_explained() {
    let text = r#"
[[profile]]
id = "my-mta"
name = "My MTA"
lifetime = "3d"
warn = ["4h"]
warn_repeat = "1d"
[profile.retry]
kind = "intervals"
intervals = ["10m", "30m", "1h"]
"#;
    let p = &parse_profiles(text, "mine.toml").unwrap()[0];
    assert_eq!(p.bounce, Bounce::NextAttempt);
    let run = simulate(p, 0, None);
    assert_eq!(&run.attempts[..5], [0, 600, 2400, 6000, 9600]);
    assert_eq!(run.warnings, [4 * H, 28 * H, 52 * H]);

    for (bad, says) in [
        (text.replace("3d", "soon"), "not a duration"),
        (text.replace("intervals = [", "gaps = ["), "unknown field"),
        (
            text.replace("\"intervals\"", "\"sometimes\""),
            "unknown variant",
        ),
        (text.replace("my-mta", "My MTA!"), "lower-case"),
        (
            text.replace("[\"10m\", \"30m\", \"1h\"]", "[\"1s\"]")
                .replace("3d", "300d"),
            "more than 10000 times",
        ),
        (
            text.replace(
                "kind = \"intervals\"\nintervals = [\"10m\", \"30m\", \"1h\"]",
                "kind = \"rules\"\nrules = [\"H,1d,1h,2\"]\nqueue_run = \"0s\"",
            ),
            "randomised",
        ),
    ] {
        let err = parse_profiles(&bad, "mine.toml").unwrap_err().to_string();
        assert!(err.starts_with("mine.toml: "), "{err}");
        assert!(err.contains(says), "expected {says:?} in: {err}");
    }
}
