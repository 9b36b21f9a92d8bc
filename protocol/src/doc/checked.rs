//! What a peer wrote into a document, checked before anyone uses it.
//!
//! Every node that holds the grid key may write into the documents, and a
//! node's own bugs look the same from outside: each entry read from a map is
//! parsed and checked here, and one that fails is skipped and recorded
//! ([`Skipped`]) — never an error that empties the whole map, and never a
//! value that makes the node allocate, overflow or write outside its folders.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::access::{ApiToken, User, check_name};
use crate::error::{Error, Result};
use crate::model::{Process, Room, SharedFile};

use super::grid::{NodeRecord, RequestIndex};

/// Longest free text a record may hold (labels, node names, isolation
/// details, a domain's Dockerfile is checked by its own rules).
pub const MAX_TEXT_BYTES: usize = 4096;

/// A record as read from a document map under `key`.
pub trait Checked {
    /// Whether the record is one an honest node would write under `key`.
    fn check(&self, key: &str) -> Result<()>;
}

fn same_key(what: &str, key: &str, inner: &str) -> Result<()> {
    if key != inner {
        return Err(Error::document(format!(
            "{what} '{inner}' stored under another key"
        )));
    }
    Ok(())
}

fn short(what: &str, s: &str) -> Result<()> {
    if s.len() > MAX_TEXT_BYTES {
        return Err(Error::document(format!(
            "{what} is longer than {MAX_TEXT_BYTES} bytes"
        )));
    }
    Ok(())
}

/// The rooms an upload is shared with: a bounded list of room names.
fn rooms_ok(rooms: &[String]) -> Result<()> {
    if rooms.len() > crate::limits::MAX_LIST_ITEMS {
        return Err(Error::document("shared with too many rooms"));
    }
    rooms.iter().try_for_each(|r| check_name("room", r))
}

impl Checked for Room {
    fn check(&self, key: &str) -> Result<()> {
        same_key("room", key, &self.name)?;
        check_name("room", &self.name)
    }
}

impl Checked for Process {
    fn check(&self, key: &str) -> Result<()> {
        same_key("process", key, self.id.as_str())?;
        rooms_ok(&self.rooms)?;
        self.validate()
    }
}

impl Checked for RequestIndex {
    fn check(&self, key: &str) -> Result<()> {
        same_key("request", key, self.id.as_str())?;
        short("the owner", &self.owner)
    }
}

impl Checked for NodeRecord {
    fn check(&self, key: &str) -> Result<()> {
        same_key("node", key, self.id.as_str())?;
        for (what, s) in [
            ("the node's name", &self.name),
            ("the executor", &self.executor),
            ("the isolation", &self.isolation),
        ] {
            short(what, s)?;
        }
        if self.addrs.len() > 64 || self.addrs.iter().any(|a| a.len() > 256) {
            return Err(Error::document("too many or too long addresses"));
        }
        Ok(())
    }
}

impl Checked for crate::domain::Domain {
    fn check(&self, key: &str) -> Result<()> {
        same_key("domain", key, &self.name)?;
        self.validate()
    }
}

impl Checked for SharedFile {
    fn check(&self, key: &str) -> Result<()> {
        same_key("shared file", key, &self.name)?;
        SharedFile::check_name(&self.name)?;
        rooms_ok(&self.rooms)?;
        short("the owner", &self.owner)
    }
}

impl Checked for User {
    fn check(&self, key: &str) -> Result<()> {
        same_key("user", key, &self.name)?;
        check_name("user", &self.name)?;
        short("the password hash", &self.password_hash)
    }
}

impl Checked for ApiToken {
    fn check(&self, key: &str) -> Result<()> {
        same_key("token", key, &self.id)?;
        check_name("user", &self.user)?;
        short("the label", &self.label)
    }
}

/// Entries skipped because they failed their checks: `map/key` → why.
/// Kept for the node to log, count and show; bounded so that a flood of
/// junk cannot grow it without end (the count keeps going).
#[derive(Debug, Default)]
pub struct Skipped {
    inner: Mutex<(BTreeMap<String, String>, u64)>,
}

/// How many skipped entries are remembered with their reasons.
const REMEMBERED: usize = 1000;

impl Skipped {
    /// Records that `entry` was skipped for `why`.
    pub fn record(&self, entry: String, why: String) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (map, count) = &mut *g;
        if map.contains_key(&entry) {
            return;
        }
        *count += 1;
        if map.len() < REMEMBERED {
            map.insert(entry, why);
        }
    }

    /// How many entries were skipped.
    pub fn count(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).1
    }

    /// The skipped entries remembered (entry, why), and how many there were.
    pub fn list(&self) -> (Vec<(String, String)>, u64) {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (
            g.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            g.1,
        )
    }
}
