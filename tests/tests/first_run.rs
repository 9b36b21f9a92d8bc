//! A new grid's first minutes, as its admin meets them: the node prints a
//! one-time link that fills the setup code in, the link makes one admin and
//! no more, and the log never holds the node's API token or the grid key.

use pesc_tests::Node;

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[test]
fn the_setup_link_makes_the_first_admin_once_and_the_log_keeps_the_secrets() {
    let mut node = Node::start(1).unwrap();
    let ui = node.api_base().trim_end_matches("/api/v1").to_string();
    let link = node.setup_link();
    assert!(link.starts_with(&format!("{ui}/setup?code=")), "{link}");
    let code = link.rsplit('=').next().unwrap().to_string();
    assert_eq!(code.len(), 32, "{link}");

    // The page the link opens has the code filled in.
    let page = client().get(&link).send().unwrap().text().unwrap();
    assert!(page.contains(&format!("value=\"{code}\"")), "{page}");

    // A wrong code makes nobody admin.
    let form = |code: &str, user: &str| {
        client()
            .post(format!("{ui}/setup"))
            .header("content-type", "application/x-www-form-urlencoded")
            // Hex codes and plain names: nothing to escape.
            .body(format!("code={code}&user={user}&password=admin-password"))
            .send()
            .unwrap()
    };
    let r = form("0123456789abcdef0123456789abcdef", "mallory");
    assert_eq!(r.status(), 403);
    assert!(r.text().unwrap().contains("Wrong setup code"));

    // The link's code makes the first admin, who is logged in at once.
    let r = form(&code, "admin");
    assert_eq!(r.status(), 303, "{:?}", r.text());
    assert!(r.headers().contains_key("set-cookie"));
    node.http().login("admin", "admin-password");

    // Once there is an admin the code is spent: nobody else becomes one.
    let r = form(&code, "second");
    assert_eq!(r.status(), 303);
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/login"),
        "{:?}",
        r.headers()
    );
    let r = node.http().get("/users").send().unwrap();
    let names: Vec<String> = r
        .json::<Vec<serde_json::Value>>()
        .unwrap()
        .iter()
        .filter_map(|u| u["name"].as_str().map(str::to_string))
        .collect();
    assert_eq!(names, vec!["admin".to_string()]);

    // Neither the API token nor the grid key is in the log.
    let log = node.log();
    let token = node.token();
    assert!(!log.contains(&token), "the API token is in the log");
    let join = node.cli(&["grid", "token"]);
    let join = String::from_utf8_lossy(&join.stdout);
    let secret = join.trim().trim_start_matches("pesc1:");
    let secret = secret.split('@').next().unwrap();
    assert_eq!(secret.len(), 96, "{join}");
    let key = &secret[32..];
    assert!(!log.contains(key), "the grid key is in the log");
    // Nor any long piece of it.
    for w in key.as_bytes().windows(16) {
        assert!(!log.contains(std::str::from_utf8(w).unwrap()));
    }

    // A restarted node whose grid has an admin prints no link.
    node.stop(std::time::Duration::from_secs(20));
    let again = Node::start_in(node.data_dir.clone(), 1, node.bin.clone(), None, &[]).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let log = again.log();
    let after_restart = log.rsplit("node stopped").next().unwrap();
    assert!(
        !after_restart.contains("/setup?code="),
        "a grid with an admin gets no setup link: {after_restart}"
    );
}

/// `pesc doctor` on a data dir whose node.toml the test edits.
fn doctor(dir: &std::path::Path) -> (i32, String) {
    let out = std::process::Command::new(pesc_tests::pesc_bin("debug"))
        .arg("--data-dir")
        .arg(dir)
        .arg("doctor")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap_or(-1), text)
}

fn set_in_node_toml(dir: &std::path::Path, key: &str, value: &str) {
    let path = dir.join("node.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with(&format!("{key} =")) {
                format!("{key} = {value}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&path, text).unwrap();
}

#[test]
fn doctor_says_what_the_desktop_offers_and_fails_on_what_stops_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    // First call makes node.toml, as a first start would.
    doctor(&dir);
    set_in_node_toml(&dir, "api", "\"127.0.0.1:0\"");
    set_in_node_toml(&dir, "listen", "[\"/ip4/127.0.0.1/tcp/0\"]");
    let (code, text) = doctor(&dir);
    assert_eq!(code, 0, "{text}");
    for words in [
        "Landlock ABI",
        "user namespaces",
        "cgroup",
        "sandbox",
        "docker",
        "gpu",
        "free",
        "clock",
    ] {
        assert!(text.contains(words), "no '{words}' in:\n{text}");
    }
    assert!(text.contains("This desktop can run work."), "{text}");

    // Another program holds the API port: the node could not start.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    set_in_node_toml(&dir, "api", &format!("\"127.0.0.1:{port}\""));
    let (code, text) = doctor(&dir);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL") && l.contains(&format!("127.0.0.1:{port}"))),
        "{text}"
    );
    drop(squatter);

    // A data dir others may write: the node refuses it, and so does the doctor.
    use std::os::unix::fs::PermissionsExt;
    set_in_node_toml(&dir, "api", "\"127.0.0.1:0\"");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, text) = doctor(&dir);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("others can write the data dir"), "{text}");
}

#[test]
fn pesc_join_leaves_the_token_for_the_next_start_and_the_node_joins() {
    let first = Node::start(1).unwrap();
    let token = first.join_token();

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let bad = std::process::Command::new(pesc_tests::pesc_bin("debug"))
        .arg("--data-dir")
        .arg(&dir)
        .args(["join", "pesc1:nonsense"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a PESC join token"));
    let ok = std::process::Command::new(pesc_tests::pesc_bin("debug"))
        .arg("--data-dir")
        .arg(&dir)
        .args(["join", &token])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("joins grid"),
        "{ok:?}"
    );

    // The next start is in the first node's grid, and finds it.
    let second = Node::start_in(dir.clone(), 1, first.bin.clone(), None, &[]).unwrap();
    first.wait_known(2, std::time::Duration::from_secs(30));
    assert!(!dir.join("join-token").exists(), "the token is used once");
    let grid = |n: &Node| {
        let t = n.cli(&["grid", "token"]);
        String::from_utf8_lossy(&t.stdout)
            .trim()
            .split('@')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(grid(&first), grid(&second));

    // The doctor of a desktop whose node runs reads the grid from it.
    second.wait_connected(2, std::time::Duration::from_secs(30));
    let (code, text) = doctor(&dir);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("a node of this data dir is running"),
        "{text}"
    );
    assert!(
        text.contains("connected to 1 of the 1 other node(s)"),
        "{text}"
    );
}

#[test]
fn a_user_with_a_token_reaches_a_node_whose_data_dir_is_not_theirs() {
    let node = Node::start(1).unwrap();
    let addr = node
        .api_base()
        .trim_start_matches("http://")
        .trim_end_matches("/api/v1")
        .to_string();
    let elsewhere = tempfile::tempdir().unwrap();
    let cli = |env: &[(&str, &str)]| {
        let mut c = std::process::Command::new(&node.bin);
        c.arg("--data-dir").arg(elsewhere.path().join("not-mine"));
        c.args(["status", "--json"]);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let none = cli(&[]);
    assert!(!none.status.success());
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("PESC_API"),
        "{none:?}"
    );
    let token = node.token();
    let ok = cli(&[("PESC_API", &addr), ("PESC_TOKEN", &token)]);
    assert!(ok.status.success(), "{ok:?}");
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert!(v.is_array(), "{v}");
    let bad = cli(&[("PESC_API", &addr), ("PESC_TOKEN", "pesc_not_a_token")]);
    assert!(!bad.status.success(), "a wrong token is refused");
}

#[test]
fn pesc_join_follows_no_link_planted_in_the_data_dir_and_reads_the_token_from_stdin() {
    use std::io::Write;
    let first = Node::start(1).unwrap();
    let token = first.join_token();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    std::fs::create_dir_all(&dir).unwrap();
    // What runs as the data dir's owner could plant: links where root's
    // `pesc join` writes.
    let victims = [tmp.path().join("passwd"), tmp.path().join("shadow")];
    for v in &victims {
        std::fs::write(v, "root:x:0:0\n").unwrap();
    }
    std::os::unix::fs::symlink(&victims[0], dir.join("join-token.tmp")).unwrap();
    std::os::unix::fs::symlink(&victims[1], dir.join("join-token")).unwrap();
    let mut child = std::process::Command::new(&first.bin)
        .arg("--data-dir")
        .arg(&dir)
        .arg("join")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{token}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    for v in &victims {
        assert_eq!(
            std::fs::read_to_string(v).unwrap(),
            "root:x:0:0\n",
            "{} was written",
            v.display()
        );
    }
    let m = std::fs::symlink_metadata(dir.join("join-token")).unwrap();
    assert!(m.is_file(), "the token is a file of its own, not the link");
    assert_eq!(
        std::fs::read_to_string(dir.join("join-token"))
            .unwrap()
            .trim(),
        token
    );
    assert!(!dir.join("join-token.tmp").exists());
}
