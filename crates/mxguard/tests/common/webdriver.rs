//! A small W3C WebDriver client over ureq: Debian's `chromedriver` driving
//! headless `chromium`, for end-to-end tests of web pages.
//!
//! Lookups that may legitimately fail (`find`, `wait_for`, `wait_for_text`)
//! return `Result<_, String>`; every other command panics on a WebDriver
//! error, with the error JSON and the tail of chromedriver's log. Dropping
//! the [`Browser`] deletes the session and stops chromedriver.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Scratch;

/// The W3C key of an element reference in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// The longest any one HTTP call to chromedriver may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// `(chromium, chromedriver)`, or `None` when either is missing.
pub fn programs() -> Option<(PathBuf, PathBuf)> {
    Some((
        super::find_program("chromium")?,
        super::find_program("chromedriver")?,
    ))
}

/// One chromedriver process with one headless Chromium session.
pub struct Browser {
    /// chromedriver's URL, and the session's under it.
    root: String,
    base: String,
    /// The browser's process, ended on drop if chromedriver leaves it.
    chrome_pid: Option<u32>,
    agent: ureq::Agent,
    child: Child,
    log: PathBuf,
    // Dropped after `Drop::drop` has stopped chromedriver: kept on a panic.
    _scratch: Scratch,
}

/// An element of the current page.
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

impl Browser {
    /// A browser, or `None` after `skip_or_fail` when chromium or
    /// chromedriver is missing. Panics when they are there but do not start.
    pub fn start_or_skip(test: &str) -> Option<Browser> {
        if programs().is_none() {
            let why = "chromium/chromedriver not found (apt-get install chromium chromium-driver)";
            super::skip_or_fail(test, why);
            return None;
        }
        Some(Browser::start().unwrap_or_else(|e| panic!("{test}: {e}")))
    }

    /// Start chromedriver on a free port and open a headless session.
    pub fn start() -> Result<Browser, String> {
        let (chromium, driver) = programs().ok_or("chromium/chromedriver not found")?;
        let scratch = Scratch::new("webdriver", "webdriver", "chromedriver.log");
        let log = scratch.file("chromedriver.log");
        let out = fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free port: {e}"))?
            .port();
        let mut cmd = Command::new(&driver);
        cmd.arg(format!("--port={port}"));
        // Every command and the browser's own log, into chromedriver.log.
        if std::env::var_os("MXGUARD_WEBDRIVER_VERBOSE").is_some_and(|v| v != "0") {
            cmd.args(["--verbose", "--enable-chrome-logs"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", driver.display()))?;
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(HTTP_TIMEOUT))
            .timeout_connect(Some(Duration::from_secs(5)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut b = Browser {
            root: format!("http://127.0.0.1:{port}"),
            base: String::new(),
            chrome_pid: None,
            agent,
            child,
            log,
            _scratch: scratch,
        };
        b.wait_ready()?;
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": super::path_str(&chromium),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1000"],
        }}}});
        let v = b
            .http("POST", &format!("{}/session", b.root), Some(&caps))
            .map_err(|e| b.failed(&e))?;
        let pid = v["value"]["capabilities"]["goog:processID"].as_u64();
        b.chrome_pid = pid.and_then(|p| u32::try_from(p).ok());
        let id = v["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| b.failed(&format!("no sessionId: {v}")))?;
        b.base = format!("{}/session/{id}", b.root);
        Ok(b)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(self.failed(&format!("chromedriver exited: {status}")));
            }
            match self.http("GET", &format!("{}/status", self.root), None) {
                Ok(v) if v["value"]["ready"] == true => return Ok(()),
                Ok(v) => last = v.to_string(),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(self.failed(&format!("chromedriver not ready within 20s: {last}")))
    }

    /// `what`, the log's path and its last lines.
    fn failed(&self, what: &str) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "WebDriver: {what}\n--- {} (last lines) ---\n{}",
            self.log.display(),
            tail.join("\n")
        )
    }

    /// One HTTP call; the whole answer, or an error with the WebDriver
    /// error JSON (less its native stack trace).
    fn http(&self, method: &str, url: &str, body: Option<&Value>) -> Result<Value, String> {
        let r = match (method, body) {
            ("GET", _) => self.agent.get(url).call(),
            ("DELETE", _) => self.agent.delete(url).call(),
            (_, b) => self.agent.post(url).send_json(b.unwrap_or(&json!({}))),
        };
        let mut r = r.map_err(|e| format!("{method} {url}: {e}"))?;
        let status = r.status().as_u16();
        let text = r
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_string()
            .map_err(|e| format!("{method} {url}: reading the answer: {e}"))?;
        let mut v: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{method} {url}: HTTP {status}, not JSON ({e}): {text}"))?;
        if status >= 400 || v["value"].get("error").is_some_and(|e| e.is_string()) {
            if let Some(o) = v["value"].as_object_mut() {
                o.remove("stacktrace");
            }
            return Err(format!("{method} {url}: HTTP {status}: {v}"));
        }
        Ok(v)
    }

    /// A session command's `value`, or an error string.
    pub fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        Ok(self.http(method, &url, body.as_ref())?["value"].take())
    }

    /// A session command's `value`; panics, with the log, on an error.
    fn must(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.cmd(method, path, body)
            .unwrap_or_else(|e| panic!("{}", self.failed(&e)))
    }

    fn element(&self, v: &Value) -> Result<Element<'_>, String> {
        let id = v[ELEMENT_KEY]
            .as_str()
            .ok_or(format!("not an element: {v}"))?;
        Ok(Element {
            browser: self,
            id: id.to_owned(),
        })
    }

    pub fn goto(&self, url: &str) {
        self.must("POST", "/url", Some(json!({ "url": url })));
    }

    pub fn current_url(&self) -> String {
        self.must("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn title(&self) -> String {
        self.must("GET", "/title", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn page_source(&self) -> String {
        self.must("GET", "/source", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The first element matching `css`.
    pub fn find(&self, css: &str) -> Result<Element<'_>, String> {
        let by = json!({"using": "css selector", "value": css});
        let v = self.cmd("POST", "/element", Some(by))?;
        self.element(&v)
    }

    /// Every element matching `css` (none is no error).
    pub fn find_all(&self, css: &str) -> Vec<Element<'_>> {
        let by = json!({"using": "css selector", "value": css});
        let v = self.must("POST", "/elements", Some(by));
        let all = v.as_array().cloned().unwrap_or_default();
        all.iter().filter_map(|e| self.element(e).ok()).collect()
    }

    /// Poll for an element matching `css` for up to `timeout`.
    pub fn wait_for(&self, css: &str, timeout: Duration) -> Result<Element<'_>, String> {
        self.wait_for_text(css, "", timeout)
    }

    /// Poll for an element matching `css` whose text contains `needle`.
    pub fn wait_for_text(
        &self,
        css: &str,
        needle: &str,
        timeout: Duration,
    ) -> Result<Element<'_>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.find(css) {
                Ok(e) if needle.is_empty() => return Ok(e),
                Ok(e) => match e.try_text() {
                    Ok(t) if t.contains(needle) => return Ok(e),
                    Ok(t) => format!("its text is {t:?}"),
                    Err(err) => err,
                },
                Err(err) => err,
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "no {css:?} containing {needle:?} within {timeout:?}: {last}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Run `script` (a function body; `arguments[i]` are `args`) in the page.
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        let body = json!({"script": script, "args": args});
        self.must("POST", "/execute/sync", Some(body))
    }

    /// The focused element (`document.activeElement`).
    pub fn active_element(&self) -> Element<'_> {
        let v = self.must("GET", "/element/active", None);
        self.element(&v)
            .unwrap_or_else(|e| panic!("{}", self.failed(&e)))
    }

    /// Type `text` to whatever has focus, as keyboard actions: "\u{E004}" is
    /// Tab, "\u{E007}" Enter.
    pub fn send_keys_to_active(&self, text: &str) {
        let mut actions = Vec::new();
        for c in text.chars() {
            actions.push(json!({"type": "keyDown", "value": c.to_string()}));
            actions.push(json!({"type": "keyUp", "value": c.to_string()}));
        }
        let body = json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]});
        self.must("POST", "/actions", Some(body));
    }

    /// Save a PNG of the viewport to `path`; its bytes.
    pub fn screenshot_png(&self, path: &Path) -> Vec<u8> {
        let v = self.must("GET", "/screenshot", None);
        let png = base64_decode(v.as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{}", self.failed(&format!("screenshot: {e}"))));
        fs::write(path, &png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        png
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.base.is_empty() {
            let _ = self.http("DELETE", &self.base, None);
        }
        // chromedriver's own endpoint: quit every session, then exit.
        // (On SIGTERM it exits and leaves the browser running.)
        let _ = self.http("GET", &format!("{}/shutdown", self.root), None);
        if !super::wait_gone(self.child.id(), Duration::from_secs(5)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        // The browser outlives chromedriver when the session was not quit.
        let cmdline = |pid: u32| fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if let Some(pid) = self.chrome_pid
            && String::from_utf8_lossy(&cmdline(pid)).contains("chromium")
        {
            super::send_signal(pid, "TERM");
            if !super::wait_gone(pid, Duration::from_secs(5)) {
                super::send_signal(pid, "KILL");
            }
        }
    }
}

impl Element<'_> {
    fn path(&self, rest: &str) -> String {
        format!("/element/{}{rest}", self.id)
    }

    fn try_text(&self) -> Result<String, String> {
        let v = self.browser.cmd("GET", &self.path("/text"), None)?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// The rendered text.
    pub fn text(&self) -> String {
        self.try_text()
            .unwrap_or_else(|e| panic!("{}", self.browser.failed(&e)))
    }

    /// An HTML attribute as written in the markup; `None` when absent.
    /// (chromedriver 156 does not fall back to the property: an input's
    /// typed text is `prop("value")`.)
    pub fn attr(&self, name: &str) -> Option<String> {
        let v = self
            .browser
            .must("GET", &self.path(&format!("/attribute/{name}")), None);
        v.as_str().map(str::to_owned)
    }

    /// A DOM property (`value`, `checked`, ...); `Null` when absent.
    pub fn prop(&self, name: &str) -> Value {
        let path = self.path(&format!("/property/{name}"));
        self.browser.must("GET", &path, None)
    }

    pub fn click(&self) {
        self.browser
            .must("POST", &self.path("/click"), Some(json!({})));
    }

    pub fn send_keys(&self, text: &str) {
        self.browser
            .must("POST", &self.path("/value"), Some(json!({ "text": text })));
    }

    pub fn clear(&self) {
        self.browser
            .must("POST", &self.path("/clear"), Some(json!({})));
    }

    pub fn press_enter(&self) {
        self.send_keys("\u{E007}");
    }

    /// Is this the same element as `other` (the WebDriver ids match)?
    pub fn same_as(&self, other: &Element<'_>) -> bool {
        self.id == other.id
    }
}

/// Standard base64 (with or without padding; whitespace ignored).
pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let d = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return Err(format!("not base64: byte {c:#04x}")),
        };
        acc = ((acc << 6) | u32::from(d)) & 0xffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}
