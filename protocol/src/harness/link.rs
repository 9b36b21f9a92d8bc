//! The simulated link between nodes: delay, loss and duplication.

/// How the link treats each message (chances in parts per million).
#[derive(Debug, Clone, Copy)]
pub struct Link {
    /// Least and greatest one-way delay (ms).
    pub min_delay_ms: u64,
    pub max_delay_ms: u64,
    pub loss_ppm: u64,
    pub duplicate_ppm: u64,
}

impl Default for Link {
    /// A LAN: 1–5 ms, nothing lost.
    fn default() -> Self {
        Link {
            min_delay_ms: 1,
            max_delay_ms: 5,
            loss_ppm: 0,
            duplicate_ppm: 0,
        }
    }
}

impl Link {
    pub(super) fn loses(&self, r: u64) -> bool {
        r % 1_000_000 < self.loss_ppm
    }

    pub(super) fn duplicates(&self, r: u64) -> bool {
        r % 1_000_000 < self.duplicate_ppm
    }

    pub(super) fn delay(&self, r: u64) -> u64 {
        let span = self.max_delay_ms.saturating_sub(self.min_delay_ms) + 1;
        self.min_delay_ms + r % span
    }
}
