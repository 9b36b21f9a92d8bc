//! The Docker executor against the real daemon, with the offline base image
//! `scripts/offline-images.sh` makes (`scripts/test.sh` makes it).

use std::process::Command;
use std::time::Duration;

use pesc_tests::{Node, runs, write_file, zip_text};
use serde_json::Value;

const IMAGE: &str = "pesc-offline/python:bookworm";
const OFFLINE_IMAGES: [&str; 4] = [
    IMAGE,
    "pesc-offline/gcc:bookworm",
    "pesc-offline/r:bookworm",
    "pesc-offline/java:bookworm",
];
const DOCKER_ARGS: [&str; 4] = ["--executor", "docker", "--docker-image", IMAGE];

/// Whether the Docker tests can run: a daemon and every offline image.
fn can_run() -> bool {
    pesc_tests::docker_with(&OFFLINE_IMAGES)
}

fn docker_node() -> Node {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    // Templates on this node use the offline base images (configuration,
    // as an admin without a registry would do).
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("node.toml"),
        "[docker.template_bases]\npython = \"pesc-offline/python:bookworm\"\n\
         gcc = \"pesc-offline/gcc:bookworm\"\nr = \"pesc-offline/r:bookworm\"\n\
         java = \"pesc-offline/java:bookworm\"\n",
    )
    .unwrap();
    Node::start_in(
        dir,
        2,
        pesc_tests::pesc_bin("debug"),
        Some(tmp),
        &DOCKER_ARGS,
    )
    .unwrap()
}

/// Containers of the node with this id, running or not.
fn containers_of(node_id: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=pesc.node={node_id}"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until the node has `n` containers (a run shows `running` a moment
/// before its container exists).
fn wait_containers(node: &Node, n: usize) {
    let t0 = std::time::Instant::now();
    let id = node.node_id();
    while containers_of(&id).len() != n {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{} container(s), not {n}: {}",
            containers_of(&id).len(),
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A request of `n` runs, all running.
fn all_running(n: usize) -> impl Fn(&Value) -> bool {
    move |v| runs(v).len() == n && runs(v).iter().all(|r| r["state"] == "running")
}

/// Submits `args`, waits for success, and returns the results' `output.txt`
/// (every rank's, in rank order).
fn run_for_output(node: &Node, args: &[&str], dir: &std::path::Path) -> String {
    let id = node.submit(args);
    let v = node.wait_for(&id, Duration::from_secs(300), finished);
    assert_eq!(v["state"], "succeeded", "{v}\n{}", node.log());
    let zip = node.results_zip(&id, dir);
    zip_text(&zip, "output.txt").unwrap()
}

fn finished(v: &Value) -> bool {
    v["state"] == "succeeded" || v["state"] == "failed"
}

#[test]
#[cfg_attr(pesc_skip_docker, ignore = "PESC_SKIP_DOCKER is set")]
fn a_python_program_runs_in_an_unprivileged_container_with_the_run_contract() {
    if !can_run() {
        return;
    }
    let node = docker_node();
    let info = node.cli_json(&["nodes", "--json"]);
    assert!(info.to_string().contains("docker"), "{info}");
    let tmp = tempfile::tempdir().unwrap();
    let prog = write_file(
        tmp.path(),
        "probe.py",
        r#"import os, sys
args = sys.argv[1:]
status = open("/proc/self/status").read()
cap = [l.split()[1] for l in status.splitlines() if l.startswith("CapEff")][0]
nnp = [l.split()[1] for l in status.splitlines() if l.startswith("NoNewPrivs")][0]
with open(os.path.join(os.environ["PESC_OUTPUT_DIR"], "output.txt"), "w") as f:
    f.write(f"rank={os.environ['PESC_RANK']} cwd={os.getcwd()} uid={os.getuid()} cap={cap} nnp={nnp} "
            f"app={args[args.index('--app_dir') + 1]} docker={os.path.exists('/.dockerenv')}")
print("hello from rank", os.environ["PESC_RANK"])
print("to stderr", file=sys.stderr)
"#,
    );
    let id = node.submit(&[&prog, "-n", "3"]);
    let v = node.wait_for(&id, Duration::from_secs(120), finished);
    assert_eq!(v["state"], "succeeded", "{v}\n{}", node.log());
    let zip = node.results_zip(&id, &tmp.path().join("r"));
    let uid = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&node.data_dir).unwrap().uid()
    };
    for r in 0..3 {
        let text = zip_text(&zip, &format!("output_rank_{r}/output.txt")).unwrap();
        assert!(text.contains(&format!("rank={r} ")), "{text}");
        assert!(text.contains("cwd=/app "), "{text}");
        assert!(text.contains("app=/app "), "{text}");
        assert!(text.contains(&format!("uid={uid} ")), "{text}");
        assert!(text.contains("cap=0000000000000000 "), "{text}");
        assert!(text.contains("nnp=1 "), "{text}");
        assert!(text.contains("docker=True"), "{text}");
    }
    let out = zip_text(&zip, "stdout.txt").unwrap();
    for r in 0..3 {
        assert!(out.contains(&format!("hello from rank {r}")), "{out}");
    }
    assert!(!out.contains("to stderr"), "stderr kept apart: {out}");
    assert!(
        containers_of(&node.node_id()).is_empty(),
        "containers left behind"
    );
}

#[test]
#[cfg_attr(pesc_skip_docker, ignore = "PESC_SKIP_DOCKER is set")]
fn exit_codes_come_back_and_cancel_removes_the_container() {
    if !can_run() {
        return;
    }
    let node = docker_node();
    let tmp = tempfile::tempdir().unwrap();
    let fail = write_file(tmp.path(), "fail.sh", "echo bad >&2\nexit 3\n");
    let id = node.submit(&[&fail, "-n", "1", "--retries", "0"]);
    let v = node.wait_for(&id, Duration::from_secs(120), finished);
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(runs(&v)[0]["exit_code"], 3, "{v}");

    let slow = write_file(tmp.path(), "slow.sh", "sleep 300\n");
    // The request's own limits, not the node's defaults.
    let id = node.submit(&[&slow, "-n", "2", "--memory-mb", "256", "--cpus", "0.5"]);
    node.wait_for(&id, Duration::from_secs(120), all_running(2));
    wait_containers(&node, 2);
    for c in containers_of(&node.node_id()) {
        assert_eq!(nano_cpus(&c), 500_000_000);
        let out = Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{.HostConfig.Memory}} {{.HostConfig.PidsLimit}}",
                &c,
            ])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "268435456 512");
    }
    assert!(node.cli(&["cancel", &id]).status.success());
    wait_containers(&node, 0);
    let out = node.cli(&["submit", &slow, "--cpus", "0"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CPUs per run"),
        "{out:?}"
    );
}

#[test]
#[cfg_attr(pesc_skip_docker, ignore = "PESC_SKIP_DOCKER is set")]
fn a_killed_node_leaves_no_container_after_its_restart() {
    if !can_run() {
        return;
    }
    let mut node = docker_node();
    let tmp = tempfile::tempdir().unwrap();
    let slow = write_file(tmp.path(), "slow.sh", "sleep 300\n");
    let id = node.submit(&[&slow, "-n", "1"]);
    node.wait_for(&id, Duration::from_secs(120), all_running(1));
    wait_containers(&node, 1);
    let me = node.node_id();
    node.kill9();
    assert_eq!(
        containers_of(&me).len(),
        1,
        "the container outlives its node"
    );
    let dir = node.data_dir.clone();
    let bin = node.bin.clone();
    let node = Node::start_in(dir, 2, bin, None, &DOCKER_ARGS).unwrap();
    // The orphan goes at start; the rank runs again in a new container.
    node.wait_for(&id, Duration::from_secs(60), |v| {
        runs(v)[0]["attempt"].as_u64() >= Some(1) && runs(v)[0]["state"] == "running"
    });
    wait_containers(&node, 1);
    assert!(node.cli(&["cancel", &id]).status.success());
    wait_containers(&node, 0);
}

#[test]
#[cfg_attr(pesc_skip_docker, ignore = "PESC_SKIP_DOCKER is set")]
fn an_image_that_cannot_be_had_fails_the_run_with_the_reason() {
    if !can_run() {
        return;
    }
    // A registry on a closed loopback port: the pull fails at once, and
    // nothing leaves the machine.
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start_in(
        tmp.path().join("data"),
        1,
        pesc_tests::pesc_bin("debug"),
        None,
        &[
            "--executor",
            "docker",
            "--docker-image",
            "127.0.0.1:1/none/such:v1",
        ],
    )
    .unwrap();
    let prog = write_file(tmp.path(), "ok.sh", "echo ok\n");
    let id = node.submit(&[&prog, "-n", "1", "--retries", "0"]);
    let v = node.wait_for(&id, Duration::from_secs(120), |v| {
        v["state"] == "failed" || v["state"] == "succeeded"
    });
    assert_eq!(v["state"], "failed", "{v}");
    let reason = runs(&v)[0]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.contains("127.0.0.1:1/none/such:v1") && reason.contains("cannot be pulled"),
        "{reason}"
    );
}

/// Images of domains called `name`.
fn domain_images(name: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["images", "-q", &format!("pesc-domain/{name}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn remove_domain_images(name: &str) {
    for id in domain_images(name) {
        let _ = Command::new("docker").args(["rmi", "-f", &id]).output();
    }
}

#[test]
#[cfg_attr(pesc_skip_docker, ignore = "PESC_SKIP_DOCKER is set")]
fn a_template_domain_is_built_once_and_runs_python_and_c() {
    if !can_run() {
        return;
    }
    let node = docker_node();
    let tag = format!("t{}", std::process::id());
    let (py, c) = (format!("py-{tag}"), format!("c-{tag}"));
    let tmp = tempfile::tempdir().unwrap();
    let v = node.cli_json(&[
        "domains",
        "add",
        &py,
        "--template",
        "SimplePython",
        "--json",
    ]);
    assert!(
        v["dockerfile"]
            .as_str()
            .unwrap()
            .contains("FROM pesc-offline/python:bookworm"),
        "{v}"
    );
    node.cli_json(&["domains", "add", &c, "--template", "C", "--json"]);
    let list = node.cli_json(&["domains", "list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");

    // Two runs at once need the image: one build, the other waits for it.
    let prog = write_file(
        tmp.path(),
        "hello.py",
        "import os, sys\nopen(os.environ['PESC_OUTPUT_DIR'] + '/output.txt', 'w').write(sys.version.split()[0])\n",
    );
    let id = node.submit(&[&prog, "-n", "2", "--domain", &py]);
    let v = node.wait_for(&id, Duration::from_secs(300), finished);
    assert_eq!(v["state"], "succeeded", "{v}\n{}", node.log());
    assert_eq!(domain_images(&py).len(), 1);
    let builds = || node.log().matches(&format!("building domain {py}")).count();
    assert_eq!(builds(), 1, "{}", node.log());
    // The same domain again: no new build.
    let id = node.submit(&[&prog, "-n", "1", "--domain", &py]);
    node.wait_for(&id, Duration::from_secs(120), finished);
    assert_eq!(builds(), 1, "rebuilt an unchanged domain");
    // The node reports the image as built (the Domains page shows it).
    let hash = node.cli_json(&["domains", "show", &py, "--json"])["hash"]
        .as_str()
        .unwrap()
        .to_string();
    let nodes: serde_json::Value = node.http().get("/nodes").send().unwrap().json().unwrap();
    let mine = &nodes[0]["builds"];
    assert!(
        mine.as_array()
            .unwrap()
            .iter()
            .any(|b| b["hash"] == hash.as_str() && b["state"] == "built"),
        "{nodes}"
    );

    // C compiled inside its domain (gcc is in the image, not needed on the node).
    let src = write_file(
        tmp.path(),
        "sq.c",
        "#include <stdio.h>\n#include <stdlib.h>\nint main(void){\n\
         int r = atoi(getenv(\"PESC_RANK\"));\n\
         char p[512]; snprintf(p, sizeof p, \"%s/output.txt\", getenv(\"PESC_OUTPUT_DIR\"));\n\
         FILE *f = fopen(p, \"w\"); fprintf(f, \"%d\", r * r); fclose(f); return 0; }\n",
    );
    let out = run_for_output(
        &node,
        &[&src, "-n", "4", "--domain", &c],
        &tmp.path().join("r"),
    );
    assert_eq!(out, "0\n1\n4\n9\n");
    remove_domain_images(&py);
    remove_domain_images(&c);
}

#[test]
#[cfg_attr(pesc_skip_docker, ignore = "PESC_SKIP_DOCKER is set")]
fn bad_dockerfiles_are_refused_and_failed_builds_fail_the_runs_with_the_log() {
    if !can_run() {
        return;
    }
    let node = docker_node();
    let tmp = tempfile::tempdir().unwrap();
    let no_from = write_file(tmp.path(), "Dockerfile.bad", "RUN true\n");
    let out = node.cli(&["domains", "add", "bad", "--dockerfile", &no_from]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no FROM"), "{err}");
    let copy = write_file(tmp.path(), "Dockerfile.copy", "FROM x\nCOPY src/ /app\n");
    let out = node.cli(&["domains", "add", "bad", "--dockerfile", &copy]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 2") && err.contains("requirements.txt"),
        "{err}"
    );
    let list = node.cli_json(&["domains", "list", "--json"]);
    assert!(list.as_array().unwrap().is_empty(), "{list}");

    let name = format!("broken-{}", std::process::id());
    let failing = write_file(
        tmp.path(),
        "Dockerfile",
        "FROM pesc-offline/python:bookworm\nRUN echo compiling the world && exit 7\n",
    );
    node.cli_json(&["domains", "add", &name, "--dockerfile", &failing, "--json"]);
    let prog = write_file(tmp.path(), "ok.py", "print(1)\n");
    let id = node.submit(&[&prog, "-n", "1", "--domain", &name]);
    let v = node.wait_for(&id, Duration::from_secs(300), finished);
    assert_eq!(v["state"], "failed", "{v}");
    let reason = runs(&v)[0]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.contains(&format!("building domain '{name}' failed"))
            && reason.contains("compiling the world"),
        "{reason}"
    );
    assert!(domain_images(&name).is_empty());
}

#[test]
#[cfg_attr(pesc_skip_docker, ignore = "PESC_SKIP_DOCKER is set")]
fn a_node_without_docker_leaves_domain_runs_to_others() {
    if !can_run() {
        return;
    }
    let node = Node::start(1).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let df = write_file(
        tmp.path(),
        "Dockerfile",
        "FROM pesc-offline/python:bookworm\n",
    );
    node.cli_json(&["domains", "add", "d", "--dockerfile", &df, "--json"]);
    let prog = write_file(tmp.path(), "ok.py", "print(1)\n");
    let id = node.submit(&[&prog, "-n", "1", "--domain", "d"]);
    std::thread::sleep(Duration::from_secs(3));
    let v = node.cli_json(&["status", &id, "--json"]);
    assert_eq!(runs(&v)[0]["state"], "queued", "{v}");
    assert!(
        v["waiting"].as_str().unwrap().contains("runs Docker"),
        "{v}"
    );
    // An unknown domain is refused at submit.
    let out = node.cli(&["submit", &prog, "--domain", "nope"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no domain 'nope'"),
        "{out:?}"
    );
}

#[test]
#[cfg_attr(pesc_skip_docker, ignore = "PESC_SKIP_DOCKER is set")]
fn a_python_directory_with_several_modules_runs_in_a_container() {
    if !can_run() {
        return;
    }
    let node = docker_node();
    let tmp = tempfile::tempdir().unwrap();
    let app = tmp.path().join("app");
    std::fs::create_dir_all(app.join("stats")).unwrap();
    write_file(
        &app,
        "main.py",
        "import os\nfrom stats.mean import mean\nfrom helpers import scale\nr = int(os.environ['PESC_RANK'])\nopen(os.environ['PESC_OUTPUT_DIR'] + '/output.txt', 'w').write(str(scale(mean([r, r + 2]))))\n",
    );
    write_file(&app, "helpers.py", "def scale(x):\n    return x * 10\n");
    write_file(&app.join("stats"), "__init__.py", "");
    write_file(
        &app.join("stats"),
        "mean.py",
        "def mean(v):\n    return sum(v) / len(v)\n",
    );
    let out = node.cli_in(
        &[
            "submit", ".", "--entry", "main.py", "-n", "3", "--wait", "--json",
        ],
        Some(&app),
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(v["state"], "succeeded", "{out:?}\n{}", node.log());
    let zip = node.results_zip(v["id"].as_str().unwrap(), &tmp.path().join("r"));
    assert_eq!(zip_text(&zip, "output.txt").unwrap(), "10.0\n20.0\n30.0\n");
}

/// The CPU limit of a container, in nano-CPUs.
fn nano_cpus(container: &str) -> i64 {
    let out = Command::new("docker")
        .args(["inspect", "-f", "{{.HostConfig.NanoCpus}}", container])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(-1)
}

#[test]
#[cfg_attr(pesc_skip_docker, ignore = "PESC_SKIP_DOCKER is set")]
fn another_user_at_the_desktop_slows_runs_and_stops_new_ones() {
    if !can_run() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let utmp = tmp.path().join("utmp");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("node.toml"),
        format!(
            "check_concurrent_user = true\nconcurrent_resources_percent = 10\nutmp_path = \"{}\"\n",
            utmp.display()
        ),
    )
    .unwrap();
    let node = Node::start_in(dir, 2, pesc_tests::pesc_bin("debug"), None, &DOCKER_ARGS).unwrap();
    let slow = write_file(tmp.path(), "slow.sh", "sleep 300\n");
    let first = node.submit(&[&slow, "-n", "1"]);
    node.wait_for(&first, Duration::from_secs(120), all_running(1));
    wait_containers(&node, 1);
    let c = containers_of(&node.node_id())[0].clone();
    assert_eq!(nano_cpus(&c), 1_000_000_000);

    // Alice logs in at the console.
    std::fs::write(&utmp, pesc_tests::utmp_login("alice", "tty2")).unwrap();
    let t0 = std::time::Instant::now();
    while nano_cpus(&c) != 100_000_000 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "not slowed: {}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let second = node.submit(&[&slow, "-n", "1"]);
    std::thread::sleep(Duration::from_secs(4));
    let v = node.cli_json(&["status", &second, "--json"]);
    assert_eq!(runs(&v)[0]["state"], "queued", "{v}");
    assert!(
        node.log().contains("alice logged in at this desktop"),
        "{}",
        node.log()
    );

    // She logs out: full speed, and the queued run starts.
    std::fs::write(&utmp, b"").unwrap();
    node.wait_for(&second, Duration::from_secs(30), all_running(1));
    let t0 = std::time::Instant::now();
    while nano_cpus(&c) != 1_000_000_000 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "not restored: {}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for id in [&first, &second] {
        assert!(node.cli(&["cancel", id]).status.success());
    }
    wait_containers(&node, 0);
}

#[test]
#[cfg_attr(pesc_skip_docker, ignore = "PESC_SKIP_DOCKER is set")]
fn r_scripts_and_java_jars_run_in_their_domains() {
    if !can_run() {
        return;
    }
    let node = docker_node();
    let tag = std::process::id();
    let (r, java) = (format!("r-{tag}"), format!("java-{tag}"));
    node.cli_json(&["domains", "add", &r, "--template", "R", "--json"]);
    node.cli_json(&["domains", "add", &java, "--template", "Java", "--json"]);
    let tmp = tempfile::tempdir().unwrap();
    let script = write_file(
        tmp.path(),
        "twice.R",
        "rank <- as.integer(Sys.getenv(\"PESC_RANK\"))\n\
         writeLines(as.character(rank * 2), file.path(Sys.getenv(\"PESC_OUTPUT_DIR\"), \"output.txt\"))\n",
    );
    let args = [script.as_str(), "-n", "3", "--domain", &r];
    assert_eq!(
        run_for_output(&node, &args, &tmp.path().join("r")),
        "0\n2\n4\n"
    );
    // Without PESC's header, as the thesis allows: the node inserts it.
    let script = write_file(
        tmp.path(),
        "bare.R",
        "writeLines(paste(args$rank, args$world_size, paste(args$parameters, collapse = \"+\")), \
         file.path(args$output_dir, \"output.txt\"))\n",
    );
    let args = [
        script.as_str(),
        "-n",
        "2",
        "--domain",
        &r,
        "--parameters",
        "a",
        "b",
    ];
    assert_eq!(
        run_for_output(&node, &args, &tmp.path().join("bare")),
        "0 2 a+b\n1 2 a+b\n"
    );

    // A runnable jar, compiled with the JDK of the offline image.
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    write_file(
        &src,
        "Main.java",
        "import java.nio.file.*;\npublic class Main { public static void main(String[] a) throws Exception {\n\
         int r = Integer.parseInt(System.getenv(\"PESC_RANK\"));\n\
         Files.writeString(Path.of(System.getenv(\"PESC_OUTPUT_DIR\"), \"output.txt\"), \"java \" + (r + 10));\n} }\n",
    );
    let built = Command::new("docker")
        .args(["run", "--rm", "-v"])
        .arg(format!("{}:/w", src.display()))
        .args([
            "-w",
            "/w",
            "pesc-offline/java:bookworm",
            "sh",
            "-c",
            "javac Main.java && jar cfe app.jar Main Main.class",
        ])
        .output()
        .unwrap();
    assert!(built.status.success(), "{built:?}");
    let jar = src.join("app.jar");
    let args = [jar.to_str().unwrap(), "-n", "2", "--domain", &java];
    let out = run_for_output(&node, &args, &tmp.path().join("j"));
    assert_eq!(out, "java 10\njava 11\n");
    remove_domain_images(&r);
    remove_domain_images(&java);
}

#[test]
#[cfg_attr(pesc_skip_docker, ignore = "PESC_SKIP_DOCKER is set")]
fn shared_files_are_read_only_mounts_in_containers() {
    if !can_run() {
        return;
    }
    let node = docker_node();
    let tmp = tempfile::tempdir().unwrap();
    let data = write_file(tmp.path(), "data.csv", "x,y\n1,2\n");
    assert!(node.cli(&["files", "add", &data]).status.success());
    let prog = write_file(
        tmp.path(),
        "touch.sh",
        "out=\"$PESC_OUTPUT_DIR/output.txt\"\n\
         cat data.csv | wc -l > \"$out\"\n\
         (echo 3,4 >> data.csv) 2>/dev/null && echo wrote >> \"$out\" || echo refused >> \"$out\"\n\
         chmod 666 data.csv 2>/dev/null && echo chmod >> \"$out\" || echo kept >> \"$out\"\n\
         rm -f data.csv 2>/dev/null; [ -f data.csv ] && echo still >> \"$out\" || echo gone >> \"$out\"\n",
    );
    let id = node.submit(&[&prog, "-n", "2", "--shared-file", "data.csv"]);
    let v = node.wait_for(&id, Duration::from_secs(120), finished);
    assert_eq!(v["state"], "succeeded", "{v}\n{}", node.log());
    let zip = node.results_zip(&id, &tmp.path().join("r"));
    for r in 0..2 {
        let text = zip_text(&zip, &format!("output_rank_{r}/output.txt")).unwrap();
        assert_eq!(text, "2\nrefused\nkept\nstill\n", "rank {r}");
    }
    // The node's copy is untouched.
    let list = node.cli_json(&["files", "list", "--json"]);
    let hash = list[0]["hash"].as_str().unwrap().to_string();
    let blob = node.data_dir.join("blobs").join(&hash[..2]).join(&hash);
    assert_eq!(std::fs::read_to_string(blob).unwrap(), "x,y\n1,2\n");
}

#[test]
#[cfg_attr(pesc_skip_docker, ignore = "PESC_SKIP_DOCKER is set")]
fn links_a_container_plants_are_never_followed_by_the_node() {
    if !can_run() {
        return;
    }
    let node = docker_node();
    let tmp = tempfile::tempdir().unwrap();
    // Host paths, as an attacker would guess them: the node reads output/
    // and the progress file on the host, where these links would lead.
    let data = node.data_dir.canonicalize().unwrap();
    let token = node.token();
    let prog = write_file(
        tmp.path(),
        "links.sh",
        &format!(
            "ln -s {0}/api-token output/leak\nln -s {0} output/datadir\n\
             rm -f .pesc-progress; ln -s {0}/api-token .pesc-progress\n\
             ln -s {0}/api-token checkpoint/ckpt\necho ok > output/output.txt\nsleep 2\n",
            data.display()
        ),
    );
    let id = node.submit(&[&prog, "-n", "1"]);
    let v = node.wait_for(&id, Duration::from_secs(120), |v| {
        v["state"] == "succeeded" || v["state"] == "failed"
    });
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_ne!(runs(&v)[0]["message"].as_str(), Some(token.as_str()));
    let zip = node.results_zip(&id, &tmp.path().join("r"));
    assert_eq!(zip_text(&zip, "output.txt").unwrap().trim(), "ok");
    let names = pesc_tests::zip_names(&zip).unwrap();
    assert!(
        !names
            .iter()
            .any(|n| n.contains("leak") || n.contains("datadir")),
        "{names:?}"
    );
    let bytes = std::fs::read(&zip).unwrap();
    assert!(
        !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
        "the token is in the results"
    );
}

#[test]
#[cfg_attr(pesc_skip_docker, ignore = "PESC_SKIP_DOCKER is set")]
fn the_ranks_of_a_parallel_request_reach_rank_zero_from_their_containers() {
    if !can_run() {
        return;
    }
    let node = docker_node();
    let tmp = tempfile::tempdir().unwrap();
    // Rank 0 listens on MASTER_PORT, rank 1 connects to MASTER_ADDR; an
    // ordinary run beside them still has no network.
    let prog = write_file(
        tmp.path(),
        "meet.py",
        r#"import os, socket, time
rank, port, addr = int(os.environ["RANK"]), int(os.environ["MASTER_PORT"]), os.environ["MASTER_ADDR"]
out = open(os.path.join(os.environ["PESC_OUTPUT_DIR"], "output.txt"), "w")
if os.environ.get("PESC_WORLD_SIZE") == "1":
    # The node's API listens on the host's loopback: reachable only with
    # the host's network.
    api = int(os.environ["PESC_PARAMETERS"])
    try:
        socket.create_connection(("127.0.0.1", api), timeout=3)
        out.write("network\n")
    except OSError as e:
        out.write(f"no network: {e.__class__.__name__}\n")
elif rank == 0:
    s = socket.create_server(("0.0.0.0", port)); s.settimeout(60)
    c, _ = s.accept(); out.write(f"rank 0 heard {c.recv(10).decode()}\n")
else:
    for _ in range(300):
        try:
            c = socket.create_connection((addr, port), timeout=5); break
        except OSError:
            time.sleep(0.2)
    c.sendall(b"1"); out.write(f"rank 1 reached {addr}:{port}\n")
"#,
    );
    let text = run_for_output(
        &node,
        &[&prog, "-n", "2", "--parallel"],
        &tmp.path().join("a"),
    );
    assert!(
        text.starts_with("rank 0 heard 1\nrank 1 reached "),
        "{text}"
    );
    let api_port = node
        .api_base()
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .unwrap()
        .to_string();
    let text = run_for_output(
        &node,
        &[&prog, "-n", "1", "--parameters", &api_port],
        &tmp.path().join("b"),
    );
    assert!(text.starts_with("no network"), "{text}");
    // The same probe in a gang of one reaches it.
    let text = run_for_output(
        &node,
        &[&prog, "-n", "1", "--parallel", "--parameters", &api_port],
        &tmp.path().join("c"),
    );
    assert_eq!(text, "network\n");
}

fn paused(container: &str) -> bool {
    let out = Command::new("docker")
        .args(["inspect", "-f", "{{.State.Paused}}", container])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "true"
}

/// Sets a simulated keyboard's last use `ago_s` seconds before now.
fn keyboard_used(kbd: &std::path::Path, ago_s: u64) {
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - ago_s;
    let ok = Command::new("touch")
        .args(["-a", "-d", &format!("@{at}")])
        .arg(kbd)
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[test]
#[cfg_attr(pesc_skip_docker, ignore = "PESC_SKIP_DOCKER is set")]
fn the_owner_at_the_keyboard_pauses_containers_and_idle_unpauses_them() {
    if !can_run() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let kbd = tmp.path().join("kbd");
    std::fs::write(&kbd, "").unwrap();
    keyboard_used(&kbd, 600);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("node.toml"),
        format!(
            "idle_minutes = 1\nidle_source = \"input\"\ninput_paths = [\"{}\"]\n",
            kbd.display()
        ),
    )
    .unwrap();
    let node = Node::start_in(dir, 1, pesc_tests::pesc_bin("debug"), None, &DOCKER_ARGS).unwrap();
    let slow = write_file(tmp.path(), "slow.sh", "sleep 300\n");
    let id = node.submit(&[&slow, "-n", "1"]);
    node.wait_for(&id, Duration::from_secs(120), all_running(1));
    wait_containers(&node, 1);
    let c = containers_of(&node.node_id())[0].clone();
    assert!(!paused(&c));
    let wait = |want: bool| {
        let t0 = std::time::Instant::now();
        while paused(&c) != want {
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "paused is not {want}: {}",
                node.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    keyboard_used(&kbd, 0);
    wait(true);
    keyboard_used(&kbd, 120);
    wait(false);
    let o = node.cli(&["cancel", &id]);
    assert!(o.status.success());
}
