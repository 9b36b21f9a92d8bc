//! Which grid this data dir belongs to: the grid id and pre-shared key in
//! `grid.key` (owner-only), created on first start or taken from a join token.

use std::path::Path;

use anyhow::{Context, Result, bail};
use pesc_protocol::join::{GridSecret, JoinToken};

use crate::identity::write_private;
use crate::store::Store;

const KEY_FILE: &str = "grid.key";
/// Written by a running node: the addresses it listens on, one per line.
pub const ADDR_FILE: &str = "p2p.addr";

/// Reads `grid.key`, if there is one.
pub fn load(data_dir: &Path) -> Result<Option<GridSecret>> {
    let path = data_dir.join(KEY_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let t: JoinToken = text
        .trim()
        .parse()
        .with_context(|| format!("{} is damaged", path.display()))?;
    Ok(Some(t.secret))
}

fn save(data_dir: &Path, secret: &GridSecret) -> Result<()> {
    let t = JoinToken {
        secret: secret.clone(),
        addrs: Vec::new(),
    };
    write_private(&data_dir.join(KEY_FILE), format!("{t}\n").as_bytes())
}

/// How the node came to its grid.
#[derive(Debug, PartialEq, Eq)]
pub enum Joined {
    /// It made a new grid now.
    Created,
    /// It joined a grid from a token now.
    FromToken,
    /// It is in the grid it was in before.
    Again,
}

/// Settles the grid of this data dir before the node starts.
pub fn settle(
    data_dir: &Path,
    store: &Store,
    join: Option<&JoinToken>,
) -> Result<(GridSecret, Joined)> {
    let existing = load(data_dir)?;
    let meta = store
        .get_meta("grid_id")?
        .map(|v| String::from_utf8_lossy(&v).into_owned());
    if let (Some(s), Some(m)) = (&existing, &meta)
        && &s.grid_id_hex() != m
    {
        bail!(
            "{} names grid {} but the store holds grid {m}: the data dir is inconsistent",
            data_dir.join(KEY_FILE).display(),
            s.grid_id_hex()
        );
    }
    match (join, existing) {
        (Some(t), Some(s)) if t.secret == s => Ok((s, Joined::Again)),
        (Some(t), Some(s)) if t.secret.grid_id == s.grid_id => {
            bail!(
                "the join token is for this grid but carries another key: ask for a fresh token (pesc grid token)"
            )
        }
        (Some(t), old) => {
            // Leaving a grid loses its documents here: only while they hold no request.
            let has_requests = store.doc_keys()?.iter().any(|k| k.starts_with("req/"));
            if has_requests {
                bail!(
                    "this data dir already belongs to grid {} and holds its requests; start the node with another --data-dir to join grid {}",
                    old.map(|s| s.grid_id_hex()).or(meta).unwrap_or_default(),
                    t.secret.grid_id_hex()
                );
            }
            store.clear_docs()?;
            save(data_dir, &t.secret)?;
            store.put_meta("grid_id", t.secret.grid_id_hex().as_bytes())?;
            Ok((t.secret.clone(), Joined::FromToken))
        }
        (None, Some(s)) => {
            if meta.is_none() {
                store.put_meta("grid_id", s.grid_id_hex().as_bytes())?;
            }
            Ok((s, Joined::Again))
        }
        (None, None) => {
            // A data dir from before grid keys keeps its grid id.
            let grid_id = meta
                .as_deref()
                .and_then(pesc_protocol::join::parse_grid_id)
                .unwrap_or_else(rand::random);
            let s = GridSecret {
                grid_id,
                psk: rand::random(),
            };
            save(data_dir, &s)?;
            store.put_meta("grid_id", s.grid_id_hex().as_bytes())?;
            Ok((s, Joined::Created))
        }
    }
}

/// The join token of this data dir's grid, with the addresses the node
/// listens on now (or listened on last).
pub fn token(data_dir: &Path) -> Result<JoinToken> {
    let Some(secret) = load(data_dir)? else {
        bail!(
            "{} belongs to no grid yet: start `pesc node` once to create one",
            data_dir.display()
        );
    };
    let addrs = std::fs::read_to_string(data_dir.join(ADDR_FILE))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect::<Vec<_>>();
    // Another machine cannot use this machine's loopback addresses.
    let is_loopback = |a: &String| a.starts_with("/ip4/127.") || a.starts_with("/ip6/::1/");
    let addrs = if addrs.iter().all(is_loopback) {
        addrs
    } else {
        addrs.into_iter().filter(|a| !is_loopback(a)).collect()
    };
    Ok(JoinToken { secret, addrs })
}

/// Where `pesc join` leaves a token for the node's next start.
pub const JOIN_FILE: &str = "join-token";

/// `pesc join TOKEN`: checks the token and keeps it in the data dir (private
/// to the data dir's owner, the service's user when root runs this), so
/// that the node starts in that grid next time; restarts the `pesc`
/// service when this is its data dir.
pub fn join_later(data_dir: &Path, token: Option<&str>) -> Result<()> {
    // Read from standard input when not given: a token on the command line
    // lands in the shell's history, `ps` and sudo's log.
    let read;
    let token = match token {
        Some(t) if t != "-" => t,
        _ => {
            eprintln!("paste the join token (from `pesc grid token`), then Enter:");
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the join token from standard input")?;
            read = line;
            read.as_str()
        }
    };
    let t: JoinToken = token.trim().parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data dir {}", data_dir.display()))?;
    if load(data_dir)?.is_some_and(|s| s == t.secret) {
        println!("this node is in grid {} already", t.secret.grid_id_hex());
        return Ok(());
    }
    let path = data_dir.join(JOIN_FILE);
    // Root preparing the service's data dir: the file is the service's,
    // handed over before it has its name (the dir is that account's, and
    // what runs as it could plant links there).
    let owner = std::fs::symlink_metadata(data_dir)
        .map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.uid(), m.gid())
        })
        .with_context(|| format!("reading {}", data_dir.display()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let give = (owner.0 != me).then_some(owner);
    crate::identity::write_private_as(&path, format!("{t}\n").as_bytes(), give)?;
    let service = data_dir == Path::new(crate::config::SYSTEM_DATA_DIR)
        && std::process::Command::new("systemctl")
            .args(["restart", "pesc"])
            .status()
            .is_ok_and(|s| s.success());
    if service {
        println!(
            "the pesc service restarted and joins grid {} (journalctl -u pesc to follow it)",
            t.secret.grid_id_hex()
        );
    } else {
        println!(
            "this node joins grid {} at its next start (`pesc node`, or `systemctl restart pesc`)",
            t.secret.grid_id_hex()
        );
    }
    Ok(())
}

/// The token `pesc join` left, if any.
pub fn pending_join(data_dir: &Path) -> Result<Option<JoinToken>> {
    let path = data_dir.join(JOIN_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    text.trim()
        .parse()
        .map(Some)
        .map_err(|e| anyhow::anyhow!("{} is not a join token: {e}", path.display()))
}
