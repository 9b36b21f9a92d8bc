//! The Debian package, installed as an admin would on a clean desktop: a
//! fresh Debian container (the offline base image), `dpkg -i`, the node
//! started as the service starts it (its account, its data dir; there is no
//! systemd in a container), then the admin's plain `pesc` commands, a
//! request run through it, and a purge that leaves nothing behind.

use std::process::Command;

use pesc_tests::workspace;

const IMAGE: &str = "pesc-offline/python:bookworm";

/// What runs inside the container, as root. Each step prints a marker the
/// test looks for.
const SCRIPT: &str = r#"
set -eu
dpkg -i /tmp/pesc.deb >/dev/null
echo "account: $(id -un pesc) $(stat -c '%U %a' /var/lib/pesc) $(readlink /var/lib/pesc/node.toml) $(stat -c '%G %a' /etc/pesc/node.toml)"
test -x /usr/bin/pesc-sandbox && echo "launcher: installed"
test -f /lib/systemd/system/pesc.service && echo "unit: installed"
# As the unit starts it: the pesc account, PESC_DATA_DIR, `pesc node`.
runuser -u pesc -- env PESC_DATA_DIR=/var/lib/pesc /usr/bin/pesc node --mdns false >/tmp/node.log 2>&1 &
node=$!
for _ in $(seq 150); do [ -e /var/lib/pesc/api.addr ] && break; sleep 0.2; done
[ -e /var/lib/pesc/api.addr ] || { cat /tmp/node.log; exit 1; }
# The admin's commands, with no flags: they find the service's node.
pesc doctor >/tmp/doctor.txt && echo "doctor: exit 0"
cat /tmp/doctor.txt
printf 'print("hello from rank", __import__("os").environ["PESC_RANK"])\n' >/tmp/hello.py
# Exit 0 only when every run succeeded.
pesc submit /tmp/hello.py -n 3 --wait && echo "request: 3 runs succeeded"
pesc status --json >/tmp/status.json && echo "status: read"
kill -TERM $node
wait $node || true
grep -q "node stopped" /tmp/node.log && echo "node: stopped cleanly"
dpkg --purge pesc >/dev/null
if [ ! -e /var/lib/pesc ] && ! id pesc >/dev/null 2>&1 && [ ! -e /usr/bin/pesc ]; then echo "purge: clean"; fi
"#;

#[test]
#[cfg_attr(pesc_skip_docker, ignore = "PESC_SKIP_DOCKER is set")]
fn the_package_installs_a_node_that_runs_work_and_purges_clean() {
    if !pesc_tests::docker_with(&[IMAGE]) {
        return;
    }
    // The package of the binaries the suite built (scripts/deb.sh, as the
    // release package is made, without a second build).
    let out = Command::new(workspace().join("scripts/deb.sh"))
        .env("PESC_DEB_PROFILE", "debug")
        .env("PESC_DEB_NO_BUILD", "1")
        .current_dir(workspace())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "deb.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = workspace().join(String::from_utf8_lossy(&out.stdout).trim());
    assert!(deb.is_file(), "{}", deb.display());

    // No network (nothing leaves the container); seccomp and AppArmor as a
    // desktop's, so the node's sandbox can try its namespaces.
    let name = format!("pesc-package-test-{}", std::process::id());
    let run = Command::new("docker")
        .args(["run", "--rm", "--name", &name, "--network", "none"])
        .args([
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "apparmor=unconfined",
        ])
        .arg("-v")
        .arg(format!("{}:/tmp/pesc.deb:ro", deb.display()))
        .args([IMAGE, "sh", "-c", SCRIPT])
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let _ = Command::new("docker").args(["rm", "-f", &name]).output();
    assert!(run.status.success(), "{text}");
    for marker in [
        "account: pesc pesc 700 /etc/pesc/node.toml pesc 640",
        "launcher: installed",
        "unit: installed",
        "doctor: exit 0",
        "request: 3 runs succeeded",
        "checking as pesc (uid",
        "status: read",
        "node: stopped cleanly",
        "purge: clean",
    ] {
        assert!(text.contains(marker), "no '{marker}' in:\n{text}");
    }
    // The request's three runs ran in the container's node.
    assert!(
        text.contains("3 done") || text.contains("succeeded"),
        "{text}"
    );
}
