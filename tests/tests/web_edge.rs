//! The web edge of a real node, attacked as a browser or a script would:
//! DNS rebinding (a foreign Host), open redirects after login, login floods.

use pesc_tests::Node;
use reqwest::StatusCode;
use serde_json::json;

/// `application/x-www-form-urlencoded` for one value.
fn form_encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn a_foreign_host_is_refused_and_every_answer_carries_security_headers() {
    let node = Node::start(1).unwrap();
    let api = node.http();
    let r = api
        .get("/node")
        .header("host", "evil.example")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.text().unwrap().contains("evil.example"));
    let port = node
        .api_base()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches("/api/v1")
        .to_string();
    let r = api
        .get("/node")
        .header("host", format!("localhost:{port}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let page = api
        .http
        .get(api.base.replace("/api/v1", "/login"))
        .send()
        .unwrap();
    for h in [
        "content-security-policy",
        "x-content-type-options",
        "x-frame-options",
        "referrer-policy",
    ] {
        assert!(
            page.headers().contains_key(h),
            "{h} missing on the login page"
        );
    }
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("script-src 'self' 'unsafe-inline'")
    );
    assert!(csp.contains("frame-ancestors 'none'"));
}

#[test]
fn logins_go_back_only_to_this_site_and_floods_do_not_lift_the_limit() {
    let node = Node::start(1).unwrap();
    let admin = node.http();
    admin.add_user("alice", "user");
    let site = admin.base.replace("/api/v1", "");
    let no_redirects = reqwest::blocking::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // The login form carries a CSRF token that matches its cookie.
    let page = no_redirects.get(format!("{site}/login")).send().unwrap();
    let cookie = page.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let html = page.text().unwrap();
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the form's csrf field")
        .to_string();
    let post = |next: &str, with_cookie: bool| {
        let mut r = no_redirects
            .post(format!("{site}/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "user=alice&password=alice-password&csrf={csrf}&next={}",
                form_encode(next)
            ));
        if with_cookie {
            r = r.header("cookie", &cookie);
        }
        r.send().unwrap()
    };
    // Another site's form (no cookie of ours): refused.
    assert_eq!(post("/", false).status(), StatusCode::FORBIDDEN);
    for (next, want) in [
        ("/requests", "/requests"),
        ("/\t/evil.example", "/"),
        ("//evil.example", "/"),
        ("/\\evil.example", "/"),
    ] {
        let r = post(next, true);
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{next:?}");
        assert_eq!(r.headers()["location"], want, "{next:?}");
    }
    // A name longer than 64 characters costs no hash: 400.
    let r = admin
        .post("/login")
        .json(&json!({"user": "x".repeat(65), "password": "whatever-long"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Five failures lock alice's name; a flood of junk names from this
    // address is stopped by the address limit and lifts nothing.
    for _ in 0..5 {
        let r = admin
            .post("/login")
            .json(&json!({"user": "alice", "password": "wrong-password"}))
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let mut refused = 0;
    for i in 0..10_000 {
        let r = admin
            .post("/login")
            .json(&json!({"user": format!("junk{i}"), "password": "wrong-password"}))
            .send()
            .unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            refused += 1;
        }
    }
    assert!(
        refused >= 9_900,
        "the address limit held: {refused} refused"
    );
    let r = admin
        .post("/login")
        .json(&json!({"user": "alice", "password": "alice-password"}))
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the limit on alice still holds"
    );
}
