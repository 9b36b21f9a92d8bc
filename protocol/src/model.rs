//! The data model: rooms, processes, requests, runs and their attempts.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::{BlobHash, NodeId, ProcessId, RequestId};
use crate::limits::*;

/// Where a node stands with a domain's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum BuildState {
    Building,
    Built,
    Failed,
}

/// A domain image on one node (by the domain's hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DomainBuild {
    pub hash: String,
    pub state: BuildState,
}

/// Name of the public room every node and user belongs to by default.
pub const GENERAL_ROOM: &str = "General";

/// A named group of nodes; room admins decide who may use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Room {
    pub name: String,
    /// Public rooms are open to every user of the grid.
    pub public: bool,
    /// Users who manage the room: its users and its nodes.
    #[serde(default)]
    pub admins: Vec<String>,
    /// Users who may send runs to the room (besides its admins).
    #[serde(default)]
    pub users: Vec<String>,
}

impl Room {
    pub fn general() -> Self {
        Room {
            name: GENERAL_ROOM.to_string(),
            public: true,
            admins: Vec::new(),
            users: Vec::new(),
        }
    }
}

/// The language a process is written in: decides how its entry is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Language {
    Python,
    R,
    Java,
    C,
    Shell,
}

impl Language {
    pub const ALL: [Language; 5] = [
        Language::Python,
        Language::R,
        Language::Java,
        Language::C,
        Language::Shell,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::R => "r",
            Language::Java => "java",
            Language::C => "c",
            Language::Shell => "shell",
        }
    }

    /// Guesses the language from a file name's extension.
    pub fn from_file_name(name: &str) -> Option<Language> {
        let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "py" => Some(Language::Python),
            "r" => Some(Language::R),
            "jar" => Some(Language::Java),
            "c" => Some(Language::C),
            "sh" => Some(Language::Shell),
            _ => None,
        }
    }

    /// The command that starts `entry` (a path inside the app dir) in this language.
    /// A `.c` entry is compiled in the app dir first (PESC: "compile on the platform").
    pub fn command_for(self, entry: &str) -> Vec<String> {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        match self {
            Language::Python => s(&["python3", entry]),
            Language::R => s(&["Rscript", entry]),
            Language::Java => s(&["java", "-jar", entry]),
            Language::Shell => s(&["sh", entry]),
            Language::C if entry.ends_with(".c") => s(&[
                "sh",
                "-c",
                "cc -O2 -o ./.pesc_prog \"$0\" -lm && exec ./.pesc_prog \"$@\"",
                entry,
            ]),
            Language::C => vec![format!("./{}", entry.trim_start_matches("./"))],
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Language {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "python" | "py" => Ok(Language::Python),
            "r" => Ok(Language::R),
            "java" => Ok(Language::Java),
            "c" | "c++" | "cpp" => Ok(Language::C),
            "shell" | "sh" | "bash" => Ok(Language::Shell),
            _ => Err(Error::invalid(format!(
                "unknown language '{s}': use one of python, r, java, c, shell"
            ))),
        }
    }
}

/// How a process's code is packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ProcessKind {
    /// One file, placed in the app dir under `file_name`.
    File,
    /// A zip archive, unpacked into the app dir.
    Zip,
}

/// The user's code: a blob plus how to start it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Process {
    pub id: ProcessId,
    pub name: String,
    pub kind: ProcessKind,
    /// The file's name in the app dir (for `File`), or the zip's original name.
    pub file_name: String,
    pub code: BlobHash,
    pub size: u64,
    pub language: Language,
    /// Path of the entry file inside the app dir, or a whole command line when
    /// `entry_is_command` is set (e.g. `true`, `python3 -m pkg`).
    pub entry: String,
    pub entry_is_command: bool,
    pub owner: String,
    pub created_ms: u64,
    /// Rooms whose users may run it too (besides its owner and admins).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<String>,
}

impl Process {
    /// The process id is derived from its content and its owner, so one
    /// user uploading the same code with the same settings twice names the
    /// same process, and another user's identical upload is theirs, never a
    /// takeover of the first.
    #[allow(clippy::too_many_arguments)]
    pub fn derive_id(
        code: &BlobHash,
        kind: ProcessKind,
        file_name: &str,
        language: Language,
        entry: &str,
        entry_is_command: bool,
        owner: &str,
    ) -> ProcessId {
        let mut h = blake3::Hasher::new();
        h.update(&code.0);
        h.update(&[kind as u8, language as u8, entry_is_command as u8]);
        for part in [file_name, entry, owner] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&h.finalize().as_bytes()[..8]);
        ProcessId::from_bytes(b)
    }

    /// Checks what the node will act on: the file name it writes into the
    /// app dir (one plain name), the entry (a path inside the app dir, or a
    /// command line), and the lengths of the rest. A peer's process record
    /// passes here before any node unpacks it.
    pub fn validate(&self) -> Result<()> {
        SharedFile::check_name(&self.file_name).map_err(|_| {
            Error::invalid(format!(
                "the process file name '{}' is not a plain file name",
                self.file_name
            ))
        })?;
        if !self.entry_is_command {
            safe_relative_path(&self.entry)?;
        }
        if self.entry.trim().is_empty() || self.entry.len() > MAX_PARAMETER_BYTES {
            return Err(Error::invalid(format!(
                "the entry must have 1 to {MAX_PARAMETER_BYTES} bytes"
            )));
        }
        if self.name.len() > MAX_PARAMETER_BYTES || self.owner.len() > MAX_NAME_BYTES {
            return Err(Error::invalid("the process name or owner is too long"));
        }
        Ok(())
    }

    /// The argv that starts this process, before the PESC header is appended.
    pub fn command(&self) -> Vec<String> {
        if self.entry_is_command {
            split_command(&self.entry)
        } else {
            self.language.command_for(&self.entry)
        }
    }
}

/// Splits a command line into words: whitespace separates, single and double
/// quotes group, backslash escapes the next character.
pub fn split_command(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') | (None, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_word = true;
            }
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// Checks a path given by a user or found in an archive: relative, no `..`,
/// no empty or odd components. Returns the normalised path.
pub fn safe_relative_path(p: &str) -> Result<String> {
    let bad = |why: &str| Err(Error::invalid(format!("path '{p}' {why}")));
    if p.is_empty() {
        return bad("is empty");
    }
    if p.starts_with('/') || p.starts_with('\\') || p.contains(':') {
        return bad("is absolute: use a path relative to the process folder");
    }
    if p.contains('\0') {
        return bad("contains a NUL byte");
    }
    let mut parts = Vec::new();
    for c in p.split(['/', '\\']) {
        match c {
            "" | "." => continue,
            ".." => return bad("escapes its folder ('..')"),
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return bad("names no file");
    }
    Ok(parts.join("/"))
}

/// An input file uploaded once and fetched by nodes on demand; runs see it
/// read-only in their app dir under `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SharedFile {
    pub name: String,
    pub hash: BlobHash,
    pub size: u64,
    pub owner: String,
    pub created_ms: u64,
    /// Rooms whose users may use it too (besides its owner and admins).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<String>,
}

impl SharedFile {
    /// Checks a shared file's name: it becomes a file name in every app dir.
    pub fn check_name(name: &str) -> Result<()> {
        let bad = |why: &str| {
            Err(Error::invalid(format!(
                "shared file name '{name}' {why}: use a plain file name like data.csv"
            )))
        };
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return bad(&format!("must have 1 to {MAX_NAME_BYTES} bytes"));
        }
        if name.contains(['/', '\\', '\0']) || name == "." || name == ".." {
            return bad("is not a plain file name");
        }
        if ["output", "checkpoint"].contains(&name) || name.starts_with(".pesc") {
            return bad("is reserved for PESC");
        }
        Ok(())
    }
}

/// One GPU of a node, as its driver reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Gpu {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub memory_total_mb: u64,
    pub memory_free_mb: u64,
    /// CUDA compute capability, e.g. 8.6.
    pub capability: f32,
    /// Memory used by each process on it (pid, MiB), when the driver says.
    #[serde(default)]
    pub processes: Option<Vec<(u32, u64)>>,
}

/// GPU needs of a request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GpuNeeds {
    /// Devices per run; 0 means no GPU.
    pub count: u32,
    /// Minimum CUDA compute capability, e.g. 7.0.
    pub min_capability: Option<f32>,
}

/// Resources one run may use (containers enforce them); unset: the node's
/// defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunLimits {
    pub memory_mb: Option<u64>,
    pub cpus: Option<f64>,
}

/// What a user submits: run this process N times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestSpec {
    pub id: RequestId,
    pub owner: String,
    pub process: Process,
    pub repetitions: u32,
    #[serde(default)]
    pub parameters: Vec<String>,
    #[serde(default)]
    pub rooms: Vec<String>,
    #[serde(default)]
    pub shared_files: Vec<String>,
    /// The shared files named above, as they were when the request was
    /// submitted (so every run sees the same bytes).
    #[serde(default)]
    pub inputs: Vec<SharedFile>,
    #[serde(default)]
    pub gpu: GpuNeeds,
    /// Gang scheduling: all ranks start together and find rank 0 (see
    /// [`crate::gang`]).
    #[serde(default)]
    pub parallel: bool,
    /// A parallel request's ranks all on one node.
    #[serde(default)]
    pub same_node: bool,
    /// Whether a Python or R program that reads no arguments gets PESC's
    /// header inserted (`header::with_header`).
    #[serde(default)]
    pub header: crate::header::HeaderMode,
    /// Extra attempts after the program exits non-zero.
    #[serde(default)]
    pub retries: u32,
    /// Extra attempts, beyond `retries`, for a rank that has a checkpoint
    /// (default 1: a crash with a checkpoint goes on from it once).
    #[serde(default = "one")]
    pub checkpoint_retries: u32,
    /// The environment the runs execute in (a container image built from
    /// it); `None`: the node's default.
    #[serde(default)]
    pub domain: Option<crate::domain::Domain>,
    #[serde(default)]
    pub limits: RunLimits,
    pub created_ms: u64,
    /// A parameter sweep: the ranks cover its combinations, each
    /// `repetitions / rows` times (`crate::sweep`).
    #[serde(default)]
    pub sweep: Option<crate::sweep::Sweep>,
    /// Where each rank's `PESC_SEED` comes from (`sweep::rank_seed`);
    /// `None` (older requests): from the request id. A rerun keeps it.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Idle nodes may start backup copies of its last stragglers
    /// (`crate::backup`).
    #[serde(default = "yes")]
    pub backups: bool,
}

fn yes() -> bool {
    true
}

impl RequestSpec {
    /// Runs per combination of the sweep (all of them without one).
    pub fn per_combination(&self) -> u32 {
        match &self.sweep {
            Some(s) => self.repetitions / (s.rows.len() as u32).max(1),
            None => self.repetitions,
        }
    }

    /// The seed ranks' seeds come from.
    pub fn seed(&self) -> u64 {
        self.seed.unwrap_or_else(|| {
            let h = blake3::hash(self.id.as_str().as_bytes());
            let mut b = [0u8; 8];
            b.copy_from_slice(&h.as_bytes()[..8]);
            u64::from_le_bytes(b)
        })
    }

    /// What rank `rank` of a sweep runs (`None` without a sweep).
    pub fn point(&self, rank: u32) -> Option<crate::sweep::Point<'_>> {
        self.sweep.as_ref()?.point(rank, self.per_combination())
    }

    /// The parameters rank `rank` is given: the request's, then its
    /// sweep values.
    pub fn run_parameters(&self, rank: u32) -> Vec<String> {
        let mut p = self.parameters.clone();
        if let Some(pt) = self.point(rank) {
            p.extend(pt.values.iter().cloned());
        }
        p
    }

    /// The environment rank `rank` is given besides the header's: its
    /// seed, and each swept parameter's value (`PESC_PARAM_NAME`).
    pub fn run_env(&self, rank: u32) -> Vec<(String, String)> {
        let mut env = vec![(
            "PESC_SEED".to_string(),
            crate::sweep::rank_seed(self.seed(), rank).to_string(),
        )];
        if let (Some(s), Some(pt)) = (&self.sweep, self.point(rank)) {
            env.push(("PESC_REPETITION".into(), pt.repetition.to_string()));
            env.extend(
                s.names
                    .iter()
                    .zip(pt.values)
                    .map(|(n, v)| (crate::sweep::Sweep::env_name(n), v.clone())),
            );
        }
        env
    }

    /// Checks every user-given field; the message says what to fix.
    pub fn validate(&self) -> Result<()> {
        if self.repetitions == 0 {
            return Err(Error::invalid("repetitions must be at least 1"));
        }
        if self.repetitions > MAX_REPETITIONS {
            return Err(Error::invalid(format!(
                "repetitions must be at most {MAX_REPETITIONS} (got {})",
                self.repetitions
            )));
        }
        if self.parallel && self.repetitions > crate::gang::MAX_GANG {
            return Err(Error::invalid(format!(
                "a parallel request has at most {} ranks (got {})",
                crate::gang::MAX_GANG,
                self.repetitions
            )));
        }
        if self.same_node && !self.parallel {
            return Err(Error::invalid(
                "same-node is for parallel requests: ask for parallel too",
            ));
        }
        if let Some(s) = &self.sweep {
            s.check()?;
            if self.parallel {
                return Err(Error::invalid(
                    "a sweep's ranks run apart: it cannot be a parallel request",
                ));
            }
            if u64::from(self.repetitions) != s.ranks(self.per_combination())
                || self.per_combination() == 0
            {
                return Err(Error::invalid(format!(
                    "a sweep of {} combinations needs a multiple of {} ranks, not {}",
                    s.rows.len(),
                    s.rows.len(),
                    self.repetitions
                )));
            }
            if self.parameters.len() + s.names.len() > MAX_PARAMETERS {
                return Err(Error::invalid(format!(
                    "at most {MAX_PARAMETERS} parameters, the swept ones included"
                )));
            }
        }
        if self.parameters.len() > MAX_PARAMETERS {
            return Err(Error::invalid(format!(
                "at most {MAX_PARAMETERS} parameters (got {})",
                self.parameters.len()
            )));
        }
        for p in &self.parameters {
            if p.len() > MAX_PARAMETER_BYTES {
                return Err(Error::invalid(format!(
                    "a parameter is longer than {MAX_PARAMETER_BYTES} bytes"
                )));
            }
            if p.contains('\0') {
                return Err(Error::invalid("a parameter contains a NUL byte"));
            }
        }
        if self.retries > MAX_RETRIES {
            return Err(Error::invalid(format!(
                "retries must be at most {MAX_RETRIES}"
            )));
        }
        for (what, list) in [("rooms", &self.rooms), ("shared files", &self.shared_files)] {
            if list.len() > MAX_LIST_ITEMS {
                return Err(Error::invalid(format!("at most {MAX_LIST_ITEMS} {what}")));
            }
            if list
                .iter()
                .any(|s| s.trim().is_empty() || s.len() > MAX_NAME_BYTES)
            {
                return Err(Error::invalid(format!(
                    "{what} must have names of 1 to {MAX_NAME_BYTES} bytes"
                )));
            }
        }
        for f in &self.shared_files {
            SharedFile::check_name(f)?;
        }
        // The inputs become files in the app dir: each a plain name, one
        // per shared file named above (a peer's spec is checked here too).
        if self.inputs.len() > self.shared_files.len() {
            return Err(Error::invalid("more inputs than shared files"));
        }
        for f in &self.inputs {
            SharedFile::check_name(&f.name)?;
            if !self.shared_files.contains(&f.name) {
                return Err(Error::invalid(format!(
                    "input '{}' is not one of the request's shared files",
                    f.name
                )));
            }
        }
        if let Some(d) = &self.domain {
            d.validate()?;
        }
        self.process.validate()?;
        if self.gpu.count > 16 {
            return Err(Error::invalid("a run may ask for at most 16 GPUs"));
        }
        if let Some(c) = self.gpu.min_capability
            && !(c.is_finite() && (1.0..=20.0).contains(&c))
        {
            return Err(Error::invalid(
                "GPU minimum compute capability must be a number like 7.0 (between 1 and 20)",
            ));
        }
        if let Some(m) = self.limits.memory_mb
            && !(16..=1 << 24).contains(&m)
        {
            return Err(Error::invalid(
                "memory per run must be 16 MiB to 16 TiB (--memory-mb)",
            ));
        }
        if let Some(c) = self.limits.cpus
            && !(c.is_finite() && (0.01..=1024.0).contains(&c))
        {
            return Err(Error::invalid("CPUs per run must be 0.01 to 1024 (--cpus)"));
        }
        if self.parallel && self.repetitions > 1024 {
            return Err(Error::invalid(
                "a parallel (gang) request may have at most 1024 ranks",
            ));
        }
        Ok(())
    }

    /// The rooms this request may run in ("General" when none was named).
    pub fn effective_rooms(&self) -> Vec<String> {
        if self.rooms.is_empty() {
            vec![GENERAL_ROOM.to_string()]
        } else {
            self.rooms.clone()
        }
    }
}

/// Where one attempt of a run stands. Each attempt is written only by the node
/// that made it, so its fields never conflict between replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum AttemptState {
    /// The node claimed the run and is preparing it (or, claimed ahead,
    /// waits for one of its slots).
    Claimed,
    /// The program is running.
    Running,
    /// Exit code 0 and the output archive stored.
    Succeeded,
    /// The program exited non-zero (or was killed by a signal).
    Failed,
    /// The node could not start or finish the attempt (executor error, missing code).
    Error,
    /// The node lost its lease (restart, silence) and abandoned the attempt.
    Lost,
    /// The node lost a claim race and stopped: not a failure of anything.
    Yielded,
    /// Stopped because the request was cancelled.
    Cancelled,
}

impl AttemptState {
    pub fn is_terminal(self) -> bool {
        !matches!(self, AttemptState::Claimed | AttemptState::Running)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptState::Claimed => "claimed",
            AttemptState::Running => "running",
            AttemptState::Succeeded => "succeeded",
            AttemptState::Failed => "failed",
            AttemptState::Error => "error",
            AttemptState::Lost => "lost",
            AttemptState::Yielded => "yielded",
            AttemptState::Cancelled => "cancelled",
        }
    }
}

impl FromStr for AttemptState {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "claimed" => AttemptState::Claimed,
            "running" => AttemptState::Running,
            "succeeded" => AttemptState::Succeeded,
            "failed" => AttemptState::Failed,
            "error" => AttemptState::Error,
            "lost" => AttemptState::Lost,
            "yielded" => AttemptState::Yielded,
            "cancelled" => AttemptState::Cancelled,
            _ => return Err(Error::document(format!("unknown attempt state '{s}'"))),
        })
    }
}

/// One try at running one rank, on one node, in one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub rank: u32,
    pub epoch: u32,
    pub node: NodeId,
    pub state: AttemptState,
    /// Wall-clock milliseconds of the node that wrote them: for display only,
    /// never compared across nodes.
    pub claimed_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub exit_code: Option<i32>,
    pub output: Option<BlobHash>,
    pub stdout: Option<BlobHash>,
    pub stderr: Option<BlobHash>,
    pub reason: Option<String>,
    /// Nodes holding the output archive and logs (this one first). A run
    /// counts as succeeded only once enough nodes hold its results.
    pub replicas: Vec<NodeId>,
    /// The latest snapshot of the run's `checkpoint/` dir, and who holds it.
    pub checkpoint: Option<BlobHash>,
    pub checkpoint_holders: Vec<NodeId>,
    /// What the program last said of its progress (percent, 0 to 100) and
    /// its last message (see [`crate::progress`]).
    pub progress: Option<u8>,
    pub message: Option<String>,
    /// The most memory (MiB) and CPU (percent of one CPU) its processes
    /// were seen to take (by the probes of the node that ran it).
    pub peak_memory_mb: Option<u64>,
    pub peak_cpu_percent: Option<u32>,
    /// The container image it ran in (the image's id), if any.
    pub image: Option<String>,
    /// A backup copy of a straggler (`crate::backup`): it runs beside the
    /// rank's holder, never displaces it, and the first success wins.
    pub backup: bool,
}

impl Attempt {
    pub fn claim(rank: u32, epoch: u32, node: NodeId, now_ms: u64) -> Self {
        Attempt {
            rank,
            epoch,
            node,
            state: AttemptState::Claimed,
            claimed_ms: now_ms,
            started_ms: None,
            finished_ms: None,
            exit_code: None,
            output: None,
            stdout: None,
            stderr: None,
            reason: None,
            replicas: Vec::new(),
            checkpoint: None,
            checkpoint_holders: Vec::new(),
            progress: None,
            message: None,
            peak_memory_mb: None,
            peak_cpu_percent: None,
            image: None,
            backup: false,
        }
    }

    /// Where this attempt sits in the document's attempt map.
    pub fn key(&self) -> String {
        attempt_key(self.rank, self.epoch, &self.node)
    }

    pub fn duration_ms(&self) -> Option<u64> {
        Some(self.finished_ms?.saturating_sub(self.started_ms?))
    }
}

/// The key of an attempt: zero-padded so keys sort by rank, then epoch.
pub fn attempt_key(rank: u32, epoch: u32, node: &NodeId) -> String {
    format!("{rank:08}.{epoch:05}.{node}")
}

/// Parses an attempt key back into (rank, epoch, node).
pub fn parse_attempt_key(key: &str) -> Result<(u32, u32, NodeId)> {
    let bad = || Error::document(format!("bad attempt key '{key}'"));
    let mut it = key.splitn(3, '.');
    let rank = it.next().and_then(|r| r.parse().ok()).ok_or_else(bad)?;
    let epoch = it.next().and_then(|e| e.parse().ok()).ok_or_else(bad)?;
    let node = it.next().filter(|n| !n.is_empty()).ok_or_else(bad)?;
    Ok((rank, epoch, NodeId::new(node)))
}

/// The state of one run (rank), derived from its attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum RunState {
    Queued,
    Claimed,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Failed | RunState::Cancelled
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Claimed => "claimed",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }
}

/// The state of a whole request, from its runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum RequestState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RequestState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RequestState::Succeeded | RequestState::Failed | RequestState::Cancelled
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Queued => "queued",
            RequestState::Running => "running",
            RequestState::Succeeded => "succeeded",
            RequestState::Failed => "failed",
            RequestState::Cancelled => "cancelled",
        }
    }
}

/// serde's default of one.
fn one() -> u32 {
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_paths() {
        assert_eq!(safe_relative_path("a/./b.py").unwrap(), "a/b.py");
        for bad in [
            "/etc/passwd",
            "../x",
            "a/../../x",
            "",
            "C:\\x",
            "./",
            "a\0b",
        ] {
            assert!(safe_relative_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn split_command_words() {
        assert_eq!(
            split_command("python3  -m pkg"),
            vec!["python3", "-m", "pkg"]
        );
        assert_eq!(
            split_command(r#"sh -c 'echo "a b"' x\ y"#),
            vec!["sh", "-c", "echo \"a b\"", "x y"]
        );
        assert!(split_command("   ").is_empty());
    }

    #[test]
    fn attempt_keys_round_trip() {
        let n = NodeId::new("12D3Koo.w");
        let k = attempt_key(7, 2, &n);
        assert_eq!(parse_attempt_key(&k).unwrap(), (7, 2, n));
        assert!(parse_attempt_key("x.y.z").is_err());
        assert!(parse_attempt_key("00000001.00001.").is_err());
    }

    #[test]
    fn language_parsing_and_commands() {
        assert!(
            "cobol"
                .parse::<Language>()
                .unwrap_err()
                .to_string()
                .contains("python, r")
        );
        assert_eq!(Language::from_file_name("Main.JAR"), Some(Language::Java));
        assert_eq!(
            Language::Python.command_for("main.py"),
            vec!["python3", "main.py"]
        );
        assert_eq!(Language::C.command_for("prog"), vec!["./prog"]);
    }
}
