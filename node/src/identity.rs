//! The node's identity (an ed25519 key, persisted so restarts keep it) and
//! the local API token.

use std::path::Path;

use anyhow::{Context, Result};
use libp2p_identity::Keypair;
use pesc_protocol::NodeId;

/// Loads `node.key` from the data dir, creating it on first start.
pub fn load_or_create_key(data_dir: &Path) -> Result<Keypair> {
    let path = data_dir.join("node.key");
    if path.exists() {
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        return Keypair::from_protobuf_encoding(&bytes)
            .with_context(|| format!("{} is not a node key", path.display()));
    }
    let key = Keypair::generate_ed25519();
    write_private(
        &path,
        &key.to_protobuf_encoding()
            .context("encoding the node key")?,
    )?;
    Ok(key)
}

pub fn node_id(key: &Keypair) -> NodeId {
    NodeId::new(key.public().to_peer_id().to_string())
}

/// Loads `api-token`, creating a random one on first start.
pub fn load_or_create_token(data_dir: &Path) -> Result<String> {
    let path = data_dir.join("api-token");
    if path.exists() {
        let t = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let t = t.trim().to_string();
        if t.len() >= 32 {
            return Ok(t);
        }
    }
    let token = hex::encode(rand::random::<[u8; 32]>());
    write_private(&path, token.as_bytes())?;
    Ok(token)
}

/// Writes a file only its owner may read.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    write_private_as(path, bytes, None)
}

/// Writes a file only its owner may read, whole or not at all, giving it
/// to `owner` (uid, gid) when root writes into another account's dir. The
/// temporary file is made new (`O_EXCL`, `O_NOFOLLOW`: a link planted in
/// its place is not followed), handed over by its open descriptor before
/// it takes the name (`rename` replaces a link, never writes through it).
pub fn write_private_as(path: &Path, bytes: &[u8], owner: Option<(u32, u32)>) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    // A stale one (or a link in its place): removing never follows it.
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
            .with_context(|| format!("giving {} to uid {uid}", tmp.display()))?;
    }
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
