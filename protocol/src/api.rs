//! Types of the HTTP API (`/api/v1`), shared by the node, the web UI and the CLI.

use serde::{Deserialize, Serialize};

use crate::ids::{BlobHash, NodeId, ProcessId, RequestId};
use crate::model::{GpuNeeds, Language, Process, ProcessKind, RequestState, RunState, SharedFile};
use crate::run_view::RunCounts;

/// Query of `POST /api/v1/processes` (the body is the file or zip itself).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UploadProcess {
    /// Display name; defaults to the file name.
    pub name: Option<String>,
    /// The uploaded file's name, e.g. `main.py` or `project.zip`.
    pub file_name: String,
    #[serde(default = "default_kind")]
    pub kind: ProcessKind,
    /// Defaults to a guess from the entry's or file's extension.
    pub language: Option<String>,
    /// The entry file inside the zip (default: the file itself, or a main.* file).
    pub entry: Option<String>,
    /// A whole command line instead of an entry file (e.g. `true`).
    pub command: Option<String>,
    /// Rooms to share it with, comma-separated: their users may run it too.
    /// Uploading the same code again with other rooms changes the sharing.
    #[serde(default)]
    pub rooms: Option<String>,
}

fn default_kind() -> ProcessKind {
    ProcessKind::File
}

/// Query of `POST /api/v1/files` (the body is the file itself).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UploadFile {
    /// The name runs see the file under in their app dir, e.g. `data.csv`.
    pub name: String,
    /// Rooms to share it with, comma-separated: their users may use it too.
    #[serde(default)]
    pub rooms: Option<String>,
}

/// The rooms named in an upload's `rooms` (comma-separated; blanks skipped).
pub fn room_list(rooms: Option<&str>) -> Vec<String> {
    rooms
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_string)
        .collect()
}

/// A shared file as `GET /api/v1/files` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SharedFileInfo {
    #[serde(flatten)]
    pub file: SharedFile,
    /// Nodes keeping a whole copy.
    pub holders: Vec<NodeId>,
    /// Whether the node answering keeps one.
    pub here: bool,
}

/// Body of `POST /api/v1/requests`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewRequest {
    pub process: ProcessId,
    pub repetitions: u32,
    #[serde(default)]
    pub parameters: Vec<String>,
    #[serde(default)]
    pub rooms: Vec<String>,
    #[serde(default)]
    pub shared_files: Vec<String>,
    /// Name of the domain the runs execute in (`None`: the node's default image).
    #[serde(default)]
    pub domain: Option<String>,
    /// Memory and CPUs per run (`None`: the node's defaults).
    #[serde(default)]
    pub limits: crate::model::RunLimits,
    #[serde(default)]
    pub gpu: GpuNeeds,
    #[serde(default)]
    pub parallel: bool,
    #[serde(default)]
    pub same_node: bool,
    #[serde(default)]
    pub retries: u32,
    /// Extra attempts, beyond `retries`, for a rank that has a checkpoint
    /// (default 1).
    #[serde(default)]
    pub checkpoint_retries: Option<u32>,
    /// `auto` (default): a Python or R program that reads no arguments gets
    /// PESC's header (`args.rank`, `args$rank`…); `never`: runs as written.
    #[serde(default)]
    pub header: crate::header::HeaderMode,
    /// A parameter sweep: its combinations (names and rows of values); the
    /// request then has `repetitions` runs of each combination.
    #[serde(default)]
    pub sweep: Option<crate::sweep::Sweep>,
    /// The seed each rank's `PESC_SEED` is derived from (default: drawn
    /// from the request's id; a rerun passes the original's).
    #[serde(default)]
    pub seed: Option<u64>,
    /// A sweep as the form and the CLI write it, one parameter each:
    /// `NAME=V1,V2,…` or `NAME=FROM..TO:STEP` (every combination; used when
    /// `sweep` is not given).
    #[serde(default)]
    pub sweep_params: Vec<String>,
    /// Whether idle nodes may start backup copies of its last stragglers
    /// (default: yes).
    #[serde(default)]
    pub backups: Option<bool>,
}

/// `POST /api/v1/sweep`: what a sweep written as `sweep_params` makes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SweepPreview {
    pub names: Vec<String>,
    pub combinations: u64,
    /// Combinations × repetitions.
    pub runs: u64,
}

/// The body of `POST /api/v1/sweep`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SweepAsk {
    pub sweep_params: Vec<String>,
    #[serde(default = "one_u32")]
    pub repetitions: u32,
}

fn one_u32() -> u32 {
    1
}

impl SweepAsk {
    /// Each non-empty line as a parameter and its values.
    fn params(lines: &[String]) -> crate::Result<Vec<(String, Vec<String>)>> {
        lines
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| crate::sweep::Sweep::parse_param(l))
            .collect()
    }

    /// The sweep the lines make (the one rule: `sweep::Sweep`).
    pub fn sweep(lines: &[String]) -> crate::Result<Option<crate::sweep::Sweep>> {
        let params = Self::params(lines)?;
        if params.is_empty() {
            return Ok(None);
        }
        Ok(Some(crate::sweep::Sweep::grid(&params)?))
    }

    /// What the lines make, counted without making every combination (a
    /// form asks this at every key).
    pub fn preview(&self) -> crate::Result<SweepPreview> {
        let params = Self::params(&self.sweep_params)?;
        if params.is_empty() {
            return Err(crate::Error::invalid("no swept parameter"));
        }
        let combinations = crate::sweep::Sweep::grid_size(&params)?;
        Ok(SweepPreview {
            names: params.into_iter().map(|(n, _)| n).collect(),
            combinations,
            runs: combinations.saturating_mul(u64::from(self.repetitions.max(1))),
        })
    }
}

/// One rank as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunInfo {
    pub rank: u32,
    pub state: RunState,
    pub node: Option<NodeId>,
    /// Epoch of the attempt shown.
    pub attempt: Option<u32>,
    pub attempts: u32,
    pub exit_code: Option<i32>,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    pub output: Option<BlobHash>,
    pub reason: Option<String>,
    /// Nodes keeping the output and logs of the attempt shown.
    #[serde(default)]
    pub replicas: Vec<NodeId>,
    /// The rank's newest checkpoint snapshot, if any.
    #[serde(default)]
    pub checkpoint: Option<BlobHash>,
    /// What the program last reported (`PESC_PROGRESS_FILE`).
    #[serde(default)]
    pub progress: Option<u8>,
    #[serde(default)]
    pub message: Option<String>,
    /// Its sweep values (in the sweep's order) and repetition, in a sweep.
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub repetition: Option<u32>,
    /// The most memory (MiB) and CPU (% of one CPU) the attempt shown was
    /// seen to take.
    #[serde(default)]
    pub peak_memory_mb: Option<u64>,
    #[serde(default)]
    pub peak_cpu_percent: Option<u32>,
    /// Every attempt of the rank, oldest first (the run map draws them).
    #[serde(default)]
    pub history: Vec<AttemptSpan>,
}

/// One attempt of a run: where and when.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttemptSpan {
    pub epoch: u32,
    pub node: NodeId,
    pub state: crate::model::AttemptState,
    pub claimed_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// A backup copy of a straggler (`crate::backup`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub backup: bool,
}

/// A request as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RequestInfo {
    pub id: RequestId,
    pub state: RequestState,
    pub owner: String,
    pub process: ProcessId,
    pub process_name: String,
    pub language: Language,
    pub repetitions: u32,
    pub parameters: Vec<String>,
    pub created_ms: u64,
    /// Every rank runs at once and finds rank 0 (a gang).
    #[serde(default)]
    pub parallel: bool,
    /// A parallel request's ranks all on one node.
    #[serde(default)]
    pub same_node: bool,
    /// A sweep's parameter names and how many combinations it has (each
    /// run's values are in its `values`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sweep: Vec<String>,
    #[serde(default)]
    pub combinations: u32,
    /// A parallel request's gang in plain words ("waiting for 2 more
    /// slots", "starting on A, B", "running on A, B, C").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gang: Option<String>,
    pub counts: RunCounts,
    /// Why its queued runs wait, in plain words (while some do).
    #[serde(default)]
    pub waiting: Option<String>,
    /// Bumped whenever anything about the request changes (for long polls).
    pub version: u64,
    /// Per-rank detail; left out of lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs: Option<Vec<RunInfo>>,
    /// In the answer to a submit only: whether another node confirmed it
    /// holds a copy (false: the request depends on this node until they
    /// sync, e.g. a node alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_by_peer: Option<bool>,
}

/// `GET /api/v1/node`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeInfo {
    pub id: NodeId,
    pub name: String,
    pub version: String,
    pub executor: String,
    /// Whether runs are isolated (containers or the sandbox) or plain processes.
    pub isolated: bool,
    /// How runs are walled in: `containers`, `sandbox (what it has)` or `none`.
    #[serde(default)]
    pub isolation: String,
    pub slots: u32,
    pub slots_busy: u32,
    pub data_dir: String,
    pub requests: u32,
    /// The grid this node belongs to (32 hex digits).
    #[serde(default)]
    pub grid: String,
    /// Nodes connected now.
    #[serde(default)]
    pub peers: u32,
    /// Bytes this node exchanged with peers since it started.
    #[serde(default)]
    pub traffic: Traffic,
    /// Entries of the grid's documents this node skips because they fail
    /// their checks (written by a faulty or hostile node).
    #[serde(default)]
    pub skipped: SkippedEntries,
}

/// Document entries a node skips: how many, and the first ones with why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SkippedEntries {
    pub total: u64,
    /// At most 100.
    pub entries: Vec<SkippedEntry>,
}

/// One skipped entry: where it is (`users/NAME`, `req/ID/attempts/KEY`,
/// `req/ID`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SkippedEntry {
    pub entry: String,
    pub reason: String,
}

/// Payload bytes sent and received per channel (without the transport's
/// framing and encryption overhead).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Traffic {
    pub sync_sent: u64,
    pub sync_received: u64,
    pub gossip_sent: u64,
    pub gossip_received: u64,
    pub blob_sent: u64,
    pub blob_received: u64,
    /// Blocks or trees received from peers that failed the hash check (and
    /// were dropped).
    #[serde(default)]
    pub blob_rejected: u64,
}

/// One node of the grid, as `GET /api/v1/nodes` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GridNode {
    pub id: NodeId,
    pub name: String,
    /// The node answering the API.
    pub this_node: bool,
    /// An open connection to this node now.
    pub connected: bool,
    pub addrs: Vec<String>,
    pub executor: String,
    /// How it walls runs in: `containers`, `sandbox (what it has)` or `none`.
    #[serde(default)]
    pub isolation: String,
    /// It may take runs: its isolation meets the grid's minimum.
    #[serde(default)]
    pub meets_minimum: bool,
    pub slots: u32,
    /// From its last heartbeat (None if none was heard since this node started).
    pub slots_free: Option<u32>,
    /// One-minute load average per CPU, from its last heartbeat.
    pub load: Option<f32>,
    /// Its GPUs, from its last heartbeat.
    #[serde(default)]
    pub gpus: Vec<crate::model::Gpu>,
    /// Domain images it built, is building or failed to build (by domain hash).
    #[serde(default)]
    pub builds: Vec<crate::model::DomainBuild>,
    /// Milliseconds since its last heartbeat was received.
    pub last_seen_ms_ago: Option<u64>,
    /// Alive as this node's view of the grid says (gossip, its ring
    /// neighbours' watch): true for a node whose heartbeats go to others.
    #[serde(default)]
    pub up: bool,
    /// Its memory (MiB), from its last heartbeat.
    #[serde(default)]
    pub mem_total_mb: Option<u64>,
    #[serde(default)]
    pub mem_free_mb: Option<u64>,
    /// Memory (MiB) one more run may take under its owner's limit.
    #[serde(default)]
    pub mem_room_mb: Option<u64>,
    /// Why its owner's policy keeps it from taking runs now, if it does.
    #[serde(default)]
    pub pause: Option<String>,
    /// Its owner is at the desktop.
    #[serde(default)]
    pub owner_here: bool,
    /// Its runs suspended for its owner now.
    #[serde(default)]
    pub suspended: u32,
}

impl GridNode {
    /// What a node's status (its heartbeat, or its answer when asked) says
    /// of it, laid over what the grid document knows; `min` is the grid's
    /// minimum isolation.
    pub fn fill_from_status(
        &mut self,
        s: &crate::wire::NodeStatus,
        min: crate::isolation::IsolationLevel,
    ) {
        if !s.addrs.is_empty() {
            self.addrs = s.addrs.clone();
        }
        self.name = s.name.clone();
        if !s.isolation_detail.is_empty() {
            self.isolation = s.isolation_detail.clone();
        }
        self.meets_minimum = s.isolation.meets(min);
        self.slots = s.slots;
        self.slots_free = Some(s.slots_free);
        self.load = Some(s.load);
        self.gpus = s.gpus.clone();
        self.builds = s.builds.clone();
        self.mem_total_mb = s.mem_total_mb;
        self.mem_free_mb = s.mem_free_mb;
        self.mem_room_mb = s.mem_room_mb;
        self.pause = s.pause.clone();
        self.owner_here = s.owner_here;
        self.suspended = s.suspended;
    }
}

/// Reply of a process upload.
pub type ProcessInfo = Process;

/// The error body every failed API call returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiError {
    pub error: String,
}

/// A new domain: from a template (plus extra packages), or from a
/// Dockerfile (plus an optional requirements.txt).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewDomain {
    pub name: String,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub dockerfile: Option<String>,
    #[serde(default)]
    pub requirements: Option<String>,
}

/// `POST /domains/{name}/review`: an operator's or admin's answer to a
/// domain request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DomainReview {
    pub approve: bool,
    /// Why it is rejected (required to reject).
    #[serde(default)]
    pub reason: Option<String>,
    /// Rooms whose users may use it besides its owner.
    #[serde(default)]
    pub rooms: Vec<String>,
}

/// A template that ships in the binary, as this node would render it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TemplateInfo {
    pub name: String,
    pub description: String,
    /// The base image this node puts in its Dockerfile.
    pub base: String,
    pub packages: Vec<String>,
}

/// What `/metrics` reports, before it is written as Prometheus text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Metrics {
    /// Runs of every request this node knows, by state.
    pub runs: crate::run_view::RunCounts,
    pub requests: u32,
    pub slots: u32,
    /// Attempts this node holds now (its leases).
    pub leases: u32,
    pub peers: u32,
    /// (peer, document) pairs with changes not yet sent.
    pub sync_pending: u32,
    /// Whether the owner's policy keeps the node from taking runs.
    pub paused: bool,
    pub gpus: u32,
    pub traffic: Traffic,
    /// Malformed document entries this node skips.
    #[serde(default)]
    pub skipped: u64,
}

/// `POST /api/v1/login`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Login {
    pub user: String,
    pub password: String,
}

/// `GET /api/v1/me`: who the caller is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Me {
    pub user: String,
    pub role: crate::access::Role,
    /// The token to send as `X-CSRF-Token` with a session cookie.
    #[serde(default)]
    pub csrf: Option<String>,
}

/// `POST /api/v1/users`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewUser {
    pub name: String,
    pub password: String,
    pub role: crate::access::Role,
}

/// `PATCH /api/v1/users/{name}`: what to change.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserChange {
    #[serde(default)]
    pub role: Option<crate::access::Role>,
    #[serde(default)]
    pub password: Option<String>,
    /// Disable (true) or enable (false) the account: admins only.
    #[serde(default)]
    pub disabled: Option<bool>,
}

/// An account as the API shows it (never the password hash).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserInfo {
    pub name: String,
    pub role: crate::access::Role,
    pub created_ms: u64,
    #[serde(default)]
    pub disabled: bool,
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewToken {
    #[serde(default)]
    pub label: String,
}

/// A new API token: shown once, the grid keeps only its hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedToken {
    pub token: String,
    pub info: crate::access::ApiToken,
}

/// `POST /api/v1/rooms`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewRoom {
    pub name: String,
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub admins: Vec<String>,
}

/// A room with the nodes in it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RoomInfo {
    pub room: crate::model::Room,
    /// Nodes a room admin put in the room (General holds every node).
    pub nodes: Vec<NodeId>,
    /// Whether the caller manages this room.
    pub manage: bool,
}

/// `GET /api/v1/grid/join-token`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JoinInfo {
    pub token: String,
    /// What to run on a desktop to add it.
    pub command: String,
}

/// One of a node's settings (`GET /api/v1/nodes/{node}/settings`): what
/// an admin set for it through the grid, laid over its node.toml.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeSetting {
    pub key: String,
    /// The value set; `None` when the node's own configuration decides.
    pub value: Option<String>,
    /// What it means, in words.
    pub meaning: String,
}

/// `PUT /api/v1/nodes/{node}/settings/{key}`'s body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeSettingValue {
    pub value: String,
}

/// `GET`/`PUT /api/v1/grid/settings`: grid-wide settings (admins change them).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GridSettings {
    /// Nodes whose isolation is below this take no runs (`none`,
    /// `sandbox` — the default — or `containers`).
    pub min_isolation: crate::isolation::IsolationLevel,
}
