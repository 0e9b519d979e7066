//! A real full disk under a running `tug up` (a small tmpfs as its data dir, filled up): fires due
//! while the store cannot write are held, not dropped; writes through the API answer 507 naming
//! the directory; the log says so once per interval, not once per retry; and once there is room
//! again, without a restart, firing goes on and every held fire is handled by its job's misfire
//! policy (recorded, with the reason, and counted in `tug_misfires_total`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const TUG: &str = env!("CARGO_BIN_EXE_tug");

/// A `tug up` child, killed if the test fails before it stops.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn metric(base: &str, name: &str) -> f64 {
    let text = reqwest::blocking::get(format!("{base}/metrics")).unwrap().text().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics"))
}

/// Every run of `job`, oldest first, as (scheduled_at, trigger, state, reason).
fn runs(base: &str, job: &str) -> Vec<(String, String, String, String)> {
    let mut all = Vec::new();
    let mut cursor = String::new();
    loop {
        let url = format!("{base}/api/v1/jobs/{job}/runs?limit=1000{cursor}");
        let page: Value = reqwest::blocking::get(url).unwrap().json().unwrap();
        for r in page["items"].as_array().expect("a page of runs") {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            all.push((s("scheduled_at"), s("trigger"), s("state"), s("reason")));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    all.sort();
    all
}

fn wait(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ready() {
        assert!(t.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn integrity_ok(path: &Path) {
    let conn = rusqlite::Connection::open(path).unwrap();
    let verdict: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(verdict, "ok", "{}", path.display());
}

#[test]
fn fires_due_while_the_disk_is_full_are_held_and_handled_by_the_misfire_policy() {
    tug_tls::provider();
    let Some(disk) = tug_store::testing::Tmpfs::mount("4m") else { return };
    let logs = tempfile::tempdir().unwrap();
    let log_path = logs.path().join("up.log");
    let data = disk.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut up = Guard(
        Command::new(TUG)
            .args(["up", "--noop", "--log", "warn", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let http = reqwest::blocking::Client::new();
    wait("tug up listens", Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    // Every second, with the default epsilon (60 s): a fire held for less than that would be on
    // time, yet it could not be written when due, so it is a misfire.
    for (name, misfire) in [("skip", "skip"), ("once", "run_once"), ("all", "run_all")] {
        let job = json!({"name": name, "schedule": "* * * * * *", "command": "true", "misfire": misfire});
        let r = http.post(format!("{base}/api/v1/jobs")).json(&job).send().unwrap();
        assert_eq!(r.status().as_u16(), 201, "{}", r.text().unwrap());
    }
    // Larger run rows make the store need new pages sooner.
    for i in 0..50 {
        let job = json!({"name": format!("load-{i}"), "schedule": "* * * * * *", "command": "true", "misfire": "run_all",
                         "description": "x".repeat(1000)});
        let r = http.post(format!("{base}/api/v1/jobs")).json(&job).send().unwrap();
        assert_eq!(r.status().as_u16(), 201, "{}", r.text().unwrap());
    }
    wait("the jobs fire", Duration::from_secs(10), || runs(&base, "all").len() >= 2);

    disk.fill("filler");
    wait("fires are held once the store cannot write", Duration::from_secs(90), || metric(&base, "tug_fires_held") > 0.0);
    let full_at = Instant::now();
    // A write may still fit in pages the database has free; one that needs new ones is refused.
    let mut refused = None;
    for i in 0..200 {
        let job = json!({"name": format!("more-{i}"), "schedule": "@yearly", "command": "true", "description": "x".repeat(4000)});
        let r = http.post(format!("{base}/api/v1/jobs")).json(&job).send().unwrap();
        if r.status().as_u16() != 201 {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("a write is refused while the disk is full");
    assert_eq!(r.status().as_u16(), 507);
    let v: Value = r.json().unwrap();
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&format!("holding {}", data.display())), "{msg}");
    // Full for a few report intervals (10 s each), retried every second meanwhile.
    std::thread::sleep(Duration::from_secs(25));
    let held_for = full_at.elapsed();
    assert!(metric(&base, "tug_fires_held") >= 50.0, "every job's fires are held");
    assert_eq!(metric(&base, "tug_unwritten_fires_total"), 0.0, "not handled while the store cannot write");

    disk.free("filler");
    wait("the held fires are handled", Duration::from_secs(30), || {
        metric(&base, "tug_fires_held") == 0.0 && metric(&base, "tug_unwritten_fires_total") > 0.0
    });
    let unwritten = metric(&base, "tug_unwritten_fires_total");
    assert!(unwritten >= 53.0 * held_for.as_secs() as f64, "each job's held fires are counted: {unwritten} in {held_for:?}");
    assert!(metric(&base, "tug_misfires_total") >= unwritten);
    let resumed = jiff::Timestamp::now();
    std::thread::sleep(Duration::from_secs(3));

    // run_all: every second of the outage has its run, none twice; then on-time fires again.
    let all = runs(&base, "all");
    let instants: Vec<jiff::Timestamp> = all.iter().map(|r| r.0.parse().unwrap()).collect();
    for w in instants.windows(2) {
        assert_eq!(w[1].duration_since(w[0]), jiff::SignedDuration::from_secs(1), "one run a second, none missing: {all:?}");
    }
    let by_trigger = |rs: &[(String, String, String, String)]| {
        let mut m: BTreeMap<(String, String), usize> = BTreeMap::new();
        for r in rs {
            *m.entry((r.1.clone(), r.2.clone())).or_default() += 1;
        }
        m
    };
    let counts = by_trigger(&all);
    assert!(counts.get(&("misfire".into(), "succeeded".into())).copied().unwrap_or(0) >= 20, "{counts:?}");
    assert!(all.iter().any(|r| r.1 == "schedule" && r.0.parse::<jiff::Timestamp>().unwrap() > resumed), "fires on time again: {counts:?}");
    // run_once: at most the latest held fire ran (none when a fire after the outage is on time
    // and covers it), the others are recorded as skipped with the reason.
    let once = runs(&base, "once");
    let counts = by_trigger(&once);
    assert!(counts.get(&("misfire".into(), "succeeded".into())).copied().unwrap_or(0) <= 1, "{counts:?}");
    let skipped: Vec<_> = once.iter().filter(|r| r.2 == "skipped").collect();
    assert!(!skipped.is_empty(), "{counts:?}");
    for r in &skipped {
        assert!(r.3.contains("when the store could not write it (no space left on the file system holding"), "{r:?}");
    }
    // skip: none of the held fires ran.
    let skip = runs(&base, "skip");
    assert!(!skip.iter().any(|r| r.1 == "misfire" && r.2 != "skipped"), "{skip:?}");
    assert!(skip.iter().any(|r| r.1 == "misfire" && r.2 == "skipped"), "{skip:?}");
    // API writes work again.
    let r = http.post(format!("{base}/api/v1/jobs")).json(&json!({"name": "after", "schedule": "@yearly", "command": "true"})).send().unwrap();
    assert_eq!(r.status().as_u16(), 201);

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(up.0.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(up.0.wait().unwrap().success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    let said = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(said("the store cannot write;"), 1, "{log}");
    let again = said("the store still cannot write");
    assert!((1..=4).contains(&again), "once per 10 s while full for {held_for:?}, not per retry: {again}\n{log}");
    assert!(said("saving run changes failed") <= 5, "{log}");
    assert!(said("writing the fire log into the tables failed") <= 5, "{log}");
    assert!(said("checkpointing the WAL failed") <= 5, "{log}");
    assert_eq!(said("the store writes again"), 1, "{log}");
    let db = data.join("tug.db");
    integrity_ok(&db);
    integrity_ok(&tug_store::sqlite::SqliteStore::fire_log_path(&db));
}
