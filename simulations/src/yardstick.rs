//! What a perfect central queue would reach with the same nodes, the same
//! runs and the same switch-offs: the yardstick that tells the protocol's cost
//! from the workload's.
//!
//! The queue has no latency, no claims and no leases: the moment a slot is
//! free it gets the next run its node may take, and it learns of a node going
//! off at once (the cut run goes back to the front of the queue). In rank
//! order it is what any scheduler that does not know run times can hope for;
//! longest first, it knows every run's time in advance, which neither PESC
//! nor HTCondor nor BOINC does.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use pesc_protocol::schedule::eligible;

use crate::engine::{NEVER, Sim};

/// The order in which the central queue hands runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Requests by submission, ranks in order: no knowledge of run times.
    Rank,
    /// The longest runs first among those submitted (clairvoyant).
    LongestFirst,
}

/// When the central queue finishes every run (`NEVER`: some run has no node
/// left that may take it). Slots are served in the order they come free;
/// each takes a run of the eligible submitted request whose owner has the
/// fewest runs going (fair share, as the nodes pick), runs cut by a
/// switch-off first.
pub fn central_queue_end(sim: &Sim, order: Order) -> u64 {
    struct Queue {
        owner: usize,
        submit: u64,
        /// Ranks not yet handed out, next at the back.
        todo: Vec<u32>,
        /// Runs cut by a switch-off: (when it may run again, rank).
        cut: BinaryHeap<Reverse<(u64, u32)>>,
        /// Work per rank its checkpoint keeps (as in the simulation).
        saved: Vec<f64>,
    }
    let mut owners: Vec<&str> = Vec::new();
    let mut queues: Vec<Queue> = Vec::new();
    for q in &sim.reqs {
        let owner = match owners.iter().position(|o| *o == q.spec.owner) {
            Some(o) => o,
            None => {
                owners.push(&q.spec.owner);
                owners.len() - 1
            }
        };
        let mut todo: Vec<u32> = (0..q.spec.repetitions).collect();
        match order {
            Order::Rank => todo.reverse(),
            Order::LongestFirst => todo.sort_unstable_by_key(|&r| (q.work[r as usize], Reverse(r))),
        }
        queues.push(Queue {
            owner,
            submit: q.submit_t,
            todo,
            cut: BinaryHeap::new(),
            saved: vec![0.0; q.spec.repetitions as usize],
        });
    }
    let may: Vec<Vec<usize>> = sim
        .nodes
        .iter()
        .map(|n| {
            (0..sim.reqs.len())
                .filter(|&q| eligible(&sim.reqs[q].spec, &n.caps))
                .collect()
        })
        .collect();
    let mut slots: BinaryHeap<Reverse<(u64, u32)>> = sim
        .nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| (0..n.slots).map(move |_| Reverse((0, i as u32))))
        .collect();
    // Slots that found nothing and nothing coming: woken when a run is cut.
    let mut parked: Vec<u32> = Vec::new();
    let mut going = vec![0u32; owners.len()];
    let mut finishing: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut left: u64 = queues.iter().map(|q| q.todo.len() as u64).sum();
    let mut end = 0;
    while left > 0 {
        let Some(Reverse((t, node))) = slots.pop() else {
            return NEVER;
        };
        while let Some(&Reverse((f, o))) = finishing.peek() {
            if f > t {
                break;
            }
            finishing.pop();
            going[o] -= 1;
        }
        let n = &sim.sc.nodes[node as usize];
        let off = &n.avail.off;
        let i = off.partition_point(|&(_, u)| u <= t);
        let next_off = off.get(i).copied();
        if let Some((d, u)) = next_off
            && d <= t
        {
            // Off now: the slot comes back when the node does.
            if u != NEVER {
                slots.push(Reverse((u, node)));
            }
            continue;
        }
        let ready = |q: &Queue| {
            q.submit <= t && (q.cut.peek().is_some_and(|c| c.0.0 <= t) || !q.todo.is_empty())
        };
        let pick = may[node as usize]
            .iter()
            .copied()
            .filter(|&q| ready(&queues[q]))
            .min_by_key(|&q| (going[queues[q].owner], queues[q].submit, q));
        let Some(qi) = pick else {
            // Nothing now: look again when something it may take is due.
            let due = may[node as usize]
                .iter()
                .filter_map(|&q| {
                    let q = &queues[q];
                    let c = q.cut.peek().map(|c| c.0.0.max(q.submit));
                    let fresh = (!q.todo.is_empty()).then_some(q.submit);
                    c.into_iter().chain(fresh).min()
                })
                .filter(|&d| d > t)
                .min();
            match due {
                Some(d) => slots.push(Reverse((d, node))),
                None => parked.push(node),
            }
            continue;
        };
        let q = &mut queues[qi];
        let rank = match q.cut.peek() {
            Some(&Reverse((at, r))) if at <= t => {
                q.cut.pop();
                r
            }
            _ => q.todo.pop().expect("ready"),
        };
        let start = t + sim.sc.timing.start_overhead_ms;
        let total = f64::from(sim.reqs[qi].work[rank as usize]);
        let work = total - q.saved[rank as usize];
        let finish = start + (work / n.speed).ceil() as u64;
        match next_off {
            // Cut by a switch-off: the run goes back first in line, with
            // what its checkpoint kept.
            Some((d, u)) if d < finish => {
                let kept = sim.sc.timing.kept_ms(d.saturating_sub(start)) as f64 * n.speed;
                let s = &mut q.saved[rank as usize];
                *s = (*s + kept).min(total - 1.0);
                q.cut.push(Reverse((d, rank)));
                if u != NEVER {
                    slots.push(Reverse((u, node)));
                }
                for p in parked.drain(..) {
                    slots.push(Reverse((d, p)));
                }
            }
            _ => {
                going[q.owner] += 1;
                finishing.push(Reverse((finish, q.owner)));
                slots.push(Reverse((finish, node)));
                end = end.max(finish);
                left -= 1;
            }
        }
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::NetModel;
    use crate::scenario::{Durations, NodeSpec, RequestPlan, Scenario, Timing};

    fn two_nodes(works: &[u32], a_off: Option<(u64, u64)>) -> Sim {
        let mut nodes = vec![NodeSpec::new(1, 1.0), NodeSpec::new(1, 1.0)];
        if let Some((d, u)) = a_off {
            nodes[0].avail.add(d, u);
        }
        let sc = Scenario {
            name: "yardstick".into(),
            description: String::new(),
            seed: 1,
            nodes,
            requests: vec![RequestPlan::new(
                0,
                "ana",
                works.len() as u32,
                Durations::Fixed(1.0),
            )],
            net: NetModel::lan(1),
            timing: Timing::default(),
            time_limit_ms: 3_600_000,
            check_every_step: false,
            sample_ms: 60_000,
            reference: None,
            notes: Vec::new(),
            progress: false,
            load_order: true,
            backups: true,
        };
        let mut sim = Sim::new(sc);
        sim.reqs[0].work = works.to_vec();
        sim
    }

    #[test]
    fn rank_order_leaves_a_late_long_run_and_longest_first_does_not() {
        let sim = two_nodes(&[1000, 1000, 1000, 3000], None);
        // 15 ms to start each run. In rank order the long run starts last.
        assert_eq!(central_queue_end(&sim, Order::Rank), 1030 + 3000);
        assert_eq!(central_queue_end(&sim, Order::LongestFirst), 2045 + 1000);
    }

    #[test]
    fn a_cut_run_goes_back_first_in_line() {
        // The first node goes off at 0.5 s for good while running rank 0:
        // the other node runs rank 1, then rank 0 again.
        let sim = two_nodes(&[1000, 1000], Some((500, NEVER)));
        assert_eq!(central_queue_end(&sim, Order::Rank), 1030 + 1000);
        // Nobody may take the runs: never.
        let mut sim = two_nodes(&[1000, 1000, 1000], Some((0, NEVER)));
        sim.sc.nodes[1].avail.add(0, NEVER);
        assert_eq!(central_queue_end(&sim, Order::Rank), NEVER);
    }

    #[test]
    fn a_cut_run_resumes_from_its_checkpoint() {
        // Snapshots every 200 ms: rank 0 ran 485 ms before the cut, its
        // snapshot at 400 ms keeps 400; the other node runs the last 600.
        let mut sim = two_nodes(&[1000, 1000], Some((500, NEVER)));
        sim.sc.timing.checkpoint_ms = 200;
        assert_eq!(central_queue_end(&sim, Order::Rank), 1030 + 600);
    }
}
