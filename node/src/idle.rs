//! How long the desktop has gone without its owner: no keyboard or mouse.
//!
//! Where logind has a local session, its IdleHint says (the desktop
//! environment sets it after its own idle delay; `IdleSinceHint` says
//! since when). Otherwise, or when told to, the node looks at input
//! devices: the kernel updates a terminal's access time on every key read
//! (what `w` shows as idle), and the nodes under `/dev/input` as their
//! readers read events; the newest access is the owner's last touch. Tests point `input_paths` at a
//! file of their own and touch it (the same reading, a simulated owner).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

/// Where idle time is read from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdleSource {
    /// logind where it has a local session, input devices otherwise.
    #[default]
    Auto,
    Logind,
    Input,
}

/// The input devices looked at by default: terminals and `/dev/input`.
pub fn default_input_paths() -> Vec<PathBuf> {
    [
        "/dev/input",
        "/dev/pts",
        "/dev/tty1",
        "/dev/tty2",
        "/dev/tty7",
    ]
    .iter()
    .map(PathBuf::from)
    .collect()
}

/// logind is asked at most this often (it is a process to start).
const LOGIND_EVERY: Duration = Duration::from_secs(5);

/// Reads idle time, caching logind's answer between asks.
pub struct IdleReader {
    logind: Option<(Instant, Option<u64>)>,
}

impl IdleReader {
    pub fn new() -> IdleReader {
        IdleReader { logind: None }
    }

    /// Milliseconds since the owner last touched the desktop; `None` when
    /// nothing here can tell.
    pub fn idle_ms(&mut self, source: IdleSource, paths: &[PathBuf]) -> Option<u64> {
        if source != IdleSource::Input {
            let fresh = self.logind.filter(|(at, _)| at.elapsed() < LOGIND_EVERY);
            let answer = match fresh {
                Some((_, a)) => a,
                None => {
                    let a = logind_idle_ms();
                    self.logind = Some((Instant::now(), a));
                    a
                }
            };
            if answer.is_some() || source == IdleSource::Logind {
                return answer;
            }
        }
        input_idle_ms(paths, SystemTime::now())
    }
}

/// Milliseconds since the newest access of the input devices
/// under `paths` (a directory's entries count, one level down).
pub fn input_idle_ms(paths: &[PathBuf], now: SystemTime) -> Option<u64> {
    let mut newest: Option<SystemTime> = None;
    let mut look = |p: &Path| {
        if let Ok(m) = std::fs::metadata(p) {
            // Access only: a terminal's change time moves with output too,
            // and a program printing is not its owner typing.
            if let Ok(t) = m.accessed() {
                newest = Some(newest.map_or(t, |n| n.max(t)));
            }
        }
    };
    for p in paths {
        match std::fs::read_dir(p) {
            Ok(entries) => entries.flatten().for_each(|e| look(&e.path())),
            Err(_) => look(p),
        }
    }
    let newest = newest?;
    Some(
        now.duration_since(newest)
            .unwrap_or(Duration::ZERO)
            .as_millis()
            .min(u128::from(u64::MAX)) as u64,
    )
}

/// The least idle time of logind's local user sessions, when it has any.
fn logind_idle_ms() -> Option<u64> {
    let out = Command::new("loginctl")
        .args(["list-sessions", "--no-legend"])
        .output()
        .ok()?;
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    let now_us = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?
        .as_micros() as u64;
    ids.iter()
        .filter_map(|id| {
            let out = Command::new("loginctl")
                .args([
                    "show-session",
                    id,
                    "-p",
                    "IdleHint",
                    "-p",
                    "IdleSinceHint",
                    "-p",
                    "Remote",
                    "-p",
                    "Class",
                ])
                .output()
                .ok()?;
            session_idle_ms(&String::from_utf8_lossy(&out.stdout), now_us)
        })
        .min()
}

/// One session's idle time from `loginctl show-session`'s properties: a
/// local user session, idle since `IdleSinceHint` (µs) or active (0).
pub fn session_idle_ms(props: &str, now_us: u64) -> Option<u64> {
    let get = |k: &str| {
        props
            .lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
    };
    if get("Remote") == Some("yes") || get("Class").is_some_and(|c| c != "user") {
        return None;
    }
    match get("IdleHint")? {
        "yes" => {
            let since: u64 = get("IdleSinceHint")?.parse().ok()?;
            Some(now_us.saturating_sub(since) / 1000)
        }
        _ => Some(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_touched_device_reads_as_activity() {
        let dir = tempfile::tempdir().unwrap();
        let kbd = dir.path().join("kbd");
        std::fs::write(&kbd, "").unwrap();
        let paths = vec![kbd.clone()];
        let later = SystemTime::now() + Duration::from_secs(600);
        let idle = input_idle_ms(&paths, later).unwrap();
        assert!((599_000..=601_000).contains(&idle), "{idle}");
        // A directory's entries count.
        let idle = input_idle_ms(&[dir.path().to_path_buf()], later).unwrap();
        assert!(idle <= 601_000, "{idle}");
        assert_eq!(input_idle_ms(&[dir.path().join("none")], later), None);
    }

    #[test]
    fn logind_sessions_read() {
        let now = 10_000_000_000;
        let idle = "IdleHint=yes\nIdleSinceHint=9000000000\nRemote=no\nClass=user\n";
        assert_eq!(session_idle_ms(idle, now), Some(1_000_000));
        let active = "IdleHint=no\nIdleSinceHint=0\nRemote=no\nClass=user\n";
        assert_eq!(session_idle_ms(active, now), Some(0));
        let ssh = "IdleHint=no\nIdleSinceHint=0\nRemote=yes\nClass=user\n";
        assert_eq!(
            session_idle_ms(ssh, now),
            None,
            "a remote login is not the owner"
        );
        let greeter = "IdleHint=no\nRemote=no\nClass=greeter\n";
        assert_eq!(session_idle_ms(greeter, now), None);
    }
}
