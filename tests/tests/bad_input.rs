//! Bad input gets a 4xx with a sentence that says what to fix, and loses nothing.

use std::io::Write;

use pesc_tests::{Api, Node};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        for (name, data) in entries {
            z.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap();
    }
    buf.into_inner()
}

/// Uploads and returns (status, body).
fn upload(api: &Api, query: &[(&str, &str)], body: Vec<u8>) -> (StatusCode, Value) {
    let r = api
        .post("/processes")
        .query(query)
        .body(body)
        .send()
        .unwrap();
    let st = r.status();
    (st, r.json().unwrap_or(Value::Null))
}

fn error_of(v: &Value) -> String {
    v["error"].as_str().unwrap_or_default().to_string()
}

#[test]
fn every_bad_input_gets_a_clear_4xx_and_nothing_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // A small upload limit, so "oversized" is quick to test.
    std::fs::write(data.join("node.toml"), "max_upload_mb = 1\nslots = 2\n").unwrap();
    let node = Node::start_in(data, 2, pesc_tests::pesc_bin("debug"), None, &[]).unwrap();
    let api = node.http();

    // Something good first: it must survive everything below.
    let (st, p) = upload(
        &api,
        &[("file_name", "ok.sh")],
        b"echo fine > $PESC_OUTPUT_DIR/output.txt\n".to_vec(),
    );
    assert_eq!(st, StatusCode::CREATED, "{p}");
    let good: Value = api
        .post("/requests")
        .json(&json!({"process": p["id"], "repetitions": 2}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let gid = good["id"].as_str().unwrap().to_string();
    node.wait_for(&gid, std::time::Duration::from_secs(30), |v| {
        v["state"] == "succeeded"
    });

    let zq = [
        ("file_name", "p.zip"),
        ("kind", "zip"),
        ("language", "python"),
    ];
    let cases: Vec<(&str, StatusCode, Value, &str)> = vec![
        (
            "broken zip",
            upload(&api, &zq, b"PK\x03\x04 this is not really a zip".to_vec()).0,
            upload(&api, &zq, b"PK\x03\x04garbage".to_vec()).1,
            "cannot be read",
        ),
        (
            "empty zip",
            upload(&api, &zq, zip_of(&[])).0,
            upload(&api, &zq, zip_of(&[])).1,
            "no files",
        ),
        (
            "zip-slip",
            upload(&api, &zq, zip_of(&[("../../evil.py", b"x")])).0,
            upload(&api, &zq, zip_of(&[("a/../../evil.py", b"x")])).1,
            "escapes",
        ),
        (
            "absolute path",
            upload(&api, &zq, zip_of(&[("/etc/cron.d/x", b"x")])).0,
            upload(&api, &zq, zip_of(&[("/etc/cron.d/x", b"x")])).1,
            "absolute",
        ),
        (
            "unknown language",
            upload(
                &api,
                &[("file_name", "a.cob"), ("language", "cobol")],
                b"x".to_vec(),
            )
            .0,
            upload(
                &api,
                &[("file_name", "a.cob"), ("language", "cobol")],
                b"x".to_vec(),
            )
            .1,
            "unknown language",
        ),
        (
            "no language",
            upload(&api, &[("file_name", "a.xyz")], b"x".to_vec()).0,
            upload(&api, &[("file_name", "a.xyz")], b"x".to_vec()).1,
            "language",
        ),
        (
            "escaping file name",
            upload(&api, &[("file_name", "../x.py")], b"x".to_vec()).0,
            upload(&api, &[("file_name", "../x.py")], b"x".to_vec()).1,
            "escapes",
        ),
        (
            "empty upload",
            upload(&api, &[("file_name", "x.py")], vec![]).0,
            upload(&api, &[("file_name", "x.py")], vec![]).1,
            "empty",
        ),
        (
            "oversized upload",
            upload(&api, &[("file_name", "big.py")], vec![b'#'; 3 << 20]).0,
            upload(&api, &[("file_name", "big.py")], vec![b'#'; 3 << 20]).1,
            "larger than",
        ),
    ];
    for (what, st, body, needle) in &cases {
        assert!(st.is_client_error(), "{what}: status {st}");
        assert!(
            error_of(body).contains(needle),
            "{what}: '{}' lacks '{needle}'",
            error_of(body)
        );
    }
    assert_eq!(cases[8].1, StatusCode::PAYLOAD_TOO_LARGE);

    let req = |body: Value| {
        let r = api.post("/requests").json(&body).send().unwrap();
        (r.status(), r.json::<Value>().unwrap_or(Value::Null))
    };
    let (st, b) = req(json!({"process": p["id"], "repetitions": 0}));
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(error_of(&b).contains("at least 1"), "{b}");
    let (st, b) = req(json!({"process": p["id"], "repetitions": 1_000_001}));
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(error_of(&b).contains("at most 1000000"), "{b}");
    let (st, b) = req(json!({"process": "0123456789abcdef", "repetitions": 1}));
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(error_of(&b).contains("does not exist"), "{b}");
    let (st, b) = req(json!({"process": "not-an-id", "repetitions": 1}));
    assert_eq!(st, StatusCode::BAD_REQUEST, "{b}");
    let (st, _) = req(json!({"repetitions": "many"}));
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let r = api.get("/requests/ffffffffffffffff").send().unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = api
        .get(&format!("/requests/{gid}/runs/7/logs"))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // No token, wrong token: refused.
    let anon = reqwest::blocking::Client::new()
        .get(format!("{}/requests", api.base))
        .send()
        .unwrap();
    assert_eq!(anon.status(), StatusCode::UNAUTHORIZED);
    let wrong = reqwest::blocking::Client::new()
        .get(format!("{}/requests", api.base))
        .bearer_auth("nope")
        .send()
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    // Nothing stored was lost: the good request's results are whole, no stray temp files.
    let r = api.get(&format!("/requests/{gid}/results")).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let path = tmp.path().join("r.zip");
    std::fs::write(&path, r.bytes().unwrap()).unwrap();
    assert_eq!(
        pesc_tests::zip_text(&path, "output.txt").unwrap(),
        "fine\nfine\n"
    );
    let leftovers = std::fs::read_dir(node.data_dir.join("blobs/tmp"))
        .unwrap()
        .count();
    assert_eq!(leftovers, 0, "rejected uploads left files behind");
    let procs: Vec<Value> = api.get("/processes").send().unwrap().json().unwrap();
    assert_eq!(procs.len(), 1, "only the good process is registered");
}

#[test]
fn the_openapi_document_and_login_are_open_and_every_other_call_needs_a_token_or_session() {
    let node = Node::start(1).unwrap();
    let base = node.api_base();
    let anon = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap();
    let doc: serde_json::Value = anon
        .get(format!("{base}/openapi.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 15, "{}", paths.len());
    for (path, ops) in paths {
        let url = format!(
            "{}{}",
            base.trim_end_matches("/api/v1"),
            path.replace("{id}", "0123456789abcdef")
                .replace("{rank}", "0")
                .replace("{name}", "x")
                .replace("{user}", "x")
                .replace("{node}", "x")
        );
        for method in ops.as_object().unwrap().keys() {
            let req = match method.as_str() {
                "get" => anon.get(&url),
                "post" => anon.post(&url),
                "put" => anon.put(&url),
                "patch" => anon.patch(&url),
                "delete" => anon.delete(&url),
                m => panic!("method {m}"),
            };
            let status = req.send().unwrap().status().as_u16();
            if path.ends_with("/health") {
                assert_eq!(status, 200, "{method} {path}");
            } else if path.ends_with("/login") {
                // Open, but says what is missing.
                assert_eq!(status, 400, "{method} {path}");
            } else {
                assert_eq!(
                    status, 401,
                    "{method} {path} answered {status} without a token"
                );
            }
        }
    }
}
