//! Which files of a directory go to the grid: everything but what
//! `.gitignore` and `.pescignore` leave out, version control, caches, and
//! files that look like secrets (unless named with `--include`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Files and directories left out because they usually hold secrets or
/// belong to tools, whatever the ignore files say (a name of the path, or
/// its file name's pattern).
const SECRET_NAMES: &[&str] = &[
    ".env",
    ".netrc",
    ".pgpass",
    ".npmrc",
    ".pypirc",
    ".git-credentials",
    "id_rsa",
    "id_dsa",
    "id_ecdsa",
    "id_ed25519",
];
const SECRET_DIRS: &[&str] = &[
    ".git",
    ".ssh",
    ".aws",
    ".gnupg",
    ".hg",
    ".svn",
    "__pycache__",
];
const SECRET_SUFFIXES: &[&str] = &[".pem", ".key", ".p12", ".pfx", ".keystore"];

/// Whether a path (relative, `/`-separated) is left out as a secret or a
/// tool's directory.
pub fn looks_secret(rel: &str) -> bool {
    let parts: Vec<&str> = rel.split('/').collect();
    let Some(name) = parts.last() else {
        return false;
    };
    parts[..parts.len() - 1]
        .iter()
        .any(|d| SECRET_DIRS.contains(d))
        || SECRET_DIRS.contains(name)
        || SECRET_NAMES.contains(name)
        || name.starts_with(".env.")
        || SECRET_NAMES
            .iter()
            .any(|s| s.starts_with("id_") && name.starts_with(s))
        || SECRET_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// The files of `dir` to upload, relative and `/`-separated, sorted:
/// `.gitignore` (with or without a git repository) and `.pescignore` rules
/// apply, secrets are left out, and `include` (paths relative to `dir`)
/// names files to send anyway. Links are not followed.
pub fn files_to_send(dir: &Path, include: &[PathBuf]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let walker = ignore::WalkBuilder::new(dir)
        .hidden(false)
        .parents(false)
        .require_git(false)
        .git_global(false)
        .git_exclude(false)
        .follow_links(false)
        .add_custom_ignore_filename(".pescignore")
        .filter_entry(|e| {
            let n = e.file_name().to_string_lossy();
            !(e.file_type().is_some_and(|t| t.is_dir()) && SECRET_DIRS.contains(&n.as_ref()))
        })
        .build();
    for e in walker {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        if !e.file_type().is_some_and(|t| t.is_file()) {
            continue;
        }
        let rel = relative(dir, e.path())?;
        if !looks_secret(&rel) {
            out.push(rel);
        }
    }
    for p in include {
        let full = dir.join(p);
        let meta = std::fs::symlink_metadata(&full)
            .with_context(|| format!("--include {}: no such file", p.display()))?;
        anyhow::ensure!(
            meta.is_file(),
            "--include {}: not a plain file",
            p.display()
        );
        let rel = relative(dir, &full)?;
        if !out.contains(&rel) {
            out.push(rel);
        }
    }
    out.sort();
    Ok(out)
}

fn relative(dir: &Path, p: &Path) -> Result<String> {
    let rel = p
        .strip_prefix(dir)
        .with_context(|| format!("{} is outside {}", p.display(), dir.display()))?;
    anyhow::ensure!(
        !rel.components()
            .any(|c| matches!(c, std::path::Component::ParentDir)),
        "{} leaves {}",
        p.display(),
        dir.display()
    );
    Ok(rel.to_string_lossy().replace('\\', "/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignored_files_and_secrets_stay_home_unless_named() {
        let d = tempfile::tempdir().unwrap();
        let w = |p: &str| {
            let f = d.path().join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, "x").unwrap();
        };
        for p in [
            "main.py",
            "lib/util.py",
            ".gitignore",
            ".pescignore",
            "data/big.csv",
            "notes.tmp",
            ".env",
            ".env.local",
            "deploy/server.pem",
            ".git/config",
            ".ssh/id_ed25519",
            "id_rsa.pub",
            ".hidden_config.toml",
            "__pycache__/main.cpython-311.pyc",
        ] {
            w(p);
        }
        std::fs::write(d.path().join(".gitignore"), "data/\n").unwrap();
        std::fs::write(d.path().join(".pescignore"), "*.tmp\n").unwrap();
        let got = files_to_send(d.path(), &[]).unwrap();
        assert_eq!(
            got,
            [
                ".gitignore",
                ".hidden_config.toml",
                ".pescignore",
                "lib/util.py",
                "main.py"
            ]
        );
        let got = files_to_send(d.path(), &[PathBuf::from(".env")]).unwrap();
        assert!(got.contains(&".env".to_string()), "{got:?}");
        assert!(files_to_send(d.path(), &[PathBuf::from("../etc/passwd")]).is_err());
    }
}
