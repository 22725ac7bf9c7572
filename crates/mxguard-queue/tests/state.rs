//! Delivery states on real files: round trips, replacement, removal with
//! the entry, recovery at open (orphans, corrupt states, unfinished saves),
//! simulated faults during a save, and the envelope's `spf` field across
//! format versions.
//!
//! Each test works in its own directory under `std::env::temp_dir()`,
//! removed when the test passes and kept (with its path printed) when it
//! fails.

mod common;

use std::fs;
use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{TestDir, envelope, open, recovery, store};
use mxguard_queue::{
    CrashSpool, DeliveryState, Envelope, Fault, FsSpool, QueueId, RecipientStatus, Recovery,
    SpfResult, Spool, SpoolError, StateRecovery,
};

/// A state with every field away from its default, the first recipient
/// delivered and the second still pending.
fn attempted(env: &Envelope) -> DeliveryState {
    let mut state = DeliveryState::new(env);
    state.attempts = 3;
    state.first_attempt = Some(UNIX_EPOCH + Duration::new(1_777_636_800, 250_000_000));
    state.last_attempt = Some(UNIX_EPOCH + Duration::new(1_777_640_400, 1));
    state.next_attempt = Some(UNIX_EPOCH + Duration::new(1_777_644_000, 0));
    state.delay_notified = true;
    state.recipients[0].status = RecipientStatus::Delivered;
    state.recipients[0].last_reply = Some("250 2.0.0 Ok: queued as 4Xyz".to_owned());
    state.recipients[0].last_host = Some("mx1.example.net".to_owned());
    state.recipients[1].last_reply = Some("451 4.3.0 try again — später".to_owned());
    state.recipients[1].last_host = Some("mx1.example.net".to_owned());
    state
}

fn state_recovery(orphan_states: usize, corrupt_states: usize, temps: usize) -> StateRecovery {
    StateRecovery {
        orphan_states,
        corrupt_states,
        discarded_temps: temps,
    }
}

fn is_invalid_input(err: &SpoolError) -> bool {
    matches!(err, SpoolError::Io { source, .. } if source.kind() == io::ErrorKind::InvalidInput)
}

#[test]
fn state_round_trip_and_reopen_keeps_it() {
    let dir = TestDir::new("state-round-trip");
    let (spool, _) = open(&dir);
    let env = envelope();
    let id = store(&spool, &env, b"hello\r\n");

    let mut state = attempted(&env);
    state.held = true;
    state.recipients[1].failure_notified = true;
    spool.save_state(&id, &state).unwrap();
    assert_eq!(spool.state(&id).unwrap(), state);
    assert_eq!(dir.files("state"), [id.to_string()]);
    assert_eq!(dir.files("tmp"), Vec::<String>::new(), "no temp left");
    // The message itself is untouched.
    assert_eq!(
        spool.read(&id).unwrap(),
        (env.clone(), b"hello\r\n".to_vec())
    );

    drop(spool);
    let (spool, found) = open(&dir);
    assert_eq!(found, recovery(1, 0, 0));
    assert_eq!(spool.state_recovery(), StateRecovery::default());
    assert_eq!(spool.state(&id).unwrap(), state);
    assert_eq!(spool.list().unwrap()[0].state, state);
}

#[test]
fn an_unsaved_state_is_new_with_every_recipient_pending() {
    let dir = TestDir::new("state-unsaved");
    let (spool, _) = open(&dir);
    let env = envelope();
    let id = store(&spool, &env, b"");

    let state = spool.state(&id).unwrap();
    assert_eq!(state, DeliveryState::new(&env));
    assert_eq!(state.attempts, 0);
    assert_eq!(
        (state.first_attempt, state.last_attempt, state.next_attempt),
        (None, None, None)
    );
    assert!(!state.held && !state.delay_notified);
    let pending: Vec<&str> = state.pending().map(|r| r.address.as_str()).collect();
    assert_eq!(pending, env.recipients);
    assert!(!state.is_done());
    assert!(
        state
            .recipients
            .iter()
            .all(|r| r.last_reply.is_none() && r.last_host.is_none() && !r.failure_notified)
    );
    // Reading creates nothing.
    assert_eq!(dir.files("state"), Vec::<String>::new());

    let never = QueueId::new();
    assert!(matches!(spool.state(&never), Err(SpoolError::NotFound(id)) if id == never));
}

#[test]
fn saving_twice_keeps_the_latest() {
    let dir = TestDir::new("state-twice");
    let (spool, _) = open(&dir);
    let env = envelope();
    let id = store(&spool, &env, b"x\r\n");

    let first = attempted(&env);
    spool.save_state(&id, &first).unwrap();
    let mut second = first.clone();
    second.attempts += 1;
    second.recipients[1].status = RecipientStatus::Failed;
    second.recipients[1].last_reply = Some("550 5.1.1 no such user".to_owned());
    assert!(second.is_done());
    spool.save_state(&id, &second).unwrap();

    assert_eq!(spool.state(&id).unwrap(), second);
    assert_eq!(dir.files("state"), [id.to_string()]);
    assert_eq!(dir.files("tmp"), Vec::<String>::new());
    drop(spool);
    assert_eq!(open(&dir).0.state(&id).unwrap(), second);
}

#[test]
fn remove_deletes_the_entry_and_its_state() {
    let dir = TestDir::new("state-remove");
    let (spool, _) = open(&dir);
    let env = envelope();
    let id = store(&spool, &env, b"x\r\n");
    let kept_env = envelope();
    let kept = store(&spool, &kept_env, b"y\r\n");
    spool.save_state(&id, &attempted(&env)).unwrap();
    spool.save_state(&kept, &attempted(&kept_env)).unwrap();

    spool.remove(&id).unwrap();
    assert_eq!(dir.files("queue"), [kept.to_string()]);
    assert_eq!(dir.files("state"), [kept.to_string()]);
    assert!(matches!(spool.state(&id), Err(SpoolError::NotFound(_))));
    // No state can be saved for an entry that is gone, and trying leaves
    // nothing behind.
    let err = spool.save_state(&id, &attempted(&env)).unwrap_err();
    assert!(
        matches!(err, SpoolError::NotFound(ref gone) if *gone == id),
        "{err:?}"
    );
    assert_eq!(dir.files("state"), [kept.to_string()]);
    assert_eq!(dir.files("tmp"), Vec::<String>::new());

    // An entry without a saved state is removed just the same.
    let plain = store(&spool, &envelope(), b"z\r\n");
    spool.remove(&plain).unwrap();
    assert!(matches!(spool.remove(&plain), Err(SpoolError::NotFound(_))));

    drop(spool);
    let (spool, found) = open(&dir);
    assert_eq!(found, recovery(1, 0, 0));
    assert_eq!(spool.state_recovery(), StateRecovery::default());
    assert_eq!(spool.state(&kept).unwrap(), attempted(&kept_env));
}

#[test]
fn list_returns_the_states() {
    let dir = TestDir::new("state-list");
    let (spool, _) = open(&dir);
    let envs: Vec<Envelope> = (0..3).map(|_| envelope()).collect();
    for env in &envs {
        store(&spool, env, b"m\r\n");
    }
    let saved = attempted(&envs[1]);
    spool.save_state(&envs[1].id, &saved).unwrap();

    let listed = spool.list().unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0].state, DeliveryState::new(&envs[0]));
    assert_eq!(listed[1].envelope, envs[1]);
    assert_eq!(listed[1].state, saved);
    assert_eq!(listed[2].state, DeliveryState::new(&envs[2]));
}

#[test]
fn a_state_that_does_not_fit_the_envelope_is_refused() {
    let dir = TestDir::new("state-mismatch");
    let (spool, _) = open(&dir);
    let env = envelope();
    let id = store(&spool, &env, b"m\r\n");
    let good = attempted(&env);
    spool.save_state(&id, &good).unwrap();

    let mut fewer = good.clone();
    fewer.recipients.pop();
    let mut renamed = good.clone();
    renamed.recipients[1].address = "c@example.net".to_owned();
    let mut swapped = good.clone();
    swapped.recipients.swap(0, 1);
    let mut ancient = good.clone();
    ancient.last_attempt = Some(UNIX_EPOCH - Duration::from_secs(1));
    for bad in [fewer, renamed, swapped, ancient] {
        let err = spool.save_state(&id, &bad).unwrap_err();
        assert!(is_invalid_input(&err), "{err:?}");
    }
    assert_eq!(spool.state(&id).unwrap(), good, "the saved state stays");
    assert_eq!(dir.files("tmp"), Vec::<String>::new());
}

#[test]
fn state_file_format_is_as_documented() {
    let dir = TestDir::new("state-format");
    let (spool, _) = open(&dir);
    let env = envelope();
    let id = store(&spool, &env, b"m\r\n");
    spool.save_state(&id, &attempted(&env)).unwrap();

    let raw = fs::read(dir.path().join("state").join(id.as_str())).unwrap();
    let json = raw.strip_prefix(b"mxguard-state 1\n").expect("magic line");
    let json = json.strip_suffix(b"\n").expect("one line");
    assert!(!json.contains(&b'\n'));
    let json: serde_json::Value = serde_json::from_slice(json).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "attempts": 3,
            "first_attempt": "2026-05-01T12:00:00.250000000Z",
            "last_attempt": "2026-05-01T13:00:00.000000001Z",
            "next_attempt": "2026-05-01T14:00:00.000000000Z",
            "held": false,
            "delay_notified": true,
            "recipients": [
                {
                    "address": "a@example.net",
                    "status": "delivered",
                    "last_reply": "250 2.0.0 Ok: queued as 4Xyz",
                    "last_host": "mx1.example.net",
                    "failure_notified": false,
                },
                {
                    "address": "b@example.net",
                    "status": "pending",
                    "last_reply": "451 4.3.0 try again — später",
                    "last_host": "mx1.example.net",
                    "failure_notified": false,
                },
            ],
        })
    );
    let failed = serde_json::to_value(RecipientStatus::Failed).unwrap();
    assert_eq!(failed, "failed");
    let new = serde_json::to_value(DeliveryState::new(&env)).unwrap();
    assert_eq!(new["next_attempt"], serde_json::Value::Null);
}

#[test]
fn orphan_corrupt_and_unfinished_states_are_handled_at_open() {
    let dir = TestDir::new("state-recovery");
    let (spool, _) = open(&dir);
    let good_env = envelope();
    let good = store(&spool, &good_env, b"good\r\n");
    spool.save_state(&good, &attempted(&good_env)).unwrap();
    let garbled_env = envelope();
    let garbled = store(&spool, &garbled_env, b"garbled\r\n");
    let misfit_env = envelope();
    let misfit = store(&spool, &misfit_env, b"misfit\r\n");
    let newer_env = envelope();
    let newer = store(&spool, &newer_env, b"newer\r\n");
    // Removed while its state stays: as after a crash inside remove().
    let removed_env = envelope();
    let removed = store(&spool, &removed_env, b"removed\r\n");
    spool
        .save_state(&removed, &attempted(&removed_env))
        .unwrap();
    // An entry that is itself corrupt, with a state: it goes to corrupt/,
    // which leaves its state an orphan.
    let broken_env = envelope();
    let broken = store(&spool, &broken_env, b"broken\r\n");
    spool.save_state(&broken, &attempted(&broken_env)).unwrap();
    drop(spool);

    let queue = dir.path().join("queue");
    let state = dir.path().join("state");
    fs::remove_file(queue.join(removed.as_str())).unwrap();
    fs::write(queue.join(broken.as_str()), b"not an entry").unwrap();
    fs::write(
        state.join(garbled.as_str()),
        b"mxguard-state 1\n{\"attempts\":\n",
    )
    .unwrap();
    // Valid JSON, but for another message's recipients.
    let mut other = attempted(&good_env);
    other.recipients.pop();
    fs::write(
        state.join(misfit.as_str()),
        [
            b"mxguard-state 1\n".as_slice(),
            &serde_json::to_vec(&other).unwrap(),
            b"\n",
        ]
        .concat(),
    )
    .unwrap();
    fs::write(state.join(newer.as_str()), b"mxguard-state 2\n{}\n").unwrap();
    // An orphan that is also unreadable: removed all the same.
    fs::write(state.join(QueueId::new().as_str()), b"junk").unwrap();
    fs::write(state.join("notes.txt"), b"an operator's notes").unwrap();
    // An unfinished save: a temp file in tmp/.
    fs::write(
        dir.path().join("tmp").join(format!("{good}.state.7")),
        b"mxguard-state 1\n{\"att",
    )
    .unwrap();

    let (spool, found) = open(&dir);
    // Entries: good, garbled, misfit, newer; broken moved aside. States:
    // removed's, broken's and the junk orphan removed; garbled, misfit,
    // newer and notes.txt moved aside.
    assert_eq!(found, recovery(4, 0, 5));
    assert_eq!(spool.state_recovery(), state_recovery(3, 4, 1));
    assert_eq!(dir.files("tmp"), Vec::<String>::new());
    assert_eq!(dir.files("state"), [good.to_string()]);
    let mut expected_corrupt = vec![
        broken.to_string(),
        format!("{garbled}.state"),
        format!("{misfit}.state"),
        format!("{newer}.state"),
        "notes.txt.state".to_owned(),
    ];
    expected_corrupt.sort();
    assert_eq!(dir.files("corrupt"), expected_corrupt);

    // Delivery of the messages with a corrupt state starts again.
    assert_eq!(spool.state(&good).unwrap(), attempted(&good_env));
    assert_eq!(
        spool.state(&garbled).unwrap(),
        DeliveryState::new(&garbled_env)
    );
    assert_eq!(
        spool.state(&misfit).unwrap(),
        DeliveryState::new(&misfit_env)
    );
    assert_eq!(spool.state(&newer).unwrap(), DeliveryState::new(&newer_env));

    // A third start finds nothing more to do.
    drop(spool);
    let (spool, found) = open(&dir);
    assert_eq!(found, recovery(4, 0, 0));
    assert_eq!(spool.state_recovery(), StateRecovery::default());
}

#[test]
fn a_state_turning_corrupt_while_running_is_skipped_not_moved() {
    let dir = TestDir::new("state-runtime-corrupt");
    let (spool, _) = open(&dir);
    let good = store(&spool, &envelope(), b"fine\r\n");
    let env = envelope();
    let bad = store(&spool, &env, b"fine too\r\n");
    let bad_state = dir.path().join("state").join(bad.as_str());
    fs::write(&bad_state, b"garbage").unwrap();

    let listed = spool.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].envelope.id, good);
    match spool.state(&bad) {
        Err(SpoolError::Corrupt { path, .. }) => assert_eq!(path, bad_state),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // The message itself is still readable, and a save repairs the state.
    assert!(spool.read(&bad).is_ok());
    spool.save_state(&bad, &attempted(&env)).unwrap();
    assert_eq!(spool.state(&bad).unwrap(), attempted(&env));
    assert_eq!(spool.list().unwrap().len(), 2);

    fs::write(&bad_state, b"garbage").unwrap();
    drop(spool);
    let (spool, found) = open(&dir);
    assert_eq!(found, recovery(2, 0, 1));
    assert_eq!(spool.state_recovery(), state_recovery(0, 1, 0));
    assert_eq!(spool.state(&bad).unwrap(), DeliveryState::new(&env));
}

#[test]
fn an_old_format_envelope_without_spf_still_loads() {
    let dir = TestDir::new("state-old-envelope");
    let queue = dir.path().join("queue");
    fs::create_dir_all(&queue).unwrap();
    let id = QueueId::new();
    // Exactly what a version 1 build wrote.
    let entry = format!(
        "mxguard-spool 1\n{{\"id\":\"{id}\",\"received_at\":\"2026-05-01T12:00:00.250000000Z\",\
         \"mail_from\":\"alice@example.org\",\"recipients\":[\"bob@example.net\"],\
         \"client_addr\":\"192.0.2.7\",\"client_helo\":\"mail.example.org\",\
         \"body\":\"eight-bit-mime\",\"smtputf8\":false,\"tls\":true}}\nSubject: old\r\n\r\nhi\r\n"
    );
    fs::write(queue.join(id.as_str()), entry).unwrap();

    let (spool, found) = open(&dir);
    assert_eq!(found, recovery(1, 0, 0));
    let (env, message) = spool.read(&id).unwrap();
    assert_eq!(env.spf, None);
    assert_eq!(env.recipients, ["bob@example.net"]);
    assert_eq!(
        env.received_at,
        UNIX_EPOCH + Duration::new(1_777_636_800, 250_000_000)
    );
    assert_eq!(message, b"Subject: old\r\n\r\nhi\r\n");
    // Old entries get delivery states like new ones.
    let mut state = DeliveryState::new(&env);
    state.attempts = 1;
    spool.save_state(&id, &state).unwrap();
    assert_eq!(spool.list().unwrap()[0].state, state);
}

#[test]
fn spf_is_stored_in_kebab_case() {
    let dir = TestDir::new("state-spf");
    let (spool, _) = open(&dir);
    let all = [
        (SpfResult::Pass, "pass"),
        (SpfResult::Fail, "fail"),
        (SpfResult::SoftFail, "soft-fail"),
        (SpfResult::Neutral, "neutral"),
        (SpfResult::None, "none"),
        (SpfResult::TempError, "temp-error"),
        (SpfResult::PermError, "perm-error"),
    ];
    for (result, text) in all {
        let env = Envelope {
            spf: Some(result),
            ..envelope()
        };
        let id = store(&spool, &env, b"m\r\n");
        assert_eq!(spool.read(&id).unwrap().0, env);
        let raw = fs::read(dir.path().join("queue").join(id.as_str())).unwrap();
        let line = raw.split(|&b| b == b'\n').nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_slice(line).unwrap();
        assert_eq!(json["spf"], text);
    }
    drop(spool);
    assert_eq!(open(&dir).1, recovery(all.len(), 0, 0));
}

// Simulated faults during save_state.

/// What [`save_under_fault`] saw.
struct Outcome {
    /// What the faulted save returned.
    err: SpoolError,
    /// The state saved before the fault was set.
    before: DeliveryState,
    /// The state the faulted save tried to save.
    after: DeliveryState,
    /// The state a restarted relay finds.
    now: DeliveryState,
    /// What the restart recovered.
    found: Recovery,
    states: StateRecovery,
    dir: TestDir,
}

/// Save a state, then try to save another under `fault`; then restart.
fn save_under_fault(name: &str, fault: Fault) -> Outcome {
    let dir = TestDir::new(name);
    let (spool, _) = CrashSpool::open(dir.path()).unwrap();
    let env = envelope();
    let id = store(&spool, &env, b"m\r\n");
    let before = attempted(&env);
    spool.save_state(&id, &before).unwrap();
    let mut after = before.clone();
    after.attempts += 1;
    after.recipients[1].status = RecipientStatus::Delivered;

    spool.set_fault(fault);
    let err = spool.save_state(&id, &after).unwrap_err();
    drop(spool);
    let (spool, found) = FsSpool::open(dir.path()).unwrap();
    let now = spool.state(&id).unwrap();
    let states = spool.state_recovery();
    Outcome {
        err,
        before,
        after,
        now,
        found,
        states,
        dir,
    }
}

#[test]
fn a_crash_during_save_state_keeps_the_previous_state() {
    for fault in [
        Fault::CrashAfter(0),
        Fault::CrashAfter(20),
        Fault::CrashBeforeFsync,
        Fault::CrashBeforeRename,
    ] {
        let out = save_under_fault("state-crash-save", fault);
        assert!(
            matches!(out.err, SpoolError::Crashed),
            "{fault:?}: {:?}",
            out.err
        );
        assert_eq!(
            out.now, out.before,
            "{fault:?}: the previous state is in force"
        );
        assert_ne!(out.now, out.after);
        assert_eq!(
            out.found,
            recovery(1, 0, 0),
            "{fault:?}: no message discarded"
        );
        assert_eq!(
            out.states,
            state_recovery(0, 0, 1),
            "{fault:?}: the unfinished save is discarded"
        );
        assert_eq!(out.dir.files("tmp"), Vec::<String>::new());
    }
}

#[test]
fn a_crash_after_the_rename_of_save_state_keeps_the_new_state() {
    let out = save_under_fault("state-crash-dirsync", Fault::CrashBeforeDirSync);
    assert!(matches!(out.err, SpoolError::Crashed), "{:?}", out.err);
    assert_eq!(out.now, out.after);
    assert_eq!(out.found, recovery(1, 0, 0));
    assert_eq!(out.states, StateRecovery::default());
    assert_eq!(out.dir.files("tmp"), Vec::<String>::new());
}

#[test]
fn a_full_disk_during_save_state_keeps_the_previous_state() {
    let dir = TestDir::new("state-full");
    let (spool, _) = CrashSpool::open(dir.path()).unwrap();
    let env = envelope();
    let id = store(&spool, &env, b"m\r\n");
    let before = attempted(&env);
    spool.save_state(&id, &before).unwrap();

    spool.set_fault(Fault::FullAfter(30));
    let mut after = before.clone();
    after.attempts += 1;
    let err = spool.save_state(&id, &after).unwrap_err();
    assert!(err.is_full(), "{err:?}");
    assert!(!spool.has_crashed());
    assert_eq!(
        dir.files("tmp"),
        Vec::<String>::new(),
        "the temp is removed"
    );
    assert_eq!(spool.state(&id).unwrap(), before);

    spool.set_fault(Fault::None);
    spool.save_state(&id, &after).unwrap();
    assert_eq!(spool.state(&id).unwrap(), after);
    drop(spool);
    let (spool, _) = FsSpool::open(dir.path()).unwrap();
    assert_eq!(spool.state(&id).unwrap(), after);
}

#[test]
fn a_crashed_spool_refuses_state_operations() {
    let dir = TestDir::new("state-crashed");
    let (spool, _) = CrashSpool::open(dir.path()).unwrap();
    let env = envelope();
    let id = store(&spool, &env, b"m\r\n");
    spool.set_fault(Fault::CrashBeforeRename);
    assert!(matches!(
        spool.save_state(&id, &attempted(&env)),
        Err(SpoolError::Crashed)
    ));
    assert!(spool.has_crashed());
    assert!(matches!(spool.state(&id), Err(SpoolError::Crashed)));
    spool.set_fault(Fault::None);
    assert!(matches!(
        spool.save_state(&id, &attempted(&env)),
        Err(SpoolError::Crashed)
    ));
    assert!(matches!(spool.list(), Err(SpoolError::Crashed)));
    drop(spool);
    let (spool, found) = FsSpool::open(dir.path()).unwrap();
    assert_eq!(found, recovery(1, 0, 0));
    assert_eq!(spool.state(&id).unwrap(), DeliveryState::new(&env));
    assert_eq!(spool.state_recovery(), state_recovery(0, 0, 1));
}

#[test]
fn concurrent_saves_of_different_messages_all_land() {
    let dir = TestDir::new("state-concurrent");
    let (spool, _) = open(&dir);
    let envs: Vec<Envelope> = (0..16).map(|_| envelope()).collect();
    for env in &envs {
        store(&spool, env, b"m\r\n");
    }
    std::thread::scope(|scope| {
        for env in &envs {
            let spool = &spool;
            scope.spawn(move || {
                for attempts in 1..=10 {
                    let mut state = DeliveryState::new(env);
                    state.attempts = attempts;
                    state.last_attempt = Some(SystemTime::now());
                    spool.save_state(&env.id, &state).unwrap();
                }
            });
        }
    });
    let listed = spool.list().unwrap();
    assert_eq!(listed.len(), envs.len());
    assert!(listed.iter().all(|e| e.state.attempts == 10));
    assert_eq!(dir.files("tmp"), Vec::<String>::new());
}
