//! Settings an admin changes on a running node from anywhere in the grid
//! (`pesc config set NODE KEY VALUE`, the Nodes page): kept in the grid
//! document beside the node's placement (`NODE/setting/KEY` → value, last
//! writer wins per key), laid over the node's own `node.toml` by the node
//! itself. They apply at once: no restart, running runs go on.
//!
//! One rule checks a value, for the API before it writes and for the node
//! before it applies what a peer wrote.

use crate::node::Policy;

/// The keys, each with what it means.
pub const KEYS: [(&str, &str); 9] = [
    ("slots", "runs at once (0: a client that runs nothing)"),
    (
        "pause_when_others_above",
        "take no new runs while others use more than this % of the CPU (1–100)",
    ),
    (
        "max_cpu_share",
        "the % of the machine's CPUs PESC's runs may keep busy together (1–100)",
    ),
    (
        "memory_percent_limit",
        "take a run only while memory in use, with the runs' expected peaks, stays under this % (1–100)",
    ),
    (
        "default_run_memory_mb",
        "the peak memory (MiB) expected of a program not seen yet (1–1048576)",
    ),
    (
        "idle_minutes",
        "start runs only after this many minutes without keyboard or mouse (0: do not watch; up to 1440)",
    ),
    (
        "vacate_minutes",
        "hand runs suspended for the owner back to the grid after this many minutes (0–1440)",
    ),
    (
        "concurrent_resources_percent",
        "while another user is logged in, runs get this % of their CPU (1–100)",
    ),
    (
        "gpu_percent_memory_limit",
        "runs share a GPU while their peaks add up to this % of its memory (1–100)",
    ),
];

/// The most slots a setting gives a node.
pub const MAX_SLOTS: u32 = 1024;

/// Checks a setting as an admin asks it: `value` for `key`, or, with
/// `None` (clearing it), only that `key` is a setting.
pub fn check_change(key: &str, value: Option<&str>) -> Result<(), String> {
    match value {
        Some(v) => check(key, v).map(|_| ()),
        None if KEYS.iter().any(|(k, _)| *k == key) => Ok(()),
        None => Err(format!("no setting '{key}'")),
    }
}

/// Checks `value` for `key`: the value as the node will apply it, or why
/// not, in words.
pub fn check(key: &str, value: &str) -> Result<u64, String> {
    let range = |lo: u64, hi: u64| -> Result<u64, String> {
        match value.trim().parse::<u64>() {
            Ok(v) if (lo..=hi).contains(&v) => Ok(v),
            _ => Err(format!(
                "{key} takes a whole number from {lo} to {hi}, not '{value}'"
            )),
        }
    };
    match key {
        "slots" => range(0, u64::from(MAX_SLOTS)),
        "pause_when_others_above"
        | "max_cpu_share"
        | "memory_percent_limit"
        | "concurrent_resources_percent"
        | "gpu_percent_memory_limit" => range(1, 100),
        "default_run_memory_mb" => range(1, 1 << 20),
        "idle_minutes" | "vacate_minutes" => range(0, 24 * 60),
        _ => Err(format!(
            "no setting '{key}'; settings: {}",
            KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// What a node runs with: its own configuration with the grid's settings
/// for it laid over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    pub policy: Policy,
    pub slots: u32,
    /// Settings that failed their check (key, why): skipped.
    pub skipped: Vec<(String, String)>,
}

/// Lays `settings` (key, value) over a node's own configuration.
pub fn apply(policy: &Policy, slots: u32, settings: &[(String, String)]) -> Effective {
    let mut e = Effective {
        policy: policy.clone(),
        slots,
        skipped: Vec::new(),
    };
    for (k, v) in settings {
        let value = match check(k, v) {
            Ok(v) => v,
            Err(why) => {
                e.skipped.push((k.clone(), why));
                continue;
            }
        };
        let p = &mut e.policy;
        // Checked above: every number fits its field.
        let n = value as u32;
        match k.as_str() {
            "slots" => e.slots = n,
            "default_run_memory_mb" => p.default_run_memory_mb = value,
            "pause_when_others_above" => p.pause_when_others_above = n,
            "max_cpu_share" => p.max_cpu_share = n,
            "memory_percent_limit" => p.memory_percent_limit = n,
            "idle_minutes" => p.idle_minutes = n,
            "vacate_minutes" => p.vacate_minutes = n,
            "concurrent_resources_percent" => p.concurrent_resources_percent = n,
            "gpu_percent_memory_limit" => p.gpu_percent_memory_limit = n,
            _ => {}
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_checks_and_applies() {
        for (k, _) in KEYS {
            assert!(check(k, "1").is_ok(), "{k}");
        }
        assert!(check("slots", "-1").is_err());
        assert!(check("slots", "99999").is_err());
        assert!(check("max_cpu_share", "0").is_err());
        assert!(check("idle_minutes", "0").is_ok());
        let why = check("utmp_path", "/tmp/x").unwrap_err();
        assert!(why.contains("no setting 'utmp_path'"), "{why}");

        let base = Policy::default();
        let set = |k: &str, v: &str| (k.to_string(), v.to_string());
        let e = apply(
            &base,
            4,
            &[
                set("slots", "2"),
                set("idle_minutes", "15"),
                set("memory_percent_limit", "500"),
            ],
        );
        assert_eq!(e.slots, 2);
        assert_eq!(e.policy.idle_minutes, 15);
        assert_eq!(e.policy.memory_percent_limit, base.memory_percent_limit);
        assert_eq!(e.skipped.len(), 1, "a bad value is skipped, not applied");
    }
}
