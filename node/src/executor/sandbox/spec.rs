//! What the node tells the sandbox launcher: one attempt's program, its
//! environment, and the walls to put around it. Passed as JSON in the
//! launcher's arguments (never in its environment, which the program must
//! not inherit).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The argument that turns `pesc` into the sandbox launcher.
pub const LAUNCH_ARG: &str = "__sandbox-exec";

/// Where the run sees its app dir when it gets a root of its own (the same
/// place as in a container).
pub const APP_IN_RUN: &str = "/app";

/// One attempt to start inside a sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// The program's whole environment (nothing else is inherited).
    pub env: Vec<(String, String)>,
    /// The attempt's app dir on the host: the only place it may write.
    pub app_dir: PathBuf,
    /// Run as this uid and gid (the slot's account) instead of the node's.
    pub uid: Option<u32>,
    /// Give the run namespaces of its own (mount, PID, IPC, network) and a
    /// root made of `read_paths`, the app dir at [`APP_IN_RUN`], a private
    /// `/tmp`, `/dev` and `/proc`.
    pub namespaces: bool,
    /// A user namespace is needed for the others (the node is not root).
    pub user_namespace: bool,
    /// Keep the host's network (parallel requests); otherwise none.
    pub network: bool,
    /// System paths the program may read and execute (absolute; missing
    /// ones are skipped).
    pub read_paths: Vec<PathBuf>,
    /// Device files the program may read and write.
    pub devices: Vec<PathBuf>,
    /// Apply Landlock (best ABI the kernel has).
    pub landlock: bool,
    pub limits: Rlimits,
    /// Size of the private `/tmp` in MiB.
    pub tmp_mb: u64,
    /// Serve a slot: build its root once in namespaces of its own, say
    /// `ready`, then run one attempt per spec line on standard input (see
    /// `slot_server`).
    #[serde(default)]
    pub serve: bool,
}

/// Resource limits set on the program (0: leave the node's own).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Rlimits {
    /// Processes and threads of the run's uid (RLIMIT_NPROC).
    pub processes: u64,
    /// Largest file the program may write, in bytes (RLIMIT_FSIZE).
    pub file_size: u64,
    /// Open files (RLIMIT_NOFILE).
    pub open_files: u64,
    /// Data memory in bytes (RLIMIT_DATA): heap and private mappings.
    pub memory: u64,
}
