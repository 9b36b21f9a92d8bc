//! Landlock for a run: read and execute on the system paths, read on
//! `/proc`, read and write on its writable places and devices, nothing
//! anywhere else — and, where the kernel has them (ABI 4 and 6), no TCP
//! unless the request needs the network, no signals and no abstract UNIX
//! sockets beyond the run's own processes.
//!
//! The crate degrades to the best ABI the kernel offers; [`abi`] tells the
//! node which one that is, to report it.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope,
};

use super::spec::LaunchSpec;

/// The newest ABI this code was written and tested against.
const TARGET: ABI = ABI::V7;

/// The kernel's Landlock ABI version (0: none).
pub fn abi() -> i32 {
    // SAFETY: the documented version query (no ruleset attributes).
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    if v < 0 { 0 } else { v as i32 }
}

fn add(
    ruleset: landlock::RulesetCreated,
    path: &Path,
    access: BitFlags<AccessFs>,
) -> Result<landlock::RulesetCreated, String> {
    let Ok(fd) = PathFd::new(path) else {
        // Missing paths are simply not allowed.
        return Ok(ruleset);
    };
    let access = if path.is_dir() {
        access
    } else {
        access & AccessFs::from_file(TARGET)
    };
    ruleset
        .add_rule(PathBeneath::new(fd, access))
        .map_err(|e| format!("landlock rule for {}: {e}", path.display()))
}

/// The ruleset for `spec`, not yet enforced: its descriptor, for
/// `landlock_restrict_self` after the program's other setup (`writable`:
/// the places it may change).
pub fn ruleset(spec: &LaunchSpec, writable: &[PathBuf]) -> Result<OwnedFd, String> {
    let read_exec = AccessFs::from_read(TARGET);
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    let all = AccessFs::from_all(TARGET);
    let mut attr = Ruleset::default()
        .handle_access(all)
        .map_err(|e| format!("landlock: {e}"))?
        .scope(Scope::from_all(TARGET))
        .map_err(|e| format!("landlock: {e}"))?;
    if !spec.network {
        attr = attr
            .handle_access(AccessNet::from_all(TARGET))
            .map_err(|e| format!("landlock: {e}"))?;
    }
    let mut rs = attr.create().map_err(|e| format!("landlock: {e}"))?;
    for p in &spec.read_paths {
        rs = add(rs, p, read_exec)?;
    }
    rs = add(rs, Path::new("/proc"), read)?;
    for p in writable {
        rs = add(rs, p, all)?;
    }
    let device = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev;
    for d in &spec.devices {
        rs = add(rs, d, device)?;
    }
    // No descriptor: the kernel enforces none of what was asked.
    Option::<OwnedFd>::from(rs)
        .ok_or_else(|| "landlock was asked for but the kernel enforces none of it".to_string())
}
