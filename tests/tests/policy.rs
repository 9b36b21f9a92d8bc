//! The desktop owner's CPU limit against real load on this machine.

use std::process::{Child, Command};
use std::time::Duration;

use pesc_tests::{Node, runs, write_file};

/// Busy loops that are not the node's: the owner's work.
struct Load(Vec<Child>);

impl Drop for Load {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_busy_machine_takes_no_new_runs_but_its_own_runs_do_not_count() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start_in(
        tmp.path().join("data"),
        2,
        pesc_tests::pesc_bin("debug"),
        None,
        &["--pause-when-others-above", "40"],
    )
    .unwrap();
    // The node's own busy runs are not "others": it keeps taking runs while
    // they spin (both slots fill, one after the other).
    let spin = write_file(
        tmp.path(),
        "spin.sh",
        "end=$(($(date +%s) + 5))\nwhile [ $(date +%s) -lt $end ]; do :; done\n",
    );
    let own = node.submit(&[&spin, "-n", "4"]);
    let v = node.wait_for(&own, Duration::from_secs(60), |v| {
        v["state"] == "succeeded" || v["state"] == "failed"
    });
    assert_eq!(v["state"], "succeeded", "{v}\n{}", node.log());
    assert!(
        !node.log().contains("the machine is busy"),
        "{}",
        node.log()
    );
    // Two busy loops of someone else on two cores: the node stops claiming.
    let load = Load(
        (0..2)
            .map(|_| {
                Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .spawn()
                    .unwrap()
            })
            .collect(),
    );
    let t0 = std::time::Instant::now();
    while !node.log().contains("the machine is busy") {
        assert!(t0.elapsed() < Duration::from_secs(20), "{}", node.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let quick = write_file(tmp.path(), "quick.sh", "true\n");
    let id = node.submit(&[&quick, "-n", "1"]);
    std::thread::sleep(Duration::from_secs(4));
    let v = node.cli_json(&["status", &id, "--json"]);
    assert_eq!(runs(&v)[0]["state"], "queued", "{v}");
    drop(load);
}
