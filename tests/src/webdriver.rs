//! A small W3C WebDriver client over blocking HTTP, driving Debian's
//! headless Chromium through chromedriver (started and stopped by PID).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Whether chromedriver and chromium are installed.
pub fn available() -> bool {
    which("chromedriver").is_some() && chromium().is_some()
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(cmd))
            .find(|f| f.is_file())
    })
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|c| which(c))
}

/// A browser session; chromedriver is killed on drop.
pub struct Browser {
    driver: Child,
    base: String,
    http: reqwest::blocking::Client,
    /// Where screenshots go.
    pub artifacts: PathBuf,
}

pub struct Element {
    id: String,
}

impl Browser {
    pub fn start(artifacts: &Path) -> Result<Browser> {
        let port = free_port()?;
        let driver = Command::new(which("chromedriver").context("no chromedriver")?)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromedriver")?;
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()?;
        let mut b = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            http,
            artifacts: artifacts.to_path_buf(),
        };
        let t0 = Instant::now();
        while b.http.get(format!("{}/status", b.base)).send().is_err() {
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("chromedriver did not answer");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium().context("no chromium")?,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1100",
                         "--no-proxy-server"],
                "prefs": {"download.default_directory": artifacts.join("downloads")}
            }
        }}});
        let v = b.raw("POST", "/session", Some(caps))?;
        let sid = v["sessionId"]
            .as_str()
            .with_context(|| format!("no session: {v}"))?;
        b.base = format!("{}/session/{sid}", b.base);
        std::fs::create_dir_all(&b.artifacts)?;
        Ok(b)
    }

    fn raw(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let rb = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.post(&url).json(&body.unwrap_or(json!({}))),
        };
        let v: Value = rb.send()?.json()?;
        if let Some(e) = v["value"]["error"].as_str() {
            bail!("webdriver {method} {path}: {e}: {}", v["value"]["message"]);
        }
        Ok(v.get("value").cloned().unwrap_or(v))
    }

    pub fn goto(&self, url: &str) -> Result<()> {
        self.raw("POST", "/url", Some(json!({ "url": url })))?;
        Ok(())
    }

    pub fn url(&self) -> Result<String> {
        Ok(self
            .raw("GET", "/url", None)?
            .as_str()
            .unwrap_or("")
            .to_string())
    }

    pub fn find(&self, css: &str) -> Result<Element> {
        let v = self.raw(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        )?;
        Ok(Element {
            id: v[ELEMENT]
                .as_str()
                .with_context(|| format!("no element {css}"))?
                .to_string(),
        })
    }

    pub fn count(&self, css: &str) -> Result<usize> {
        let v = self.raw(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )?;
        Ok(v.as_array().map_or(0, Vec::len))
    }

    /// Clicks an element; looks it up again if the page re-rendered it in
    /// between (live regions do).
    pub fn click(&self, css: &str) -> Result<()> {
        let mut tries = 0;
        loop {
            let e = self.find(css)?;
            match self.raw("POST", &format!("/element/{}/click", e.id), None) {
                Err(err) if tries < 10 && err.to_string().contains("stale element") => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                r => return r.map(|_| ()),
            }
        }
    }

    /// Types into a field (for a file input: the file's path).
    pub fn fill(&self, css: &str, text: &str) -> Result<()> {
        let e = self.find(css)?;
        self.raw("POST", &format!("/element/{}/clear", e.id), None)
            .ok();
        self.raw(
            "POST",
            &format!("/element/{}/value", e.id),
            Some(json!({ "text": text })),
        )?;
        Ok(())
    }

    pub fn text(&self, css: &str) -> Result<String> {
        let e = self.find(css)?;
        Ok(self
            .raw("GET", &format!("/element/{}/text", e.id), None)?
            .as_str()
            .unwrap_or("")
            .to_string())
    }

    /// Runs a script in the page; `async` scripts call `arguments[0](result)`.
    pub fn script(&self, js: &str) -> Result<Value> {
        self.raw(
            "POST",
            "/execute/sync",
            Some(json!({"script": js, "args": []})),
        )
    }

    pub fn script_async(&self, js: &str) -> Result<Value> {
        self.raw(
            "POST",
            "/execute/async",
            Some(json!({"script": js, "args": []})),
        )
    }

    pub fn accept_alert(&self) -> Result<()> {
        self.raw("POST", "/alert/accept", None)?;
        Ok(())
    }

    /// Waits (bounded) until `pred` holds, checking every 200 ms.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Browser) -> Result<bool>,
    ) -> Result<()> {
        let t0 = Instant::now();
        loop {
            if pred(self).unwrap_or(false) {
                return Ok(());
            }
            if t0.elapsed() > timeout {
                let _ = self.screenshot(&format!("timeout-{}", what.replace(' ', "-")));
                bail!("timed out waiting for {what} at {}", self.url()?);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits (bounded) for an element to be on the page.
    pub fn wait_for(&self, css: &str) -> Result<()> {
        self.wait_until(css, Duration::from_secs(30), |b| Ok(b.count(css)? > 0))
    }

    /// Waits (bounded) for an element whose text holds `text`.
    pub fn wait_text(&self, css: &str, text: &str) -> Result<String> {
        let mut last = String::new();
        self.wait_until(
            &format!("'{text}' in {css}"),
            Duration::from_secs(30),
            |b| {
                last = b.text(css)?;
                Ok(last.contains(text))
            },
        )
        .with_context(|| format!("last text of {css}: {last}"))?;
        Ok(last)
    }

    /// Saves a PNG of the page as `NAME.png` in the artifacts folder.
    pub fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let v = self.raw("GET", "/screenshot", None)?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().context("no screenshot")?)?;
        let p = self.artifacts.join(format!("{name}.png"));
        std::fs::write(&p, png)?;
        Ok(p)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.raw("DELETE", "", None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
