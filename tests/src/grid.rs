//! Several nodes that form one grid: on 127.0.0.1 with `--join`/`--peer`,
//! or in network namespaces behind a bridge (for mDNS and partitions).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::{Node, pesc_bin};

/// Nodes of one grid, each with its own data dir under `root`.
/// Grids of up to this many nodes connect every pair.
const FULL_MESH_UP_TO: usize = 4;

pub struct Grid {
    pub nodes: Vec<Node>,
    pub root: tempfile::TempDir,
    /// The namespaces, when the grid lives in them (deleted on drop, after the nodes).
    pub lan: Option<Lan>,
}

impl Grid {
    /// `n` nodes on 127.0.0.1: the first creates the grid; the second joins
    /// with a bare token and `--peer ADDR`, the others with the full token.
    /// Returns once every node sees all of them.
    pub fn loopback(n: usize, slots: u32, extra: &[&str]) -> Result<Grid> {
        Self::loopback_with(pesc_bin("debug"), n, slots, extra)
    }

    /// [`Grid::loopback`] with a given `pesc` binary (benchmarks use release).
    pub fn loopback_with(bin: PathBuf, n: usize, slots: u32, extra: &[&str]) -> Result<Grid> {
        let root = tempfile::tempdir()?;
        let mut nodes = Vec::new();
        let name = |i: usize| format!("n{i}");
        let mut first_extra = vec!["--name", "n0"];
        first_extra.extend_from_slice(extra);
        nodes.push(Node::start_in(
            root.path().join("n0"),
            slots,
            bin.clone(),
            None,
            &first_extra,
        )?);
        let full = nodes[0].join_token();
        let bare = full.split('@').next().unwrap_or_default().to_string();
        let peer = nodes[0].p2p_addrs()[0].clone();
        for i in 1..n {
            let nm = name(i);
            let mut args: Vec<&str> = vec!["--name", &nm];
            if i == 1 {
                args.extend(["--join", &bare, "--peer", &peer]);
            } else {
                args.extend(["--join", &full]);
            }
            args.extend_from_slice(extra);
            nodes.push(Node::start_in(
                root.path().join(&nm),
                slots,
                bin.clone(),
                None,
                &args,
            )?);
        }
        for node in &nodes {
            if n <= FULL_MESH_UP_TO {
                node.wait_connected(n, Duration::from_secs(30));
            } else {
                // Larger grids keep connections to their sync links only.
                node.wait_known(n, Duration::from_secs(30));
            }
        }
        Ok(Grid {
            nodes,
            root,
            lan: None,
        })
    }

    /// `n` nodes, one per network namespace on a private bridge, finding
    /// each other by mDNS only (no `--peer`; the joiners get a bare token).
    pub fn namespaces(n: usize, slots: u32, extra: &[&str]) -> Result<Grid> {
        let lan = Lan::create(n)?;
        let root = tempfile::tempdir()?;
        let bin = pesc_bin("debug");
        let mut nodes = Vec::new();
        let mut token = String::new();
        for i in 0..n {
            let nm = format!("n{i}");
            let mut args: Vec<&str> = vec![
                "--name",
                &nm,
                "--listen",
                "/ip4/0.0.0.0/tcp/7373",
                "--mdns",
                "true",
            ];
            if i > 0 {
                args.extend(["--join", &token]);
            }
            args.extend_from_slice(extra);
            let node = Node::start_opts(
                root.path().join(&nm),
                slots,
                bin.clone(),
                None,
                &args,
                Some(&lan.node_ns(i)),
            )?;
            if i == 0 {
                let full = node.join_token();
                token = full.split('@').next().unwrap_or_default().to_string();
            }
            nodes.push(node);
        }
        for node in &nodes {
            node.wait_connected(n, Duration::from_secs(30));
        }
        Ok(Grid {
            nodes,
            root,
            lan: Some(lan),
        })
    }

    pub fn dir(&self, i: usize) -> PathBuf {
        self.root.path().join(format!("n{i}"))
    }
}

impl Drop for Grid {
    fn drop(&mut self) {
        // Nodes first (by PID), then their namespaces.
        for n in &mut self.nodes {
            n.kill9();
        }
        self.lan.take();
    }
}

/// A private LAN: a bridge in its own namespace and one namespace per node,
/// with addresses 10.99.0.(i+1)/24 that exist only inside them.
pub struct Lan {
    prefix: String,
    n: usize,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Lan {
    pub fn create(n: usize) -> Result<Lan> {
        // Unique per test process, so tests may run at once.
        let prefix = format!("pesc{}", std::process::id());
        let lan = Lan { prefix, n: 0 };
        let sw = lan.switch_ns();
        ip(&["netns", "add", &sw])?;
        let mut lan = lan;
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &sw,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for i in 0..n {
            let ns = lan.node_ns(i);
            ip(&["netns", "add", &ns])?;
            lan.n = i + 1;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            let port = format!("sw{i}");
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            let addr = format!("10.99.0.{}/24", i + 1);
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "multicast", "on", "up"])?;
        }
        Ok(lan)
    }

    fn switch_ns(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    pub fn node_ns(&self, i: usize) -> String {
        format!("{}-n{i}", self.prefix)
    }

    /// Cuts (`false`) or heals (`true`) node `i`'s link to the bridge.
    pub fn set_link(&self, i: usize, up: bool) -> Result<()> {
        ip(&[
            "-n",
            &self.switch_ns(),
            "link",
            "set",
            &format!("sw{i}"),
            if up { "up" } else { "down" },
        ])
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for i in 0..self.n {
            let _ = ip(&["netns", "del", &self.node_ns(i)]);
        }
        let _ = ip(&["netns", "del", &self.switch_ns()]);
    }
}

/// Whether this machine lets the tests make network namespaces (root and iproute2).
pub fn namespaces_available() -> bool {
    let probe = format!("pesc{}-probe", std::process::id());
    let ok = ip(&["netns", "add", &probe]).is_ok();
    if ok {
        let _ = ip(&["netns", "del", &probe]);
    }
    ok
}

/// Bytes of a file (for comparing results archives).
pub fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_default()
}
