//! Settings admins give this node through the grid document
//! (`crate::node_settings`), laid over its own configuration, and slots
//! that change while runs go on.

use crate::node_settings;

use super::Node;
use super::action::Action;

impl Node {
    /// Lays the grid's settings for this node over its configuration:
    /// the owner's policy and the slots apply at once.
    pub(super) fn apply_settings(&mut self) {
        let settings = self.grid.node_settings(&self.cfg.node).unwrap_or_default();
        let e = node_settings::apply(&self.base.0, self.base.1, &settings);
        for (key, why) in e.skipped {
            let entry = format!("setting {key} of this node");
            if self.logged_skips.insert(entry.clone()) {
                tracing::warn!("skipped {entry}: {why}");
            }
        }
        if e.policy != self.cfg.policy {
            tracing::info!("the owner's policy is now {:?}", e.policy);
            self.cfg.policy = e.policy.clone();
            self.actions.push_back(Action::Policy(e.policy));
            self.rescan = true;
        }
        if e.slots != self.cfg.slots {
            self.set_slots(e.slots);
        }
    }

    /// Runs at once from now on: new slots are free at once; with fewer,
    /// running runs go on and no run starts until fewer than the new count
    /// run.
    fn set_slots(&mut self, slots: u32) {
        tracing::info!("slots: {} → {slots}", self.cfg.slots);
        self.cfg.slots = slots;
        self.refill_slots();
        let rec = self
            .grid
            .nodes()
            .ok()
            .and_then(|ns| ns.into_iter().find(|r| r.id == self.cfg.node));
        if let Some(mut r) = rec {
            r.slots = slots;
            match self.grid.put_node(&r) {
                Ok(()) => self.grid_dirty = true,
                Err(e) => tracing::error!("cannot record the node's slots: {e}"),
            }
        }
        self.rescan = true;
        self.stale.all = true;
    }

    /// The free slots, from the slots runs hold now: as many as the node
    /// has beyond them, lowest first.
    fn refill_slots(&mut self) {
        let n = self.cfg.slots as usize;
        let in_use: Vec<usize> = self.running.values().filter_map(|r| r.slot).collect();
        let room = n.saturating_sub(in_use.len());
        let mut free: Vec<usize> = (0..n).filter(|s| !in_use.contains(s)).take(room).collect();
        free.reverse();
        self.free_slots = free;
        self.slots_cut = in_use.iter().any(|s| *s >= n);
    }

    /// A slot a run gave back: free again, unless the node has fewer slots
    /// now (then the free ones are counted afresh).
    pub(super) fn slot_freed(&mut self, slot: usize) {
        if self.slots_cut {
            self.refill_slots();
        } else {
            self.free_slots.push(slot);
        }
    }
}
