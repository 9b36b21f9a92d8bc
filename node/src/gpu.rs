//! A node's GPUs: what the driver reports (NVML through nvml-wrapper), and
//! which runs hold which devices. A run gets whole devices to itself.
//!
//! The driver sits behind [`GpuProbe`]. On a machine without one, NVML does
//! not load and the node has no GPUs. Tests (and machines whose driver is
//! out of reach) can script the devices instead: `PESC_FAKE_GPUS=FILE`
//! names a JSON list of [`Gpu`] records, read again at every look.

use std::path::PathBuf;

use pesc_protocol::model::Gpu;

/// Where a node learns about its GPUs.
pub trait GpuProbe: Send + Sync {
    /// Every GPU now (empty without a driver).
    fn gpus(&self) -> Vec<Gpu>;
    /// What it is, for the log.
    fn describe(&self) -> String;
}

/// The NVIDIA driver through NVML.
pub struct Nvml(nvml_wrapper::Nvml);

impl GpuProbe for Nvml {
    fn gpus(&self) -> Vec<Gpu> {
        let n = self.0.device_count().unwrap_or(0);
        (0..n)
            .filter_map(|i| {
                let d = self.0.device_by_index(i).ok()?;
                let mem = d.memory_info().ok()?;
                let cap = d.cuda_compute_capability().ok()?;
                let processes = d.running_compute_processes().ok().and_then(|ps| {
                    ps.into_iter()
                        .map(|p| match p.used_gpu_memory {
                            nvml_wrapper::enums::device::UsedGpuMemory::Used(b) => {
                                Some((p.pid, b >> 20))
                            }
                            nvml_wrapper::enums::device::UsedGpuMemory::Unavailable => None,
                        })
                        .collect::<Option<Vec<_>>>()
                });
                Some(Gpu {
                    index: d.index().unwrap_or(i),
                    uuid: d.uuid().unwrap_or_default(),
                    name: d.name().unwrap_or_default(),
                    memory_total_mb: mem.total >> 20,
                    memory_free_mb: mem.free >> 20,
                    capability: cap.major as f32 + cap.minor as f32 / 10.0,
                    processes,
                })
            })
            .collect()
    }

    fn describe(&self) -> String {
        let driver = self.0.sys_driver_version().unwrap_or_default();
        format!("NVML (driver {driver})")
    }
}

/// Devices scripted in a JSON file (a list of [`Gpu`]).
pub struct Scripted(PathBuf);

impl GpuProbe for Scripted {
    fn gpus(&self) -> Vec<Gpu> {
        match std::fs::read(&self.0).map(|b| serde_json::from_slice::<Vec<Gpu>>(&b)) {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::warn!("{} is not a list of GPUs: {e}", self.0.display());
                Vec::new()
            }
            Err(_) => Vec::new(),
        }
    }

    fn describe(&self) -> String {
        format!("scripted GPUs from {}", self.0.display())
    }
}

/// No driver: no GPUs.
pub struct NoGpus;

impl GpuProbe for NoGpus {
    fn gpus(&self) -> Vec<Gpu> {
        Vec::new()
    }
    fn describe(&self) -> String {
        "no GPU driver".into()
    }
}

/// The probe for this machine: scripted when `PESC_FAKE_GPUS` says so, else
/// NVML when the driver loads, else none.
pub fn probe() -> Box<dyn GpuProbe> {
    if let Some(p) = std::env::var_os("PESC_FAKE_GPUS") {
        return Box::new(Scripted(PathBuf::from(p)));
    }
    match nvml_wrapper::Nvml::init() {
        Ok(n) => Box::new(Nvml(n)),
        Err(_) => Box::new(NoGpus),
    }
}

/// The run a GPU process belongs to, from its environment (containers'
/// processes are visible from the host too): (request id, attempt).
pub fn run_of_pid(pid: u32, node_id: &str) -> Option<(String, u32)> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let mut node = None;
    let (mut req, mut rank) = (None, None);
    for kv in env.split(|b| *b == 0) {
        let kv = String::from_utf8_lossy(kv);
        if let Some(v) = kv.strip_prefix("PESC_NODE_ID=") {
            node = Some(v.to_string());
        } else if let Some(v) = kv.strip_prefix("PESC_REQUEST_ID=") {
            req = Some(v.to_string());
        } else if let Some(v) = kv.strip_prefix("PESC_RANK=") {
            rank = v.parse().ok();
        }
    }
    (node.as_deref() == Some(node_id)).then_some(())?;
    Some((req?, rank?))
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
    fn scripted_devices_come_from_a_file_and_bad_files_mean_none() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("gpus.json");
        std::fs::write(&f, serde_json::to_vec(&vec![gpu(0, 8.0)]).unwrap()).unwrap();
        let p = Scripted(f.clone());
        assert_eq!(p.gpus().len(), 1);
        std::fs::write(&f, b"{broken").unwrap();
        assert!(p.gpus().is_empty());
        assert!(Scripted(dir.path().join("none")).gpus().is_empty());
    }

    #[test]
    fn without_a_driver_nvml_reports_nothing_and_breaks_nothing() {
        // This machine has no NVIDIA driver: the real probe must say "none".
        if std::env::var_os("PESC_FAKE_GPUS").is_none() && nvml_wrapper::Nvml::init().is_err() {
            assert!(probe().gpus().is_empty());
        }
    }
}
