//! History does not slow the present: a request finished a while ago is
//! archived. Its document leaves memory (it stays on disk), it is no
//! longer walked by scheduling nor offered to every peer that connects; a
//! summary stays, so it is still listed, counted, searched, and its results
//! kept. Whatever needs the document again (its runs, its results, a peer
//! that asks for it) has the driver read it back with
//! [`Node::restore`]; it is archived again once quiet.

use serde::{Deserialize, Serialize};

use crate::api::RequestInfo;
use crate::wire::DocKey;
use crate::{BlobHash, RequestId};

use super::persist::{DocWrite, StoredDoc};
use super::{Node, Now, Req};

/// How often the node looks for requests to archive.
const ARCHIVE_CHECK_MS: u64 = 5_000;

/// What stays of an archived request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArchivedRequest {
    /// As listed (no runs).
    pub info: RequestInfo,
    /// Blobs of its results this node keeps (it holds one of their first
    /// two copies).
    pub keep: Vec<BlobHash>,
}

impl Node {
    /// Whether request `id` is archived here.
    pub fn is_archived(&self, id: &RequestId) -> bool {
        self.archive.contains_key(id)
    }

    /// The store key of a request's document.
    pub fn doc_key(id: &RequestId) -> String {
        format!("req/{id}")
    }

    /// Brings an archived request back into memory from its stored
    /// document (read by the driver).
    pub fn restore(&mut self, now: Now, doc: StoredDoc) -> Result<(), super::NodeError> {
        let id = doc
            .key
            .strip_prefix("req/")
            .and_then(|s| s.parse::<RequestId>().ok())
            .ok_or_else(|| super::NodeError::Invalid(format!("{} is not a request", doc.key)))?;
        if self.requests.contains_key(&id) {
            return Ok(());
        }
        let actor = self.actor();
        let rd = crate::doc::RequestDoc::load(&doc.bytes, actor).map_err(|e| {
            super::NodeError::Internal(format!("archived request {id} cannot be read: {e}"))
        })?;
        self.archive.remove(&id);
        self.archive_writes.push(DocWrite::Archive {
            key: doc.key,
            summary: None,
        });
        self.finished_since.insert(id.clone(), now.mono_ms);
        self.read_stale(&id);
        self.requests
            .insert(id, Req::new(rd, doc.saved, false, now));
        Ok(())
    }

    /// Archives the requests finished and quiet for the configured time.
    pub(super) fn archive_quiet(&mut self, now: Now) {
        if now.mono_ms < self.next_archive {
            return;
        }
        self.next_archive = now.mono_ms + ARCHIVE_CHECK_MS;
        let after = self.cfg.archive_after_ms;
        let mut due = Vec::new();
        for (id, q) in &self.requests {
            if !q.doc.is_finished() || q.dirty || self.running.keys().any(|k| &k.0 == id) {
                self.finished_since.remove(id);
                continue;
            }
            let since = *self.finished_since.entry(id.clone()).or_insert(now.mono_ms);
            if now.mono_ms >= since + after {
                due.push(id.clone());
            }
        }
        for id in due {
            self.archive_one(now, &id);
        }
    }

    fn archive_one(&mut self, now: Now, id: &RequestId) {
        let Some(info) = self.info(now, id, false) else {
            return;
        };
        let me = &self.cfg.node;
        let keep = self
            .requests
            .get(id)
            .map(|q| {
                q.doc
                    .all_attempts()
                    .filter(|a| {
                        if a.replicas.is_empty() {
                            &a.node == me
                        } else {
                            a.replicas.iter().take(2).any(|n| n == me)
                        }
                    })
                    .flat_map(|a| [a.output, a.stdout, a.stderr].into_iter().flatten())
                    .collect()
            })
            .unwrap_or_default();
        let summary = ArchivedRequest { info, keep };
        let Ok(json) = serde_json::to_vec(&summary) else {
            return;
        };
        self.requests.remove(id);
        self.finished_since.remove(id);
        self.sightings.forget_request(id);
        self.repl.forget(&DocKey::Request(id.clone()));
        self.archive_writes.push(DocWrite::Archive {
            key: Self::doc_key(id),
            summary: Some(json),
        });
        self.archive.insert(id.clone(), summary);
        self.read_stale(id);
    }
}
