// Each test crate that says `mod common;` uses a subset of these helpers.
#![allow(dead_code)]

//! Helpers shared by the spool's integration tests: a scratch directory per
//! test, a sample envelope, storing a message, opening the spool.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::SystemTime;

use mxguard_queue::{Body, Envelope, FsSpool, Incoming, QueueId, Recovery, Spool};

/// A fresh directory, removed on drop unless the test is failing.
pub struct TestDir(PathBuf);

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "mxguard-queue-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        TestDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Sorted file names in one spool subdirectory.
    pub fn files(&self, sub: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.0.join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    /// (tmp/, queue/, corrupt/) file counts.
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.files("tmp").len(),
            self.files("queue").len(),
            self.files("corrupt").len(),
        )
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("keeping {} for inspection", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

pub fn envelope() -> Envelope {
    Envelope {
        id: QueueId::new(),
        received_at: SystemTime::now(),
        mail_from: "sender@example.org".to_owned(),
        recipients: vec!["a@example.net".to_owned(), "b@example.net".to_owned()],
        client_addr: "192.0.2.7".parse().unwrap(),
        client_helo: "mail.example.org".to_owned(),
        body: Body::EightBitMime,
        smtputf8: false,
        tls: true,
        spf: None,
    }
}

/// Deterministic, incompressible-looking bytes (xorshift).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn write_in_chunks(incoming: &mut dyn Incoming, message: &[u8], chunk: usize) {
    for part in message.chunks(chunk.max(1)) {
        incoming.write(part).unwrap();
    }
}

pub fn store(spool: &dyn Spool, envelope: &Envelope, message: &[u8]) -> QueueId {
    let mut incoming = spool.begin(envelope).unwrap();
    write_in_chunks(incoming.as_mut(), message, 256 * 1024);
    incoming.commit().unwrap()
}

pub fn open(dir: &TestDir) -> (FsSpool, Recovery) {
    FsSpool::open(dir.path()).unwrap()
}

pub fn recovery(recovered: usize, discarded_partial: usize, corrupt: usize) -> Recovery {
    Recovery {
        recovered,
        discarded_partial,
        corrupt,
    }
}
