//! `recipients = "list"`: a file of valid recipients, re-read when it
//! changes.
//!
//! One entry per line: `user@example.com`, or `@example.com` for every
//! address of a domain. `#` starts a comment. Anything after the first
//! whitespace is ignored, so a Postfix `relay_recipients` source file
//! (`user@example.com OK`) works as it is. Matching ignores case.
//!
//! The file is looked at (one `stat`) on every lookup; when its size,
//! modification time or inode changed it is read again. A file that became
//! unreadable or invalid leaves the previous contents in force, with an
//! error in the log — a typo must not turn the backup into a wall of 550s.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::address::Recipient;

/// What the list says about a recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed {
    Yes,
    No,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

#[derive(Debug, Default)]
struct Entries {
    addresses: HashSet<String>,
    domains: HashSet<String>,
}

#[derive(Debug)]
struct State {
    stamp: Option<Stamp>,
    entries: Entries,
}

/// A recipient list file.
#[derive(Debug)]
pub struct RecipientList {
    path: PathBuf,
    state: Mutex<State>,
}

impl RecipientList {
    /// Read the file; it must exist and be valid.
    pub fn open(path: &Path) -> Result<RecipientList, String> {
        let stamp = stamp(path)?;
        let entries = read(path)?;
        Ok(RecipientList {
            path: path.to_owned(),
            state: Mutex::new(State {
                stamp: Some(stamp),
                entries,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Entries now in force (addresses + domain wildcards).
    pub fn len(&self) -> usize {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.entries.addresses.len() + s.entries.domains.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `rcpt` is listed, re-reading the file first if it changed.
    pub fn check(&self, rcpt: &Recipient) -> Listed {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match stamp(&self.path) {
            Ok(now) if s.stamp.as_ref() != Some(&now) => match read(&self.path) {
                Ok(entries) => {
                    tracing::info!(
                        path = %self.path.display(),
                        entries = entries.addresses.len() + entries.domains.len(),
                        "recipient list re-read"
                    );
                    s.entries = entries;
                    s.stamp = Some(now);
                }
                Err(e) => {
                    tracing::error!(path = %self.path.display(), error = %e,
                        "recipient list changed but cannot be used; keeping the previous one");
                    s.stamp = Some(now);
                }
            },
            Ok(_) => {}
            Err(e) => {
                if s.stamp.take().is_some() {
                    tracing::error!(path = %self.path.display(), error = %e,
                        "recipient list is gone; keeping the previous one");
                }
            }
        }
        let address = rcpt.address().to_lowercase();
        if s.entries.addresses.contains(&address) || s.entries.domains.contains(&rcpt.domain) {
            Listed::Yes
        } else {
            Listed::No
        }
    }
}

fn stamp(path: &Path) -> Result<Stamp, String> {
    let m = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Stamp {
        len: m.len(),
        modified: m.modified().ok(),
        inode: m.ino(),
    })
}

fn read(path: &Path) -> Result<Entries, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text).map_err(|(line, msg)| format!("{}:{line}: {msg}", path.display()))
}

fn parse(text: &str) -> Result<Entries, (usize, String)> {
    let mut entries = Entries::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        let Some(entry) = line.split_whitespace().next() else {
            continue;
        };
        let bad = || {
            (
                i + 1,
                format!("{entry:?} is neither user@domain nor @domain"),
            )
        };
        let (local, domain) = entry.rsplit_once('@').ok_or_else(bad)?;
        let domain = mxguard_dns::net::parse_domain(domain).map_err(|_| bad())?;
        if local.is_empty() {
            entries.domains.insert(domain);
        } else {
            entries
                .addresses
                .insert(format!("{}@{domain}", local.to_lowercase()));
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses_wildcards_comments_and_postfix_maps() {
        let e =
            parse("# users\nAlice@Example.com\n\n  bob@example.com OK\n@sales.example.com # all\n")
                .unwrap();
        assert!(e.addresses.contains("alice@example.com"));
        assert!(e.addresses.contains("bob@example.com"));
        assert!(e.domains.contains("sales.example.com"));
        assert_eq!(e.addresses.len() + e.domains.len(), 3);
    }

    #[test]
    fn reports_the_bad_line() {
        let err = parse("a@example.com\nnot-an-address\n").unwrap_err();
        assert_eq!(err.0, 2);
        assert!(err.1.contains("not-an-address"));
    }
}
