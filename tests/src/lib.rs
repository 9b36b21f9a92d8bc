//! Helpers for PESC's end-to-end tests and benchmarks: real `pesc`
//! processes on 127.0.0.1, each in its own temporary data dir, stopped by PID.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub mod forge;
pub mod grid;
pub mod webdriver;

/// The workspace root.
/// Whether the Docker tests can run: a daemon and every base image in
/// `images`. In CI all must be there (the tests fail loudly: a missing image
/// would send the daemon to a public registry); elsewhere
/// `PESC_SKIP_DOCKER=1` skips them.
pub fn docker_with(images: &[&str]) -> bool {
    if std::env::var_os("PESC_SKIP_DOCKER").is_some() {
        eprintln!("skipped: PESC_SKIP_DOCKER is set");
        return false;
    }
    for image in images {
        let ok = Command::new("docker")
            .args(["image", "inspect", image])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "no Docker daemon or no {image}: start dockerd and run scripts/offline-images.sh (or set PESC_SKIP_DOCKER=1)"
        );
    }
    true
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `pesc` binary of the given profile (`PESC_BIN` overrides). Build it
/// first: `cargo build -p pesc-node` (the README's test command does).
pub fn pesc_bin(profile: &str) -> PathBuf {
    if let Some(p) = std::env::var_os("PESC_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    let p = target.join(profile).join("pesc");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p pesc-node` first",
        p.display()
    );
    p
}

/// A running `pesc node`, killed (by PID) when dropped.
pub struct Node {
    pub data_dir: PathBuf,
    pub bin: PathBuf,
    /// The network namespace the node (and its CLI) runs in.
    pub netns: Option<String>,
    child: Option<Child>,
    _tmp: Option<tempfile::TempDir>,
}

/// A command, run inside a network namespace when one is given.
fn command_in(netns: Option<&str>, bin: &Path) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

impl Node {
    /// Starts a node with `slots` slots and the process executor in a fresh dir.
    pub fn start(slots: u32) -> Result<Node> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("data");
        Self::start_in(dir, slots, pesc_bin("debug"), Some(tmp), &[])
    }

    /// Starts a node on an existing data dir (e.g. after a crash).
    pub fn start_in(
        data_dir: PathBuf,
        slots: u32,
        bin: PathBuf,
        tmp: Option<tempfile::TempDir>,
        extra: &[&str],
    ) -> Result<Node> {
        Self::start_opts(data_dir, slots, bin, tmp, extra, None)
    }

    /// Starts a node, optionally in a network namespace. Unless `extra`
    /// says otherwise it listens for peers on 127.0.0.1 only and mDNS is
    /// off, so tests never send to the machine's real network.
    pub fn start_opts(
        data_dir: PathBuf,
        slots: u32,
        bin: PathBuf,
        tmp: Option<tempfile::TempDir>,
        extra: &[&str],
        netns: Option<&str>,
    ) -> Result<Node> {
        std::fs::create_dir_all(&data_dir)?;
        let _ = std::fs::remove_file(data_dir.join("api.addr"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("node.log"))?;
        let mut defaults: Vec<&str> = Vec::new();
        if !extra.contains(&"--listen") {
            defaults.extend(["--listen", "/ip4/127.0.0.1/tcp/0"]);
        }
        if !extra.contains(&"--mdns") {
            defaults.extend(["--mdns", "false"]);
        }
        if !extra.contains(&"--executor") {
            defaults.extend(["--executor", "process"]);
        }
        // Test machines are busy with other tests' nodes: the owner's CPU
        // limit would pause claims at random.
        if !extra.contains(&"--pause-when-others-above") {
            defaults.extend(["--pause-when-others-above", "100"]);
        }
        // Many test nodes share this machine's memory: their small runs
        // are not the 1 GiB an unknown program is expected to take.
        if !extra.contains(&"--default-run-memory-mb") {
            defaults.extend(["--default-run-memory-mb", "64"]);
        }
        let child = command_in(netns, &bin)
            .arg("--data-dir")
            .arg(&data_dir)
            .args([
                "node",
                "--api",
                "127.0.0.1:0",
                "--slots",
                &slots.to_string(),
            ])
            .args(defaults)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting pesc node")?;
        let mut node = Node {
            data_dir,
            bin,
            netns: netns.map(str::to_string),
            child: Some(child),
            _tmp: tmp,
        };
        let t0 = Instant::now();
        while !node.data_dir.join("api.addr").exists() {
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("the node did not start: {}", node.log());
            }
            if let Some(c) = node.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                bail!("the node exited ({st}): {}", node.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(node)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("node.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// `kill -9` the node and wait for it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // In a namespace the child is `ip netns exec`, which execs pesc: same PID.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the node as a service manager would (SIGTERM) and waits for it
    /// to exit (at most `limit`, then SIGKILL). Returns how long it took and
    /// whether it exited cleanly.
    pub fn stop(&mut self, limit: Duration) -> (Duration, bool) {
        let t0 = Instant::now();
        let Some(mut c) = self.child.take() else {
            return (Duration::ZERO, false);
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        while t0.elapsed() < limit {
            if let Ok(Some(st)) = c.try_wait() {
                return (t0.elapsed(), st.success());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        (t0.elapsed(), false)
    }

    /// Runs the CLI against this node.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_in(args, None)
    }

    pub fn cli_in(&self, args: &[&str], cwd: Option<&Path>) -> Output {
        let mut c = command_in(self.netns.as_deref(), &self.bin);
        c.arg("--data-dir").arg(&self.data_dir).args(args);
        if let Some(d) = cwd {
            c.current_dir(d);
        }
        c.output().expect("running the pesc CLI")
    }

    /// Runs the CLI and parses its stdout as JSON; panics with stderr if it fails.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(args);
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "pesc {args:?} gave no JSON ({e}): {text}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// The node's grid join token (`pesc grid token`).
    pub fn join_token(&self) -> String {
        let out = self.cli(&["grid", "token"]);
        assert!(out.status.success(), "pesc grid token: {out:?}");
        stdout(&out)
    }

    /// Where the node listens for peers (waits until it does).
    pub fn p2p_addrs(&self) -> Vec<String> {
        let t0 = Instant::now();
        loop {
            let text = std::fs::read_to_string(self.data_dir.join("p2p.addr")).unwrap_or_default();
            let v: Vec<String> = text
                .lines()
                .map(str::to_string)
                .filter(|l| !l.is_empty())
                .collect();
            if !v.is_empty() {
                return v;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "the node never listened: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// This node's id (peer id).
    pub fn node_id(&self) -> String {
        self.cli_json(&["nodes", "--json"])
            .as_array()
            .and_then(|a| a.iter().find(|n| n["this_node"] == true))
            .map(|n| n["id"].as_str().unwrap_or_default().to_string())
            .expect("this node in pesc nodes")
    }

    /// Waits until `pesc nodes` here shows `n` nodes connected (self included).
    pub fn wait_connected(&self, n: usize, timeout: Duration) {
        self.wait_nodes(n, timeout, "connected", |a| {
            a.iter().filter(|x| x["connected"] == true).count()
        });
    }

    /// Waits until `pesc nodes` here lists `n` nodes (the grid document
    /// holds them all).
    pub fn wait_known(&self, n: usize, timeout: Duration) {
        self.wait_nodes(n, timeout, "known", |a| a.len());
    }

    /// Polls `pesc nodes --json` until `count` of its list reaches `n` (bounded).
    fn wait_nodes(
        &self,
        n: usize,
        timeout: Duration,
        what: &str,
        count: impl Fn(&[serde_json::Value]) -> usize,
    ) {
        let t0 = Instant::now();
        loop {
            let v = self.cli_json(&["nodes", "--json"]);
            let got = v.as_array().map(|a| count(a)).unwrap_or(0);
            if got >= n {
                return;
            }
            assert!(
                t0.elapsed() < timeout,
                "only {got} of {n} nodes {what}: {v}\nlog: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn api_base(&self) -> String {
        let addr = std::fs::read_to_string(self.data_dir.join("api.addr")).expect("api.addr");
        format!("http://{}/api/v1", addr.trim())
    }

    /// The one-time setup link the node printed at start (it waits for it).
    pub fn setup_link(&self) -> String {
        let t0 = Instant::now();
        loop {
            let log = self.log();
            if let Some(link) = log
                .split_whitespace()
                .find(|w| w.starts_with("http://") && w.contains("/setup?code="))
            {
                return link.to_string();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "no setup link in the log: {log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("api-token"))
            .expect("api-token")
            .trim()
            .to_string()
    }

    /// A blocking HTTP client with the node's token.
    pub fn http(&self) -> Api {
        Api {
            base: self.api_base(),
            token: self.token(),
            http: reqwest::blocking::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("client"),
        }
    }

    /// Polls `pesc status ID --json` until `pred` holds (bounded).
    pub fn wait_for(
        &self,
        id: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let t0 = Instant::now();
        loop {
            let v = self.cli_json(&["status", id, "--json"]);
            if pred(&v) {
                return v;
            }
            assert!(
                t0.elapsed() < timeout,
                "timed out waiting; last status: {v}\nnode log: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The node's HTTP API, for tests that speak it directly.
pub struct Api {
    pub base: String,
    pub token: String,
    pub http: reqwest::blocking::Client,
}

impl Api {
    pub fn get(&self, path: &str) -> reqwest::blocking::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }
    pub fn post(&self, path: &str) -> reqwest::blocking::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }
    pub fn put(&self, path: &str) -> reqwest::blocking::RequestBuilder {
        self.http
            .put(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }
    pub fn patch(&self, path: &str) -> reqwest::blocking::RequestBuilder {
        self.http
            .patch(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }
    pub fn delete(&self, path: &str) -> reqwest::blocking::RequestBuilder {
        self.http
            .delete(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }
    /// The same node's API with another token.
    pub fn with_token(&self, token: &str) -> Api {
        Api {
            base: self.base.clone(),
            token: token.to_string(),
            http: self.http.clone(),
        }
    }
    /// Makes an account (with the caller's rights) and an API token for
    /// it; returns the API as that user.
    pub fn add_user(&self, name: &str, role: &str) -> Api {
        let r = self
            .post("/users")
            .json(&serde_json::json!({"name": name, "password": format!("{name}-password"), "role": role}))
            .send()
            .expect("POST /users");
        assert_eq!(
            r.status(),
            201,
            "adding {name}: {}",
            r.text().unwrap_or_default()
        );
        let (cookie, csrf) = self.login(name, &format!("{name}-password"));
        let t: serde_json::Value = self
            .http
            .post(format!("{}/tokens", self.base))
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
            .json(&serde_json::json!({"label": "tests"}))
            .send()
            .expect("POST /tokens")
            .json()
            .expect("token json");
        self.with_token(t["token"].as_str().expect("a token"))
    }
    /// Logs in: (the Cookie header value, the CSRF token).
    pub fn login(&self, name: &str, password: &str) -> (String, String) {
        let r = self
            .http
            .post(format!("{}/login", self.base))
            .json(&serde_json::json!({"user": name, "password": password}))
            .send()
            .expect("POST /login");
        assert_eq!(r.status(), 200, "login {name}");
        let cookie = r.headers()["set-cookie"]
            .to_str()
            .expect("cookie")
            .split(';')
            .next()
            .expect("cookie value")
            .to_string();
        let me: serde_json::Value = r.json().expect("me");
        (cookie, me["csrf"].as_str().expect("csrf").to_string())
    }
    /// Uploads a one-file shell process and asks for `n` runs of it.
    pub fn submit_script(
        &self,
        script: &str,
        n: u32,
        rooms: &[&str],
    ) -> reqwest::blocking::Response {
        let p: serde_json::Value = self
            .post("/processes?file_name=job.sh&language=shell")
            .body(script.to_string())
            .send()
            .expect("upload")
            .json()
            .expect("process json");
        self.post("/requests")
            .json(&serde_json::json!({"process": p["id"], "repetitions": n, "rooms": rooms}))
            .send()
            .expect("POST /requests")
    }
}

/// Reads one file of a zip archive as text.
pub fn zip_text(zip_path: &Path, name: &str) -> Result<String> {
    use std::io::Read;
    let mut z = zip::ZipArchive::new(std::fs::File::open(zip_path)?)?;
    let mut s = String::new();
    z.by_name(name)?.read_to_string(&mut s)?;
    Ok(s)
}

/// Every entry name of a zip archive.
pub fn zip_names(zip_path: &Path) -> Result<Vec<String>> {
    let z = zip::ZipArchive::new(std::fs::File::open(zip_path)?)?;
    Ok(z.file_names()
        .map(|n| n.map(|s| s.to_string()))
        .collect::<Result<_, _>>()?)
}

/// Writes a file into `dir` and returns its path as a string (for CLI args).
pub fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("writing a test file");
    p.to_str().expect("utf-8 temp path").to_string()
}

/// The per-rank `runs` of a `status ID --json` answer.
pub fn runs(v: &serde_json::Value) -> &Vec<serde_json::Value> {
    v["runs"].as_array().expect("status has runs")
}

impl Node {
    /// `pesc submit ARGS --json`, returning the request id.
    pub fn submit(&self, args: &[&str]) -> String {
        let mut a = vec!["submit"];
        a.extend_from_slice(args);
        a.push("--json");
        self.cli_json(&a)["id"]
            .as_str()
            .expect("submit gave an id")
            .to_string()
    }

    /// `pesc results ID -o DIR`; returns the archive's path.
    pub fn results_zip(&self, id: &str, dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).expect("results dir");
        let out = self.cli(&["results", id, "-o", dir.to_str().expect("utf-8 path")]);
        assert!(
            out.status.success(),
            "results: {out:?}\nlog: {}",
            self.log()
        );
        dir.join(format!("pesc-results-{id}.zip"))
    }
}

/// A glibc utmp login record (384 bytes: `ut_type` USER_PROCESS, a pid, the
/// terminal, the user), to simulate someone logging in at the desktop.
pub fn utmp_login(user: &str, line: &str) -> Vec<u8> {
    let mut r = vec![0u8; 384];
    r[..2].copy_from_slice(&7i16.to_ne_bytes());
    r[4..8].copy_from_slice(&4242i32.to_ne_bytes());
    r[8..8 + line.len().min(32)].copy_from_slice(&line.as_bytes()[..line.len().min(32)]);
    r[44..44 + user.len().min(32)].copy_from_slice(&user.as_bytes()[..user.len().min(32)]);
    r
}

/// Stdout of a CLI call as a trimmed string.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Reads server-sent events until `stop` says so; returns (id, event, data).
pub fn read_events(
    resp: &mut reqwest::blocking::Response,
    mut stop: impl FnMut(&[(u64, String, String)]) -> bool,
) -> Vec<(u64, String, String)> {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(resp);
    let (mut got, mut id, mut event, mut data) = (Vec::new(), 0, String::new(), String::new());
    let mut line = String::new();
    while !stop(&got) {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let l = line.trim_end();
        if let Some(v) = l.strip_prefix("id: ") {
            id = v.parse().unwrap();
        } else if let Some(v) = l.strip_prefix("event: ") {
            event = v.to_string();
        } else if let Some(v) = l.strip_prefix("data: ") {
            data = v.to_string();
        } else if l.is_empty() && !event.is_empty() {
            got.push((id, std::mem::take(&mut event), std::mem::take(&mut data)));
        }
    }
    got
}

/// Host processes of a request's runs (sandboxed runs see their own PIDs,
/// not the host's): (pid, rank), found by the `PESC_REQUEST_ID` and
/// `PESC_RANK` in their environment. Zombies are left out.
pub fn run_processes(request_id: &str) -> Vec<(i32, u32)> {
    let want = format!("PESC_REQUEST_ID={request_id}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    !s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(false)
        })
        .filter_map(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
            if !vars.contains(&want.as_bytes()) {
                return None;
            }
            let rank = vars
                .iter()
                .find_map(|v| std::str::from_utf8(v.strip_prefix(b"PESC_RANK=")?).ok())?
                .parse()
                .ok()?;
            Some((pid, rank))
        })
        .collect()
}
