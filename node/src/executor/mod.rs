//! Executors run one prepared attempt: the process executor (sandboxed
//! child processes) and the Docker executor (one container per attempt), behind
//! the same trait and the same run contract.

pub mod docker;
pub mod process;
pub mod sandbox;

use std::path::{Path, PathBuf};

pub use docker::{DockerConfig, DockerExecutor};
use pesc_protocol::domain::Domain;
pub use sandbox::{Sandbox, SandboxConfig};
use tokio::sync::watch;

/// A prepared attempt, ready to start.
#[derive(Debug, Clone)]
pub struct Job {
    /// Working directory: the process's files, `output/`, `checkpoint/`.
    pub app_dir: PathBuf,
    /// Program and arguments, the PESC header included.
    pub argv: Vec<String>,
    /// Extra environment (`PESC_*`, torchrun names).
    pub env: Vec<(String, String)>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// The image to run in (Docker); `None`: the executor's default.
    pub image: Option<String>,
    /// Memory and CPUs the request asks for (containers enforce them).
    pub limits: pesc_protocol::model::RunLimits,
    /// GPUs the run holds: only these are visible to it.
    pub gpus: Vec<pesc_protocol::model::Gpu>,
    /// Shared files: (the node's copy, the name the run sees). The process
    /// executor finds private copies in the app dir already; containers
    /// mount these read-only.
    pub shared: Vec<(PathBuf, String)>,
    /// The node slot the attempt runs in (the sandbox's uid follows it).
    pub slot: usize,
    /// The run may use the network (parallel requests); otherwise it has none.
    pub network: bool,
}

impl Job {
    /// `CUDA_VISIBLE_DEVICES` for the run: its devices, or none at all.
    pub fn cuda_visible_devices(&self) -> String {
        self.gpus
            .iter()
            .map(|g| g.index.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// How a program ended (the protocol core turns it into an attempt state).
pub use pesc_protocol::node::Exit;

/// How well an executor walls user code in, weakest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Isolation {
    /// Plain processes of the node's own user.
    None,
    /// The process executor's sandbox, with what it has.
    Sandbox(String),
    /// Containers.
    Containers,
}

impl Isolation {
    /// The level's name: `none`, `sandbox` or `containers`.
    pub fn level(&self) -> pesc_protocol::isolation::IsolationLevel {
        use pesc_protocol::isolation::IsolationLevel as L;
        match self {
            Isolation::None => L::None,
            Isolation::Sandbox(_) => L::Sandbox,
            Isolation::Containers => L::Containers,
        }
    }

    /// As users see it: "sandbox (uid per slot, landlock 7, namespaces, rlimits)".
    pub fn describe(&self) -> String {
        match self {
            Isolation::Sandbox(d) => format!("sandbox ({d})"),
            other => other.level().to_string(),
        }
    }
}

/// Runs jobs. `stop` turning true asks for the job to be stopped at once
/// (cancel, lost lease): the executor kills everything the job started.
#[async_trait::async_trait]
pub trait Executor: Send + Sync + 'static {
    /// Name shown to users (`process`, `docker`).
    fn name(&self) -> &'static str;
    /// Whether user code is isolated from the host.
    fn isolated(&self) -> bool {
        self.isolation() != Isolation::None
    }
    /// How user code is walled in on this node.
    fn isolation(&self) -> Isolation;
    /// Where the program sees the app dir at `host` (the header and
    /// environment name this path).
    fn app_dir_in_run(&self, host: &Path) -> PathBuf {
        host.to_path_buf()
    }
    /// Whether this executor runs user code in containers (and so can build
    /// domains).
    fn runs_containers(&self) -> bool {
        false
    }
    /// Makes the image of `domain` ready on this node (building it the first
    /// time; concurrent callers wait for one build) and returns its name.
    /// The build's output goes to `log`.
    async fn prepare_domain(&self, domain: &Domain, _log: &Path) -> anyhow::Result<String> {
        anyhow::bail!(
            "domain '{}' needs a node that runs Docker; this one runs {}",
            domain.name,
            self.name()
        )
    }
    /// Cuts running and new runs down to `share` percent of their CPU
    /// (another user is at the desktop), or gives it back (`None`). The
    /// process executor cannot, and says so once.
    async fn throttle(&self, share: Option<u32>) {
        if share.is_some() {
            tracing::info!(
                "{} runs cannot be slowed down; they go on at full speed",
                self.name()
            );
        }
    }
    /// Suspends the run of `request`'s `rank` (`on`) or lets it go on: its
    /// processes (found by the node and run in their environment) get
    /// SIGSTOP or SIGCONT. Containers are paused instead (Docker).
    async fn suspend(
        &self,
        node_id: &str,
        request: &pesc_protocol::RequestId,
        rank: u32,
        on: bool,
    ) -> anyhow::Result<()> {
        let run = (request.to_string(), rank);
        let node = node_id.to_string();
        let pids: Vec<u32> = tokio::task::spawn_blocking(move || {
            crate::usage::scan(&node)
                .into_iter()
                .filter(|(_, p)| p.run.as_ref() == Some(&run))
                .map(|(pid, _)| pid)
                .collect()
        })
        .await?;
        let sig = if on { libc::SIGSTOP } else { libc::SIGCONT };
        for pid in &pids {
            // SAFETY: a signal to a process of this node's run.
            unsafe {
                libc::kill(*pid as i32, sig);
            }
        }
        tracing::info!(
            "rank {rank} of {request}: {} process(es) {}",
            pids.len(),
            if on { "suspended" } else { "resumed" }
        );
        Ok(())
    }
    /// The id of the image a run named `image` (or the default one) ran
    /// in; `None` for runs outside containers.
    async fn image_id(&self, _image: Option<&str>) -> Option<String> {
        None
    }
    /// Runs the job to its end. An `Err` means it could not be started.
    async fn run(&self, job: Job, stop: watch::Receiver<bool>) -> anyhow::Result<Exit>;
}
