//! Attacks on a real node by a user's run on the process executor (the
//! embedded default): it must not read the node's data, see or signal the
//! node, make its owner admin, make the node follow links it planted, hang
//! the node with a FIFO, outlive a cancel, or exhaust the machine.

use std::path::Path;
use std::time::{Duration, Instant};

use pesc_tests::{Api, Node, runs, zip_names};
use serde_json::{Value, json};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Uploads `script` (shell) as `api`'s user and asks for `n` runs; returns the request id.
fn submit(api: &Api, script: &str, extra: Value) -> String {
    let p: Value = api
        .post("/processes?file_name=job.sh&language=shell")
        .body(script.to_string())
        .send()
        .expect("upload")
        .json()
        .expect("process json");
    let mut body = json!({"process": p["id"], "repetitions": 1});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let r = api
        .post("/requests")
        .json(&body)
        .send()
        .expect("POST /requests");
    assert_eq!(r.status(), 201, "submit: {}", r.text().unwrap_or_default());
    let v: Value = r.json().expect("request json");
    v["id"].as_str().expect("id").to_string()
}

fn finished(v: &Value) -> bool {
    matches!(
        v["state"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}

/// Every file of a zip, as bytes.
fn zip_contents(path: &Path) -> Vec<(String, Vec<u8>)> {
    use std::io::Read;
    let mut z = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    (0..z.len())
        .map(|i| {
            let mut f = z.by_index(i).unwrap();
            let mut b = Vec::new();
            f.read_to_end(&mut b).unwrap();
            (f.name().map(|n| n.to_string()).unwrap_or_default(), b)
        })
        .collect()
}

/// Host processes whose command line contains `needle`.
fn host_processes(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn a_users_run_can_read_nothing_of_the_node_and_cannot_signal_it() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(2).unwrap();
    let admin = node.http();
    let mallory = admin.add_user("mallory", "user");
    let data = node.data_dir.canonicalize().unwrap();
    let data = data.display();
    let pid = node.pid();
    let token = node.token();
    let script = format!(
        r#"out=output/output.txt
try() {{ if cat "$1" >/dev/null 2>&1; then echo "READ $1" >>$out; cat "$1" >>output/loot; else echo "DENIED $1" >>$out; fi; }}
for f in ../api-token ../../api-token ../../../api-token ../../../../api-token ../../../../../api-token \
  {data}/api-token {data}/grid.key {data}/node.key {data}/node.redb {data}/node.toml {data}/node.log \
  /proc/{pid}/environ /proc/{pid}/cmdline /proc/1/environ /etc/shadow; do try "$f"; done
for d in {data} {data}/blobs {data}/work {data}/work/slots/1 {data}/work/slots/1/app /root /home /run; do
  if ls "$d" >/dev/null 2>&1; then echo "LISTED $d" >>$out; else echo "DENIED $d" >>$out; fi
done
if kill -0 {pid} 2>/dev/null; then echo "SIGNALLED {pid}" >>$out; else echo "DENIED signal" >>$out; fi
kill -TERM {pid} 2>/dev/null
kill -KILL -1 2>/dev/null
id >>$out
echo "HOME=$HOME PATH=$PATH" >>$out
env | grep -i -e token -e ssh_auth -e display -e proxy >>$out
echo done >>$out
"#
    );
    let id = submit(&mallory, &script, json!({}));
    let v = node.wait_for(&id, Duration::from_secs(60), finished);
    assert_eq!(v["state"], "succeeded", "{v}");
    let zip = node.results_zip(&id, &tmp.path().join("results"));
    let files = zip_contents(&zip);
    let report = files
        .iter()
        .find(|(n, _)| n == "output.txt")
        .map(|(_, b)| String::from_utf8_lossy(b).to_string())
        .expect("output.txt");
    println!("{report}");
    assert!(
        report.contains("done"),
        "the script ran to its end: {report}"
    );
    for bad in ["READ ", "LISTED ", "SIGNALLED "] {
        assert!(
            !report.lines().any(|l| l.starts_with(bad)),
            "the run reached the node: {report}"
        );
    }
    for (name, bytes) in &files {
        assert!(
            !String::from_utf8_lossy(bytes).contains(&token),
            "the node's token is in {name} of the results"
        );
    }
    assert!(!files.iter().any(|(n, _)| n.ends_with("loot")));
    assert!(
        !report.contains("uid=0(") || !is_root(),
        "a run of a root node must not run as root: {report}"
    );
    assert!(report.contains("HOME=/app"), "{report}");
    // The node lived through the signals, and mallory is no admin.
    let h = admin.get("/node").send().unwrap();
    assert_eq!(h.status(), 200);
    let r = mallory
        .post("/users")
        .json(&json!({"name": "mallory2", "password": "long-enough-pass", "role": "admin"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let users: Value = admin.get("/users").send().unwrap().json().unwrap();
    let admins: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["role"] == "admin")
        .filter_map(|u| u["name"].as_str())
        .collect();
    assert!(!admins.contains(&"mallory"), "{users}");
    // The node says how it walls runs in.
    let me: Value = admin.get("/node").send().unwrap().json().unwrap();
    let iso = me["isolation"].as_str().unwrap_or_default();
    assert!(iso.starts_with("sandbox ("), "{me}");
    if is_root() {
        assert!(iso.contains("uid per slot"), "{iso}");
    }
    let listed = node.cli(&["nodes"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("sandbox"),
        "{listed:?}"
    );
}

/// A parallel request's runs have the network: they reach the node's API,
/// but without its token (which they still cannot read) every call that
/// matters is refused.
#[test]
fn a_parallel_runs_network_reaches_the_api_but_not_its_token() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(2).unwrap();
    let admin = node.http();
    let mallory = admin.add_user("mallory", "user");
    let data = node.data_dir.canonicalize().unwrap();
    let data = data.display();
    let base = node.api_base();
    let script = format!(
        r#"out=output/output.txt
for f in {data}/api-token {data}/grid.key {data}/node.key; do
  if cat "$f" >/dev/null 2>&1; then echo "READ $f" >>$out; else echo "DENIED $f" >>$out; fi
done
python3 - >>$out <<'PY'
import urllib.request, urllib.error, json
def call(method, path, body=None, token=None):
    req = urllib.request.Request("{base}" + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={{"Content-Type": "application/json", **({{"Authorization": "Bearer " + token}} if token else {{}})}})
    try:
        return urllib.request.urlopen(req, timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError as e:
        return "unreachable " + str(e)
print("GET /node", call("GET", "/node"))
print("GET /users", call("GET", "/users"))
print("POST /users", call("POST", "/users", {{"name": "mallory3", "password": "long-enough-pass", "role": "admin"}}))
print("POST /users forged", call("POST", "/users", {{"name": "mallory4", "password": "long-enough-pass", "role": "admin"}}, "pesc_forged"))
PY
echo done >>$out
"#
    );
    let id = submit(&mallory, &script, json!({"parallel": true}));
    let v = node.wait_for(&id, Duration::from_secs(60), finished);
    assert_eq!(v["state"], "succeeded", "{v}");
    let zip = node.results_zip(&id, &tmp.path().join("results"));
    let report = zip_contents(&zip)
        .into_iter()
        .find(|(n, _)| n == "output.txt")
        .map(|(_, b)| String::from_utf8_lossy(&b).to_string())
        .expect("output.txt");
    assert!(report.contains("done"), "{report}");
    assert!(!report.contains("READ "), "{report}");
    // It has the network (the API answered), and nothing without a token.
    assert!(!report.contains("unreachable"), "{report}");
    for l in [
        "GET /users 401",
        "POST /users 401",
        "POST /users forged 401",
    ] {
        assert!(report.contains(l), "{report}");
    }
    let users: Value = admin.get("/users").send().unwrap().json().unwrap();
    assert!(
        !users.to_string().contains("mallory3") && !users.to_string().contains("mallory4"),
        "{users}"
    );
}

#[test]
fn links_a_run_plants_are_never_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(1).unwrap();
    let api = node.http();
    let data = node.data_dir.canonicalize().unwrap();
    let data = data.display();
    let token = node.token();
    // First attempt: links in output/, at the progress file and in
    // checkpoint/ (next to a real file), then fail; the retry reports what
    // its restored checkpoint holds.
    let script = format!(
        r#"if [ -f checkpoint/real ]; then
  ls -A checkpoint >output/output.txt
  exit 0
fi
ln -s {data}/api-token output/leak
ln -s {data} output/datadir
ln -s /app/../../../../{data}/api-token output/dots
rm -f .pesc-progress; ln -s {data}/api-token .pesc-progress
ln -s {data}/api-token checkpoint/ckpt
echo kept >checkpoint/real
sleep 2
exit 1
"#
    );
    let id = submit(&api, &script, json!({"retries": 1}));
    let v = node.wait_for(&id, Duration::from_secs(60), finished);
    assert_eq!(v["state"], "succeeded", "{v}");
    let run = &runs(&v)[0];
    assert_eq!(run["attempts"], 2, "{v}\n{}", node.log());
    assert_ne!(run["message"].as_str(), Some(token.as_str()));
    let zip = node.results_zip(&id, &tmp.path().join("results"));
    let listing = pesc_tests::zip_text(&zip, "output.txt").unwrap();
    assert!(
        listing.contains("real"),
        "the checkpoint came back: {listing}"
    );
    for (name, bytes) in zip_contents(&zip) {
        assert!(!String::from_utf8_lossy(&bytes).contains(&token), "{name}");
    }

    // output/ itself replaced by a link: nothing of it is packed, and the
    // run fails with a reason that says so.
    let script = format!("rmdir output && ln -s {data} output\n");
    let id = submit(&api, &script, json!({}));
    let v = node.wait_for(&id, Duration::from_secs(60), finished);
    assert_eq!(v["state"], "failed", "{v}");
    let reason = runs(&v)[0]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("output/"), "{reason}");
    let names = zip_names(&node.results_zip(&id, &tmp.path().join("r2"))).unwrap_or_default();
    assert!(
        !names
            .iter()
            .any(|n| n.contains("api-token") || n.contains("node.key")),
        "{names:?}"
    );
}

#[test]
fn a_fifo_hangs_nothing_and_cancel_leaves_no_process_behind() {
    let node = Node::start(1).unwrap();
    let api = node.http();
    // A FIFO at the progress file: the node reads it every second and at the end.
    let id = submit(
        &api,
        "rm -f .pesc-progress; mkfifo .pesc-progress; sleep 2; echo fine >output/output.txt\n",
        json!({}),
    );
    let v = node.wait_for(&id, Duration::from_secs(60), finished);
    assert_eq!(v["state"], "succeeded", "{v}");

    // A child that left the process group (setsid) and a double fork.
    let marker = 31_000 + std::process::id() % 1000;
    let script = format!(
        "setsid sleep {marker}.5 &\n(sh -c 'sleep {marker}.25 &' &)\nrm -f .pesc-progress; mkfifo .pesc-progress\nsleep {marker}\n"
    );
    let id = submit(&api, &script, json!({}));
    let t0 = Instant::now();
    while host_processes(&format!("sleep {marker}.5")).is_empty()
        || host_processes(&format!("sleep {marker}.25")).is_empty()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the run did not start: {}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = node.cli(&["cancel", &id]);
    assert!(out.status.success(), "{out:?}");
    node.wait_for(&id, Duration::from_secs(30), |v| v["state"] == "cancelled");
    let t0 = Instant::now();
    loop {
        let left = host_processes(&format!("sleep {marker}"));
        if left.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "processes outlived the cancel: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The slot is free again.
    let id = submit(&api, "echo again >output/output.txt\n", json!({}));
    let v = node.wait_for(&id, Duration::from_secs(60), finished);
    assert_eq!(v["state"], "succeeded", "{v}");
}

#[test]
#[cfg_attr(
    pesc_not_root,
    ignore = "needs a root node (slot uids, control groups)"
)]
fn a_fork_bomb_and_a_disk_filler_are_contained_and_fail_with_a_reason() {
    if !is_root() {
        eprintln!("SKIPPED: process limits per slot uid need a root node");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // Slot uids of their own: the process limit counts every process of a uid.
    std::fs::write(
        data.join("node.toml"),
        "[sandbox]\nuid_base = 62000\nprocesses = 64\nfile_size_mb = 8\n",
    )
    .unwrap();
    let node = Node::start_in(data, 1, pesc_tests::pesc_bin("debug"), None, &[]).unwrap();
    let api = node.http();
    let bomb = r#"n=0
while [ $n -lt 100000 ]; do
  if ! sleep 30 2>/dev/null & then echo "stopped after $n" >output/output.txt; exit 3; fi
  n=$((n+1))
  if [ -f output/output.txt ]; then break; fi
done
wait
"#;
    let id = submit(&api, bomb, json!({}));
    let v = node.wait_for(&id, Duration::from_secs(120), finished);
    assert_eq!(v["state"], "failed", "{v}");
    let run = &runs(&v)[0];
    assert_eq!(run["exit_code"], 3, "the run hit its process limit: {v}");
    assert!(
        host_processes("sleep 30").len() < 64,
        "the bomb's processes went with the run"
    );

    let id = submit(
        &api,
        "exec dd if=/dev/zero of=big bs=1M count=100\n",
        json!({}),
    );
    let v = node.wait_for(&id, Duration::from_secs(60), finished);
    assert_eq!(v["state"], "failed", "{v}");
    let reason = runs(&v)[0]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("file_size_mb"), "{reason}");
    // The node is fine and runs the next one.
    let id = submit(&api, "echo fine >output/output.txt\n", json!({}));
    let v = node.wait_for(&id, Duration::from_secs(60), finished);
    assert_eq!(v["state"], "succeeded", "{v}");
}

#[test]
#[cfg_attr(
    pesc_not_root,
    ignore = "needs a root node (slot uids, control groups)"
)]
fn a_runs_memory_processes_and_cpu_are_capped_by_its_slots_control_group() {
    if !is_root() || !Path::new("/sys/fs/cgroup").exists() {
        eprintln!("SKIPPED: control groups need a root node and /sys/fs/cgroup");
        return;
    }
    let node = Node::start(1).unwrap();
    let info: Value = node.http().get("/node").send().unwrap().json().unwrap();
    let isolation = info["isolation"].as_str().unwrap_or_default().to_string();
    assert!(isolation.contains("cgroup v"), "{isolation}");
    let api = node.http();
    // The run is in its slot's group (no cgroup namespace: the path shows).
    let id = submit(
        &api,
        "cat /proc/self/cgroup > output/output.txt\n",
        json!({}),
    );
    let v = node.wait_for(&id, Duration::from_secs(60), finished);
    assert_eq!(v["state"], "succeeded", "{v}");
    let zip = node.results_zip(&id, &std::env::temp_dir());
    let text = pesc_tests::zip_text(&zip, "output.txt").unwrap();
    assert!(
        text.contains("/pesc-") && text.contains("/slot-0"),
        "{text}\n{}",
        node.log()
    );
    // Over its request's memory: killed, whatever it forks.
    let hog = "python3 -c 'b = bytearray(256 << 20); b[::4096] = b\"x\" * len(b[::4096]); print(len(b))'\n";
    let id = submit(&api, hog, json!({"limits": {"memory_mb": 64}}));
    let v = node.wait_for(&id, Duration::from_secs(60), finished);
    assert_eq!(v["state"], "failed", "{v}");
    let reason = runs(&v)[0]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("memory limit (64 MiB)"), "{reason}");
    // The same program without the limit runs.
    let id = submit(&api, hog, json!({}));
    let v = node.wait_for(&id, Duration::from_secs(60), finished);
    assert_eq!(v["state"], "succeeded", "{v}");
}

#[test]
fn what_a_run_makes_the_node_store_is_capped_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("node.toml"),
        "[results]\noutput_files = 10\noutput_mb = 1\nlog_mb = 1\ndisk_mb = 3\n",
    )
    .unwrap();
    let node = Node::start_in(data, 2, pesc_tests::pesc_bin("debug"), None, &[]).unwrap();
    let api = node.http();
    // Rank by rank: too many files, too big an output, too long a log,
    // too much left in the app dir, and one within every limit.
    let script = r#"case $PESC_RANK in
0) for i in $(seq 20); do : > output/f$i; done ;;
1) head -c 2097152 /dev/zero > output/big ;;
2) head -c 2097152 /dev/zero | tr '\0' x ;;
3) head -c 4194304 /dev/zero > scratch ;;
4) echo fine > output/output.txt ;;
esac
"#;
    let id = submit(&api, script, json!({"repetitions": 5}));
    let v = node.wait_for(&id, Duration::from_secs(120), finished);
    let reason = |r: usize| {
        runs(&v)[r]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    for (rank, limit) in [
        (0, "output_files"),
        (1, "output_mb"),
        (2, "log_mb"),
        (3, "disk_mb"),
    ] {
        assert_eq!(runs(&v)[rank]["state"], "failed", "rank {rank}: {v}");
        assert!(
            reason(rank).contains(limit),
            "rank {rank}: {}",
            reason(rank)
        );
    }
    assert_eq!(runs(&v)[4]["state"], "succeeded", "{v}");
    // The long log was cut at the limit, not stored whole.
    let log = api
        .get(&format!("/requests/{id}/runs/2/logs"))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(log.len(), 1 << 20, "the stored log is cut at log_mb");
}

#[test]
fn the_data_dir_is_the_nodes_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(1).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&node.data_dir), 0o700);
    for f in ["api-token", "node.key", "node.redb"] {
        assert_eq!(mode(&node.data_dir.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&node.data_dir.join("blobs")), 0o700);
    // The join token (the grid's password) is not in the log.
    let token = node.join_token();
    let secret = token.split('@').next().unwrap_or(&token);
    assert!(secret.len() > 20);
    assert!(!node.log().contains(secret), "the log shows the join token");
    assert!(node.log().contains("pesc grid token"));
    // A data dir others can write: refused, with the fix.
    let open = tmp.path().join("open");
    std::fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = std::process::Command::new(pesc_tests::pesc_bin("debug"))
        .arg("--data-dir")
        .arg(&open)
        .args(["node", "--api", "127.0.0.1:0", "--mdns", "false"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 700"), "{err}");
}

#[test]
fn uploads_are_their_owners_unless_shared_with_a_room() {
    let node = Node::start(1).unwrap();
    let admin = node.http();
    let alice = admin.add_user("alice", "user");
    let bob = admin.add_user("bob", "user");
    let r = alice
        .post("/files?name=data.csv")
        .body("x,y\n1,2\n")
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    // Bob replacing Alice's input: refused, and hers is unchanged.
    let r = bob
        .post("/files?name=data.csv")
        .body("poisoned\n")
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().unwrap().contains("belongs to alice"));
    let files: Value = alice.get("/files").send().unwrap().json().unwrap();
    let f = files
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "data.csv")
        .expect("alice sees her file");
    assert_eq!(f["owner"], "alice");
    assert_eq!(f["size"], 8);
    // Bob does not see Alice's uploads, and cannot run her process or
    // put her file in his request.
    let p: Value = alice
        .post("/processes?file_name=job.sh&language=shell")
        .body("cat data.csv > output/output.txt\n")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let seen: Value = bob.get("/processes").send().unwrap().json().unwrap();
    assert!(!seen.as_array().unwrap().iter().any(|x| x["id"] == p["id"]));
    let seen: Value = bob.get("/files").send().unwrap().json().unwrap();
    assert!(seen.as_array().unwrap().is_empty(), "{seen}");
    let r = bob
        .post("/requests")
        .json(&json!({"process": p["id"], "repetitions": 1}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let own: Value = bob
        .post("/processes?file_name=mine.sh&language=shell")
        .body("cat data.csv\n")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let r = bob
        .post("/requests")
        .json(&json!({"process": own["id"], "repetitions": 1, "shared_files": ["data.csv"]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    // Alice uses both.
    let r = alice
        .post("/requests")
        .json(&json!({"process": p["id"], "repetitions": 1, "shared_files": ["data.csv"]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    // Bob uploading the very same code gets a process of his own; Alice's
    // stays hers.
    let same: Value = bob
        .post("/processes?file_name=job.sh&language=shell")
        .body("cat data.csv > output/output.txt\n")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_ne!(
        same["id"], p["id"],
        "an identical upload took over alice's process"
    );
    let mine: Value = alice.get("/processes").send().unwrap().json().unwrap();
    assert!(
        mine.as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == p["id"] && x["owner"] == "alice")
    );

    // Shared with a room Bob is in: Bob sees and uses them; Carol, outside
    // the room, still cannot; nobody but Alice may replace the file.
    let carol = admin.add_user("carol", "user");
    let r = admin
        .post("/rooms")
        .json(&json!({"name": "lab"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    for who in ["alice", "bob"] {
        let r = admin
            .put(&format!("/rooms/lab/users/{who}"))
            .send()
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().unwrap_or_default());
    }
    let r = alice
        .post("/files?name=data.csv&rooms=lab")
        .body("x,y\n1,2\n")
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    let r = alice
        .post("/processes?file_name=job.sh&language=shell&rooms=lab")
        .body("cat data.csv > output/output.txt\n")
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = carol
        .post("/files?name=x.csv&rooms=lab")
        .body("1\n")
        .send()
        .unwrap();
    assert_eq!(r.status(), 403, "carol shared with a room she is not in");
    let seen: Value = bob.get("/processes").send().unwrap().json().unwrap();
    assert!(
        seen.as_array().unwrap().iter().any(|x| x["id"] == p["id"]),
        "{seen}"
    );
    // Shared with lab: it goes to lab's nodes only.
    let r = bob
        .post("/requests")
        .json(&json!({"process": p["id"], "repetitions": 1, "shared_files": ["data.csv"]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 403, "a shared upload left its room");
    let r = bob
        .post("/requests")
        .json(&json!({"process": p["id"], "repetitions": 1, "shared_files": ["data.csv"], "rooms": ["lab"]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    let r = carol.post("/files/data.csv/fetch").send().unwrap();
    assert_eq!(r.status(), 404, "carol fetched a file she may not see");
    let r = carol
        .post("/requests")
        .json(&json!({"process": p["id"], "repetitions": 1}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = bob
        .post("/files?name=data.csv")
        .body("poisoned\n")
        .send()
        .unwrap();
    assert_eq!(r.status(), 403, "sharing is not handing over");
}
