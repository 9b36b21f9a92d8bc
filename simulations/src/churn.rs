//! When each node is switched off: the evening/morning cycle of lab desktops,
//! owners reclaiming their machine, crashes and reboots. Drawn once per
//! scenario from its seed, then read as a timetable.

/// A node's times off, sorted: `[down, up)` pairs (`up` may be `u64::MAX`).
#[derive(Debug, Clone, Default)]
pub struct Availability {
    pub off: Vec<(u64, u64)>,
}

impl Availability {
    pub fn always() -> Self {
        Availability::default()
    }

    /// Adds a stretch off (kept sorted; overlapping ones merge).
    pub fn add(&mut self, down: u64, up: u64) {
        if up <= down {
            return;
        }
        self.off.push((down, up));
        self.off.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.off.len());
        for (d, u) in self.off.drain(..) {
            match merged.last_mut() {
                Some(last) if d <= last.1 => last.1 = last.1.max(u),
                _ => merged.push((d, u)),
            }
        }
        self.off = merged;
    }

    /// Whether the node is on at `t`.
    pub fn is_up(&self, t: u64) -> bool {
        self.off_at(t).is_none()
    }

    fn off_at(&self, t: u64) -> Option<(u64, u64)> {
        let i = self.off.partition_point(|&(d, _)| d <= t);
        (i > 0).then(|| self.off[i - 1]).filter(|&(_, u)| t < u)
    }

    /// The first moment at or after `t` when the node is on (`u64::MAX`: never).
    pub fn next_up(&self, t: u64) -> u64 {
        match self.off_at(t) {
            Some((_, u)) => u,
            None => t,
        }
    }

    /// Whether the node is off at some moment in `[from, to]`.
    pub fn off_between(&self, from: u64, to: u64) -> bool {
        let i = self.off.partition_point(|&(_, u)| u <= from);
        self.off.get(i).is_some_and(|&(d, _)| d <= to)
    }

    /// If the node is off at some moment in `[from, to]`: when it is back
    /// from the first such stretch.
    pub fn back_after_off_between(&self, from: u64, to: u64) -> Option<u64> {
        let i = self.off.partition_point(|&(_, u)| u <= from);
        self.off.get(i).filter(|&&(d, _)| d <= to).map(|&(_, u)| u)
    }

    /// Milliseconds on within `[from, to)`.
    pub fn up_ms(&self, from: u64, to: u64) -> u64 {
        let off: u64 = self
            .off
            .iter()
            .map(|&(d, u)| u.min(to).saturating_sub(d.max(from)))
            .sum();
        (to - from).saturating_sub(off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timetable_lookups() {
        let mut a = Availability::always();
        a.add(100, 200);
        a.add(150, 300);
        a.add(500, 600);
        assert_eq!(a.off, vec![(100, 300), (500, 600)]);
        assert!(a.is_up(99) && !a.is_up(100) && !a.is_up(299) && a.is_up(300));
        assert_eq!(a.next_up(120), 300);
        assert_eq!(a.next_up(400), 400);
        assert!(a.off_between(50, 100) && !a.off_between(300, 499) && a.off_between(450, 700));
        assert_eq!(a.up_ms(0, 1000), 1000 - 200 - 100);
    }
}
