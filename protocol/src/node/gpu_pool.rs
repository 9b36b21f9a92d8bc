//! Which runs hold which of a node's GPUs: admission by free devices and
//! learned peak memory.

use std::collections::HashMap;

use crate::model::Gpu;

/// Which runs hold which of this node's GPUs (by GPU index), with the peak
/// memory each is expected to use (`None`: not known yet).
///
/// A run whose peak is known may join runs on a device when the device tells
/// per-process memory, every run already there has a known peak too, and
/// the peaks add up to at most `limit_percent` of the device's memory.
/// Otherwise it gets a device of its own.
#[derive(Debug)]
pub struct GpuPool<K> {
    held: HashMap<u32, Vec<(K, Option<u64>)>>,
}

impl<K> Default for GpuPool<K> {
    fn default() -> Self {
        GpuPool {
            held: HashMap::new(),
        }
    }
}

impl<K: Clone + PartialEq> GpuPool<K> {
    /// Gives `who` `count` devices of at least `min_capability`, shared where
    /// memory allows (fullest first, so idle devices stay whole for runs that
    /// need them), or nothing when there are not enough.
    pub fn take(
        &mut self,
        gpus: &[Gpu],
        count: u32,
        min_capability: Option<f32>,
        who: &K,
        peak_mb: Option<u64>,
        limit_percent: u32,
    ) -> Option<Vec<Gpu>> {
        let mut fits: Vec<(&Gpu, u64)> = gpus
            .iter()
            .filter(|g| min_capability.is_none_or(|c| g.capability >= c))
            .filter_map(|g| {
                let holders = self.held.get(&g.index).map_or(&[][..], Vec::as_slice);
                if holders.is_empty() {
                    return Some((g, 0));
                }
                let peak = peak_mb?;
                g.processes.as_ref()?;
                let used: u64 = holders.iter().map(|h| h.1).sum::<Option<u64>>()?;
                let cap = g.memory_total_mb * u64::from(limit_percent) / 100;
                (used + peak <= cap).then_some((g, used))
            })
            .collect();
        if fits.len() < count as usize {
            return None;
        }
        fits.sort_by_key(|(g, used)| (std::cmp::Reverse(*used), g.index));
        let chosen: Vec<Gpu> = fits
            .into_iter()
            .take(count as usize)
            .map(|(g, _)| g.clone())
            .collect();
        for g in &chosen {
            self.held
                .entry(g.index)
                .or_default()
                .push((who.clone(), peak_mb));
        }
        Some(chosen)
    }

    /// The devices `who` holds.
    pub fn devices_of(&self, who: &K) -> Vec<u32> {
        let mut d: Vec<u32> = self
            .held
            .iter()
            .filter(|(_, h)| h.iter().any(|x| &x.0 == who))
            .map(|(i, _)| *i)
            .collect();
        d.sort_unstable();
        d
    }

    /// Gives back what `who` held.
    pub fn give_back(&mut self, who: &K) {
        for holders in self.held.values_mut() {
            holders.retain(|h| &h.0 != who);
        }
        self.held.retain(|_, h| !h.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, capability: f32) -> Gpu {
        Gpu {
            index,
            uuid: format!("GPU-{index}"),
            name: "Fake".into(),
            memory_total_mb: 16384,
            memory_free_mb: 16000,
            capability,
            processes: None,
        }
    }

    #[test]
    fn runs_of_unknown_peak_get_whole_devices_of_the_capability_they_need() {
        let gpus = [gpu(0, 7.5), gpu(1, 8.6), gpu(2, 8.6)];
        let mut pool = GpuPool::default();
        let a = pool.take(&gpus, 1, Some(8.0), &"a", None, 90).unwrap();
        assert_eq!(a[0].index, 1);
        assert!(
            pool.take(&gpus, 2, Some(8.0), &"b", None, 90).is_none(),
            "only one 8.x left"
        );
        let b = pool.take(&gpus, 2, None, &"b", None, 90).unwrap();
        assert_eq!(b.iter().map(|g| g.index).collect::<Vec<_>>(), vec![0, 2]);
        assert!(pool.take(&gpus, 1, None, &"c", None, 90).is_none());
        // A known peak cannot join runs whose peak is unknown.
        assert!(pool.take(&gpus, 1, None, &"c", Some(100), 90).is_none());
        pool.give_back(&"a");
        assert_eq!(
            pool.take(&gpus, 1, None, &"c", None, 90).unwrap()[0].index,
            1
        );
        assert!(pool.take(&gpus, 1, None, &"d", None, 90).is_none());
    }

    #[test]
    fn runs_of_known_peak_share_a_device_while_memory_allows() {
        // 16 GiB devices whose per-process memory can be read; limit 90 %:
        // 14 745 MiB of peaks per device.
        let readable = |i| Gpu {
            processes: Some(Vec::new()),
            ..gpu(i, 8.0)
        };
        let gpus = [readable(0), readable(1)];
        let mut pool = GpuPool::default();
        for who in ["a", "b", "c"] {
            let got = pool.take(&gpus, 1, None, &who, Some(4000), 90).unwrap();
            assert_eq!(got[0].index, 0);
        }
        // A fourth would make 16 000 > 14 745: the next device.
        let d = pool.take(&gpus, 1, None, &"d", Some(4000), 90).unwrap();
        assert_eq!(d[0].index, 1);
        // An unknown peak needs a device of its own: none left.
        assert!(pool.take(&gpus, 1, None, &"e", None, 90).is_none());
        pool.give_back(&"d");
        assert_eq!(
            pool.take(&gpus, 1, None, &"e", None, 90).unwrap()[0].index,
            1
        );
        // Unreadable per-process memory: never shared.
        let blind = [gpu(0, 8.0)];
        let mut pool = GpuPool::default();
        pool.take(&blind, 1, None, &"a", Some(10), 90).unwrap();
        assert!(pool.take(&blind, 1, None, &"b", Some(10), 90).is_none());
    }
}
