//! The node's processes seen from outside: what a previous life of this
//! node left running (found by the node id in their environment).

/// Processes (other than this one) whose environment names the node
/// `node_id`: its runs and everything they started, in containers too.
pub fn processes_of(node_id: &str) -> Vec<u32> {
    let needle = format!("PESC_NODE_ID={node_id}");
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
        })
        .collect()
}

/// Kills process groups left by an earlier life of this node (after
/// `kill -9`): every process whose environment names this node's id.
pub fn kill_orphans(node_id: &str) -> usize {
    let pids = processes_of(node_id);
    for pid in &pids {
        // SAFETY: sending SIGKILL to a process of ours that outlived its node.
        unsafe {
            libc::kill(*pid as i32, libc::SIGKILL);
        }
    }
    pids.len()
}
