//! Accounts, sessions, API tokens, rooms and who may do what, through the
//! HTTP API of real nodes.

use std::time::{Duration, Instant};

use pesc_tests::Node;
use pesc_tests::grid::Grid;
use serde_json::{Value, json};

fn status(r: reqwest::blocking::Response) -> (u16, Value) {
    let s = r.status().as_u16();
    (s, r.json().unwrap_or(Value::Null))
}

#[test]
fn sessions_tokens_passwords_and_roles() {
    let node = Node::start(1).unwrap();
    let admin = node.http(); // the node's own token acts as an admin
    let ana = admin.add_user("ana", "user");
    admin.add_user("root", "admin");

    // Bad input is refused with a reason.
    let (s, e) = status(
        admin
            .post("/users")
            .json(&json!({"name": "x", "password": "short", "role": "user"}))
            .send()
            .unwrap(),
    );
    assert_eq!(s, 400);
    assert!(e["error"].as_str().unwrap().contains("at least 8"), "{e}");
    let (s, _) = status(
        admin
            .post("/users")
            .json(&json!({"name": "a/b", "password": "long enough", "role": "user"}))
            .send()
            .unwrap(),
    );
    assert_eq!(s, 400);
    let (s, _) = status(
        admin
            .post("/users")
            .json(&json!({"name": "ana", "password": "long enough", "role": "user"}))
            .send()
            .unwrap(),
    );
    assert_eq!(s, 409, "a taken name");
    let (s, _) = status(
        admin
            .post("/users")
            .json(&json!({"name": "z", "password": "long enough", "role": "king"}))
            .send()
            .unwrap(),
    );
    assert_eq!(s, 400, "an unknown role");

    // A token acts as its user.
    let me: Value = ana.get("/me").send().unwrap().json().unwrap();
    assert_eq!(
        (me["user"].as_str(), me["role"].as_str()),
        (Some("ana"), Some("user"))
    );
    let (s, _) = status(ana.get("/users").send().unwrap());
    assert_eq!(s, 403, "users do not list users");
    let (s, _) = status(
        ana.patch("/users/ana")
            .json(&json!({"role": "admin"}))
            .send()
            .unwrap(),
    );
    assert_eq!(s, 403, "users do not promote themselves");

    // Sessions: a cookie, and the CSRF token for changes.
    let (cookie, csrf) = ana.login("ana", "ana-password");
    let http = &ana.http;
    let me: Value = http
        .get(format!("{}/me", ana.base))
        .header("cookie", &cookie)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(me["user"], "ana");
    assert_eq!(me["csrf"], csrf.as_str());
    let no_csrf = http
        .post(format!("{}/tokens", ana.base))
        .header("cookie", &cookie)
        .json(&json!({}))
        .send()
        .unwrap();
    assert_eq!(
        no_csrf.status(),
        403,
        "a cookie call that changes something needs CSRF"
    );
    let t: Value = http
        .post(format!("{}/tokens", ana.base))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .json(&json!({"label": "laptop"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let laptop = ana.with_token(t["token"].as_str().unwrap());
    assert_eq!(laptop.get("/me").send().unwrap().status(), 200);
    let mine: Vec<Value> = ana.get("/tokens").send().unwrap().json().unwrap();
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert!(
        mine.iter()
            .all(|t| t["user"] == "ana" && t.get("token").is_none())
    );
    let tampered = cookie.replace('~', "~0");
    let bad = http
        .get(format!("{}/me", ana.base))
        .header("cookie", &tampered)
        .send()
        .unwrap();
    assert_eq!(bad.status(), 401, "a changed cookie is refused");

    // Revoking a token ends it.
    let id = t["info"]["id"].as_str().unwrap();
    assert_eq!(
        ana.delete(&format!("/tokens/{id}"))
            .send()
            .unwrap()
            .status(),
        204
    );
    assert_eq!(laptop.get("/me").send().unwrap().status(), 401);

    // Changing the password ends the sessions made with the old one.
    let r = http
        .patch(format!("{}/users/ana", ana.base))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .json(&json!({"password": "a new password"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let old = http
        .get(format!("{}/me", ana.base))
        .header("cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(old.status(), 401);
    ana.login("ana", "a new password");

    // Admins change roles, but never leave the grid without an admin.
    let (s, _) = status(
        admin
            .patch("/users/ana")
            .json(&json!({"role": "operator"}))
            .send()
            .unwrap(),
    );
    assert_eq!(s, 200);
    let (s, e) = status(
        admin
            .patch("/users/root")
            .json(&json!({"role": "user"}))
            .send()
            .unwrap(),
    );
    assert_eq!(s, 409, "{e}");

    // Logins are rate-limited per name: after 5 failures even the right
    // password waits.
    let login = |pw: &str| {
        admin
            .http
            .post(format!("{}/login", admin.base))
            .json(&json!({"user": "root", "password": pw}))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    for _ in 0..5 {
        assert_eq!(login("wrong password"), 401);
    }
    assert_eq!(login("root-password"), 429);
    let (s, e) = status(
        admin
            .http
            .post(format!("{}/login", admin.base))
            .json(&json!({"user": "nobody", "password": "whatever1"}))
            .send()
            .unwrap(),
    );
    assert_eq!(s, 401, "{e}");
    assert_eq!(e["error"], "wrong user name or password");
}

/// Polls a request until it is finished (bounded).
fn wait_done(api: &pesc_tests::Api, id: &str, timeout: Duration) -> Value {
    let t0 = Instant::now();
    loop {
        let v: Value = api
            .get(&format!("/requests/{id}"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if ["succeeded", "failed", "cancelled"].contains(&v["state"].as_str().unwrap_or("")) {
            return v;
        }
        assert!(t0.elapsed() < timeout, "not finished: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn rooms_decide_who_runs_where_and_users_see_only_their_own_requests() {
    let grid = Grid::loopback(2, 2, &[]).unwrap();
    let admin = grid.nodes[0].http();
    let n1_id = grid.nodes[1].node_id();
    let ana = admin.add_user("ana", "user");
    let bob = admin.add_user("bob", "user");
    let eve = admin.add_user("eve", "user");
    let carl = admin.add_user("carl", "user");
    let op = admin.add_user("op", "operator");

    // Only admins make rooms and name room admins.
    let (s, _) = status(
        bob.post("/rooms")
            .json(&json!({"name": "lab"}))
            .send()
            .unwrap(),
    );
    assert_eq!(s, 403);
    let (s, r) = status(
        admin
            .post("/rooms")
            .json(&json!({"name": "lab", "admins": ["ana"]}))
            .send()
            .unwrap(),
    );
    assert_eq!(s, 201, "{r}");
    let (s, _) = status(
        admin
            .post("/rooms")
            .json(&json!({"name": "lab2", "admins": ["carl"]}))
            .send()
            .unwrap(),
    );
    assert_eq!(s, 201);
    let (s, _) = status(ana.put("/rooms/lab/admins/bob").send().unwrap());
    assert_eq!(s, 403, "room admins do not name room admins");

    // A user sees the rooms open to them.
    let names = |api: &pesc_tests::Api| -> Vec<String> {
        let v: Vec<Value> = api.get("/rooms").send().unwrap().json().unwrap();
        v.iter()
            .map(|r| r["room"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&ana), ["General", "lab"]);
    assert_eq!(names(&bob), ["General"]);
    assert_eq!(bob.get("/rooms/lab").send().unwrap().status(), 404);

    // A room not open to the user refuses their requests.
    let (s, e) = status(bob.submit_script("echo hi\n", 1, &["lab"]));
    assert_eq!(s, 403, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("not open to bob"),
        "{e}"
    );
    let (s, _) = status(bob.submit_script("echo hi\n", 1, &["nowhere"]));
    assert_eq!(s, 400);

    // The room admin lets bob in; others cannot.
    let (s, _) = status(eve.put("/rooms/lab/users/eve").send().unwrap());
    assert_eq!(s, 403);
    let (s, _) = status(ana.put("/rooms/lab/users/bob").send().unwrap());
    assert_eq!(s, 200);
    assert_eq!(names(&bob), ["General", "lab"]);

    // The room admin puts node n1 in the room; bob's runs go only there.
    let (s, e) = status(ana.put("/rooms/lab/nodes/n1").send().unwrap());
    assert_eq!(s, 204, "{e}");
    let (s, req) = status(bob.submit_script("sleep 0.3; echo ran\n", 6, &["lab"]));
    assert_eq!(s, 201, "{req}");
    let id = req["id"].as_str().unwrap().to_string();
    let done = wait_done(&bob, &id, Duration::from_secs(90));
    assert_eq!(done["state"], "succeeded", "{done}");
    for run in done["runs"].as_array().unwrap() {
        assert_eq!(
            run["node"].as_str(),
            Some(n1_id.as_str()),
            "a run left the room: {run}"
        );
    }

    // In the room only, n1 runs none of General's requests: they all go
    // to n0, while n1 idles.
    let (s, req) = status(bob.submit_script("sleep 0.3; echo ran\n", 6, &[]));
    assert_eq!(s, 201, "{req}");
    let general = wait_done(&bob, req["id"].as_str().unwrap(), Duration::from_secs(90));
    assert_eq!(general["state"], "succeeded", "{general}");
    for run in general["runs"].as_array().unwrap() {
        assert_ne!(
            run["node"].as_str(),
            Some(n1_id.as_str()),
            "a General run on a node kept to its room: {run}"
        );
    }
    // Left in General too, it takes General's runs again.
    let (s, e) = status(ana.put("/rooms/lab/nodes/n1?general=true").send().unwrap());
    assert_eq!(s, 204, "{e}");
    std::thread::sleep(Duration::from_secs(1));
    let (s, req) = status(bob.submit_script("sleep 1; echo ran\n", 8, &[]));
    assert_eq!(s, 201, "{req}");
    let general = wait_done(&bob, req["id"].as_str().unwrap(), Duration::from_secs(90));
    assert!(
        general["runs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["node"].as_str() == Some(n1_id.as_str())),
        "n1 ran none of General's runs: {general}"
    );
    let (s, _) = status(ana.put("/rooms/lab/nodes/n1").send().unwrap());
    assert_eq!(s, 204);

    // What bob uploaded is his.
    let procs: Vec<Value> = admin.get("/processes").send().unwrap().json().unwrap();
    assert!(procs.iter().any(|p| p["owner"] == "bob"), "{procs:?}");
    assert_eq!(done["owner"], "bob");

    // Moving a node between rooms needs admin of both.
    let (s, e) = status(ana.put("/rooms/lab2/nodes/n1").send().unwrap());
    assert_eq!(s, 403, "ana is not admin of lab2: {e}");
    let (s, e) = status(carl.put("/rooms/lab2/nodes/n1").send().unwrap());
    assert_eq!(s, 403, "carl is not admin of lab: {e}");
    assert!(
        e["error"].as_str().unwrap().contains("admin of both"),
        "{e}"
    );
    let (s, _) = status(admin.put("/rooms/lab2/nodes/n1").send().unwrap());
    assert_eq!(s, 204);
    let lab: Value = ana.get("/rooms/lab").send().unwrap().json().unwrap();
    assert_eq!(lab["nodes"], json!([]));

    // Users see and cancel only their own requests; operators see all;
    // admins cancel any.
    let (_, slow) = status(bob.submit_script("sleep 30\n", 2, &[]));
    let slow = slow["id"].as_str().unwrap().to_string();
    let listed = |api: &pesc_tests::Api| -> Vec<String> {
        let v: Vec<Value> = api.get("/requests").send().unwrap().json().unwrap();
        v.iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(listed(&bob).len(), 4);
    assert!(listed(&eve).is_empty());
    assert_eq!(listed(&op).len(), 4);
    assert_eq!(
        eve.get(&format!("/requests/{slow}"))
            .send()
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        eve.get(&format!("/requests/{id}/results"))
            .send()
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        eve.post(&format!("/requests/{slow}/cancel"))
            .send()
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        op.get(&format!("/requests/{slow}"))
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        op.post(&format!("/requests/{slow}/cancel"))
            .send()
            .unwrap()
            .status(),
        403
    );
    let (s, c) = status(
        admin
            .post(&format!("/requests/{slow}/cancel"))
            .send()
            .unwrap(),
    );
    assert_eq!(s, 200, "{c}");
    let (_, own) = status(bob.submit_script("sleep 30\n", 1, &[]));
    let own = own["id"].as_str().unwrap();
    assert_eq!(
        bob.post(&format!("/requests/{own}/cancel"))
            .send()
            .unwrap()
            .status(),
        200
    );

    // The event stream tells a user of their own requests only.
    let (_, mine) = status(eve.submit_script("echo mine\n", 1, &[]));
    let mine = mine["id"].as_str().unwrap().to_string();
    let mut stream = eve.get("/events?since=0").send().unwrap();
    let evs = pesc_tests::read_events(&mut stream, |evs| evs.iter().any(|e| e.2.contains(&mine)));
    assert!(
        evs.iter()
            .all(|e| !e.2.contains(&id) && !e.2.contains(&slow)),
        "eve heard of bob's requests: {evs:?}"
    );
    drop(stream);

    // The join token is for admins.
    assert_eq!(bob.get("/grid/join-token").send().unwrap().status(), 403);
    let j: Value = admin
        .get("/grid/join-token")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(
        j["command"]
            .as_str()
            .unwrap()
            .starts_with("pesc node --join "),
        "{j}"
    );

    // Users make domains too; their own Dockerfile waits for review (see
    // users_make_domains_and_operators_review_their_dockerfiles).
    let d = json!({"name": "py", "dockerfile": "FROM debian:bookworm-slim\n"});
    let (s, made) = status(bob.post("/domains").json(&d).send().unwrap());
    assert_eq!(s, 201, "{made}");
    assert_eq!(made["review"]["state"], "requested", "{made}");

    // Accounts made on one node work on the other.
    let other = grid.nodes[1].http().with_token(&bob.token);
    let t0 = Instant::now();
    while other.get("/me").send().unwrap().status() != 200 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "bob's token never reached n1"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls `f` until it holds (bounded), for changes that travel by sync.
fn eventually(what: &str, timeout: Duration, f: impl Fn() -> bool) {
    let t0 = std::time::Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "never: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn disabled_deleted_and_re_passworded_accounts_lose_every_session_and_token_on_every_node() {
    let g = pesc_tests::grid::Grid::loopback(2, 1, &[]).unwrap();
    let (a, b) = (g.nodes[0].http(), g.nodes[1].http());
    let ana = a.add_user("ana", "user");
    let ana_token = ana.token.clone();
    let (cookie, _) = a.login("ana", "ana-password");
    let me_with = |api: &pesc_tests::Api, cookie: Option<&str>| {
        let r = match cookie {
            Some(c) => pesc_tests::Api {
                base: api.base.clone(),
                token: String::new(),
                http: api.http.clone(),
            }
            .get("/me")
            .header("cookie", c),
            None => api.get("/me"),
        };
        r.send().unwrap().status().as_u16()
    };
    let ana_b = b.with_token(&ana_token);
    eventually(
        "ana's token works on the other node",
        Duration::from_secs(30),
        || me_with(&ana_b, None) == 200,
    );
    assert_eq!(me_with(&a, Some(&cookie)), 200);

    // Admins list and revoke anyone's token; users may not list them all.
    let (s, all) = status(a.get("/tokens?all=true").send().unwrap());
    assert_eq!(s, 200);
    assert!(
        all.as_array().unwrap().iter().any(|t| t["user"] == "ana"),
        "{all}"
    );
    let (s, _) = status(ana.get("/tokens?all=true").send().unwrap());
    assert_eq!(s, 403);

    // Disabled: login refused, session and token dead on both nodes.
    let (s, u) = status(
        a.patch("/users/ana")
            .json(&json!({"disabled": true}))
            .send()
            .unwrap(),
    );
    assert_eq!(s, 200, "{u}");
    assert_eq!(u["disabled"], true);
    assert_eq!(me_with(&a, Some(&cookie)), 401);
    assert_eq!(me_with(&ana, None), 401);
    eventually(
        "the disabled token is refused on the other node",
        Duration::from_secs(30),
        || me_with(&ana_b, None) == 401,
    );
    let (s, e) = status(
        a.post("/login")
            .json(&json!({"user": "ana", "password": "ana-password"}))
            .send()
            .unwrap(),
    );
    assert_eq!(s, 403, "{e}");
    assert!(e["error"].as_str().unwrap().contains("disabled"), "{e}");
    // Enabled again: the same token works again.
    let (s, _) = status(
        a.patch("/users/ana")
            .json(&json!({"disabled": false}))
            .send()
            .unwrap(),
    );
    assert_eq!(s, 200);
    assert_eq!(me_with(&ana, None), 200);

    // Her own new password ends every token and session she had.
    let (s, _) = status(
        ana.patch("/users/ana")
            .json(&json!({"password": "a brand new password"}))
            .send()
            .unwrap(),
    );
    assert_eq!(s, 200);
    assert_eq!(me_with(&ana, None), 401, "the token outlived the password");
    eventually(
        "no token of ana on the other node",
        Duration::from_secs(30),
        || me_with(&ana_b, None) == 401,
    );
    // A user may not disable herself or anyone.
    let carl = a.add_user("carl", "user");
    let (s, _) = status(
        carl.patch("/users/ana")
            .json(&json!({"disabled": true}))
            .send()
            .unwrap(),
    );
    assert_eq!(s, 403);

    // Deleted: gone from the list, its tokens with it; the last admin stays.
    let (s, _) = status(a.delete("/users/carl").send().unwrap());
    assert_eq!(s, 204);
    assert_eq!(me_with(&carl, None), 401);
    let (_, users) = status(a.get("/users").send().unwrap());
    assert!(!users.to_string().contains("\"carl\""), "{users}");
    let (_, all) = status(a.get("/tokens?all=true").send().unwrap());
    assert!(!all.to_string().contains("\"carl\""), "{all}");
    let root = a.add_user("root", "admin");
    let (s, e) = status(root.delete("/users/root").send().unwrap());
    assert_eq!(s, 409, "the last admin was deleted: {e}");
    let (s, _) = status(
        root.patch("/users/root")
            .json(&json!({"disabled": true}))
            .send()
            .unwrap(),
    );
    assert_eq!(s, 409);
}

/// Users make their own environments: from a template at once; their own
/// Dockerfile is a request an operator approves (for them and the rooms
/// chosen) or rejects with a reason, and no run uses it before.
#[test]
fn users_make_domains_and_operators_review_their_dockerfiles() {
    let node = pesc_tests::Node::start(1).unwrap();
    let admin = node.http();
    let ana = admin.add_user("ana", "user");
    let bob = admin.add_user("bob", "user");
    let op = admin.add_user("op", "operator");
    let make = |api: &pesc_tests::Api, body: Value| {
        status(api.post("/domains").json(&body).send().unwrap())
    };
    let (s, d) = make(
        &ana,
        json!({"name": "ana-sci", "template": "SimplePython", "packages": ["numpy"]}),
    );
    assert_eq!(s, 201, "{d}");
    assert_eq!(d["review"]["state"], "approved", "{d}");
    let (s, d) = make(
        &ana,
        json!({"name": "ana-own", "dockerfile": "FROM debian:bookworm-slim\n"}),
    );
    assert_eq!(s, 201, "{d}");
    assert_eq!(d["review"]["state"], "requested", "{d}");
    // Nobody else replaces it.
    let (s, e) = make(&bob, json!({"name": "ana-own", "template": "SimplePython"}));
    assert_eq!(s, 403, "{e}");
    // No run uses it before an operator approves.
    let submit = |api: &pesc_tests::Api, domain: &str| {
        let p: Value = api
            .post("/processes?file_name=job.sh&language=shell")
            .body("echo hi\n")
            .send()
            .unwrap()
            .json()
            .unwrap();
        status(
            api.post("/requests")
                .json(&json!({"process": p["id"], "repetitions": 1, "domain": domain}))
                .send()
                .unwrap(),
        )
    };
    let (s, e) = submit(&ana, "ana-own");
    assert_eq!(s, 400, "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("waits for an operator's approval"),
        "{e}"
    );
    // Users do not review; a rejection says why.
    let review = |api: &pesc_tests::Api, body: Value| {
        status(
            api.post("/domains/ana-own/review")
                .json(&body)
                .send()
                .unwrap(),
        )
    };
    let (s, _) = review(&ana, json!({"approve": true}));
    assert_eq!(s, 403);
    let (s, _) = review(&op, json!({"approve": false}));
    assert_eq!(s, 400, "a rejection needs a reason");
    let (s, d) = review(
        &op,
        json!({"approve": false, "reason": "installs from the internet"}),
    );
    assert_eq!(s, 200, "{d}");
    let listed: Vec<Value> = ana.get("/domains").send().unwrap().json().unwrap();
    let own = listed.iter().find(|d| d["name"] == "ana-own").unwrap();
    assert_eq!(own["review"]["state"], "rejected", "{own}");
    let (s, e) = submit(&ana, "ana-own");
    assert_eq!(s, 400, "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("installs from the internet"),
        "{e}"
    );
    // The Domains page answers too (the same rule): approved there.
    let (cookie, csrf) = op.login("op", "op-password");
    let root = op.base.trim_end_matches("/api/v1").to_string();
    let page = op
        .http
        .post(format!("{root}/domains/ana-own/review"))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}&action=approve&rooms="))
        .send()
        .unwrap();
    assert!(page.status().is_success(), "{}", page.status());
    let listed: Vec<Value> = ana.get("/domains").send().unwrap().json().unwrap();
    let own = listed.iter().find(|d| d["name"] == "ana-own").unwrap();
    assert_eq!(own["review"]["state"], "approved", "{own}");
    // Approved: usable by its owner, not by others it is not shared with.
    let (s, r) = submit(&ana, "ana-own");
    assert_eq!(s, 201, "{r}");
    let (s, e) = submit(&bob, "ana-own");
    assert_eq!(s, 403, "{e}");
    // A template domain is anyone's.
    let (s, r) = submit(&bob, "ana-sci");
    assert_eq!(s, 201, "{r}");
}
