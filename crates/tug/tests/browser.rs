//! The web UI in a real browser: Debian's chromium driven over WebDriver (chromedriver) against a
//! real `tug up`. Screenshots of each step are saved under `target/ui-screenshots/` (test
//! artifacts; `scripts/screenshots` copies the jobs and job pages into docs/). Skipped, loudly,
//! when chromedriver is not installed (scripts/test installs it).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

mod common;
use common::Up;

const TUG: &str = env!("CARGO_BIN_EXE_tug");
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const TAB: &str = "\u{E004}";
const ENTER: &str = "\u{E007}";

struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::blocking::Client,
    shots: PathBuf,
    _profile: tempfile::TempDir,
    /// The last page asked for, to open again after a network error page.
    last: std::cell::RefCell<String>,
}

impl Browser {
    fn start(shots: &str) -> Option<Browser> {
        let driver_bin = ["chromedriver", "/usr/bin/chromedriver"].into_iter().find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(driver_bin).arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        tug_tls::provider();
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        for _ in 0..100 {
            if http.get(format!("{base}/status")).send().is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000",
                     format!("--user-data-dir={}", profile.path().display())]
        }}}});
        let v: Value = http.post(format!("{base}/session")).json(&caps).send().unwrap().json().unwrap();
        let session = v["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {v}")).to_string();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots").join(shots);
        std::fs::create_dir_all(&dir).unwrap();
        Some(Browser { driver, base, session, http, shots: dir, _profile: profile, last: Default::default() })
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut r = self.http.request(method, url);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let v: Value = r.send().unwrap().json().unwrap();
        assert!(v["value"]["error"].is_null(), "WebDriver {path}: {v}");
        v["value"].clone()
    }

    fn go(&self, url: &str) {
        url.clone_into(&mut self.last.borrow_mut());
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})));
    }

    fn js(&self, script: &str) -> Value {
        self.call(reqwest::Method::POST, "/execute/sync", Some(json!({"script": script, "args": []})))
    }

    fn click(&self, css: &str) {
        let e = self.call(reqwest::Method::POST, "/element", Some(json!({"using": "css selector", "value": css})));
        let id = e[ELEMENT].as_str().unwrap().to_string();
        self.call(reqwest::Method::POST, &format!("/element/{id}/click"), Some(json!({})));
    }

    /// Types `text` into the element.
    fn fill(&self, css: &str, text: &str) {
        let e = self.call(reqwest::Method::POST, "/element", Some(json!({"using": "css selector", "value": css})));
        let id = e[ELEMENT].as_str().unwrap().to_string();
        self.call(reqwest::Method::POST, &format!("/element/{id}/value"), Some(json!({"text": text})));
    }

    fn text(&self, css: &str) -> String {
        self.js(&format!("var e = document.querySelector({css:?}); return e ? e.innerText : '';")).as_str().unwrap_or_default().to_string()
    }

    /// Waits until the element's text contains `needle` (the page is not reloaded meanwhile, except
    /// when Chromium replaced it with a network error page: other tests on the host adding and
    /// removing interfaces make it report ERR_NETWORK_CHANGED and drop the open connections).
    fn wait_text(&self, css: &str, needle: &str) -> String {
        for _ in 0..300 {
            let t = self.text(css);
            if t.contains(needle) {
                return t;
            }
            if self.js("return location.href;").as_str().is_some_and(|h| h.starts_with("chrome-error:")) {
                let last = self.last.borrow().clone();
                eprintln!("a network error page replaced {last}; opening it again");
                self.go(&last);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let page = self.js("return location.href + '\\n' + document.body.innerText;");
        panic!("{css} never showed {needle:?}: {}\n--- the page:\n{}", self.text(css), page.as_str().unwrap_or_default());
    }

    /// Presses and releases one key (a WebDriver key code such as `\u{E004}` for Tab) on the
    /// focused element, as a keyboard would.
    fn press(&self, key: &str) {
        let actions = json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
            {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]}]});
        self.call(reqwest::Method::POST, "/actions", Some(actions));
    }

    /// Presses Tab until `is_it` (a script expression on `e`, the focused element) holds; the
    /// number of presses it took, or `None` after `limit`.
    fn tab_to(&self, is_it: &str, limit: usize) -> Option<usize> {
        (1..=limit).find(|_| {
            self.press(TAB);
            self.js(&format!("var e = document.activeElement; return !!(e && ({is_it}));")) == json!(true)
        })
    }

    fn screenshot(&self, name: &str) {
        let b64 = self.call(reqwest::Method::GET, "/screenshot", None);
        let png = base64_decode(b64.as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"));
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.http.delete(format!("{}/session/{}", self.base, self.session)).send();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| !matches!(c, b'=' | b'\n' | b'\r')).collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &c)| n | (u32::from(val(c)) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// A browser, or `None` after saying loudly that the test is skipped.
fn browser(shots: &str) -> Option<Browser> {
    let b = Browser::start(shots);
    if b.is_none() {
        eprintln!("\n!!!!!!!! SKIPPED browser test: chromedriver is not installed (scripts/test installs chromium-driver) !!!!!!!!\n");
    }
    b
}

fn tug(server: &str, args: &[&str]) -> String {
    let out = Command::new(TUG).args(args).env("TUG_SERVER", server).output().unwrap();
    assert!(out.status.success(), "tug {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn an_operator_runs_watches_kills_and_pauses_a_job_in_the_browser() {
    let Some(b) = browser("job-flow") else { return };
    let up = Up::start();
    let s = up.server.clone();
    tug(&s, &["job", "add", "nightly-report", "--schedule", "0 30 2 * * *", "--tz", "Europe/Berlin", "--description", "the nightly report", "--", "echo report"]);
    tug(&s, &["job", "add", "slow-batch", "--schedule", "@yearly", "--", "echo started; sleep 300; echo never"]);
    tug(&s, &["job", "add", "broken", "--schedule", "@yearly", "--", "echo oops; exit 3"]);
    tug(&s, &["job", "run", "nightly-report"]);
    tug(&s, &["job", "run", "broken"]);

    // The jobs page, then the failing filter: the broken job in two clicks.
    b.go(&format!("{s}/"));
    b.wait_text("#jobs", "slow-batch");
    b.wait_text("#jobs", "failed");
    b.screenshot("jobs");
    b.click("a[href='/?state=failing']");
    let failing = b.wait_text("#jobs", "broken");
    assert!(!failing.contains("slow-batch"), "{failing}");
    b.click("a[href='/jobs/broken']");
    b.wait_text("h1", "broken");

    // The job page: run now, and the run appears running without a reload.
    b.go(&format!("{s}/jobs/slow-batch"));
    b.wait_text("body", "Nothing running.");
    b.wait_text("body", "every year");
    b.js("window.__notReloaded = true; return null;");
    // Live: a run started elsewhere shows up on the open page.
    tug(&s, &["job", "run", "slow-batch"]);
    b.wait_text("#live", "running on local");
    assert_eq!(b.js("return window.__notReloaded === true;"), json!(true), "updated in place, not reloaded");
    b.screenshot("job");

    // The run page follows its log; Kill ends it, and the page says so.
    b.click("#live a[href^='/runs/']");
    b.wait_text("#log", "started");
    b.screenshot("run");
    b.click("button[formaction$='/kill']");
    b.wait_text("#run", "killed");

    // Pause from the job page.
    b.go(&format!("{s}/jobs/slow-batch"));
    b.click("button[formaction$='/pause']");
    b.wait_text("h1", "paused");
    assert!(tug(&s, &["job", "show", "slow-batch"]).contains("paused"));

    // The agents page, drained from the browser.
    b.go(&format!("{s}/agents"));
    b.click("button[formaction='/ui/agents/local/drain']");
    b.wait_text("#agents", "draining");
    b.screenshot("agents");

    // The dependencies page, from the menu.
    b.click("nav a[href='/graph']");
    b.wait_text("#graph", "No job depends on another");

    // Phone width: nothing wider than the screen but the scrolling tables.
    b.call(reqwest::Method::POST, "/window/rect", Some(json!({"width": 390, "height": 844})));
    b.go(&format!("{s}/"));
    let overflow = b.js("return document.documentElement.scrollWidth <= window.innerWidth + 1;");
    assert_eq!(overflow, json!(true), "the jobs page fits a phone's width");
    b.screenshot("jobs-phone");
}

#[test]
fn with_auth_on_the_browser_logs_in_with_a_token_acts_and_logs_out() {
    let Some(b) = browser("login") else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin.token");
    let up = Up::start_with(&["--init-token-file", file.to_str().unwrap()]);
    let s = up.server.clone();
    for _ in 0..200 {
        if std::fs::read_to_string(&file).is_ok_and(|t| !t.trim().is_empty()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let admin = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    let out = Command::new(TUG).args(["job", "add", "guarded", "--schedule", "@yearly", "--", "true"]).env("TUG_SERVER", &s).env("TUG_TOKEN", &admin).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A page asks for the token first, then shows what was asked for.
    b.go(&format!("{s}/jobs/guarded"));
    b.wait_text("h1", "Log in");
    b.fill("input[name=token]", "tug_wrong");
    b.click("form.login button");
    b.wait_text(".error", "the token is malformed");
    b.screenshot("login");
    b.fill("input[name=token]", &admin);
    b.click("form.login button");
    b.wait_text("h1", "guarded");
    let cookies = b.js("return document.cookie;");
    assert_eq!(cookies, json!(""), "the session and CSRF cookies are HttpOnly: {cookies}");

    // The forms work with the session (each carries its CSRF token).
    b.click("button[formaction$='/pause']");
    b.wait_text("h1", "paused");
    // Log out: back to the form, and pages ask again.
    b.click("form.logout button");
    b.wait_text("h1", "Log in");
    b.go(&format!("{s}/"));
    b.wait_text("h1", "Log in");
}

#[test]
fn a_newcomer_adds_a_job_from_the_form_with_its_fires_previewed_as_they_type() {
    let Some(b) = browser("add-job") else { return };
    let up = Up::start();
    let s = up.server.clone();
    b.go(&format!("{s}/"));
    b.wait_text("h1", "Jobs");
    b.click("h1 a[href='/new']");
    b.wait_text("h1", "Add a job");

    // The preview follows the typing: fires in the zone, then the API's message for a bad zone.
    b.fill("#schedule", "0 30 2 * * *");
    b.fill("#tz", "Europe/Berlin");
    let fires = b.wait_text("#preview", "02:30:00+0");
    assert_eq!(fires.lines().count(), 5, "{fires}");
    b.fill("#tz", "/Nowhere");
    b.wait_text("#preview-error", "Europe/Berlin/Nowhere");
    b.js("document.getElementById('tz').value = ''; return null;");
    b.fill("#tz", "UTC");
    b.wait_text("#preview", "02:30:00+00:00");
    b.screenshot("form");

    // Saved from the form, it is on its page and runs.
    b.fill("input[name=name]", "from-the-form");
    b.fill("textarea[name=command]", "echo made in the browser");
    b.click("#save");
    b.wait_text("h1", "from-the-form");
    b.wait_text("body", "at 02:30 every day");
    b.click("button[formaction$='/run']");
    b.wait_text("#live", "succeeded");

    // Edited from its page: the form comes filled in, and a refusal keeps what was typed.
    b.click("a[href='/jobs/from-the-form/edit']");
    b.wait_text("h1", "Edit");
    b.js("document.getElementById('schedule').value = ''; return null;");
    b.fill("#schedule", "0 0 25 * * *");
    b.click("#save");
    b.wait_text(".error", "25");
    assert_eq!(b.js("return document.getElementById('schedule').value;"), json!("0 0 25 * * *"));
    b.js("document.getElementById('schedule').value = ''; return null;");
    b.fill("#schedule", "0 0 5 * * *");
    b.click("#save");
    b.wait_text("body", "at 05:00 every day");
    assert!(tug(&s, &["job", "show", "from-the-form"]).contains("0 0 5 * * *"));
}

#[test]
fn a_service_and_its_release_update_live_from_the_event_stream() {
    let Some(b) = browser("service-flow") else { return };
    let up = Up::start();
    let s = up.server.clone();
    tug(&s, &["service", "add", "web", "--replicas", "1", "--", "sleep 1000"]);
    b.go(&format!("{s}/services/web"));
    b.wait_text("#live", "1 of 1 healthy");
    for _ in 0..100 {
        if b.js("return document.body.getAttribute('data-live-connected');") == json!("1") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    b.js("window.__notReloaded = true; return null;");

    // Scaled elsewhere: the replicas appear on the open page as their events arrive, long before
    // the page's 30 s redraw of relative times would show them.
    let asked = std::time::Instant::now();
    tug(&s, &["service", "scale", "web", "3"]);
    b.wait_text("#live", "3 of 3 healthy");
    assert!(asked.elapsed() < Duration::from_secs(10), "shown after {:?}", asked.elapsed());
    assert_eq!(b.js("return window.__notReloaded === true;"), json!(true), "updated in place, not reloaded");
    b.screenshot("service");

    // A release's page follows its stages, and a brake from the CLI.
    let out = tug(&s, &["release", "start", "web", "--env", "V=2", "--bake", "1h"]);
    let id = out.split_whitespace().find(|w| w.starts_with("rel-")).unwrap().trim_end_matches(':').to_owned();
    b.wait_text("#live", &id);
    b.go(&format!("{s}/releases/{id}"));
    b.wait_text("#live", "baking");
    b.js("window.__notReloaded = true; return null;");
    let asked = std::time::Instant::now();
    tug(&s, &["release", "brake", &id]);
    b.wait_text("#live", "(braked)");
    assert!(asked.elapsed() < Duration::from_secs(10), "shown after {:?}", asked.elapsed());
    assert_eq!(b.js("return window.__notReloaded === true;"), json!(true));
    b.screenshot("release");
}

#[test]
fn the_jobs_page_is_used_from_the_keyboard_and_the_graph_marks_the_failing_job() {
    let Some(b) = browser("keyboard") else { return };
    let up = Up::start();
    let s = up.server.clone();
    tug(&s, &["job", "add", "extract", "--schedule", "@yearly", "--", "true"]);
    tug(&s, &["job", "add", "transform", "--parents", "extract", "--", "echo bad rows; exit 2"]);
    tug(&s, &["job", "add", "load", "--parents", "transform", "--", "true"]);
    tug(&s, &["job", "run", "extract"]);

    // Tab reaches the search box; typing and Enter search; Tab goes on to a row's link, and Enter
    // opens it. No mouse anywhere.
    b.go(&format!("{s}/"));
    b.wait_text("#jobs", "transform");
    b.tab_to("e.name === 'q'", 20).expect("Tab reaches the jobs search");
    for key in ["t", "r", "a", "n", "s"] {
        b.press(key);
    }
    b.press(ENTER);
    b.wait_text("#jobs", "transform");
    let listed = b.js("return Array.from(document.querySelectorAll('#jobs td a[href^=\"/jobs/\"]')).map(a => a.textContent);");
    assert_eq!(listed, json!(["transform"]), "the search narrowed the list");
    assert_eq!(b.js("return new URL(location.href).searchParams.get('q');"), json!("trans"));
    b.tab_to("e.matches('#jobs a[href=\"/jobs/transform\"]')", 40).expect("Tab reaches the row's link");
    let outline = b.js("var s = getComputedStyle(document.activeElement); return s.outlineStyle + ' ' + s.outlineWidth;");
    assert!(!outline.as_str().unwrap().starts_with("none"), "the focused link is outlined: {outline}");
    b.screenshot("focused-row");
    b.press(ENTER);
    b.wait_text("h1", "transform");
    assert!(b.js("return location.pathname;") == json!("/jobs/transform"));

    // The dependencies page: an SVG of the three jobs, the failing one marked.
    b.wait_text("#live", "failed");
    b.go(&format!("{s}/graph"));
    b.wait_text("#graph", "Failing:");
    let svg = b.js("var g = document.querySelector('#graph svg'); return g ? [g.querySelectorAll('a.job').length, g.getBoundingClientRect().width > 0] : null;");
    assert_eq!(svg, json!([3, true]), "an SVG with the three jobs, drawn");
    let failing = b.js("return Array.from(document.querySelectorAll('#graph svg a.job.failing')).map(a => a.getAttribute('href'));");
    assert_eq!(failing, json!(["/jobs/transform"]), "only the failing job is marked");
    let colours = b.js("var f = document.querySelector('#graph svg a.job.failing rect, #graph svg a.job.failing circle'), o = document.querySelector('#graph svg a.job:not(.failing) rect, #graph svg a.job:not(.failing) circle'); return f && o ? [getComputedStyle(f).stroke, getComputedStyle(o).stroke] : null;");
    let c = colours.as_array().expect("node shapes in the graph");
    assert_ne!(c[0], c[1], "the failing job is drawn differently");
    b.screenshot("graph");
}
