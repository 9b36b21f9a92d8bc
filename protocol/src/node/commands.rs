//! What users ask of the node that changes the grid: processes, requests,
//! cancels, shared files, domains, access.

use crate::access::{AccessChange, AccessState};
use crate::api::{NewRequest, RequestInfo, SharedFileInfo};
use crate::doc::{RequestDoc, RequestIndex};
use crate::domain::Domain;
use crate::model::{Process, RequestSpec, SharedFile};
use crate::wire::DocKey;
use crate::{BlobHash, RequestId};

use super::action::Push;
use super::persist::SavedDoc;
use super::{Node, NodeError, Now, Req};

/// How many peers a submit asks to hold a copy.
const PUSH_FANOUT: usize = 3;

type Answer<T> = Result<T, NodeError>;

/// A request accepted here: what to answer, and whom to hand it to.
#[derive(Debug)]
pub struct Submitted {
    pub info: RequestInfo,
    /// Peers asked to hold a whole copy (none on a lone node).
    pub push: Option<Push>,
}

impl Node {
    pub fn put_process(&mut self, p: Process) -> Answer<Process> {
        self.grid.put_process(&p)?;
        self.grid_dirty = true;
        Ok(p)
    }

    pub fn change_access(&mut self, c: &AccessChange) -> Answer<()> {
        self.rescan = true;
        self.grid.change_access(c)?;
        self.grid_dirty = true;
        self.refresh_caps();
        Ok(())
    }

    pub fn access(&self) -> Answer<AccessState> {
        Ok(self.grid.access()?)
    }

    /// A shared file stored here: recorded in the grid, held by this node.
    pub fn put_file(&mut self, f: SharedFile) -> Answer<SharedFileInfo> {
        self.grid.put_file(&f)?;
        self.grid_dirty = true;
        self.record_holding(&f.hash);
        Ok(self.file_info(f))
    }

    /// This node now keeps a whole copy of a blob.
    pub fn hold_file(&mut self, hash: &BlobHash) {
        self.rescan = true;
        self.record_holding(hash);
    }

    /// New settings from the node's configuration (re-read without a
    /// restart): its name, the rooms it serves, its slots and its owner's policy.
    /// Running runs go on; the next scheduling pass uses them.
    pub fn reconfigure(
        &mut self,
        name: String,
        rooms: Vec<String>,
        slots: u32,
        policy: super::Policy,
    ) {
        if name != self.cfg.name {
            self.cfg.name = name;
            let mut rec = self
                .grid
                .nodes()
                .ok()
                .and_then(|ns| ns.into_iter().find(|n| n.id == self.cfg.node));
            if let Some(r) = rec.as_mut() {
                r.name = self.cfg.name.clone();
                match self.grid.put_node(r) {
                    Ok(()) => self.grid_dirty = true,
                    Err(e) => tracing::error!("cannot record the node's new name: {e}"),
                }
            }
        }
        self.cfg.rooms = rooms;
        self.base = (policy.clone(), slots);
        self.cfg.policy = policy;
        self.refresh_caps();
        self.rescan = true;
        self.stale.all = true;
    }

    /// Records a domain (checked already) in the grid.
    pub fn put_domain(&mut self, d: Domain) -> Answer<Domain> {
        self.grid.put_domain(&d)?;
        self.grid_dirty = true;
        Ok(d)
    }

    /// A new request of `owner`: its document, its line in the grid's
    /// index, and the peers to hand it to.
    pub fn submit(&mut self, now: Now, n: NewRequest, owner: String) -> Answer<Submitted> {
        self.rescan = true;
        let process = self.grid.process(&n.process)?.ok_or_else(|| {
            NodeError::NotFound(format!(
                "process {} does not exist: upload it first (pesc submit PATH, or POST /api/v1/processes)",
                n.process
            ))
        })?;
        let mut n = n;
        if n.sweep.is_none() {
            n.sweep = crate::api::SweepAsk::sweep(&n.sweep_params)?;
        }
        let repetitions = match &n.sweep {
            Some(s) => {
                s.check()?;
                u32::try_from(s.ranks(n.repetitions))
                    .ok()
                    .filter(|r| *r <= crate::limits::MAX_REPETITIONS)
                    .ok_or_else(|| {
                        NodeError::Invalid(format!(
                            "{} combinations × {} runs is more than {} runs",
                            s.rows.len(),
                            n.repetitions,
                            crate::limits::MAX_REPETITIONS
                        ))
                    })?
            }
            None => n.repetitions,
        };
        let spec = RequestSpec {
            id: RequestId::from_bytes(self.random().to_le_bytes()),
            owner,
            process,
            repetitions,
            parameters: n.parameters,
            rooms: n.rooms,
            inputs: n
                .shared_files
                .iter()
                .map(|name| self.shared_file(name))
                .collect::<Answer<Vec<_>>>()?,
            shared_files: n.shared_files,
            domain: n
                .domain
                .as_deref()
                .map(|d| {
                    let d = self.domain(d)?;
                    // Never a Dockerfile no operator approved.
                    d.usable()?;
                    Answer::Ok(d)
                })
                .transpose()?,
            limits: n.limits,
            gpu: n.gpu,
            parallel: n.parallel,
            same_node: n.same_node,
            retries: n.retries,
            checkpoint_retries: n.checkpoint_retries.unwrap_or(1),
            header: n.header,
            created_ms: now.wall_ms,
            sweep: n.sweep,
            seed: n.seed,
            backups: n.backups.unwrap_or(true),
        };
        self.submit_spec(now, spec)
    }

    /// Submits `id` again, exactly: the same process, domain and shared
    /// files (the same blobs, whatever their names hold now), parameters,
    /// sweep and seeds, as a new request of `owner` (who owned the first).
    pub fn rerun(
        &mut self,
        now: Now,
        prefix: &str,
        who: &crate::access::Principal,
    ) -> Answer<Submitted> {
        let owner = who.user.as_str();
        self.rescan = true;
        let id = self.resolve(prefix)?;
        // (An archived request is read back by the driver first.)
        let old = self
            .requests
            .get(&id)
            .map(|q| q.doc.spec().clone())
            .ok_or_else(|| NodeError::NotFound(format!("no request {id} on this grid")))?;
        if old.owner != owner {
            return Err(NodeError::Forbidden(format!(
                "request {id} is {}'s: only its owner reruns it",
                old.owner
            )));
        }
        // Still allowed in its rooms.
        crate::access::check_request_rooms(who, &old.rooms, &self.grid.rooms()?)?;
        let spec = RequestSpec {
            id: RequestId::from_bytes(self.random().to_le_bytes()),
            created_ms: now.wall_ms,
            seed: Some(old.seed()),
            ..old
        };
        self.submit_spec(now, spec)
    }

    /// Records a new request checked so far: its document, its line in the
    /// grid's index, and the peers to hand it to.
    fn submit_spec(&mut self, now: Now, spec: RequestSpec) -> Answer<Submitted> {
        spec.validate()?;
        let rooms = self.grid.rooms()?;
        if let Some(room) = spec
            .rooms
            .iter()
            .find(|r| !rooms.iter().any(|x| &x.name == *r))
        {
            return Err(NodeError::Invalid(format!("room '{room}' does not exist")));
        }
        let actor = self.actor();
        let mut doc = RequestDoc::create(spec.clone(), actor)?;
        self.grid.put_request(&RequestIndex {
            id: spec.id.clone(),
            owner: spec.owner.clone(),
            process: spec.process.id.clone(),
            repetitions: spec.repetitions,
            created_ms: spec.created_ms,
        })?;
        self.grid_dirty = true;
        let push = self.push_of(&mut doc, &spec);
        self.requests.insert(
            spec.id.clone(),
            Req::new(doc, SavedDoc::default(), true, now),
        );
        self.repl.urgent.insert(DocKey::Request(spec.id.clone()));
        tracing::info!(request = %spec.id, repetitions = spec.repetitions, "request submitted");
        let info = self
            .info(now, &spec.id, false)
            .ok_or_else(|| NodeError::Internal("the new request vanished".into()))?;
        Ok(Submitted { info, push })
    }

    /// A few connected peers, picked at random, to hand a new request to.
    fn push_of(&mut self, doc: &mut RequestDoc, spec: &RequestSpec) -> Option<Push> {
        let mut peers: Vec<_> = self.repl.connected.iter().cloned().collect();
        if peers.is_empty() {
            return None;
        }
        // Fisher–Yates with the node's own generator.
        for i in (1..peers.len()).rev() {
            let j = (self.random() % (i as u64 + 1)) as usize;
            peers.swap(i, j);
        }
        peers.truncate(PUSH_FANOUT);
        Some(Push {
            peers,
            doc: DocKey::Request(spec.id.clone()),
            data: doc.save(),
            blobs: vec![spec.process.code],
        })
    }

    /// Cancels a request (by id prefix): its queued runs never start, its
    /// running ones are stopped.
    pub fn cancel(&mut self, now: Now, prefix: &str) -> Answer<RequestInfo> {
        self.rescan = true;
        let id = self.resolve(prefix)?;
        if let Some(a) = self.archive.get(&id) {
            // Finished long ago: nothing to cancel.
            return Ok(a.info.clone());
        }
        let node = self.cfg.node.clone();
        let q = self
            .requests
            .get_mut(&id)
            .ok_or_else(|| NodeError::NotFound(format!("no request {id} on this grid")))?;
        if !q.doc.is_finished() {
            q.doc.cancel(&node, now.wall_ms)?;
            q.dirty = true;
            self.repl.urgent.insert(DocKey::Request(id.clone()));
            self.abandon_lost(now, &id);
            tracing::info!(request = %id, "request cancelled");
        }
        self.info(now, &id, false)
            .ok_or_else(|| NodeError::NotFound(format!("no request {id} on this grid")))
    }

    /// A shared file by name, or an error that says how to add it.
    pub fn shared_file(&self, name: &str) -> Answer<SharedFile> {
        self.grid.file(name)?.ok_or_else(|| {
            NodeError::NotFound(format!(
                "there is no shared file '{name}': add it with `pesc files add PATH --name {name}` (see `pesc files list`)"
            ))
        })
    }

    /// A domain by name, or an error that says how to make it.
    pub fn domain(&self, name: &str) -> Answer<Domain> {
        self.grid.domain(name)?.ok_or_else(|| {
            NodeError::NotFound(format!(
                "there is no domain '{name}': make it with `pesc domains add {name} --template T` (see `pesc domains list`)"
            ))
        })
    }
}
