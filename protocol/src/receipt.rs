//! `receipt.json`: what a finished request ran, exactly — the process's
//! content hash, the domain's hash and the image each node used, every
//! shared file's hash, parameters, sweep, seeds, and per rank the node,
//! attempt, exit code and output hash — so a result can be rerun from the
//! same blobs (`pesc rerun`) and two runs compared (`pesc verify`).
//!
//! A rank's output hash is its output archive's: the node packs `output/`
//! without timestamps and in name order, so the same files give the same
//! hash.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{Attempt, RequestSpec};
use crate::{BlobHash, NodeId, RequestId};

/// The receipt's format.
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub format: u32,
    pub request: RequestId,
    pub owner: String,
    pub created_ms: u64,
    pub process: ProcessPart,
    pub domain: Option<DomainPart>,
    /// Shared files by name: their content hash.
    pub shared_files: BTreeMap<String, BlobHash>,
    pub parameters: Vec<String>,
    pub sweep: Option<crate::sweep::Sweep>,
    /// Runs of each combination (all runs without a sweep).
    pub repetitions: u32,
    /// What every rank's `PESC_SEED` is derived from.
    pub seed: u64,
    pub ranks: Vec<RankPart>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessPart {
    pub id: crate::ProcessId,
    pub name: String,
    pub file_name: String,
    pub entry: String,
    /// BLAKE3 of the uploaded code.
    pub code: BlobHash,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainPart {
    pub name: String,
    /// BLAKE3 of its Dockerfile and requirements.txt (the image's tag).
    pub hash: String,
    /// BLAKE3 of the Dockerfile alone.
    pub dockerfile: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankPart {
    pub rank: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    pub seed: u32,
    pub node: Option<NodeId>,
    /// The attempt that stands for it (its epoch).
    pub attempt: Option<u32>,
    pub exit_code: Option<i32>,
    pub output: Option<BlobHash>,
    pub stdout: Option<BlobHash>,
    /// The container image the node ran it in (its id), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

impl Receipt {
    /// The receipt of a request from its spec and each rank's attempt.
    pub fn of(spec: &RequestSpec, attempts: &[Option<Attempt>]) -> Receipt {
        let per = spec.per_combination();
        Receipt {
            format: FORMAT,
            request: spec.id.clone(),
            owner: spec.owner.clone(),
            created_ms: spec.created_ms,
            process: ProcessPart {
                id: spec.process.id.clone(),
                name: spec.process.name.clone(),
                file_name: spec.process.file_name.clone(),
                entry: spec.process.entry.clone(),
                code: spec.process.code,
            },
            domain: spec.domain.as_ref().map(|d| DomainPart {
                name: d.name.clone(),
                hash: d.hash.clone(),
                dockerfile: blake3::hash(d.dockerfile.as_bytes()).to_hex().to_string(),
            }),
            shared_files: spec
                .inputs
                .iter()
                .map(|f| (f.name.clone(), f.hash))
                .collect(),
            parameters: spec.parameters.clone(),
            sweep: spec.sweep.clone(),
            repetitions: per,
            seed: spec.seed(),
            ranks: (0..spec.repetitions)
                .map(|rank| {
                    let a = attempts.get(rank as usize).and_then(Option::as_ref);
                    RankPart {
                        rank,
                        values: spec
                            .point(rank)
                            .map(|p| p.values.to_vec())
                            .unwrap_or_default(),
                        seed: crate::sweep::rank_seed(spec.seed(), rank),
                        node: a.map(|a| a.node.clone()),
                        attempt: a.map(|a| a.epoch),
                        exit_code: a.and_then(|a| a.exit_code),
                        output: a.and_then(|a| a.output),
                        stdout: a.and_then(|a| a.stdout),
                        image: a.and_then(|a| a.image.clone()),
                    }
                })
                .collect(),
        }
    }
}

/// How two receipts compare, rank by rank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comparison {
    /// They ran the same code, domain, shared files, parameters, sweep and
    /// seeds (else what differs).
    pub same_inputs: Vec<String>,
    /// Ranks whose output archives differ (or that one of them lacks).
    pub outputs_differ: Vec<u32>,
    /// Ranks whose standard output differs.
    pub stdout_differs: Vec<u32>,
    pub ranks: u32,
}

impl Comparison {
    pub fn identical(&self) -> bool {
        self.same_inputs.is_empty() && self.outputs_differ.is_empty()
    }
}

/// Compares two receipts.
pub fn compare(a: &Receipt, b: &Receipt) -> Comparison {
    let mut differ = Vec::new();
    if a.process.code != b.process.code {
        differ.push("the process's code".to_string());
    }
    if a.domain.as_ref().map(|d| &d.hash) != b.domain.as_ref().map(|d| &d.hash) {
        differ.push("the domain".into());
    }
    if a.shared_files != b.shared_files {
        differ.push("the shared files".into());
    }
    if a.parameters != b.parameters || a.sweep != b.sweep || a.repetitions != b.repetitions {
        differ.push("the parameters or sweep".into());
    }
    if a.seed != b.seed {
        differ.push("the seeds".into());
    }
    let n = a.ranks.len().max(b.ranks.len());
    let (mut outputs, mut stdouts) = (Vec::new(), Vec::new());
    for rank in 0..n {
        let (x, y) = (a.ranks.get(rank), b.ranks.get(rank));
        let out = |r: Option<&RankPart>| r.and_then(|r| r.output);
        let so = |r: Option<&RankPart>| r.and_then(|r| r.stdout);
        if x.is_none() || y.is_none() || out(x) != out(y) {
            outputs.push(rank as u32);
        }
        if so(x) != so(y) {
            stdouts.push(rank as u32);
        }
    }
    Comparison {
        same_inputs: differ,
        outputs_differ: outputs,
        stdout_differs: stdouts,
        ranks: n as u32,
    }
}
