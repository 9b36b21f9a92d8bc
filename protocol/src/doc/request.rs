//! The per-request document: the spec, cancellation, and every attempt of every rank.

use std::collections::{BTreeMap, BTreeSet};

use automerge::{
    ActorId, AutoCommit, ObjId, ObjType, ROOT, ReadDoc, Value, ValueRef, transaction::Transactable,
};

use super::SCHEMA;
use super::fields::*;
use crate::error::{Error, Result};
use crate::gang::{self, GangView};
use crate::ids::{BlobHash, NodeId, RequestId};
use crate::model::{Attempt, AttemptState, RequestSpec, RunState, parse_attempt_key};
use crate::run_view::{RunCounts, RunPolicy, RunView, derive_run};

/// A request document with a materialised view of its attempts.
///
/// Writes go to both the Automerge document and the view; after a merge from
/// a peer, call [`RequestDoc::rematerialize`].
pub struct RequestDoc {
    doc: AutoCommit,
    /// The `attempts` and `cancel` maps the request's creation made, found
    /// by their object ids (never again through the root's keys, which a
    /// peer could overwrite), and its spec as created (immutable).
    attempts_obj: ObjId,
    cancel_obj: ObjId,
    spec: RequestSpec,
    cancelled: bool,
    attempts: BTreeMap<u32, Vec<Attempt>>,
    /// Where each attempt's map is, so updates skip the lookup.
    attempt_objs: std::collections::HashMap<String, ObjId>,
    /// Ranks whose run is not terminal (independent of lease liveness).
    unfinished: BTreeSet<u32>,
    /// Unfinished ranks that have had an attempt (running, or to retry).
    tried: BTreeSet<u32>,
    /// Terminal runs by state (without cancellation, which applies at read time).
    done: RunCounts,
    /// The state of each terminal rank (what `done` counts).
    terminal: BTreeMap<u32, RunState>,
    /// Attempts that failed their checks at the last rematerialize:
    /// (`attempts/KEY`, why). Skipped, not used.
    skipped: Vec<(String, String)>,
}

/// Highest epoch an attempt may carry. Epochs grow by one per retry or
/// reassignment; a peer's `u32::MAX` would overflow the next one.
pub const MAX_EPOCH: u32 = 1 << 24;

impl RequestDoc {
    /// A new document for a validated spec.
    pub fn create(spec: RequestSpec, actor: ActorId) -> Result<Self> {
        spec.validate()?;
        let mut doc = AutoCommit::new().with_actor(actor);
        doc.put(ROOT, "schema", SCHEMA)?;
        doc.put(ROOT, "kind", "request")?;
        put_json(&mut doc, &ROOT, "spec", &spec)?;
        doc.put_object(ROOT, "cancel", ObjType::Map)?;
        doc.put_object(ROOT, "attempts", ObjType::Map)?;
        doc.commit();
        Self::from_automerge(doc)
    }

    /// Loads a saved document (full save plus any incremental chunks appended).
    pub fn load(bytes: &[u8], actor: ActorId) -> Result<Self> {
        let doc = AutoCommit::load(bytes)?.with_actor(actor);
        Self::from_automerge(doc)
    }

    /// Wraps a document received from a peer (fails until it holds a spec).
    pub fn from_automerge(mut doc: AutoCommit) -> Result<Self> {
        super::check_readable(&doc, "request")?;
        let made = creation(&mut doc)?;
        let spec: RequestSpec = serde_json::from_str(&made.spec)
            .map_err(|e| Error::document(format!("the request's spec does not parse: {e}")))?;
        // A peer's spec is checked like a user's: a repetitions count or a
        // file name no user could submit makes the request unreadable here.
        spec.validate()
            .map_err(|e| Error::document(format!("the request's spec: {e}")))?;
        let mut me = RequestDoc {
            doc,
            attempts_obj: made.attempts,
            cancel_obj: made.cancel,
            spec,
            cancelled: false,
            attempts: BTreeMap::new(),
            attempt_objs: Default::default(),
            unfinished: BTreeSet::new(),
            tried: BTreeSet::new(),
            done: RunCounts::default(),
            terminal: BTreeMap::new(),
            skipped: Vec::new(),
        };
        me.rematerialize()?;
        Ok(me)
    }

    /// Brings the view up to date with the document (after a merge or
    /// sync): only the attempts the new changes touched are read again (the
    /// document indexes its changes since the last call), so a merge costs
    /// what it brought, not the request's size. Anything the index cannot
    /// place is read whole.
    pub fn rematerialize(&mut self) -> Result<()> {
        if self.doc.diff_cursor().is_empty() {
            return self.rematerialize_all();
        }
        let patches = self.doc.diff_incremental();
        // Index only what merges bring: local writes are in the view already.
        self.doc.reset_diff_cursor();
        self.cancelled = self.doc.length(&self.cancel_obj) > 0;
        let mut keys = BTreeSet::new();
        for p in &patches {
            let under_attempts = p.path.iter().find_map(|(o, prop)| match prop {
                automerge::Prop::Map(k) if o == &self.attempts_obj => Some(k.clone()),
                _ => None,
            });
            let key = if p.obj == self.attempts_obj {
                match &p.action {
                    automerge::PatchAction::PutMap { key, .. }
                    | automerge::PatchAction::DeleteMap { key } => Some(key.clone()),
                    automerge::PatchAction::Conflict {
                        prop: automerge::Prop::Map(key),
                    } => Some(key.clone()),
                    _ => None,
                }
            } else {
                under_attempts
            };
            match key {
                Some(k) => {
                    keys.insert(k);
                }
                None if p.obj == self.cancel_obj
                    || p.path.iter().any(|(o, _)| o == &self.cancel_obj) => {}
                // Outside what the view holds (the root, the spec a peer
                // tried to change): read everything again.
                None => return self.rematerialize_all(),
            }
        }
        let mut ranks = BTreeSet::new();
        for key in keys {
            match self.reread(&key) {
                Some(rank) => {
                    ranks.insert(rank);
                }
                None => return self.rematerialize_all(),
            }
        }
        self.refresh_ranks(ranks);
        Ok(())
    }

    /// Reads attempt `key` again into the view: the rank it belongs to, or
    /// `None` when the key does not name one (then the caller reads all).
    fn reread(&mut self, key: &str) -> Option<u32> {
        let (rank, _, _) = parse_attempt_key(key).ok()?;
        let entry = format!("attempts/{key}");
        self.skipped.retain(|(e, _)| e != &entry);
        if let Some(list) = self.attempts.get_mut(&rank) {
            list.retain(|a| a.key() != key);
        }
        self.attempt_objs.remove(key);
        let obj = match self.doc.get(&self.attempts_obj, key) {
            Ok(Some((Value::Object(ObjType::Map), id))) => id,
            // Deleted, or not a map: no attempt under this key.
            Ok(_) => return Some(rank),
            Err(_) => return None,
        };
        match read_attempt(&self.doc, key, &obj).and_then(|a| self.check(key, a)) {
            Ok(a) => {
                self.attempt_objs.insert(key.to_string(), obj);
                let list = self.attempts.entry(a.rank).or_default();
                // In key order, as a whole read leaves them.
                let at = list.partition_point(|x| (x.epoch, &x.node) < (a.epoch, &a.node));
                list.insert(at, a);
            }
            Err(e) => self.skipped.push((entry, e.to_string())),
        }
        Some(rank)
    }

    /// Rebuilds the whole view from the document, and starts indexing the
    /// changes that come after.
    fn rematerialize_all(&mut self) -> Result<()> {
        self.doc.reset_diff_cursor();
        self.cancelled = self.doc.length(&self.cancel_obj) > 0;
        self.attempts.clear();
        self.attempt_objs.clear();
        let keys: Vec<(String, ObjId)> = self
            .doc
            .map_range(&self.attempts_obj, ..)
            .filter_map(|item| match item.value {
                ValueRef::Object(ObjType::Map) => Some((item.key.to_string(), item.id())),
                _ => None,
            })
            .collect();
        self.skipped.clear();
        for (key, obj) in keys {
            let a = match read_attempt(&self.doc, &key, &obj).and_then(|a| self.check(&key, a)) {
                Ok(a) => a,
                Err(e) => {
                    self.skipped
                        .push((format!("attempts/{key}"), e.to_string()));
                    continue;
                }
            };
            self.attempt_objs.insert(key, obj);
            self.attempts.entry(a.rank).or_default().push(a);
        }
        self.unfinished = (0..self.spec.repetitions).collect();
        self.tried.clear();
        self.done = RunCounts::default();
        self.terminal.clear();
        let ranks: Vec<u32> = self.attempts.keys().copied().collect();
        self.refresh_ranks(ranks);
        Ok(())
    }

    /// An attempt read from the document, checked against the spec.
    fn check(&self, key: &str, a: Attempt) -> Result<Attempt> {
        // Only the key this node would write: `7.2.N` parses like
        // `00000007.00002.N` and would shadow the real attempt's map.
        if a.key() != key {
            return Err(Error::document(format!(
                "'{key}' is not in the standard form ({})",
                a.key()
            )));
        }
        let node = a.node.as_str();
        if node.len() > 128 || node.contains(char::is_whitespace) {
            return Err(Error::document("the node id is not one"));
        }
        if a.rank >= self.spec.repetitions {
            return Err(Error::document(format!(
                "rank {} out of range (the request has {})",
                a.rank, self.spec.repetitions
            )));
        }
        if a.epoch > MAX_EPOCH {
            return Err(Error::document(format!(
                "epoch {} is above {MAX_EPOCH}",
                a.epoch
            )));
        }
        Ok(a)
    }

    /// Attempts skipped because they failed their checks (`attempts/KEY`, why).
    pub fn skipped(&self) -> &[(String, String)] {
        &self.skipped
    }

    /// Derives these ranks' runs again (a gang once, whichever changed).
    fn refresh_ranks(&mut self, ranks: impl IntoIterator<Item = u32>) {
        let mut ranks = ranks.into_iter();
        if self.spec.parallel {
            if let Some(r) = ranks.next() {
                self.refresh_rank(r);
            }
            return;
        }
        for rank in ranks {
            self.refresh_rank(rank);
        }
    }

    /// Derives rank `rank`'s run again and keeps the unfinished, tried
    /// and terminal bookkeeping in step (a merge may move a rank from one
    /// terminal state to another, or out of one).
    fn refresh_rank(&mut self, rank: u32) {
        let policy = RunPolicy {
            retries: self.spec.retries,
            checkpoint_retries: self.spec.checkpoint_retries,
            cancelled: false,
        };
        if self.spec.parallel {
            // One rank's attempt moves every rank of a gang.
            let world = self.spec.repetitions;
            let states: Vec<RunState> = {
                let view = gang::derive(
                    &self.spec.id,
                    world,
                    self.spec.same_node,
                    |r| self.attempts_of(r),
                    policy,
                    |_| true,
                );
                (0..world).map(|r| view.run(r).state).collect()
            };
            for (r, state) in (0..world).zip(states) {
                let tried = !self.attempts_of(r).is_empty();
                self.settle_rank(r, state, tried);
            }
            return;
        }
        let list = self.attempts.get(&rank).map(Vec::as_slice).unwrap_or(&[]);
        let state = derive_run(&self.spec.id, list, policy, |_| true).state;
        let tried = !list.is_empty();
        self.settle_rank(rank, state, tried);
    }

    /// Keeps the unfinished, tried and terminal bookkeeping of `rank` in
    /// step with its derived state.
    fn settle_rank(&mut self, rank: u32, state: RunState, tried: bool) {
        if rank >= self.spec.repetitions {
            return;
        }
        let old = self.terminal.get(&rank).copied();
        if let Some(o) = old {
            self.done.remove(o);
            self.terminal.remove(&rank);
        }
        if state.is_terminal() {
            self.unfinished.remove(&rank);
            self.tried.remove(&rank);
            self.done.add(state);
            self.terminal.insert(rank, state);
        } else {
            self.unfinished.insert(rank);
            if tried {
                self.tried.insert(rank);
            } else {
                self.tried.remove(&rank);
            }
        }
    }

    pub fn id(&self) -> &RequestId {
        &self.spec.id
    }
    pub fn spec(&self) -> &RequestSpec {
        &self.spec
    }
    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }
    pub fn attempts_of(&self, rank: u32) -> &[Attempt] {
        self.attempts.get(&rank).map(Vec::as_slice).unwrap_or(&[])
    }
    /// Every attempt, by rank.
    pub fn all_attempts(&self) -> impl Iterator<Item = &Attempt> {
        self.attempts.values().flatten()
    }
    /// Ranks that have not reached a terminal state (ignoring cancellation).
    pub fn unfinished_ranks(&self) -> impl Iterator<Item = u32> + '_ {
        self.unfinished.iter().copied()
    }

    /// Unfinished ranks from `start` upwards, then wrapping around: nodes
    /// that start at different ranks rarely race for the same run.
    pub fn unfinished_ranks_from(&self, start: u32) -> impl Iterator<Item = u32> + '_ {
        self.unfinished
            .range(start..)
            .chain(self.unfinished.range(..start))
            .copied()
    }

    /// The order a node scans a request in, from its own starting point:
    /// ranks that were tried already first (a run whose holder died, or one
    /// to retry, must not wait behind a million fresh ones), then the rest.
    pub fn scan_from(&self, start: u32) -> impl Iterator<Item = u32> + '_ {
        self.tried_from(start).chain(self.fresh_from(start))
    }

    /// The first part of [`Self::scan_from`]: unfinished ranks that were
    /// tried already.
    pub fn tried_from(&self, start: u32) -> impl Iterator<Item = u32> + '_ {
        self.tried
            .range(start..)
            .chain(self.tried.range(..start))
            .copied()
    }

    /// The rest of [`Self::scan_from`]: unfinished ranks never tried.
    pub fn fresh_from(&self, start: u32) -> impl Iterator<Item = u32> + '_ {
        self.unfinished_ranks_from(start)
            .filter(|r| !self.tried.contains(r))
    }

    fn policy(&self) -> RunPolicy {
        RunPolicy {
            retries: self.spec.retries,
            checkpoint_retries: self.spec.checkpoint_retries,
            cancelled: self.cancelled,
        }
    }

    /// One run's view; `live` judges non-terminal attempts' leases.
    pub fn run(&self, rank: u32, live: impl Fn(&Attempt) -> bool) -> RunView<'_> {
        if self.spec.parallel {
            return self.gang(live).run(rank);
        }
        derive_run(&self.spec.id, self.attempts_of(rank), self.policy(), live)
    }

    /// Every rank's run, in rank order (a gang derived once).
    pub fn runs(&self, live: impl Fn(&Attempt) -> bool) -> Vec<RunView<'_>> {
        if self.spec.parallel {
            let view = self.gang(live);
            return (0..self.spec.repetitions).map(|r| view.run(r)).collect();
        }
        (0..self.spec.repetitions)
            .map(|r| derive_run(&self.spec.id, self.attempts_of(r), self.policy(), &live))
            .collect()
    }

    /// Every rank's result attempt (see [`RequestDoc::result_attempt`]), in
    /// rank order.
    pub fn result_attempts(&self) -> Vec<Option<&Attempt>> {
        self.runs(|_| true)
            .into_iter()
            .enumerate()
            .map(|(rank, v)| match v.state {
                RunState::Succeeded => v.current,
                _ => self.last_ended(rank as u32),
            })
            .collect()
    }

    /// A rank's latest attempt that ended, not handed back.
    fn last_ended(&self, rank: u32) -> Option<&Attempt> {
        self.attempts_of(rank)
            .iter()
            .filter(|a| a.state.is_terminal() && a.state != AttemptState::Yielded)
            .max_by_key(|a| (a.epoch, a.finished_ms))
    }

    /// A parallel request's gang (see [`crate::gang`]); `live` judges
    /// non-terminal attempts' leases.
    pub fn gang(&self, live: impl Fn(&Attempt) -> bool) -> GangView<'_> {
        gang::derive(
            &self.spec.id,
            self.spec.repetitions,
            self.spec.same_node,
            |r| self.attempts_of(r),
            self.policy(),
            live,
        )
    }

    /// Counts of runs per state.
    pub fn counts(&self, live: impl Fn(&Attempt) -> bool) -> RunCounts {
        let mut c = self.done;
        c.total = self.spec.repetitions;
        if self.spec.parallel {
            // Derived once for every rank.
            let view = self.gang(live);
            for rank in &self.unfinished {
                c.add(view.run(*rank).state);
            }
            return c;
        }
        for rank in &self.unfinished {
            c.add(self.run(*rank, &live).state);
        }
        c
    }

    /// Whether every run is terminal (a cancelled request's unfinished runs are).
    pub fn is_finished(&self) -> bool {
        self.unfinished.is_empty() || self.cancelled
    }

    /// Writes (creates or updates) an attempt. Only the attempt's own node
    /// may call this for it; only changed fields are written.
    pub fn put_attempt(&mut self, a: &Attempt) -> Result<()> {
        if a.rank >= self.spec.repetitions {
            return Err(Error::invalid(format!("rank {} out of range", a.rank)));
        }
        let key = a.key();
        let list = self.attempts.entry(a.rank).or_default();
        let old = list.iter().position(|x| x.key() == key);
        let obj = match self.attempt_objs.get(&key) {
            Some(o) => o.clone(),
            None => {
                let o = match self.doc.get(&self.attempts_obj, key.as_str())? {
                    Some((Value::Object(ObjType::Map), id)) => id,
                    _ => self
                        .doc
                        .put_object(&self.attempts_obj, key.as_str(), ObjType::Map)?,
                };
                self.attempt_objs.insert(key.clone(), o.clone());
                o
            }
        };
        let prev = old.map(|i| list[i].clone());
        write_attempt(&mut self.doc, &obj, a, prev.as_ref())?;
        match old {
            Some(i) => list[i] = a.clone(),
            // In key order, as a whole read leaves them.
            None => {
                let at = list.partition_point(|x| (x.epoch, &x.node) < (a.epoch, &a.node));
                list.insert(at, a.clone());
            }
        }
        self.refresh_rank(a.rank);
        Ok(())
    }

    /// Marks the request cancelled (any node may; idempotent).
    pub fn cancel(&mut self, by: &NodeId, now_ms: u64) -> Result<()> {
        let cancel = map(&self.doc, &ROOT, "cancel")?;
        if self.doc.get(&cancel, by.as_str())?.is_none() {
            self.doc.put(&cancel, by.as_str(), now_ms)?;
        }
        self.cancelled = true;
        Ok(())
    }

    /// Closes the pending change, if any. Returns whether there was one.
    pub fn commit(&mut self) -> bool {
        self.doc.commit().is_some()
    }

    /// Full save (compaction snapshot).
    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
    }

    /// Changes since the last save or incremental save.
    pub fn save_incremental(&mut self) -> Vec<u8> {
        self.doc.save_incremental()
    }

    /// The underlying document (for sync with peers).
    pub fn doc_mut(&mut self) -> &mut AutoCommit {
        &mut self.doc
    }

    /// Merges another replica into this one and refreshes the view.
    pub fn merge(&mut self, other: &mut RequestDoc) -> Result<()> {
        self.track_merge();
        self.doc.merge(&mut other.doc)?;
        self.rematerialize()
    }

    /// Indexes the changes about to be merged, so the next
    /// [`RequestDoc::rematerialize`] reads only the attempts they touch.
    /// Call before merging into [`RequestDoc::doc_mut`] or receiving a sync
    /// message there; local writes are never indexed (they update the view
    /// themselves).
    pub fn track_merge(&mut self) {
        self.doc.update_diff_cursor();
    }

    /// Receives a peer's sync message: whether the document changed (then
    /// call [`RequestDoc::rematerialize`]).
    pub fn receive_sync(&mut self, state: &mut super::sync::SyncState, msg: &[u8]) -> Result<bool> {
        self.track_merge();
        let changed = super::sync::receive(&mut self.doc, state, msg);
        if !matches!(changed, Ok(true)) {
            self.doc.reset_diff_cursor();
        }
        changed
    }

    /// The attempt chosen as the rank's result, or its latest finished one.
    pub fn result_attempt(&self, rank: u32) -> Option<&Attempt> {
        let v = self.run(rank, |_| true);
        match v.state {
            RunState::Succeeded => v.current,
            _ => self.last_ended(rank),
        }
    }

    /// The newest checkpoint recorded for a rank (by epoch), if any: what a
    /// new attempt restores before it starts.
    pub fn latest_checkpoint(&self, rank: u32) -> Option<&Attempt> {
        self.attempts_of(rank)
            .iter()
            .filter(|a| a.checkpoint.is_some())
            .max_by_key(|a| (a.epoch, a.finished_ms.is_some(), a.node.as_str()))
    }
}

/// What a request's creation change made: its spec, its `attempts` and
/// `cancel` maps.
struct Creation {
    spec: String,
    attempts: ObjId,
    cancel: ObjId,
}

/// Finds the change that created the request (a change without
/// dependencies writing `kind = request`, the spec and both maps at the
/// root) and what it made. Later writes to those root keys are ignored.
fn creation(doc: &mut AutoCommit) -> Result<Creation> {
    use automerge::legacy::{Key, ObjectId, OpType};
    // Metadata first: only the changes without dependencies are decoded
    // (a large request has thousands of changes; this runs at every load).
    let roots: Vec<automerge::ChangeHash> = doc
        .get_changes_meta(&[])
        .into_iter()
        .filter(|m| m.deps.is_empty())
        .map(|m| m.hash)
        .collect();
    for c in roots.iter().filter_map(|h| doc.get_change_by_hash(h)) {
        let ex = c.decode();
        let (mut spec, mut attempts, mut cancel, mut kind) = (None, None, None, false);
        for (i, op) in ex.operations.iter().enumerate() {
            let (ObjectId::Root, Key::Map(key)) = (&op.obj, &op.key) else {
                continue;
            };
            let id = format!("{}@{}", ex.start_op.get() + i as u64, ex.actor_id);
            match (key.as_str(), &op.action) {
                ("kind", OpType::Put(automerge::ScalarValue::Str(k))) => kind = k == "request",
                ("spec", OpType::Put(automerge::ScalarValue::Str(s))) => spec = Some(s.to_string()),
                ("attempts", OpType::Make(ObjType::Map)) => attempts = Some(id),
                ("cancel", OpType::Make(ObjType::Map)) => cancel = Some(id),
                _ => {}
            }
        }
        if let (true, Some(spec), Some(a), Some(c)) = (kind, spec, attempts, cancel) {
            let obj = |s: &str| doc.import_obj(s).map_err(Error::from);
            return Ok(Creation {
                spec,
                attempts: obj(&a)?,
                cancel: obj(&c)?,
            });
        }
    }
    Err(Error::document(
        "request document without its creation (no spec yet)",
    ))
}

fn read_attempt(doc: &AutoCommit, key: &str, obj: &ObjId) -> Result<Attempt> {
    let (rank, epoch, node) = parse_attempt_key(key)?;
    let f = Fields::read(doc, obj);
    let hash = |field: &str| -> Result<Option<BlobHash>> {
        f.str(field)?
            .map(|s| {
                s.parse()
                    .map_err(|_| Error::document(format!("bad hash in '{field}'")))
            })
            .transpose()
    };
    let state = f
        .str("state")?
        .ok_or_else(|| Error::document(format!("attempt {key} without state")))?
        .parse()?;
    Ok(Attempt {
        rank,
        epoch,
        node,
        state,
        claimed_ms: f.u64("claimed_ms")?.unwrap_or(0),
        started_ms: f.u64("started_ms")?,
        finished_ms: f.u64("finished_ms")?,
        exit_code: f.i64("exit_code")?.and_then(|v| i32::try_from(v).ok()),
        output: hash("output")?,
        stdout: hash("stdout")?,
        stderr: hash("stderr")?,
        reason: f.str("reason")?,
        replicas: node_list(f.str("replicas")?),
        checkpoint: hash("checkpoint")?,
        checkpoint_holders: node_list(f.str("checkpoint_holders")?),
        progress: f
            .u64("progress")?
            .and_then(|p| u8::try_from(p.min(100)).ok()),
        message: f.str("message")?,
        peak_memory_mb: f
            .u64("peak_memory_mb")?
            .map(|m| m.min(crate::resources::MAX_PEAK_MB)),
        peak_cpu_percent: f
            .u64("peak_cpu_percent")?
            .and_then(|c| u32::try_from(c).ok()),
        image: f.str("image")?.filter(|i| i.len() <= 256),
        backup: f.bool("backup")?.unwrap_or(false),
    })
}

/// Node lists are kept as one space-separated string (written by one node only).
fn node_list(s: Option<String>) -> Vec<NodeId> {
    s.map(|s| s.split_whitespace().map(NodeId::new).collect())
        .unwrap_or_default()
}

fn node_list_value(v: &[NodeId]) -> Option<automerge::ScalarValue> {
    (!v.is_empty()).then(|| {
        automerge::ScalarValue::from(v.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(" "))
    })
}

fn write_attempt(
    doc: &mut AutoCommit,
    obj: &ObjId,
    a: &Attempt,
    prev: Option<&Attempt>,
) -> Result<()> {
    macro_rules! field {
        ($name:ident, $conv:expr) => {
            if prev.map(|p| &p.$name) != Some(&a.$name) {
                #[allow(clippy::redundant_closure_call)]
                match ($conv)(&a.$name) {
                    Some(v) => doc.put(obj, stringify!($name), v)?,
                    None => {
                        if prev.is_some() {
                            doc.delete(obj, stringify!($name))?
                        }
                    }
                }
            }
        };
    }
    field!(state, |s: &AttemptState| Some(
        automerge::ScalarValue::from(s.as_str())
    ));
    field!(claimed_ms, |v: &u64| Some(automerge::ScalarValue::Uint(*v)));
    field!(started_ms, |v: &Option<u64>| v
        .map(automerge::ScalarValue::Uint));
    field!(finished_ms, |v: &Option<u64>| v
        .map(automerge::ScalarValue::Uint));
    field!(exit_code, |v: &Option<i32>| v
        .map(|c| automerge::ScalarValue::Int(c as i64)));
    field!(output, |v: &Option<BlobHash>| v
        .map(|h| automerge::ScalarValue::from(h.to_hex())));
    field!(stdout, |v: &Option<BlobHash>| v
        .map(|h| automerge::ScalarValue::from(h.to_hex())));
    field!(stderr, |v: &Option<BlobHash>| v
        .map(|h| automerge::ScalarValue::from(h.to_hex())));
    field!(reason, |v: &Option<String>| v
        .clone()
        .map(automerge::ScalarValue::from));
    field!(replicas, |v: &Vec<NodeId>| node_list_value(v));
    field!(checkpoint, |v: &Option<BlobHash>| v
        .map(|h| automerge::ScalarValue::from(h.to_hex())));
    field!(checkpoint_holders, |v: &Vec<NodeId>| node_list_value(v));
    field!(progress, |v: &Option<u8>| v
        .map(|p| automerge::ScalarValue::Uint(p.into())));
    field!(message, |v: &Option<String>| v
        .clone()
        .map(automerge::ScalarValue::from));
    field!(peak_memory_mb, |v: &Option<u64>| v
        .map(automerge::ScalarValue::Uint));
    field!(peak_cpu_percent, |v: &Option<u32>| v
        .map(|c| automerge::ScalarValue::Uint(c.into())));
    field!(image, |v: &Option<String>| v
        .clone()
        .map(automerge::ScalarValue::from));
    field!(backup, |v: &bool| v
        .then_some(automerge::ScalarValue::Boolean(true)));
    Ok(())
}
