//! The web UI in real headless Chromium (through chromedriver) against a
//! real node: first-run setup, the integral example submitted from the
//! New request page and watched live, results downloaded, a request
//! cancelled, and what a non-admin user sees. Screenshots of every page go
//! to `target/test-artifacts/browser/`.
//!
//! CI installs chromium and chromium-driver and the test fails loudly
//! without them; elsewhere `PESC_SKIP_BROWSER=1` skips it.

use std::time::Duration;

use pesc_tests::webdriver::Browser;
use pesc_tests::{Node, workspace, write_file};

fn can_run() -> bool {
    if std::env::var_os("PESC_SKIP_BROWSER").is_some() {
        eprintln!("skipped: PESC_SKIP_BROWSER is set");
        return false;
    }
    assert!(
        pesc_tests::webdriver::available(),
        "no chromium or chromedriver: apt-get install chromium chromium-driver (or set PESC_SKIP_BROWSER=1)"
    );
    true
}

const WAIT: Duration = Duration::from_secs(90);

fn login(b: &Browser, ui: &str, user: &str, password: &str) {
    b.goto(&format!("{ui}/login")).unwrap();
    b.fill("input[name=user]", user).unwrap();
    b.fill("input[name=password]", password).unwrap();
    b.click("form button[type=submit]").unwrap();
    b.wait_until("the dashboard", WAIT, |b| Ok(b.count("#dashboard")? == 1))
        .unwrap();
}

#[test]
#[cfg_attr(pesc_skip_browser, ignore = "PESC_SKIP_BROWSER is set")]
fn a_user_runs_the_integral_example_from_the_browser() {
    if !can_run() {
        return;
    }
    let node = Node::start(4).unwrap();
    let ui = node.api_base().trim_end_matches("/api/v1").to_string();
    let artifacts = workspace().join("target/test-artifacts/browser");
    let _ = std::fs::remove_dir_all(&artifacts);
    let b = Browser::start(&artifacts).unwrap();

    // First run: any page leads to the setup of the grid's admin.
    b.goto(&format!("{ui}/")).unwrap();
    assert!(b.url().unwrap().ends_with("/setup"), "{}", b.url().unwrap());
    b.screenshot("01-setup").unwrap();
    b.fill("input[name=code]", "not the code").unwrap();
    b.fill("input[name=user]", "admin").unwrap();
    b.fill("input[name=password]", "admin-password").unwrap();
    b.click("form button[type=submit]").unwrap();
    b.wait_text(".flash.error", "Wrong setup code").unwrap();
    // The link the node printed fills the code in.
    b.goto(&node.setup_link()).unwrap();
    b.fill("input[name=user]", "admin").unwrap();
    b.fill("input[name=password]", "admin-password").unwrap();
    b.click("form button[type=submit]").unwrap();
    b.wait_until("the dashboard", WAIT, |b| Ok(b.count("#dashboard")? == 1))
        .unwrap();
    b.wait_text(".whoami span", "admin (admin)").unwrap();
    b.screenshot("02-dashboard-empty").unwrap();

    // New request: upload the integral example, 10 repetitions.
    b.goto(&format!("{ui}/requests/new")).unwrap();
    b.fill("input[name=repetitions]", "0").unwrap();
    b.click("#new-request button[type=submit]").unwrap();
    // The form says what is missing.
    b.wait_text("#form-error", "Choose a process").unwrap();
    let example = workspace().join("docs/examples/integral/integral.py");
    b.fill("input[name=upload]", example.to_str().unwrap())
        .unwrap();
    b.click("#new-request button[type=submit]").unwrap();
    b.wait_text("#form-error", "Repetitions").unwrap();
    b.fill("input[name=repetitions]", "10").unwrap();
    b.screenshot("03-new-request").unwrap();
    b.click("#new-request button[type=submit]").unwrap();
    b.wait_until("the request page", WAIT, |b| Ok(b.count("#request")? == 1))
        .unwrap();
    let page = b.url().unwrap();
    let id = page.rsplit('/').next().unwrap().to_string();
    assert_eq!(id.len(), 16, "{page}");

    // The per-rank table reaches done without a reload: a marker set on
    // the page now must still be there at the end.
    b.script("window.__stillHere = true; return null;").unwrap();
    b.wait_until("10 ranks done", WAIT, |b| {
        Ok(b.count("tr[data-state=succeeded]")? == 10)
    })
    .unwrap();
    assert_eq!(
        b.script("return window.__stillHere === true;").unwrap(),
        true
    );
    assert_eq!(b.url().unwrap(), page);
    b.wait_text(".summary", "10 done").unwrap();
    assert_eq!(
        b.count("svg.gantt rect.bar").unwrap(),
        10,
        "one bar per attempt"
    );
    b.wait_text("table.stats", "Speedup").unwrap();
    b.screenshot("04-request-done").unwrap();

    // Download all results and output.txt, as the page's links do.
    let fetched = b
        .script_async(&format!(
            "const done = arguments[0];
             (async () => {{
               const z = await fetch('/api/v1/requests/{id}/results');
               const bytes = new Uint8Array(await z.arrayBuffer());
               const o = await fetch('/requests/{id}/output.txt');
               done({{zip: z.status, type: z.headers.get('content-type'), pk: bytes[0] === 0x50 && bytes[1] === 0x4b,
                      out: o.status, text: await o.text()}});
             }})();"
        ))
        .unwrap();
    assert_eq!(fetched["zip"], 200, "{fetched}");
    assert_eq!(fetched["type"], "application/zip");
    assert_eq!(fetched["pk"], true);
    assert_eq!(fetched["out"], 200);
    let text = fetched["text"].as_str().unwrap();
    assert_eq!(text.lines().count(), 50, "5 lines per rank: {text}");
    assert!(text.lines().last().unwrap().starts_with("9, "));

    // A second request, cancelled from its page.
    let tmp = tempfile::tempdir().unwrap();
    let slow = write_file(tmp.path(), "slow.sh", "sleep 60\n");
    b.goto(&format!("{ui}/requests/new")).unwrap();
    b.fill("input[name=upload]", &slow).unwrap();
    b.fill("input[name=repetitions]", "3").unwrap();
    b.click("#new-request button[type=submit]").unwrap();
    b.wait_until("the second request page", WAIT, |b| {
        Ok(b.count("#request")? == 1 && b.url()? != page)
    })
    .unwrap();
    b.wait_until("runs running", WAIT, |b| {
        Ok(b.count("tr[data-state=running]")? >= 1)
    })
    .unwrap();
    b.click("button[data-cancel]").unwrap();
    b.accept_alert().unwrap();
    b.wait_until("the request cancelled", WAIT, |b| {
        Ok(b.count("tr[data-state=cancelled]")? == 3)
    })
    .unwrap();

    // A sweep from the form: the page counts the runs before the submit
    // (the node parses the lines; a bad one says why).
    let swept = write_file(
        tmp.path(),
        "swept.sh",
        "echo \"$PESC_PARAM_ALPHA\" > \"$PESC_OUTPUT_DIR/output.txt\"\nprintf 'score\\n%s\\n' \"$PESC_PARAM_ALPHA\" > \"$PESC_OUTPUT_DIR/s.csv\"\n",
    );
    b.goto(&format!("{ui}/requests/new")).unwrap();
    b.fill("input[name=upload]", &swept).unwrap();
    b.fill("input[name=repetitions]", "2").unwrap();
    b.fill("textarea[name=sweep]", "alpha=1..").unwrap();
    b.wait_text("#sweep-count", "range").unwrap();
    b.fill("textarea[name=sweep]", "alpha=1,2,3").unwrap();
    b.wait_text("#sweep-count", "3 combination(s) of alpha × 2 = 6 run(s)")
        .unwrap();
    b.screenshot("03b-sweep").unwrap();
    b.click("#new-request button[type=submit]").unwrap();
    b.wait_until("the sweep's page", WAIT, |b| {
        Ok(b.count("#request")? == 1 && b.count("tr[data-state=succeeded]")? == 6)
    })
    .unwrap();
    // Its summary plot: the mean of score for each alpha.
    b.wait_for("section.sweep-plot img").unwrap();
    let sweep_page = b.url().unwrap();
    let sweep_id = sweep_page.rsplit('/').next().unwrap().to_string();
    let plot = b
        .script_async(&format!(
            "const done = arguments[arguments.length - 1];
             fetch('/requests/{sweep_id}/plot.svg').then(async r => done({{status: r.status, svg: await r.text()}}));"
        ))
        .unwrap();
    assert_eq!(plot["status"], 200, "{plot}");
    let svg = plot["svg"].as_str().unwrap();
    assert!(
        svg.contains(r#"data-value="3" data-mean="3" data-n="2""#),
        "{svg}"
    );
    b.screenshot("03c-sweep-plot").unwrap();
    // Rerun exactly, from its page: a new request of the same runs.
    b.click("button[data-rerun]").unwrap();
    b.wait_until("the rerun's page", WAIT, |b| {
        Ok(b.url()? != sweep_page && b.count("tr[data-state=succeeded]")? == 6)
    })
    .unwrap();
    b.screenshot("05-request-cancelled").unwrap();

    // A user and a room, made by the admin through the pages.
    b.goto(&format!("{ui}/users")).unwrap();
    b.fill("#new-user input[name=name]", "bob").unwrap();
    b.fill("#new-user input[name=password]", "bob-password")
        .unwrap();
    b.click("#new-user button[type=submit]").unwrap();
    b.wait_text(".flash.ok", "User bob added").unwrap();
    assert_eq!(b.count("tr[data-user=bob]").unwrap(), 1);
    b.screenshot("06-users").unwrap();
    b.goto(&format!("{ui}/rooms")).unwrap();
    b.fill("input[name=name]", "lab").unwrap();
    b.click("form[action='/rooms'] button[type=submit]")
        .unwrap();
    b.wait_text(".flash.ok", "Room lab created").unwrap();
    b.goto(&format!("{ui}/rooms")).unwrap();
    b.fill("input[name=name]", "open-lab").unwrap();
    b.click("form[action='/rooms'] input[name=public]").unwrap();
    b.click("form[action='/rooms'] button[type=submit]")
        .unwrap();
    b.wait_text(".flash.ok", "Room open-lab created").unwrap();
    b.screenshot("07-rooms").unwrap();

    // The admin gives this node a setting from the Nodes page: it applies
    // without a restart, and the page lists it.
    b.goto(&format!("{ui}/nodes")).unwrap();
    b.wait_for("form[action='/nodes/settings']").unwrap();
    b.script("document.querySelector(\"form[action='/nodes/settings'] select[name=key]\").value = 'idle_minutes'; return true;")
        .unwrap();
    b.fill("form[action='/nodes/settings'] input[name=value]", "15")
        .unwrap();
    b.click("form[action='/nodes/settings'] button[type=submit]")
        .unwrap();
    b.wait_text(".flash.ok", "idle_minutes is now 15").unwrap();
    b.goto(&format!("{ui}/nodes")).unwrap();
    b.wait_text("table.settings", "idle_minutes").unwrap();
    let shown = node.cli_json(&["config", "show", &node.node_id(), "--json"]);
    assert!(
        shown
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["key"] == "idle_minutes" && s["value"] == "15"),
        "{shown}"
    );
    // Cleared again (an empty value): the rest of the test wants no idle wait.
    b.script("document.querySelector(\"form[action='/nodes/settings'] select[name=key]\").value = 'idle_minutes'; return true;")
        .unwrap();
    b.click("form[action='/nodes/settings'] button[type=submit]")
        .unwrap();
    b.wait_text(".flash.ok", "idle_minutes cleared").unwrap();

    // Every other page renders for the admin.
    for (path, shot, expect) in [
        ("/nodes", "08-nodes", "pesc node --join"),
        ("/domains", "09-domains", "New domain"),
        ("/processes", "10-processes", "integral.py"),
        ("/files", "11-files", "Add a shared file"),
        ("/tokens", "12-tokens", "Make a token"),
        ("/docs", "13-docs", "User guide"),
        ("/docs/user-guide", "14-user-guide", "User guide"),
        ("/docs/api", "15-api-reference", "/api/v1/requests"),
    ] {
        b.goto(&format!("{ui}{path}")).unwrap();
        b.wait_text("main", expect).unwrap();
        b.screenshot(shot).unwrap();
    }
    b.goto(&format!("{ui}/")).unwrap();
    b.screenshot("16-dashboard").unwrap();

    // Log out; bob logs in and sees only what is his.
    b.click(".whoami button").unwrap();
    b.wait_for("form[action='/login']").unwrap();
    login(&b, &ui, "bob", "bob-password");
    // Bob sees no one else's requests.
    b.wait_text("main", "No requests yet").unwrap();
    b.screenshot("17-bob-dashboard").unwrap();
    b.goto(&format!("{ui}/rooms")).unwrap();
    let rooms = b.wait_text("main", "open-lab").unwrap();
    assert!(rooms.contains("General"), "{rooms}");
    assert_eq!(
        b.count("section[data-room=lab]").unwrap(),
        0,
        "lab is not open to bob"
    );
    assert_eq!(
        b.count("form[action='/rooms']").unwrap(),
        0,
        "only admins make rooms"
    );
    b.screenshot("18-bob-rooms").unwrap();
    b.goto(&format!("{ui}/users")).unwrap();
    b.wait_text("main", "Only admins manage users").unwrap();
    b.goto(&format!("{ui}/requests/{id}")).unwrap();
    b.wait_text("main", "not yours").unwrap();
    b.screenshot("19-bob-not-his-request").unwrap();
    b.goto(&format!("{ui}/requests/new")).unwrap();
    b.wait_for("#new-request").unwrap();
    assert_eq!(b.count("input[name=rooms][value=open-lab]").unwrap(), 1);
    assert_eq!(b.count("input[name=rooms][value=lab]").unwrap(), 0);
}
