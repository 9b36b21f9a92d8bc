//! The scheduling policy: which claimable runs this node takes for its free slots.
//!
//! Per-user fair share: each free slot goes to the user with the fewest runs
//! in progress on the grid (counting the ones picked in this round), so a user
//! with 1 200 queued runs does not starve a user who submits 5 later. Within
//! a user, older requests first, then lower ranks.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use crate::ids::{NodeId, RequestId};
use crate::isolation::IsolationLevel;
use crate::model::{GENERAL_ROOM, RequestSpec};

/// A run this node could claim now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub request: RequestId,
    pub owner: String,
    pub created_ms: u64,
    pub rank: u32,
    /// The epoch the claim must use.
    pub epoch: u32,
}

impl Candidate {
    fn order_key(&self) -> (u64, &RequestId, u32) {
        (self.created_ms, &self.request, self.rank)
    }
}

/// Picks at most `slots` candidates by per-user fair share.
/// `in_progress` counts each user's runs currently claimed or running on the grid.
pub fn pick(
    mut candidates: Vec<Candidate>,
    in_progress: &BTreeMap<String, u32>,
    slots: usize,
) -> Vec<Candidate> {
    if slots == 0 || candidates.is_empty() {
        return Vec::new();
    }
    candidates.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    let mut queues: BTreeMap<String, VecDeque<Candidate>> = BTreeMap::new();
    for c in candidates {
        queues.entry(c.owner.clone()).or_default().push_back(c);
    }
    // Min-heap on (load, oldest waiting request, owner): deterministic ties.
    let mut heap: BinaryHeap<Reverse<(u32, u64, String)>> = queues
        .iter()
        .map(|(owner, q)| {
            let load = in_progress.get(owner).copied().unwrap_or(0);
            Reverse((load, q[0].created_ms, owner.clone()))
        })
        .collect();
    let mut out = Vec::with_capacity(slots);
    while out.len() < slots {
        let Some(Reverse((load, _, owner))) = heap.pop() else {
            break;
        };
        let Some(q) = queues.get_mut(&owner) else {
            continue;
        };
        let Some(c) = q.pop_front() else { continue };
        out.push(c);
        if let Some(next) = q.front() {
            heap.push(Reverse((load + 1, next.created_ms, owner)));
        }
    }
    out
}

/// Where `node` starts looking for runs of a request: a hash of both, so
/// nodes spread over the ranks instead of all claiming the lowest (claim
/// races stay rare however many nodes scan at once).
pub fn scan_start(node: &NodeId, req: &RequestId, repetitions: u32) -> u32 {
    hash64(&format!("{node}/{req}")) as u32 % repetitions.max(1)
}

/// The first 8 bytes of the BLAKE3 hash of `text`, little-endian: the same
/// number on every machine, for the choices nodes make apart but alike.
pub(crate) fn hash64(text: &str) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&blake3::hash(text.as_bytes()).as_bytes()[..8]);
    u64::from_le_bytes(b)
}

/// Base of the pause after a lost claim race.
pub const RACE_BACKOFF_MS: u64 = 500;

/// How long a node that lost `losses` claim races in a row (and none won
/// since) waits before claiming again: nothing after one (races happen in
/// any grid), then random by its id and `salt` in
/// `[0, RACE_BACKOFF_MS × 2^(losses − 2))`, doubling up to 32 × the base.
/// When a large grid runs out of queued runs, thousands of idle nodes chase
/// the last few; a loser that claimed again at once would lose again, and
/// each of its claims costs every node a document change.
pub fn race_backoff_ms(node: &NodeId, losses: u32, salt: u64) -> u64 {
    if losses < 2 {
        return 0;
    }
    let window = RACE_BACKOFF_MS << (losses - 2).min(5);
    hash64(&format!("{node}/{losses}/{salt}")) % window
}

/// A rank's place in a scan that starts at `start` and wraps around.
pub fn scan_position(rank: u32, start: u32, repetitions: u32) -> u32 {
    if rank >= start {
        rank - start
    } else {
        rank + (repetitions - start)
    }
}

/// What a node offers, as far as placement cares.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeCaps {
    /// Named rooms the node belongs to.
    pub rooms: Vec<String>,
    /// Kept to its named room: a room admin put it there without leaving
    /// it in General, so it does not serve General.
    pub private: bool,
    /// GPUs the node has.
    pub gpus: u32,
    /// The node runs user code in containers (it can build domains).
    pub containers: bool,
    /// How it walls runs in.
    pub isolation: IsolationLevel,
    /// The grid's minimum isolation, as this node's grid document says.
    pub min_isolation: IsolationLevel,
    /// The highest CUDA compute capability among its GPUs (0 without).
    pub gpu_capability: f32,
}

/// Whether a node may run a request's ranks: its isolation meets the grid's
/// minimum, it is in one of the request's rooms (none given means General),
/// has the GPUs each run needs, and runs containers if the request names a
/// domain.
pub fn eligible(spec: &RequestSpec, caps: &NodeCaps) -> bool {
    if !caps.isolation.meets(caps.min_isolation) {
        return false;
    }
    let in_room = spec.effective_rooms().iter().any(|r| serves_room(caps, r));
    let gpus_fit = spec.gpu.count == 0
        || (caps.gpus >= spec.gpu.count
            && spec
                .gpu
                .min_capability
                .is_none_or(|c| caps.gpu_capability >= c));
    // A domain no operator approved is never built, whoever wrote the
    // request (a peer's copy of it included).
    let domain_ok = spec
        .domain
        .as_ref()
        .is_none_or(|d| caps.containers && d.usable().is_ok());
    in_room && gpus_fit && domain_ok
}

/// Whether a node takes requests of `room`.
pub fn serves_room(caps: &NodeCaps, room: &str) -> bool {
    (room == GENERAL_ROOM && !caps.private) || caps.rooms.iter().any(|c| c == room)
}

/// What one node offers now, as far as a waiting run is concerned.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeOffer {
    pub name: String,
    pub caps: NodeCaps,
    pub slots_free: u32,
    /// The owner's policy keeps it from taking runs.
    pub paused: bool,
    /// Paused because its owner is at the desktop.
    pub owner_here: bool,
    /// Why its last look left a run for lack of memory or CPU.
    pub no_room: Option<String>,
}

/// Why a request's queued runs are not running, in plain words, from what
/// this node knows of the others (its own state and its neighbours'
/// heartbeats).
pub fn why_waiting(spec: &RequestSpec, nodes: &[NodeOffer]) -> String {
    if let Some(Err(e)) = spec.domain.as_ref().map(|d| d.usable()) {
        return e.to_string();
    }
    let rooms = spec.effective_rooms();
    let in_room: Vec<&NodeOffer> = nodes
        .iter()
        .filter(|n| rooms.iter().any(|r| serves_room(&n.caps, r)))
        .collect();
    if in_room.is_empty() {
        return format!("no node known here serves room {}", rooms.join(" or "));
    }
    let (in_room, below): (Vec<&NodeOffer>, Vec<&NodeOffer>) = in_room
        .into_iter()
        .partition(|n| n.caps.isolation.meets(n.caps.min_isolation));
    if in_room.is_empty() {
        let min = below
            .first()
            .map(|n| n.caps.min_isolation)
            .unwrap_or_default();
        return format!(
            "no node in room {} isolates runs as well as the grid's minimum ({min}): {}",
            rooms.join(" or "),
            below
                .iter()
                .map(|n| format!("{} has {}", n.name, n.caps.isolation))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let g = &spec.gpu;
    let with_gpus: Vec<&NodeOffer> = in_room
        .iter()
        .copied()
        .filter(|n| {
            g.count == 0
                || (n.caps.gpus >= g.count
                    && g.min_capability.is_none_or(|c| n.caps.gpu_capability >= c))
        })
        .collect();
    if with_gpus.is_empty() {
        let cap = g
            .min_capability
            .map(|c| format!(" of compute capability ≥ {c}"))
            .unwrap_or_default();
        return format!(
            "no node in room {} has {} GPU(s){cap}",
            rooms.join(" or "),
            g.count
        );
    }
    let able: Vec<&NodeOffer> = with_gpus
        .iter()
        .copied()
        .filter(|n| spec.domain.is_none() || n.caps.containers)
        .collect();
    if able.is_empty() {
        return "it needs a domain (a container image) and no node that could run it runs Docker"
            .into();
    }
    let open: Vec<&&NodeOffer> = able.iter().filter(|n| !n.paused).collect();
    if open.is_empty() {
        let owners = able.iter().filter(|n| n.owner_here).count();
        let busy = able.len() - owners;
        let mut parts = Vec::new();
        if owners > 0 {
            parts.push(match owners {
                1 => "1 desktop is in use by its owner".to_string(),
                n => format!("{n} desktops are in use by their owners"),
            });
        }
        if busy > 0 {
            parts.push(format!("{busy} busy with their owners' work"));
        }
        return format!(
            "every node that can run it is paused for its owner: {} ({})",
            parts.join(", "),
            able.iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let roomy: Vec<&&&NodeOffer> = open.iter().filter(|n| n.slots_free > 0).collect();
    if !roomy.is_empty() && roomy.iter().all(|n| n.no_room.is_some()) {
        return format!(
            "no node with a free slot has room for it now: {}",
            roomy
                .iter()
                .map(|n| format!("{}: {}", n.name, n.no_room.as_deref().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    if open.iter().all(|n| n.slots_free == 0) {
        return format!(
            "every node that can run it is busy ({} node(s), no free slot)",
            open.len()
        );
    }
    "a node with a free slot will take it at its next look".into()
}

/// How long a node that lacks a request's shared files leaves its runs to
/// nodes that already hold them (when one of those is alive), so inputs are
/// not copied to a new node while a node that has them could start at once.
pub const INPUT_WAIT_MS: u64 = 1_000;

/// Whether a node waits before claiming runs of a request with shared
/// files: it lacks some, a node that holds them all is alive, and it has
/// seen the request for less than [`INPUT_WAIT_MS`].
pub fn waits_for_inputs(lacks_inputs: bool, holder_alive: bool, seen_for_ms: u64) -> bool {
    lacks_inputs && holder_alive && seen_for_ms < INPUT_WAIT_MS
}

#[cfg(test)]
mod eligibility_tests {
    use super::*;
    use crate::model::GpuNeeds;

    fn spec(gpus: u32, min: Option<f32>, domain: bool) -> RequestSpec {
        let mut s: RequestSpec = serde_json::from_value(serde_json::json!({
            "id": "0000000000000001", "owner": "a", "repetitions": 1, "created_ms": 0,
            "process": {"id": "0000000000000002", "name": "p", "kind": "file", "file_name": "m.py",
                "code": "00".repeat(32), "size": 1, "language": "python", "entry": "m.py",
                "entry_is_command": false, "owner": "a", "created_ms": 0}
        }))
        .unwrap();
        s.gpu = GpuNeeds {
            count: gpus,
            min_capability: min,
        };
        if domain {
            s.domain = Some(crate::domain::Domain::new("d", "FROM x\n", "", None, "a", 0).unwrap());
        }
        s
    }

    #[test]
    fn waiting_runs_say_what_no_node_offers() {
        let node = |name: &str, caps: NodeCaps, free: u32, paused: bool| NodeOffer {
            name: name.into(),
            caps,
            slots_free: free,
            paused,
            owner_here: false,
            no_room: None,
        };
        let gpu = NodeCaps {
            gpus: 1,
            gpu_capability: 7.5,
            containers: true,
            ..Default::default()
        };
        let plain = NodeCaps::default();
        let mut roomy = spec(0, None, false);
        roomy.rooms = vec!["stats".into()];
        assert_eq!(
            why_waiting(&roomy, &[node("a", plain.clone(), 1, false)]),
            "no node known here serves room stats"
        );
        assert_eq!(
            why_waiting(
                &spec(1, Some(8.0), false),
                &[node("a", gpu.clone(), 1, false)]
            ),
            "no node in room General has 1 GPU(s) of compute capability ≥ 8"
        );
        assert!(
            why_waiting(&spec(0, None, true), &[node("a", plain.clone(), 1, false)])
                .contains("runs Docker")
        );
        assert!(
            why_waiting(
                &spec(1, None, false),
                &[node("lab-3", gpu.clone(), 1, true)]
            )
            .contains("1 busy with their owners' work (lab-3)")
        );
        let here = |name: &str| NodeOffer {
            owner_here: true,
            ..node(name, gpu.clone(), 1, true)
        };
        let why = why_waiting(&spec(1, None, false), &[here("lab-3"), here("lab-4")]);
        assert!(
            why.contains("2 desktops are in use by their owners (lab-3, lab-4)"),
            "{why}"
        );
        let full = NodeOffer {
            no_room: Some("each run needs about 4096 MiB".into()),
            ..node("lab-5", plain.clone(), 2, false)
        };
        let why = why_waiting(&spec(0, None, false), &[full]);
        assert!(
            why.contains("no node with a free slot has room for it now: lab-5: each run needs"),
            "{why}"
        );
        assert!(
            why_waiting(&spec(0, None, false), &[node("a", plain.clone(), 0, false)])
                .contains("busy (1 node(s)")
        );
        assert!(
            why_waiting(&spec(0, None, false), &[node("a", plain, 2, false)]).contains("free slot")
        );
    }

    #[test]
    fn a_node_below_the_grids_minimum_isolation_runs_nothing_and_says_so() {
        let bare = NodeCaps {
            isolation: IsolationLevel::None,
            ..Default::default()
        };
        assert!(!eligible(&spec(0, None, false), &bare));
        let lenient = NodeCaps {
            min_isolation: IsolationLevel::None,
            ..bare.clone()
        };
        assert!(eligible(&spec(0, None, false), &lenient));
        let strict = NodeCaps {
            min_isolation: IsolationLevel::Containers,
            ..Default::default()
        };
        assert!(!eligible(&spec(0, None, false), &strict));
        let offer = |name: &str, caps: NodeCaps| NodeOffer {
            name: name.into(),
            caps,
            slots_free: 1,
            paused: false,
            owner_here: false,
            no_room: None,
        };
        let why = why_waiting(&spec(0, None, false), &[offer("lab-1", bare)]);
        assert_eq!(
            why,
            "no node in room General isolates runs as well as the grid's minimum (sandbox): lab-1 has none"
        );
    }

    #[test]
    fn gpus_capability_and_containers_decide_who_may_run_a_request() {
        let plain = NodeCaps::default();
        let gpu = NodeCaps {
            gpus: 2,
            gpu_capability: 8.6,
            containers: true,
            ..Default::default()
        };
        assert!(eligible(&spec(0, None, false), &plain));
        assert!(!eligible(&spec(1, None, false), &plain));
        assert!(eligible(&spec(2, Some(8.0), false), &gpu));
        assert!(!eligible(&spec(3, None, false), &gpu));
        assert!(!eligible(&spec(1, Some(9.0), false), &gpu));
        assert!(!eligible(&spec(0, None, true), &plain));
        assert!(eligible(&spec(0, None, true), &gpu));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(owner: &str, req: u8, created: u64, n: u32) -> Vec<Candidate> {
        (0..n)
            .map(|rank| Candidate {
                request: RequestId::from_bytes([req; 8]),
                owner: owner.into(),
                created_ms: created,
                rank,
                epoch: 0,
            })
            .collect()
    }

    #[test]
    fn late_small_user_is_not_starved() {
        let mut c = cands("ana", 1, 0, 1200);
        c.extend(cands("bia", 2, 1000, 5));
        let mut busy = BTreeMap::new();
        busy.insert("ana".to_string(), 8);
        let got = pick(c, &busy, 8);
        let bia = got.iter().filter(|c| c.owner == "bia").count();
        assert_eq!(bia, 5, "bia's 5 runs all start before ana gets more");
        assert_eq!(got.len(), 8);
    }

    #[test]
    fn within_a_user_oldest_request_then_rank() {
        let mut c = cands("ana", 2, 50, 3);
        c.extend(cands("ana", 1, 10, 3));
        let got = pick(c, &BTreeMap::new(), 4);
        let order: Vec<_> = got
            .iter()
            .map(|c| (c.request.as_str()[..2].to_string(), c.rank))
            .collect();
        assert_eq!(
            order,
            vec![
                ("01".into(), 0),
                ("01".into(), 1),
                ("01".into(), 2),
                ("02".into(), 0)
            ]
        );
    }

    #[test]
    fn scans_wrap_and_spread() {
        let r = RequestId::from_bytes([3; 8]);
        let starts: std::collections::BTreeSet<u32> = (0..50)
            .map(|i| scan_start(&NodeId::new(format!("n{i}")), &r, 1000))
            .collect();
        assert!(starts.len() > 40, "50 nodes start at different places");
        assert_eq!(scan_position(7, 7, 10), 0);
        assert_eq!(scan_position(2, 7, 10), 5);
    }

    #[test]
    fn losers_back_off_longer_each_time_and_not_in_step() {
        let a = NodeId::new("a");
        let b = NodeId::new("b");
        assert_eq!(race_backoff_ms(&a, 0, 7), 0);
        assert_eq!(race_backoff_ms(&a, 1, 7), 0, "one lost race is no herd");
        for losses in 2..9 {
            let cap = RACE_BACKOFF_MS << (losses - 2).min(5);
            for salt in 0..50 {
                assert!(race_backoff_ms(&a, losses, salt) < cap);
            }
        }
        // Deterministic, and different nodes pause differently.
        assert_eq!(race_backoff_ms(&a, 3, 9), race_backoff_ms(&a, 3, 9));
        let same = (0..50)
            .filter(|&s| race_backoff_ms(&a, 3, s) == race_backoff_ms(&b, 3, s))
            .count();
        assert!(same < 3, "{same}");
    }

    #[test]
    fn no_slots_no_picks() {
        assert!(pick(cands("a", 1, 0, 3), &BTreeMap::new(), 0).is_empty());
    }

    #[test]
    fn nodes_without_the_inputs_wait_only_while_a_holder_lives() {
        assert!(waits_for_inputs(true, true, 0));
        assert!(!waits_for_inputs(true, true, INPUT_WAIT_MS));
        assert!(!waits_for_inputs(false, true, 0));
        assert!(!waits_for_inputs(true, false, 0));
    }
}
