//! The peer boundary, attacked the way a node holding the grid key would:
//! a real node ("mallory", joined to the grid) is stopped, its stored
//! documents are forged (an unparsable user record, a user record under
//! another name's key, a process with an absolute file name, attempts with
//! epoch u32::MAX or an unknown state), and it is started again so that its
//! real sync carries them to the victim. Then the victim's own store gets
//! requests whose specs no user could submit (repetitions u32::MAX, an
//! absolute file name) and it restarts on them. Every time: the victim
//! stays up, skips and shows those entries, and everything else works.

use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{ObjType, ROOT, ReadDoc};
use pesc_tests::forge::{edit_doc, root_map};
use pesc_tests::{Node, runs, write_file};
use serde_json::Value;

const JOB: &str = "echo rank $PESC_RANK > \"$PESC_OUTPUT_DIR/output.txt\"\n";

fn skipped(node: &Node) -> Value {
    node.http()
        .get("/node")
        .send()
        .expect("GET /node")
        .json::<Value>()
        .expect("node json")["skipped"]
        .clone()
}

fn skipped_entries(node: &Node) -> Vec<String> {
    skipped(node)["entries"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["entry"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// What must keep working on the victim whatever was skipped.
fn still_works(node: &Node, good: &str, tmp: &std::path::Path) {
    let api = node.http();
    // Logins of real accounts.
    let (cookie, _) = api.login("alice", "alice-password");
    assert!(!cookie.is_empty());
    let users: Value = api.get("/users").send().unwrap().json().unwrap();
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    assert!(names.contains(&"alice"), "{names:?}");
    assert!(
        !names.contains(&"mallory") && !names.contains(&"bob"),
        "forged accounts listed: {names:?}"
    );
    // The earlier request, whole.
    let v = node.cli_json(&["status", good, "--json"]);
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(runs(&v).len(), 3);
    let rooms: Value = api.get("/rooms").send().unwrap().json().unwrap();
    assert!(rooms.to_string().contains("General"), "{rooms}");
    // New work.
    let prog = write_file(tmp, "again.sh", JOB);
    let v = node.cli_json(&["submit", &prog, "-n", "2", "--wait", "--json"]);
    assert_eq!(v["state"], "succeeded", "{v}");
}

#[test]
fn a_hostile_peers_entries_are_skipped_shown_and_harm_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = pesc_tests::pesc_bin("debug");
    let a_dir = tmp.path().join("victim");
    let mut a = Node::start_in(a_dir.clone(), 2, bin.clone(), None, &[]).unwrap();
    a.http().add_user("alice", "user");
    let prog = write_file(tmp.path(), "job.sh", JOB);
    let good = a.cli_json(&["submit", &prog, "-n", "3", "--wait", "--json"]);
    assert_eq!(good["state"], "succeeded", "{good}");
    let good = good["id"].as_str().unwrap().to_string();
    let process: Value = a.http().get("/processes").send().unwrap().json().unwrap();
    let process = process[0].clone();
    // Alone, a submit says no other node holds a copy yet.
    let r: Value = a.http().submit_script(JOB, 1, &[]).json().unwrap();
    assert_eq!(r["held_by_peer"], false, "{r}");

    // Mallory joins, learns the grid and the request, and stops.
    let m_dir = tmp.path().join("mallory");
    let token = a.join_token();
    let addr = a.p2p_addrs()[0].clone();
    let m_args = [
        "--join",
        token.as_str(),
        "--peer",
        addr.as_str(),
        "--name",
        "mallory",
    ];
    let mut m = Node::start_in(m_dir.clone(), 1, bin.clone(), None, &m_args).unwrap();
    m.wait_known(2, Duration::from_secs(30));
    let t0 = Instant::now();
    while m.cli(&["status", &good]).status.code() != Some(0) {
        assert!(t0.elapsed() < Duration::from_secs(30), "{}", m.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    // With a peer, the submit answer says it holds a copy too.
    let r: Value = a.http().submit_script(JOB, 1, &[]).json().unwrap();
    assert_eq!(r["held_by_peer"], true, "{r}");
    m.stop(Duration::from_secs(10));

    // Forged: what the grid key lets a peer write.
    let pwned = tmp.path().join("pwned");
    edit_doc(&m_dir, "grid", |d| {
        // Whole maps overwritten at the root: hides nothing.
        d.put(ROOT, "rooms", "gone").unwrap();
        d.put(ROOT, "tokens", 0u64).unwrap();
        let users = root_map(d, "users");
        d.put(&users, "mallory", "{not json").unwrap();
        let admin = serde_json::json!({"name": "admin", "role": "admin",
            "password_hash": "$argon2id$v=19$m=19456,t=2,p=1$AAAA$AAAA", "created_ms": 1});
        d.put(&users, "bob", admin.to_string()).unwrap();
        let mut p = process.clone();
        p["file_name"] = Value::from(pwned.display().to_string());
        let procs = root_map(d, "processes");
        d.put(&procs, p["id"].as_str().unwrap(), p.to_string())
            .unwrap();
    })
    .unwrap();
    edit_doc(&m_dir, &format!("req/{good}"), |d| {
        let attempts = root_map(d, "attempts");
        let top = d
            .put_object(&attempts, format!("1.{}.mallory", u32::MAX), ObjType::Map)
            .unwrap();
        d.put(&top, "state", "running").unwrap();
        let bad = d
            .put_object(&attempts, "2.0.mallory", ObjType::Map)
            .unwrap();
        d.put(&bad, "state", "exploded").unwrap();
    })
    .unwrap();
    let mut m = Node::start_in(m_dir.clone(), 1, bin.clone(), None, &m_args).unwrap();
    let t0 = Instant::now();
    while skipped(&a)["total"].as_u64().unwrap_or(0) < 5 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the forged entries never arrived: {}\n{}",
            skipped(&a),
            a.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let entries = skipped_entries(&a);
    for e in [
        "users/mallory".to_string(),
        "users/bob".to_string(),
        format!("processes/{}", process["id"].as_str().unwrap()),
        format!("req/{good}/attempts/1.{}.mallory", u32::MAX),
        format!("req/{good}/attempts/2.0.mallory"),
    ] {
        assert!(entries.contains(&e), "{e} not skipped: {entries:?}");
    }
    assert!(a.log().contains("skipped a malformed entry"), "not logged");
    let metrics = reqwest::blocking::get(a.api_base().replace("/api/v1", "/metrics"))
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("pesc_skipped_entries ")
                && l.split(' ').nth(1).and_then(|v| v.parse::<u64>().ok()) >= Some(5)),
        "{metrics}"
    );
    still_works(&a, &good, tmp.path());
    m.kill9();

    // The victim's own store: requests whose specs no user could submit,
    // named in the grid's index. It must restart on them.
    a.stop(Duration::from_secs(10));
    let mut bad_ids = Vec::new();
    let spec: Value = {
        let mut spec = None;
        edit_doc(&a_dir, &format!("req/{good}"), |d| {
            let text = match d.get(ROOT, "spec").unwrap() {
                Some((automerge::Value::Scalar(s), _)) => s.as_str().unwrap().to_string(),
                other => panic!("spec: {other:?}"),
            };
            spec = Some(serde_json::from_str(&text).unwrap());
        })
        .unwrap();
        spec.unwrap()
    };
    for (n, edit) in [
        ("00000000000000f1", ("repetitions", Value::from(u32::MAX))),
        (
            "00000000000000f2",
            ("process", {
                let mut p = spec["process"].clone();
                p["file_name"] = Value::from(pwned.display().to_string());
                p
            }),
        ),
    ] {
        let mut s = spec.clone();
        s["id"] = Value::from(n);
        s[edit.0] = edit.1;
        edit_doc(&a_dir, &format!("req/{n}"), |d| {
            d.put(ROOT, "schema", 1u64).unwrap();
            d.put(ROOT, "kind", "request").unwrap();
            d.put(ROOT, "spec", s.to_string()).unwrap();
            d.put_object(ROOT, "cancel", ObjType::Map).unwrap();
            d.put_object(ROOT, "attempts", ObjType::Map).unwrap();
        })
        .unwrap();
        let index = serde_json::json!({"id": n, "owner": "alice",
            "process": spec["process"]["id"], "repetitions": s["repetitions"], "created_ms": 1});
        edit_doc(&a_dir, "grid", |d| {
            let reqs = root_map(d, "requests");
            d.put(&reqs, n, index.to_string()).unwrap();
        })
        .unwrap();
        bad_ids.push(n);
    }
    let a = Node::start_in(a_dir, 2, bin, None, &[]).unwrap();
    let entries = skipped_entries(&a);
    for id in &bad_ids {
        assert!(
            entries.contains(&format!("req/{id}")),
            "req/{id} not skipped: {entries:?}\n{}",
            a.log()
        );
    }
    assert!(
        entries.contains(&"users/bob".to_string()),
        "the synced forgeries are still skipped after the restart: {entries:?}"
    );
    still_works(&a, &good, tmp.path());
    let list = a.cli_json(&["status", "--json"]);
    for id in &bad_ids {
        assert!(!list.to_string().contains(id), "{id} listed: {list}");
    }
    assert!(
        !pwned.exists(),
        "a forged file name was written on the host"
    );
}
