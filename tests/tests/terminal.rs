//! The terminal workflow through real `pesc` processes: `pesc run` on a
//! node that runs nothing itself (a laptop, `--slots 0`) streams every
//! rank's output live from the node that runs it, unpacks the results, and
//! exits with the request's outcome; Ctrl-C can cancel or leave it running
//! (`pesc attach`); `pesc logs --follow` follows every rank.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pesc_tests::{Node, runs, write_file};
use serde_json::Value;

/// A laptop (0 slots) joined to one worker with 2 slots.
fn laptop_and_worker(tmp: &Path) -> (Node, Node) {
    let laptop = Node::start_in(
        tmp.join("laptop"),
        0,
        pesc_tests::pesc_bin("debug"),
        None,
        &["--name", "laptop"],
    )
    .unwrap();
    let token = laptop.join_token();
    let worker = Node::start_in(
        tmp.join("worker"),
        2,
        pesc_tests::pesc_bin("debug"),
        None,
        &["--name", "worker", "--join", &token],
    )
    .unwrap();
    laptop.wait_connected(2, Duration::from_secs(30));
    worker.wait_connected(2, Duration::from_secs(30));
    (laptop, worker)
}

/// `pesc run ARGS` on `node`, stdout piped, in `cwd`.
fn spawn_cli(node: &Node, args: &[&str], cwd: &Path) -> Child {
    Command::new(&node.bin)
        .arg("--data-dir")
        .arg(&node.data_dir)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting pesc")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Each rank prints a line every 0.4 s, ten times, then writes its output.
const TICKS: &str = r#"import os, sys, time
rank = int(os.environ["PESC_RANK"])
for i in range(10):
    print(f"tick {i} of rank {rank}", flush=True)
    time.sleep(0.4)
print(f"rank {rank} warns", file=sys.stderr, flush=True)
open(os.path.join(os.environ["PESC_OUTPUT_DIR"], "output.txt"), "w").write(f"rank {rank} done\n")
sys.exit(int(os.environ.get("PESC_PARAMETERS") or 0) if rank == 1 else 0)
"#;

#[test]
fn pesc_run_on_a_laptop_streams_every_rank_live_and_unpacks_the_results() {
    let tmp = tempfile::tempdir().unwrap();
    let (laptop, worker) = laptop_and_worker(tmp.path());
    let project = tmp.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    write_file(&project, "job.py", TICKS);
    write_file(&project, ".env", "SECRET=hunter2\n");
    write_file(&project, ".gitignore", "data/\n");
    std::fs::create_dir_all(project.join("data")).unwrap();
    write_file(&project.join("data"), "big.csv", "1,2,3\n");
    write_file(
        &project,
        "list.py",
        "import os\nprint(sorted(os.listdir('.')))\n",
    );
    let mut child = spawn_cli(
        &laptop,
        &[
            "run",
            ".",
            "-n",
            "2",
            "--entry",
            "job.py",
            "--language",
            "python",
        ],
        &project,
    );
    let out = child.stdout.take().unwrap();
    // Every line with the wall time it reached the terminal.
    let lines: Vec<(u64, String)> = BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .map(|l| (now_ms(), l))
        .collect();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{status:?}\n{lines:?}\n{err}");
    for r in 0..2 {
        for i in 0..10 {
            let want = format!("[{r}] tick {i} of rank {r}");
            assert!(lines.iter().any(|(_, l)| l == &want), "{want}: {lines:?}");
        }
    }
    assert!(err.contains("[1] rank 1 warns"), "{err}");
    // Streamed while the rank ran: its first line arrived well before it
    // finished on the worker (the laptop runs nothing itself).
    let id = lines
        .iter()
        .find_map(|(_, l)| l.strip_prefix("pesc-results/"))
        .and_then(|l| l.split('/').next())
        .unwrap_or_else(|| panic!("no results path: {lines:?}"))
        .to_string();
    let v = laptop.cli_json(&["status", &id, "--json"]);
    let worker_id = worker.node_id();
    for r in runs(&v) {
        assert_eq!(r["node"], worker_id.as_str(), "{v:#}");
        let rank = r["rank"].as_u64().unwrap();
        let finished = r["finished_ms"].as_u64().unwrap();
        let first = lines
            .iter()
            .find(|(_, l)| l == &format!("[{rank}] tick 0 of rank {rank}"))
            .unwrap()
            .0;
        // (The rank runs 4 s; its first line comes at its start.)
        assert!(
            first + 1_500 < finished,
            "rank {rank}'s first line came at {first}, the rank finished at {finished}"
        );
    }
    // The results are unpacked here, the merged output printed.
    let merged = project.join("pesc-results").join(&id).join("output.txt");
    assert_eq!(
        std::fs::read_to_string(&merged).unwrap(),
        "rank 0 done\nrank 1 done\n"
    );
    assert!(
        lines
            .iter()
            .any(|(_, l)| *l == format!("pesc-results/{id}/output.txt"))
    );
    // What was sent: not the secret, not the ignored data.
    let child = spawn_cli(
        &laptop,
        &[
            "run",
            ".",
            "--entry",
            "list.py",
            "--language",
            "python",
            "-q",
        ],
        &project,
    );
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let listed = std::fs::read_dir(project.join("pesc-results"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != id.as_str())
        .map(|e| std::fs::read_to_string(e.path().join("stdout.txt")).unwrap_or_default())
        .collect::<String>();
    assert!(
        listed.contains("'job.py'") && listed.contains("'list.py'"),
        "{listed}"
    );
    assert!(
        !listed.contains(".env") && !listed.contains("'data'"),
        "{listed}"
    );
    // A failing rank: a non-zero exit.
    let child = spawn_cli(
        &laptop,
        &[
            "run",
            ".",
            "-n",
            "2",
            "--entry",
            "job.py",
            "--language",
            "python",
            "-q",
            "--parameters",
            "3",
        ],
        &project,
    );
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{out:?}");
}

#[test]
fn ctrl_c_cancels_or_leaves_the_request_running_and_attach_follows_it_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (laptop, _worker) = laptop_and_worker(tmp.path());
    let project = tmp.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    write_file(&project, "job.py", TICKS);
    let start = |args: &[&str]| {
        let mut a = vec![
            "run",
            ".",
            "-n",
            "2",
            "--entry",
            "job.py",
            "--language",
            "python",
        ];
        a.extend_from_slice(args);
        spawn_cli(&laptop, &a, &project)
    };
    // Once the request is made (the CLI says so on stderr), Ctrl-C;
    // returns the request's id and the rest of stderr, read on.
    let interrupt = |child: &mut Child| {
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while !line.contains("Ctrl-C to cancel") {
            line.clear();
            assert!(err.read_line(&mut line).unwrap() > 0, "no request made");
        }
        let id = line.split_whitespace().nth(1).unwrap().to_string();
        std::thread::sleep(Duration::from_millis(500));
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let rest = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut s);
            s
        });
        (id, rest)
    };
    // Ctrl-C, "n": it keeps running; `pesc attach` follows it to the end.
    let mut child = start(&[]);
    let (id, rest) = interrupt(&mut child);
    child.stdin.take().unwrap().write_all(b"n\n").unwrap();
    let status = child.wait().unwrap();
    let err = rest.join().unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains(&format!("pesc attach {id}")), "{err}");
    let v = laptop.cli_json(&["status", &id, "--json"]);
    assert!(!v["state"].as_str().unwrap().starts_with("cancel"), "{v:#}");
    let out = laptop.cli_in(&["attach", &id, "-q"], Some(&project));
    assert!(out.status.success(), "{out:?}");
    let merged = project.join("pesc-results").join(&id).join("output.txt");
    assert_eq!(
        std::fs::read_to_string(merged).unwrap(),
        "rank 0 done\nrank 1 done\n"
    );
    // Ctrl-C twice: cancelled, every run stopped.
    write_file(
        &project,
        "slow.py",
        "import time\nprint('started', flush=True)\ntime.sleep(60)\n",
    );
    let mut child = spawn_cli(
        &laptop,
        &[
            "run",
            ".",
            "-n",
            "2",
            "--entry",
            "slow.py",
            "--language",
            "python",
        ],
        &project,
    );
    // Held open: the answer comes from the second Ctrl-C, not from stdin.
    let _stdin = child.stdin.take();
    let (id, rest) = interrupt(&mut child);
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    let err = rest.join().unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("cancelled"), "{err}");
    let v = laptop.wait_for(&id, Duration::from_secs(30), |v: &Value| {
        v["state"] == "cancelled" && v["counts"]["running"] == 0
    });
    assert_eq!(v["state"], "cancelled");
}

#[test]
fn pesc_logs_follow_prints_every_rank_wherever_it_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (laptop, _worker) = laptop_and_worker(tmp.path());
    let prog = write_file(tmp.path(), "job.py", TICKS);
    let id = laptop.submit(&[&prog, "-n", "2"]);
    let out = laptop.cli(&["logs", &id, "--follow"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for r in 0..2 {
        for i in 0..10 {
            assert!(
                text.contains(&format!("[{r}] tick {i} of rank {r}")),
                "{text}"
            );
        }
    }
}

#[test]
fn a_python_script_without_the_header_gets_it_unless_asked_not_to() {
    let node = Node::start(2).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let prog = write_file(
        tmp.path(),
        "bare.py",
        "import os\nopen(os.path.join(args.output_dir, 'output.txt'), 'w').write(f\"{args.rank} {args.world_size} {'+'.join(args.parameters)}\\n\")\n",
    );
    let id = node.submit(&[&prog, "-n", "2", "--parameters", "x", "y"]);
    let v = node.wait_for(&id, Duration::from_secs(60), |v: &Value| {
        v["state"] == "succeeded" || v["state"] == "failed"
    });
    assert_eq!(v["state"], "succeeded", "{v:#}");
    let zip = node.results_zip(&id, &tmp.path().join("r"));
    assert_eq!(
        pesc_tests::zip_text(&zip, "output.txt").unwrap(),
        "0 2 x+y\n1 2 x+y\n"
    );
    // --header never: the program runs as written, and `args` is unknown.
    let id = node.submit(&[&prog, "--header", "never"]);
    let v = node.wait_for(&id, Duration::from_secs(60), |v: &Value| {
        v["state"] == "succeeded" || v["state"] == "failed"
    });
    assert_eq!(v["state"], "failed", "{v:#}");
}
