//! The spool on real files: round trips, recovery at open, every simulated
//! fault, queue IDs, and concurrent commits.
//!
//! Each test works in its own directory under `std::env::temp_dir()`,
//! removed when the test passes and kept (with its path printed) when it
//! fails.

mod common;

use std::collections::HashSet;
use std::fs;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{TestDir, envelope, noise, open, recovery, store, write_in_chunks};
use mxguard_queue::{
    Body, CrashSpool, DeliveryState, Envelope, Fault, QueueId, Recovery, Spool, SpoolError,
};

const SMALL: &[u8] = b"Received: from mail.example.org\r\n\tby backup.example.net; Fri, 1 May 2026 12:00:00 +0000\r\nSubject: caf\xc3\xa9 \xe9\xff\x80\r\n\r\nbare\nLF, bare\rCR, NUL \0, 8-bit \xfe\xfd\r\n.\r\n";

#[test]
fn round_trip_keeps_bytes_exactly() {
    let dir = TestDir::new("round-trip");
    let (spool, found) = open(&dir);
    assert_eq!(found, Recovery::default());

    let small_env = Envelope {
        mail_from: String::new(),
        client_addr: "2001:db8::25".parse().unwrap(),
        body: Body::SevenBit,
        smtputf8: true,
        tls: false,
        recipients: vec![
            "pöstmaster@exämple.net".to_owned(),
            "x\ny@example.net".to_owned(),
        ],
        ..envelope()
    };
    let small_id = store(&spool, &small_env, SMALL);
    assert_eq!(small_id, small_env.id);

    // Over 1 MiB, in uneven chunks, including some smaller than a byte
    // buffer and some larger.
    let long = noise(3 * 1024 * 1024 + 17, 7);
    let long_env = envelope();
    let mut incoming = spool.begin(&long_env).unwrap();
    let mut rest = &long[..];
    for size in [1, 7, 4096, 65_535, 65_536, 65_537, 256 * 1024]
        .iter()
        .cycle()
    {
        if rest.is_empty() {
            break;
        }
        let (part, tail) = rest.split_at((*size).min(rest.len()));
        incoming.write(part).unwrap();
        rest = tail;
    }
    let long_id = incoming.commit().unwrap();

    let empty_env = envelope();
    store(&spool, &empty_env, b"");

    let listed = spool.list().unwrap();
    let ids: Vec<&QueueId> = listed.iter().map(|e| &e.envelope.id).collect();
    assert_eq!(ids, [&small_id, &long_id, &empty_env.id], "oldest first");
    assert_eq!(listed[0].envelope, small_env);
    assert_eq!(listed[0].size, SMALL.len() as u64);
    assert_eq!(listed[1].envelope, long_env);
    assert_eq!(listed[1].size, long.len() as u64);
    assert_eq!(listed[2].size, 0);
    assert!(
        listed
            .iter()
            .all(|e| e.state == DeliveryState::new(&e.envelope)),
        "nothing saved yet: every state is new"
    );

    let (env, bytes) = spool.read(&small_id).unwrap();
    assert_eq!(env, small_env);
    assert_eq!(bytes, SMALL);
    let (env, bytes) = spool.read(&long_id).unwrap();
    assert_eq!(env, long_env);
    assert!(bytes == long, "long message differs");
    assert_eq!(spool.read(&empty_env.id).unwrap().1, b"");
    assert_eq!(dir.counts(), (0, 3, 0));
}

#[test]
fn list_is_oldest_first_whatever_the_commit_order() {
    let dir = TestDir::new("order");
    let (spool, _) = open(&dir);
    let envelopes: Vec<Envelope> = (0..5).map(|_| envelope()).collect();
    let mut open_ones: Vec<_> = envelopes
        .iter()
        .map(|env| {
            let mut incoming = spool.begin(env).unwrap();
            incoming.write(env.id.as_str().as_bytes()).unwrap();
            incoming
        })
        .collect();
    while let Some(incoming) = open_ones.pop() {
        incoming.commit().unwrap();
    }
    let listed: Vec<QueueId> = spool
        .list()
        .unwrap()
        .into_iter()
        .map(|e| e.envelope.id)
        .collect();
    let expected: Vec<QueueId> = envelopes.into_iter().map(|e| e.id).collect();
    assert_eq!(listed, expected);
}

#[test]
fn file_format_is_as_documented() {
    let dir = TestDir::new("format");
    let (spool, _) = open(&dir);
    let env = Envelope {
        received_at: UNIX_EPOCH + Duration::new(1_777_636_800, 250_000_000),
        ..envelope()
    };
    let id = store(&spool, &env, SMALL);

    let raw = fs::read(dir.path().join("queue").join(id.as_str())).unwrap();
    let rest = raw.strip_prefix(b"mxguard-spool 2\n").expect("magic line");
    let newline = rest.iter().position(|&b| b == b'\n').unwrap();
    let (json, message) = (&rest[..newline], &rest[newline + 1..]);
    assert_eq!(message, SMALL);
    let json: serde_json::Value = serde_json::from_slice(json).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "id": id.as_str(),
            "received_at": "2026-05-01T12:00:00.250000000Z",
            "mail_from": "sender@example.org",
            "recipients": ["a@example.net", "b@example.net"],
            "client_addr": "192.0.2.7",
            "client_helo": "mail.example.org",
            "body": "eight-bit-mime",
            "smtputf8": false,
            "tls": true,
            "spf": null,
        })
    );
}

#[test]
fn reopen_recovers_committed_discards_partial_and_moves_corrupt_aside() {
    let dir = TestDir::new("reopen");
    let (spool, _) = open(&dir);
    let first = envelope();
    let second = envelope();
    store(&spool, &first, b"one\r\n");
    store(&spool, &second, SMALL);
    // A message still being received when the "process dies".
    let mut in_flight = spool.begin(&envelope()).unwrap();
    in_flight.write(b"half a mess").unwrap();
    std::mem::forget(in_flight);
    drop(spool);

    let queue = dir.path().join("queue");
    let bad_magic = QueueId::new();
    fs::write(queue.join(bad_magic.as_str()), b"From nobody\r\nhello\r\n").unwrap();
    let newer = QueueId::new();
    fs::write(queue.join(newer.as_str()), b"mxguard-spool 3\n{}\nx").unwrap();
    let bad_json = QueueId::new();
    fs::write(
        queue.join(bad_json.as_str()),
        b"mxguard-spool 1\n{\"id\":\n",
    )
    .unwrap();
    let truncated = QueueId::new();
    fs::write(
        queue.join(truncated.as_str()),
        b"mxguard-spool 1\n{\"id\":\"",
    )
    .unwrap();
    // A valid entry under another entry's name.
    let first_file = fs::read(queue.join(first.id.as_str())).unwrap();
    let wrong_name = QueueId::new();
    fs::write(queue.join(wrong_name.as_str()), &first_file).unwrap();
    fs::write(queue.join("notes.txt"), b"an operator's notes").unwrap();
    fs::create_dir(queue.join("subdir")).unwrap();
    // A name already taken in corrupt/: must not be overwritten.
    fs::write(
        dir.path().join("corrupt").join(bad_magic.as_str()),
        b"older",
    )
    .unwrap();

    let (spool, found) = open(&dir);
    assert_eq!(found, recovery(2, 1, 7));
    let listed: Vec<QueueId> = spool
        .list()
        .unwrap()
        .into_iter()
        .map(|e| e.envelope.id)
        .collect();
    assert_eq!(listed, [first.id.clone(), second.id.clone()]);
    assert_eq!(spool.read(&second.id).unwrap(), (second, SMALL.to_vec()));

    assert_eq!(dir.files("tmp"), Vec::<String>::new());
    let mut expected_corrupt = vec![
        bad_magic.to_string(),
        format!("{bad_magic}.1"),
        newer.to_string(),
        bad_json.to_string(),
        truncated.to_string(),
        wrong_name.to_string(),
        "notes.txt".to_owned(),
        "subdir".to_owned(),
    ];
    expected_corrupt.sort();
    assert_eq!(dir.files("corrupt"), expected_corrupt);
    let corrupt = dir.path().join("corrupt");
    assert_eq!(
        fs::read(corrupt.join(bad_magic.as_str())).unwrap(),
        b"older"
    );
    assert_eq!(
        fs::read(corrupt.join(format!("{bad_magic}.1"))).unwrap(),
        b"From nobody\r\nhello\r\n"
    );

    // A third start finds a clean spool.
    drop(spool);
    assert_eq!(open(&dir).1, recovery(2, 0, 0));
}

#[test]
fn corrupt_entry_appearing_while_running_is_skipped_not_moved() {
    let dir = TestDir::new("runtime-corrupt");
    let (spool, _) = open(&dir);
    let good = store(&spool, &envelope(), b"fine\r\n");
    let bad = QueueId::new();
    let bad_path = dir.path().join("queue").join(bad.as_str());
    fs::write(&bad_path, b"garbage").unwrap();

    let listed = spool.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].envelope.id, good);
    match spool.read(&bad) {
        Err(SpoolError::Corrupt { path, .. }) => assert_eq!(path, bad_path),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(bad_path.exists());
    drop(spool);
    assert_eq!(open(&dir).1, recovery(1, 0, 1));
}

#[test]
fn abort_and_drop_leave_nothing() {
    let dir = TestDir::new("abort");
    let (spool, _) = open(&dir);

    let mut incoming = spool.begin(&envelope()).unwrap();
    write_in_chunks(incoming.as_mut(), &noise(300_000, 1), 100_000);
    assert_eq!(
        dir.counts(),
        (1, 0, 0),
        "the temp file exists while receiving"
    );
    incoming.abort();
    assert_eq!(dir.counts(), (0, 0, 0));

    let mut incoming = spool.begin(&envelope()).unwrap();
    incoming.write(SMALL).unwrap();
    drop(incoming);
    assert_eq!(dir.counts(), (0, 0, 0));

    // Begun and dropped without a single write.
    drop(spool.begin(&envelope()).unwrap());
    assert_eq!(dir.counts(), (0, 0, 0));

    assert!(spool.list().unwrap().is_empty());
    drop(spool);
    assert_eq!(open(&dir).1, Recovery::default());
}

#[test]
fn remove_and_not_found() {
    let dir = TestDir::new("remove");
    let (spool, _) = open(&dir);
    let kept = store(&spool, &envelope(), b"keep\r\n");
    let gone = store(&spool, &envelope(), b"remove\r\n");

    spool.remove(&gone).unwrap();
    let listed: Vec<QueueId> = spool
        .list()
        .unwrap()
        .into_iter()
        .map(|e| e.envelope.id)
        .collect();
    assert_eq!(listed, std::slice::from_ref(&kept));
    assert!(matches!(spool.remove(&gone), Err(SpoolError::NotFound(id)) if id == gone));
    assert!(matches!(spool.read(&gone), Err(SpoolError::NotFound(id)) if id == gone));
    let never = QueueId::new();
    assert!(matches!(spool.read(&never), Err(SpoolError::NotFound(_))));
    assert_eq!(spool.read(&kept).unwrap().1, b"keep\r\n");
    drop(spool);
    assert_eq!(open(&dir).1, recovery(1, 0, 0));
}

#[test]
fn an_id_in_use_cannot_be_begun_again() {
    let dir = TestDir::new("exists");
    let (spool, _) = open(&dir);
    let env = envelope();
    let incoming = spool.begin(&env).unwrap();
    assert!(matches!(spool.begin(&env), Err(SpoolError::Exists(id)) if id == env.id));
    incoming.commit().unwrap();
    assert!(matches!(spool.begin(&env), Err(SpoolError::Exists(id)) if id == env.id));
    // The failed begins removed nothing of the committed entry.
    assert_eq!(dir.counts(), (0, 1, 0));
    assert_eq!(spool.read(&env.id).unwrap().1, b"");
}

#[test]
fn an_unwritable_envelope_fails_begin_and_leaves_nothing() {
    let dir = TestDir::new("bad-envelope");
    let (spool, _) = open(&dir);
    let env = Envelope {
        received_at: UNIX_EPOCH - Duration::from_secs(1),
        ..envelope()
    };
    assert!(matches!(spool.begin(&env), Err(SpoolError::Io { .. })));
    assert_eq!(dir.counts(), (0, 0, 0));
}

#[test]
fn concurrent_commits_all_land() {
    const THREADS: usize = 8;
    const EACH: usize = 50;
    let dir = TestDir::new("concurrent");
    let (spool, _) = open(&dir);
    let spool = Arc::new(spool);

    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let spool = Arc::clone(&spool);
            thread::spawn(move || {
                (0..EACH)
                    .map(|i| {
                        let message = format!("thread {t} message {i}\r\n").into_bytes();
                        (store(spool.as_ref(), &envelope(), &message), message)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let stored: Vec<(QueueId, Vec<u8>)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();

    let listed = spool.list().unwrap();
    assert_eq!(listed.len(), THREADS * EACH);
    assert!(
        listed
            .windows(2)
            .all(|w| w[0].envelope.id < w[1].envelope.id)
    );
    let listed_ids: HashSet<&QueueId> = listed.iter().map(|e| &e.envelope.id).collect();
    let stored_ids: HashSet<&QueueId> = stored.iter().map(|(id, _)| id).collect();
    assert_eq!(listed_ids, stored_ids);
    for (id, message) in &stored {
        assert_eq!(&spool.read(id).unwrap().1, message);
    }
    drop(spool);
    assert_eq!(open(&dir).1, recovery(THREADS * EACH, 0, 0));
}

// Simulated faults. Each test checks the error, the files left behind, and
// what a restarted relay (a fresh FsSpool::open) recovers.

#[test]
fn fault_none_behaves_like_the_real_spool() {
    let dir = TestDir::new("fault-none");
    let (spool, found) = CrashSpool::open(dir.path()).unwrap();
    assert_eq!(found, Recovery::default());
    assert_eq!(spool.fault(), Fault::None);
    let env = envelope();
    store(&spool, &env, SMALL);
    assert_eq!(spool.list().unwrap().len(), 1);
    assert!(!spool.has_crashed());
    drop(spool);
    let (spool, found) = open(&dir);
    assert_eq!(found, recovery(1, 0, 0));
    assert_eq!(spool.read(&env.id).unwrap(), (env, SMALL.to_vec()));
}

#[test]
fn fault_full_after_cleans_up_and_the_spool_goes_on() {
    let dir = TestDir::new("fault-full");
    let (spool, _) = CrashSpool::open(dir.path()).unwrap();
    let earlier = store(&spool, &envelope(), b"before the disk filled\r\n");

    spool.set_fault(Fault::FullAfter(1000));
    // A message that fits is stored normally.
    store(&spool, &envelope(), &noise(1000, 2));

    let mut incoming = spool.begin(&envelope()).unwrap();
    incoming.write(&noise(600, 3)).unwrap();
    let err = incoming.write(&noise(600, 4)).unwrap_err();
    assert!(err.is_full(), "{err:?}");
    assert_eq!(dir.counts(), (0, 2, 0), "the partial file is gone");
    assert!(matches!(
        incoming.write(b"more"),
        Err(SpoolError::Discarded)
    ));
    assert!(matches!(incoming.commit(), Err(SpoolError::Discarded)));

    // Full on the very first write, in one large chunk.
    spool.set_fault(Fault::FullAfter(0));
    let mut incoming = spool.begin(&envelope()).unwrap();
    assert!(incoming.write(&noise(300_000, 5)).unwrap_err().is_full());
    drop(incoming);
    assert_eq!(dir.counts(), (0, 2, 0));
    assert!(!spool.has_crashed());

    spool.set_fault(Fault::None);
    let later = store(&spool, &envelope(), b"after space was freed\r\n");
    assert_eq!(spool.list().unwrap().len(), 3);
    drop(spool);
    let (spool, found) = open(&dir);
    assert_eq!(found, recovery(3, 0, 0));
    assert!(spool.read(&earlier).is_ok() && spool.read(&later).is_ok());
}

#[test]
fn fault_crash_after_leaves_the_partial_file_and_recovery_discards_it() {
    let dir = TestDir::new("fault-crash-after");
    let (spool, _) = CrashSpool::open(dir.path()).unwrap();
    let earlier = store(&spool, &envelope(), b"committed before the crash\r\n");

    spool.set_fault(Fault::CrashAfter(1000));
    let env = envelope();
    let message = noise(1200, 6);
    let mut incoming = spool.begin(&env).unwrap();
    incoming.write(&message[..600]).unwrap();
    assert!(matches!(
        incoming.write(&message[600..]),
        Err(SpoolError::Crashed)
    ));
    assert!(spool.has_crashed());
    drop(incoming);

    // The partial file holds the header and exactly the first 1000 bytes.
    assert_eq!(dir.counts(), (1, 1, 0));
    let partial = fs::read(dir.path().join("tmp").join(env.id.as_str())).unwrap();
    assert!(partial.starts_with(b"mxguard-spool 2\n"));
    assert!(partial.ends_with(&message[..1000]));

    // The crashed spool does nothing more.
    assert!(matches!(spool.list(), Err(SpoolError::Crashed)));
    assert!(matches!(spool.begin(&envelope()), Err(SpoolError::Crashed)));
    assert!(matches!(spool.remove(&earlier), Err(SpoolError::Crashed)));
    drop(spool);

    let (spool, found) = open(&dir);
    assert_eq!(found, recovery(1, 1, 0));
    assert_eq!(spool.list().unwrap()[0].envelope.id, earlier);
    assert_eq!(dir.counts(), (0, 1, 0));
}

/// A crash in commit before the rename: the message was never queued.
fn crash_in_commit_before_rename(fault: Fault) {
    let dir = TestDir::new("fault-crash-commit");
    let (spool, _) = CrashSpool::open(dir.path()).unwrap();
    spool.set_fault(fault);
    let mut incoming = spool.begin(&envelope()).unwrap();
    write_in_chunks(incoming.as_mut(), &noise(500_000, 8), 256 * 1024);
    assert!(matches!(incoming.commit(), Err(SpoolError::Crashed)));
    assert!(spool.has_crashed());
    assert_eq!(dir.counts(), (1, 0, 0), "{fault:?}: the temp file stays");
    drop(spool);

    let (spool, found) = open(&dir);
    assert_eq!(found, recovery(0, 1, 0), "{fault:?}");
    assert!(spool.list().unwrap().is_empty());
    assert_eq!(dir.counts(), (0, 0, 0));
}

#[test]
fn fault_crash_before_fsync_is_not_queued() {
    crash_in_commit_before_rename(Fault::CrashBeforeFsync);
}

#[test]
fn fault_crash_before_rename_is_not_queued() {
    crash_in_commit_before_rename(Fault::CrashBeforeRename);
}

#[test]
fn fault_crash_before_dir_sync_is_recovered() {
    let dir = TestDir::new("fault-crash-dirsync");
    let (spool, _) = CrashSpool::open(dir.path()).unwrap();
    spool.set_fault(Fault::CrashBeforeDirSync);
    let env = envelope();
    let message = noise(400_000, 9);
    let mut incoming = spool.begin(&env).unwrap();
    write_in_chunks(incoming.as_mut(), &message, 100_000);
    assert!(matches!(incoming.commit(), Err(SpoolError::Crashed)));
    assert_eq!(dir.counts(), (0, 1, 0), "the renamed entry stays");
    drop(spool);

    let (spool, found) = open(&dir);
    assert_eq!(found, recovery(1, 0, 0));
    let (read_env, bytes) = spool.read(&env.id).unwrap();
    assert_eq!(read_env, env);
    assert!(bytes == message);
}

#[test]
fn a_crash_freezes_other_messages_in_flight() {
    let dir = TestDir::new("fault-in-flight");
    let (spool, _) = CrashSpool::open(dir.path()).unwrap();
    // Begun before the fault is set: it runs without one, but the power
    // cut stops it all the same.
    let mut bystander = spool.begin(&envelope()).unwrap();
    bystander.write(b"first part\r\n").unwrap();

    spool.set_fault(Fault::CrashBeforeRename);
    let crasher = spool.begin(&envelope()).unwrap();
    assert!(matches!(crasher.commit(), Err(SpoolError::Crashed)));

    assert!(matches!(bystander.write(b"more"), Err(SpoolError::Crashed)));
    assert!(matches!(bystander.commit(), Err(SpoolError::Crashed)));
    assert_eq!(dir.counts(), (2, 0, 0), "no cleanup after a power cut");
    drop(spool);
    assert_eq!(open(&dir).1, recovery(0, 2, 0));
}

// Queue IDs.

#[test]
fn queue_ids_are_unique_and_increasing() {
    let ids: Vec<QueueId> = (0..100_000).map(|_| QueueId::new()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
    let unique: HashSet<&QueueId> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len());
}

#[test]
fn queue_ids_sort_by_creation_time() {
    let before = SystemTime::now();
    let a = QueueId::new();
    thread::sleep(Duration::from_millis(5));
    let b = QueueId::new();
    assert!(a < b);
    assert!(a.to_string() < b.to_string(), "text order is time order");
    assert!(a.created_at() < b.created_at());
    // Microsecond precision; other tests making IDs in parallel may push
    // the timestamp a little ahead of the clock.
    assert!(a.created_at() + Duration::from_micros(1) >= before);
    assert!(b.created_at() < SystemTime::now() + Duration::from_secs(5));
}

#[test]
fn queue_id_text_form() {
    let id = QueueId::new();
    let text = id.to_string();
    assert_eq!(text.len(), 19);
    assert!(
        text.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    );
    assert_eq!(text.parse::<QueueId>().unwrap(), id);
    assert_eq!(id.as_str(), text);

    let lowercase = text.to_ascii_lowercase();
    let rejected = [
        "../x",
        "",
        lowercase.as_str(),
        "0123456789ABCDEF0123",
        "0123456789ABCDEF01",
        "0123456789ABC/EF012",
        "0123456789ABCDEF01G",
        " 0123456789ABCDEF01",
        "..",
        "0123456789ABCDÉF01",
    ];
    for bad in rejected {
        assert!(bad.parse::<QueueId>().is_err(), "{bad:?} was accepted");
    }
    // Lower-case only differs when the ID has a letter; make one that does.
    assert!("0123456789abcdef012".parse::<QueueId>().is_err());

    let json = serde_json::to_string(&id).unwrap();
    assert_eq!(json, format!("\"{text}\""));
    assert_eq!(serde_json::from_str::<QueueId>(&json).unwrap(), id);
    assert!(serde_json::from_str::<QueueId>("\"../x\"").is_err());
}
